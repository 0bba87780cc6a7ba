package io.croupier.spark.client;

import static org.junit.jupiter.api.Assertions.assertEquals;

import com.google.protobuf.ByteString;
import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Test;

class CrcTest {
  @Test
  void ieeeCheckValue() {
    // The standard CRC-32/ISO-HDLC check value, as computed by zlib and Rust's crc32fast.
    byte[] data = "123456789".getBytes(StandardCharsets.US_ASCII);
    assertEquals(0xCBF43926, Crc.of(data, 0, data.length));
    assertEquals(0, Crc.of(new byte[0], 0, 0));
  }

  @Test
  void ropeByteStringMatchesArray() {
    byte[] a = new byte[100_000];
    for (int i = 0; i < a.length; i++) {
      a[i] = (byte) (i * 31 + 7);
    }
    ByteString rope = ByteString.copyFrom(a, 0, 50_000).concat(ByteString.copyFrom(a, 50_000, 50_000));
    assertEquals(Crc.of(a, 0, a.length), Crc.of(rope));
    assertEquals(Crc.of(a, 10, 20), Crc.of(ByteString.copyFrom(a).substring(10, 30)));
  }
}
