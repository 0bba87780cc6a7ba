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
