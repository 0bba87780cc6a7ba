package io.croupier.spark;

import io.croupier.proto.v1.Block;
import io.croupier.proto.v1.CommitMapAttemptRequest;
import io.croupier.proto.v1.CommitMapAttemptResponse;
import io.croupier.spark.client.ClientConf;
import io.croupier.spark.client.CroupierClients;
import io.croupier.spark.client.CroupierSecurity;
import io.croupier.spark.client.FramingOutputStream;
import io.croupier.spark.client.MapCommitter;
import io.croupier.spark.client.MapPusher;
import io.croupier.spark.client.PushSession;
import io.grpc.Status;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.List;
import org.apache.spark.Aggregator;
import org.apache.spark.Partitioner;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.scheduler.MapStatus;
import org.apache.spark.serializer.SerializationStream;
import org.apache.spark.serializer.SerializerInstance;
import org.apache.spark.serializer.SerializerManager;
import org.apache.spark.shuffle.ShuffleWriteMetricsReporter;
import org.apache.spark.shuffle.ShuffleWriter;
import org.apache.spark.storage.ShuffleBlockId;
import org.apache.spark.util.collection.ExternalSorter;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import scala.Option;
import scala.Product2;
import scala.Tuple2;
import scala.collection.Iterator;
import scala.math.Ordering;
import scala.reflect.ClassTag;
import scala.reflect.ClassTag$;

/**
 * Map side: partitions (and combines, when the dependency asks) with Spark's ExternalSorter, which
 * spills to disk under memory pressure; serializes each partition into independently deserializable
 * blocks; pushes them in batches; commits the attempt; reports real sizes and the winning attempt id.
 */
public class CroupierShuffleWriter<K, V, C> extends ShuffleWriter<K, V> {
  private static final Logger LOG = LoggerFactory.getLogger(CroupierShuffleWriter.class);
  @SuppressWarnings("rawtypes")
  private static final ClassTag ANY = ClassTag$.MODULE$.Any();

  /** Memory for the open streams of the streaming (bypass) path, shared by all partitions. */
  private static final long BYPASS_BUFFER_BYTES = 32L << 20;
  private static final long MIN_BYPASS_BLOCK_BYTES = 32L << 10;

  private final CroupierShuffleHandle<K, V, C> handle;
  private final long attemptId;
  private final int mapIndex;
  private final TaskContext context;
  private final ShuffleWriteMetricsReporter metrics;
  private ExternalSorter<K, V, ?> sorter;
  private MapPusher pusher;
  private MapStatus mapStatus;
  private long[] partitionLengths;
  private boolean stopping;

  CroupierShuffleWriter(CroupierShuffleHandle<K, V, C> handle, long mapId, TaskContext context,
      ShuffleWriteMetricsReporter metrics) {
    this.handle = handle;
    this.attemptId = mapId; // Spark passes the task attempt id: unique within the app
    this.mapIndex = context.partitionId();
    this.context = context;
    this.metrics = metrics;
  }

  @Override
  public void write(Iterator<Product2<K, V>> records) throws IOException {
    ShuffleDependency<K, V, C> dep = handle.dependency();
    if (handle.numPartitions() == 0) {
      // No reduce partition: nothing to push (and the shuffle is not registered on the servers).
      while (records.hasNext()) {
        records.next();
      }
      partitionLengths = new long[0];
      mapStatus = SparkShim.mapStatus(SparkEnv.get().blockManager().shuffleServerId(), partitionLengths, attemptId);
      return;
    }
    ClientConf cc = handle.clientConf();
    List<String> servers = handle.servers();
    String app = handle.appId();
    int shuffleId = handle.shuffleId();
    pusher = new MapPusher(handle.owners(), servers.size(),
        s -> new PushSession(CroupierClients.async(servers.get(s), cc, handle.appSecret(s)), servers.get(s), app,
            shuffleId, mapIndex, attemptId, cc.maxInFlightBatches, cc.ackTimeoutMs, CroupierClients.timer()),
        cc.batchBytes, cc.maxBatchBytes, cc.maxBlockBytes);

    long recordsWritten;
    if (!dep.mapSideCombine() && dep.partitioner().numPartitions() <= cc.bypassThreshold) {
      recordsWritten = writeStreaming(dep, records);
    } else {
      recordsWritten = writeSorted(dep, records);
    }
    long t0 = System.nanoTime();
    // What is left for the leader server, when nothing went there yet, rides in the commit itself.
    List<Block> inline = cc.inlineCommit
        ? pusher.takeUnsent(MapCommitter.leader(mapIndex, servers.size()))
        : List.of();
    pusher.finish();
    long winner = commit(servers, app, shuffleId, inline);
    partitionLengths = pusher.partitionLengths();
    long total = 0;
    for (long l : partitionLengths) {
      total += l;
    }
    metrics.incBytesWritten(total);
    metrics.incRecordsWritten(recordsWritten);
    // Write time: blocked on pushes, waiting for the last acks, committing.
    metrics.incWriteTime(System.nanoTime() - t0 + pusher.sendNanos());
    if (winner != attemptId) {
      LOG.info("Croupier: shuffle {} map {} attempt {}: attempt {} committed first; reporting it", shuffleId,
          mapIndex, attemptId, winner);
    }
    mapStatus = SparkShim.mapStatus(SparkEnv.get().blockManager().shuffleServerId(), partitionLengths, winner);
  }

