package io.croupier.spark.client;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.ByteString;
import io.croupier.proto.v1.FetchChunk;
import io.croupier.proto.v1.FetchRequest;
import io.croupier.proto.v1.FetchResponse;
import io.croupier.proto.v1.FetchSummary;
import io.croupier.proto.v1.FetchedBlock;
import io.croupier.proto.v1.MapSummary;
import io.croupier.proto.v1.ShuffleServiceGrpc;
import io.grpc.Server;
import io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.ServerCallStreamObserver;
import io.grpc.stub.StreamObserver;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.util.ArrayList;
import java.util.BitSet;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * {@link FetchStream} over a real loopback gRPC connection (grpc-netty on both ends, as in a job), against a
 * server that streams prepared responses: every logical stream arrives intact in both parse modes, zero-copy
 * blocks really are views of the receive buffers, and every detached buffer is given back: as the reader
 * moves on, and at close, including responses still queued or arriving after it.
 */
class FetchStreamTest {
  private static final int MAPS = 3;
  private static final int PARTITIONS = 4;
  private static final int PREFETCH = 2;

  private final Map<Integer, Long> attempts = new TreeMap<>();
  private final Map<Integer, BitSet> expected = new TreeMap<>();
  /** The logical streams in the order the server sends them: payload bytes without the block headers. */
  private final List<byte[]> streams = new ArrayList<>();
  private final List<FetchResponse> responses = new ArrayList<>();
  private Server server;
  private String address;
  private volatile CountDownLatch sent;
  /** The server sends this many responses, then holds the call open until {@code hold} opens or 10 s. */
  private volatile int sendOnly = Integer.MAX_VALUE;
  private final CountDownLatch hold = new CountDownLatch(1);

  @BeforeEach
  void setUp() throws Exception {
    Random rnd = new Random(42);
    List<FetchedBlock> blocks = new ArrayList<>();
    long[][] perMap = new long[MAPS][2];
    for (int m = 0; m < MAPS; m++) {
      attempts.put(m, 1000L + m);
      expected.put(m, new BitSet());
    }
    for (int p = 0; p < PARTITIONS; p++) {
      for (int m = 0; m < MAPS; m++) {
        if ((p + m) % 4 == 3) {
          continue; // an empty (map, partition)
        }
        expected.get(m).set(p);
        // Mostly one-block streams of up to 600 KiB; every fifth is cut into three fragments.
        int fragments = (p * MAPS + m) % 5 == 0 ? 3 : 1;
        ByteArrayOutputStream whole = new ByteArrayOutputStream();
        for (int seq = 0; seq < fragments; seq++) {
          byte[] payload = new byte[1 + rnd.nextInt(600 << 10)];
          rnd.nextBytes(payload);
          whole.write(payload);
          byte[] data = new byte[payload.length + BlockFormat.HEADER_BYTES];
          data[0] = seq == fragments - 1 ? BlockFormat.FINAL : BlockFormat.CONTINUED;
          System.arraycopy(payload, 0, data, 1, payload.length);
          blocks.add(FetchedBlock.newBuilder().setPartitionId(p).setMapIndex(m).setAttemptId(1000L + m)
              .setSeq(seq).setCrc32(Crc.of(data, 0, data.length)).setData(ByteString.copyFrom(data)).build());
          perMap[m][0]++;
          perMap[m][1] += data.length;
        }
        streams.add(whole.toByteArray());
      }
    }
    // Chunks of up to 1 MiB of data, so that streams span messages and messages hold several streams.
    FetchChunk.Builder chunk = FetchChunk.newBuilder();
    long chunkBytes = 0;
    for (FetchedBlock b : blocks) {
      if (chunkBytes > 0 && chunkBytes + b.getData().size() > (1 << 20)) {
        responses.add(FetchResponse.newBuilder().setChunk(chunk).build());
        chunk = FetchChunk.newBuilder();
        chunkBytes = 0;
      }
      chunk.addBlocks(b);
      chunkBytes += b.getData().size();
    }
    responses.add(FetchResponse.newBuilder().setChunk(chunk).build());
    FetchSummary.Builder summary = FetchSummary.newBuilder();
    long totalBlocks = 0;
    long totalBytes = 0;
    for (int m = 0; m < MAPS; m++) {
      summary.addMaps(MapSummary.newBuilder().setMapIndex(m).setAttemptId(1000L + m).setBlocks(perMap[m][0])
          .setBytes(perMap[m][1]));
      totalBlocks += perMap[m][0];
      totalBytes += perMap[m][1];
    }
    responses.add(FetchResponse.newBuilder()
        .setSummary(summary.setTotalBlocks(totalBlocks).setTotalBytes(totalBytes)).build());

    server = NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", 0))
        .addService(new ShuffleServiceGrpc.ShuffleServiceImplBase() {
          @Override
          public void fetch(FetchRequest r, StreamObserver<FetchResponse> out) {
            ServerCallStreamObserver<FetchResponse> call = (ServerCallStreamObserver<FetchResponse>) out;
            call.setOnCancelHandler(() -> { });
            int n = 0;
            for (FetchResponse resp : responses) {
              if (call.isCancelled()) {
                break;
              }
              if (n++ == sendOnly) {
                try {
                  hold.await(10, TimeUnit.SECONDS);
                } catch (InterruptedException e) {
                  Thread.currentThread().interrupt();
                }
                return;
              }
              out.onNext(resp);
            }
            if (!call.isCancelled()) {
              out.onCompleted();
            }
            CountDownLatch s = sent;
            if (s != null) {
              s.countDown();
            }
          }
        }).build().start();
    address = "127.0.0.1:" + server.getPort();
  }

