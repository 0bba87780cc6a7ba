package io.croupier.spark;

import com.google.protobuf.ByteString;
import io.croupier.proto.v1.FetchRequest;
import io.croupier.proto.v1.MapAttempt;
import io.croupier.spark.client.ClientConf;
import io.croupier.spark.client.CroupierClients;
import io.croupier.spark.client.FetchException;
import io.croupier.spark.client.FetchStream;
import io.croupier.spark.client.FetchVerifier;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.BitSet;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.apache.spark.InterruptibleIterator;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.serializer.SerializerInstance;
import org.apache.spark.serializer.SerializerManager;
import org.apache.spark.shuffle.FetchFailedException;
import org.apache.spark.shuffle.ShuffleReadMetricsReporter;
import org.apache.spark.shuffle.ShuffleReader;
import org.apache.spark.storage.BlockId;
import org.apache.spark.storage.BlockManagerId;
import org.apache.spark.storage.ShuffleBlockBatchId;
import org.apache.spark.storage.ShuffleBlockId;
import org.apache.spark.util.collection.ExternalSorter;
import scala.Option;
import scala.Product2;
import scala.Tuple2;
import scala.Tuple3;
import scala.collection.AbstractIterator;
import scala.collection.Iterator;
import scala.math.Ordering;

/**
 * Reduce side: asks Spark's map output tracker which attempt of each map is the committed one and
 * which (map, partition) pairs hold data, fetches those from the servers owning the partitions (all
 * servers stream at once, read ahead a little), verifies CRCs, ordering and the end-of-stream summary,
 * deserializes, then aggregates and sorts with Spark's own Aggregator and ExternalSorter. Missing or
 * corrupt data and unreachable servers raise FetchFailedException so Spark reruns the map stage.
 */
public class CroupierShuffleReader<K, C> implements ShuffleReader<K, C> {
  private final CroupierShuffleHandle<K, ?, C> handle;
  private final int startMapIndex;
  private final int endMapIndex;
  private final int startPartition;
  private final int endPartition;
  private final TaskContext context;
  private final ShuffleReadMetricsReporter metrics;

  /** What Spark knows about one map's output. */
  private static final class MapInfo {
    final int mapIndex;
    final long attemptId;
    final BlockManagerId location;
    final BitSet[] partitionsByServer;

    MapInfo(int mapIndex, long attemptId, BlockManagerId location, int numServers) {
      this.mapIndex = mapIndex;
      this.attemptId = attemptId;
      this.location = location;
      this.partitionsByServer = new BitSet[numServers];
    }
  }

  CroupierShuffleReader(CroupierShuffleHandle<K, ?, C> handle, int startMapIndex, int endMapIndex,
      int startPartition, int endPartition, TaskContext context, ShuffleReadMetricsReporter metrics) {
    this.handle = handle;
    this.startMapIndex = startMapIndex;
    this.endMapIndex = endMapIndex;
    this.startPartition = startPartition;
    this.endPartition = endPartition;
    this.context = context;
    this.metrics = metrics;
  }

  @SuppressWarnings("unchecked")
  static <T extends Throwable> RuntimeException sneakyThrow(Throwable t) throws T {
    throw (T) t;
  }

