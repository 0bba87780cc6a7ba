//! `croupier load` and `croupier verify`: push deterministic data for M maps x P partitions, then fetch
//! every partition and compare it byte for byte with the regenerated data.
//!
//! `server` may list several servers (`host:port,host:port`): partitions are then placed with
//! [`cluster::assign`](crate::cluster::assign), every map is committed on all of them through
//! [`ClusterPusher`](crate::cluster::ClusterPusher), and each partition is verified on its owner.

use crate::cluster::{assign, Cluster};
use crate::datagen::{partition_bytes, ByteStream};
use crate::{Client, ClientError, ClientOptions, PushStats};
use croupier_proto::v1 as pb;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// One server, or several separated by commas.
    pub server: String,
    pub app: String,
    pub shuffle: u32,
    pub maps: u32,
    pub partitions: u32,
    pub bytes_per_map: u64,
    pub block_bytes: u64,
    pub seed: u64,
    /// Map tasks pushing at once (each on its own connection).
    pub concurrency: u32,
    /// Only push maps [map_start, map_end) (to split one load over several processes).
    pub map_start: u32,
    pub map_end: u32,
    /// attempt id = attempt_base + map index.
    pub attempt_base: u64,
    pub options: ClientOptions,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct LoadResult {
    pub bytes: u64,
    pub blocks: u64,
    pub seconds: f64,
    pub gib_per_s: f64,
    pub maps_committed: u32,
    pub retry_later: u64,
    pub stream_restarts: u64,
    pub duplicate_blocks: u64,
}

/// The servers of a `server` spec: `host:port[,host:port...]`, each listed once.
pub fn server_list(spec: &str) -> Result<Vec<String>, ClientError> {
    let servers: Vec<String> = spec
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if servers.is_empty() {
        return Err(ClientError::Protocol("--server: no server given".into()));
    }
    for (i, s) in servers.iter().enumerate() {
        if servers[..i].contains(s) {
            return Err(ClientError::Protocol(format!(
                "--server: {s} is listed twice"
            )));
        }
    }
    Ok(servers)
}

pub async fn connect_many(
    server: &str,
    n: u32,
    options: &ClientOptions,
) -> Result<Vec<Client>, ClientError> {
    let mut clients = Vec::new();
    for _ in 0..n.max(1) {
        clients.push(Client::connect(server, options.clone()).await?);
    }
    Ok(clients)
}

pub async fn load(spec: LoadSpec) -> Result<LoadResult, ClientError> {
    if spec.partitions == 0 || spec.maps == 0 || spec.block_bytes == 0 {
        return Err(ClientError::Protocol(
            "--maps, --partitions and --block-bytes must be at least 1".into(),
        ));
    }
    let servers = server_list(&spec.server)?;
    // One connection to every server per map in flight.
    let mut connections = Vec::new();
    for _ in 0..spec.concurrency.max(1) {
        connections.push(Cluster::connect(&servers, &spec.options).await?);
    }
    connections[0]
        .register_shuffle(&spec.app, spec.shuffle, spec.maps, spec.partitions)
        .await?;
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(spec.concurrency.max(1) as usize));
    let spec = Arc::new(spec);
    let mut tasks = Vec::new();
    let end = if spec.map_end == 0 {
        spec.maps
    } else {
        spec.map_end.min(spec.maps)
    };
    for map in spec.map_start..end {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let cluster = connections[map as usize % connections.len()].clone();
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            push_map_to_cluster(&cluster, &spec, map).await
        }));
    }
    let mut result = LoadResult::default();
    for t in tasks {
        let stats = t
            .await
            .map_err(|e| ClientError::Protocol(format!("map task panicked: {e}")))??;
        result.bytes += stats.bytes;
        result.blocks += stats.blocks;
        result.retry_later += stats.retry_later;
        result.stream_restarts += stats.stream_restarts;
        result.duplicate_blocks += stats.duplicate_blocks;
        result.maps_committed += 1;
    }
    result.seconds = started.elapsed().as_secs_f64();
    result.gib_per_s = result.bytes as f64 / (1u64 << 30) as f64 / result.seconds.max(1e-9);
    Ok(result)
}

