//! The gRPC layer: turns `croupier.v1` messages into validated store requests and store results back
//! into messages (Push and Fetch below tonic's codec: [`fast_path`]). It owns no state beyond one push
//! stream's go-back-N position, and touches no file. It also enforces per-app secrets ([`Auth`]) and
//! per-app quotas ([`Quota`]); the token of every RPC is checked before, by [`token_interceptor`].

use crate::auth::Auth;
use crate::error::StoreError;
use crate::format::{PartitionCount, PeerPromise};
use crate::ids::{AppId, ShuffleKey};
use crate::quota::Quota;
use crate::store::shuffle::PushBlock;
use crate::store::{self, FetchItem, PushResult, Store};
use croupier_proto::v1 as pb;
use croupier_proto::v1::shuffle_service_server::ShuffleService;
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

pub mod fast_path;
pub mod raw_fetch;
pub mod raw_push;

pub struct Service {
    store: Arc<Store>,
    auth: Arc<Auth>,
    quota: Arc<Quota>,
}

impl Service {
    /// No token, no app secrets, no quota.
    pub fn new(store: Arc<Store>) -> Self {
        Service::with_security(store, Arc::new(Auth::disabled()), Quota::new(0))
    }

    pub fn with_security(store: Arc<Store>, auth: Arc<Auth>, quota: Arc<Quota>) -> Self {
        Service { store, auth, quota }
    }

    /// Checks and plans a Fetch and starts streaming it: the receiver yields block groups, then the
    /// summary (or an error).
    async fn open_fetch(
        &self,
        md: &MetadataMap,
        r: pb::FetchRequest,
    ) -> Result<mpsc::Receiver<crate::error::Result<FetchItem>>, Status> {
        let key = key(&r.app_id, r.shuffle_id)?;
        self.auth.check_app(md, &key.app)?;
        Ok(self
            .store
            .fetch(store::FetchRequest {
                key,
                partitions: r.partition_start..r.partition_end,
                maps: r.map_start..r.map_end,
                accepted: r
                    .accepted_attempts
                    .iter()
                    .map(|a| (a.map_index, a.attempt_id))
                    .collect(),
                chunk_bytes_max: u64::from(r.chunk_bytes_max),
            })
            .await?)
    }

    /// Serves one push stream in a task: reads its batches from `source`, checks each app's secret once,
    /// stores the batches (go-back-N after a refusal) and sends one ack per batch, or the error that
    /// ends the stream.
    fn spawn_push_stream(
        &self,
        md: MetadataMap,
        mut source: BatchSource,
    ) -> mpsc::Receiver<Result<pb::PushAck, Status>> {
        let store = self.store.clone();
        let auth = self.auth.clone();
        let quota = self.quota.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            // Go-back-N: after refusing a batch, refuse every later one until it is sent again.
            let mut refused_from: Option<u64> = None;
            // The app whose secret this stream presented (checked once per app).
            let mut authorized: Option<String> = None;
            loop {
                let batch = match source.next().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                };
                if authorized.as_deref() != Some(batch.app_id.as_str())
                    && auth.app_secrets_enforced()
                {
                    let checked = match AppId::parse(&batch.app_id) {
                        Err(e) => Err((e.reason(), Status::from(e))),
                        Ok(app) => auth.check_app(&md, &app).map_err(|s| ("auth", s)),
                    };
                    if let Err((reason, status)) = checked {
                        store.note_push_refused(reason);
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                    authorized = Some(batch.app_id.clone());
                }
                let ack = push_batch(&store, &quota, batch, &mut refused_from)
                    .await
                    .map_err(|e| {
                        store.note_push_refused(e.reason());
                        Status::from(e)
                    });
                let failed = ack.is_err();
                if tx.send(ack).await.is_err() || failed {
                    break;
                }
            }
        });
        rx
    }

    /// The app secret of a registration: an app the server holds must present it; a new app gets it.
    fn authorize_registration(&self, md: &MetadataMap, app: &AppId) -> Result<String, Status> {
        let Some(secret) = self.auth.app_secret(app) else {
            return Ok(String::new());
        };
        if !self.auth.check_presented(md, app)? && self.store.heartbeat(app) {
            self.auth.note_missing_app_secret();
            return Err(Status::unauthenticated(format!(
                "app {app} is already registered on this server: send its secret (returned by its first RegisterShuffle) in metadata `{}`",
                crate::auth::APP_SECRET_HEADER
            )));
        }
        Ok(secret)
    }
}

