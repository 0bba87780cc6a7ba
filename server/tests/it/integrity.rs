use crate::common::*;
use crate::round_trip::push_raw;
use bytes::Bytes;
use std::os::unix::fs::FileExt;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_whose_crc_does_not_match_is_refused_at_push() {
    let server = TestServer::start(1, "");
    let client = server.client().await;
    client.register_shuffle("crc", 0, 1, 2).await.unwrap();
    let data = Bytes::from_static(b"hello shuffle");
    let batch = croupier_client::proto::PushBatch {
        app_id: "crc".into(),
        shuffle_id: 0,
        map_index: 0,
        attempt_id: 1,
        batch_id: 0,
        blocks: vec![croupier_client::proto::Block {
            partition_id: 1,
            seq: 0,
            crc32: crc32fast::hash(&data) ^ 1,
            data,
        }],
    };
    let mut acks = client
        .raw()
        .push(tokio_stream::iter(vec![batch]))
        .await
        .unwrap()
        .into_inner();
    let status = acks.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("blocks.crc32"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("partition 1"),
        "{}",
        status.message()
    );
    // Nothing was stored: a commit promising the block is refused.
    let counts = vec![croupier_client::proto::PartitionCount {
        partition_id: 1,
        blocks: 1,
        bytes: 13,
    }];
    let err = client.commit("crc", 0, 0, 1, counts).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_flipped_on_disk_fails_the_fetch_naming_the_file_and_inspect_reports_it() {
    let server = TestServer::start(1, "chunk_bytes_target = \"256KiB\"");
    let spec = load_spec(&server.grpc, "rot", 5, 4, 8, 2 << 20, 16 << 10);
    croupier_client::loadgen::load(spec.clone())
        .await
        .expect("load");
    let other = load_spec(&server.grpc, "bystander", 1, 2, 4, 1 << 20, 16 << 10);
    croupier_client::loadgen::load(other.clone())
        .await
        .expect("load");

    let dir = server.shuffle_dir("rot", 5).expect("shuffle dir");
    let seg = dir.join("seg-000000.data");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    // The first chunk's header names its partition (bytes 4..8); flip a byte inside its first block.
    let mut header = [0u8; 32];
    f.read_exact_at(&mut header, 0).unwrap();
    let partition = u32::from_le_bytes(header[4..8].try_into().unwrap());
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, 40).unwrap();
    f.write_all_at(&[byte[0] ^ 0x10], 40).unwrap();
    drop(f);

    let client = server.client().await;
    let mut received = 0;
    let err = client
        .fetch_with(fetch_req("rot", 5, partition..partition + 1, 0..4), |_| {
            received += 1
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::DataLoss), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("DATA_CORRUPTED"), "{msg}");
    assert!(
        msg.contains("shuffle 5") && msg.contains(&format!("partition {partition}")),
        "{msg}"
    );
    assert!(msg.contains("seg-000000.data"), "{msg}");
    // The client verified every block it was handed: none was corrupt (the server refused to send it).
    // Other partitions and other apps are intact.
    let p_other = (partition + 1) % 8;
    client
        .fetch(fetch_req("rot", 5, p_other..p_other + 1, 0..4))
        .await
        .expect("other partition");
    assert_verified(&other).await;

    let (clean, stdout) = inspect_dir(&server.dirs[0]);
    assert!(!clean, "inspect must fail on damage: {stdout}");
    let damage: Vec<&str> = stdout.lines().filter(|l| l.starts_with("DAMAGE")).collect();
    assert!(
        damage
            .iter()
            .any(|l| l.contains("seg-000000.data offset 32")
                && l.contains(&format!("partition {partition}"))),
        "{stdout}"
    );
    assert!(
        damage.iter().all(|l| l.contains("/rot/5/")),
        "only the damaged shuffle is reported: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_passes_a_healthy_data_dir_and_names_damage_in_each_kind_of_file() {
    let mut server = TestServer::start(1, "chunk_bytes_target = \"64KiB\"");
    let spec = load_spec(&server.grpc, "kinds", 1, 3, 4, 512 << 10, 8 << 10);
    croupier_client::loadgen::load(spec.clone())
        .await
        .expect("load");
    server.sigterm_and_wait();
    let inspect = inspect_dir;
    let (ok, out) = inspect(&server.dirs[0]);
    assert!(ok, "{out}");
    assert!(out.contains("\"commits\":3"), "{out}");
    let dir = server.shuffle_dir("kinds", 1).unwrap();
    for (file, offset) in [
        ("index.log", 20u64),
        ("commit.log", 30),
        ("shuffle.meta", 18),
    ] {
        let path = dir.join(file);
        let original = std::fs::read(&path).unwrap();
        let mut damaged = original.clone();
        damaged[offset as usize] ^= 0xff;
        std::fs::write(&path, &damaged).unwrap();
        let (ok, out) = inspect(&dir);
        assert!(!ok, "damage in {file} not reported: {out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("DAMAGE") && l.contains(file)),
            "{file}: {out}"
        );
        std::fs::write(&path, &original).unwrap();
    }
    let (ok, out) = inspect(&dir);
    assert!(ok, "{out}");
    // Restart on the repaired files: everything still verifies.
    server.restart();
    let spec = load_spec(&server.grpc, "kinds", 1, 3, 4, 512 << 10, 8 << 10);
    assert_verified(&spec).await;
    let _ = push_raw; // shared helper, used elsewhere
}

/// An index record whose chunk a crash took (the segment ends before it): restart skips it, and
/// `inspect` agrees. It is a TORN note when only uncommitted blocks are lost, and DAMAGE naming the segment
/// when a commit needs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_and_restart_agree_on_an_index_record_that_outlived_its_chunk() {
    let (mut server, dir, segment, committed_end) =
        committed_map0_and_uncommitted_map1("outlived").await;
    let committed_end = committed_end as u64;

    // A crash took map 1's chunk: only uncommitted blocks are gone.
    let original = std::fs::read(&segment).unwrap();
    let cut = &original[..committed_end as usize];
    map1_lost_map0_served(&mut server, "outlived", &segment, cut, "past the end", 2).await;

    // Cut into map 0's committed chunk as well: now it is damage, naming the segment.
    std::fs::write(&segment, &original[..committed_end as usize / 2]).unwrap();
    assert_committed_blocks_lost(&dir);
}

