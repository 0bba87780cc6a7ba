package io.croupier.spark.client;

import com.google.protobuf.ByteString;
import com.google.protobuf.CodedInputStream;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.UnsafeByteOperations;
import io.croupier.proto.v1.FetchRequest;
import io.croupier.proto.v1.FetchResponse;
import io.croupier.proto.v1.ShuffleServiceGrpc;
import com.google.common.util.concurrent.MoreExecutors;
import io.grpc.ClientCall;
import io.grpc.Detachable;
import io.grpc.HasByteBuffer;
import io.grpc.KnownLength;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.protobuf.ProtoUtils;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicLong;

/**
 * One FetchResponse as received, and the transport buffers it may still point into.
 *
 * <p>grpc-java's protobuf marshaller copies every received message twice: from Netty's receive buffers into
 * one array, then each {@code bytes} field into an array of its own. Zero-copy mode ({@link #FETCH_ZERO_COPY})
 * parses the message straight over the receive buffers instead: the message's input stream is detached from
 * the call (grpc stops releasing its buffers), and every block's {@code data} is a slice of them. Those
 * buffers stay allocated until {@link #release()}; {@link FetchStream} releases each message once the
 * logical streams built from its blocks have been read, and everything it holds when it is closed. Reading a
 * block's data after its message was released would read reused memory: only FetchStream hands them out.
 *
 * <p>When the transport offers no buffers to detach (another transport, or buffers without an NIO view) the
 * message is parsed by copying, as grpc's own marshaller does, and {@link #release()} does nothing.
 */
public final class ReceivedFetch {
  /** Messages parsed over receive buffers, and by copying, since the JVM started (tests and benches read them). */
  static final AtomicLong PARSED_ZERO_COPY = new AtomicLong();
  static final AtomicLong PARSED_BY_COPY = new AtomicLong();
  /** Detached buffers given back: equals {@link #PARSED_ZERO_COPY} once every stream is closed. */
  static final AtomicLong RELEASED = new AtomicLong();

  private static final MethodDescriptor.Marshaller<FetchRequest> REQUESTS =
      ProtoUtils.marshaller(FetchRequest.getDefaultInstance());
  private static final MethodDescriptor.Marshaller<FetchResponse> COPYING =
      ProtoUtils.marshaller(FetchResponse.getDefaultInstance());

  /** Fetch with responses parsed over the receive buffers. */
  public static final MethodDescriptor<FetchRequest, ReceivedFetch> FETCH_ZERO_COPY =
      ShuffleServiceGrpc.getFetchMethod().toBuilder(REQUESTS, new Marshaller(true)).build();
  /** Fetch with responses copied out of the receive buffers (grpc's default behaviour). */
  public static final MethodDescriptor<FetchRequest, ReceivedFetch> FETCH_COPYING =
      ShuffleServiceGrpc.getFetchMethod().toBuilder(REQUESTS, new Marshaller(false)).build();

  public final FetchResponse response;
  private InputStream held;

  /**
   * A Fetch call on {@code stub}'s channel and options, its responses parsed zero-copy or by copying and
   * delivered on the transport's thread (the observer must only queue them).
   */
  public static ClientCall<FetchRequest, ReceivedFetch> newCall(ShuffleServiceGrpc.ShuffleServiceStub stub,
      boolean zeroCopy) {
    return stub.getChannel().newCall(zeroCopy ? FETCH_ZERO_COPY : FETCH_COPYING,
        stub.getCallOptions().withExecutor(MoreExecutors.directExecutor()));
  }

  private ReceivedFetch(FetchResponse response, InputStream held) {
    this.response = response;
    this.held = held;
  }

  /** Whether the message's blocks point into receive buffers that {@link #release()} gives back. */
  public boolean zeroCopy() {
    return held != null;
  }

  /** Gives the receive buffers back to the transport. Idempotent; the blocks must not be read afterwards. */
  public void release() {
    InputStream h = held;
    if (h == null) {
      return;
    }
    held = null;
    try {
      h.close();
    } catch (IOException | RuntimeException ignored) {
      // Closing only drops buffer references; nothing to report.
    }
    RELEASED.incrementAndGet();
  }

  private static final class Marshaller implements MethodDescriptor.Marshaller<ReceivedFetch> {
    private final boolean zeroCopy;

    Marshaller(boolean zeroCopy) {
      this.zeroCopy = zeroCopy;
    }

    @Override
    public InputStream stream(ReceivedFetch value) {
      return COPYING.stream(value.response);
    }

    @Override
    public ReceivedFetch parse(InputStream stream) {
      if (zeroCopy && stream instanceof KnownLength && stream instanceof Detachable && stream instanceof HasByteBuffer
          && stream.markSupported() && ((HasByteBuffer) stream).byteBufferSupported()) {
        return parseZeroCopy(((Detachable) stream).detach());
      }
      PARSED_BY_COPY.incrementAndGet();
      return new ReceivedFetch(COPYING.parse(stream), null);
    }

    /** Parses over the detached stream's buffers; the stream is closed here unless the message keeps it. */
    private static ReceivedFetch parseZeroCopy(InputStream detached) {
      boolean keep = false;
      try {
        int size = detached.available();
        // Walking the buffers with skip() would release each one; mark() keeps them until reset().
        detached.mark(size);
        List<ByteString> pieces = new ArrayList<>();
        int walked = 0;
        while (walked < size) {
          ByteBuffer b = ((HasByteBuffer) detached).getByteBuffer();
          if (b == null || !b.hasRemaining()) {
            throw new IOException("receive buffer without an NIO view at byte " + walked + " of " + size);
          }
          int n = b.remaining();
          pieces.add(UnsafeByteOperations.unsafeWrap(b));
          long skipped = detached.skip(n);
          if (skipped != n) {
            throw new IOException("skipped " + skipped + " of " + n + " bytes at byte " + walked + " of " + size);
          }
          walked += n;
        }
        detached.reset();
        // A rope of the receive buffers; its coded input is immutable, so aliasing makes bytes fields slices.
        CodedInputStream in = ByteString.copyFrom(pieces).newCodedInput();
        in.enableAliasing(true);
        in.setSizeLimit(Integer.MAX_VALUE);
        FetchResponse r = FetchResponse.parser().parseFrom(in);
        in.checkLastTagWas(0);
        keep = true;
        PARSED_ZERO_COPY.incrementAndGet();
        return new ReceivedFetch(r, detached);
      } catch (InvalidProtocolBufferException e) {
        throw Status.INTERNAL.withDescription("FetchResponse: invalid protobuf: " + e.getMessage()).withCause(e)
            .asRuntimeException();
      } catch (IOException e) {
        throw Status.INTERNAL.withDescription("FetchResponse: reading the received message failed: " + e.getMessage())
            .withCause(e).asRuntimeException();
      } finally {
        if (!keep) {
          try {
            detached.close();
          } catch (IOException ignored) {
            // nothing held any more
          }
        }
      }
    }
  }
}