  @AfterEach
  void tearDown() throws Exception {
    hold.countDown();
    server.shutdownNow().awaitTermination(10, TimeUnit.SECONDS);
  }

  private FetchStream open(boolean zeroCopy) {
    ClientConf cc = new ClientConf();
    FetchRequest req = FetchRequest.newBuilder().setAppId("app").setShuffleId(1).setPartitionStart(0)
        .setPartitionEnd(PARTITIONS).setMapStart(0).setMapEnd(MAPS).build();
    FetchVerifier verifier = new FetchVerifier("test fetch", 0, PARTITIONS, attempts, expected);
    return new FetchStream(CroupierClients.async(address, cc, null), req, verifier, PREFETCH, 30_000, "test fetch",
        zeroCopy);
  }

  private static byte[] join(List<ByteString> fragments) {
    return ByteString.copyFrom(fragments).toByteArray();
  }

  private void readsEveryStream(boolean zeroCopy) throws Exception {
    long zeroCopied0 = ReceivedFetch.PARSED_ZERO_COPY.get();
    long copied0 = ReceivedFetch.PARSED_BY_COPY.get();
    long released0 = ReceivedFetch.RELEASED.get();
    int maxHeld = 0;
    try (FetchStream s = open(zeroCopy)) {
      for (int i = 0; i < streams.size(); i++) {
        List<ByteString> fragments = s.nextStream();
        assertTrue(fragments != null, "stream " + i + " of " + streams.size() + " missing");
        if (zeroCopy) {
          for (ByteString f : fragments) {
            // A view of a receive buffer, not a copy on the heap.
            assertTrue(f.asReadOnlyByteBufferList().stream().allMatch(java.nio.ByteBuffer::isDirect),
                "stream " + i + " was copied out of the receive buffers");
          }
        }
        assertArrayEquals(streams.get(i), join(fragments), "stream " + i);
        maxHeld = Math.max(maxHeld, s.heldMessages());
      }
      assertNull(s.nextStream());
      long parsed = ReceivedFetch.PARSED_ZERO_COPY.get() - zeroCopied0;
      if (zeroCopy) {
        assertEquals(responses.size(), parsed);
        // Every message was given back as the reader moved past it: none is held once the stream ended.
        assertEquals(0, s.heldMessages());
        assertEquals(parsed, ReceivedFetch.RELEASED.get() - released0);
        // Held: the messages of the stream just handed out (a stream cut in three spans up to three here).
        assertTrue(maxHeld >= 1 && maxHeld <= 3, "held " + maxHeld + " messages at once");
      } else {
        assertEquals(0, parsed);
        assertEquals(responses.size(), ReceivedFetch.PARSED_BY_COPY.get() - copied0);
        assertEquals(released0, ReceivedFetch.RELEASED.get());
      }
    }
  }