  /**
   * Few partitions, no map-side combine: serialize each record straight into its partition's open
   * stream and push blocks while the input is still being computed (like Spark's bypass-merge writer).
   * Each record is fully serialized before the next one is pulled, so reused SQL row buffers need no copy.
   * Memory: one open stream per partition, each cut at about BYPASS_BUFFER_BYTES / partitions (32 MiB
   * in all, plus the codec's buffers).
   */
  private long writeStreaming(ShuffleDependency<K, V, C> dep, Iterator<Product2<K, V>> records) throws IOException {
    Partitioner partitioner = dep.partitioner();
    int n = partitioner.numPartitions();
    long target = Math.max(MIN_BYPASS_BLOCK_BYTES, Math.min(handle.clientConf().blockBytes, BYPASS_BUFFER_BYTES / n));
    SerializerManager serializerManager = SparkEnv.get().serializerManager();
    SerializerInstance ser = dep.serializer().newInstance();
    FramingOutputStream[] sinks = new FramingOutputStream[n];
    SerializationStream[] outs = new SerializationStream[n];
    long count = 0;
    while (records.hasNext()) {
      Product2<K, V> rec = records.next();
      int p = partitioner.getPartition(rec._1());
      SerializationStream out = outs[p];
      if (out == null) {
        sinks[p] = pusher.openStream(p);
        out = ser.serializeStream(serializerManager.wrapStream(new ShuffleBlockId(handle.shuffleId(), attemptId, p),
            sinks[p]));
        outs[p] = out;
      }
      writeRecord(out, rec);
      count++;
      if (sinks[p].streamBytes() >= target) {
        out.close();
        outs[p] = null;
      }
    }
    for (int p = 0; p < n; p++) {
      if (outs[p] != null) {
        outs[p].close();
      }
    }
    return count;
  }

  @SuppressWarnings({"unchecked", "rawtypes"})
  private static void writeRecord(SerializationStream out, Product2<?, ?> rec) {
    out.writeKey(rec._1(), ANY);
    out.writeValue(rec._2(), ANY);
  }

  /** General case: Spark's ExternalSorter groups by partition (combining if asked), spilling if needed. */
  @SuppressWarnings({"unchecked", "rawtypes"})
  private long writeSorted(ShuffleDependency<K, V, C> dep, Iterator<Product2<K, V>> records) throws IOException {
    Option<Partitioner> partitioner = Option.apply(dep.partitioner());
    Option<Ordering<K>> noOrdering = Option.empty();
    if (dep.mapSideCombine()) {
      if (dep.aggregator().isEmpty()) {
        throw new IllegalStateException("map-side combine without an aggregator");
      }
      sorter = SparkShim.newSorter(context, dep.aggregator(), partitioner, noOrdering, dep.serializer());
    } else {
      // Keys are not sorted here: the reduce side sorts when the dependency has a key ordering.
      Option<Aggregator<K, V, V>> none = Option.empty();
      sorter = SparkShim.newSorter(context, none, partitioner, noOrdering, dep.serializer());
    }
    // The sorter holds records: copy reused SQL rows first (see CroupierShuffleManager, RowCopier).
    sorter.insertAll(RowCopier.copying(records));

    long blockBytes = handle.clientConf().blockBytes;
    SerializerManager serializerManager = SparkEnv.get().serializerManager();
    SerializerInstance ser = dep.serializer().newInstance();
    long count = 0;
    Iterator<Tuple2<Object, Iterator<Product2<K, ?>>>> parts = (Iterator) sorter.partitionedIterator();
    while (parts.hasNext()) {
      Tuple2<Object, Iterator<Product2<K, ?>>> part = parts.next();
      int p = (Integer) part._1();
      Iterator<Product2<K, ?>> it = part._2();
      if (!it.hasNext()) {
        continue;
      }
      ShuffleBlockId blockId = new ShuffleBlockId(handle.shuffleId(), attemptId, p);
      FramingOutputStream sink = null;
      SerializationStream out = null;
      while (it.hasNext()) {
        Product2<K, ?> rec = it.next();
        if (out == null) {
          sink = pusher.openStream(p);
          out = ser.serializeStream(serializerManager.wrapStream(blockId, sink));
        }
        writeRecord(out, rec);
        count++;
        if (sink.streamBytes() >= blockBytes) {
          out.close(); // ends this block's stream; the next record starts a new one
          out = null;
        }
      }
      if (out != null) {
        out.close();
      }
    }
    return count;
  }

