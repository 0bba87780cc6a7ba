package io.croupier.spark.client;

import io.croupier.proto.v1.ShuffleServiceGrpc;
import io.grpc.ManagedChannel;
import io.grpc.netty.NettyChannelBuilder;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;

/** Process-wide gRPC channels to the Croupier servers, one per address. */
public final class CroupierClients {
  private static final Map<String, ManagedChannel> CHANNELS = new ConcurrentHashMap<>();
  private static volatile ScheduledExecutorService timer;

  private CroupierClients() {}

  public static ManagedChannel channel(String server, ClientConf conf) {
    return CHANNELS.computeIfAbsent(server, s -> NettyChannelBuilder
        .forAddress(ServerList.host(s), ServerList.port(s))
        .usePlaintext()
        .maxInboundMessageSize(conf.maxInboundMessageBytes)
        .flowControlWindow(conf.flowControlWindowBytes)
        .keepAliveTime(60, TimeUnit.SECONDS)
        .keepAliveTimeout(20, TimeUnit.SECONDS)
        .build());
  }

  public static ShuffleServiceGrpc.ShuffleServiceBlockingStub blocking(String server, ClientConf conf) {
    return ShuffleServiceGrpc.newBlockingStub(channel(server, conf))
        .withDeadlineAfter(conf.rpcTimeoutMs, TimeUnit.MILLISECONDS);
  }

  /** A blocking stub without deadline, for long server streams (Fetch). */
  public static ShuffleServiceGrpc.ShuffleServiceBlockingStub streaming(String server, ClientConf conf) {
    return ShuffleServiceGrpc.newBlockingStub(channel(server, conf));
  }

  public static ShuffleServiceGrpc.ShuffleServiceStub async(String server, ClientConf conf) {
    return ShuffleServiceGrpc.newStub(channel(server, conf));
  }

  /** Shared daemon timer (push retries). */
  public static ScheduledExecutorService timer() {
    ScheduledExecutorService t = timer;
    if (t == null) {
      synchronized (CroupierClients.class) {
        t = timer;
        if (t == null) {
          ScheduledThreadPoolExecutor ex = new ScheduledThreadPoolExecutor(1, r -> {
            Thread th = new Thread(r, "croupier-timer");
            th.setDaemon(true);
            return th;
          });
          ex.setRemoveOnCancelPolicy(true);
          timer = t = ex;
        }
      }
    }
    return t;
  }

  public static void shutdown() {
    for (ManagedChannel ch : CHANNELS.values()) {
      ch.shutdown();
    }
    for (ManagedChannel ch : CHANNELS.values()) {
      try {
        if (!ch.awaitTermination(2, TimeUnit.SECONDS)) {
          ch.shutdownNow();
        }
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        ch.shutdownNow();
      }
    }
    CHANNELS.clear();
  }

  static ScheduledExecutorService newTimerForTests() {
    return Executors.newSingleThreadScheduledExecutor();
  }
}
