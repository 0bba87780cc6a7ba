//! Segment recycling (docs/FORMAT.md, sections 2 and 6.1): the segments of a deleted shuffle go to the
//! data dir's pool, and new segments overwrite them in place from offset 0. The stale bytes past a
//! recycled segment's logical end must never be served, a restart must append after them, `inspect`
//! must find nothing wrong, and the pool must stay under its limit.

use crate::common::*;
use croupier_client::loadgen;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const SEGMENT_BYTES_MAX: u64 = 1 << 20;
const CHUNK_BYTES: u64 = 256 << 10;
/// Shorter segments are deleted, not pooled: a sixteenth of a segment (FORMAT.md, section 2).
const POOL_FILE_BYTES_MIN: u64 = SEGMENT_BYTES_MAX / 16;

/// The (inode, length) pairs the pool keeps of a deleted shuffle's segments.
fn poolable(segments: &[(u64, u64)]) -> Vec<(u64, u64)> {
    segments
        .iter()
        .filter(|s| s.1 >= POOL_FILE_BYTES_MIN)
        .copied()
        .collect()
}

/// (inode, length) of the files in `dir` whose name starts with `prefix`, sorted.
fn inodes_and_lengths(dir: &Path, prefix: &str) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = std::fs::read_dir(dir)
        .expect("list dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| {
            let m = e.metadata().expect("stat");
            (m.ino(), m.len())
        })
        .collect();
    out.sort_unstable();
    out
}

/// (inode, length) of every segment file of a shuffle directory.
fn segments(dir: &Path) -> Vec<(u64, u64)> {
    inodes_and_lengths(dir, "seg-")
}

/// (inode, length) of every pooled file of a data dir.
fn pooled(data_dir: &Path) -> Vec<(u64, u64)> {
    inodes_and_lengths(&data_dir.join("segment-pool"), "")
}

fn assert_inspect_clean(dir: &Path) {
    let (clean, report) = inspect_dir(dir);
    assert!(clean, "inspect found damage: {report}");
}

