//! Operations against the real binary: the admin endpoints and gRPC health, drain / undrain (HTTP
//! and the `croupier admin` verbs), and per-app quotas.

use crate::common::*;
use bytes::Bytes;
use croupier_client::loadgen;
use croupier_server::admin_client::AdminTarget;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const SERVICE: &str = "croupier.v1.ShuffleService";

async fn health(grpc: &str, service: &str) -> Result<ServingStatus, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(ServingStatus::try_from(r.into_inner().status).unwrap())
}

/// Polls gRPC health until it reports `want` (it follows readiness within a fraction of a second).
async fn wait_health(grpc: &str, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = health(grpc, SERVICE).await.unwrap();
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health stays {now:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn admin(server: &TestServer) -> AdminTarget {
    AdminTarget {
        addr: server.admin.clone(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_grpc_health_answer_per_contract() {
    let server = TestServer::start(2, "");
    let spec = load_spec(&server.grpc, "shown", 1, 2, 3, 1 << 20, 64 << 10);
    loadgen::load(spec.clone()).await.unwrap();

    let (code, page) = server.admin_get("/");
    assert_eq!(code, 200);
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(
        page.contains("fetch(\"status\""),
        "the page must poll /status"
    );
    assert!(
        !page.contains("src=\"http"),
        "the page must be self-contained"
    );
    assert_eq!(server.admin_get("/healthz"), (200, "ok\n".to_string()));
    assert_eq!(server.admin_get("/readyz"), (200, "ready\n".to_string()));
    assert_eq!(server.admin_get("/no-such-page").0, 404);

    let st = server.status_json();
    assert_eq!(st["apps"], 1);
    assert_eq!(st["draining"], false);
    assert_eq!(st["accepting_pushes"], true);
    assert!(st["memory_limit_bytes"].as_u64().unwrap() > 0);
    let disks = st["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2);
    for d in disks {
        assert_eq!(d["state"], "healthy");
        assert!(d["free_bytes"].as_u64().unwrap() > 0);
    }
    let shuffles = st["shuffles"].as_array().unwrap();
    assert_eq!(shuffles.len(), 1);
    assert_eq!(shuffles[0]["committed_maps"], 2);
    let usage = st["app_usage"].as_array().unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["app_id"], "shown");
    assert!(usage[0]["stored_bytes"].as_u64().unwrap() >= 2 << 20);
    assert_eq!(st["app_quota_bytes"], 0);
    assert_eq!(
        st["security"],
        serde_json::json!({"token_required": false, "app_secrets": false, "tls": false})
    );

    let (code, m) = server.admin_get("/metrics");
    assert_eq!(code, 200);
    for name in [
        "croupier_push_bytes_total",
        "croupier_memory_used_bytes",
        "croupier_disk_free_bytes",
        "croupier_ready",
        "croupier_draining",
        "croupier_app_quota_bytes",
        "croupier_commit_latency_seconds_count",
    ] {
        assert!(
            m.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics"
        );
    }
    assert_eq!(metric(&m, "croupier_push_bytes_total"), (2 << 20) as f64);
    // Every received byte is counted once, by how it was kept; the Rust client sends 1 MiB frames, so
    // the server keeps most of its blocks as frame slices.
    assert_eq!(
        metric(&m, "croupier_push_received_data_bytes_total"),
        (2 << 20) as f64
    );
    let sliced = metric(
        &m,
        "croupier_push_received_data_bytes_total{kept=\"frame_slice\"}",
    );
    assert!(sliced >= (1 << 20) as f64, "sliced {sliced} bytes of 2 MiB");
    assert_eq!(metric(&m, "croupier_draining"), 0.0);

    assert_eq!(
        health(&server.grpc, "").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        health(&server.grpc, SERVICE).await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        health(&server.grpc, "no.such.Service")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // With app secrets off (the default), registration hands out no secret.
    let r = server
        .client()
        .await
        .register_shuffle_full("shown", 2, 1, 1)
        .await
        .unwrap();
    assert!(r.app_secret.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_new_shuffles_and_pushes_but_serves_commits_and_fetches_until_undrained() {
    let server = TestServer::start(1, "");
    let done = load_spec(&server.grpc, "done", 1, 2, 4, 1 << 20, 64 << 10);
    loadgen::load(done.clone()).await.unwrap();
    // A map pushed but not committed yet when the drain starts.
    let client = server.client().await;
    client.register_shuffle("late", 1, 2, 2).await.unwrap();
    let mut p = client.pusher("late", 1, 0, 10);
    p.push(0, Bytes::from_static(b"before the drain"))
        .await
        .unwrap();
    p.finish().await.unwrap();
    let counts = p.partition_counts();

    let r = admin(&server).post("/drain").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["draining"], true);
    assert_eq!(body["shuffles"], 2);
    assert_eq!(server.admin_get("/readyz"), (503, "draining\n".to_string()));
    assert_eq!(server.admin_get("/healthz").0, 200);
    wait_health(&server.grpc, ServingStatus::NotServing).await;
    assert_eq!(
        health(&server.grpc, "").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(server.status_json()["draining"], true);
    assert_eq!(
        metric(&server.admin_get("/metrics").1, "croupier_draining"),
        1.0
    );

    // Pushes and new shuffles are refused with UNAVAILABLE...
    let mut p2 = client.pusher("late", 1, 1, 11);
    p2.push(1, Bytes::from_static(b"after the drain"))
        .await
        .unwrap();
    let err = p2.finish().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert!(err.to_string().contains("draining"), "{err}");
    let err = client.register_shuffle("new", 1, 1, 1).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    // ... while commits, fetches and re-registrations of existing shuffles go on.
    assert!(!client.register_shuffle("late", 1, 2, 2).await.unwrap());
    assert!(
        client
            .commit("late", 1, 0, 10, counts)
            .await
            .unwrap()
            .committed
    );
    let (blocks, _) = client
        .fetch(fetch_req("late", 1, 0..1, 0..1))
        .await
        .unwrap();
    assert_eq!(&blocks[0].data[..], b"before the drain");
    assert_verified(&done).await;

    // `croupier admin drain --wait` reports when the server is empty.
    let bin = env!("CARGO_BIN_EXE_croupier");
    let waiter = Command::new(bin)
        .args(["admin", "drain", "--admin", &server.admin, "--wait"])
        .args(["--poll-ms", "100", "--wait-timeout-secs", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(client.unregister_app("late").await.unwrap());
    assert!(client.unregister_app("done").await.unwrap());
    let out = tokio::task::spawn_blocking(move || waiter.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("draining: 2 shuffles of 2 apps remain"),
        "{stdout}"
    );
    assert!(
        stdout.contains("drained: the server holds no shuffles"),
        "{stdout}"
    );

    // Undrain (the CLI verb): ready again, pushes accepted.
    let out = Command::new(bin)
        .args(["admin", "undrain", "--admin", &server.admin])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.admin_get("/readyz").0, 200);
    wait_health(&server.grpc, ServingStatus::Serving).await;
    let again = load_spec(&server.grpc, "again", 1, 2, 2, 256 << 10, 64 << 10);
    load_and_verify(again).await;
    let out = Command::new(bin)
        .args(["admin", "status", "--admin", &server.admin])
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["draining"], false);
    assert_eq!(st["apps"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_over_its_quota_is_refused_while_other_apps_keep_pushing() {
    const QUOTA: u64 = 4 << 20;
    let server = TestServer::start(1, "app_quota_bytes = \"4MiB\"\napp_lease_timeout_ms = 4000");
    // 8 MiB for a 4 MiB quota: refused part way, with a status naming app, holding and quota.
    let big = load_spec(&server.grpc, "big", 1, 4, 4, 2 << 20, 64 << 10);
    let err = loadgen::load(big.clone()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("quota exceeded: app big holds"), "{msg}");
    assert!(msg.contains(&format!("quota {QUOTA} bytes")), "{msg}");
    let held = |server: &TestServer, app: &str| -> u64 {
        server.status_json()["app_usage"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["app_id"] == app)
            .map_or(0, |u| u["stored_bytes"].as_u64().unwrap())
    };
    // The load returns at its first failed map while the others may still be pushing: wait for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while held(&server, "big") < QUOTA / 2 {
        assert!(
            Instant::now() < deadline,
            "big holds only {}",
            held(&server, "big")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Stored bytes count the on-disk record headers too, which may take them a hair over.
    let big_held = held(&server, "big");
    assert!(
        big_held <= QUOTA + QUOTA / 100,
        "big holds {big_held}, quota {QUOTA}"
    );
    let st = server.status_json();
    assert_eq!(st["app_quota_bytes"], QUOTA);

    // Other apps are not affected.
    let small = load_spec(&server.grpc, "small", 1, 2, 4, 1 << 20, 64 << 10);
    load_and_verify(small.clone()).await;
    let m = server.admin_get("/metrics").1;
    assert!(metric(&m, "croupier_quota_exceeded_total") >= 1.0);
    assert!(m.contains("croupier_push_rejected_total{reason=\"quota\"}"));
    assert_eq!(metric(&m, "croupier_app_quota_bytes"), QUOTA as f64);

    // Unregistering frees the quota at once.
    let client = server.client().await;
    assert!(client.unregister_shuffle("big", 1).await.unwrap());
    let big2 = load_spec(&server.grpc, "big", 2, 3, 3, 1 << 20, 64 << 10);
    load_and_verify(big2.clone()).await;
    // 3 MiB held: two more do not fit.
    let err = loadgen::load(load_spec(&server.grpc, "big", 3, 2, 2, 1 << 20, 64 << 10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");

    // Lease expiry frees it too: let "big" expire, then it can store a full quota again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while held(&server, "big") > 0 {
        assert!(Instant::now() < deadline, "big never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let big4 = load_spec(&server.grpc, "big", 4, 3, 4, 1 << 20, 64 << 10);
    load_and_verify(big4).await;
}
