//! Model-based property test: random sequences of push (with client retries) / commit (first wins,
//! speculative attempts) / fetch / kill -9 and restart / unregister against the real server, checked
//! against a plain in-memory model of what must be served.

use crate::common::*;
use bytes::Bytes;
use croupier_client::proto as pb;
use proptest::prelude::*;
use std::collections::BTreeMap;

const MAPS: u32 = 3;
const PARTITIONS: u32 = 3;

#[derive(Debug, Clone)]
enum Op {
    /// A map attempt pushes blocks (partition, length); optionally the batch is sent twice (a client
    /// retry after a lost ack) and optionally the attempt commits.
    Push {
        map: u32,
        blocks: Vec<(u32, u16)>,
        resend: bool,
        commit: bool,
    },
    Fetch,
    Restart,
    Unregister,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..MAPS, proptest::collection::vec((0..PARTITIONS, 1u16..3000), 0..8), any::<bool>(), prop::bool::weighted(0.8))
            .prop_map(|(map, blocks, resend, commit)| Op::Push { map, blocks, resend, commit }),
        3 => Just(Op::Fetch),
        1 => Just(Op::Restart),
        1 => Just(Op::Unregister),
    ]
}

fn block_data(attempt: u64, partition: u32, seq: u32, len: u16) -> Bytes {
    let seed = attempt.wrapping_mul(31) ^ u64::from(partition) << 20 ^ u64::from(seq) << 40;
    Bytes::from(
        (0..len)
            .map(|i| (seed.wrapping_add(u64::from(i)).wrapping_mul(0x9E37_79B9) >> 24) as u8)
            .collect::<Vec<u8>>(),
    )
}

/// map -> (attempt, partition -> concatenated bytes)
type Model = BTreeMap<u32, (u64, BTreeMap<u32, Vec<u8>>)>;

async fn run(ops: Vec<Op>) {
    let mut server = TestServer::start(
        1,
        "chunk_bytes_target = \"4KiB\"\nsegment_bytes_max = \"64KiB\"",
    );
    let mut client = server.client().await;
    client
        .register_shuffle("model", 0, MAPS, PARTITIONS)
        .await
        .unwrap();
    let mut model: Model = BTreeMap::new();
    let mut next_attempt = 1u64;
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Push {
                map,
                blocks,
                resend,
                commit,
            } => {
                let attempt = next_attempt;
                next_attempt += 1;
                let mut seqs: BTreeMap<u32, u32> = BTreeMap::new();
                let mut data: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
                let mut pb_blocks = Vec::new();
                for (p, len) in blocks {
                    let seq = seqs.entry(p).or_default();
                    let d = block_data(attempt, p, *seq, len);
                    data.entry(p).or_default().extend_from_slice(&d);
                    pb_blocks.push(pb::Block {
                        partition_id: p,
                        seq: *seq,
                        crc32: crc32fast::hash(&d),
                        data: d,
                    });
                    *seq += 1;
                }
                let batch = pb::PushBatch {
                    app_id: "model".into(),
                    shuffle_id: 0,
                    map_index: map,
                    attempt_id: attempt,
                    batch_id: 0,
                    blocks: pb_blocks,
                };
                let mut batches = vec![batch.clone()];
                if resend {
                    batches.push(pb::PushBatch {
                        batch_id: 1,
                        ..batch
                    });
                }
                let acks = crate::round_trip::push_raw(&client, batches).await;
                let winner = model.get(&map).map(|(a, _)| *a);
                for (i, ack) in acks.iter().enumerate() {
                    match winner {
                        Some(w) => {
                            assert_eq!(
                                ack.status,
                                pb::PushStatus::MapCommitted as i32,
                                "step {step}"
                            );
                            assert_eq!(ack.committed_attempt_id, w);
                        }
                        None => {
                            assert_eq!(ack.status, pb::PushStatus::Accepted as i32, "step {step}");
                            let expected_dups = if i == 1 {
                                seqs.values().sum::<u32>()
                            } else {
                                0
                            };
                            assert_eq!(
                                ack.duplicate_blocks, expected_dups,
                                "step {step}: a resent block must be stored once"
                            );
                        }
                    }
                }
                if commit {
                    let counts = seqs
                        .iter()
                        .map(|(&p, &n)| pb::PartitionCount {
                            partition_id: p,
                            blocks: n,
                            bytes: data[&p].len() as u64,
                        })
                        .collect();
                    let outcome = client
                        .commit("model", 0, map, attempt, counts)
                        .await
                        .unwrap();
                    match winner {
                        Some(w) => assert_eq!(
                            (outcome.committed, outcome.committed_attempt_id),
                            (false, w),
                            "step {step}"
                        ),
                        None => {
                            assert!(outcome.committed, "step {step}");
                            model.insert(map, (attempt, data));
                        }
                    }
                }
            }
            Op::Fetch => {
                if model.is_empty() {
                    continue;
                }
                let mut req = fetch_req("model", 0, 0..PARTITIONS, 0..MAPS);
                req.accepted_attempts = model
                    .iter()
                    .map(|(&m, (a, _))| pb::MapAttempt {
                        map_index: m,
                        attempt_id: *a,
                    })
                    .collect();
                let (blocks, _) = client
                    .fetch(req)
                    .await
                    .unwrap_or_else(|e| panic!("step {step}: {e}"));
                let mut got: BTreeMap<(u32, u32), Vec<u8>> = BTreeMap::new();
                for b in &blocks {
                    assert_eq!(
                        Some(b.attempt_id),
                        model.get(&b.map_index).map(|(a, _)| *a),
                        "step {step}: served a losing attempt"
                    );
                    got.entry((b.map_index, b.partition_id))
                        .or_default()
                        .extend_from_slice(&b.data);
                }
                let mut want: BTreeMap<(u32, u32), Vec<u8>> = BTreeMap::new();
                for (&m, (_, parts)) in &model {
                    for (&p, d) in parts {
                        want.insert((m, p), d.clone());
                    }
                }
                assert!(
                    got == want,
                    "step {step}: served data differs from the model"
                );
            }
            Op::Restart => {
                server.restart();
                client = server.client().await;
            }
            Op::Unregister => {
                assert!(client.unregister_shuffle("model", 0).await.unwrap());
                model.clear();
                client
                    .register_shuffle("model", 0, MAPS, PARTITIONS)
                    .await
                    .unwrap();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, max_shrink_iters: 20, ..ProptestConfig::default() })]
    #[test]
    fn the_server_serves_exactly_what_the_model_says(ops in proptest::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
