//! Fault injection against the real server: I/O errors with libfiu (`fiu-run`, `fiu-ctrl`), full disks
//! on size-limited tmpfs mounts. Expected everywhere: a clear status, disk isolation, no crash, and no
//! wrong byte ever served.

use crate::common::*;
use croupier_client::loadgen;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;

const FAST_PROBE: &str =
    "disk_probe_interval_ms = 200\ndisk_reserve_bytes = \"1MiB\"\nchunk_bytes_target = \"256KiB\"";

/// Restarts `server` without fault injection, checks its data dir with `inspect`, and verifies `spec`
/// (a shuffle written before the fault) byte for byte.
async fn restart_inspect_and_verify(server: &mut TestServer, mut spec: loadgen::LoadSpec) {
    server.restart_plain();
    inspect_ok(&server.dirs[0]);
    spec.server = server.grpc.clone();
    assert_verified(&spec).await;
}

/// The failed `what` (an fsync) is counted in `croupier_disk_errors_total`.
fn assert_disk_error_counted(server: &TestServer, what: &str) {
    let errors = metric(
        &server.admin_get("/metrics").1,
        "croupier_disk_errors_total",
    );
    assert!(
        errors >= 1.0,
        "the failed {what} is not in croupier_disk_errors_total"
    );
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// With EIO injected into every segment write: a load of shuffle 2 of `app` fails with a clear error, and
/// the server takes its only disk out of service.
async fn load_fails_with_eio_and_the_disk_fails(server: &TestServer, app: &str) {
    server.fiu("enable name=posix/io/rw/pwritev,failinfo=5");
    let during = load_spec(&server.grpc, app, 2, 2, 4, 2 << 20, 64 << 10);
    let err = loadgen::load(during).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("DATA_LOST") || msg.contains("Input/output error"),
        "{msg}"
    );
    wait_for("the disk to fail", || server.disk_states() == ["failed"]).await;
}

