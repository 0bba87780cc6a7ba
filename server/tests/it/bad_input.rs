use crate::common::*;
use crate::round_trip::push_raw;
use bytes::Bytes;
use croupier_client::proto as pb;
use tonic::Code;

fn expect_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    let s = r.expect_err("must be refused");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(
        s.message().contains(needle),
        "message {:?} does not name {needle:?}",
        s.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_status_naming_the_field_and_touches_no_other_app() {
    let server = TestServer::start(
        1,
        "message_bytes_max = \"1MiB\"\nmemory_budget_bytes = \"64MiB\"",
    );
    let mut bystander = load_spec(&server.grpc, "bystander", 3, 3, 5, 1 << 20, 50_000);
    bystander.options.batch_bytes_max = 256 << 10;
    croupier_client::loadgen::load(bystander.clone())
        .await
        .unwrap();
    let client = server.client().await;
    let mut raw = client.raw();
    let reg = |app: &str, maps, parts| pb::RegisterShuffleRequest {
        app_id: app.into(),
        shuffle_id: 1,
        num_maps: maps,
        num_partitions: parts,
    };

    for bad in [
        "a/b",
        "..",
        ".",
        "a\0b",
        "../bystander",
        &"x".repeat(200),
        "",
    ] {
        expect_status(
            raw.register_shuffle(reg(bad, 1, 1)).await,
            Code::InvalidArgument,
            "app_id",
        );
        expect_status(
            raw.fetch(fetch_req(bad, 3, 0..1, 0..1)).await,
            Code::InvalidArgument,
            "app_id",
        );
        expect_status(
            raw.unregister_app(pb::UnregisterAppRequest { app_id: bad.into() })
                .await,
            Code::InvalidArgument,
            "app_id",
        );
    }
    expect_status(
        raw.register_shuffle(reg("ok", 0, 1)).await,
        Code::InvalidArgument,
        "num_maps",
    );
    expect_status(
        raw.register_shuffle(reg("ok", 1, 0)).await,
        Code::InvalidArgument,
        "num_partitions",
    );

    // Unknown app / shuffle.
    expect_status(
        raw.fetch(fetch_req("nobody", 1, 0..1, 0..1)).await,
        Code::NotFound,
        "app nobody shuffle 1",
    );
    expect_status(
        raw.fetch(fetch_req("bystander", 99, 0..1, 0..1)).await,
        Code::NotFound,
        "shuffle 99",
    );

    // Conflicting re-registration; identical re-registration is fine.
    raw.register_shuffle(reg("victim", 4, 8)).await.unwrap();
    assert!(
        !raw.register_shuffle(reg("victim", 4, 8))
            .await
            .unwrap()
            .into_inner()
            .created
    );
    expect_status(
        raw.register_shuffle(reg("victim", 5, 8)).await,
        Code::FailedPrecondition,
        "num_maps",
    );

    // Partition and map out of range (push, commit, fetch).
    let block = |p: u32, seq: u32| {
        let data = Bytes::from_static(b"0123456789");
        pb::Block {
            partition_id: p,
            seq,
            crc32: crc32fast::hash(&data),
            data,
        }
    };
    let batch = |map: u32, blocks: Vec<pb::Block>| pb::PushBatch {
        app_id: "victim".into(),
        shuffle_id: 1,
        map_index: map,
        attempt_id: 1,
        batch_id: 0,
        blocks,
    };
    let mut acks = raw
        .push(tokio_stream::iter(vec![batch(0, vec![block(8, 0)])]))
        .await
        .unwrap()
        .into_inner();
    expect_status(acks.message().await, Code::InvalidArgument, "partition_id");
    let mut acks = raw
        .push(tokio_stream::iter(vec![batch(4, vec![block(0, 0)])]))
        .await
        .unwrap()
        .into_inner();
    expect_status(acks.message().await, Code::InvalidArgument, "map_index");
    let mut acks = raw
        .push(tokio_stream::iter(vec![batch(0, vec![block(0, 1)])]))
        .await
        .unwrap()
        .into_inner();
    expect_status(acks.message().await, Code::InvalidArgument, "seq");
    expect_status(
        raw.fetch(fetch_req("victim", 1, 0..9, 0..4)).await,
        Code::InvalidArgument,
        "partition",
    );
    expect_status(
        raw.fetch(fetch_req("victim", 1, 0..8, 2..7)).await,
        Code::InvalidArgument,
        "map",
    );

    // An oversized message.
    let big = Bytes::from(vec![7u8; 2 << 20]);
    let huge = pb::PushBatch {
        blocks: vec![pb::Block {
            partition_id: 0,
            seq: 0,
            crc32: crc32fast::hash(&big),
            data: big,
        }],
        ..batch(0, vec![])
    };
    let r = raw.push(tokio_stream::iter(vec![huge])).await;
    let status = match r {
        Ok(resp) => resp
            .into_inner()
            .message()
            .await
            .expect_err("oversized message must fail"),
        Err(s) => s,
    };
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // Served by the raw push path (service/raw_push.rs), which names the setting.
    assert!(
        status.message().contains("message length too large")
            && status
                .message()
                .contains("message_bytes_max of 1048576 bytes"),
        "{status:?}"
    );

    // Regression: a batch refused for a seq gap used to keep the blocks before the gap while releasing
    // their memory, which later underflowed the memory counter and killed the disk writer. A refused
    // batch must store nothing: the same blocks are then accepted as new, not as duplicates.
    let mut acks = raw
        .push(tokio_stream::iter(vec![batch(
            1,
            vec![block(2, 0), block(2, 1), block(5, 3)],
        )]))
        .await
        .unwrap()
        .into_inner();
    expect_status(
        acks.message().await,
        Code::InvalidArgument,
        "expected seq 0, got 3",
    );
    let acks = push_raw(&client, vec![batch(1, vec![block(2, 0), block(2, 1)])]).await;
    assert_eq!(acks[0].status, pb::PushStatus::Accepted as i32);
    assert_eq!(
        acks[0].duplicate_blocks, 0,
        "blocks of the refused batch were kept"
    );
    let pc1 = vec![pb::PartitionCount {
        partition_id: 2,
        blocks: 2,
        bytes: 20,
    }];
    let c = pb::CommitMapAttemptRequest {
        app_id: "victim".into(),
        shuffle_id: 1,
        map_index: 1,
        attempt_id: 1,
        partitions: pc1,
        peers: Vec::new(),
        blocks: Vec::new(),
    };
    assert!(
        raw.commit_map_attempt(c)
            .await
            .unwrap()
            .into_inner()
            .committed
    );

    // Empty blocks are refused.
    let empty = pb::Block {
        partition_id: 0,
        seq: 0,
        crc32: 0,
        data: Bytes::new(),
    };
    let mut acks = raw
        .push(tokio_stream::iter(vec![batch(2, vec![empty])]))
        .await
        .unwrap()
        .into_inner();
    expect_status(acks.message().await, Code::InvalidArgument, "blocks.data");

    // Commit with wrong block counts.
    let acks = push_raw(
        &client,
        vec![batch(0, vec![block(0, 0), block(0, 1), block(3, 0)])],
    )
    .await;
    assert_eq!(acks[0].status, pb::PushStatus::Accepted as i32);
    let commit = |parts: Vec<pb::PartitionCount>| pb::CommitMapAttemptRequest {
        app_id: "victim".into(),
        shuffle_id: 1,
        map_index: 0,
        attempt_id: 1,
        partitions: parts,
        peers: Vec::new(),
        blocks: Vec::new(),
    };
    let pc = |p, blocks, bytes| pb::PartitionCount {
        partition_id: p,
        blocks,
        bytes,
    };
    expect_status(
        raw.commit_map_attempt(commit(vec![pc(0, 3, 30), pc(3, 1, 10)]))
            .await,
        Code::FailedPrecondition,
        "partition 0 holds 2 blocks",
    );
    expect_status(
        raw.commit_map_attempt(commit(vec![pc(0, 2, 20)])).await,
        Code::FailedPrecondition,
        "partition 3",
    );
    expect_status(
        raw.commit_map_attempt(commit(vec![pc(0, 2, 20), pc(3, 1, 10), pc(9, 1, 1)]))
            .await,
        Code::InvalidArgument,
        "partition_id",
    );
    assert!(
        raw.commit_map_attempt(commit(vec![pc(0, 2, 20), pc(3, 1, 10)]))
            .await
            .unwrap()
            .into_inner()
            .committed
    );

    // Unregistering an app that does not exist does not touch others.
    assert!(!client.unregister_app("stranger").await.unwrap());

    // Every accepted byte was written or released: nothing is left accounted in memory.
    let status = server.status_json();
    assert_eq!(status["memory_used_bytes"].as_u64(), Some(0), "{status}");

    // The server keeps serving and the other app's data is intact.
    let (code, _) = server.admin_get("/healthz");
    assert_eq!(code, 200);
    assert_verified(&bystander).await;
}
