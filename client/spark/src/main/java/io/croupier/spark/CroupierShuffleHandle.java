package io.croupier.spark;

import io.croupier.spark.client.ClientConf;
import io.croupier.spark.client.Rendezvous;
import java.util.Arrays;
import java.util.List;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.shuffle.BaseShuffleHandle;

/**
 * What a task needs to reach the shuffle's servers: app id, server list, the app's secret on each server
 * (learned by the driver at registration; null entries when the servers issue none), counts, client
 * tunables. The auth token is not in it: every process reads it from its own SparkConf.
 */
public class CroupierShuffleHandle<K, V, C> extends BaseShuffleHandle<K, V, C> {
  private static final long serialVersionUID = 1L;

  private final String appId;
  private final String[] servers;
  private final String[] appSecrets;
  private final int numMaps;
  private final int numPartitions;
  private final ClientConf clientConf;
  private transient volatile int[] owners;

  public CroupierShuffleHandle(int shuffleId, ShuffleDependency<K, V, C> dependency, String appId,
      List<String> servers, String[] appSecrets, int numMaps, int numPartitions, ClientConf clientConf) {
    super(shuffleId, dependency);
    this.appId = appId;
    this.servers = servers.toArray(new String[0]);
    if (appSecrets != null && appSecrets.length != this.servers.length) {
      throw new IllegalArgumentException("one app secret per server expected");
    }
    // No array at all when no server issued a secret (keeps the handle as small as before).
    this.appSecrets = appSecrets == null || Arrays.stream(appSecrets).allMatch(x -> x == null) ? null
        : appSecrets.clone();
    this.numMaps = numMaps;
    this.numPartitions = numPartitions;
    this.clientConf = clientConf;
  }

  public String appId() {
    return appId;
  }

  public List<String> servers() {
    return Arrays.asList(servers);
  }

  /** The app's secret on server {@code serverIndex} (to send as x-croupier-app-secret), or null. */
  public String appSecret(int serverIndex) {
    return appSecrets == null ? null : appSecrets[serverIndex];
  }

  public int numMaps() {
    return numMaps;
  }

  public int numPartitions() {
    return numPartitions;
  }

  public ClientConf clientConf() {
    return clientConf;
  }

  /** Server index owning each partition (bounded-load rendezvous hashing over the server list). */
  public int[] owners() {
    int[] o = owners;
    if (o == null) {
      o = new Rendezvous(servers()).assign(shuffleId(), numPartitions);
      owners = o;
    }
    return o;
  }

  @Override
  public String toString() {
    return "CroupierShuffleHandle(app=" + appId + ", shuffle=" + shuffleId() + ", maps=" + numMaps
        + ", partitions=" + numPartitions + ", servers=" + Arrays.toString(servers)
        + (appSecrets != null ? ", app secrets: " + Arrays.stream(appSecrets).filter(x -> x != null).count() : "")
        + ")";
  }
}
