package io.croupier.spark.client;

import io.croupier.proto.v1.CommitMapAttemptRequest;
import io.croupier.proto.v1.CommitMapAttemptResponse;
import io.croupier.proto.v1.PartitionCount;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;

/**
 * Commits a map attempt on every server it pushed to, so that exactly one attempt of a map is visible
 * on all servers.
 *
 * <p>Each server decides "first commit wins" on its own. To make the servers agree, every attempt first
 * commits on the map's leader server ({@code mapIndex % numServers}), even with nothing pushed there.
 * An attempt that loses on the leader stops and reports the leader's winner; so only the leader's
 * winner ever commits on the other servers.
 */
public final class MapCommitter {
  /** One CommitMapAttempt call. */
  public interface CommitCall {
    CommitMapAttemptResponse commit(int server, CommitMapAttemptRequest request) throws IOException;
  }

  private MapCommitter() {}

  public static int leader(int mapIndex, int numServers) {
    return mapIndex % numServers;
  }

  /** Servers in commit order: the leader, then every other server that holds data of the attempt. */
  public static List<Integer> commitOrder(MapPusher pusher, int mapIndex, int numServers) {
    List<Integer> order = new ArrayList<>();
    int leader = leader(mapIndex, numServers);
    order.add(leader);
    for (int s = 0; s < numServers; s++) {
      if (s != leader && pusher.hasDataOn(s)) {
        order.add(s);
      }
    }
    return order;
  }

  /** Returns the attempt id that won the map (ours, or the earlier winner's). */
  public static long commit(CommitCall call, MapPusher pusher, List<String> servers, String appId, int shuffleId,
      int mapIndex, long attemptId) throws IOException {
    List<Integer> order = commitOrder(pusher, mapIndex, servers.size());
    boolean first = true;
    for (int s : order) {
      List<PartitionCount> counts = pusher.partitionCounts(s);
      CommitMapAttemptRequest req = CommitMapAttemptRequest.newBuilder()
          .setAppId(appId)
          .setShuffleId(shuffleId)
          .setMapIndex(mapIndex)
          .setAttemptId(attemptId)
          .addAllPartitions(counts)
          .build();
      CommitMapAttemptResponse resp = call.commit(s, req);
      if (!resp.getCommitted()) {
        if (first) {
          return resp.getCommittedAttemptId();
        }
        throw new IOException("map " + mapIndex + " of shuffle " + shuffleId + ": attempt " + attemptId
            + " won on server " + servers.get(order.get(0)) + " but server " + servers.get(s)
            + " already committed attempt " + resp.getCommittedAttemptId()
            + " (an earlier attempt died half-way through its commits)");
      }
      if (resp.getCommittedAttemptId() != attemptId && resp.getCommittedAttemptId() != 0) {
        throw new IOException("server " + servers.get(s) + " answered committed=true with attempt "
            + resp.getCommittedAttemptId() + " for attempt " + attemptId);
      }
      first = false;
    }
    return attemptId;
  }
}
