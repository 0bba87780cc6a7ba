package io.croupier.spark.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.croupier.proto.v1.CommitMapAttemptRequest;
import io.croupier.proto.v1.CommitMapAttemptResponse;
import io.croupier.proto.v1.PeerPromise;
import java.io.IOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

class MapCommitterTest {
  private static final List<String> SERVERS = List.of("a:1", "b:1", "c:1");

  /** Each server: the first attempt to commit a map wins; its request (counts, peers) is kept. */
  private final List<Map<Integer, CommitMapAttemptRequest>> winners =
      List.of(new HashMap<>(), new HashMap<>(), new HashMap<>());
  private final List<Integer> calls = new ArrayList<>();
  private final List<CommitMapAttemptRequest> requests = new ArrayList<>();
  /** Attempt ids whose calls to non-leader servers fail (the task dies after its leader commit). */
  private long dieAfterLeader = -1;

  private final MapCommitter.CommitCall call = (s, req) -> {
    if (req.getAttemptId() == dieAfterLeader && s != MapCommitter.leader(req.getMapIndex(), SERVERS.size())) {
      throw new IOException("executor lost");
    }
    calls.add(s);
    requests.add(req);
    CommitMapAttemptRequest w = winners.get(s).computeIfAbsent(req.getMapIndex(), k -> req);
    if (w.getAttemptId() == req.getAttemptId()) {
      // A server refuses a commit whose counts do not match what the attempt pushed.
      assertEquals(w.getPartitionsList(), req.getPartitionsList());
    }
    return CommitMapAttemptResponse.newBuilder()
        .setCommitted(w.getAttemptId() == req.getAttemptId())
        .setCommittedAttemptId(w.getAttemptId())
        .addAllWinnerPeers(w.getPeersList())
        .build();
  };

  private MapPusher pusherWithDataOn(int... servers) throws IOException {
    int[] owner = {0, 1, 2};
    MapPusher p = new MapPusher(owner, 3, s -> new MapPusherTest.FakeSink(), 1 << 20, 4 << 20, 1024);
    for (int s : servers) {
      p.addBlock(s, new byte[] {0, 1}, 2);
    }
    p.finish();
    return p;
  }

  @Test
  void leaderFirstEvenWithoutDataAndItRecordsThePeerPromises() throws IOException {
    MapPusher p = pusherWithDataOn(0, 2);
    assertEquals(7, MapCommitter.commit(call, p, SERVERS, "app", 1, 4, 7)); // leader of map 4 is server 1
    assertEquals(List.of(1, 0, 2), calls);
    List<PeerPromise> peers = requests.get(0).getPeersList();
    assertEquals(2, peers.size());
    assertEquals("a:1", peers.get(0).getServer());
    assertEquals(p.partitionCounts(0), peers.get(0).getPartitionsList());
    assertEquals("c:1", peers.get(1).getServer());
    assertEquals(p.partitionCounts(2), peers.get(1).getPartitionsList());
    // Only the leader's request carries peers.
    assertTrue(requests.get(1).getPeersList().isEmpty() && requests.get(2).getPeersList().isEmpty());
  }

  @Test
  void loserOnLeaderReportsTheWinnerAndOnlyEverCommitsTheWinner() throws IOException {
    MapPusher first = pusherWithDataOn(0, 1, 2);
    assertEquals(10, MapCommitter.commit(call, first, SERVERS, "app", 1, 0, 10));
    calls.clear();
    requests.clear();
    MapPusher second = pusherWithDataOn(0, 1);
    assertEquals(10, MapCommitter.commit(call, second, SERVERS, "app", 1, 0, 11));
    // The winner's peer commits are repeated (idempotent); attempt 11 never commits anywhere.
    assertEquals(List.of(0, 1, 2), calls);
    for (CommitMapAttemptRequest r : requests.subList(1, requests.size())) {
      assertEquals(10, r.getAttemptId());
    }
    for (int s = 0; s < 3; s++) {
      assertEquals(10L, winners.get(s).get(0).getAttemptId());
    }
  }

