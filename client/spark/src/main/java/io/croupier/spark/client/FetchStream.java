package io.croupier.spark.client;

import com.google.protobuf.ByteString;
import io.croupier.proto.v1.FetchRequest;
import io.croupier.proto.v1.FetchResponse;
import io.croupier.proto.v1.FetchedBlock;
import io.croupier.proto.v1.ShuffleServiceGrpc;
import io.grpc.ClientCall;
import io.grpc.Status;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientCalls;
import io.grpc.stub.ClientResponseObserver;
import java.io.IOException;
import java.io.InputStream;
import java.util.ArrayDeque;
import java.util.List;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * One Fetch call, read ahead by up to {@code prefetch} messages, verified by a {@link FetchVerifier}
 * and handed out as logical streams (fragment lists).
 *
 * <p>With {@code zeroCopy}, responses are parsed over the transport's receive buffers ({@link ReceivedFetch}):
 * the fragments of a logical stream point into them, and are valid until the next {@link #nextStream()} or
 * {@link #close()}, which release the messages they came from. Readers should go through {@link #open}: its
 * input stream fails with an IOException once its fragments are no longer valid, instead of reading memory
 * the transport has reused, even when another thread closes this stream (a task killed or completed while a
 * helper thread still reads). At most {@code prefetch} queued messages plus those the current logical stream
 * spans (one, unless its records were cut into several blocks) are held at a time, and {@link #close()}
 * releases everything, including messages that arrive after it.
 */
public final class FetchStream implements AutoCloseable {
  private static final Object END = new Object();
  /**
   * Put in the queue by {@link #close()} so that a reader waiting in another thread wakes up at once,
   * without relying on grpc reporting the cancellation (or on the call not having ended).
   */
  private static final Object CLOSED = new Object();

  private final String what;
  private final FetchVerifier verifier;
  private final long idleTimeoutMs;
  private final LinkedBlockingQueue<Object> queue = new LinkedBlockingQueue<>();
  /**
   * Guards everything below, and every read of handed-out fragments ({@link #open}): nothing is released
   * while a read is copying from it. Never held while waiting for a message.
   */
  private final Object lock = new Object();
  private final ArrayDeque<FetchedBlock> current = new ArrayDeque<>();
  /** Messages taken from the queue and not yet released, oldest first; the last one feeds {@code current}. */
  private final ArrayDeque<ReceivedFetch> held = new ArrayDeque<>();
  /** Set by {@link #close()}: later messages are released as they arrive. */
  private boolean closed;
  /** Counts {@link #nextStream()} calls: fragments handed out by an earlier call are no longer valid. */
  private long generation;
  private volatile ClientCallStreamObserver<FetchRequest> call;
  private boolean ended;
  private long waitNanos;
  private long bytesReceived;
  private long blocksReceived;

  public FetchStream(ShuffleServiceGrpc.ShuffleServiceStub stub, FetchRequest request, FetchVerifier verifier,
      int prefetch, long idleTimeoutMs, String what, boolean zeroCopy) {
    this.what = what;
    this.verifier = verifier;
    this.idleTimeoutMs = idleTimeoutMs;
    int initial = Math.max(1, prefetch);
    // The observer only queues what it gets, so it runs on the transport's thread: no hop through grpc's
    // callback executor (a thread wake-up per message on the task's critical path).
    ClientCall<FetchRequest, ReceivedFetch> c = ReceivedFetch.newCall(stub, zeroCopy);
    ClientCalls.asyncServerStreamingCall(c, request, new ClientResponseObserver<FetchRequest, ReceivedFetch>() {
      @Override
      public void beforeStart(ClientCallStreamObserver<FetchRequest> requestStream) {
        call = requestStream;
        requestStream.disableAutoRequestWithInitial(initial);
      }

      @Override
      public void onNext(ReceivedFetch value) {
        synchronized (lock) {
          if (!closed) {
            queue.add(value);
            return;
          }
        }
        value.release();
      }

      @Override
      public void onError(Throwable t) {
        queue.add(t);
      }

      @Override
      public void onCompleted() {
        queue.add(END);
      }
    });
  }

  private void checkOpen() throws FetchException {
    if (closed) {
      // Never null here: null means the stream ended and its summary checked out.
      throw new FetchException(what + ": read after the stream was closed", -1);
    }
  }

  /**
   * The next logical stream's fragments, or null once the stream ended and its summary checked out. The
   * fragments of the previous call are invalid from now on.
   */
  public List<ByteString> nextStream() throws FetchException {
    synchronized (lock) {
      checkOpen();
      generation++;
      // The logical streams handed out so far have been read: release every message whose blocks are all
      // handed out (all but the one still feeding `current`).
      releaseHeld(current.isEmpty() ? 0 : 1);
    }
    while (true) {
      synchronized (lock) {
        checkOpen();
        while (!current.isEmpty()) {
          FetchedBlock b = current.poll();
          bytesReceived += b.getData().size();
          blocksReceived++;
          List<ByteString> s = verifier.onBlock(b);
          if (s != null) {
            return s;
          }
        }
        if (ended) {
          // Nothing handed out by this call: every message read so far can go.
          releaseHeld(0);
          return null;
        }
      }
      Object msg;
      long t0 = System.nanoTime();
      try {
        msg = queue.poll(idleTimeoutMs, TimeUnit.MILLISECONDS);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        close();
        throw new FetchException(what + ": interrupted", -1, e);
      } finally {
        waitNanos += System.nanoTime() - t0;
      }
      if (msg == null) {
        close();
        throw new FetchException(what + ": no data for " + idleTimeoutMs + " ms (spark.croupier.fetch.timeout)", -1);
      }
      synchronized (lock) {
        if (closed) {
          // Closed (by another thread) while this one waited: close() did not see this message.
          if (msg instanceof ReceivedFetch) {
            ((ReceivedFetch) msg).release();
          }
          checkOpen();
        }
        if (msg == END) {
          ended = true;
          verifier.onEnd();
          continue;
        }
        if (msg instanceof Throwable) {
          Throwable t = (Throwable) msg;
          Status st = Status.fromThrowable(t);
          ended = true;
          throw new FetchException(what + " failed: " + CroupierSecurity.describe(st), -1, t);
        }
        ReceivedFetch received = (ReceivedFetch) msg;
        held.add(received);
        FetchResponse r = received.response;
        ClientCallStreamObserver<FetchRequest> c = call;
        if (c != null) {
          c.request(1);
        }
        switch (r.getKindCase()) {
          case CHUNK:
            current.addAll(r.getChunk().getBlocksList());
            break;
          case SUMMARY:
            verifier.onSummary(r.getSummary());
            break;
          default:
            throw new FetchException(what + ": empty FetchResponse", -1);
        }
      }
    }
  }

  /**
   * An input stream over fragments the last {@link #nextStream()} returned. It reads them only while they are
   * valid: after the next {@code nextStream()} or {@link #close()} (from any thread) it throws IOException.
   */
  public InputStream open(List<ByteString> fragments) {
    InputStream in = (fragments.size() == 1 ? fragments.get(0) : ByteString.copyFrom(fragments)).newInput();
    long opened;
    synchronized (lock) {
      opened = generation;
    }
    return new InputStream() {
      private void check() throws IOException {
        if (closed || generation != opened) {
          throw new IOException(what + ": logical stream read after "
              + (closed ? "the fetch stream was closed" : "the reader moved on to the next one"));
        }
      }

      @Override
      public int read() throws IOException {
        synchronized (lock) {
          check();
          return in.read();
        }
      }

      @Override
      public int read(byte[] b, int off, int len) throws IOException {
        synchronized (lock) {
          check();
          return in.read(b, off, len);
        }
      }

      @Override
      public long skip(long n) throws IOException {
        synchronized (lock) {
          check();
          return in.skip(n);
        }
      }

      @Override
      public int available() throws IOException {
        synchronized (lock) {
          check();
          return in.available();
        }
      }
    };
  }

  public long waitNanos() {
    return waitNanos;
  }

  public long bytesReceived() {
    return bytesReceived;
  }

  public long blocksReceived() {
    return blocksReceived;
  }

  /** Releases the oldest held messages until {@code keep} are left. Under {@link #lock}. */
  private void releaseHeld(int keep) {
    while (held.size() > keep) {
      held.poll().release();
    }
  }

  /** Messages held (taken and not released): for tests. */
  int heldMessages() {
    synchronized (lock) {
      return held.size();
    }
  }

  /** Releases everything held and queued, and cancels the call if it has not ended. Any thread; idempotent. */
  @Override
  public void close() {
    boolean cancel;
    synchronized (lock) {
      closed = true;
      for (Object o : queue) {
        if (o instanceof ReceivedFetch) {
          ((ReceivedFetch) o).release();
        }
      }
      queue.clear();
      queue.add(CLOSED);
      current.clear();
      releaseHeld(0);
      cancel = !ended;
      ended = true;
    }
    ClientCallStreamObserver<FetchRequest> c = call;
    if (c != null && cancel) {
      try {
        c.cancel("fetch closed by the reader", null);
      } catch (RuntimeException ignored) {
        // best effort
      }
    }
  }
}
