package io.croupier.spark.client;

import io.croupier.proto.v1.Block;
import io.croupier.proto.v1.PushAck;
import io.croupier.proto.v1.PushBatch;
import io.croupier.proto.v1.ShuffleServiceGrpc;
import io.grpc.Status;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.io.IOException;
import java.util.ArrayDeque;
import java.util.Iterator;
import java.util.List;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

/**
 * One Push stream of one map attempt to one server.
 *
 * <p>Keeps at most {@code window} batches unacknowledged. Acks come one per batch, in order. On
 * RETRY_LATER for the oldest unacknowledged batch it waits {@code retry_after_ms} and resends that
 * batch and every later unacknowledged one (go-back-N); RETRY_LATER for any other batch is the echo of
 * a batch the server refused because an earlier one was refused, and is ignored. MAP_COMMITTED means
 * another attempt already won the map: nothing more is sent and the commit will report the winner.
 */
public final class PushSession implements BatchSink {
  private final String server;
  private final String appId;
  private final int shuffleId;
  private final int mapIndex;
  private final long attemptId;
  private final int window;
  private final long ackTimeoutMs;
  private final ScheduledExecutorService timer;
  private final ShuffleServiceGrpc.ShuffleServiceStub stub;

  private final Object lock = new Object();
  private final ArrayDeque<PushBatch> unacked = new ArrayDeque<>();
  private ClientCallStreamObserver<PushBatch> out;
  private long nextBatchId;
  private boolean backingOff;
  private boolean halfClosed;
  private boolean done; // the server ended the stream (normally or not)
  private Throwable failure;
  private boolean mapCommitted;
  private long winner = -1;
  private long retries;
  private long duplicateBlocks;

  public PushSession(ShuffleServiceGrpc.ShuffleServiceStub stub, String server, String appId, int shuffleId,
      int mapIndex, long attemptId, int window, long ackTimeoutMs, ScheduledExecutorService timer) {
    this.stub = stub;
    this.server = server;
    this.appId = appId;
    this.shuffleId = shuffleId;
    this.mapIndex = mapIndex;
    this.attemptId = attemptId;
    this.window = Math.max(1, window);
    this.ackTimeoutMs = ackTimeoutMs;
    this.timer = timer;
  }

  private void ensureStarted() {
    if (out != null) {
      return;
    }
    out = (ClientCallStreamObserver<PushBatch>) stub.push(new ClientResponseObserver<PushBatch, PushAck>() {
      @Override
      public void beforeStart(ClientCallStreamObserver<PushBatch> requestStream) {}

      @Override
      public void onNext(PushAck ack) {
        onAck(ack);
      }

      @Override
      public void onError(Throwable t) {
        synchronized (lock) {
          done = true;
          if (failure == null) {
            failure = t;
          }
          lock.notifyAll();
        }
      }

      @Override
      public void onCompleted() {
        synchronized (lock) {
          done = true;
          if (!unacked.isEmpty() && !mapCommitted && failure == null) {
            failure = new IOException("server ended the push stream with " + unacked.size()
                + " batches unacknowledged");
          }
          lock.notifyAll();
        }
      }
    });
  }

  private String what() {
    return "push of app " + appId + " shuffle " + shuffleId + " map " + mapIndex + " attempt " + attemptId
        + " to Croupier server " + server;
  }

  private IOException failed(String msg, Throwable cause) {
    if (cause instanceof io.grpc.StatusRuntimeException || cause instanceof io.grpc.StatusException) {
      Status st = Status.fromThrowable(cause);
      return new IOException(what() + " failed: " + CroupierSecurity.describe(st), cause);
    }
    return new IOException(what() + " failed: " + msg, cause);
  }

