package io.croupier.spark.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.ByteString;
import io.croupier.proto.v1.Block;
import io.croupier.proto.v1.PushAck;
import io.croupier.proto.v1.PushBatch;
import io.croupier.proto.v1.PushStatus;
import io.croupier.proto.v1.ShuffleServiceGrpc;
import io.grpc.ManagedChannel;
import io.grpc.Server;
import io.grpc.Status;
import io.grpc.inprocess.InProcessChannelBuilder;
import io.grpc.inprocess.InProcessServerBuilder;
import io.grpc.stub.StreamObserver;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.ScheduledExecutorService;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;

class PushSessionTest {
  /** A server whose memory is "full" for the first time it sees batch {@code refuseBatch}. */
  static final class FakeServer extends ShuffleServiceGrpc.ShuffleServiceImplBase {
    final List<Long> stored = Collections.synchronizedList(new ArrayList<>());
    final long refuseBatch;
    final int refuseTimes;
    final boolean committedElsewhere;
    final boolean fail;

    FakeServer(long refuseBatch, int refuseTimes, boolean committedElsewhere, boolean fail) {
      this.refuseBatch = refuseBatch;
      this.refuseTimes = refuseTimes;
      this.committedElsewhere = committedElsewhere;
      this.fail = fail;
    }

    @Override
    public StreamObserver<PushBatch> push(StreamObserver<PushAck> acks) {
      return new StreamObserver<>() {
        long waitingFor = -1; // batch id the server waits for after a refusal
        int refused;
        long expected; // next batch id to store

        @Override
        public void onNext(PushBatch b) {
          if (fail && b.getBatchId() == 1) {
            acks.onError(Status.RESOURCE_EXHAUSTED.withDescription("disk full").asRuntimeException());
            return;
          }
          if (committedElsewhere) {
            acks.onNext(PushAck.newBuilder().setBatchId(b.getBatchId()).setStatus(PushStatus.PUSH_STATUS_MAP_COMMITTED)
                .setCommittedAttemptId(42).build());
            return;
          }
          if (waitingFor >= 0 && b.getBatchId() != waitingFor) {
            acks.onNext(retry(b.getBatchId()));
            return;
          }
          waitingFor = -1;
          if (b.getBatchId() == refuseBatch && refused < refuseTimes) {
            refused++;
            waitingFor = b.getBatchId();
            acks.onNext(retry(b.getBatchId()));
            return;
          }
          if (b.getBatchId() < expected) {
            acks.onNext(PushAck.newBuilder().setBatchId(b.getBatchId()).setStatus(PushStatus.PUSH_STATUS_ACCEPTED)
                .setDuplicateBlocks(b.getBlocksCount()).build());
            return;
          }
          assertEquals(expected, b.getBatchId(), "gap in batches");
          expected++;
          stored.add(b.getBatchId());
          acks.onNext(PushAck.newBuilder().setBatchId(b.getBatchId()).setStatus(PushStatus.PUSH_STATUS_ACCEPTED).build());
        }

        private PushAck retry(long id) {
          return PushAck.newBuilder().setBatchId(id).setStatus(PushStatus.PUSH_STATUS_RETRY_LATER).setRetryAfterMs(20)
              .build();
        }

        @Override
        public void onError(Throwable t) {}

        @Override
        public void onCompleted() {
          acks.onCompleted();
        }
      };
    }
  }

  private Server server;
  private ManagedChannel channel;
  private final ScheduledExecutorService timer = CroupierClients.newTimerForTests();

  private PushSession start(FakeServer impl, int window) throws IOException {
    String name = InProcessServerBuilder.generateName();
    server = InProcessServerBuilder.forName(name).addService(impl).build().start();
    channel = InProcessChannelBuilder.forName(name).build();
    return new PushSession(ShuffleServiceGrpc.newStub(channel), "fake", "app", 1, 0, 7, window, 10_000, timer);
  }

  @AfterEach
  void tearDown() {
    if (channel != null) {
      channel.shutdownNow();
    }
    if (server != null) {
      server.shutdownNow();
    }
    timer.shutdownNow();
  }

  private static List<Block> batch(int i) {
    return List.of(Block.newBuilder().setPartitionId(0).setSeq(i).setData(ByteString.copyFromUtf8("b" + i)).build());
  }

  @Test
  void allBatchesAcceptedInOrder() throws IOException {
    FakeServer impl = new FakeServer(-1, 0, false, false);
    PushSession s = start(impl, 4);
    for (int i = 0; i < 50; i++) {
      s.send(batch(i));
    }
    s.finish();
    assertEquals(50, impl.stored.size());
    for (int i = 0; i < 50; i++) {
      assertEquals(i, impl.stored.get(i));
    }
    assertEquals(0, s.retries());
  }

  @Test
  void retryLaterGoesBackN() throws IOException {
    FakeServer impl = new FakeServer(3, 2, false, false);
    PushSession s = start(impl, 4);
    for (int i = 0; i < 30; i++) {
      s.send(batch(i));
    }
    s.finish();
    assertEquals(30, impl.stored.size());
    for (int i = 0; i < 30; i++) {
      assertEquals(i, impl.stored.get(i), "stored out of order: " + impl.stored);
    }
    assertEquals(2, s.retries());
  }

  @Test
  void mapCommittedStopsPushing() throws IOException {
    FakeServer impl = new FakeServer(-1, 0, true, false);
    PushSession s = start(impl, 2);
    for (int i = 0; i < 10; i++) {
      s.send(batch(i));
    }
    s.finish();
    assertTrue(s.mapCommittedElsewhere());
    assertEquals(42, s.winner());
  }

  @Test
  void serverErrorFailsTheTaskWithItsMessage() throws IOException {
    FakeServer impl = new FakeServer(-1, 0, false, true);
    PushSession s = start(impl, 1);
    IOException e = assertThrows(IOException.class, () -> {
      for (int i = 0; i < 10; i++) {
        s.send(batch(i));
      }
      s.finish();
    });
    assertTrue(e.getMessage().contains("RESOURCE_EXHAUSTED") && e.getMessage().contains("disk full"), e.getMessage());
  }
}