/// Pushes one map: blocks round-robin over its partitions (partition-mixed, as real map tasks push).
pub async fn push_map(
    client: &Client,
    spec: &LoadSpec,
    map: u32,
) -> Result<PushStats, ClientError> {
    let attempt = spec.attempt_base + u64::from(map);
    push_and_commit(
        spec,
        map,
        attempt,
        client.pusher(&spec.app, spec.shuffle, map, attempt),
    )
    .await
}

/// As [`push_map`], to every server of a cluster (each partition to its owner).
pub async fn push_map_to_cluster(
    cluster: &Cluster,
    spec: &LoadSpec,
    map: u32,
) -> Result<PushStats, ClientError> {
    let attempt = spec.attempt_base + u64::from(map);
    let pusher = cluster.pusher(&spec.app, spec.shuffle, spec.partitions, map, attempt);
    push_and_commit(spec, map, attempt, pusher).await
}

/// One map attempt's pushes: to one server, or to a cluster.
trait MapSink {
    async fn push_block(&mut self, partition: u32, data: bytes::Bytes) -> Result<(), ClientError>;
    async fn commit_map(self) -> Result<(crate::CommitOutcome, PushStats), ClientError>;
}

impl MapSink for crate::MapPusher {
    async fn push_block(&mut self, partition: u32, data: bytes::Bytes) -> Result<(), ClientError> {
        self.push(partition, data).await
    }
    async fn commit_map(self) -> Result<(crate::CommitOutcome, PushStats), ClientError> {
        self.commit().await
    }
}

impl MapSink for crate::cluster::ClusterPusher {
    async fn push_block(&mut self, partition: u32, data: bytes::Bytes) -> Result<(), ClientError> {
        self.push(partition, data).await
    }
    async fn commit_map(self) -> Result<(crate::CommitOutcome, PushStats), ClientError> {
        self.commit().await
    }
}

/// Pushes map `map`'s data through `sink` and commits it; an attempt that lost the map is an error.
async fn push_and_commit(
    spec: &LoadSpec,
    map: u32,
    attempt: u64,
    mut sink: impl MapSink,
) -> Result<PushStats, ClientError> {
    push_map_data(spec, map, &mut sink).await?;
    let (outcome, stats) = sink.commit_map().await?;
    if !outcome.committed {
        return Err(ClientError::Protocol(format!(
            "map {map} attempt {attempt}: attempt {} committed the map first",
            outcome.committed_attempt_id
        )));
    }
    Ok(stats)
}