  @Test
  void aWinnerThatDiedAfterItsLeaderCommitIsCommittedOnItsPeersByTheRetry() throws IOException {
    dieAfterLeader = 20;
    MapPusher first = pusherWithDataOn(0, 1, 2);
    assertThrows(IOException.class, () -> MapCommitter.commit(call, first, SERVERS, "app", 1, 0, 20));
    assertEquals(20L, winners.get(0).get(0).getAttemptId());
    assertTrue(winners.get(1).isEmpty() && winners.get(2).isEmpty(), "half-committed");
    dieAfterLeader = -1;

    MapPusher retry = pusherWithDataOn(0, 1, 2);
    assertEquals(20, MapCommitter.commit(call, retry, SERVERS, "app", 1, 0, 21));
    for (int s = 1; s < 3; s++) {
      CommitMapAttemptRequest w = winners.get(s).get(0);
      assertEquals(20L, w.getAttemptId(), "server " + s);
      assertEquals(first.partitionCounts(s), w.getPartitionsList(), "the winner's own counts, from the leader");
    }
  }

  @Test
  void aWinnerOnAServerOutsideTheListIsAClearError() throws IOException {
    winners.get(0).put(0, CommitMapAttemptRequest.newBuilder().setMapIndex(0).setAttemptId(30)
        .addPeers(PeerPromise.newBuilder().setServer("gone:1")).build());
    MapPusher p = pusherWithDataOn(0);
    IOException e = assertThrows(IOException.class, () -> MapCommitter.commit(call, p, SERVERS, "app", 1, 0, 31));
    assertTrue(e.getMessage().contains("gone:1"), e.getMessage());
  }

  @Test
  void splitWinnersAreAnError() throws IOException {
    // A non-leader server with another winner than the leader (not reachable through this committer).
    winners.get(2).put(0, CommitMapAttemptRequest.newBuilder().setMapIndex(0).setAttemptId(99).build());
    MapPusher p = pusherWithDataOn(0, 2);
    assertThrows(IOException.class, () -> MapCommitter.commit(call, p, SERVERS, "app", 1, 0, 12));
  }

  @Test
  void unsentLeaderBlocksRideInTheLeaderCommitOnly() throws IOException {
    int[] owner = {0, 1, 2};
    List<MapPusherTest.FakeSink> opened = new ArrayList<>();
    MapPusher p = new MapPusher(owner, 3, s -> {
      MapPusherTest.FakeSink sink = new MapPusherTest.FakeSink();
      opened.add(sink);
      return sink;
    }, 1 << 20, 4 << 20, 1024);
    p.addBlock(1, new byte[] {1, 2, 3}, 3); // leader of map 4 is server 1
    p.addBlock(1, new byte[] {4}, 1);
    p.addBlock(2, new byte[] {5, 6}, 2);
    List<io.croupier.proto.v1.Block> inline = p.takeUnsent(1);
    assertEquals(2, inline.size());
    assertTrue(p.takeUnsent(1).isEmpty(), "taken once");
    p.finish();
    assertEquals(1, opened.size(), "a stream to server 2 only: the leader's blocks were not pushed");
    assertEquals(7, MapCommitter.commit(call, p, SERVERS, "app", 1, 4, 7, inline, () -> { }));
    assertEquals(List.of(1, 2), calls);
    assertEquals(inline, requests.get(0).getBlocksList());
    assertEquals(List.of(0, 1), List.of(inline.get(0).getSeq(), inline.get(1).getSeq()));
    // The commit still counts them, and the peer's commit carries no blocks.
    assertEquals(2, requests.get(0).getPartitions(0).getBlocks());
    assertEquals(4, requests.get(0).getPartitions(0).getBytes());
    assertTrue(requests.get(1).getBlocksList().isEmpty());
    // A server that already has a stream open gets no inline blocks: they follow the pushed ones.
    MapPusher q = new MapPusher(owner, 3, s -> new MapPusherTest.FakeSink(), 2, 4 << 20, 1024);
    q.addBlock(0, new byte[] {1}, 1);
    q.addBlock(0, new byte[] {2}, 1); // batchBytes 2: these two are sent
    q.addBlock(0, new byte[] {3}, 1); // buffered
    assertTrue(q.takeUnsent(0).isEmpty());
    q.finish();
    assertEquals(3, q.blocksOf(0));
  }
}
