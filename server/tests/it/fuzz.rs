//! Stable fuzz harness (no nightly toolchain here, so no cargo-fuzz): every decoder of untrusted bytes
//! is run over the seed corpus in `server/fuzz-corpus/` and over deterministic mutations of it (bit
//! flips, truncations, splices, random bytes); protobuf requests that still decode are sent to a real
//! server, which must answer each with a status and keep serving. Bounded: a few thousand inputs.
//!
//! `CROUPIER_WRITE_CORPUS=1` rewrites the seed corpus from valid records.

use crate::common::*;
use croupier_client::proto as pb;
use croupier_server::format::{
    self, ChunkHeader, CommitRecord, IndexBlock, IndexRecord, PartitionCount, ShuffleMeta,
};
use prost::Message;
use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus")
}

/// xorshift: deterministic mutations, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut v = seed.to_vec();
    match rng.below(5) {
        0 if !v.is_empty() => {
            let i = rng.below(v.len());
            v[i] ^= 1 << rng.below(8);
        }
        1 => v.truncate(rng.below(v.len() + 1)),
        2 => {
            let at = rng.below(v.len() + 1);
            let junk: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            v.splice(at..at, junk);
        }
        3 if !v.is_empty() => {
            // Overwrite a length-looking field with an extreme value.
            let i = rng.below(v.len());
            for (k, b) in [0xffu8, 0xff, 0xff, 0x7f].iter().enumerate() {
                if i + k < v.len() {
                    v[i + k] = *b;
                }
            }
        }
        _ => v = (0..rng.below(256)).map(|_| rng.next() as u8).collect(),
    }
    v
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let index = IndexRecord {
        partition_id: 3,
        segment_id: 0,
        chunk_offset: 0,
        payload_len: 30,
        blocks: vec![
            IndexBlock {
                map_index: 0,
                attempt_id: 7,
                seq: 0,
                len: 10,
                crc32: 1,
            },
            IndexBlock {
                map_index: 1,
                attempt_id: 8,
                seq: 0,
                len: 20,
                crc32: 2,
            },
        ],
    };
    let commit = CommitRecord {
        map_index: 1,
        attempt_id: 8,
        committed_at_ms: 1,
        partitions: vec![PartitionCount {
            partition_id: 3,
            blocks: 1,
            bytes: 20,
        }],
        peers: vec![format::PeerPromise {
            server: "10.0.0.2:19870".into(),
            partitions: vec![PartitionCount {
                partition_id: 4,
                blocks: 2,
                bytes: 30,
            }],
        }],
    };
    let meta = ShuffleMeta {
        format_version: format::FORMAT_VERSION,
        shuffle_id: 1,
        num_maps: 2,
        num_partitions: 4,
        created_at_ms: 1,
        app_id: "app".into(),
    };
    let mut out = Vec::new();
    let mut framed = |name: &str, magic: u32, body: Vec<u8>| {
        let mut f = Vec::new();
        format::frame_record(magic, &body, &mut f);
        format::frame_record(magic, &body, &mut f);
        out.push((format!("{name}.framed"), f));
        out.push((format!("{name}.body"), body));
    };
    let mut b = Vec::new();
    index.encode_body(&mut b);
    framed("index", format::MAGIC_INDEX, b);
    let mut b = Vec::new();
    commit.encode_body(&mut b);
    framed("commit", format::MAGIC_COMMIT, b);
    let mut b = Vec::new();
    meta.encode_body(&mut b);
    framed("meta", format::MAGIC_META, b);
    out.push((
        "chunk.header".into(),
        ChunkHeader {
            partition_id: 3,
            block_count: 2,
            payload_len: 30,
            payload_crc32: 9,
        }
        .encode()
        .to_vec(),
    ));
    let data = bytes::Bytes::from_static(b"payload");
    let push = pb::PushBatch {
        app_id: "fuzz".into(),
        shuffle_id: 1,
        map_index: 0,
        attempt_id: 5,
        batch_id: 0,
        blocks: vec![pb::Block {
            partition_id: 1,
            seq: 0,
            crc32: crc32fast::hash(&data),
            data,
        }],
    };
    out.push(("push.pb".into(), push.encode_to_vec()));
    let fetch = pb::FetchRequest {
        app_id: "fuzz".into(),
        shuffle_id: 1,
        partition_start: 0,
        partition_end: 2,
        map_start: 0,
        map_end: 2,
        ..Default::default()
    };
    out.push(("fetch.pb".into(), fetch.encode_to_vec()));
    let commit = pb::CommitMapAttemptRequest {
        app_id: "fuzz".into(),
        shuffle_id: 1,
        map_index: 0,
        attempt_id: 5,
        partitions: vec![pb::PartitionCount {
            partition_id: 1,
            blocks: 1,
            bytes: 7,
        }],
        peers: vec![pb::PeerPromise {
            server: "127.0.0.1:19872".into(),
            partitions: vec![pb::PartitionCount {
                partition_id: 2,
                blocks: 1,
                bytes: 9,
            }],
        }],
        blocks: vec![pb::Block {
            partition_id: 1,
            seq: 0,
            crc32: crc32fast::hash(b"fuzzing"),
            data: bytes::Bytes::from_static(b"fuzzing"),
        }],
    };
    out.push(("commit.pb".into(), commit.encode_to_vec()));
    let reg = pb::RegisterShuffleRequest {
        app_id: "fuzz".into(),
        shuffle_id: 1,
        num_maps: 2,
        num_partitions: 2,
    };
    out.push(("register.pb".into(), reg.encode_to_vec()));
    out
}

