//! The bare gRPC baseline: a `croupier.v1` ShuffleService that stores nothing.
//!
//! It runs in its own process (this benchmark binary re-executed with `CROUPIER_BENCH_ROLE=grpc-sink`),
//! with the same tokio runtime and the same HTTP/2 settings and message limits as the `croupier` server,
//! so the client (`croupier_client`, the very code that drives the real server) moves the same bytes
//! through the same stack, and only the storage differs:
//!
//! - Push: decodes each batch, records the length of every block (metadata only), drops the data, acks.
//! - Commit: answers "committed" at once.
//! - Fetch: replays the recorded block layout of the requested partitions and maps, in croupier's order
//!   (partition, map, seq) and message size, with payloads sliced (no copy) from a 64 MiB pool of
//!   pseudo-random bytes whose CRCs are computed once; then the same summary croupier sends. The client
//!   therefore does exactly the checks it does against croupier (CRC of every block, order, summary).
//!
//! Messages are built with `..Default::default()` even where every field is set today, so that fields
//! added to croupier.v1 later (auth, tracing) do not break the baseline.
#![allow(clippy::needless_update)]

use bytes::Bytes;
use croupier_proto::v1 as pb;
use croupier_proto::v1::shuffle_service_server::{ShuffleService, ShuffleServiceServer};
use croupier_server::config::Config;
use croupier_server::server::{
    HTTP2_CONNECTION_WINDOW_BYTES, HTTP2_FRAME_BYTES, HTTP2_STREAM_WINDOW_BYTES,
};
use futures::Stream;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

/// The environment variable that turns the benchmark binary into the sink.
pub const ROLE_ENV: &str = "CROUPIER_BENCH_ROLE";
pub const ROLE_SINK: &str = "grpc-sink";
/// What the sink prints on stdout when it serves.
pub const READY_PREFIX: &str = "croupier-sink serving";

/// Fetch payloads are slices of this many pseudo-random bytes (more than any cache).
const POOL_BYTES: usize = 64 << 20;

/// Runs the sink until the process is killed.
pub fn run_sink_process() -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result: Result<(), String> = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        println!("{READY_PREFIX} grpc={addr}");
        let config = Config::default();
        let service = ShuffleServiceServer::new(Sink::new(&config))
            .max_decoding_message_size(config.message_bytes_max as usize)
            .max_encoding_message_size(config.encoding_bytes_max());
        tonic::transport::Server::builder()
            .max_frame_size(Some(HTTP2_FRAME_BYTES))
            .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW_BYTES))
            .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW_BYTES))
            .tcp_nodelay(true)
            .add_service(service)
            // `Server::tcp_nodelay` is ignored with a custom incoming: set it on the incoming itself.
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("grpc sink: {e}");
            std::process::exit(1)
        }
    }
}

/// Block lengths of one (partition, map) cell, in seq order, and the attempt that pushed them.
#[derive(Clone, Default)]
struct Cell {
    attempt_id: u64,
    lens: Vec<u32>,
}

struct Layout {
    num_maps: u32,
    num_partitions: u32,
    /// Indexed by `partition * num_maps + map`.
    cells: Mutex<Vec<Cell>>,
}

pub struct Sink {
    shuffles: Mutex<HashMap<(String, u32), Arc<Layout>>>,
    pool: Bytes,
    /// CRC of `pool[offset..offset + len]`, by (offset, len).
    crcs: Mutex<HashMap<(u32, u32), u32>>,
    fetch_chunk_bytes_max: u64,
}

impl Sink {
    pub fn new(config: &Config) -> Sink {
        let mut pool = vec![0u8; POOL_BYTES];
        croupier_client::datagen::ByteStream::new(0x5EED, 0, 0).fill(&mut pool);
        Sink {
            shuffles: Mutex::new(HashMap::new()),
            pool: Bytes::from(pool),
            crcs: Mutex::new(HashMap::new()),
            fetch_chunk_bytes_max: config.fetch_chunk_bytes_max,
        }
    }