  @Test
  void zeroCopyDeliversEveryStreamAsViewsOfTheReceiveBuffersAndReleasesThem() throws Exception {
    readsEveryStream(true);
  }

  @Test
  void copyingDeliversTheSameStreams() throws Exception {
    readsEveryStream(false);
  }

  @Test
  void closeReleasesHeldQueuedAndLateMessages() throws Exception {
    sent = new CountDownLatch(1);
    long parsed0 = ReceivedFetch.PARSED_ZERO_COPY.get();
    long released0 = ReceivedFetch.RELEASED.get();
    FetchStream s = open(true);
    assertArrayEquals(streams.get(0), join(s.nextStream()));
    // Let the read-ahead fill the queue, then close with messages held, queued and in flight.
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
    while (ReceivedFetch.PARSED_ZERO_COPY.get() - parsed0 < 1 + PREFETCH && System.nanoTime() < deadline) {
      Thread.sleep(5);
    }
    assertTrue(s.heldMessages() >= 1);
    s.close();
    assertEquals(0, s.heldMessages());
    // A closed stream never reads as a clean end (null).
    assertThrows(FetchException.class, s::nextStream);
    assertTrue(sent.await(10, TimeUnit.SECONDS), "the server never finished its handler");
    // Whatever was parsed before the cancel reached the server is given back too.
    long parsed = awaitAllReleased(parsed0, released0);
    assertTrue(parsed >= 1 + PREFETCH && parsed < responses.size(), "parsed " + parsed + " of " + responses.size());
  }

  /** Waits until every message parsed zero-copy since the marks is released; returns how many were parsed. */
  private static long awaitAllReleased(long parsed0, long released0) throws InterruptedException {
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
    while (ReceivedFetch.RELEASED.get() - released0 < ReceivedFetch.PARSED_ZERO_COPY.get() - parsed0
        && System.nanoTime() < deadline) {
      Thread.sleep(5);
    }
    long parsed = ReceivedFetch.PARSED_ZERO_COPY.get() - parsed0;
    assertEquals(parsed, ReceivedFetch.RELEASED.get() - released0, "parsed messages never released");
    return parsed;
  }

  @Test
  void aCorruptBlockIsCaughtOverTheReceiveBuffers() throws Exception {
    FetchChunk first = responses.get(0).getChunk();
    FetchedBlock b = first.getBlocks(0);
    byte[] data = b.getData().toByteArray();
    data[data.length / 2] ^= 0x10;
    responses.set(0, FetchResponse.newBuilder()
        .setChunk(first.toBuilder().setBlocks(0, b.toBuilder().setData(ByteString.copyFrom(data)))).build());
    long released0 = ReceivedFetch.RELEASED.get();
    long parsed0 = ReceivedFetch.PARSED_ZERO_COPY.get();
    FetchStream s = open(true);
    FetchException e = assertThrows(FetchException.class, s::nextStream);
    assertTrue(e.getMessage().contains("CRC mismatch in block partition 0 map 0"), e.getMessage());
    s.close();
    assertEquals(0, s.heldMessages());
    assertTrue(awaitAllReleased(parsed0, released0) >= 1);
  }

