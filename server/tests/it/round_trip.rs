use crate::common::*;
use bytes::Bytes;
use croupier_client::datagen::{partition_bytes, ByteStream};
use std::collections::HashMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_partition_reads_back_byte_for_byte_at_block_sizes_from_1kib_to_4mib() {
    let server = TestServer::start(
        2,
        "segment_bytes_max = \"16MiB\"\nchunk_bytes_target = \"1MiB\"",
    );
    for (i, (block, maps, partitions, per_map)) in [
        (1u64 << 10, 8u32, 32u32, 2u64 << 20),
        (64 << 10, 12, 50, 8 << 20),
        (1 << 20, 6, 17, 12 << 20),
        (4 << 20, 4, 3, 20 << 20),
    ]
    .into_iter()
    .enumerate()
    {
        let spec = load_spec(
            &server.grpc,
            "roundtrip",
            i as u32,
            maps,
            partitions,
            per_map,
            block,
        );
        load_and_verify(spec).await;
    }
    // Several shuffles spread over both disks, and segments were rolled at 16 MiB.
    let segs: usize = server
        .dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d.join("apps/roundtrip")).ok())
        .flat_map(|rd| rd.flatten())
        .map(|shuffle| {
            std::fs::read_dir(shuffle.path())
                .unwrap()
                .flatten()
                .filter(|f| f.file_name().to_string_lossy().starts_with("seg-"))
                .count()
        })
        .sum();
    assert!(segs > 4, "expected rolled segments, found {segs}");
}

