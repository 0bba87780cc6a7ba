package io.croupier.spark.client;

import com.google.protobuf.ByteString;
import java.util.zip.CRC32;

/** CRC-32 (IEEE 802.3, zlib polynomial), the checksum the server verifies on every block. */
public final class Crc {
  private Crc() {}

  public static int of(byte[] data, int off, int len) {
    CRC32 crc = new CRC32();
    crc.update(data, off, len);
    return (int) crc.getValue();
  }

  public static int of(ByteString data) {
    CRC32 crc = new CRC32();
    for (java.nio.ByteBuffer b : data.asReadOnlyByteBufferList()) {
      crc.update(b);
    }
    return (int) crc.getValue();
  }
}
