package io.croupier.spark.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import io.croupier.proto.v1.CommitMapAttemptResponse;
import java.io.IOException;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

class MapCommitterTest {
  private static final List<String> SERVERS = List.of("a:1", "b:1", "c:1");

  /** Each server: first attempt to commit a map wins. */
  private final List<Map<Integer, Long>> winners = List.of(new HashMap<>(), new HashMap<>(), new HashMap<>());
  private final List<Integer> calls = new ArrayList<>();

  private final MapCommitter.CommitCall call = (s, req) -> {
    calls.add(s);
    long w = winners.get(s).computeIfAbsent(req.getMapIndex(), k -> req.getAttemptId());
    return CommitMapAttemptResponse.newBuilder().setCommitted(w == req.getAttemptId()).setCommittedAttemptId(w).build();
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
  void leaderFirstEvenWithoutData() throws IOException {
    MapPusher p = pusherWithDataOn(0, 2);
    assertEquals(7, MapCommitter.commit(call, p, SERVERS, "app", 1, 4, 7)); // leader of map 4 is server 1
    assertEquals(List.of(1, 0, 2), calls);
  }

  @Test
  void loserOnLeaderStopsAndReportsTheWinner() throws IOException {
    MapPusher first = pusherWithDataOn(0, 1, 2);
    assertEquals(10, MapCommitter.commit(call, first, SERVERS, "app", 1, 0, 10));
    calls.clear();
    MapPusher second = pusherWithDataOn(0, 1);
    assertEquals(10, MapCommitter.commit(call, second, SERVERS, "app", 1, 0, 11));
    assertEquals(List.of(0), calls); // never touched server 1
    assertEquals(10L, winners.get(1).get(0));
  }

  @Test
  void splitWinnersAreAnError() throws IOException {
    winners.get(2).put(0, 99L); // a previous attempt died after committing only on server 2
    MapPusher p = pusherWithDataOn(0, 2);
    assertThrows(IOException.class, () -> MapCommitter.commit(call, p, SERVERS, "app", 1, 0, 12));
  }
}
