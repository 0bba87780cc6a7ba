package io.croupier.spark.client;

import io.croupier.proto.v1.ShuffleServiceGrpc;
import io.grpc.ConnectivityState;
import io.grpc.ManagedChannel;
import io.grpc.netty.NettyChannelBuilder;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
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

  /**
   * Waits (at most {@code conf.connectTimeoutMs}) until the channel to {@code server} is connected. A
   * channel whose server went away backs off exponentially before reconnecting, and calls made meanwhile
   * fail at once; this resets the backoff so a server that came back is used right away, and gives a
   * server that is starting a moment to answer. Calls still fail fast when it stays unreachable.
   */
  public static ManagedChannel ready(String server, ClientConf conf) {
    ManagedChannel ch = channel(server, conf);
    ConnectivityState st = ch.getState(true);
    if (st == ConnectivityState.READY) {
      return ch;
    }
    if (st == ConnectivityState.TRANSIENT_FAILURE) {
      ch.resetConnectBackoff();
    }
    long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(conf.connectTimeoutMs);
    while (true) {
      st = ch.getState(true);
      if (st == ConnectivityState.READY || st == ConnectivityState.SHUTDOWN) {
        return ch;
      }
      long left = deadline - System.nanoTime();
      if (left <= 0) {
        return ch;
      }
      CountDownLatch changed = new CountDownLatch(1);
      ch.notifyWhenStateChanged(st, changed::countDown);
      try {
        if (!changed.await(Math.min(left, TimeUnit.MILLISECONDS.toNanos(200)), TimeUnit.NANOSECONDS)
            && ch.getState(false) == ConnectivityState.TRANSIENT_FAILURE) {
          ch.resetConnectBackoff();
        }
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        return ch;
      }
    }
  }

  public static ShuffleServiceGrpc.ShuffleServiceBlockingStub blocking(String server, ClientConf conf) {
    return ShuffleServiceGrpc.newBlockingStub(ready(server, conf))
        .withDeadlineAfter(conf.rpcTimeoutMs, TimeUnit.MILLISECONDS);
  }

  /** A blocking stub without deadline, for long server streams (Fetch). */
  public static ShuffleServiceGrpc.ShuffleServiceBlockingStub streaming(String server, ClientConf conf) {
    return ShuffleServiceGrpc.newBlockingStub(ready(server, conf));
  }

  public static ShuffleServiceGrpc.ShuffleServiceStub async(String server, ClientConf conf) {
    return ShuffleServiceGrpc.newStub(ready(server, conf));
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