  void onAck(PushAck ack) {
    synchronized (lock) {
      switch (ack.getStatus()) {
        case PUSH_STATUS_ACCEPTED: {
          duplicateBlocks += ack.getDuplicateBlocks();
          Iterator<PushBatch> it = unacked.iterator();
          while (it.hasNext()) {
            if (it.next().getBatchId() == ack.getBatchId()) {
              it.remove();
              break;
            }
          }
          break;
        }
        case PUSH_STATUS_RETRY_LATER: {
          PushBatch oldest = unacked.peekFirst();
          if (oldest != null && oldest.getBatchId() == ack.getBatchId() && !backingOff) {
            backingOff = true;
            retries++;
            long delay = Math.max(1, ack.getRetryAfterMs());
            timer.schedule(this::resendAll, delay, TimeUnit.MILLISECONDS);
          }
          break;
        }
        case PUSH_STATUS_MAP_COMMITTED: {
          mapCommitted = true;
          winner = ack.getCommittedAttemptId();
          unacked.clear();
          break;
        }
        default:
          if (failure == null) {
            failure = new IOException(what() + ": unexpected ack status " + ack.getStatus() + " for batch "
                + ack.getBatchId());
          }
      }
      lock.notifyAll();
    }
  }

  private void resendAll() {
    synchronized (lock) {
      backingOff = false;
      if (failure != null || done || mapCommitted) {
        lock.notifyAll();
        return;
      }
      try {
        for (PushBatch b : unacked) {
          out.onNext(b);
        }
      } catch (RuntimeException e) {
        failure = e;
      }
      lock.notifyAll();
    }
  }

  @Override
  public void send(List<Block> blocks) throws IOException {
    synchronized (lock) {
      ensureStarted();
      long deadline = System.currentTimeMillis() + ackTimeoutMs;
      while (unacked.size() >= window && failure == null && !mapCommitted && !done) {
        waitUntil(deadline, "waiting for an ack (window of " + window + " batches full)");
      }
      checkFailure();
      if (mapCommitted) {
        return;
      }
      PushBatch batch = PushBatch.newBuilder()
          .setAppId(appId)
          .setShuffleId(shuffleId)
          .setMapIndex(mapIndex)
          .setAttemptId(attemptId)
          .setBatchId(nextBatchId++)
          .addAllBlocks(blocks)
          .build();
      unacked.addLast(batch);
      if (!backingOff) {
        try {
          out.onNext(batch);
        } catch (RuntimeException e) {
          throw failed("send", e);
        }
      }
    }
  }

  private void waitUntil(long deadline, String doing) throws IOException {
    long left = deadline - System.currentTimeMillis();
    if (left <= 0) {
      throw new IOException(what() + ": timed out after " + ackTimeoutMs + " ms " + doing
          + " (spark.croupier.push.ackTimeout)");
    }
    try {
      lock.wait(left);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IOException(what() + ": interrupted", e);
    }
  }

  private void checkFailure() throws IOException {
    if (failure != null) {
      throw failed(String.valueOf(failure.getMessage()), failure);
    }
  }

  @Override
  public void finish() throws IOException {
    synchronized (lock) {
      if (out == null) {
        return;
      }
      long deadline = System.currentTimeMillis() + ackTimeoutMs;
      while (!unacked.isEmpty() && failure == null && !mapCommitted && !done) {
        waitUntil(deadline, "waiting for the last acks (" + unacked.size() + " batches unacknowledged)");
      }
      checkFailure();
      if (!unacked.isEmpty() && !mapCommitted) {
        throw new IOException(what() + ": stream ended with " + unacked.size() + " batches unacknowledged");
      }
      if (!halfClosed && !done) {
        halfClosed = true;
        try {
          out.onCompleted();
        } catch (RuntimeException e) {
          // every batch is acknowledged: the data is stored, the commit verifies it
        }
      }
      // Not waiting for the server to end the stream: every batch is acknowledged, so its blocks are
      // stored, and the commit (which checks every partition's block count) is what really checks the
      // data. Waiting cost one more round trip per server for every map task, which for the tiny
      // outputs of a final stage was a large part of their write time.
    }
  }

  @Override
  public void abort(String reason) {
    synchronized (lock) {
      if (out != null && !done) {
        try {
          out.cancel(reason, null);
        } catch (RuntimeException ignored) {
          // best effort
        }
      }
      done = true;
      if (failure == null) {
        failure = new IOException("aborted: " + reason);
      }
      lock.notifyAll();
    }
  }

  @Override
  public boolean mapCommittedElsewhere() {
    synchronized (lock) {
      return mapCommitted;
    }
  }

  public long winner() {
    synchronized (lock) {
      return winner;
    }
  }

  public long retries() {
    synchronized (lock) {
      return retries;
    }
  }

  public long duplicateBlocks() {
    synchronized (lock) {
      return duplicateBlocks;
    }
  }
}
