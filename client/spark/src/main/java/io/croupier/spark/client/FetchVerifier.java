package io.croupier.spark.client;

import com.google.protobuf.ByteString;
import io.croupier.proto.v1.FetchSummary;
import io.croupier.proto.v1.FetchedBlock;
import io.croupier.proto.v1.MapSummary;
import java.util.ArrayList;
import java.util.BitSet;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Checks the blocks of one Fetch stream as they arrive and re-joins them into logical streams.
 *
 * <p>It knows, from Spark's map output tracker, which attempt of each map must be served and which
 * (map, partition) pairs are non-empty. It checks every block's CRC, that blocks come in
 * (partition, map, seq) order with seq 0, 1, 2... for each (partition, map), that only accepted
 * attempts and requested partitions appear, and at the end that the server's FetchSummary matches
 * what arrived, per map and in total, and that every non-empty (map, partition) delivered data.
 */
public final class FetchVerifier {
  private final String what;
  private final int partitionStart;
  private final int partitionEnd;
  private final Map<Integer, Long> attempts;
  private final Map<Integer, BitSet> expected;

  private final Map<Integer, long[]> counted = new HashMap<>(); // map -> {blocks, bytes}
  private final Set<Long> seen = new HashSet<>(); // (partition << 32 | map) pairs seen
  private int curPartition = -1;
  private int curMap = -1;
  private long curSeq = -1;
  private final List<ByteString> fragments = new ArrayList<>();
  private boolean summarized;

  /**
   * @param what description of the fetch for error messages (server, shuffle)
   * @param attempts accepted attempt of every map that must appear
   * @param expected per map, the partitions that must deliver at least one block
   */
  public FetchVerifier(String what, int partitionStart, int partitionEnd, Map<Integer, Long> attempts,
      Map<Integer, BitSet> expected) {
    this.what = what;
    this.partitionStart = partitionStart;
    this.partitionEnd = partitionEnd;
    this.attempts = attempts;
    this.expected = expected;
  }

  private FetchException bad(String msg, int map) {
    return new FetchException(what + ": " + msg, map);
  }

  /**
   * Feeds one block. Returns the payloads (headers stripped) of a logical stream when this block ends
   * one, else null.
   */
  public List<ByteString> onBlock(FetchedBlock b) throws FetchException {
    if (summarized) {
      throw bad("block after the summary", (int) b.getMapIndex());
    }
    int p = b.getPartitionId();
    int m = b.getMapIndex();
    ByteString data = b.getData();
    if (Crc.of(data) != b.getCrc32()) {
      throw bad("CRC mismatch in block partition " + p + " map " + m + " attempt " + b.getAttemptId() + " seq "
          + b.getSeq() + " (" + data.size() + " bytes)", m);
    }
    if (p < partitionStart || p >= partitionEnd) {
      throw bad("block of partition " + p + " outside the requested range [" + partitionStart + ", "
          + partitionEnd + ")", m);
    }
    Long want = attempts.get(m);
    if (want == null) {
      throw bad("block of map " + m + " that was not requested", m);
    }
    if (want != b.getAttemptId()) {
      throw bad("block of map " + m + " from attempt " + b.getAttemptId() + ", expected attempt " + want, m);
    }
    if (p == curPartition && m == curMap) {
      if (b.getSeq() != curSeq + 1) {
        throw bad("partition " + p + " map " + m + ": seq " + b.getSeq() + " after " + curSeq
            + " (block missing or out of order)", m);
      }
    } else {
      if (!fragments.isEmpty()) {
        throw bad("partition " + curPartition + " map " + curMap + ": stream cut after seq " + curSeq, curMap);
      }
      if (p < curPartition || (p == curPartition && m < curMap)) {
        throw bad("blocks out of order: partition " + p + " map " + m + " after partition " + curPartition + " map "
            + curMap, m);
      }
      long key = ((long) p << 32) | (m & 0xffffffffL);
      if (!seen.add(key)) {
        throw bad("partition " + p + " map " + m + " delivered twice", m);
      }
      if (b.getSeq() != 0) {
        throw bad("partition " + p + " map " + m + ": first block has seq " + b.getSeq(), m);
      }
      BitSet exp = expected.get(m);
      if (exp == null || !exp.get(p)) {
        throw bad("data for partition " + p + " map " + m + " which Spark recorded as empty", m);
      }
      curPartition = p;
      curMap = m;
    }
    curSeq = b.getSeq();
    long[] c = counted.computeIfAbsent(m, k -> new long[2]);
    c[0]++;
    c[1] += data.size();
    if (data.size() < BlockFormat.HEADER_BYTES) {
      throw bad("empty block partition " + p + " map " + m + " seq " + b.getSeq(), m);
    }
    byte flag = data.byteAt(0);
    fragments.add(data.substring(BlockFormat.HEADER_BYTES));
    if (flag == BlockFormat.FINAL) {
      List<ByteString> out = new ArrayList<>(fragments);
      fragments.clear();
      return out;
    } else if (flag != BlockFormat.CONTINUED) {
      throw bad("unknown block flag " + flag + " in partition " + p + " map " + m + " seq " + b.getSeq(), m);
    }
    return null;
  }