/// A recycled segment is longer than what was written to it: after a power loss, an index record can
/// point at stale bytes of a deleted shuffle that the chunk never replaced. Restart checks the chunk
/// headers of the last segment (the only one with unsynced appends) and skips such a record; `inspect`
/// agrees (TORN when only uncommitted blocks are lost, DAMAGE when a commit needs them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_never_replaced_stale_bytes_is_skipped_at_restart_and_inspect_agrees() {
    let (mut server, dir, segment, committed_end) =
        committed_map0_and_uncommitted_map1("stale").await;

    // As if map 1's chunk never reached the disk and the file already held another shuffle's bytes.
    let original = std::fs::read(&segment).unwrap();
    let mut stale = original.clone();
    stale[committed_end..].fill(0x5A);
    map1_lost_map0_served(&mut server, "stale", &segment, &stale, "not on disk", 2).await;

    // Stale bytes under map 0's committed chunk too: damage, and the fetch refuses to serve it.
    stale[..committed_end].fill(0x5A);
    std::fs::write(&segment, &stale).unwrap();
    assert_committed_blocks_lost(&dir);
    server.restart();
    let client = server.client().await;
    let err = client
        .fetch(fetch_req("stale", 1, 0..1, 0..1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::DataLoss), "{err}");
    // Refused by the fetch plan (restart skipped the record), not by a block's CRC on the way out.
    assert!(err.to_string().contains("promised"), "{err}");
}

/// Shuffle `app`/1 (2 maps, 1 partition) with map 0 committed (one 200 KiB chunk) and map 1's attempt 2
/// written behind, indexed and never committed; the server is stopped. Returns the server, the shuffle
/// dir, its only segment and where map 0's chunk ends.
async fn committed_map0_and_uncommitted_map1(
    app: &str,
) -> (TestServer, std::path::PathBuf, std::path::PathBuf, usize) {
    let mut server = TestServer::start(1, "write_behind_bytes_min = \"64KiB\"");
    let client = server.client().await;
    client.register_shuffle(app, 1, 2, 1).await.unwrap();
    let mut map0 = client.pusher(app, 1, 0, 1);
    map0.push(0, Bytes::from(vec![7u8; 200 << 10]))
        .await
        .unwrap();
    assert!(map0.commit().await.unwrap().0.committed);
    let dir = server.shuffle_dir(app, 1).unwrap();
    let segment = dir.join("seg-000000.data");
    let committed_end = std::fs::metadata(&segment).unwrap().len() as usize;
    // Map 1 pushes a buffer past the write-behind threshold: written, indexed, never committed.
    let mut map1 = client.pusher(app, 1, 1, 2);
    map1.push(0, Bytes::from(vec![9u8; 200 << 10]))
        .await
        .unwrap();
    map1.finish().await.unwrap();
    wait_until_longer(
        &segment,
        committed_end as u64,
        "map 1's buffer was not written behind",
    )
    .await;
    server.sigterm_and_wait();
    (server, dir, segment, committed_end)
}

