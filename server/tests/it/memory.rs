use crate::common::*;
use croupier_client::loadgen;

/// Pushing 8x the memory budget: the server slows and refuses pushes instead of growing, the client
/// sees the backpressure, and every byte still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushing_many_times_the_budget_keeps_rss_within_budget_plus_fixed_overhead() {
    let budget: u64 = 32 << 20;
    let server = TestServer::start(
        1,
        &format!("memory_budget_bytes = {budget}\nmessage_bytes_max = \"4MiB\"\npush_wait_ms_max = 0\nmemory_high_watermark_ratio = 0.9\npush_retry_after_ms = 20"),
    );
    let mut spec = load_spec(&server.grpc, "pressure", 1, 16, 64, 32 << 20, 64 << 10);
    spec.concurrency = 8;
    spec.options.batch_bytes_max = 3 << 20;
    let r = loadgen::load(spec.clone()).await.expect("load");
    assert_eq!(r.bytes, 512 << 20);
    let (_, metrics) = server.admin_get("/metrics");
    let rejected = metric(&metrics, "croupier_push_rejected_total");
    assert!(
        r.retry_later > 0 && rejected > 0.0,
        "no backpressure seen: client {} server {rejected}",
        r.retry_later
    );
    let status = server.status_json();
    let peak_budgeted = status["memory_peak_bytes"].as_u64().unwrap();
    assert!(
        peak_budgeted <= budget,
        "accounted memory {peak_budgeted} exceeded the budget"
    );
    let rss = server.peak_rss_bytes();
    let overhead: u64 = 256 << 20;
    eprintln!(
        "peak RSS {} MiB with a {} MiB budget",
        rss >> 20,
        budget >> 20
    );
    assert!(
        rss <= budget + overhead,
        "peak RSS {} MiB > budget {} MiB + {} MiB",
        rss >> 20,
        budget >> 20,
        overhead >> 20
    );
    assert_verified(&spec).await;
}

/// Tiny blocks: each buffered block is charged its overhead, not only its payload, and the block index
/// (which grows with every stored block and only shrinks when shuffles go) stops at
/// `metadata_bytes_max` with a clear RESOURCE_EXHAUSTED, without harming what is stored; unregistering
/// gives the metadata back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_blocks_are_charged_their_overhead_and_the_index_stops_at_metadata_bytes_max() {
    use bytes::Bytes;
    let server = TestServer::start(
        1,
        "memory_budget_bytes = \"64MiB\"\nmetadata_bytes_max = \"2MiB\"\nmessage_bytes_max = \"4MiB\"",
    );
    let client = server.client().await;
    client.register_shuffle("tiny", 0, 3, 4).await.unwrap();
    let block = Bytes::from_static(b"sixteen bytes!!!");

    // 20,000 blocks of 16 bytes buffered (not committed): the budget holds far more than 320,000 bytes.
    let mut map0 = client.pusher("tiny", 0, 0, 1);
    for i in 0..20_000u32 {
        map0.push(i % 4, block.clone()).await.unwrap();
    }
    map0.finish().await.unwrap();
    let used = server.status_json()["memory_used_bytes"].as_u64().unwrap();
    assert!(
        used >= 20_000 * 64,
        "20,000 buffered blocks of 16 bytes charged only {used} bytes"
    );
    let (won, _) = map0.commit().await.unwrap();
    assert!(won.committed);
    let metadata = server.status_json()["metadata_bytes"].as_u64().unwrap();
    assert!(
        metadata >= 20_000 * 40,
        "20,000 indexed blocks counted as {metadata} metadata bytes"
    );

    // 60,000 more blocks take the index past 2 MiB; they are still stored and committed.
    let mut map1 = client.pusher("tiny", 0, 1, 2);
    for i in 0..60_000u32 {
        map1.push(i % 4, block.clone()).await.unwrap();
    }
    assert!(map1.commit().await.unwrap().0.committed);
    let status = server.status_json();
    assert!(
        status["metadata_bytes"].as_u64().unwrap() >= 2 << 20,
        "{status}"
    );
    // Clients choosing servers see it too.
    let st = client.status().await.unwrap();
    assert!(
        st.metadata_bytes >= 2 << 20 && st.metadata_limit_bytes == 2 << 20,
        "{st:?}"
    );
    assert!(!st.accepting_pushes);

    // The next push is refused, naming the limit; the server says why it is not ready.
    let mut map2 = client.pusher("tiny", 0, 2, 3);
    map2.push(0, block.clone()).await.unwrap();
    let err = map2
        .finish()
        .await
        .expect_err("a push past metadata_bytes_max must fail")
        .to_string();
    assert!(
        err.contains("metadata_bytes_max")
            && (err.contains("ResourceExhausted")
                || err.contains("RESOURCE_EXHAUSTED")
                || err.contains("resource")),
        "{err}"
    );
    let (code, body) = server.admin_get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("metadata"), "{body}");
    let (_, metrics) = server.admin_get("/metrics");
    assert!(
        metrics.contains("reason=\"metadata\""),
        "no push refused for metadata in /metrics"
    );

    // What is stored stays readable: every block of maps 0 and 1, once.
    let (blocks, _) = client
        .fetch(fetch_req("tiny", 0, 0..4, 0..2))
        .await
        .unwrap();
    assert_eq!(blocks.len(), 80_000);
    assert!(blocks.iter().all(|b| b.data == block));

    // Unregistering gives the metadata back, and pushes are taken again.
    assert!(client.unregister_shuffle("tiny", 0).await.unwrap());
    let mut freed = false;
    for _ in 0..100 {
        if server.status_json()["metadata_bytes"].as_u64() == Some(0) {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(freed, "metadata not given back: {}", server.status_json());
    assert_eq!(server.admin_get("/readyz").0, 200);
    client.register_shuffle("tiny", 1, 1, 1).await.unwrap();
    let mut again = client.pusher("tiny", 1, 0, 4);
    again.push(0, block.clone()).await.unwrap();
    assert!(again.commit().await.unwrap().0.committed);
}

/// `write_queue_bytes_max`: pushes to a disk whose writer is behind by more than that wait for it
/// (counted in `croupier_push_write_queue_wait_seconds`) instead of piling more onto its queue; they
/// are slowed, not refused, and every byte arrives. With the wait turned off no push waits for the
/// writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_wait_for_a_writer_that_is_behind_by_more_than_write_queue_bytes_max() {
    for queue_max in ["256KiB", "0"] {
        let server = TestServer::start(
            1,
            &format!("chunk_bytes_target = \"256KiB\"\nwrite_queue_bytes_max = \"{queue_max}\""),
        );
        let mut spec = load_spec(&server.grpc, "queue", 1, 8, 16, 16 << 20, 256 << 10);
        spec.concurrency = 4;
        let r = loadgen::load(spec.clone()).await.expect("load");
        assert_eq!(r.bytes, 128 << 20);
        assert_eq!(
            r.retry_later, 0,
            "queue_max {queue_max}: pushes were refused"
        );
        let (_, metrics) = server.admin_get("/metrics");
        let waits = metric(&metrics, "croupier_push_write_queue_wait_seconds_count");
        if queue_max == "0" {
            assert_eq!(waits, 0.0, "pushes waited with the wait turned off");
        } else {
            // Every batch of 4 MiB queues 16 chunks of 256 KiB at once: the next batches find the writer
            // behind.
            assert!(waits > 0.0, "no push waited for the writer");
        }
        assert_verified(&spec).await;
    }
}
