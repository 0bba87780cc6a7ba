package io.croupier.spark;

import com.google.common.util.concurrent.FutureCallback;
import com.google.common.util.concurrent.Futures;
import com.google.common.util.concurrent.ListenableFuture;
import com.google.common.util.concurrent.MoreExecutors;
import io.croupier.proto.v1.HeartbeatRequest;
import io.croupier.proto.v1.HeartbeatResponse;
import io.croupier.proto.v1.RegisterShuffleRequest;
import io.croupier.proto.v1.RegisterShuffleResponse;
import io.croupier.proto.v1.UnregisterAppRequest;
import io.croupier.proto.v1.UnregisterShuffleRequest;
import io.croupier.spark.client.ClientConf;
import io.croupier.spark.client.CroupierClients;
import io.croupier.spark.client.CroupierSecurity;
import io.grpc.Status;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import org.apache.spark.SparkConf;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Driver-side state of one Spark application: registers shuffles on every server, keeps the app's
 * lease alive with a heartbeat thread, unregisters shuffles and the app. One per driver JVM at a time
 * (shared by the ShuffleManager and the ShuffleDriverComponents); replaced when a new SparkContext starts.
 *
 * <p>When the servers issue per-app secrets, each server returns its own secret for the app at
 * registration (every server derives it from its own key); they are kept per server address, sent on every
 * later call of the app to that server, and passed to the tasks in the shuffle handles.
 */
final class CroupierDriver {
  private static final Logger LOG = LoggerFactory.getLogger(CroupierDriver.class);
  private static CroupierDriver current;

  private final SparkConf conf;
  private final List<String> servers;
  private final ClientConf clientConf;
  private final Set<Integer> shuffles = ConcurrentHashMap.newKeySet();
  /** Server address -> the app's secret on that server (only servers that issued one). */
  private final Map<String, String> appSecrets = new ConcurrentHashMap<>();
  private volatile String appId;
  private volatile long leaseMs;
  private ScheduledExecutorService heartbeat;
  /** Servers whose last heartbeat has not been answered yet. */
  private final Set<String> heartbeatsInFlight = ConcurrentHashMap.newKeySet();
  private boolean stopped;

  private CroupierDriver(SparkConf conf) {
    this.conf = conf;
    this.servers = CroupierConf.servers(conf);
    this.clientConf = CroupierConf.clientConf(conf);
  }

  /** Creates the state of a new application (called by the driver's ShuffleManager). */
  static synchronized CroupierDriver create(SparkConf conf) {
    if (current != null && !current.stopped) {
      current.stop();
    }
    current = new CroupierDriver(conf);
    return current;
  }

  /** The running application's state, or null when no Croupier shuffle manager runs in this driver. */
  static synchronized CroupierDriver peek() {
    return current;
  }

  List<String> servers() {
    return servers;
  }

  ClientConf clientConf() {
    return clientConf;
  }

  /** The app's secret on each server, in the order of {@link #servers()} (null entries: none issued). */
  String[] appSecrets() {
    String[] out = new String[servers.size()];
    for (int i = 0; i < out.length; i++) {
      out[i] = appSecrets.get(servers.get(i));
    }
    return out;
  }

  synchronized String appId() {
    if (appId == null) {
      appId = CroupierConf.appId(conf);
    }
    return appId;
  }

  /** RegisterShuffle on every server; throws with a clear message if one refuses or is unreachable. */
  void registerShuffle(int shuffleId, int numMaps, int numPartitions) {
    String app = appId();
    if (numMaps == 0 || numPartitions == 0) {
      // Nothing will ever be pushed or fetched (the servers refuse such a shuffle anyway).
      LOG.debug("Croupier: shuffle {} has {} maps and {} partitions: not registered", shuffleId, numMaps,
          numPartitions);
      return;
    }
    for (String s : servers) {
      RegisterShuffleRequest req = RegisterShuffleRequest.newBuilder()
          .setAppId(app).setShuffleId(shuffleId).setNumMaps(numMaps).setNumPartitions(numPartitions).build();
      try {
        RegisterShuffleResponse r = register(s, req);
        if (r.getLeaseTimeoutMs() > 0) {
          leaseMs = r.getLeaseTimeoutMs();
        }
        if (!r.getAppSecret().isEmpty()) {
          appSecrets.put(s, r.getAppSecret());
        }
      } catch (RuntimeException e) {
        Status st = Status.fromThrowable(e);
        throw new IllegalStateException("Croupier: RegisterShuffle(app=" + app + ", shuffle=" + shuffleId + ", maps="
            + numMaps + ", partitions=" + numPartitions + ") on server " + s + " failed: "
            + CroupierSecurity.describe(st), e);
      }
    }
    shuffles.add(shuffleId);
    startHeartbeat();
  }

  /** Attempts of one RegisterShuffle when the server answers UNAVAILABLE (restarting, or a closing connection). */
  private static final int REGISTER_ATTEMPTS = 3;
  private static final long REGISTER_BACKOFF_MS = 200;

  /**
   * RegisterShuffle is idempotent, so an UNAVAILABLE answer (a server that just restarted: the request can
   * meet the old connection's GOAWAY) is retried a bounded number of times before the job is failed.
   */
  private RegisterShuffleResponse register(String s, RegisterShuffleRequest req) {
    for (int attempt = 1; ; attempt++) {
      try {
        return registerOnce(s, req);
      } catch (RuntimeException e) {
        if (attempt >= REGISTER_ATTEMPTS || Status.fromThrowable(e).getCode() != Status.Code.UNAVAILABLE) {
          throw e;
        }
        LOG.warn("Croupier: RegisterShuffle on {} unavailable (attempt {} of {}): {}", s, attempt, REGISTER_ATTEMPTS,
            CroupierSecurity.describe(Status.fromThrowable(e)));
        try {
          Thread.sleep(REGISTER_BACKOFF_MS * attempt);
        } catch (InterruptedException ie) {
          Thread.currentThread().interrupt();
          throw e;
        }
      }
    }
  }