    fn layout(&self, app: &str, shuffle: u32) -> Result<Arc<Layout>, Status> {
        self.shuffles
            .lock()
            .expect("not poisoned")
            .get(&(app.to_string(), shuffle))
            .cloned()
            .ok_or_else(|| Status::not_found(format!("app {app} shuffle {shuffle}")))
    }

    /// A payload of `len` bytes for the `k`-th block of a fetch, and its CRC.
    fn payload(&self, k: usize, len: u32, crcs: &mut HashMap<(u32, u32), u32>) -> (Bytes, u32) {
        let len_usize = len as usize;
        assert!(
            len_usize <= POOL_BYTES,
            "block of {len} bytes exceeds the pool"
        );
        let slots = POOL_BYTES / len_usize.max(1);
        let offset = (k % slots) * len_usize;
        let data = self.pool.slice(offset..offset + len_usize);
        let crc = *crcs
            .entry((offset as u32, len))
            .or_insert_with(|| crc32fast::hash(&data));
        (data, crc)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ShuffleService for Sink {
    async fn register_shuffle(
        &self,
        request: Request<pb::RegisterShuffleRequest>,
    ) -> Result<Response<pb::RegisterShuffleResponse>, Status> {
        let r = request.into_inner();
        let layout = Layout {
            num_maps: r.num_maps,
            num_partitions: r.num_partitions,
            cells: Mutex::new(vec![
                Cell::default();
                r.num_maps as usize * r.num_partitions as usize
            ]),
        };
        self.shuffles
            .lock()
            .expect("not poisoned")
            .insert((r.app_id, r.shuffle_id), Arc::new(layout));
        Ok(Response::new(pb::RegisterShuffleResponse {
            created: true,
            lease_timeout_ms: 300_000,
            ..Default::default()
        }))
    }

    type PushStream = BoxStream<pb::PushAck>;

    async fn push(
        &self,
        request: Request<Streaming<pb::PushBatch>>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let mut inbound = request.into_inner();
        let shuffles: HashMap<(String, u32), Arc<Layout>> =
            self.shuffles.lock().expect("not poisoned").clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                let ack = match shuffles.get(&(batch.app_id.clone(), batch.shuffle_id)) {
                    Some(layout) => {
                        record(layout, &batch);
                        Ok(pb::PushAck {
                            batch_id: batch.batch_id,
                            status: pb::PushStatus::Accepted as i32,
                            ..Default::default()
                        })
                    }
                    None => Err(Status::not_found("shuffle not registered")),
                };
                drop(batch);
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn commit_map_attempt(
        &self,
        request: Request<pb::CommitMapAttemptRequest>,
    ) -> Result<Response<pb::CommitMapAttemptResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(pb::CommitMapAttemptResponse {
            committed: true,
            committed_attempt_id: r.attempt_id,
            ..Default::default()
        }))
    }

    type FetchStream = BoxStream<pb::FetchResponse>;

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let r = request.into_inner();
        let layout = self.layout(&r.app_id, r.shuffle_id)?;
        let map_end = if r.map_end == 0 {
            layout.num_maps
        } else {
            r.map_end
        };
        if r.partition_end > layout.num_partitions || map_end > layout.num_maps {
            return Err(Status::invalid_argument("range out of bounds"));
        }
        let chunk_max = match u64::from(r.chunk_bytes_max) {
            0 => self.fetch_chunk_bytes_max,
            n => n.min(self.fetch_chunk_bytes_max),
        };
        let messages = self.plan(&layout, &r, map_end, chunk_max);
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn unregister_shuffle(
        &self,
        request: Request<pb::UnregisterShuffleRequest>,
    ) -> Result<Response<pb::UnregisterShuffleResponse>, Status> {
        let r = request.into_inner();
        let existed = self
            .shuffles
            .lock()
            .expect("not poisoned")
            .remove(&(r.app_id, r.shuffle_id))
            .is_some();
        Ok(Response::new(pb::UnregisterShuffleResponse {
            existed,
            ..Default::default()
        }))
    }

    async fn unregister_app(
        &self,
        request: Request<pb::UnregisterAppRequest>,
    ) -> Result<Response<pb::UnregisterAppResponse>, Status> {
        let app = request.into_inner().app_id;
        let mut shuffles = self.shuffles.lock().expect("not poisoned");
        let before = shuffles.len();
        shuffles.retain(|(a, _), _| *a != app);
        Ok(Response::new(pb::UnregisterAppResponse {
            existed: shuffles.len() != before,
            ..Default::default()
        }))
    }

    async fn heartbeat(
        &self,
        _request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Ok(Response::new(pb::HeartbeatResponse {
            known: true,
            lease_timeout_ms: 300_000,
            ..Default::default()
        }))
    }

    async fn get_server_status(
        &self,
        _request: Request<pb::GetServerStatusRequest>,
    ) -> Result<Response<pb::ServerStatus>, Status> {
        Ok(Response::new(pb::ServerStatus {
            version: "sink".into(),
            accepting_pushes: true,
            ..Default::default()
        }))
    }
}

/// Notes the length of every block of a batch (the data itself is dropped).
fn record(layout: &Layout, batch: &pb::PushBatch) {
    let mut cells = layout.cells.lock().expect("not poisoned");
    for b in &batch.blocks {
        if b.partition_id >= layout.num_partitions || batch.map_index >= layout.num_maps {
            continue;
        }
        let cell = &mut cells[(b.partition_id * layout.num_maps + batch.map_index) as usize];
        cell.attempt_id = batch.attempt_id;
        cell.lens.push(b.data.len() as u32);
    }
}

impl Sink {
    /// Every message of a fetch: chunks of at most `chunk_max` data bytes (at least one block), then the
    /// summary.
    fn plan(
        &self,
        layout: &Layout,
        r: &pb::FetchRequest,
        map_end: u32,
        chunk_max: u64,
    ) -> Vec<Result<pb::FetchResponse, Status>> {
        let cells = layout.cells.lock().expect("not poisoned");
        let mut crcs = self.crcs.lock().expect("not poisoned");
        let mut messages = Vec::new();
        let mut blocks: Vec<pb::FetchedBlock> = Vec::new();
        let mut bytes = 0u64;
        let mut summary: Vec<pb::MapSummary> = (r.map_start..map_end)
            .map(|m| pb::MapSummary {
                map_index: m,
                ..Default::default()
            })
            .collect();
        let mut k = 0usize;
        for p in r.partition_start..r.partition_end {
            for m in r.map_start..map_end {
                let cell = &cells[(p * layout.num_maps + m) as usize];
                let s = &mut summary[(m - r.map_start) as usize];
                s.attempt_id = cell.attempt_id;
                for (seq, &len) in cell.lens.iter().enumerate() {
                    if !blocks.is_empty() && bytes + u64::from(len) > chunk_max {
                        messages.push(Ok(chunk(std::mem::take(&mut blocks))));
                        bytes = 0;
                    }
                    let (data, crc32) = self.payload(k, len, &mut crcs);
                    k += 1;
                    blocks.push(pb::FetchedBlock {
                        partition_id: p,
                        map_index: m,
                        attempt_id: cell.attempt_id,
                        seq: seq as u32,
                        crc32,
                        data,
                        ..Default::default()
                    });
                    bytes += u64::from(len);
                    s.blocks += 1;
                    s.bytes += u64::from(len);
                }
            }
        }
        if !blocks.is_empty() {
            messages.push(Ok(chunk(blocks)));
        }
        let total_blocks = summary.iter().map(|s| s.blocks).sum();
        let total_bytes = summary.iter().map(|s| s.bytes).sum();
        messages.push(Ok(pb::FetchResponse {
            kind: Some(pb::fetch_response::Kind::Summary(pb::FetchSummary {
                maps: summary,
                total_blocks,
                total_bytes,
                ..Default::default()
            })),
        }));
        messages
    }
}

fn chunk(blocks: Vec<pb::FetchedBlock>) -> pb::FetchResponse {
    pb::FetchResponse {
        kind: Some(pb::fetch_response::Kind::Chunk(pb::FetchChunk {
            blocks,
            ..Default::default()
        })),
    }
}
