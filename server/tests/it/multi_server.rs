//! A map spread over two servers whose winning attempt dies between its commits.
//!
//! The client commits on the map's leader server first, with `peers` (what it pushed to the other
//! servers), then on the others. An attempt that dies after the leader commit leaves the other servers
//! without a commit for the map; a later attempt that loses on the leader gets the winner's promises back
//! (`winner_peers`) and commits the winner there on its behalf. These tests drive two real servers
//! through that sequence, across a restart of the leader, and with malformed peers.

use crate::common::*;
use bytes::Bytes;
use croupier_client::proto as pb;

const APP: &str = "half-commit";

fn counts(pusher: &croupier_client::MapPusher) -> Vec<pb::PartitionCount> {
    pusher.partition_counts()
}

/// Pushes `fill` bytes of `value` to partition `p` of map 0 through `client` as `attempt`; returns the
/// finished pusher.
async fn push_one(
    client: &croupier_client::Client,
    attempt: u64,
    p: u32,
    value: u8,
    fill: usize,
) -> croupier_client::MapPusher {
    let mut pusher = client.pusher(APP, 0, 0, attempt);
    pusher
        .push(p, Bytes::from(vec![value; fill]))
        .await
        .unwrap();
    pusher.push(p, Bytes::from(vec![value; 7])).await.unwrap();
    pusher.finish().await.unwrap();
    pusher
}