/// Writes `contents` as `segment` of a stopped server whose shuffle `app`/1 has map 0 committed (200 KiB)
/// and attempt `lost_attempt` of map 1 indexed but uncommitted, as a crash that lost map 1's chunk would
/// leave it; then `inspect` must call it TORN (`why` and the segment's name in the line) and not damage,
/// and a restarted server must serve map 0 alone and refuse map 1's attempt. Stops the server.
async fn map1_lost_map0_served(
    server: &mut TestServer,
    app: &str,
    segment: &std::path::Path,
    contents: &[u8],
    why: &str,
    lost_attempt: u64,
) {
    std::fs::write(segment, contents).unwrap();
    let dir = segment.parent().unwrap();
    let segment_name = segment.file_name().unwrap().to_str().unwrap();
    let (ok, out) = inspect_dir(dir);
    assert!(
        ok,
        "an uncommitted chunk lost in a crash is not damage: {out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("TORN")
            && l.contains(segment_name)
            && l.contains(why)
            && l.contains("only uncommitted blocks")),
        "{out}"
    );
    server.restart();
    let client = server.client().await;
    let (blocks, _) = client.fetch(fetch_req(app, 1, 0..1, 0..1)).await.unwrap();
    assert_eq!(
        blocks.iter().map(|b| b.data.len()).sum::<usize>(),
        200 << 10
    );
    assert!(blocks.iter().all(|b| b.map_index == 0));
    // Its seqs are in index.log: the attempt may not start over at seq 0.
    assert_attempt_is_dead(&client, app, 1, lost_attempt).await;
    server.sigterm_and_wait();
}

/// Map `map` attempt `attempt` lost blocks that `index.log` names: it may not push again.
async fn assert_attempt_is_dead(
    client: &croupier_client::Client,
    app: &str,
    map: u32,
    attempt: u64,
) {
    let mut again = client.pusher(app, 1, map, attempt);
    again.push(0, Bytes::from_static(b"x")).await.unwrap();
    let err = again.finish().await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("new attempt id"), "{err}");
}

/// `inspect` finds damage: a commit needs blocks of `seg-000000.data` that are not on disk.
fn assert_committed_blocks_lost(dir: &std::path::Path) {
    let (ok, out) = inspect_dir(dir);
    assert!(!ok, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("DAMAGE")
            && l.contains("seg-000000.data")
            && l.contains("committed blocks are lost")),
        "{out}"
    );
}

/// The finished segment before the last one may still have been syncing on the disk's sync thread at a
/// crash, so restart checks chunk headers in a shuffle's last **two** segments: a chunk of the
/// second-to-last segment that never replaced stale bytes is skipped at restart (not served as damage),
/// and `inspect` agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_chunk_in_the_segment_before_the_last_is_skipped_at_restart() {
    let app = "stale2";
    let mut server = TestServer::start(
        1,
        "write_behind_bytes_min = \"64KiB\"\nsegment_bytes_max = \"128KiB\"",
    );
    let client = server.client().await;
    client.register_shuffle(app, 1, 3, 1).await.unwrap();
    let dir = server.shuffle_dir(app, 1).unwrap();
    // Map 0 commits into seg 0; maps 1 and 2 are written behind, one segment each, never committed.
    let mut map0 = client.pusher(app, 1, 0, 1);
    map0.push(0, Bytes::from(vec![7u8; 200 << 10]))
        .await
        .unwrap();
    assert!(map0.commit().await.unwrap().0.committed);
    for map in 1..3u32 {
        let mut pusher = client.pusher(app, 1, map, 10 + u64::from(map));
        pusher
            .push(0, Bytes::from(vec![map as u8; 200 << 10]))
            .await
            .unwrap();
        pusher.finish().await.unwrap();
        let segment = dir.join(format!("seg-{map:06}.data"));
        wait_until_longer(&segment, (200 << 10) - 1, "a buffer was not written behind").await;
    }
    server.sigterm_and_wait();

    // As if map 1's chunk never reached the disk of a recycled seg 1, which was still syncing.
    let seg1 = dir.join("seg-000001.data");
    let len = std::fs::metadata(&seg1).unwrap().len() as usize;
    map1_lost_map0_served(
        &mut server,
        app,
        &seg1,
        &vec![0x5Au8; len],
        "not on disk",
        11,
    )
    .await;
}

/// Waits (at most 2 s) until `file` exists and is longer than `len` bytes; fails with `what` otherwise.
async fn wait_until_longer(file: &std::path::Path, len: u64, what: &str) {
    for _ in 0..100 {
        if std::fs::metadata(file).is_ok_and(|m| m.len() > len) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{what}: {} is not longer than {len} bytes", file.display());
}
