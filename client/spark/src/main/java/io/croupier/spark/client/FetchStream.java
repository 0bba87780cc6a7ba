package io.croupier.spark.client;

import com.google.common.util.concurrent.MoreExecutors;
import com.google.protobuf.ByteString;
import io.croupier.proto.v1.FetchRequest;
import io.croupier.proto.v1.FetchResponse;
import io.croupier.proto.v1.FetchedBlock;
import io.croupier.proto.v1.ShuffleServiceGrpc;
import io.grpc.Status;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.util.ArrayDeque;
import java.util.List;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * One Fetch call, read ahead by up to {@code prefetch} messages, verified by a {@link FetchVerifier}
 * and handed out as logical streams (fragment lists).
 */
public final class FetchStream implements AutoCloseable {
  private static final Object END = new Object();

  private final String what;
  private final FetchVerifier verifier;
  private final long idleTimeoutMs;
  private final LinkedBlockingQueue<Object> queue = new LinkedBlockingQueue<>();
  private final ArrayDeque<FetchedBlock> current = new ArrayDeque<>();
  private volatile ClientCallStreamObserver<FetchRequest> call;
  private boolean ended;
  private long waitNanos;
  private long bytesReceived;
  private long blocksReceived;

  public FetchStream(ShuffleServiceGrpc.ShuffleServiceStub stub, FetchRequest request, FetchVerifier verifier,
      int prefetch, long idleTimeoutMs, String what) {
    this.what = what;
    this.verifier = verifier;
    this.idleTimeoutMs = idleTimeoutMs;
    int initial = Math.max(1, prefetch);
    // The observer only queues what it gets, so it runs on the transport's thread: no hop through grpc's
    // callback executor (a thread wake-up per message on the task's critical path).
    ShuffleServiceGrpc.ShuffleServiceStub direct = stub.withExecutor(MoreExecutors.directExecutor());
    direct.fetch(request, new ClientResponseObserver<FetchRequest, FetchResponse>() {
      @Override
      public void beforeStart(ClientCallStreamObserver<FetchRequest> requestStream) {
        call = requestStream;
        requestStream.disableAutoRequestWithInitial(initial);
      }

      @Override
      public void onNext(FetchResponse value) {
        queue.add(value);
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

  /** The next logical stream's fragments, or null once the stream ended and its summary checked out. */
  public List<ByteString> nextStream() throws FetchException {
    while (true) {
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
        return null;
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
      FetchResponse r = (FetchResponse) msg;
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

  public long waitNanos() {
    return waitNanos;
  }

  public long bytesReceived() {
    return bytesReceived;
  }

  public long blocksReceived() {
    return blocksReceived;
  }

  @Override
  public void close() {
    ClientCallStreamObserver<FetchRequest> c = call;
    if (c != null && !ended) {
      try {
        c.cancel("fetch closed by the reader", null);
      } catch (RuntimeException ignored) {
        // best effort
      }
    }
    ended = true;
  }
}
