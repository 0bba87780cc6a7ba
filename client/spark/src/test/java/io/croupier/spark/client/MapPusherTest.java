package io.croupier.spark.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.croupier.proto.v1.Block;
import io.croupier.proto.v1.PartitionCount;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

class MapPusherTest {
  static final class FakeSink implements BatchSink {
    final List<List<Block>> batches = new ArrayList<>();
    boolean finished;
    boolean aborted;
    boolean committedElsewhere;

    @Override
    public void send(List<Block> blocks) {
      batches.add(blocks);
    }

    @Override
    public void finish() {
      finished = true;
    }

    @Override
    public void abort(String reason) {
      aborted = true;
    }

    @Override
    public boolean mapCommittedElsewhere() {
      return committedElsewhere;
    }

    long bytes(List<Block> batch) {
      long n = 0;
      for (Block b : batch) {
        n += b.getData().size();
      }
      return n;
    }
  }

  private final FakeSink[] sinks = new FakeSink[3];

  private MapPusher pusher(int[] owner, long batch, long maxBatch, int maxBlock) {
    return new MapPusher(owner, 3, s -> {
      assertNull(sinks[s], "sink opened twice");
      sinks[s] = new FakeSink();
      return sinks[s];
    }, batch, maxBatch, maxBlock);
  }

  private static byte[] block(int len, int fill) {
    byte[] b = new byte[len];
    java.util.Arrays.fill(b, (byte) fill);
    b[0] = BlockFormat.FINAL;
    return b;
  }

  @Test
  void batchesAreBoundedAndRoutedToTheOwner() throws IOException {
    int[] owner = {0, 1, 0, 2, 0};
    MapPusher p = pusher(owner, 1000, 2500, 4096);
    for (int i = 0; i < 50; i++) {
      p.addBlock(i % 5 == 1 ? 1 : (i % 2 == 0 ? 0 : 2), block(100 + i * 10, i), 100 + i * 10);
    }
    p.addBlock(4, block(3000, 9), 3000); // one block bigger than the batch limit travels alone
    p.finish();
    long total = 0;
    for (int s = 0; s < 3; s++) {
      if (sinks[s] == null) {
        continue;
      }
      assertTrue(sinks[s].finished);
      for (int i = 0; i < sinks[s].batches.size(); i++) {
        List<Block> batch = sinks[s].batches.get(i);
        long bytes = sinks[s].bytes(batch);
        total += bytes;
        assertTrue(bytes <= 2500 || batch.size() == 1, "batch too big: " + bytes);
        if (i < sinks[s].batches.size() - 1) {
          assertTrue(bytes >= 1000 || sinks[s].bytes(sinks[s].batches.get(i + 1)) + bytes > 2500,
              "batch sent too early: " + bytes);
        }
        for (Block b : batch) {
          assertEquals(s, owner[b.getPartitionId()], "block routed to the wrong server");
          assertEquals(Crc.of(b.getData()), b.getCrc32());
        }
      }
    }
    long[] lengths = p.partitionLengths();
    long sum = 0;
    for (long l : lengths) {
      sum += l;
    }
    assertEquals(sum, total);
    assertEquals(total, p.bytesPushed());
  }

  @Test
  void seqNumbersPerPartitionAndCommitCounts() throws IOException {
    int[] owner = {0, 1, 0};
    MapPusher p = pusher(owner, 1 << 20, 4 << 20, 4096);
    for (int i = 0; i < 7; i++) {
      p.addBlock(0, block(10, 1), 10);
      if (i < 3) {
        p.addBlock(2, block(20, 2), 20);
      }
    }
    p.finish();
    List<Block> all = sinks[0].batches.get(0);
    int seq0 = 0;
    int seq2 = 0;
    for (Block b : all) {
      if (b.getPartitionId() == 0) {
        assertEquals(seq0++, b.getSeq());
      } else {
        assertEquals(seq2++, b.getSeq());
      }
    }
    assertNull(sinks[1], "no stream to a server without data");
    List<PartitionCount> c0 = p.partitionCounts(0);
    assertEquals(2, c0.size());
    assertEquals(PartitionCount.newBuilder().setPartitionId(0).setBlocks(7).setBytes(70).build(), c0.get(0));
    assertEquals(PartitionCount.newBuilder().setPartitionId(2).setBlocks(3).setBytes(60).build(), c0.get(1));
    assertTrue(p.partitionCounts(1).isEmpty());
    assertTrue(p.hasDataOn(0));
    assertTrue(!p.hasDataOn(1));
    assertEquals(List.of(0), MapCommitter.commitOrder(p, 0, 3));
    assertEquals(List.of(1, 0), MapCommitter.commitOrder(p, 4, 3));
  }

  @Test
  void framedStreamsBecomeBlocks() throws IOException {
    int[] owner = {0};
    MapPusher p = new MapPusher(owner, 1, s -> {
      sinks[0] = new FakeSink();
      return sinks[0];
    }, 100, 200, 64);
    FramingOutputStream out = p.openStream(0);
    out.write(new byte[150]);
    out.close();
    p.finish();
    int blocks = 0;
    for (List<Block> b : sinks[0].batches) {
      blocks += b.size();
    }
    assertEquals(3, blocks); // 63 + 63 + 24 payload bytes
    assertEquals(3, p.blocksOf(0));
    assertEquals(150 + 3, p.partitionLengths()[0]);
  }

  @Test
  void nothingSentOnceAnotherAttemptCommitted() throws IOException {
    int[] owner = {0};
    MapPusher p = new MapPusher(owner, 1, s -> {
      sinks[0] = new FakeSink();
      return sinks[0];
    }, 10, 20, 64);
    p.addBlock(0, block(10, 1), 10);
    sinks[0].committedElsewhere = true;
    p.addBlock(0, block(10, 1), 10);
    p.finish();
    assertEquals(1, sinks[0].batches.size());
    assertTrue(p.anyMapCommittedElsewhere());
    p.abort("test");
    assertTrue(sinks[0].aborted);
  }
}