/// Generates map `map`'s data and hands it to `sink` block by block, round-robin over the partitions.
async fn push_map_data(
    spec: &LoadSpec,
    map: u32,
    sink: &mut impl MapSink,
) -> Result<(), ClientError> {
    let mut streams: Vec<(u32, ByteStream, u64)> = (0..spec.partitions)
        .map(|p| {
            (
                p,
                ByteStream::new(spec.seed, map, p),
                partition_bytes(spec.bytes_per_map, spec.partitions, p),
            )
        })
        .filter(|(_, _, left)| *left > 0)
        .collect();
    while !streams.is_empty() {
        for (p, stream, left) in streams.iter_mut() {
            let n = (*left).min(spec.block_bytes) as usize;
            let data = bytes::Bytes::from(stream.take(n));
            *left -= n as u64;
            sink.push_block(*p, data).await?;
        }
        streams.retain(|(_, _, left)| *left > 0);
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct VerifySpec {
    /// One server, or several separated by commas (each partition is read from its owner).
    pub server: String,
    pub app: String,
    pub shuffle: u32,
    pub maps: u32,
    pub partitions: u32,
    pub bytes_per_map: u64,
    pub seed: u64,
    pub concurrency: u32,
    pub options: ClientOptions,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyResult {
    pub bytes: u64,
    pub seconds: f64,
    pub gib_per_s: f64,
    pub partitions_ok: u32,
    pub partitions_failed: u32,
    /// One line per failed partition.
    pub failures: Vec<String>,
}

pub async fn verify(spec: VerifySpec) -> Result<VerifyResult, ClientError> {
    let servers = server_list(&spec.server)?;
    // clients[slot][server]; partition p is read from its owner.
    let mut clients: Vec<Vec<Client>> = Vec::new();
    for _ in 0..spec.concurrency.max(1) {
        let mut per_server = Vec::with_capacity(servers.len());
        for s in &servers {
            per_server.push(Client::connect(s, spec.options.clone()).await?);
        }
        clients.push(per_server);
    }
    let owners = assign(&servers, spec.shuffle, spec.partitions);
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(spec.concurrency.max(1) as usize));
    let spec = Arc::new(spec);
    let mut tasks = Vec::new();
    for p in 0..spec.partitions {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let client = clients[p as usize % clients.len()][owners[p as usize]].clone();
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            (p, verify_partition(&client, &spec, p).await)
        }));
    }
    let mut result = VerifyResult::default();
    for t in tasks {
        let (p, r) = t
            .await
            .map_err(|e| ClientError::Protocol(format!("verify task panicked: {e}")))?;
        match r {
            Ok(bytes) => {
                result.bytes += bytes;
                result.partitions_ok += 1;
            }
            Err(e) => {
                result.partitions_failed += 1;
                result.failures.push(format!(
                    "app {} shuffle {} partition {p}: {e}",
                    spec.app, spec.shuffle
                ));
            }
        }
    }
    result.seconds = started.elapsed().as_secs_f64();
    result.gib_per_s = result.bytes as f64 / (1u64 << 30) as f64 / result.seconds.max(1e-9);
    Ok(result)
}

/// Fetches one partition of every map and compares it with the regenerated data. Returns its bytes.
pub async fn verify_partition(client: &Client, spec: &VerifySpec, p: u32) -> Result<u64, String> {
    let expected_per_map = partition_bytes(spec.bytes_per_map, spec.partitions, p);
    let mut current: Option<(u32, ByteStream, u64)> = None;
    let mut scratch = Vec::new();
    let mut problem: Option<String> = None;
    let mut total = 0u64;
    let mut maps_seen = 0u32;
    let req = pb::FetchRequest {
        app_id: spec.app.clone(),
        shuffle_id: spec.shuffle,
        partition_start: p,
        partition_end: p + 1,
        map_start: 0,
        map_end: spec.maps,
        ..Default::default()
    };
    let finish_map = |cur: &Option<(u32, ByteStream, u64)>, problem: &mut Option<String>| {
        if let Some((m, _, got)) = cur {
            if *got != expected_per_map && problem.is_none() {
                *problem = Some(format!("map {m}: {got} bytes, expected {expected_per_map}"));
            }
        }
    };
    client
        .fetch_with(req, |b| {
            if problem.is_some() {
                return;
            }
            if current.as_ref().map(|c| c.0) != Some(b.map_index) {
                finish_map(&current, &mut problem);
                current = Some((b.map_index, ByteStream::new(spec.seed, b.map_index, p), 0));
                maps_seen += 1;
            }
            let (m, stream, got) = current.as_mut().expect("set above");
            scratch.resize(b.data.len(), 0);
            stream.fill(&mut scratch);
            if scratch[..] != b.data[..] {
                problem = Some(format!(
                    "map {m} seq {}: bytes differ from what was pushed (at offset {got})",
                    b.seq
                ));
            }
            *got += b.data.len() as u64;
            total += b.data.len() as u64;
        })
        .await
        .map_err(|e| e.to_string())?;
    finish_map(&current, &mut problem);
    let expected_maps = if expected_per_map > 0 { spec.maps } else { 0 };
    if problem.is_none() && maps_seen != expected_maps {
        problem = Some(format!("{maps_seen} maps served, expected {expected_maps}"));
    }
    match problem {
        Some(p) => Err(p),
        None => Ok(total),
    }
}