  /**
   * Testing only: when set to a directory, the first map attempt to find a file named
   * {@value #TEST_DIE_AFTER_LEADER_COMMIT_FILE} there deletes it and fails right after its leader commit,
   * before committing on the other servers (the integration tests' half-commit case). Unset: no effect.
   */
  public static final String TEST_FAULT_DIR_KEY = "spark.croupier.test.faultDir";
  static final String TEST_DIE_AFTER_LEADER_COMMIT_FILE = "die-after-leader-commit";

  private MapCommitter.AfterLeaderCommit testFaultAfterLeader() {
    String dir = SparkEnv.get().conf().get(TEST_FAULT_DIR_KEY, "");
    if (dir.isEmpty()) {
      return () -> { };
    }
    return () -> {
      // deleteIfExists is atomic: one attempt in the whole application takes the fault.
      if (Files.deleteIfExists(Paths.get(dir, TEST_DIE_AFTER_LEADER_COMMIT_FILE))) {
        throw new IOException("Croupier test fault (" + TEST_FAULT_DIR_KEY + "): shuffle " + handle.shuffleId()
            + " map " + mapIndex + " attempt " + attemptId + " dies after its leader commit");
      }
    };
  }

  private long commit(List<String> servers, String app, int shuffleId, List<Block> inline) throws IOException {
    ClientConf cc = handle.clientConf();
    return MapCommitter.commit((s, req) -> {
      try {
        return commitCall(servers, s, cc, req);
      } catch (RuntimeException e) {
        Status st = Status.fromThrowable(e);
        if (st.getCode() == Status.Code.RESOURCE_EXHAUSTED && req.getBlocksCount() > 0) {
          // No memory on the server for the inline blocks (nothing was stored): push them, then commit.
          pusher.pushTaken(s, req.getBlocksList());
          try {
            return commitCall(servers, s, cc, req.toBuilder().clearBlocks().build());
          } catch (RuntimeException again) {
            throw commitFailed(app, shuffleId, servers.get(s), again);
          }
        }
        throw commitFailed(app, shuffleId, servers.get(s), e);
      }
    }, pusher, servers, app, shuffleId, mapIndex, attemptId, inline, testFaultAfterLeader());
  }

  private CommitMapAttemptResponse commitCall(List<String> servers, int s, ClientConf cc,
      CommitMapAttemptRequest req) {
    return CroupierClients.blocking(servers.get(s), cc, handle.appSecret(s)).commitMapAttempt(req);
  }

  private IOException commitFailed(String app, int shuffleId, String server, RuntimeException e) {
    Status st = Status.fromThrowable(e);
    return new IOException("Croupier: CommitMapAttempt(app=" + app + ", shuffle=" + shuffleId + ", map=" + mapIndex
        + ", attempt=" + attemptId + ") on server " + server + " failed: " + CroupierSecurity.describe(st), e);
  }

  @Override
  public Option<MapStatus> stop(boolean success) {
    try {
      if (stopping) {
        return Option.empty();
      }
      stopping = true;
      if (success) {
        if (mapStatus == null) {
          throw new IllegalStateException("Croupier: stop(true) before the map output was committed");
        }
        return Option.apply(mapStatus);
      }
      // Failed or killed attempt: never committed, so never visible to readers.
      if (pusher != null) {
        pusher.abort("map task attempt " + attemptId + " stopped without success");
      }
      return Option.empty();
    } finally {
      if (sorter != null) {
        long t0 = System.nanoTime();
        sorter.stop();
        metrics.incWriteTime(System.nanoTime() - t0);
        sorter = null;
      }
    }
  }

  @Override
  public long[] getPartitionLengths() {
    return partitionLengths;
  }
}
