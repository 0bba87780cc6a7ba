use crate::common::*;
use bytes::Bytes;
use croupier_client::loadgen;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_commits_keeps_every_committed_attempt_and_no_uncommitted_one() {
    let mut server = TestServer::start(2, "chunk_bytes_target = \"128KiB\"");
    // Maps 0..6 commit; maps 6..8 push everything but never commit.
    let mut spec = load_spec(&server.grpc, "crash", 1, 8, 16, 3 << 20, 40_000);
    spec.map_end = 6;
    let r = loadgen::load(spec.clone()).await.expect("load");
    assert_eq!(r.maps_committed, 6);
    let disk_bytes = || {
        server.status_json()["shuffles"][0]["disk_bytes"]
            .as_u64()
            .unwrap()
    };
    let committed_on_disk = disk_bytes();
    let client = server.client().await;
    for map in 6..8u32 {
        let mut pusher = client.pusher("crash", 1, map, 77);
        // 150 KB per partition: more than a chunk, so some of it reaches the segment files.
        for p in 0..16 {
            for _ in 0..3 {
                pusher
                    .push(p, Bytes::from(vec![map as u8; 50_000]))
                    .await
                    .unwrap();
            }
        }
        pusher.finish().await.unwrap();
    }
    // Acks come once the blocks are buffered; every partition buffer (150 KB >= 128 KiB) was queued
    // for writing by its third block. Kill only once those writes are done, so that both attempts have
    // index records on disk (otherwise the kill may come first, and the attempts are not "dead").
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while disk_bytes() < committed_on_disk + 2 * 16 * 150_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the uncommitted maps' chunks were never written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.restart();

    let mut committed = spec.clone();
    committed.server = server.grpc.clone();
    committed.maps = 6; // verify fetches maps 0..6 of the 8-map shuffle
    let v = loadgen::verify(verify_spec(&committed)).await.unwrap();
    assert_eq!(v.partitions_failed, 0, "{:?}", v.failures);
    assert_eq!(v.bytes, 6 * (3 << 20));
    let client = server.client().await;
    let err = client
        .fetch(fetch_req("crash", 1, 0..16, 6..7))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(
        err.to_string().contains("map 6") && err.to_string().contains("no committed attempt"),
        "{err}"
    );

    // An interrupted attempt may not continue after the restart (its earlier blocks are gone) ...
    let mut again = client.pusher("crash", 1, 6, 77);
    again.push(0, Bytes::from_static(b"x")).await.unwrap();
    let err = again.finish().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("new attempt id"), "{err}");
    // ... but the uncommitted maps can be pushed again by new attempts.
    let mut rest = spec.clone();
    rest.server = server.grpc.clone();
    rest.map_start = 6;
    rest.map_end = 8;
    rest.attempt_base = 5000;
    loadgen::load(rest).await.expect("rerun maps 6..8");
    let mut all = spec.clone();
    all.server = server.grpc.clone();
    let v = loadgen::verify(verify_spec(&all)).await.unwrap();
    assert_eq!(v.partitions_failed, 0, "{:?}", v.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_pushes_and_commits_leaves_no_unreadable_state() {
    let mut server = TestServer::start(
        1,
        "chunk_bytes_target = \"64KiB\"\nsegment_bytes_max = \"1MiB\"",
    );
    let mut interrupted = 0;
    let mut prev_acked: Vec<u32> = Vec::new();
    // Kill moments spread from "while registering pushes" to "while committing".
    // When to kill: after a fixed time (during the first pushes), or once some commits were
    // acknowledged (between commits, whatever the machine's speed).
    enum Kill {
        AfterMs(u64),
        AfterCommits(usize),
    }
    let kills = [
        Kill::AfterMs(10),
        Kill::AfterMs(60),
        Kill::AfterCommits(2),
        Kill::AfterCommits(7),
        Kill::AfterCommits(15),
        Kill::AfterMs(200),
    ];
    for round in 0..kills.len() as u32 {
        let spec = load_spec(&server.grpc, "midcrash", round, 24, 8, 2 << 20, 10_000);
        let client = server.client().await;
        client
            .register_shuffle("midcrash", round, 24, 8)
            .await
            .unwrap();
        let committed: Arc<Mutex<Vec<u32>>> = Arc::default();
        let gate = Arc::new(tokio::sync::Semaphore::new(3));
        let mut tasks = Vec::new();
        for map in 0..24u32 {
            let client = client.clone();
            let spec = spec.clone();
            let committed = committed.clone();
            let gate = gate.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire().await;
                if loadgen::push_map(&client, &spec, map).await.is_ok() {
                    committed.lock().unwrap().push(map);
                }
            }));
        }
        // Readers of the previous round's shuffle run through the kill too: whatever they receive
        // before the connection drops passes the client's CRC, order and summary checks.
        let mut readers = Vec::new();
        if let (true, Some(&m)) = (round > 0, prev_acked.first()) {
            for p in 0..8u32 {
                let client = client.clone();
                readers.push(tokio::spawn(async move {
                    loop {
                        if client
                            .fetch(fetch_req("midcrash", round - 1, p..p + 1, m..m + 1))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }));
            }
        }
        match kills[round as usize] {
            Kill::AfterMs(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Kill::AfterCommits(n) => {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while committed.lock().unwrap().len() < n && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        server.kill9();
        for r in readers {
            let _ = r.await;
        }
        for t in tasks {
            let _ = t.await;
        }
        let acked: Vec<u32> = committed.lock().unwrap().clone();
        prev_acked = acked.clone();
        eprintln!(
            "round {round}: {} of 24 commits acknowledged before the kill",
            acked.len()
        );
        interrupted += u32::from(!acked.is_empty() && acked.len() < 24);
        // Offline check: no damage (torn tails are allowed: restart cuts them).
        let (clean, report) = inspect_dir(&server.dirs[0]);
        assert!(clean, "round {round}: {report}");
        server.restart();
        // Every acknowledged commit is served byte for byte; unacknowledged maps are either fully
        // committed (the ack was lost in the kill) or absent.
        let client = server.client().await;
        for map in 0..24u32 {
            let req = fetch_req("midcrash", round, 0..8, map..map + 1);
            match client.fetch(req).await {
                Ok((blocks, summary)) => {
                    assert_eq!(summary.total_bytes, 2 << 20, "round {round} map {map}");
                    assert_map_bytes(&spec, map, &blocks, &format!("round {round}"));
                }
                Err(e) => {
                    assert!(
                        !acked.contains(&map),
                        "round {round}: acknowledged map {map} lost: {e}"
                    );
                    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
                }
            }
        }
    }
    assert!(
        interrupted > 0,
        "no round was killed between the first and the last commit"
    );
}