fn load_corpus() -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir();
    if std::env::var_os("CROUPIER_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("server/fuzz-corpus is part of the repository")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 11, "corpus too small: {}", files.len());
    files
}

/// Runs every on-disk decoder over one input; returns how many accepted it.
fn decode_all(input: &[u8]) -> usize {
    let mut ok = 0;
    for magic in [
        format::MAGIC_INDEX,
        format::MAGIC_COMMIT,
        format::MAGIC_META,
    ] {
        let mut offset = 0;
        // Walk the input as a log, as recovery does; every step must make progress or stop.
        while offset < input.len() {
            match format::read_record(input, offset, magic) {
                format::RecordRead::Valid { body, end } => {
                    assert!(end > offset);
                    ok += usize::from(IndexRecord::decode_body(body).is_ok());
                    ok += usize::from(CommitRecord::decode_body(body).is_ok());
                    ok += usize::from(ShuffleMeta::decode_body(body).is_ok());
                    offset = end;
                }
                format::RecordRead::Corrupted {
                    skip_to: Some(next),
                    ..
                } => {
                    assert!(next > offset);
                    offset = next;
                }
                _ => break,
            }
        }
    }
    ok += usize::from(IndexRecord::decode_body(input).is_ok());
    ok += usize::from(CommitRecord::decode_body(input).is_ok());
    ok += usize::from(ShuffleMeta::decode_body(input).is_ok());
    ok += usize::from(ChunkHeader::decode(input).is_ok());
    ok
}

#[test]
fn on_disk_decoders_survive_the_corpus_and_its_mutations() {
    let corpus = load_corpus();
    let mut rng = Rng(0x5eed_c0ff_ee00_0001);
    let mut accepted = 0;
    for (_, seed) in &corpus {
        accepted += decode_all(seed);
        for _ in 0..400 {
            decode_all(&mutate(seed, &mut rng));
        }
    }
    assert!(accepted >= 8, "the valid seeds must decode ({accepted})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_a_status_and_the_server_keeps_serving() {
    let server = TestServer::start(
        1,
        "message_bytes_max = \"1MiB\"\nmemory_budget_bytes = \"64MiB\"",
    );
    let mut bystander = load_spec(&server.grpc, "bystander", 1, 2, 3, 256 << 10, 16 << 10);
    bystander.options.batch_bytes_max = 256 << 10;
    croupier_client::loadgen::load(bystander.clone())
        .await
        .unwrap();
    let client = server.client().await;
    client.register_shuffle("fuzz", 1, 2, 2).await.unwrap();
    let mut raw = client.raw();
    let corpus = load_corpus();
    let mut rng = Rng(0x00c0_ffee_5eed_0002);
    let mut sent = 0;
    for (name, seed) in corpus.iter().filter(|(n, _)| n.ends_with(".pb")) {
        for _ in 0..400 {
            let input = mutate(seed, &mut rng);
            let status = match name.as_str() {
                "push.pb" => match pb::PushBatch::decode(&input[..]) {
                    Ok(m) => match raw.push(tokio_stream::iter(vec![m])).await {
                        Ok(r) => r.into_inner().message().await.err(),
                        Err(s) => Some(s),
                    },
                    Err(_) => continue,
                },
                "fetch.pb" => match pb::FetchRequest::decode(&input[..]) {
                    Ok(m) => match raw.fetch(m).await {
                        Ok(r) => {
                            let mut s = r.into_inner();
                            let mut last = None;
                            loop {
                                match s.message().await {
                                    Ok(Some(_)) => continue,
                                    Ok(None) => break,
                                    Err(e) => {
                                        last = Some(e);
                                        break;
                                    }
                                }
                            }
                            last
                        }
                        Err(s) => Some(s),
                    },
                    Err(_) => continue,
                },
                "commit.pb" => match pb::CommitMapAttemptRequest::decode(&input[..]) {
                    Ok(m) => raw.commit_map_attempt(m).await.err(),
                    Err(_) => continue,
                },
                "register.pb" => match pb::RegisterShuffleRequest::decode(&input[..]) {
                    // Keep registrations inside the fuzz app so the bystander is never addressed.
                    Ok(mut m) if m.app_id.starts_with("fuzz") || m.app_id.is_empty() => {
                        m.num_maps = m.num_maps.min(64);
                        m.num_partitions = m.num_partitions.min(64);
                        raw.register_shuffle(m).await.err()
                    }
                    _ => continue,
                },
                _ => continue,
            };
            if let Some(s) = status {
                assert!(!s.message().is_empty(), "a refusal must say why: {s:?}");
                assert_ne!(s.code(), tonic::Code::Internal, "{s:?}");
            }
            sent += 1;
        }
    }
    assert!(sent >= 200, "only {sent} requests decoded");
    assert_eq!(server.admin_get("/healthz").0, 200);
    assert_verified(&bystander).await;
}