  @Override
  @SuppressWarnings({"unchecked", "rawtypes"})
  public Iterator<Product2<K, C>> read() {
    int shuffleId = handle.shuffleId();
    int numServers = handle.servers().size();
    int[] owners = handle.owners();

    // Winning attempts and non-empty blocks, from the map output tracker (only non-empty blocks are listed).
    Iterator<Tuple2<BlockManagerId, scala.collection.Seq<Tuple3<BlockId, Object, Object>>>> byAddress =
        SparkEnv.get().mapOutputTracker().getMapSizesByExecutorId(shuffleId, startMapIndex, endMapIndex,
            startPartition, endPartition);
    TreeMap<Integer, MapInfo> maps = new TreeMap<>();
    while (byAddress.hasNext()) {
      Tuple2<BlockManagerId, scala.collection.Seq<Tuple3<BlockId, Object, Object>>> t = byAddress.next();
      BlockManagerId loc = t._1();
      Iterator<Tuple3<BlockId, Object, Object>> blocks = t._2().iterator();
      while (blocks.hasNext()) {
        Tuple3<BlockId, Object, Object> b = blocks.next();
        int mapIndex = (Integer) b._3();
        long mapId;
        int from;
        int to;
        BlockId id = b._1();
        if (id instanceof ShuffleBlockId) {
          ShuffleBlockId sb = (ShuffleBlockId) id;
          mapId = sb.mapId();
          from = sb.reduceId();
          to = from + 1;
        } else if (id instanceof ShuffleBlockBatchId) {
          ShuffleBlockBatchId sb = (ShuffleBlockBatchId) id;
          mapId = sb.mapId();
          from = sb.startReduceId();
          to = sb.endReduceId();
        } else {
          throw new IllegalStateException("Croupier: unexpected block id from the map output tracker: " + id);
        }
        MapInfo mi = maps.get(mapIndex);
        if (mi == null) {
          mi = new MapInfo(mapIndex, mapId, loc, numServers);
          maps.put(mapIndex, mi);
        }
        for (int p = from; p < to; p++) {
          int s = owners[p];
          if (mi.partitionsByServer[s] == null) {
            mi.partitionsByServer[s] = new BitSet();
          }
          mi.partitionsByServer[s].set(p);
        }
      }
    }

    ClientConf cc = handle.clientConf();
    List<ServerRead> reads = new ArrayList<>();
    for (int s = 0; s < numServers; s++) {
      Map<Integer, Long> attempts = new TreeMap<>();
      Map<Integer, BitSet> expected = new TreeMap<>();
      FetchRequest.Builder req = FetchRequest.newBuilder()
          .setAppId(handle.appId())
          .setShuffleId(shuffleId)
          .setPartitionStart(startPartition)
          .setPartitionEnd(endPartition)
          .setChunkBytesMax(cc.fetchChunkBytes);
      int minMap = Integer.MAX_VALUE;
      int maxMap = -1;
      MapInfo anyMap = null;
      for (MapInfo mi : maps.values()) {
        BitSet parts = mi.partitionsByServer[s];
        if (parts == null) {
          continue;
        }
        attempts.put(mi.mapIndex, mi.attemptId);
        expected.put(mi.mapIndex, parts);
        req.addAcceptedAttempts(MapAttempt.newBuilder().setMapIndex(mi.mapIndex).setAttemptId(mi.attemptId));
        minMap = Math.min(minMap, mi.mapIndex);
        maxMap = Math.max(maxMap, mi.mapIndex);
        if (anyMap == null) {
          anyMap = mi;
        }
      }
      if (attempts.isEmpty()) {
        continue; // never send an empty accepted list: it would mean "every map"
      }
      req.setMapStart(minMap).setMapEnd(maxMap + 1);
      String server = handle.servers().get(s);
      String what = "Croupier fetch of app " + handle.appId() + " shuffle " + shuffleId + " partitions ["
          + startPartition + ", " + endPartition + ") from server " + server;
      reads.add(new ServerRead(server, handle.appSecret(s), req.build(),
          new FetchVerifier(what, startPartition, endPartition, attempts, expected), what, anyMap));
    }

    RecordIterator records = new RecordIterator(reads, maps, cc);
    context.addTaskCompletionListener((org.apache.spark.util.TaskCompletionListener) ctx -> records.close());

    ShuffleDependency<K, ?, C> dep = handle.dependency();
    Iterator<Product2<Object, Object>> interruptible = new InterruptibleIterator(context, records);
    Iterator<Product2<K, C>> aggregated;
    if (dep.aggregator().isDefined()) {
      if (dep.mapSideCombine()) {
        aggregated = (Iterator) dep.aggregator().get().combineCombinersByKey((Iterator) interruptible, context);
      } else {
        aggregated = (Iterator) dep.aggregator().get().combineValuesByKey((Iterator) interruptible, context);
      }
    } else {
      aggregated = (Iterator) interruptible;
    }
    Option<Ordering<K>> ordering = dep.keyOrdering();
    if (ordering.isDefined()) {
      Option<org.apache.spark.Aggregator<K, C, C>> noAgg = Option.empty();
      Option<org.apache.spark.Partitioner> noPartitioner = Option.empty();
      ExternalSorter<K, C, C> sorter = SparkShim.newSorter(context, noAgg, noPartitioner, ordering, dep.serializer());
      Iterator<Product2<K, C>> sorted = sorter.insertAllAndUpdateMetrics(aggregated);
      return new InterruptibleIterator(context, sorted);
    }
    if (aggregated instanceof InterruptibleIterator) {
      return aggregated;
    }
    return new InterruptibleIterator(context, aggregated);
  }

