package io.croupier.spark;

import io.croupier.spark.client.ClientConf;
import io.croupier.spark.client.Rendezvous;
import java.util.Arrays;
import java.util.List;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.shuffle.BaseShuffleHandle;

/** What a task needs to reach the shuffle's servers: app id, server list, counts, client tunables. */
public class CroupierShuffleHandle<K, V, C> extends BaseShuffleHandle<K, V, C> {
  private static final long serialVersionUID = 1L;

  private final String appId;
  private final String[] servers;
  private final int numMaps;
  private final int numPartitions;
  private final ClientConf clientConf;
  private transient volatile int[] owners;

  public CroupierShuffleHandle(int shuffleId, ShuffleDependency<K, V, C> dependency, String appId,
      List<String> servers, int numMaps, int numPartitions, ClientConf clientConf) {
    super(shuffleId, dependency);
    this.appId = appId;
    this.servers = servers.toArray(new String[0]);
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

  public int numMaps() {
    return numMaps;
  }

  public int numPartitions() {
    return numPartitions;
  }

  public ClientConf clientConf() {
    return clientConf;
  }

  /** Server index owning each partition (rendezvous hashing over the server list). */
  public int[] owners() {
    int[] o = owners;
    if (o == null) {
      o = new Rendezvous(servers()).assign(numPartitions);
      owners = o;
    }
    return o;
  }

  @Override
  public String toString() {
    return "CroupierShuffleHandle(app=" + appId + ", shuffle=" + shuffleId() + ", maps=" + numMaps
        + ", partitions=" + numPartitions + ", servers=" + Arrays.toString(servers) + ")";
  }
}
