package io.croupier.spark.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.ManagedChannel;
import java.io.DataInputStream;
import java.io.EOFException;
import java.io.IOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

/**
 * What the plugin's channel writes on the wire: a listening socket stands in for the server and decodes the
 * client's HTTP/2 connection preface and frames, so the test sees exactly the SETTINGS a Croupier server gets.
 */
class FrameSizeNegotiatorTest {
  private static final byte[] PREFACE = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".getBytes(StandardCharsets.US_ASCII);
  private static final int FRAME_SETTINGS = 4;
  private static final int SETTINGS_MAX_FRAME_SIZE = 5;
  private static final int FLAG_ACK = 1;

  /** Every SETTINGS_MAX_FRAME_SIZE value the client advertises within {@code windowMs} of connecting. */
  private static List<Integer> advertisedFrameSizes(int clientFrameBytes, long windowMs) throws IOException {
    ClientConf conf = new ClientConf();
    conf.http2MaxFrameBytes = clientFrameBytes;
    try (ServerSocket listener = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
      listener.setSoTimeout(10_000);
      ManagedChannel channel = CroupierClients.channel("127.0.0.1:" + listener.getLocalPort(), conf);
      try {
        channel.getState(true); // connect now
        try (Socket s = listener.accept()) {
          DataInputStream in = new DataInputStream(s.getInputStream());
          byte[] preface = new byte[PREFACE.length];
          in.readFully(preface);
          assertEquals(new String(PREFACE, StandardCharsets.US_ASCII),
              new String(preface, StandardCharsets.US_ASCII), "HTTP/2 client preface");
          List<Integer> sizes = new ArrayList<>();
          long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(windowMs);
          while (System.nanoTime() < deadline) {
            s.setSoTimeout((int) Math.max(1, TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime())));
            int length;
            int type;
            int flags;
            try {
              length = (in.readUnsignedByte() << 16) | in.readUnsignedShort();
              type = in.readUnsignedByte();
              flags = in.readUnsignedByte();
              in.readInt(); // stream id
            } catch (SocketTimeoutException | EOFException e) {
              break;
            }
            byte[] payload = new byte[length];
            in.readFully(payload);
            if (type != FRAME_SETTINGS || (flags & FLAG_ACK) != 0) {
              continue;
            }
            assertEquals(0, length % 6, "a SETTINGS payload is a list of 6-byte entries");
            for (int i = 0; i < length; i += 6) {
              int id = ((payload[i] & 0xff) << 8) | (payload[i + 1] & 0xff);
              int value = ((payload[i + 2] & 0xff) << 24) | ((payload[i + 3] & 0xff) << 16)
                  | ((payload[i + 4] & 0xff) << 8) | (payload[i + 5] & 0xff);
              if (id == SETTINGS_MAX_FRAME_SIZE) {
                sizes.add(value);
              }
            }
          }
          return sizes;
        }
      } finally {
        channel.shutdownNow();
      }
    }
  }

  @Test
  void aPlaintextChannelLetsTheServerSendOneMebibyteFrames() throws IOException {
    List<Integer> sizes = advertisedFrameSizes(1 << 20, 3_000);
    assertTrue(sizes.contains(1 << 20), "SETTINGS_MAX_FRAME_SIZE advertised: " + sizes);
    // Nothing larger than asked, and no other value that would shrink it again afterwards.
    assertEquals(1 << 20, sizes.get(sizes.size() - 1), "last SETTINGS_MAX_FRAME_SIZE: " + sizes);
  }

  @Test
  void theHttp2DefaultSendsNoFrameSize() throws IOException {
    List<Integer> sizes = advertisedFrameSizes(16 << 10, 1_000);
    assertTrue(sizes.stream().allMatch(v -> v == 16 << 10), "SETTINGS_MAX_FRAME_SIZE advertised: " + sizes);
  }
}
