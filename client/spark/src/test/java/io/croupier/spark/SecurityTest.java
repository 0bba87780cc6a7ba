package io.croupier.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.ByteString;
import io.croupier.proto.v1.Block;
import io.croupier.proto.v1.CommitMapAttemptRequest;
import io.croupier.proto.v1.CommitMapAttemptResponse;
import io.croupier.proto.v1.FetchRequest;
import io.croupier.proto.v1.FetchResponse;
import io.croupier.proto.v1.HeartbeatRequest;
import io.croupier.proto.v1.HeartbeatResponse;
import io.croupier.proto.v1.PushAck;
import io.croupier.proto.v1.PushBatch;
import io.croupier.proto.v1.PushStatus;
import io.croupier.proto.v1.RegisterShuffleRequest;
import io.croupier.proto.v1.RegisterShuffleResponse;
import io.croupier.proto.v1.ShuffleServiceGrpc;
import io.croupier.proto.v1.UnregisterAppRequest;
import io.croupier.proto.v1.UnregisterAppResponse;
import io.croupier.proto.v1.UnregisterShuffleRequest;
import io.croupier.proto.v1.UnregisterShuffleResponse;
import io.croupier.spark.client.AuthInterceptor;
import io.croupier.spark.client.ClientConf;
import io.croupier.spark.client.CroupierClients;
import io.croupier.spark.client.CroupierSecurity;
import io.croupier.spark.client.PushSession;
import io.grpc.Context;
import io.grpc.Contexts;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.GrpcSslContexts;
import io.grpc.netty.NettyServerBuilder;
import io.grpc.stub.StreamObserver;
import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.io.ObjectInputStream;
import java.io.ObjectOutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.spark.SparkConf;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Token, per-server app secrets and TLS, against fake Croupier servers (Netty, on loopback ports) that
 * check them like the real one: token on every call; a secret per (server, app) returned by the first
 * registration and required on every later call of the app.
 */
class SecurityTest {
  static final String TOKEN = "s3cr3t-token";

  /** A fake server: {@code key} stands for its own secret key (each server derives different secrets). */
  static final class FakeServer extends ShuffleServiceGrpc.ShuffleServiceImplBase {
    static final Context.Key<String> PRESENTED = Context.key("app-secret");
    final String key;
    final String token;
    final Set<String> apps = ConcurrentHashMap.newKeySet();
    /** method name -> times it was called with the right secret. */
    final Map<String, Integer> ok = new ConcurrentHashMap<>();
    final List<String> refused = Collections.synchronizedList(new ArrayList<>());
    Server server;

    FakeServer(String key, String token) {
      this.key = key;
      this.token = token;
    }

    String secret(String app) {
      return "secret-of-" + app + "-on-" + key;
    }

    /** Starts on a free loopback port; TLS when cert and key are given. */
    String start(File cert, File pkey) throws IOException {
      NettyServerBuilder b = NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", 0));
      if (cert != null) {
        b.sslContext(GrpcSslContexts.forServer(cert, pkey).build());
      }
      ServerInterceptor auth = new ServerInterceptor() {
        @Override
        public <ReqT, RespT> ServerCall.Listener<ReqT> interceptCall(ServerCall<ReqT, RespT> call, Metadata headers,
            ServerCallHandler<ReqT, RespT> next) {
          String bearer = headers.get(AuthInterceptor.AUTHORIZATION);
          if (token != null && !("Bearer " + token).equals(bearer)) {
            refused.add(call.getMethodDescriptor().getBareMethodName() + ": token");
            call.close(Status.UNAUTHENTICATED.withDescription(bearer == null
                ? "this server requires a token: send metadata `authorization: Bearer <token>`"
                : "the token in metadata `authorization` is not valid for this server"), new Metadata());
            return new ServerCall.Listener<>() {};
          }
          Context ctx = Context.current().withValue(PRESENTED, headers.get(AuthInterceptor.APP_SECRET));
          return Contexts.interceptCall(ctx, call, headers, next);
        }
      };
      server = b.addService(ServerInterceptors.intercept(this, auth)).build().start();
      return "127.0.0.1:" + server.getPort();
    }

