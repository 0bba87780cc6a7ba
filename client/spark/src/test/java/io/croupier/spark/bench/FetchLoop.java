package io.croupier.spark.bench;

import com.google.protobuf.ByteString;
import io.croupier.proto.v1.FetchRequest;
import io.croupier.proto.v1.FetchResponse;
import io.croupier.proto.v1.FetchedBlock;
import io.croupier.spark.client.ClientConf;
import io.croupier.spark.client.CroupierClients;
import io.croupier.spark.client.Crc;
import io.croupier.spark.client.ReceivedFetch;
import io.grpc.ClientCall;
import io.grpc.stub.ClientCalls;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import java.lang.management.ManagementFactory;
import java.util.Arrays;
import java.util.concurrent.LinkedBlockingQueue;

/**
 * The JVM side of a fetch, alone (not a test; docs/PERFORMANCE.md round 7): fetches every partition of a
 * shuffle written by {@code croupier load} through the plugin's own channels, one partition at a time with
 * the reader's read-ahead, checks each block's CRC, and prints throughput and this process's CPU per GiB for
 * each round.
 *
 * <pre>
 * mvn -q test-compile dependency:build-classpath -Dmdep.outputFile=cp.txt
 * java -cp target/test-classes:target/classes:$(cat cp.txt) io.croupier.spark.bench.FetchLoop \
 *     SERVER APP SHUFFLE PARTITIONS ROUNDS HTTP2_FRAME_BYTES MAPS [zerocopy|copy]
 * </pre>
 *
 * <p>Responses are delivered on the transport's thread, as the plugin's {@code FetchStream} does. The last
 * argument picks how they are parsed ({@link ReceivedFetch}): {@code zerocopy} over the receive buffers, released
 * once the message's blocks are checked, or {@code copy} as grpc's protobuf marshaller does.
 */
public final class FetchLoop {
  public static void main(String[] args) throws Exception {
    String server = args[0];
    String app = args[1];
    int shuffle = Integer.parseInt(args[2]);
    int partitions = Integer.parseInt(args[3]);
    int rounds = Integer.parseInt(args[4]);
    ClientConf cc = new ClientConf();
    cc.http2MaxFrameBytes = Integer.parseInt(args[5]);
    com.sun.management.OperatingSystemMXBean os =
        (com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean();
    boolean zeroCopy = args.length < 8 || args[7].equals("zerocopy");
    for (int r = 0; r < rounds; r++) {
      long[] firstNanos = new long[partitions];
      long cpu0 = os.getProcessCpuTime();
      long t0 = System.nanoTime();
      long bytes = 0;
      for (int p = 0; p < partitions; p++) {
        LinkedBlockingQueue<Object> q = new LinkedBlockingQueue<>();
        FetchRequest req = FetchRequest.newBuilder().setAppId(app).setShuffleId(shuffle).setPartitionStart(p)
            .setPartitionEnd(p + 1).setMapStart(0).setMapEnd(Integer.parseInt(args[6])).setChunkBytesMax(cc.fetchChunkBytes).build();
        final ClientCallStreamObserver<?>[] call = new ClientCallStreamObserver<?>[1];
        var stub = CroupierClients.async(server, cc, null);
        long asked = System.nanoTime();
        ClientCall<FetchRequest, ReceivedFetch> c = ReceivedFetch.newCall(stub, zeroCopy);
        ClientCalls.asyncServerStreamingCall(c, req, new ClientResponseObserver<FetchRequest, ReceivedFetch>() {
          @Override
          public void beforeStart(ClientCallStreamObserver<FetchRequest> s) {
            call[0] = s;
            s.disableAutoRequestWithInitial(2);
          }
          @Override
          public void onNext(ReceivedFetch v) { q.add(v); }
          @Override
          public void onError(Throwable t) { q.add(t); }
          @Override
          public void onCompleted() { q.add("end"); }
        });
        while (true) {
          Object o = q.take();
          if (o instanceof Throwable) {
            throw new RuntimeException((Throwable) o);
          }
          if (!(o instanceof ReceivedFetch)) {
            break;
          }
          if (firstNanos[p] == 0) {
            firstNanos[p] = System.nanoTime() - asked;
          }
          call[0].request(1);
          ReceivedFetch received = (ReceivedFetch) o;
          FetchResponse resp = received.response;
          if (resp.hasChunk()) {
            for (FetchedBlock b : resp.getChunk().getBlocksList()) {
              ByteString d = b.getData();
              if (Crc.of(d) != b.getCrc32()) {
                throw new IllegalStateException("crc");
              }
              bytes += d.size();
            }
          }
          received.release();
        }
      }
      double s = (System.nanoTime() - t0) / 1e9;
      double cpu = (os.getProcessCpuTime() - cpu0) / 1e9;
      double gib = bytes / (double) (1L << 30);
      Arrays.sort(firstNanos);
      System.out.printf("round %d: %.3f GiB in %.2f s = %.2f GiB/s, client CPU %.2f s/GiB, first response %.1f ms"
          + " (median of %d partitions)%n", r, gib, s, gib / s, cpu / gib, firstNanos[partitions / 2] / 1e6, partitions);
    }
    CroupierClients.shutdown();
  }
}
