package io.croupier.spark.client;

import io.croupier.proto.v1.Block;
import io.croupier.proto.v1.CommitMapAttemptRequest;
import io.croupier.proto.v1.CommitMapAttemptResponse;
import io.croupier.proto.v1.PartitionCount;
import io.croupier.proto.v1.PeerPromise;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;

/**
 * Commits a map attempt on every server it pushed to, so that exactly one attempt of a map is visible
 * on all servers.
 *
 * <p>Each server decides "first commit wins" on its own. To make the servers agree, every attempt first
 * commits on the map's leader server ({@code mapIndex % numServers}), even with nothing pushed there,
 * and tells the leader what it pushed to each other server ({@code peers}); then it commits on those
 * servers. An attempt that loses on the leader gets the winner's peer promises back and commits the
 * winner on those servers itself (a repeated commit of the same attempt is a no-op): so only the leader's
 * winner ever commits on the other servers, and a winner that died between its commits is still
 * committed everywhere once any later attempt of the map reaches this point.
 */
public final class MapCommitter {
  /** One CommitMapAttempt call. */
  public interface CommitCall {
    CommitMapAttemptResponse commit(int server, CommitMapAttemptRequest request) throws IOException;
  }

  /** Runs after the leader accepted the attempt, before the other servers (a test fault hook). */
  public interface AfterLeaderCommit {
    void run() throws IOException;
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
    return commit(call, pusher, servers, appId, shuffleId, mapIndex, attemptId, () -> { });
  }

  /** As {@link #commit(CommitCall, MapPusher, List, String, int, int, long)}, with a hook after the leader. */
  public static long commit(CommitCall call, MapPusher pusher, List<String> servers, String appId, int shuffleId,
      int mapIndex, long attemptId, AfterLeaderCommit afterLeader) throws IOException {
    return commit(call, pusher, servers, appId, shuffleId, mapIndex, attemptId, List.of(), afterLeader);
  }

  /**
   * As above, with {@code leaderBlocks} (from {@link MapPusher#takeUnsent} of the leader) sent inline in
   * the leader's commit: the attempt's whole output on the leader, never pushed in a stream. Only the
   * leader's commit carries blocks: the other servers must hold an attempt's data before its leader
   * commit names them, so a winner's promises can always be committed there.
   */
  public static long commit(CommitCall call, MapPusher pusher, List<String> servers, String appId, int shuffleId,
      int mapIndex, long attemptId, List<Block> leaderBlocks, AfterLeaderCommit afterLeader) throws IOException {
    List<Integer> order = commitOrder(pusher, mapIndex, servers.size());
    int leader = order.get(0);
    CommitMapAttemptRequest.Builder first = request(appId, shuffleId, mapIndex, attemptId,
        pusher.partitionCounts(leader)).addAllBlocks(leaderBlocks);
    for (int s : order.subList(1, order.size())) {
      first.addPeers(PeerPromise.newBuilder().setServer(servers.get(s)).addAllPartitions(pusher.partitionCounts(s)));
    }
    CommitMapAttemptResponse resp = call.commit(leader, first.build());
    if (!resp.getCommitted()) {
      long winner = resp.getCommittedAttemptId();
      commitWinnerOnPeers(call, servers, appId, shuffleId, mapIndex, winner, resp.getWinnerPeersList());
      return winner;
    }
    checkAnswer(resp, servers.get(leader), attemptId);
    afterLeader.run();
    for (int s : order.subList(1, order.size())) {
      resp = call.commit(s, request(appId, shuffleId, mapIndex, attemptId, pusher.partitionCounts(s)).build());
      if (!resp.getCommitted()) {
        throw new IOException("map " + mapIndex + " of shuffle " + shuffleId + ": attempt " + attemptId
            + " won on server " + servers.get(leader) + " but server " + servers.get(s)
            + " already committed attempt " + resp.getCommittedAttemptId()
            + " (that server's commits do not follow its leader: was the server list changed mid-shuffle?)");
      }
      checkAnswer(resp, servers.get(s), attemptId);
    }
    return attemptId;
  }

  /**
   * Commits the leader's winner on every server it promised data to (it may have died before doing so
   * itself), with the counts it gave the leader.
   */
  static void commitWinnerOnPeers(CommitCall call, List<String> servers, String appId, int shuffleId, int mapIndex,
      long winner, List<PeerPromise> peers) throws IOException {
    for (PeerPromise peer : peers) {
      int s = servers.indexOf(peer.getServer());
      if (s < 0) {
        throw new IOException("map " + mapIndex + " of shuffle " + shuffleId + ": the winning attempt " + winner
            + " pushed to server " + peer.getServer() + ", which is not in this shuffle's server list " + servers);
      }
      CommitMapAttemptResponse r = call.commit(s,
          request(appId, shuffleId, mapIndex, winner, peer.getPartitionsList()).build());
      if (!r.getCommitted() || r.getCommittedAttemptId() != winner) {
        throw new IOException("map " + mapIndex + " of shuffle " + shuffleId + ": server " + servers.get(s)
            + " committed attempt " + r.getCommittedAttemptId() + " but the leader's winner is attempt " + winner);
      }
    }
  }

  private static CommitMapAttemptRequest.Builder request(String appId, int shuffleId, int mapIndex, long attemptId,
      List<PartitionCount> counts) {
    return CommitMapAttemptRequest.newBuilder()
        .setAppId(appId)
        .setShuffleId(shuffleId)
        .setMapIndex(mapIndex)
        .setAttemptId(attemptId)
        .addAllPartitions(counts);
  }

  private static void checkAnswer(CommitMapAttemptResponse resp, String server, long attemptId) throws IOException {
    if (resp.getCommittedAttemptId() != attemptId && resp.getCommittedAttemptId() != 0) {
      throw new IOException("server " + server + " answered committed=true with attempt "
          + resp.getCommittedAttemptId() + " for attempt " + attemptId);
    }
  }
}