/// The interceptor that checks the auth token of every RPC (a no-op when no token is configured).
pub fn token_interceptor(
    auth: Arc<Auth>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static {
    move |req: Request<()>| {
        auth.check_token(req.metadata())?;
        Ok(req)
    }
}

fn key(app_id: &str, shuffle_id: u32) -> Result<ShuffleKey, StoreError> {
    Ok(ShuffleKey {
        app: AppId::parse(app_id)?,
        shuffle_id,
    })
}

/// A block as a Fetch response carries it.
fn fetched_block(loc: &store::shuffle::BlockLoc, data: bytes::Bytes) -> pb::FetchedBlock {
    pb::FetchedBlock {
        partition_id: loc.partition_id,
        map_index: loc.map_index,
        attempt_id: loc.attempt_id,
        seq: loc.seq,
        crc32: loc.crc32,
        data,
    }
}

/// The last message of a Fetch stream.
fn summary_message(maps: Vec<store::shuffle::MapSummary>) -> pb::FetchResponse {
    let total_blocks = maps.iter().map(|m| m.blocks).sum();
    let total_bytes = maps.iter().map(|m| m.bytes).sum();
    pb::FetchResponse {
        kind: Some(pb::fetch_response::Kind::Summary(pb::FetchSummary {
            maps: maps
                .into_iter()
                .map(|m| pb::MapSummary {
                    map_index: m.map_index,
                    attempt_id: m.attempt_id,
                    blocks: m.blocks,
                    bytes: m.bytes,
                })
                .collect(),
            total_blocks,
            total_bytes,
        })),
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ShuffleService for Service {
    async fn register_shuffle(
        &self,
        request: Request<pb::RegisterShuffleRequest>,
    ) -> Result<Response<pb::RegisterShuffleResponse>, Status> {
        let (md, _, r) = request.into_parts();
        let key = key(&r.app_id, r.shuffle_id)?;
        let app_secret = self.authorize_registration(&md, &key.app)?;
        let created = self
            .store
            .register_shuffle(key, r.num_maps, r.num_partitions)
            .await?;
        Ok(Response::new(pb::RegisterShuffleResponse {
            created,
            lease_timeout_ms: self.store.config.app_lease_timeout_ms,
            app_secret,
        }))
    }

    type PushStream = BoxStream<pb::PushAck>;

    async fn push(
        &self,
        request: Request<Streaming<pb::PushBatch>>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let (md, _, inbound) = request.into_parts();
        let rx = self.spawn_push_stream(md, BatchSource::Tonic(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn commit_map_attempt(
        &self,
        request: Request<pb::CommitMapAttemptRequest>,
    ) -> Result<Response<pb::CommitMapAttemptResponse>, Status> {
        let (md, _, r) = request.into_parts();
        let key = key(&r.app_id, r.shuffle_id)?;
        self.auth.check_app(&md, &key.app)?;
        if !r.blocks.is_empty()
            && !self
                .store
                .attempt_is_committing_or_committed(&key, r.map_index, r.attempt_id)?
        {
            // Inline blocks (a small map output in one call): stored as a push batch, then committed.
            // A retry of a commit that went through already skips this (its blocks are held).
            let stored = store_blocks(
                &self.store,
                &self.quota,
                &key,
                r.map_index,
                r.attempt_id,
                r.blocks.into_iter().map(push_block).collect(),
                0,
            )
            .await
            .map_err(|e| {
                self.store.note_push_refused(e.reason());
                Status::from(e)
            })?;
            match stored {
                PushResult::Accepted { .. } => {
                    metrics::counter!("croupier_inline_commits_total").increment(1);
                }
                // A committed map answers with its winner below; the blocks were dropped.
                PushResult::MapCommitted { .. } => {}
                PushResult::RetryLater { retry_after_ms } => {
                    return Err(Status::resource_exhausted(format!(
                        "blocks: the memory budget has no room for this commit's inline blocks; nothing was stored or committed: push them in a stream (or retry after {retry_after_ms} ms)"
                    )));
                }
            }
        }
        let promised = r.partitions.iter().map(count_from_pb).collect();
        let peers = r
            .peers
            .into_iter()
            .map(|p| PeerPromise {
                server: p.server,
                partitions: p.partitions.iter().map(count_from_pb).collect(),
            })
            .collect();
        let res = self
            .store
            .commit(&key, r.map_index, r.attempt_id, promised, peers)
            .await?;
        Ok(Response::new(pb::CommitMapAttemptResponse {
            committed: res.committed,
            committed_attempt_id: res.committed_attempt_id,
            winner_peers: res
                .winner_peers
                .into_iter()
                .map(|p| pb::PeerPromise {
                    server: p.server,
                    partitions: p.partitions.iter().map(count_to_pb).collect(),
                })
                .collect(),
        }))
    }

    type FetchStream = BoxStream<pb::FetchResponse>;

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        // Servers started by `server::run` answer Fetch in `raw_fetch` (no encode copy); this path serves
        // the same stream through tonic's codec (tests, and `Service` used without the wrapper).
        let (md, _, r) = request.into_parts();
        let rx = self.open_fetch(&md, r).await?;
        let store = self.store.clone();
        let stream = ReceiverStream::new(rx).map(move |item| match item {
            Ok(FetchItem::Blocks(blocks)) => {
                let mut bytes = 0;
                let blocks = blocks
                    .into_iter()
                    .map(|(loc, data)| {
                        bytes += data.len() as u64;
                        fetched_block(&loc, data)
                    })
                    .collect();
                store.note_fetched(bytes);
                Ok(pb::FetchResponse {
                    kind: Some(pb::fetch_response::Kind::Chunk(pb::FetchChunk { blocks })),
                })
            }
            Ok(FetchItem::Summary(maps)) => Ok(summary_message(maps)),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn unregister_shuffle(
        &self,
        request: Request<pb::UnregisterShuffleRequest>,
    ) -> Result<Response<pb::UnregisterShuffleResponse>, Status> {
        let (md, _, r) = request.into_parts();
        let key = key(&r.app_id, r.shuffle_id)?;
        self.auth.check_app(&md, &key.app)?;
        let existed = self.store.unregister_shuffle(&key).await;
        self.quota.invalidate();
        Ok(Response::new(pb::UnregisterShuffleResponse { existed }))
    }

    async fn unregister_app(
        &self,
        request: Request<pb::UnregisterAppRequest>,
    ) -> Result<Response<pb::UnregisterAppResponse>, Status> {
        let (md, _, r) = request.into_parts();
        let app = AppId::parse(&r.app_id)?;
        self.auth.check_app(&md, &app)?;
        let existed = self.store.unregister_app(&app).await;
        self.quota.invalidate();
        Ok(Response::new(pb::UnregisterAppResponse { existed }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let (md, _, r) = request.into_parts();
        let app = AppId::parse(&r.app_id)?;
        self.auth.check_app(&md, &app)?;
        Ok(Response::new(pb::HeartbeatResponse {
            known: self.store.heartbeat(&app),
            lease_timeout_ms: self.store.config.app_lease_timeout_ms,
        }))
    }

    async fn get_server_status(
        &self,
        _request: Request<pb::GetServerStatusRequest>,
    ) -> Result<Response<pb::ServerStatus>, Status> {
        let s = self.store.status();
        Ok(Response::new(pb::ServerStatus {
            version: s.version.to_string(),
            accepting_pushes: s.accepting_pushes,
            memory_used_bytes: s.memory_used_bytes,
            memory_high_watermark_bytes: s.memory_high_watermark_bytes,
            memory_limit_bytes: s.memory_limit_bytes,
            metadata_bytes: s.metadata_bytes,
            metadata_limit_bytes: s.metadata_limit_bytes,
            apps: s.apps as u32,
            shuffles: s.shuffles.len() as u32,
            disks: s
                .disks
                .into_iter()
                .map(|d| pb::DiskStatus {
                    path: d.path,
                    state: d.state.to_string(),
                    free_bytes: d.free_bytes,
                    total_bytes: d.total_bytes,
                    used_by_croupier_bytes: d.used_by_croupier_bytes,
                    segment_pool_bytes: d.segment_pool_bytes,
                })
                .collect(),
            push_bytes_total: s.push_bytes_total,
            fetch_bytes_total: s.fetch_bytes_total,
        }))
    }
}

/// A push batch as the push stream handles it: decoded by tonic, or straight from the HTTP/2 frames
/// ([`raw_push`]).
pub struct IncomingBatch {
    pub app_id: String,
    pub shuffle_id: u32,
    pub map_index: u32,
    pub attempt_id: u64,
    pub batch_id: u64,
    pub blocks: Vec<PushBlock>,
    /// Memory the blocks keep allocated beyond their payload (see [`Store::push`]); 0 for blocks in
    /// their own buffers.
    pub held_bytes: u64,
}

impl From<pb::PushBatch> for IncomingBatch {
    fn from(b: pb::PushBatch) -> Self {
        IncomingBatch {
            app_id: b.app_id,
            shuffle_id: b.shuffle_id,
            map_index: b.map_index,
            attempt_id: b.attempt_id,
            batch_id: b.batch_id,
            blocks: b.blocks.into_iter().map(push_block).collect(),
            held_bytes: 0,
        }
    }
}

fn push_block(b: pb::Block) -> PushBlock {
    PushBlock {
        partition_id: b.partition_id,
        seq: b.seq,
        crc32: b.crc32,
        data: b.data.into(),
    }
}

/// Where a push stream's batches come from.
pub enum BatchSource {
    /// Decoded by tonic (a `Service` used without [`fast_path::FastPath`]).
    Tonic(Streaming<pb::PushBatch>),
    /// Decoded from the request body's frames.
    Raw(raw_push::BatchReader<tonic::body::Body>),
}

impl BatchSource {
    async fn next(&mut self) -> Result<Option<IncomingBatch>, Status> {
        match self {
            BatchSource::Tonic(s) => Ok(s.message().await?.map(IncomingBatch::from)),
            BatchSource::Raw(r) => r.next_batch().await,
        }
    }
}

async fn push_batch(
    store: &Store,
    quota: &Arc<Quota>,
    batch: IncomingBatch,
    refused_from: &mut Option<u64>,
) -> Result<pb::PushAck, StoreError> {
    let mut ack = pb::PushAck {
        batch_id: batch.batch_id,
        status: pb::PushStatus::Accepted as i32,
        memory_high_watermark_bytes: store.memory.high_watermark_bytes,
        memory_limit_bytes: store.memory.limit_bytes,
        ..Default::default()
    };
    if let Some(id) = *refused_from {
        if id != batch.batch_id {
            ack.status = pb::PushStatus::RetryLater as i32;
            ack.retry_after_ms = store.config.push_retry_after_ms;
            ack.memory_used_bytes = store.memory.used_bytes();
            return Ok(ack);
        }
        *refused_from = None;
    }
    let key = key(&batch.app_id, batch.shuffle_id)?;
    match store_blocks(
        store,
        quota,
        &key,
        batch.map_index,
        batch.attempt_id,
        batch.blocks,
        batch.held_bytes,
    )
    .await?
    {
        PushResult::Accepted { duplicate_blocks } => {
            ack.duplicate_blocks = duplicate_blocks;
        }
        PushResult::RetryLater { retry_after_ms } => {
            ack.status = pb::PushStatus::RetryLater as i32;
            ack.retry_after_ms = retry_after_ms;
            *refused_from = Some(batch.batch_id);
        }
        PushResult::MapCommitted { attempt_id } => {
            ack.status = pb::PushStatus::MapCommitted as i32;
            ack.committed_attempt_id = attempt_id;
        }
    }
    ack.memory_used_bytes = store.memory.used_bytes();
    Ok(ack)
}

/// Stores the blocks of one push batch, or of a commit's inline blocks: checks the block count, charges
/// the app's quota (kept only if the store accepts them), and hands them to the store.
async fn store_blocks(
    store: &Store,
    quota: &Arc<Quota>,
    key: &ShuffleKey,
    map_index: u32,
    attempt_id: u64,
    blocks: Vec<PushBlock>,
    held_bytes: u64,
) -> Result<PushResult, StoreError> {
    if blocks.len() > store.config.batch_blocks_max as usize {
        return Err(StoreError::invalid(
            "blocks",
            format!(
                "{} blocks in one batch; at most {} are allowed",
                blocks.len(),
                store.config.batch_blocks_max
            ),
        ));
    }
    let bytes: u64 = blocks.iter().map(|b| b.data.len() as u64).sum();
    let reservation = quota.reserve(store, &key.app, bytes)?;
    let result = store
        .push(key, map_index, attempt_id, blocks, held_bytes)
        .await?;
    if let (PushResult::Accepted { .. }, Some(r)) = (&result, reservation) {
        r.accepted();
    }
    Ok(result)
}

fn count_from_pb(p: &pb::PartitionCount) -> PartitionCount {
    PartitionCount {
        partition_id: p.partition_id,
        blocks: p.blocks,
        bytes: p.bytes,
    }
}

fn count_to_pb(p: &PartitionCount) -> pb::PartitionCount {
    pb::PartitionCount {
        partition_id: p.partition_id,
        blocks: p.blocks,
        bytes: p.bytes,
    }
}
