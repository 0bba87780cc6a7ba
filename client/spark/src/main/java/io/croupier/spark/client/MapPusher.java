package io.croupier.spark.client;

import com.google.protobuf.ByteString;
import com.google.protobuf.UnsafeByteOperations;
import io.croupier.proto.v1.Block;
import io.croupier.proto.v1.PartitionCount;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.function.IntFunction;

/**
 * Turns the blocks of one map attempt into batches, one batch builder per server, and keeps the
 * per-partition accounting (seq numbers, block and byte counts) that the commit and the MapStatus
 * need. Spark-free so it can be unit tested.
 */
public final class MapPusher {
  private final int[] owner;
  private final int numServers;
  private final IntFunction<BatchSink> sinkFactory;
  private final long batchBytes;
  private final long maxBatchBytes;
  private final int maxBlockBytes;

  private final int[] blocks;
  private final long[] bytes;
  private final BatchSink[] sinks;
  private final List<Block>[] pending;
  private final long[] pendingBytes;
  private long batchesSent;
  private long bytesPushed;
  private long sendNanos;
  private boolean finished;

  /**
   * @param owner server index of every partition (see {@link Rendezvous#assign})
   * @param sinkFactory opens the push stream to a server, called at most once per server, lazily
   * @param batchBytes a batch is sent once it holds at least this many payload bytes
   * @param maxBatchBytes a batch never exceeds this (unless one block alone does)
   * @param maxBlockBytes the largest block, header included
   */
  @SuppressWarnings("unchecked")
  public MapPusher(int[] owner, int numServers, IntFunction<BatchSink> sinkFactory, long batchBytes,
      long maxBatchBytes, int maxBlockBytes) {
    this.owner = owner;
    this.numServers = numServers;
    this.sinkFactory = sinkFactory;
    this.batchBytes = batchBytes;
    this.maxBatchBytes = Math.max(maxBatchBytes, batchBytes);
    this.maxBlockBytes = maxBlockBytes;
    this.blocks = new int[owner.length];
    this.bytes = new long[owner.length];
    this.sinks = new BatchSink[numServers];
    this.pending = new List[numServers];
    this.pendingBytes = new long[numServers];
    for (int i = 0; i < numServers; i++) {
      pending[i] = new ArrayList<>();
    }
  }

  /** A sink for one logical serialized stream of {@code partition}; close it to end the stream. */
  public FramingOutputStream openStream(int partition) {
    return new FramingOutputStream(data -> addBlock(partition, data), maxBlockBytes);
  }

  /** Adds one block (already framed). The array is owned by the pusher from now on. */
  public void addBlock(int partition, byte[] data, int len) throws IOException {
    addBlock(partition, UnsafeByteOperations.unsafeWrap(data, 0, len));
  }

  /** Adds one block (already framed). Its bytes are owned by the pusher from now on. */
  public void addBlock(int partition, ByteString data) throws IOException {
    if (finished) {
      throw new IllegalStateException("map output already finished");
    }
    int len = data.size();
    int server = owner[partition];
    if (!pending[server].isEmpty() && pendingBytes[server] + len > maxBatchBytes) {
      flush(server);
    }
    Block block = Block.newBuilder()
        .setPartitionId(partition)
        .setSeq(blocks[partition])
        .setCrc32(Crc.of(data))
        .setData(data)
        .build();
    blocks[partition]++;
    bytes[partition] += len;
    pending[server].add(block);
    pendingBytes[server] += len;
    if (pendingBytes[server] >= batchBytes) {
      flush(server);
    }
  }

  private void flush(int server) throws IOException {
    if (pending[server].isEmpty()) {
      return;
    }
    List<Block> batch = pending[server];
    long n = pendingBytes[server];
    pending[server] = new ArrayList<>();
    pendingBytes[server] = 0;
    BatchSink sink = sinks[server];
    if (sink == null) {
      sink = sinkFactory.apply(server);
      sinks[server] = sink;
    }
    if (sink.mapCommittedElsewhere()) {
      return; // another attempt won this map; our data would be discarded anyway
    }
    long t0 = System.nanoTime();
    sink.send(batch);
    sendNanos += System.nanoTime() - t0;
    batchesSent++;
    bytesPushed += n;
  }

  /**
   * Takes the blocks buffered for {@code server} out of the pusher, to be sent with the commit instead of
   * in a push stream, when nothing was sent to that server yet (no stream open): then they are the whole
   * of the attempt's output there, less than one batch. Returns an empty list otherwise. Counts and
   * lengths still include them. Call before {@link #finish()}.
   */
  public List<Block> takeUnsent(int server) {
    if (finished || sinks[server] != null || pending[server].isEmpty()) {
      return List.of();
    }
    List<Block> out = pending[server];
    pending[server] = new ArrayList<>();
    pendingBytes[server] = 0;
    return out;
  }

  /**
   * Pushes {@code blocks} (from {@link #takeUnsent}) to {@code server} after all, in a stream of their
   * own, and waits for the ack: the fallback when the server had no memory for them in a commit.
   */
  public void pushTaken(int server, List<Block> blocks) throws IOException {
    BatchSink sink = sinks[server];
    if (sink == null) {
      sink = sinkFactory.apply(server);
      sinks[server] = sink;
    }
    long t0 = System.nanoTime();
    sink.send(blocks);
    sink.finish();
    sendNanos += System.nanoTime() - t0;
    batchesSent++;
    for (Block b : blocks) {
      bytesPushed += b.getData().size();
    }
  }

  /** Sends what is left and waits for every ack. */
  public void finish() throws IOException {
    for (int s = 0; s < numServers; s++) {
      flush(s);
    }
    finished = true;
    for (int s = 0; s < numServers; s++) {
      if (sinks[s] != null) {
        sinks[s].finish();
      }
    }
  }

  public void abort(String reason) {
    finished = true;
    for (BatchSink s : sinks) {
      if (s != null) {
        s.abort(reason);
      }
    }
  }

  /** True when some server reported that another attempt already committed this map. */
  public boolean anyMapCommittedElsewhere() {
    for (BatchSink s : sinks) {
      if (s != null && s.mapCommittedElsewhere()) {
        return true;
      }
    }
    return false;
  }

  /** Bytes of every partition (block headers included), for the MapStatus. */
  public long[] partitionLengths() {
    return bytes.clone();
  }

  public int blocksOf(int partition) {
    return blocks[partition];
  }

  /** What this attempt pushed to {@code server}: one entry per non-empty partition it owns. */
  public List<PartitionCount> partitionCounts(int server) {
    List<PartitionCount> out = new ArrayList<>();
    for (int p = 0; p < owner.length; p++) {
      if (owner[p] == server && blocks[p] > 0) {
        out.add(PartitionCount.newBuilder().setPartitionId(p).setBlocks(blocks[p]).setBytes(bytes[p]).build());
      }
    }
    return out;
  }

  public boolean hasDataOn(int server) {
    for (int p = 0; p < owner.length; p++) {
      if (owner[p] == server && blocks[p] > 0) {
        return true;
      }
    }
    return false;
  }

  public long batchesSent() {
    return batchesSent;
  }

  /** Time spent handing batches to the sinks (blocked on a full window included). */
  public long sendNanos() {
    return sendNanos;
  }

  public long bytesPushed() {
    return bytesPushed;
  }
}