    /** The check of every per-app call: null when the right secret was presented, else the error. */
    StatusRuntimeException check(String method, String app, boolean registration) {
      String presented = PRESENTED.get();
      if (presented == null) {
        if (registration && !apps.contains(app)) {
          ok.merge(method, 1, Integer::sum);
          return null;
        }
        refused.add(method + ": no secret");
        return Status.UNAUTHENTICATED.withDescription("app " + app
            + ": send the app secret returned by RegisterShuffle in metadata `x-croupier-app-secret`")
            .asRuntimeException();
      }
      if (!presented.equals(secret(app))) {
        refused.add(method + ": wrong secret");
        return Status.PERMISSION_DENIED.withDescription("app " + app
            + ": the secret in metadata `x-croupier-app-secret` is not this app's secret").asRuntimeException();
      }
      ok.merge(method, 1, Integer::sum);
      return null;
    }

    /** Heartbeats are left unanswered (a server that hangs). */
    volatile boolean hangHeartbeats;
    final java.util.concurrent.atomic.AtomicInteger hungHeartbeats = new java.util.concurrent.atomic.AtomicInteger();

    int ok(String method) {
      return ok.getOrDefault(method, 0);
    }

    @Override
    public void registerShuffle(RegisterShuffleRequest r, StreamObserver<RegisterShuffleResponse> out) {
      StatusRuntimeException e = check("register", r.getAppId(), true);
      if (e != null) {
        out.onError(e);
        return;
      }
      apps.add(r.getAppId());
      out.onNext(RegisterShuffleResponse.newBuilder().setCreated(true).setAppSecret(secret(r.getAppId())).build());
      out.onCompleted();
    }

    @Override
    public void heartbeat(HeartbeatRequest r, StreamObserver<HeartbeatResponse> out) {
      if (hangHeartbeats) {
        hungHeartbeats.incrementAndGet();
        return; // never answered: a stuck server
      }
      StatusRuntimeException e = check("heartbeat", r.getAppId(), false);
      if (e != null) {
        out.onError(e);
        return;
      }
      out.onNext(HeartbeatResponse.newBuilder().setKnown(apps.contains(r.getAppId())).build());
      out.onCompleted();
    }

    @Override
    public void commitMapAttempt(CommitMapAttemptRequest r, StreamObserver<CommitMapAttemptResponse> out) {
      StatusRuntimeException e = check("commit", r.getAppId(), false);
      if (e != null) {
        out.onError(e);
        return;
      }
      out.onNext(CommitMapAttemptResponse.newBuilder().setCommitted(true).setCommittedAttemptId(r.getAttemptId())
          .build());
      out.onCompleted();
    }

    @Override
    public void fetch(FetchRequest r, StreamObserver<FetchResponse> out) {
      StatusRuntimeException e = check("fetch", r.getAppId(), false);
      if (e != null) {
        out.onError(e);
        return;
      }
      out.onCompleted();
    }

    @Override
    public void unregisterShuffle(UnregisterShuffleRequest r, StreamObserver<UnregisterShuffleResponse> out) {
      StatusRuntimeException e = check("unregisterShuffle", r.getAppId(), false);
      if (e != null) {
        out.onError(e);
        return;
      }
      out.onNext(UnregisterShuffleResponse.newBuilder().setExisted(true).build());
      out.onCompleted();
    }

    @Override
    public void unregisterApp(UnregisterAppRequest r, StreamObserver<UnregisterAppResponse> out) {
      StatusRuntimeException e = check("unregisterApp", r.getAppId(), false);
      if (e != null) {
        out.onError(e);
        return;
      }
      apps.remove(r.getAppId());
      out.onNext(UnregisterAppResponse.newBuilder().build());
      out.onCompleted();
    }

