use crate::common::*;
use croupier_client::loadgen;
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregister_deletes_the_files_of_the_shuffle_and_then_of_the_app() {
    let server = TestServer::start(1, "");
    let a = load_spec(&server.grpc, "gone", 1, 2, 4, 1 << 20, 64 << 10);
    let b = load_spec(&server.grpc, "gone", 2, 2, 4, 1 << 20, 64 << 10);
    let keep = load_spec(&server.grpc, "kept", 1, 2, 4, 1 << 20, 64 << 10);
    for s in [&a, &b, &keep] {
        loadgen::load(s.clone()).await.unwrap();
    }
    let client = server.client().await;
    let dir1 = server.shuffle_dir("gone", 1).unwrap();
    assert!(client.unregister_shuffle("gone", 1).await.unwrap());
    assert!(!dir1.exists(), "shuffle directory still there");
    let err = client
        .fetch(fetch_req("gone", 1, 0..1, 0..2))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));
    assert_verified(&b).await;
    assert!(client.unregister_app("gone").await.unwrap());
    assert!(
        !server.dirs[0].join("apps/gone").exists(),
        "app directory still there"
    );
    assert_verified(&keep).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_whose_lease_expires_is_deleted_and_a_heartbeating_one_is_kept() {
    let server = TestServer::start(1, "app_lease_timeout_ms = 1500");
    let idle = load_spec(&server.grpc, "idle", 1, 2, 2, 256 << 10, 64 << 10);
    let alive = load_spec(&server.grpc, "alive", 1, 2, 2, 256 << 10, 64 << 10);
    loadgen::load(idle.clone()).await.unwrap();
    loadgen::load(alive.clone()).await.unwrap();
    let client = server.client().await;
    for _ in 0..16 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(client.heartbeat("alive").await.unwrap());
    }
    assert!(
        !server.dirs[0].join("apps/idle").exists(),
        "expired app's files remain"
    );
    assert!(!client.heartbeat("idle").await.unwrap());
    let err = client
        .fetch(fetch_req("idle", 1, 0..1, 0..2))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));
    assert_verified(&alive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_committed_data_survives_the_restart() {
    let mut server = TestServer::start(1, "");
    let spec = load_spec(&server.grpc, "term", 1, 4, 8, 2 << 20, 64 << 10);
    loadgen::load(spec.clone()).await.unwrap();
    let (code, body) = server.admin_get("/readyz");
    assert_eq!(code, 200, "{body}");
    let st = server.sigterm_and_wait();
    assert_eq!(st.code(), Some(0), "log: {}", server.log());
    server.restart();
    let mut spec = spec;
    spec.server = server.grpc.clone();
    assert_verified(&spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_running_load_exits_zero_and_keeps_every_acknowledged_commit() {
    let mut server = TestServer::start(
        1,
        "shutdown_grace_ms = 2000\nchunk_bytes_target = \"256KiB\"",
    );
    let spec = load_spec(&server.grpc, "busy", 1, 24, 8, 2 << 20, 32 << 10);
    let client = server.client().await;
    client.register_shuffle("busy", 1, 24, 8).await.unwrap();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(3));
    let mut tasks = Vec::new();
    for map in 0..24u32 {
        let (client, spec, acked, gate) =
            (client.clone(), spec.clone(), acked.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await;
            if loadgen::push_map(&client, &spec, map).await.is_ok() {
                acked.lock().unwrap().push(map);
            }
        }));
    }
    // Let some maps commit, then stop the server in the middle of the load.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "no commit happened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = server.sigterm_and_wait();
    assert_eq!(status.code(), Some(0), "log: {}", server.log());
    for t in tasks {
        let _ = t.await;
    }
    let acked: Vec<u32> = acked.lock().unwrap().clone();
    assert!(
        acked.len() < 24,
        "the load finished before the signal: nothing was tested"
    );
    server.restart();
    let client = server.client().await;
    for map in acked {
        let (blocks, summary) = client
            .fetch(fetch_req("busy", 1, 0..8, map..map + 1))
            .await
            .unwrap();
        assert_eq!(summary.total_bytes, 2 << 20, "map {map}");
        assert!(blocks
            .iter()
            .all(|b| b.attempt_id == spec.attempt_base + u64::from(map)));
    }
}
