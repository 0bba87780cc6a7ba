package io.croupier.spark.client;

import io.croupier.proto.v1.ShuffleServiceGrpc;
import io.grpc.ConnectivityState;
import io.grpc.ManagedChannel;
import io.grpc.netty.GrpcSslContexts;
import io.grpc.netty.InternalNettyChannelBuilder;
import io.grpc.netty.InternalProtocolNegotiators;
import io.grpc.netty.NettyChannelBuilder;
import java.io.File;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;

/**
 * Process-wide gRPC channels to the Croupier servers, one per address and security settings. The security
 * settings (token, TLS) are set once per process by {@link #configure}; stubs attach the token and the
 * app's secret on the given server with an {@link AuthInterceptor}.
 */
public final class CroupierClients {
  private static final Map<ChannelKey, ManagedChannel> CHANNELS = new ConcurrentHashMap<>();
  private static volatile ScheduledExecutorService timer;
  private static volatile CroupierSecurity security = CroupierSecurity.NONE;

  private CroupierClients() {}

  private static final class ChannelKey {
    final String server;
    final CroupierSecurity security;

    ChannelKey(String server, CroupierSecurity security) {
      this.server = server;
      this.security = security;
    }

    @Override
    public boolean equals(Object o) {
      return o instanceof ChannelKey && ((ChannelKey) o).server.equals(server)
          && ((ChannelKey) o).security.equals(security);
    }

    @Override
    public int hashCode() {
      return server.hashCode() * 31 + security.hashCode();
    }
  }

  /** Sets the token and TLS settings of this process (the ShuffleManager does, from its SparkConf). */
  public static void configure(CroupierSecurity s) {
    security = s == null ? CroupierSecurity.NONE : s;
  }

  public static CroupierSecurity security() {
    return security;
  }

  public static ManagedChannel channel(String server, ClientConf conf) {
    CroupierSecurity sec = security;
    return CHANNELS.computeIfAbsent(new ChannelKey(server, sec), k -> newChannel(server, conf, sec));
  }

  private static ManagedChannel newChannel(String server, ClientConf conf, CroupierSecurity sec) {
    NettyChannelBuilder b = NettyChannelBuilder
        .forAddress(ServerList.host(server), ServerList.port(server))
        .maxInboundMessageSize(conf.maxInboundMessageBytes)
        .flowControlWindow(conf.flowControlWindowBytes)
        .keepAliveTime(60, TimeUnit.SECONDS)
        .keepAliveTimeout(20, TimeUnit.SECONDS);
    if (sec.tls()) {
      try {
        // grpc-netty's own (relocated in the shaded jar, with Netty) SSL context: JDK provider, ALPN h2.
        b.sslContext(GrpcSslContexts.forClient().trustManager(new File(sec.caFile())).build())
            .useTransportSecurity();
      } catch (Exception e) {
        throw new IllegalArgumentException(CroupierSecurity.CA_FILE_KEY + "=" + sec.caFile()
            + ": cannot use it as the CA of the Croupier servers (a PEM file of CA certificates is expected): " + e,
            e);
      }
    } else {
      b.usePlaintext();
      if (conf.http2MaxFrameBytes > 16 << 10) {
        int frame = conf.http2MaxFrameBytes;
        InternalNettyChannelBuilder.setProtocolNegotiatorFactory(b,
            () -> new FrameSizeNegotiator(InternalProtocolNegotiators.plaintext(), frame));
      }
    }
    return b.build();
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

  /**
   * A blocking stub with the RPC deadline, sending the token and {@code appSecret} (the secret of the app
   * the calls name, on this server; null when none is known or needed).
   */
  public static ShuffleServiceGrpc.ShuffleServiceBlockingStub blocking(String server, ClientConf conf,
      String appSecret) {
    ShuffleServiceGrpc.ShuffleServiceBlockingStub stub = ShuffleServiceGrpc.newBlockingStub(ready(server, conf))
        .withDeadlineAfter(conf.rpcTimeoutMs, TimeUnit.MILLISECONDS);
    AuthInterceptor auth = AuthInterceptor.of(security, appSecret);
    return auth == null ? stub : stub.withInterceptors(auth);
  }

  /**
   * A future stub that never waits for the channel to connect (unlike {@link #blocking} and {@link #async}):
   * a call to a server that is down fails on its own, within its deadline, without holding up the caller.
   * For calls made to every server in turn (heartbeats).
   */
  public static ShuffleServiceGrpc.ShuffleServiceFutureStub future(String server, ClientConf conf, String appSecret) {
    ShuffleServiceGrpc.ShuffleServiceFutureStub stub = ShuffleServiceGrpc.newFutureStub(channel(server, conf));
    AuthInterceptor auth = AuthInterceptor.of(security, appSecret);
    return auth == null ? stub : stub.withInterceptors(auth);
  }

  /** An async stub (push and fetch streams), sending the token and {@code appSecret} like {@link #blocking}. */
  public static ShuffleServiceGrpc.ShuffleServiceStub async(String server, ClientConf conf, String appSecret) {
    ShuffleServiceGrpc.ShuffleServiceStub stub = ShuffleServiceGrpc.newStub(ready(server, conf));
    AuthInterceptor auth = AuthInterceptor.of(security, appSecret);
    return auth == null ? stub : stub.withInterceptors(auth);
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