    @Override
    public StreamObserver<PushBatch> push(StreamObserver<PushAck> acks) {
      return new StreamObserver<>() {
        boolean failed;

        @Override
        public void onNext(PushBatch b) {
          if (failed) {
            return;
          }
          StatusRuntimeException e = check("push", b.getAppId(), false);
          if (e != null) {
            failed = true;
            acks.onError(e);
            return;
          }
          acks.onNext(PushAck.newBuilder().setBatchId(b.getBatchId()).setStatus(PushStatus.PUSH_STATUS_ACCEPTED)
              .build());
        }

        @Override
        public void onError(Throwable t) {}

        @Override
        public void onCompleted() {
          if (!failed) {
            acks.onCompleted();
          }
        }
      };
    }
  }

  private final List<FakeServer> servers = new ArrayList<>();

  @AfterEach
  void tearDown() {
    CroupierDriver d = CroupierDriver.peek();
    if (d != null) {
      d.stop();
    }
    CroupierClients.shutdown();
    CroupierClients.configure(CroupierSecurity.NONE);
    for (FakeServer s : servers) {
      s.server.shutdownNow();
    }
  }

  private String startServer(String key, String token, File cert, File pkey) throws IOException {
    FakeServer s = new FakeServer(key, token);
    servers.add(s);
    return s.start(cert, pkey);
  }

  private static SparkConf conf(String serverList) {
    return new SparkConf(false)
        .set(CroupierConf.SERVERS, serverList)
        .set(CroupierConf.APP_ID, "app-1")
        .set(CroupierConf.HEARTBEAT_INTERVAL, "50ms")
        .set(CroupierConf.RPC_TIMEOUT, "10s");
  }

  private static boolean waitFor(java.util.function.BooleanSupplier cond) throws InterruptedException {
    long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
    while (System.nanoTime() < end) {
      if (cond.getAsBoolean()) {
        return true;
      }
      Thread.sleep(20);
    }
    return cond.getAsBoolean();
  }

  @SuppressWarnings("unchecked")
  private static <T> T roundTrip(T o) throws Exception {
    ByteArrayOutputStream bytes = new ByteArrayOutputStream();
    try (ObjectOutputStream out = new ObjectOutputStream(bytes)) {
      out.writeObject(o);
    }
    try (ObjectInputStream in = new ObjectInputStream(new ByteArrayInputStream(bytes.toByteArray()))) {
      return (T) in.readObject();
    }
  }

  /** Pushes one block as an executor would (secret from the handle); returns the error, or null. */
  private static Throwable push(String server, ClientConf cc, String secret) {
    PushSession s = new PushSession(CroupierClients.async(server, cc, secret), server, "app-1", 1, 0, 7, 2, 10_000,
        CroupierClients.timer());
    try {
      s.send(List.of(Block.newBuilder().setPartitionId(0).setSeq(0).setData(ByteString.copyFromUtf8("x")).build()));
      s.finish();
      return null;
    } catch (IOException e) {
      return e;
    }
  }

  private static Throwable fetch(String server, ClientConf cc, String secret) throws InterruptedException {
    CountDownLatch done = new CountDownLatch(1);
    AtomicReference<Throwable> err = new AtomicReference<>();
    CroupierClients.async(server, cc, secret).fetch(FetchRequest.newBuilder().setAppId("app-1").setShuffleId(1)
        .setPartitionEnd(1).setMapEnd(1).build(), new StreamObserver<>() {
          @Override
          public void onNext(FetchResponse value) {}

          @Override
          public void onError(Throwable t) {
            err.set(t);
            done.countDown();
          }

          @Override
          public void onCompleted() {
            done.countDown();
          }
        });
    assertTrue(done.await(10, TimeUnit.SECONDS));
    return err.get();
  }

