package io.croupier.spark.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

class FramingOutputStreamTest {
  private final List<byte[]> blocks = new ArrayList<>();

  private FramingOutputStream stream(int max) {
    return new FramingOutputStream((data, len) -> blocks.add(Arrays.copyOf(data, len)), max);
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
  void sizeHintDoesNotChangeTheBlocks() throws IOException {
    byte[] data = new byte[5000];
    new Random(2).nextBytes(data);
    FramingOutputStream s = new FramingOutputStream((d, len) -> blocks.add(Arrays.copyOf(d, len)), 2000, 1 << 20);
    for (int i = 0; i < data.length; i += 7) {
      s.write(data, i, Math.min(7, data.length - i));
    }
    s.close();
    assertEquals(3, blocks.size());
    assertArrayEquals(data, join(blocks));
  }
}