  private static byte[] readAll(InputStream in) throws IOException {
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    byte[] buf = new byte[8192];
    int n;
    while ((n = in.read(buf, 0, buf.length)) > 0) {
      out.write(buf, 0, n);
    }
    return out.toByteArray();
  }

  @Test
  void anInputFailsOnceTheReaderMovedOnOrClosed() throws Exception {
    FetchStream s = open(true);
    InputStream first = s.open(s.nextStream());
    assertEquals(streams.get(0)[0] & 0xff, first.read());
    InputStream second = s.open(s.nextStream());
    IOException moved = assertThrows(IOException.class, () -> first.read(new byte[16], 0, 16));
    assertTrue(moved.getMessage().contains("moved on"), moved.getMessage());
    int k = Math.min(100, streams.get(1).length);
    assertArrayEquals(java.util.Arrays.copyOf(streams.get(1), k), second.readNBytes(k));
    s.close();
    IOException closed = assertThrows(IOException.class, second::read);
    assertTrue(closed.getMessage().contains("closed"), closed.getMessage());
  }

  @Test
  void closeFromAnotherThreadStopsTheReaderWithoutWrongBytes() throws Exception {
    Random rnd = new Random(7);
    for (int round = 0; round < 12; round++) {
      long parsed0 = ReceivedFetch.PARSED_ZERO_COPY.get();
      long released0 = ReceivedFetch.RELEASED.get();
      FetchStream s = open(true);
      java.util.concurrent.atomic.AtomicReference<Throwable> wrong = new java.util.concurrent.atomic.AtomicReference<>();
      java.util.concurrent.atomic.AtomicInteger intact = new java.util.concurrent.atomic.AtomicInteger();
      Thread reader = new Thread(() -> {
        try {
          for (int i = 0; i < streams.size(); i++) {
            byte[] got = readAll(s.open(s.nextStream()));
            if (!java.util.Arrays.equals(streams.get(i), got)) {
              wrong.set(new AssertionError("stream " + i + " read wrong bytes"));
              return;
            }
            intact.incrementAndGet();
          }
        } catch (IOException stopped) {
          // What a reader must see when the stream is closed under it (FetchException is one too).
          if (!String.valueOf(stopped.getMessage()).contains("closed")) {
            wrong.set(stopped);
          }
        } catch (Throwable t) {
          wrong.set(t);
        }
      });
      reader.start();
      Thread.sleep(rnd.nextInt(15));
      s.close();
      reader.join(10_000);
      assertTrue(!reader.isAlive(), "round " + round + ": the reader did not stop after close");
      if (wrong.get() != null) {
        throw new AssertionError("round " + round + " after " + intact.get() + " intact streams", wrong.get());
      }
      awaitAllReleased(parsed0, released0);
    }
  }

  @Test
  void closeWakesAReaderWaitingForData() throws Exception {
    sendOnly = 1;
    FetchStream s = open(true);
    assertArrayEquals(streams.get(0), readAll(s.open(s.nextStream())));
    java.util.concurrent.atomic.AtomicReference<Throwable> outcome = new java.util.concurrent.atomic.AtomicReference<>();
    Thread reader = new Thread(() -> {
      try {
        // Drains what the first response holds, then waits for a second one that never comes.
        while (s.nextStream() != null) {
          // keep reading
        }
        outcome.set(new AssertionError("clean end without a summary"));
      } catch (Throwable t) {
        outcome.set(t);
      }
    });
    reader.start();
    Thread.sleep(200);
    assertTrue(reader.isAlive(), "the reader should be waiting for data");
    s.close();
    reader.join(5_000); // the idle timeout is 30 s: only close() can have woken it
    assertTrue(!reader.isAlive(), "close() did not wake the waiting reader");
    assertTrue(outcome.get() instanceof FetchException, String.valueOf(outcome.get()));
    assertTrue(outcome.get().getMessage().contains("closed"), outcome.get().getMessage());
  }
}