  @Test
  void aStuckServerDoesNotHoldUpHeartbeatsToTheOthers() throws Exception {
    String a = startServer("key-a", TOKEN, null, null);
    String b = startServer("key-b", TOKEN, null, null);
    SparkConf conf = conf(a + "," + b).set(CroupierConf.AUTH_TOKEN, TOKEN);
    CroupierClients.configure(CroupierConf.security(conf));
    CroupierDriver driver = CroupierDriver.create(conf);
    driver.registerShuffle(0, 1, 1);
    assertTrue(waitFor(() -> servers.get(1).ok("heartbeat") > 0), "heartbeats start");
    // Server a stops answering. Its heartbeat hangs until its deadline (10 s here); b's go on every 50 ms.
    servers.get(0).hangHeartbeats = true;
    assertTrue(waitFor(() -> servers.get(0).hungHeartbeats.get() > 0), "a heartbeat reached the stuck server");
    int before = servers.get(1).ok("heartbeat");
    Thread.sleep(1_000);
    int during = servers.get(1).ok("heartbeat") - before;
    assertTrue(during >= 5, "heartbeats to the live server while the other hangs: " + during);
    assertEquals(1, servers.get(0).hungHeartbeats.get(), "one heartbeat in flight per server, not a pile-up");
  }

  @Test
  void driverKeepsOneSecretPerServerAndTasksSendThemFromTheHandle() throws Exception {
    String a = startServer("key-a", TOKEN, null, null);
    String b = startServer("key-b", TOKEN, null, null);
    SparkConf conf = conf(a + "," + b).set(CroupierConf.AUTH_TOKEN, TOKEN);
    CroupierClients.configure(CroupierConf.security(conf));
    CroupierDriver driver = CroupierDriver.create(conf);

    driver.registerShuffle(0, 2, 4);
    String[] secrets = driver.appSecrets();
    assertEquals(servers.get(0).secret("app-1"), secrets[0]);
    assertEquals(servers.get(1).secret("app-1"), secrets[1]);
    assertNotEquals(secrets[0], secrets[1]);
    // A later registration of the same app must present each server's own secret.
    driver.registerShuffle(1, 2, 4);
    assertEquals(2, servers.get(0).ok("register"));
    assertEquals(2, servers.get(1).ok("register"));
    assertTrue(waitFor(() -> servers.get(0).ok("heartbeat") > 0 && servers.get(1).ok("heartbeat") > 0),
        "heartbeats with the secret");

    // The handle carries the secrets to the executors (Java serialization, as Spark's closure serializer).
    CroupierShuffleHandle<Object, Object, Object> handle = roundTrip(new CroupierShuffleHandle<>(1, null, "app-1",
        driver.servers(), driver.appSecrets(), 2, 4, driver.clientConf()));
    assertEquals(secrets[0], handle.appSecret(0));
    assertEquals(secrets[1], handle.appSecret(1));
    assertFalse(handle.toString().contains(secrets[0]), "secrets must not be logged: " + handle);
    ClientConf cc = handle.clientConf();
    for (int s = 0; s < 2; s++) {
      String server = handle.servers().get(s);
      assertNull(push(server, cc, handle.appSecret(s)));
      CroupierClients.blocking(server, cc, handle.appSecret(s)).commitMapAttempt(CommitMapAttemptRequest.newBuilder()
          .setAppId("app-1").setShuffleId(1).setMapIndex(0).setAttemptId(7).build());
      assertNull(fetch(server, cc, handle.appSecret(s)));
    }
    // Another server's secret is refused, and the message says what to check.
    Throwable wrong = push(handle.servers().get(1), cc, handle.appSecret(0));
    assertNotNull(wrong);
    assertTrue(wrong.getMessage().contains("PERMISSION_DENIED") && wrong.getMessage().contains("spark.croupier.appId"),
        wrong.getMessage());
    Throwable none = fetch(handle.servers().get(0), cc, null);
    assertEquals(Status.Code.UNAUTHENTICATED, Status.fromThrowable(none).getCode());
    for (FakeServer s : servers) {
      assertEquals(1, s.ok("push"));
      assertEquals(1, s.ok("commit"));
      assertEquals(1, s.ok("fetch"));
      s.refused.clear();
    }

    driver.unregisterShuffle(1);
    driver.stop();
    for (FakeServer s : servers) {
      assertEquals(1, s.ok("unregisterShuffle"));
      assertEquals(1, s.ok("unregisterApp"));
      assertEquals(List.of(), s.refused, "calls refused by " + s.key);
    }
  }

