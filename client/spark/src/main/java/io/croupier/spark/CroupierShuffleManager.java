package io.croupier.spark;

import io.croupier.spark.client.CroupierClients;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkConf;
import org.apache.spark.TaskContext;
import org.apache.spark.shuffle.BlockingShuffleManager;
import org.apache.spark.shuffle.ShuffleHandle;
import org.apache.spark.shuffle.ShuffleReadMetricsReporter;
import org.apache.spark.shuffle.ShuffleReader;
import org.apache.spark.shuffle.ShuffleWriteMetricsReporter;
import org.apache.spark.shuffle.ShuffleWriter;
import org.apache.spark.shuffle.sort.SortShuffleManager;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Spark ShuffleManager that keeps shuffle data on Croupier servers.
 *
 * <pre>
 *   spark.shuffle.manager=io.croupier.spark.CroupierShuffleManager
 *   spark.croupier.servers=host:port[,host:port...]
 * </pre>
 *
 * On the driver it also sets {@code spark.shuffle.sort.io.plugin.class} to {@link CroupierShuffleDataIO}
 * (unless set), which declares reliable storage so Spark keeps map outputs when executors are lost.
 *
 * <p><b>Why it extends {@link SortShuffleManager}.</b> Spark SQL's {@code ShuffleExchangeExec} copies every
 * row it hands to the shuffle writer ({@code UnsafeRow.copy()}, {@code needToCopyObjectsBeforeShuffle})
 * unless the shuffle manager is an instance of {@code SortShuffleManager}: the rows it produces are reused
 * buffers, and only Spark's own writers are known to serialize each record before asking for the next one
 * (bypass-merge and serialized sort) for any partition count below 2^24. Croupier's writer keeps the same
 * contract: its streaming path serializes every record into its partition's stream before it pulls the
 * next record, and its sorting path (which holds records in Spark's ExternalSorter) copies rows itself
 * ({@link CroupierShuffleWriter}, {@code RowCopier}). So the copy is redundant, and subclassing is the only
 * hook Spark offers to skip it (the check is {@code instanceof}, nothing configurable). Every method a
 * shuffle manager has is overridden here, except {@code shuffleBlockResolver()}: the inherited
 * {@code IndexShuffleBlockResolver} is never asked for Croupier blocks (they are not in any block manager)
 * and finds no local shuffle files to serve or to migrate.
 */
public class CroupierShuffleManager extends SortShuffleManager implements BlockingShuffleManager {
  private static final Logger LOG = LoggerFactory.getLogger(CroupierShuffleManager.class);

  private final SparkConf conf;
  private final boolean isDriver;
  private final CroupierDriver driver;

  public CroupierShuffleManager(SparkConf conf, boolean isDriver) {
    super(conf);
    this.conf = conf;
    this.isDriver = isDriver;
    CroupierConf.servers(conf); // fail fast, with a clear message, when the server list is missing or bad
    // Token and TLS of this process: read here, on the driver and on every executor (never shipped in handles).
    CroupierClients.configure(CroupierConf.security(conf));
    if (isDriver) {
      String io = conf.get(CroupierConf.SHUFFLE_IO_PLUGIN, null);
      if (io == null || io.equals("org.apache.spark.shuffle.sort.io.LocalDiskShuffleDataIO")) {
        conf.set(CroupierConf.SHUFFLE_IO_PLUGIN, CroupierShuffleDataIO.class.getName());
      } else if (!io.equals(CroupierShuffleDataIO.class.getName())) {
        LOG.warn("Croupier: {}={} is not {}: Spark will not know that map outputs survive executor loss",
            CroupierConf.SHUFFLE_IO_PLUGIN, io, CroupierShuffleDataIO.class.getName());
      }
      driver = CroupierDriver.create(conf);
    } else {
      driver = null;
    }
  }

  public CroupierShuffleManager(SparkConf conf) {
    this(conf, false);
  }

  @Override
  public <K, V, C> ShuffleHandle registerShuffle(int shuffleId, ShuffleDependency<K, V, C> dependency) {
    CroupierDriver d = driver != null ? driver : CroupierDriver.create(conf);
    int numMaps = dependency.rdd().getNumPartitions();
    int numPartitions = dependency.partitioner().numPartitions();
    d.registerShuffle(shuffleId, numMaps, numPartitions);
    return new CroupierShuffleHandle<>(shuffleId, dependency, d.appId(), d.servers(), d.appSecrets(), numMaps,
        numPartitions, d.clientConf());
  }

  @Override
  @SuppressWarnings("unchecked")
  public <K, V> ShuffleWriter<K, V> getWriter(ShuffleHandle handle, long mapId, TaskContext context,
      ShuffleWriteMetricsReporter metrics) {
    return new CroupierShuffleWriter<>((CroupierShuffleHandle<K, V, ?>) handle, mapId, context, metrics);
  }

  @Override
  @SuppressWarnings("unchecked")
  public <K, C> ShuffleReader<K, C> getReader(ShuffleHandle handle, int startMapIndex, int endMapIndex,
      int startPartition, int endPartition, TaskContext context, ShuffleReadMetricsReporter metrics) {
    return new CroupierShuffleReader<>((CroupierShuffleHandle<K, ?, C>) handle, startMapIndex, endMapIndex,
        startPartition, endPartition, context, metrics);
  }

  @Override
  public boolean unregisterShuffle(int shuffleId) {
    if (driver != null) {
      driver.unregisterShuffle(shuffleId);
    }
    return true;
  }

  @Override
  public void stop() {
    try {
      if (driver != null) {
        driver.stop();
      }
      CroupierClients.shutdown();
    } finally {
      super.stop(); // stops the (unused) IndexShuffleBlockResolver
    }
  }
}