async fn recycled_segments_serve_only_new_data(io: &str) {
    let mut server = TestServer::start(
        1,
        &format!(
            "io = \"{io}\"\nsegment_bytes_max = \"1MiB\"\nchunk_bytes_target = \"256KiB\"\nsegment_pool_bytes_max = \"64MiB\""
        ),
    );
    let data_dir = server.dirs[0].clone();
    // 8 MiB of one app's data in about eight segments, then deleted.
    let old = load_spec(&server.grpc, "old", 1, 4, 4, 2 << 20, 64 << 10);
    load_and_verify(old.clone()).await;
    let old_segments = segments(&server.shuffle_dir("old", 1).expect("old shuffle dir"));
    assert!(old_segments.len() >= 6, "{old_segments:?}");
    let old_pooled = poolable(&old_segments);
    assert!(old_pooled.len() >= 6, "{old_segments:?}");
    let client = server.client().await;
    assert!(client.unregister_app("old").await.expect("unregister"));
    assert!(server.shuffle_dir("old", 1).is_none());
    assert_eq!(
        pooled(&data_dir),
        old_pooled,
        "every segment of the deleted shuffle (of at least {POOL_FILE_BYTES_MIN} bytes) is pooled, unchanged"
    );
    let metrics = server.admin_get("/metrics").1;
    let pooled_bytes: u64 = old_pooled.iter().map(|s| s.1).sum();
    assert_eq!(
        metric(&metrics, "croupier_segment_pool_bytes"),
        pooled_bytes as f64
    );
    assert_eq!(
        server.status_json()["disks"][0]["segment_pool_bytes"].as_u64(),
        Some(pooled_bytes)
    );

    // Another app's shuffle, different bytes, half the size: it takes pooled files and overwrites them
    // from offset 0; its last segment keeps a stale tail of the old app's bytes.
    let mut new = load_spec(&server.grpc, "new", 1, 4, 4, 1 << 20, 64 << 10);
    new.seed = 7;
    new.map_end = 2;
    loadgen::load(new.clone()).await.expect("load maps 0..2");
    let new_dir = server.shuffle_dir("new", 1).expect("new shuffle dir");
    let new_segments = segments(&new_dir);
    let old_inodes: HashSet<u64> = old_pooled.iter().map(|s| s.0).collect();
    assert!(
        new_segments.iter().all(|s| old_inodes.contains(&s.0)),
        "new segments must be recycled files: {new_segments:?} vs {old_segments:?}"
    );
    // Written from offset 0, 2 MiB fill at most three 1 MiB segments, and none grows past the longer of
    // its old length and a full segment (1 MiB plus one chunk, plus padding in direct mode). Appending
    // after the stale bytes would roll after every append and use up the pool.
    assert!(new_segments.len() <= 3, "{new_segments:?}");
    for (ino, len) in &new_segments {
        let was = old_segments.iter().find(|s| s.0 == *ino).expect("old").1;
        assert!(
            *len <= was.max(SEGMENT_BYTES_MAX + CHUNK_BYTES + 4096),
            "segment {ino} grew to {len} bytes (was {was}): appended after the stale bytes instead of over them"
        );
    }
    let metrics = server.admin_get("/metrics").1;
    assert_eq!(
        metric(&metrics, "croupier_segments_recycled_total"),
        new_segments.len() as f64
    );
    assert_eq!(
        pooled(&data_dir).len(),
        old_pooled.len() - new_segments.len()
    );

    // After a kill -9, the last segment's logical end is unknown: writing resumes at its physical end,
    // never over indexed bytes, and the stale tail stays unreferenced.
    server.restart();
    assert_inspect_clean(&data_dir);
    new.server = server.grpc.clone();
    new.map_start = 2;
    new.map_end = 4;
    loadgen::load(new.clone())
        .await
        .expect("load maps 2..4 after the restart");
    new.map_start = 0;
    new.map_end = 0;
    assert_verified(&new).await;
    assert_inspect_clean(&data_dir);

    // The pool a restart adopted feeds the next shuffle too.
    let before = pooled(&data_dir).len();
    let mut third = load_spec(&server.grpc, "third", 1, 2, 4, 1 << 20, 64 << 10);
    third.seed = 9;
    load_and_verify(third.clone()).await;
    assert!(
        pooled(&data_dir).len() < before,
        "the adopted pool was not used"
    );
    server.restart();
    new.server = server.grpc.clone();
    third.server = server.grpc.clone();
    assert_verified(&new).await;
    assert_verified(&third).await;
    assert_inspect_clean(&data_dir);

    // A shuffle that restart recovered gives its segments to the pool too.
    let recovered = poolable(&segments(&new_dir));
    assert!(!recovered.is_empty());
    let before = pooled(&data_dir).len();
    let client = server.client().await;
    assert!(client.unregister_app("new").await.expect("unregister"));
    let now = pooled(&data_dir);
    assert_eq!(now.len(), before + recovered.len(), "{now:?}");
    assert!(recovered.iter().all(|s| now.contains(s)));
    assert_verified(&third).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_segments_of_a_deleted_shuffle_are_overwritten_and_never_read_past_their_end() {
    recycled_segments_serve_only_new_data("buffered").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_segments_of_a_deleted_shuffle_are_overwritten_and_never_read_past_their_end() {
    recycled_segments_serve_only_new_data("direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_stays_under_its_limit_and_zero_turns_recycling_off() {
    for (limit, limit_bytes) in [("3MiB", 3u64 << 20), ("0", 0)] {
        let server = TestServer::start(
            1,
            &format!(
                "segment_bytes_max = \"1MiB\"\nchunk_bytes_target = \"256KiB\"\nsegment_pool_bytes_max = \"{limit}\""
            ),
        );
        // A shuffle whose one segment is shorter than the pool's minimum: deleted, not pooled.
        let tiny = load_spec(&server.grpc, "tiny", 1, 1, 2, 16 << 10, 4 << 10);
        load_and_verify(tiny).await;
        let tiny_segments = segments(&server.shuffle_dir("tiny", 1).expect("tiny shuffle dir"));
        assert!(
            tiny_segments.len() == 1 && tiny_segments[0].1 < POOL_FILE_BYTES_MIN,
            "{tiny_segments:?}"
        );
        let client = server.client().await;
        assert!(client
            .unregister_shuffle("tiny", 1)
            .await
            .expect("unregister"));
        assert!(server.shuffle_dir("tiny", 1).is_none());
        assert_eq!(
            pooled(&server.dirs[0]),
            vec![],
            "{limit}: a short segment was pooled"
        );

        let spec = load_spec(&server.grpc, "big", 1, 4, 4, 2 << 20, 64 << 10);
        load_and_verify(spec.clone()).await;
        assert!(client
            .unregister_shuffle("big", 1)
            .await
            .expect("unregister"));
        let pool = pooled(&server.dirs[0]);
        let bytes: u64 = pool.iter().map(|s| s.1).sum();
        assert!(bytes <= limit_bytes, "{limit}: pool holds {pool:?}");
        if limit_bytes > 0 {
            assert!(!pool.is_empty(), "{limit}: nothing was pooled");
        }
        assert!(server.shuffle_dir("big", 1).is_none());
        // The next shuffle works with whatever the pool holds.
        let mut next = load_spec(&server.grpc, "big", 2, 4, 4, 2 << 20, 64 << 10);
        next.seed = 3;
        load_and_verify(next).await;
    }
}

/// Polls `/status` until the first disk's pool holds `bytes`.
fn wait_for_pool_bytes(server: &TestServer, bytes: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = server.status_json()["disks"][0]["segment_pool_bytes"].as_u64();
        if now == Some(bytes) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pool holds {now:?} bytes, not {bytes}; log: {}",
            server.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_prefills_its_pool_and_its_first_shuffle_overwrites_those_files() {
    // 5.5 MiB: five full 1 MiB files and a half one.
    let target: u64 = (5 << 20) + (512 << 10);
    let mut server = TestServer::start(
        1,
        &format!(
            "segment_bytes_max = \"1MiB\"\nchunk_bytes_target = \"256KiB\"\nsegment_pool_bytes_max = \"8MiB\"\nsegment_pool_prefill_bytes = {target}"
        ),
    );
    let data_dir = server.dirs[0].clone();
    wait_for_pool_bytes(&server, target);
    let prefilled = pooled(&data_dir);
    let mut lengths: Vec<u64> = prefilled.iter().map(|s| s.1).collect();
    lengths.sort_unstable();
    assert_eq!(
        lengths,
        vec![512 << 10, 1 << 20, 1 << 20, 1 << 20, 1 << 20, 1 << 20]
    );
    let names: Vec<String> = std::fs::read_dir(data_dir.join("segment-pool"))
        .expect("list pool")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n.ends_with(".seg")),
        "only complete files are pooled: {names:?}"
    );
    assert!(server.log().contains("segment pool prefill finished"));

    // The first shuffle of the new server takes prefilled files, and serves only its own bytes.
    let spec = load_spec(&server.grpc, "first", 1, 4, 4, 1 << 20, 64 << 10);
    load_and_verify(spec.clone()).await;
    let taken = segments(&server.shuffle_dir("first", 1).expect("shuffle dir"));
    let prefilled_inodes: HashSet<u64> = prefilled.iter().map(|s| s.0).collect();
    assert!(
        !taken.is_empty() && taken.iter().all(|s| prefilled_inodes.contains(&s.0)),
        "the first shuffle's segments must be prefilled files: {taken:?} vs {prefilled:?}"
    );
    let metrics = server.admin_get("/metrics").1;
    assert_eq!(
        metric(&metrics, "croupier_segments_recycled_total"),
        taken.len() as f64
    );
    assert_inspect_clean(&data_dir);

    // A restart deletes a fill cut short, tops the pool up to the target again (not past it), and the
    // shuffle is intact.
    std::fs::write(data_dir.join("segment-pool").join("99.fill"), [0u8; 4096]).expect("plant");
    server.restart();
    wait_for_pool_bytes(&server, target);
    assert!(!data_dir.join("segment-pool").join("99.fill").exists());
    assert_eq!(
        pooled(&data_dir).len(),
        prefilled.len(),
        "refilled to the same target"
    );
    let mut spec = spec;
    spec.server = server.grpc.clone();
    assert_verified(&spec).await;
    assert_inspect_clean(&data_dir);
}