  /** Checks the end-of-stream summary against what arrived and what Spark expects. */
  public void onSummary(FetchSummary s) throws FetchException {
    if (summarized) {
      throw bad("two summaries", -1);
    }
    summarized = true;
    if (!fragments.isEmpty()) {
      throw bad("partition " + curPartition + " map " + curMap + ": stream cut after seq " + curSeq, curMap);
    }
    long totalBlocks = 0;
    long totalBytes = 0;
    Set<Integer> inSummary = new HashSet<>();
    for (MapSummary ms : s.getMapsList()) {
      int m = ms.getMapIndex();
      Long want = attempts.get(m);
      if (want == null) {
        throw bad("summary names map " + m + " that was not requested", m);
      }
      if (want != ms.getAttemptId()) {
        throw bad("summary names attempt " + ms.getAttemptId() + " of map " + m + ", expected " + want, m);
      }
      if (!inSummary.add(m)) {
        throw bad("summary names map " + m + " twice", m);
      }
      long[] c = counted.getOrDefault(m, new long[2]);
      if (c[0] != ms.getBlocks() || c[1] != ms.getBytes()) {
        throw bad("map " + m + " attempt " + want + ": summary promises " + ms.getBlocks() + " blocks / "
            + ms.getBytes() + " bytes, received " + c[0] + " blocks / " + c[1] + " bytes", m);
      }
      totalBlocks += c[0];
      totalBytes += c[1];
    }
    for (Map.Entry<Integer, long[]> e : counted.entrySet()) {
      if (!inSummary.contains(e.getKey())) {
        throw bad("map " + e.getKey() + " delivered " + e.getValue()[0] + " blocks but is missing from the summary",
            e.getKey());
      }
    }
    if (totalBlocks != s.getTotalBlocks() || totalBytes != s.getTotalBytes()) {
      throw bad("summary totals " + s.getTotalBlocks() + " blocks / " + s.getTotalBytes() + " bytes, received "
          + totalBlocks + " blocks / " + totalBytes + " bytes", -1);
    }
    for (Map.Entry<Integer, BitSet> e : expected.entrySet()) {
      int m = e.getKey();
      BitSet parts = e.getValue();
      for (int p = parts.nextSetBit(0); p >= 0; p = parts.nextSetBit(p + 1)) {
        if (!seen.contains(((long) p << 32) | (m & 0xffffffffL))) {
          throw bad("no data for partition " + p + " of map " + m + " attempt " + attempts.get(m)
              + " although Spark recorded it as non-empty", m);
        }
      }
    }
  }

  /** The stream ended: it must have ended with a summary. */
  public void onEnd() throws FetchException {
    if (!summarized) {
      throw bad("stream ended without a summary", -1);
    }
  }

  public long blocksReceived() {
    long n = 0;
    for (long[] c : counted.values()) {
      n += c[0];
    }
    return n;
  }
}