  private RegisterShuffleResponse registerOnce(String s, RegisterShuffleRequest req) {
    String secret = appSecrets.get(s);
    try {
      return CroupierClients.blocking(s, clientConf, secret).registerShuffle(req);
    } catch (RuntimeException e) {
      if (secret == null || Status.fromThrowable(e).getCode() != Status.Code.PERMISSION_DENIED) {
        throw e;
      }
      // The server no longer accepts the secret it gave us: it restarted with a new key (and so lost the
      // app's data). If it does not hold the app any more, registering without a secret gets the new one;
      // if it does (another app with our id), this fails too, with UNAUTHENTICATED.
      LOG.warn("Croupier: server {} refused app {}'s secret ({}): registering again without it", s, req.getAppId(),
          CroupierSecurity.describe(Status.fromThrowable(e)));
      appSecrets.remove(s);
      return CroupierClients.blocking(s, clientConf, null).registerShuffle(req);
    }
  }

  private synchronized void startHeartbeat() {
    if (heartbeat != null || stopped) {
      return;
    }
    long interval = clientConf.heartbeatIntervalMs;
    if (leaseMs > 0) {
      interval = Math.min(interval, Math.max(100, leaseMs / 3));
    }
    heartbeat = Executors.newSingleThreadScheduledExecutor(r -> {
      Thread t = new Thread(r, "croupier-heartbeat");
      t.setDaemon(true);
      return t;
    });
    heartbeat.scheduleWithFixedDelay(this::beat, interval, interval, TimeUnit.MILLISECONDS);
    LOG.info("Croupier: app {} heartbeat every {} ms to {}", appId(), interval, servers);
  }

  /**
   * One heartbeat to every server, all at once and without waiting for the answers: a server that is down
   * or slow must not delay the others' heartbeats past their lease (which would delete the app's data on
   * healthy servers). At most one heartbeat per server is in flight; each has a deadline.
   */
  private void beat() {
    String app = appId();
    long deadlineMs = Math.min(Math.min(clientConf.rpcTimeoutMs, 10_000), Math.max(1_000, leaseMs > 0 ? leaseMs / 2 : 10_000));
    for (String s : servers) {
      if (!heartbeatsInFlight.add(s)) {
        continue; // the previous one has not finished (it will within its deadline)
      }
      ListenableFuture<HeartbeatResponse> call;
      try {
        call = CroupierClients.future(s, clientConf, appSecrets.get(s))
            .withDeadlineAfter(deadlineMs, TimeUnit.MILLISECONDS)
            .heartbeat(HeartbeatRequest.newBuilder().setAppId(app).build());
      } catch (RuntimeException e) {
        heartbeatsInFlight.remove(s);
        LOG.warn("Croupier: heartbeat to {} failed: {}", s, CroupierSecurity.describe(Status.fromThrowable(e)));
        continue;
      }
      Futures.addCallback(call, new FutureCallback<HeartbeatResponse>() {
        @Override
        public void onSuccess(HeartbeatResponse r) {
          heartbeatsInFlight.remove(s);
          if (!r.getKnown() && !shuffles.isEmpty()) {
            LOG.error("Croupier: server {} does not know app {} any more (lease expired or server lost its data): "
                + "its shuffles are gone", s, app);
          }
        }

        @Override
        public void onFailure(Throwable t) {
          heartbeatsInFlight.remove(s);
          LOG.warn("Croupier: heartbeat to {} failed: {}", s, CroupierSecurity.describe(Status.fromThrowable(t)));
        }
      }, MoreExecutors.directExecutor());
    }
  }

  void unregisterShuffle(int shuffleId) {
    if (!shuffles.remove(shuffleId)) {
      return;
    }
    String app = appId();
    for (String s : servers) {
      try {
        CroupierClients.blocking(s, clientConf, appSecrets.get(s))
            .unregisterShuffle(UnregisterShuffleRequest.newBuilder().setAppId(app).setShuffleId(shuffleId).build());
      } catch (RuntimeException e) {
        LOG.warn("Croupier: UnregisterShuffle({}, {}) on {} failed: {}", app, shuffleId, s,
            CroupierSecurity.describe(Status.fromThrowable(e)));
      }
    }
  }

  /** Application end: stop the heartbeat and delete the app's data on every server. Idempotent. */
  void stop() {
    ScheduledExecutorService hb;
    synchronized (this) {
      if (stopped) {
        return;
      }
      stopped = true;
      hb = heartbeat;
      heartbeat = null;
    }
    if (hb != null) {
      hb.shutdownNow();
    }
    String app = appId;
    if (app == null) {
      return; // nothing was ever registered
    }
    for (String s : servers) {
      try {
        CroupierClients.blocking(s, clientConf, appSecrets.get(s))
            .withDeadlineAfter(Math.min(clientConf.rpcTimeoutMs, 10_000), TimeUnit.MILLISECONDS)
            .unregisterApp(UnregisterAppRequest.newBuilder().setAppId(app).build());
      } catch (RuntimeException e) {
        LOG.warn("Croupier: UnregisterApp({}) on {} failed: {}", app, s, CroupierSecurity.describe(Status.fromThrowable(e)));
      }
    }
    shuffles.clear();
    LOG.info("Croupier: app {} unregistered from {}", app, servers);
  }
}
