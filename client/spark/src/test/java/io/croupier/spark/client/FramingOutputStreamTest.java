package io.croupier.spark.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

class FramingOutputStreamTest {
  private final List<byte[]> blocks = new ArrayList<>();

  private FramingOutputStream stream(int max) {
    return new FramingOutputStream(data -> blocks.add(data.toByteArray()), max);
  }

  private static byte[] join(List<byte[]> bs) {
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    for (byte[] b : bs) {
      out.write(b, 1, b.length - 1);
    }
    return out.toByteArray();
  }

  @Test
  void smallStreamIsOneFinalBlock() throws IOException {
    FramingOutputStream s = stream(1024);
    s.write(new byte[] {1, 2, 3});
    s.write(4);
    assertEquals(4, s.streamBytes());
    assertEquals(0, blocks.size());
    s.close();
    s.close(); // idempotent
    assertEquals(1, blocks.size());
    assertArrayEquals(new byte[] {BlockFormat.FINAL, 1, 2, 3, 4}, blocks.get(0));
  }

  @Test
  void emptyStreamStillEndsWithAFinalBlock() throws IOException {
    FramingOutputStream s = stream(1024);
    s.close();
    assertEquals(1, blocks.size());
    assertArrayEquals(new byte[] {BlockFormat.FINAL}, blocks.get(0));
  }

  @Test
  void bigStreamIsCutIntoContinuedFragments() throws IOException {
    byte[] data = new byte[10_000];
    new Random(1).nextBytes(data);
    FramingOutputStream s = stream(1000);
    s.write(data, 0, 3000);
    for (int i = 3000; i < 3500; i++) {
      s.write(data[i]);
    }
    s.write(data, 3500, data.length - 3500);
    s.close();
    for (int i = 0; i < blocks.size(); i++) {
      byte[] b = blocks.get(i);
      assertEquals(i == blocks.size() - 1 ? BlockFormat.FINAL : BlockFormat.CONTINUED, b[0]);
      if (i < blocks.size() - 1) {
        assertEquals(1000, b.length);
      }
    }
    assertEquals(11, blocks.size()); // 10000 bytes / 999 per block
    assertArrayEquals(data, join(blocks));
    assertThrows(IOException.class, () -> s.write(1));
  }

  @Test
  void blocksSpanningManyChunksKeepEveryByte() throws IOException {
    // Blocks bigger than a chunk are ropes of several chunks; writes of every size cross chunk edges.
    int max = 3 * FramingOutputStream.CHUNK_BYTES + 12345;
    byte[] data = new byte[4 * max + 777];
    new Random(3).nextBytes(data);
    FramingOutputStream s = stream(max);
    Random sizes = new Random(4);
    int i = 0;
    while (i < data.length) {
      int n = Math.min(data.length - i, sizes.nextInt(3) == 0 ? 1 : sizes.nextInt(70_000));
      if (n == 1) {
        s.write(data[i]);
      } else {
        s.write(data, i, n);
      }
      i += n;
    }
    s.close();
    assertEquals(5, blocks.size());
    for (int b = 0; b < 4; b++) {
      assertEquals(max, blocks.get(b).length);
      assertEquals(BlockFormat.CONTINUED, blocks.get(b)[0]);
    }
    assertEquals(BlockFormat.FINAL, blocks.get(4)[0]);
    assertArrayEquals(data, join(blocks));
  }

  @Test
  void manySmallWritesMakeTheSameBlocks() throws IOException {
    byte[] data = new byte[5000];
    new Random(2).nextBytes(data);
    FramingOutputStream s = new FramingOutputStream(d -> blocks.add(d.toByteArray()), 2000);
    for (int i = 0; i < data.length; i += 7) {
      s.write(data, i, Math.min(7, data.length - i));
    }
    s.close();
    assertEquals(3, blocks.size());
    assertArrayEquals(data, join(blocks));
  }
}