fn inspect_ok(dir: &Path) -> String {
    let (clean, report) = inspect_dir(dir);
    assert!(clean, "inspect found damage: {report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_write_fails_the_disk_loses_only_its_shuffles_and_the_probe_returns_it() {
    let mut server = TestServer::start_with(1, vec![], FAST_PROBE, true);
    let before = load_spec(&server.grpc, "eio", 1, 2, 4, 2 << 20, 64 << 10);
    loadgen::load(before.clone()).await.unwrap();
    let pid = server.pid();
    // An attempt that buffers a little (below any chunk size) on a shuffle the failure will take.
    let small_client = server.client().await;
    small_client.register_shuffle("eio", 5, 1, 4).await.unwrap();
    let mut small = small_client.pusher("eio", 5, 0, 1);
    for p in 0..4 {
        small
            .push(p, bytes::Bytes::from(vec![7u8; 10_000]))
            .await
            .unwrap();
    }
    small.finish().await.unwrap();
    assert!(server.status_json()["memory_used_bytes"].as_u64().unwrap() >= 40_000);

    load_fails_with_eio_and_the_disk_fails(&server, "eio").await;
    assert!(
        server.is_running() && server.pid() == pid,
        "the server must not crash"
    );
    // What the lost shuffle still buffered can never be written: its memory is given back.
    wait_for("the lost shuffle's buffers to be dropped", || {
        server.status_json()["memory_used_bytes"] == 0
    })
    .await;
    assert_eq!(server.admin_get("/healthz").0, 200);
    assert_eq!(
        server.admin_get("/readyz").0,
        503,
        "no healthy disk: not ready"
    );
    // The shuffle that was on the failed disk is reported lost, never served.
    let client = server.client().await;
    let err = client
        .fetch(fetch_req("eio", 1, 0..4, 0..2))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert!(err.to_string().contains("DATA_LOST"), "{err}");

    server.fiu("disable name=posix/io/rw/pwritev");
    wait_for("the probe to return the disk", || {
        server.disk_states() == ["healthy"]
    })
    .await;
    assert_eq!(server.admin_get("/readyz").0, 200);
    let err = client
        .fetch(fetch_req("eio", 1, 0..4, 0..2))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("DATA_LOST"),
        "shuffles lost with the disk stay lost: {err}"
    );
    let after = load_spec(&server.grpc, "eio", 3, 2, 4, 2 << 20, 64 << 10);
    load_and_verify(after).await;
    // A lost shuffle registered again is placed again (its maps rerun) rather than staying lost.
    let status = server.status_json();
    assert!(
        status["shuffles"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["shuffle_id"] == 2 && s["lost"] == true),
        "{status}"
    );
    assert!(
        client.register_shuffle("eio", 2, 2, 4).await.unwrap(),
        "re-registration must create it anew"
    );
    load_and_verify(load_spec(&server.grpc, "eio", 2, 2, 4, 2 << 20, 64 << 10)).await;

    // The files themselves were never damaged: after a restart the first shuffle verifies again.
    restart_inspect_and_verify(&mut server, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_fsync_fails_the_commit_cleanly() {
    let mut server = TestServer::start_with(
        1,
        vec![],
        &format!("{FAST_PROBE}\ndurability = \"fsync\""),
        true,
    );
    let before = load_spec(&server.grpc, "fsync", 1, 2, 4, 1 << 20, 64 << 10);
    loadgen::load(before.clone()).await.unwrap();
    server.fiu("enable name=posix/io/sync/fdatasync,failinfo=5");
    let err = loadgen::load(load_spec(&server.grpc, "fsync", 2, 2, 4, 1 << 20, 64 << 10))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("fsync failed") || err.to_string().contains("DATA_LOST"),
        "{err}"
    );
    assert!(server.is_running());
    // Whether the commit's fsync or the probe's met the error first, it is counted.
    assert_disk_error_counted(&server, "fsync");
    server.fiu("disable name=posix/io/sync/fdatasync");
    restart_inspect_and_verify(&mut server, before).await;
    // The refused commits were not replayed: shuffle 2 has no committed map.
    let client = server.client().await;
    let err = client
        .fetch(fetch_req("fsync", 2, 0..4, 0..1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
}

/// A finished segment is synced on the disk's sync thread, off the writer (FORMAT.md section 8). When
/// that `fdatasync` fails, the disk still fails at once and the shuffle's commits are refused naming
/// the segment, although no commit waited for that sync (durability `write`). The probe is kept out of
/// the way so the failure can only come from the sync thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_the_background_sync_of_a_finished_segment_fails_the_disk() {
    let mut server = TestServer::start_with(
        1,
        vec![],
        "disk_probe_interval_ms = 600000
segment_bytes_max = \"256KiB\"\nchunk_bytes_target = \"64KiB\"",
        true,
    );
    let before = load_spec(&server.grpc, "segsync", 1, 2, 4, 1 << 20, 64 << 10);
    loadgen::load(before.clone()).await.unwrap();
    server.fiu("enable name=posix/io/sync/fdatasync,failinfo=5");
    let err = loadgen::load(load_spec(
        &server.grpc,
        "segsync",
        2,
        4,
        4,
        1 << 20,
        64 << 10,
    ))
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("fdatasync of finished segment"),
        "{err}"
    );
    assert!(server.is_running());
    let status = server.status_json();
    assert_eq!(status["disks"][0]["state"], "failed", "{status}");
    assert_disk_error_counted(&server, "sync");
    server.fiu("disable name=posix/io/sync/fdatasync");
    // Shuffle 1's segments were synced before the fault: a restart serves it intact.
    restart_inspect_and_verify(&mut server, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eio_on_read_fails_the_fetch_and_never_serves_wrong_data() {
    let mut server = TestServer::start_with(1, vec![], FAST_PROBE, true);
    let spec = load_spec(&server.grpc, "readerr", 1, 3, 4, 2 << 20, 64 << 10);
    loadgen::load(spec.clone()).await.unwrap();
    server.fiu("enable name=posix/io/rw/pread,failinfo=5");
    let client = server.client().await;
    let mut received = 0;
    let err = client
        .fetch_with(fetch_req("readerr", 1, 0..4, 0..3), |_| received += 1)
        .await
        .unwrap_err();
    assert_eq!(received, 0, "no block may arrive from a failing read");
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert!(err.to_string().contains("Input/output error"), "{err}");
    assert!(server.is_running());
    server.fiu("disable name=posix/io/rw/pread");
    server.restart_plain();
    let mut spec = spec;
    spec.server = server.grpc.clone();
    assert_verified(&spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_on_write_answers_no_space_without_failing_the_disk() {
    let server = TestServer::start_with(1, vec![], FAST_PROBE, true);
    let kept = load_spec(&server.grpc, "enospc", 1, 2, 4, 1 << 20, 64 << 10);
    loadgen::load(kept.clone()).await.unwrap();
    server.fiu("enable name=posix/io/rw/pwritev,failinfo=28");
    let err = loadgen::load(load_spec(
        &server.grpc,
        "enospc",
        2,
        2,
        4,
        1 << 20,
        64 << 10,
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no space"), "{err}");
    server.fiu("disable name=posix/io/rw/pwritev");
    assert_eq!(
        server.disk_states(),
        ["healthy"],
        "ENOSPC is not a disk failure"
    );
    assert_verified(&kept).await;
    load_and_verify(load_spec(
        &server.grpc,
        "enospc",
        3,
        2,
        4,
        1 << 20,
        64 << 10,
    ))
    .await;
}

/// A tmpfs mount that is unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap().keep();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mount -t tmpfs failed: the fault tests need root (CI runs as root)"
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_no_space_and_keeps_what_was_committed() {
    let fs = Tmpfs::mount("40m");
    let mut server = TestServer::start_with(
        0,
        vec![fs.0.clone()],
        "disk_reserve_bytes = \"4MiB\"\nchunk_bytes_target = \"256KiB\"",
        false,
    );
    let client = server.client().await;
    let mut committed = Vec::new();
    let mut refusal = None;
    for shuffle in 0..12u32 {
        let spec = load_spec(&server.grpc, "full", shuffle, 2, 4, 2 << 20, 64 << 10);
        match loadgen::load(spec.clone()).await {
            Ok(_) => committed.push(spec),
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let err = refusal.expect("40 MiB cannot hold 12 x 4 MiB");
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert!(
        err.to_string().contains("no space") || err.to_string().contains("reserve"),
        "{err}"
    );
    assert!(!committed.is_empty());
    let free = server.status_json()["disks"][0]["free_bytes"]
        .as_u64()
        .unwrap();
    assert!(
        free < (4 << 20) + (4 << 20),
        "refused with {free} bytes free"
    );
    assert_eq!(server.admin_get("/healthz").0, 200);
    for spec in &committed {
        assert_verified(spec).await;
    }
    // Freeing space brings the disk back.
    client.unregister_shuffle("full", 0).await.unwrap();
    server.restart();
    inspect_ok(&server.dirs[0]);
    for spec in &committed[1..] {
        let mut spec = spec.clone();
        spec.server = server.grpc.clone();
        assert_verified(&spec).await;
    }
    assert_eq!(server.disk_states(), ["healthy"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_shuffles_go_to_the_disk_with_room_when_another_is_full() {
    let fs = Tmpfs::mount("24m");
    std::fs::write(fs.0.join("filler"), vec![0u8; 20 << 20]).unwrap();
    let server = TestServer::start_with(
        1,
        vec![fs.0.clone()],
        "disk_reserve_bytes = \"8MiB\"",
        false,
    );
    assert_eq!(server.disk_states(), ["full", "healthy"]);
    assert_eq!(
        server.admin_get("/readyz").0,
        200,
        "one healthy disk is enough"
    );
    for shuffle in 0..4u32 {
        load_and_verify(load_spec(
            &server.grpc,
            "room",
            shuffle,
            2,
            4,
            1 << 20,
            64 << 10,
        ))
        .await;
    }
    assert!(
        !fs.0.join("apps/room").exists(),
        "no shuffle may land on the full disk"
    );
    assert!(server.dirs[1].join("apps/room").exists());
}

/// The same promises with `io = "direct"`, whose appends (staged, aligned `pwritev` on an O_DIRECT
/// handle) and reads (aligned `pread`) take their own code paths: EIO on a read fails the fetch with
/// nothing served; EIO on an append fails the disk and loses only its shuffles; the data written before
/// verifies after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_io_eio_on_read_and_write_fails_cleanly_and_keeps_earlier_data() {
    let mut server =
        TestServer::start_with(1, vec![], &format!("{FAST_PROBE}\nio = \"direct\""), true);
    let before = load_spec(&server.grpc, "dio-eio", 1, 3, 4, 2 << 20, 64 << 10);
    loadgen::load(before.clone()).await.unwrap();
    let client = server.client().await;

    server.fiu("enable name=posix/io/rw/pread,failinfo=5");
    let mut received = 0;
    let err = client
        .fetch_with(fetch_req("dio-eio", 1, 0..4, 0..3), |_| received += 1)
        .await
        .unwrap_err();
    assert_eq!(received, 0, "no block may arrive from a failing read");
    assert!(err.to_string().contains("Input/output error"), "{err}");
    server.fiu("disable name=posix/io/rw/pread");
    server.restart();
    let client = server.client().await;

    load_fails_with_eio_and_the_disk_fails(&server, "dio-eio").await;
    assert!(server.is_running(), "the server must not crash");
    let err = client
        .fetch(fetch_req("dio-eio", 2, 0..4, 0..2))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");

    restart_inspect_and_verify(&mut server, before).await;
}