/// Regression: one-byte blocks made chunk index records exceed their size limit (writer panic) and
/// fetch messages exceed the encoding limit (per-block overhead was not counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_blocks_round_trip_across_chunk_and_message_limits() {
    let server = TestServer::start(
        1,
        "fetch_chunk_bytes_max = \"64KiB\"\nchunk_bytes_target = \"64MiB\"",
    );
    let mut spec = load_spec(&server.grpc, "tiny", 1, 2, 1, 150_000, 1);
    spec.options.batch_bytes_max = 256 << 10;
    load_and_verify(spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_and_map_ranges_return_exactly_the_blocks_they_name() {
    let server = TestServer::start(1, "chunk_bytes_target = \"64KiB\"");
    let spec = load_spec(&server.grpc, "ranges", 3, 9, 20, 1 << 20, 7_000);
    croupier_client::loadgen::load(spec.clone())
        .await
        .expect("load");
    let client = server.client().await;
    for (parts, maps) in [
        (0..20, 0..9),
        (5..6, 0..9),
        (3..11, 2..5),
        (19..20, 8..9),
        (0..1, 0..1),
    ] {
        let (blocks, summary) = client
            .fetch(fetch_req("ranges", 3, parts.clone(), maps.clone()))
            .await
            .expect("fetch");
        // Expected: partition, then map, then the partition's byte stream cut into 7000-byte blocks.
        let mut expected: Vec<(u32, u32, Vec<u8>)> = Vec::new();
        for p in parts.clone() {
            for m in maps.clone() {
                let n = partition_bytes(spec.bytes_per_map, spec.partitions, p) as usize;
                let mut data = vec![0u8; n];
                ByteStream::new(spec.seed, m, p).fill(&mut data);
                expected.push((p, m, data));
            }
        }
        let mut got: Vec<(u32, u32, Vec<u8>)> = Vec::new();
        for b in &blocks {
            assert!(
                parts.contains(&b.partition_id) && maps.contains(&b.map_index),
                "block outside the range: {} {}",
                b.partition_id,
                b.map_index
            );
            assert_eq!(b.attempt_id, spec.attempt_base + u64::from(b.map_index));
            match got.last_mut() {
                Some((p, m, d)) if *p == b.partition_id && *m == b.map_index => {
                    d.extend_from_slice(&b.data)
                }
                _ => got.push((b.partition_id, b.map_index, b.data.to_vec())),
            }
        }
        assert_eq!(got.len(), expected.len(), "ranges {parts:?} x {maps:?}");
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!((g.0, g.1), (e.0, e.1));
            assert!(g.2 == e.2, "data of partition {} map {} differs", g.0, g.1);
        }
        let total: u64 = expected.iter().map(|e| e.2.len() as u64).sum();
        assert_eq!(summary.total_bytes, total);
        assert_eq!(summary.maps.len(), maps.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_partition_fetched_concurrently_gives_identical_results() {
    let server = TestServer::start(1, "");
    let spec = load_spec(&server.grpc, "concurrent", 1, 8, 4, 4 << 20, 32 << 10);
    croupier_client::loadgen::load(spec.clone())
        .await
        .expect("load");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let (blocks, _) = client
                .fetch(fetch_req("concurrent", 1, 2..3, 0..8))
                .await
                .expect("fetch");
            let mut all = Vec::new();
            for b in blocks {
                all.extend_from_slice(&b.data);
            }
            all
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results[0].len() as u64, partition_bytes(4 << 20, 4, 2) * 8);
    assert!(results.iter().all(|r| r == &results[0]));
    // Reads never consume: a later fetch still sees everything.
    assert_verified(&spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_attempt_to_commit_is_served_and_a_resent_block_is_stored_once() {
    let server = TestServer::start(1, "");
    let client = server.client().await;
    client.register_shuffle("attempts", 0, 2, 3).await.unwrap();

    // Two attempts of map 0 push different data; attempt 8 commits first.
    let mut first = client.pusher("attempts", 0, 0, 7);
    let mut second = client.pusher("attempts", 0, 0, 8);
    for p in 0..3 {
        first.push(p, Bytes::from(vec![b'a'; 1000])).await.unwrap();
        second.push(p, Bytes::from(vec![b'b'; 1500])).await.unwrap();
    }
    first.finish().await.unwrap();
    let (won, _) = second.commit().await.unwrap();
    assert!(won.committed);
    let counts = first.partition_counts();
    let lost = client.commit("attempts", 0, 0, 7, counts).await.unwrap();
    assert!(!lost.committed);
    assert_eq!(lost.committed_attempt_id, 8);
    // A push of the losing attempt is told the winner and discarded.
    let mut late = client.pusher("attempts", 0, 0, 7);
    late.push(0, Bytes::from_static(b"late")).await.unwrap();
    late.finish().await.unwrap();
    assert_eq!(late.committed_by, Some(8));

    // Map 1: the same batch sent twice (a client retry after a lost ack) is stored once.
    let batch = croupier_client::proto::PushBatch {
        app_id: "attempts".into(),
        shuffle_id: 0,
        map_index: 1,
        attempt_id: 9,
        batch_id: 0,
        blocks: (0..3)
            .map(|p| {
                let data = Bytes::from(vec![b'0' + p as u8; 100 + p as usize]);
                croupier_client::proto::Block {
                    partition_id: p,
                    seq: 0,
                    crc32: crc32fast::hash(&data),
                    data,
                }
            })
            .collect(),
    };
    let mut resent = batch.clone();
    resent.batch_id = 1;
    let acks = push_raw(&client, vec![batch, resent]).await;
    assert_eq!(acks[0].duplicate_blocks, 0);
    assert_eq!(acks[1].duplicate_blocks, 3);
    let counts = (0..3)
        .map(|p| croupier_client::proto::PartitionCount {
            partition_id: p,
            blocks: 1,
            bytes: 100 + u64::from(p),
        })
        .collect();
    assert!(
        client
            .commit("attempts", 0, 1, 9, counts)
            .await
            .unwrap()
            .committed
    );

    let (blocks, _) = client
        .fetch(fetch_req("attempts", 0, 0..3, 0..2))
        .await
        .unwrap();
    let mut per_map: HashMap<(u32, u32), Vec<u8>> = HashMap::new();
    for b in &blocks {
        per_map
            .entry((b.partition_id, b.map_index))
            .or_default()
            .extend_from_slice(&b.data);
    }
    for p in 0..3u32 {
        assert_eq!(
            per_map[&(p, 0)],
            vec![b'b'; 1500],
            "map 0 must be served from the winning attempt"
        );
        assert_eq!(
            per_map[&(p, 1)],
            vec![b'0' + p as u8; 100 + p as usize],
            "the resent block appears once"
        );
    }
    // Asking for the losing attempt explicitly is refused.
    let mut req = fetch_req("attempts", 0, 0..3, 0..1);
    req.accepted_attempts = vec![croupier_client::proto::MapAttempt {
        map_index: 0,
        attempt_id: 7,
    }];
    let err = client.fetch(req).await.unwrap_err();
    assert!(
        err.to_string().contains("not the committed attempt"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_map_output_commits_with_its_blocks_in_one_call() {
    use croupier_client::{new_block, proto as pb};
    let mut server = TestServer::start(1, "");
    let client = server.client().await;
    client.register_shuffle("inline", 0, 3, 4).await.unwrap();
    let data = |tag: u8, len: usize| Bytes::from(vec![tag; len]);
    let pushed_bytes = |server: &TestServer| {
        metric(&server.admin_get("/metrics").1, "croupier_push_bytes_total") as u64
    };

    // Map 0, attempt 10: two blocks of partition 0 and one of partition 2, stored and committed in
    // one CommitMapAttempt.
    let blocks = vec![
        new_block(0, 0, data(b'x', 700)),
        new_block(2, 0, data(b'y', 300)),
        new_block(0, 1, data(b'z', 5)),
    ];
    let won = client
        .commit_with_blocks("inline", 0, 0, 10, blocks.clone())
        .await
        .unwrap();
    assert!(won.committed);
    assert_eq!(won.committed_attempt_id, 10);
    assert_eq!(pushed_bytes(&server), 1005);
    // A retry of the same call (a lost answer) stores nothing twice and answers the same.
    let again = client
        .commit_with_blocks("inline", 0, 0, 10, blocks)
        .await
        .unwrap();
    assert!(again.committed);
    // A speculative attempt of the same map loses, and its inline blocks are never served.
    let lost = client
        .commit_with_blocks("inline", 0, 0, 11, vec![new_block(0, 0, data(b'L', 64))])
        .await
        .unwrap();
    assert!(!lost.committed);
    assert_eq!(lost.committed_attempt_id, 10);

    // Map 1 the usual way, so that the partitions mix both kinds of commit.
    let mut pusher = client.pusher("inline", 0, 1, 20);
    pusher.push(2, data(b'p', 4000)).await.unwrap();
    assert!(pusher.commit().await.unwrap().0.committed);

    let read = |blocks: &[pb::FetchedBlock]| -> Vec<(u32, u32, u64, Vec<u8>)> {
        blocks
            .iter()
            .map(|b| (b.partition_id, b.map_index, b.attempt_id, b.data.to_vec()))
            .collect()
    };
    let (fetched, summary) = client
        .fetch(fetch_req("inline", 0, 0..4, 0..2))
        .await
        .unwrap();
    assert_eq!(
        read(&fetched),
        vec![
            (0, 0, 10, vec![b'x'; 700]),
            (0, 0, 10, vec![b'z'; 5]),
            (2, 0, 10, vec![b'y'; 300]),
            (2, 1, 20, vec![b'p'; 4000]),
        ]
    );
    assert_eq!(summary.total_bytes, 5005);

    // Bad inline blocks are refused with the field named, and nothing of that call is stored or
    // committed: the map commits afterwards with good blocks.
    let mut bad = new_block(1, 0, data(b'c', 100));
    bad.crc32 ^= 1;
    let err = client
        .commit_with_blocks(
            "inline",
            0,
            2,
            30,
            vec![new_block(3, 0, data(b'g', 10)), bad],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("blocks.crc32"), "{err}");
    let err = client
        .commit_with_blocks("inline", 0, 2, 30, vec![new_block(1, 1, data(b'q', 10))])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("seq"), "out of sequence: {err}");
    let ok = client
        .commit_with_blocks("inline", 0, 2, 31, vec![new_block(1, 0, data(b'k', 10))])
        .await
        .unwrap();
    assert!(ok.committed && ok.committed_attempt_id == 31);
    // Stored inline: attempts 10 and 31 (not the retry, not the loser, not the refused calls).
    let metrics = server.admin_get("/metrics").1;
    assert_eq!(metric(&metrics, "croupier_inline_commits_total"), 2.0);
    assert_eq!(metric(&metrics, "croupier_commits_total"), 3.0);

    // Inline commits are as durable as pushed ones: after kill -9 the same bytes are served.
    server.restart();
    let client = server.client().await;
    let (after, _) = client
        .fetch(fetch_req("inline", 0, 0..4, 0..3))
        .await
        .unwrap();
    let mut expected = read(&fetched);
    expected.insert(2, (1, 2, 31, vec![b'k'; 10]));
    assert_eq!(read(&after), expected);
}

/// Sends batches on one push stream and returns their acks.
pub async fn push_raw(
    client: &croupier_client::Client,
    batches: Vec<croupier_client::proto::PushBatch>,
) -> Vec<croupier_client::proto::PushAck> {
    let n = batches.len();
    let mut acks = client
        .raw()
        .push(tokio_stream::iter(batches))
        .await
        .expect("push")
        .into_inner();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(acks.message().await.expect("ack").expect("ack present"));
    }
    out
}

/// Write-behind: with an idle writer, a partition buffer of `write_behind_bytes_min` bytes goes to
/// disk right away (before the commit); with write-behind off it waits for the commit. Either way the
/// uncommitted blocks stay invisible and the committed map reads back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_behind_writes_buffers_before_the_commit_and_off_keeps_them_in_memory() {
    const PARTITIONS: u32 = 8;
    const BLOCK_BYTES: usize = 600 << 10;
    for (write_behind, toml) in [
        (true, "write_behind_bytes_min = \"512KiB\""),
        (false, "write_behind_bytes_min = 0"),
    ] {
        let server = TestServer::start(1, toml);
        let client = server.client().await;
        client
            .register_shuffle("wb", 1, 1, PARTITIONS)
            .await
            .expect("register");
        let mut pusher = client.pusher("wb", 1, 0, 7);
        let mut sent: Vec<Bytes> = Vec::new();
        for p in 0..PARTITIONS {
            let mut data = vec![0u8; BLOCK_BYTES];
            ByteStream::new(11, 0, p).fill(&mut data);
            let data = Bytes::from(data);
            sent.push(data.clone());
            pusher.push(p, data).await.expect("push");
        }
        pusher.finish().await.expect("pushes acknowledged");
        let total = BLOCK_BYTES as u64 * u64::from(PARTITIONS);
        let shuffle_state = || {
            let s = server.status_json();
            let sh = &s["shuffles"][0];
            (
                sh["buffered_bytes"].as_u64().expect("buffered_bytes"),
                sh["disk_bytes"].as_u64().expect("disk_bytes"),
            )
        };
        if write_behind {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let (buffered, on_disk) = shuffle_state();
                if buffered == 0 && on_disk >= total {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "write-behind did not write the buffers: {buffered} bytes buffered, {on_disk} on disk"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        } else {
            // Nothing but the commit (or memory pressure, far away here) takes these buffers.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            assert_eq!(shuffle_state(), (total, 0), "write-behind off wrote early");
        }
        // Written or not, an uncommitted map is not fetchable.
        let early = client
            .fetch(fetch_req("wb", 1, 0..PARTITIONS, 0..1))
            .await
            .expect_err("a fetch before the commit must fail");
        assert_eq!(
            early.code(),
            Some(tonic::Code::FailedPrecondition),
            "{early}"
        );
        assert!(
            early.to_string().contains("no committed attempt"),
            "{early}"
        );
        pusher.commit().await.expect("commit");
        let (blocks, summary) = client
            .fetch(fetch_req("wb", 1, 0..PARTITIONS, 0..1))
            .await
            .expect("fetch");
        assert_eq!(blocks.len(), PARTITIONS as usize);
        for (b, want) in blocks.iter().zip(&sent) {
            assert_eq!(b.attempt_id, 7);
            assert!(b.data == *want, "partition {} differs", b.partition_id);
        }
        assert_eq!(summary.total_bytes, total);
    }
}

/// `io = "direct"`: segments are written through O_DIRECT (every segment length stays a multiple of the
/// alignment), every byte reads back at block sizes below and above the 4 MiB staging buffer, a shuffle
/// begun with buffered I/O (whose appends end aligned too) continues after a restart into direct mode
/// (a segment left unaligned is rolled),
/// `croupier inspect` finds no damage, and everything survives kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_io_round_trips_continues_a_buffered_shuffle_and_survives_kill_9() {
    use croupier_client::loadgen;
    let mut server = TestServer::start(1, "segment_bytes_max = \"8MiB\"");
    // Shuffle 9: maps 0 and 1 pushed with buffered I/O, maps 2 and 3 after switching to direct I/O.
    let mut mixed = load_spec(&server.grpc, "dio", 9, 4, 8, 2 << 20, 10_000);
    mixed.map_end = 2;
    loadgen::load(mixed.clone()).await.expect("buffered half");
    let shuffle9 = server.shuffle_dir("dio", 9).expect("shuffle 9 dir");
    let seg_lens = |dir: &std::path::Path| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("seg-"))
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let buffered_segments = seg_lens(&shuffle9);
    // Buffered appends end on a 4 KiB boundary too (zero padding, FORMAT.md section 6.1).
    for (name, len) in &buffered_segments {
        assert_eq!(len % 4096, 0, "buffered segment {name} has length {len}");
    }
    // A segment can still end unaligned (written by an earlier version, or stray bytes of a failed
    // append that could not be cut back): stray bytes after its last chunk make one, which direct
    // mode must roll past.
    server.kill9();
    let (last, _) = buffered_segments.last().expect("a buffered segment");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(shuffle9.join(last))
        .unwrap();
    std::io::Write::write_all(&mut f, &[0xab; 100]).unwrap();
    drop(f);
    let mut cfg = std::fs::read_to_string(&server.config_path).unwrap();
    cfg.push_str("io = \"direct\"\n");
    std::fs::write(&server.config_path, cfg).unwrap();
    server.restart();
    mixed.server = server.grpc.clone();
    mixed.map_start = 2;
    mixed.map_end = 4;
    loadgen::load(mixed.clone()).await.expect("direct half");
    mixed.map_start = 0;
    mixed.map_end = 0;
    assert_verified(&mixed).await;
    let after = seg_lens(&shuffle9);
    assert!(
        after.len() > buffered_segments.len(),
        "no segment was rolled: {after:?}"
    );
    for (name, len) in &after[buffered_segments.len()..] {
        assert_eq!(len % 4096, 0, "direct segment {name} has length {len}");
    }

    // Block sizes from 1 KiB to 5 MiB (a chunk larger than the staging buffer).
    let mut specs = Vec::new();
    for (i, (maps, partitions, per_map, block)) in [
        (6u32, 12u32, 12u64 << 20, 1u64 << 10),
        (6, 12, 12 << 20, 100 << 10),
        (4, 2, 12 << 20, 5 << 20),
    ]
    .into_iter()
    .enumerate()
    {
        let spec = load_spec(
            &server.grpc,
            "dio",
            i as u32,
            maps,
            partitions,
            per_map,
            block,
        );
        load_and_verify(spec.clone()).await;
        let dir = server.shuffle_dir("dio", i as u32).expect("shuffle dir");
        for (name, len) in seg_lens(&dir) {
            assert_eq!(len % 4096, 0, "direct segment {name} has length {len}");
        }
        specs.push(spec);
    }
    for shuffle in [0, 1, 2, 9] {
        let dir = server.shuffle_dir("dio", shuffle).expect("shuffle dir");
        let (clean, report) = inspect_dir(&dir);
        assert!(clean, "inspect found damage in shuffle {shuffle}: {report}");
    }

    server.restart();
    specs.push(mixed);
    for spec in &mut specs {
        spec.server = server.grpc.clone();
        assert_verified(spec).await;
    }
}