async fn fetch_accepting(
    client: &croupier_client::Client,
    partitions: std::ops::Range<u32>,
    attempt: u64,
) -> Result<Vec<u8>, String> {
    let mut req = fetch_req(APP, 0, partitions, 0..1);
    req.accepted_attempts = vec![pb::MapAttempt {
        map_index: 0,
        attempt_id: attempt,
    }];
    client
        .fetch(req)
        .await
        .map(|(blocks, _)| blocks.iter().flat_map(|b| b.data.to_vec()).collect())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_winner_that_died_between_its_commits_is_committed_on_its_peers_by_the_next_attempt() {
    // Partition 0 lives on the leader, partition 1 on the peer.
    let mut leader = TestServer::start(1, "");
    let peer = TestServer::start(1, "");
    let l = leader.client().await;
    let pc = peer.client().await;
    for c in [&l, &pc] {
        c.register_shuffle(APP, 0, 1, 2).await.unwrap();
    }

    // Attempt 5 pushes to both servers, commits on the leader with its peer promise, and dies.
    let a_leader = push_one(&l, 5, 0, b'a', 3000).await;
    let a_peer = push_one(&pc, 5, 1, b'A', 5000).await;
    let a_promise = pb::PeerPromise {
        server: peer.grpc.clone(),
        partitions: counts(&a_peer),
    };
    let won = l
        .commit_with_peers(APP, 0, 0, 5, counts(&a_leader), vec![a_promise.clone()])
        .await
        .unwrap();
    assert!(won.committed);
    assert_eq!(won.winner_peers, vec![a_promise.clone()]);
    // The half-commit: readers that accept attempt 5 (Spark's winner) cannot read the peer yet.
    let err = fetch_accepting(&pc, 1..2, 5).await.unwrap_err();
    assert!(err.contains("no committed attempt"), "{err}");

    // The leader restarts: the promise is durable, in the commit record.
    leader.restart();
    let l = leader.client().await;

    // Attempt 6 (the retry) pushes different bytes, loses on the leader and learns the promise.
    let b_leader = push_one(&l, 6, 0, b'b', 3000).await;
    let b_peer = push_one(&pc, 6, 1, b'B', 5000).await;
    let lost = l
        .commit_with_peers(
            APP,
            0,
            0,
            6,
            counts(&b_leader),
            vec![pb::PeerPromise {
                server: peer.grpc.clone(),
                partitions: counts(&b_peer),
            }],
        )
        .await
        .unwrap();
    assert!(!lost.committed);
    assert_eq!(lost.committed_attempt_id, 5);
    assert_eq!(lost.winner_peers, vec![a_promise.clone()]);

    // It commits attempt 5 on the peer with those counts (idempotent when repeated).
    for _ in 0..2 {
        let done = pc
            .commit(APP, 0, 0, 5, lost.winner_peers[0].partitions.clone())
            .await
            .unwrap();
        assert!(done.committed && done.committed_attempt_id == 5);
    }
    // Both servers now serve attempt 5's bytes, and only them; attempt 6's bytes are never served.
    let mut want_leader = vec![b'a'; 3000];
    want_leader.extend_from_slice(&[b'a'; 7]);
    let mut want_peer = vec![b'A'; 5000];
    want_peer.extend_from_slice(&[b'A'; 7]);
    assert_eq!(fetch_accepting(&l, 0..1, 5).await.unwrap(), want_leader);
    assert_eq!(fetch_accepting(&pc, 1..2, 5).await.unwrap(), want_peer);
    let err = fetch_accepting(&pc, 1..2, 6).await.unwrap_err();
    assert!(err.contains("not the committed attempt"), "{err}");

    // Wrong counts for the winner are refused like any commit that does not match the stored blocks.
    let other = TestServer::start(1, "");
    let oc = other.client().await;
    oc.register_shuffle(APP, 0, 1, 2).await.unwrap();
    let _ = push_one(&oc, 5, 1, b'A', 5000).await;
    let mut wrong = a_promise.partitions.clone();
    wrong[0].bytes += 1;
    let err = oc
        .commit(APP, 0, 0, 5, wrong)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("bytes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_peers_are_refused_naming_the_field() {
    let server = TestServer::start(1, "");
    let c = server.client().await;
    c.register_shuffle(APP, 0, 1, 4).await.unwrap();
    let p = push_one(&c, 1, 0, b'x', 100).await;
    let count = |partition_id, blocks, bytes| pb::PartitionCount {
        partition_id,
        blocks,
        bytes,
    };
    let peer = |server: &str, partitions| pb::PeerPromise {
        server: server.into(),
        partitions,
    };
    let cases: Vec<(Vec<pb::PeerPromise>, &str)> = vec![
        (
            vec![peer("10.0.0.2:1", vec![count(9, 1, 1)])],
            "peers.partitions.partition_id",
        ),
        (
            vec![peer("10.0.0.2:1", vec![count(1, 1, 1), count(1, 2, 2)])],
            "peers.partitions.partition_id",
        ),
        (vec![peer("", vec![count(1, 1, 1)])], "peers.server"),
        (
            vec![peer(&"x".repeat(256), vec![count(1, 1, 1)])],
            "peers.server",
        ),
        (
            vec![
                peer("10.0.0.2:1", vec![count(1, 1, 1)]),
                peer("10.0.0.2:1", vec![count(2, 1, 1)]),
            ],
            "peers.server",
        ),
        (
            vec![
                peer("10.0.0.2:1", vec![count(1, 1, 1), count(2, 1, 1)]),
                peer("10.0.0.3:1", vec![count(3, 1, 1), count(0, 1, 1)]),
            ],
            "peers.partitions",
        ),
    ];
    for (peers, field) in cases {
        let err = c
            .commit_with_peers(APP, 0, 0, 1, counts(&p), peers.clone())
            .await
            .expect_err("malformed peers must be refused")
            .to_string();
        assert!(
            err.contains("InvalidArgument")
                || err.contains("INVALID_ARGUMENT")
                || err.contains("invalid"),
            "{peers:?}: {err}"
        );
        assert!(
            err.contains(field),
            "{peers:?}: {err} does not name {field}"
        );
    }
    // Nothing was committed by the refused calls; a well-formed commit still wins.
    let ok = c
        .commit_with_peers(
            APP,
            0,
            0,
            1,
            counts(&p),
            vec![peer("10.0.0.2:1", vec![count(1, 1, 1)])],
        )
        .await
        .unwrap();
    assert!(ok.committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_and_verify_over_three_servers_spread_partitions_and_commit_every_map_everywhere() {
    let servers: Vec<TestServer> = (0..3).map(|_| TestServer::start(1, "")).collect();
    let list: Vec<String> = servers.iter().map(|s| s.grpc.clone()).collect();
    let spec = load_spec(&list.join(","), "spread", 3, 6, 12, 3 << 20, 64 << 10);
    load_and_verify(spec).await;
    let owners = croupier_client::cluster::assign(&list, 3, 12);
    for (i, s) in servers.iter().enumerate() {
        let status = s.status_json();
        let owned = owners.iter().filter(|&&o| o == i).count() as u64;
        assert_eq!(
            owned, 4,
            "bounded-load placement: 12 partitions on 3 servers"
        );
        // Each server holds exactly the bytes of its partitions.
        assert_eq!(
            status["push_bytes_total"].as_u64().unwrap(),
            owned * 6 * ((3 << 20) / 12),
            "server {i}: {status}"
        );
        let shuffle = status["shuffles"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["app_id"] == "spread")
            .cloned()
            .unwrap();
        assert_eq!(shuffle["committed_maps"], 6, "server {i}: {shuffle}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_pusher_that_loses_completes_the_winners_commits() {
    use croupier_client::cluster::{assign, Cluster};
    let servers: Vec<TestServer> = (0..2).map(|_| TestServer::start(1, "")).collect();
    let list: Vec<String> = servers.iter().map(|s| s.grpc.clone()).collect();
    let cluster = Cluster::connect(&list, &Default::default()).await.unwrap();
    cluster.register_shuffle("lose", 0, 2, 8).await.unwrap();
    let owners = assign(&list, 0, 8);

    // Map 1 (leader: server 1), attempt 10: pushes 'a' everywhere, commits on the leader with its peer
    // promise, and dies before committing on server 0.
    let mut a: Vec<_> = (0..2)
        .map(|s| cluster.client(s).pusher("lose", 0, 1, 10))
        .collect();
    for p in 0..8u32 {
        a[owners[p as usize]]
            .push(p, Bytes::from(vec![b'a'; 100 + p as usize]))
            .await
            .unwrap();
    }
    for x in &mut a {
        x.finish().await.unwrap();
    }
    let won = cluster
        .client(1)
        .commit_with_peers(
            "lose",
            0,
            1,
            10,
            a[1].partition_counts(),
            vec![pb::PeerPromise {
                server: list[0].clone(),
                partitions: a[0].partition_counts(),
            }],
        )
        .await
        .unwrap();
    assert!(won.committed);

    // Attempt 11 pushes 'b' through the cluster pusher, loses, and completes attempt 10 on server 0.
    let mut b = cluster.pusher("lose", 0, 8, 1, 11);
    for p in 0..8u32 {
        b.push(p, Bytes::from(vec![b'b'; 100 + p as usize]))
            .await
            .unwrap();
    }
    let (outcome, _) = b.commit().await.unwrap();
    assert!(!outcome.committed);
    assert_eq!(outcome.committed_attempt_id, 10);
    for p in 0..8u32 {
        let (blocks, _) = cluster
            .client(owners[p as usize])
            .fetch(fetch_req("lose", 0, p..p + 1, 1..2))
            .await
            .unwrap();
        assert!(!blocks.is_empty(), "partition {p}");
        for blk in &blocks {
            assert_eq!(blk.attempt_id, 10, "partition {p}");
            assert_eq!(blk.data, vec![b'a'; 100 + p as usize], "partition {p}");
        }
    }
}