  /** One server's part of the read. */
  private static final class ServerRead {
    final String server;
    final String appSecret;
    final FetchRequest request;
    final FetchVerifier verifier;
    final String what;
    final MapInfo anyMap;
    FetchStream stream;

    ServerRead(String server, String appSecret, FetchRequest request, FetchVerifier verifier, String what,
        MapInfo anyMap) {
      this.server = server;
      this.appSecret = appSecret;
      this.request = request;
      this.verifier = verifier;
      this.what = what;
      this.anyMap = anyMap;
    }
  }

  /** Records of all servers, one logical stream after the other. */
  private final class RecordIterator extends AbstractIterator<Product2<Object, Object>> {
    private final List<ServerRead> reads;
    private final Map<Integer, MapInfo> maps;
    private final ClientConf cc;
    private final SerializerInstance ser;
    private final SerializerManager serializerManager;
    private int next;
    private ServerRead cur;
    private Iterator<Tuple2<Object, Object>> records;
    private boolean started;
    private boolean done;

    RecordIterator(List<ServerRead> reads, Map<Integer, MapInfo> maps, ClientConf cc) {
      this.reads = reads;
      this.maps = maps;
      this.cc = cc;
      this.ser = handle.dependency().serializer().newInstance();
      this.serializerManager = SparkEnv.get().serializerManager();
    }

    private void start() {
      started = true;
      // All servers stream at once; each reads ahead a few chunks while we consume the others.
      for (ServerRead r : reads) {
        r.stream = new FetchStream(CroupierClients.async(r.server, cc, r.appSecret), r.request, r.verifier,
            cc.fetchPrefetchChunks, cc.fetchTimeoutMs, r.what, cc.fetchZeroCopy);
      }
    }

    @Override
    public boolean hasNext() {
      if (!started) {
        start();
      }
      while (true) {
        if (records != null && records.hasNext()) {
          return true;
        }
        if (done) {
          return false;
        }
        if (cur == null) {
          if (next >= reads.size()) {
            done = true;
            metricsDone();
            return false;
          }
          cur = reads.get(next++);
        }
        List<ByteString> fragments;
        long t0 = System.nanoTime();
        try {
          fragments = cur.stream.nextStream();
        } catch (FetchException e) {
          close();
          throw fetchFailed(cur, e);
        } finally {
          metrics.incFetchWaitTime((System.nanoTime() - t0) / 1_000_000);
        }
        if (fragments == null) {
          metrics.incRemoteBlocksFetched(cur.stream.blocksReceived());
          metrics.incRemoteBytesRead(cur.stream.bytesReceived());
          cur = null;
          continue;
        }
        // Valid until the next stream is asked for: with zero-copy fetches the fragments are views of
        // receive buffers, and this input fails rather than read them once they are released.
        InputStream in = cur.stream.open(fragments);
        // Compression/encryption are decided by the block id's type (a shuffle block), as on the map side.
        BlockId blockId = new ShuffleBlockId(handle.shuffleId(), 0L, startPartition);
        records = ser.deserializeStream(serializerManager.wrapStream(blockId, in)).asKeyValueIterator();
      }
    }

    @Override
    public Product2<Object, Object> next() {
      if (!hasNext()) {
        throw new java.util.NoSuchElementException();
      }
      metrics.incRecordsRead(1);
      return records.next();
    }

    private boolean merged;

    private void metricsDone() {
      if (!merged) {
        merged = true;
        context.taskMetrics().mergeShuffleReadMetrics();
      }
    }

    void close() {
      for (ServerRead r : reads) {
        if (r.stream != null) {
          r.stream.close();
        }
      }
    }

    private RuntimeException fetchFailed(ServerRead r, FetchException e) {
      MapInfo mi = e.mapIndex() >= 0 ? maps.get(e.mapIndex()) : null;
      if (mi == null) {
        mi = r.anyMap;
      }
      FetchFailedException ffe = new FetchFailedException(mi.location, handle.shuffleId(), mi.attemptId,
          mi.mapIndex, startPartition, e.getMessage(), e);
      return sneakyThrow(ffe);
    }
  }
}
