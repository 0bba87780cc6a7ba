package io.croupier.spark.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.ByteString;
import io.croupier.proto.v1.FetchSummary;
import io.croupier.proto.v1.FetchedBlock;
import io.croupier.proto.v1.MapSummary;
import java.util.ArrayList;
import java.util.BitSet;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.junit.jupiter.api.Test;

class FetchVerifierTest {
  private final Map<Integer, Long> attempts = new TreeMap<>(Map.of(0, 100L, 1, 101L));
  private final Map<Integer, BitSet> expected = new TreeMap<>();
  private final List<FetchedBlock> blocks = new ArrayList<>();

  FetchVerifierTest() {
    BitSet b0 = new BitSet();
    b0.set(5);
    b0.set(6);
    BitSet b1 = new BitSet();
    b1.set(5);
    expected.put(0, b0);
    expected.put(1, b1);
    // partition 5: map 0 (two fragments: one logical stream), map 1; partition 6: map 0
    blocks.add(block(5, 0, 100, 0, BlockFormat.CONTINUED, "hel"));
    blocks.add(block(5, 0, 100, 1, BlockFormat.FINAL, "lo"));
    blocks.add(block(5, 1, 101, 0, BlockFormat.FINAL, "x"));
    blocks.add(block(6, 0, 100, 0, BlockFormat.FINAL, "y"));
  }

  static FetchedBlock block(int p, int m, long a, int seq, byte flag, String payload) {
    ByteString data = ByteString.copyFrom(new byte[] {flag}).concat(ByteString.copyFromUtf8(payload));
    return FetchedBlock.newBuilder().setPartitionId(p).setMapIndex(m).setAttemptId(a).setSeq(seq)
        .setCrc32(Crc.of(data)).setData(data).build();
  }

  private FetchVerifier verifier() {
    return new FetchVerifier("test", 5, 7, attempts, expected);
  }

  private FetchSummary summary() {
    long[] b = new long[2];
    long[] n = new long[2];
    for (FetchedBlock x : blocks) {
      b[x.getMapIndex()]++;
      n[x.getMapIndex()] += x.getData().size();
    }
    return FetchSummary.newBuilder()
        .addMaps(MapSummary.newBuilder().setMapIndex(0).setAttemptId(100).setBlocks(b[0]).setBytes(n[0]))
        .addMaps(MapSummary.newBuilder().setMapIndex(1).setAttemptId(101).setBlocks(b[1]).setBytes(n[1]))
        .setTotalBlocks(b[0] + b[1]).setTotalBytes(n[0] + n[1]).build();
  }

  private List<String> run(FetchVerifier v, List<FetchedBlock> bs, FetchSummary s) throws FetchException {
    List<String> streams = new ArrayList<>();
    for (FetchedBlock b : bs) {
      List<ByteString> out = v.onBlock(b);
      if (out != null) {
        streams.add(ByteString.copyFrom(out).toStringUtf8());
      }
    }
    v.onSummary(s);
    v.onEnd();
    return streams;
  }

  @Test
  void goodStreamReassemblesFragments() throws FetchException {
    FetchVerifier v = verifier();
    assertNull(v.onBlock(blocks.get(0)));
    assertNotNull(v.onBlock(blocks.get(1)));
    FetchVerifier v2 = verifier();
    assertEquals(List.of("hello", "x", "y"), run(v2, blocks, summary()));
    assertEquals(4, v2.blocksReceived());
  }

  @Test
  void crcMismatch() {
    FetchedBlock b = blocks.get(2).toBuilder().setCrc32(blocks.get(2).getCrc32() ^ 1).build();
    blocks.set(2, b);
    FetchException e = assertThrows(FetchException.class, () -> run(verifier(), blocks, summary()));
    assertTrue(e.getMessage().contains("CRC"), e.getMessage());
    assertEquals(1, e.mapIndex());
  }

  @Test
  void seqGap() {
    blocks.set(1, blocks.get(1).toBuilder().setSeq(2).build());
    FetchException e = assertThrows(FetchException.class, () -> run(verifier(), blocks, summary()));
    assertTrue(e.getMessage().contains("seq"), e.getMessage());
  }

  @Test
  void wrongAttempt() {
    FetchedBlock b = block(5, 1, 999, 0, BlockFormat.FINAL, "x");
    blocks.set(2, b);
    FetchException e = assertThrows(FetchException.class, () -> run(verifier(), blocks, summary()));
    assertTrue(e.getMessage().contains("attempt 999"), e.getMessage());
  }

  @Test
  void summaryDisagreesWithWhatArrived() {
    FetchSummary s = summary();
    FetchSummary bad = s.toBuilder().setMaps(0, s.getMaps(0).toBuilder().setBlocks(4)).setTotalBlocks(5).build();
    FetchException e = assertThrows(FetchException.class, () -> run(verifier(), blocks, bad));
    assertTrue(e.getMessage().contains("summary promises 4 blocks"), e.getMessage());
    assertEquals(0, e.mapIndex());
  }

  @Test
  void summaryTotalsChecked() {
    FetchSummary bad = summary().toBuilder().setTotalBytes(1).build();
    assertThrows(FetchException.class, () -> run(verifier(), blocks, bad));
  }

  @Test
  void missingPartitionDetectedEvenIfSummaryAgrees() {
    blocks.remove(3); // partition 6 of map 0 never arrives, and the server's summary does not count it
    FetchException e = assertThrows(FetchException.class, () -> run(verifier(), blocks, summary()));
    assertTrue(e.getMessage().contains("no data for partition 6 of map 0"), e.getMessage());
  }

  @Test
  void dataSparkThinksIsEmptyIsRejected() {
    expected.get(0).clear(6);
    assertThrows(FetchException.class, () -> run(verifier(), blocks, summary()));
  }

  @Test
  void cutStream() {
    blocks.remove(1); // the CONTINUED fragment is never finished
    assertThrows(FetchException.class, () -> run(verifier(), blocks, summary()));
  }

  @Test
  void outOfOrder() {
    FetchedBlock x = blocks.remove(2);
    blocks.add(x); // partition 5 map 1 after partition 6
    assertThrows(FetchException.class, () -> run(verifier(), blocks, summary()));
  }

  @Test
  void noSummary() throws FetchException {
    FetchVerifier v = verifier();
    for (FetchedBlock b : blocks) {
      v.onBlock(b);
    }
    assertThrows(FetchException.class, v::onEnd);
  }

  @Test
  void partitionOutsideRange() {
    blocks.add(block(7, 1, 101, 0, BlockFormat.FINAL, "z"));
    assertThrows(FetchException.class, () -> run(verifier(), blocks, summary()));
  }
}