  @Test
  void noSecretsNoArrayInTheHandle() throws Exception {
    String a = startServer("key-a", null, null, null);
    CroupierShuffleHandle<Object, Object, Object> h = roundTrip(new CroupierShuffleHandle<>(3, null, "app-1",
        List.of(a), new String[] {null}, 1, 1, new ClientConf()));
    assertNull(h.appSecret(0));
    assertThrows(IllegalArgumentException.class, () -> new CroupierShuffleHandle<>(3, null, "app-1", List.of(a),
        new String[2], 1, 1, new ClientConf()));
  }

  @Test
  void withoutTheTokenRegistrationFailsWithAClearMessage() throws Exception {
    String a = startServer("key-a", TOKEN, null, null);
    SparkConf conf = conf(a);
    CroupierClients.configure(CroupierConf.security(conf));
    CroupierDriver driver = CroupierDriver.create(conf);
    IllegalStateException e = assertThrows(IllegalStateException.class, () -> driver.registerShuffle(0, 1, 1));
    assertTrue(e.getMessage().contains("UNAUTHENTICATED") && e.getMessage().contains(CroupierConf.AUTH_TOKEN_FILE),
        e.getMessage());

    CroupierClients.configure(CroupierSecurity.of("wrong", null));
    e = assertThrows(IllegalStateException.class, () -> driver.registerShuffle(0, 1, 1));
    assertTrue(e.getMessage().contains("UNAUTHENTICATED") && e.getMessage().contains("not valid"), e.getMessage());
  }

  @Test
  void registrationRecoversFromAServerThatForgotItsKey() throws Exception {
    String a = startServer("key-a", null, null, null);
    CroupierDriver driver = CroupierDriver.create(conf(a));
    driver.registerShuffle(0, 1, 1);
    // The server restarted with a new key and without the app's data: the old secret is refused.
    FakeServer old = servers.get(0);
    old.server.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    FakeServer restarted = new FakeServer("key-new", null);
    servers.set(0, restarted);
    int port = Integer.parseInt(a.substring(a.lastIndexOf(':') + 1));
    restarted.server = NettyServerBuilder.forAddress(new InetSocketAddress("127.0.0.1", port))
        .addService(ServerInterceptors.intercept(restarted, new ServerInterceptor() {
          @Override
          public <ReqT, RespT> ServerCall.Listener<ReqT> interceptCall(ServerCall<ReqT, RespT> call, Metadata headers,
              ServerCallHandler<ReqT, RespT> next) {
            return Contexts.interceptCall(Context.current().withValue(FakeServer.PRESENTED,
                headers.get(AuthInterceptor.APP_SECRET)), call, headers, next);
          }
        })).build().start();
    driver.registerShuffle(1, 1, 1);
    assertEquals(restarted.secret("app-1"), driver.appSecrets()[0]);
  }

  @Test
  void tokenFromFileOrValue(@TempDir Path dir) throws IOException {
    Path f = dir.resolve("token");
    Files.writeString(f, "  from-file\n");
    CroupierSecurity s = CroupierSecurity.fromConf(f.toString(), "from-value", null);
    assertEquals("Bearer from-file", s.bearer(), "the file wins over the value");
    assertFalse(s.tls());
    assertFalse(s.toString().contains("from-file"), s.toString());
    assertEquals("Bearer v", CroupierSecurity.fromConf(null, " v ", null).bearer());
    assertEquals(CroupierSecurity.NONE, CroupierSecurity.fromConf(null, null, ""));
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
        () -> CroupierSecurity.fromConf(dir.resolve("missing").toString(), null, null));
    assertTrue(e.getMessage().contains(CroupierConf.AUTH_TOKEN_FILE), e.getMessage());
    Files.writeString(f, "\n");
    assertThrows(IllegalArgumentException.class, () -> CroupierSecurity.fromConf(f.toString(), null, null));
    assertThrows(IllegalArgumentException.class, () -> CroupierSecurity.of("a b", null));
    e = assertThrows(IllegalArgumentException.class, () -> CroupierSecurity.of(null, dir.resolve("no-ca").toString()));
    assertTrue(e.getMessage().contains(CroupierConf.TLS_CA_FILE), e.getMessage());
    assertNull(AuthInterceptor.of(CroupierSecurity.NONE, null));
    assertNotNull(AuthInterceptor.of(CroupierSecurity.NONE, "s"));
  }

  // ---- TLS (needs the openssl CLI to make a CA and a certificate for 127.0.0.1) ----

  private static void run(Path dir, String... cmd) throws IOException, InterruptedException {
    Process p = new ProcessBuilder(cmd).directory(dir.toFile()).redirectErrorStream(true).start();
    String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
    assertEquals(0, p.waitFor(), String.join(" ", cmd) + ":\n" + out);
  }

  private static boolean hasOpenssl() {
    try {
      return new ProcessBuilder("openssl", "version").start().waitFor() == 0;
    } catch (IOException | InterruptedException e) {
      return false;
    }
  }

  /** ca.pem (+ ca.key) and server.pem / server.key (PKCS#8) for IP 127.0.0.1 signed by it, under {@code dir}. */
  static void makeCerts(Path dir, String ca) throws IOException, InterruptedException {
    run(dir, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca + ".key", "-out", ca + ".pem",
        "-days", "2", "-subj", "/CN=croupier test " + ca);
    run(dir, "openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1");
    Files.writeString(dir.resolve("san.ext"), "subjectAltName=IP:127.0.0.1\n");
    run(dir, "openssl", "x509", "-req", "-in", "server.csr", "-CA", ca + ".pem", "-CAkey", ca + ".key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem");
  }

  @Test
  void tlsWithTheRightCaOnly(@TempDir Path dir) throws Exception {
    Assumptions.assumeTrue(hasOpenssl(), "openssl CLI not found");
    makeCerts(dir, "ca");
    run(dir, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.pem",
        "-days", "2", "-subj", "/CN=some other CA");
    String a = startServer("key-a", TOKEN, dir.resolve("server.pem").toFile(), dir.resolve("server.key").toFile());
    SparkConf conf = conf(a).set(CroupierConf.AUTH_TOKEN, TOKEN).set(CroupierConf.TLS_CA_FILE,
        dir.resolve("ca.pem").toString()).set(CroupierConf.CONNECT_TIMEOUT, "2s");

    CroupierClients.configure(CroupierConf.security(conf));
    CroupierDriver driver = CroupierDriver.create(conf);
    driver.registerShuffle(0, 1, 1);
    assertNull(push(a, driver.clientConf(), driver.appSecrets()[0]));
    assertEquals(1, servers.get(0).ok("push"));

    // A CA that did not sign the server's certificate: the handshake fails, and the message says why.
    CroupierClients.configure(CroupierSecurity.of(TOKEN, dir.resolve("other.pem").toString()));
    CroupierDriver other = CroupierDriver.create(conf);
    IllegalStateException e = assertThrows(IllegalStateException.class, () -> other.registerShuffle(0, 1, 1));
    assertTrue(e.getMessage().contains("UNAVAILABLE") && e.getMessage().contains(CroupierConf.TLS_CA_FILE),
        e.getMessage());

    // Plaintext against the TLS port fails (with the hint to set the CA file).
    CroupierClients.configure(CroupierSecurity.of(TOKEN, null));
    CroupierDriver plain = CroupierDriver.create(conf);
    e = assertThrows(IllegalStateException.class, () -> plain.registerShuffle(0, 1, 1));
    assertTrue(e.getMessage().contains("UNAVAILABLE") && e.getMessage().contains(CroupierConf.TLS_CA_FILE),
        e.getMessage());
  }

  @Test
  void aCaFileThatIsNotPemFailsClearly(@TempDir Path dir) throws Exception {
    Path bad = dir.resolve("bad.pem");
    Files.writeString(bad, "not a certificate\n");
    CroupierClients.configure(CroupierSecurity.of(null, bad.toString()));
    IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
        () -> CroupierClients.channel("127.0.0.1:1", new ClientConf()));
    assertTrue(e.getMessage().contains(CroupierConf.TLS_CA_FILE), e.getMessage());
  }
}
