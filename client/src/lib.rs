//! Rust client for the Croupier shuffle server.
//!
//! - [`Client`]: one server connection: register, push, commit, fetch, unregister, heartbeat, status.
//! - [`MapPusher`]: pushes one map attempt's blocks in batches with a bounded window of batches in
//!   flight, CRC on every block, go-back-N on RETRY_LATER, and stream restarts on transport errors (the
//!   server drops resent blocks, so a retry never stores a block twice).
//! - [`Client::fetch`]: streams a partition range x map range, checks every block's CRC, the order and
//!   completeness of every (partition, map) sequence, and the server's end-of-stream summary.
//! - [`datagen`] and [`loadgen`]: the deterministic data behind `croupier load` / `croupier verify`.
//! - `push_codec`: Push's request codec (each batch encoded into one buffer reserved at its length).
//!
//! Security: [`ClientOptions::token`] is sent as `authorization: Bearer <token>` on every call;
//! [`ClientOptions::tls_ca_pem`] switches to TLS and trusts only that CA; the app secret returned by
//! RegisterShuffle is remembered in [`ClientOptions::app_secrets`] (shared by every clone of the
//! options, so all connections of one `connect_many` know it) and sent as `x-croupier-app-secret` on
//! every call of that app.

pub mod cluster;
pub mod datagen;
pub mod loadgen;
mod push_codec;

use bytes::Bytes;
use croupier_proto::v1 as pb;
use croupier_proto::v1::shuffle_service_client::ShuffleServiceClient;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

pub use croupier_proto::v1 as proto;

/// Largest message the client accepts or sends.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;

/// Metadata carrying `Bearer <token>`.
pub const TOKEN_HEADER: &str = "authorization";
/// Metadata carrying the app's secret.
pub const APP_SECRET_HEADER: &str = "x-croupier-app-secret";

/// (server address, app id) -> app secret, shared by every clone (the secret learned by one
/// connection's registration is used by all connections to that server). Each server derives its own
/// secrets, so one set of options can serve clients of several servers.
#[derive(Clone, Default)]
pub struct AppSecrets(Arc<Mutex<HashMap<String, String>>>);

impl AppSecrets {
    /// The secret of `app` on the server at `server` (the address the client connected to).
    pub fn get(&self, server: &str, app: &str) -> Option<String> {
        self.0.lock().ok()?.get(&Self::key(server, app)).cloned()
    }

    pub fn set(&self, server: &str, app: &str, secret: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(Self::key(server, app), secret.to_string());
        }
    }

    fn key(server: &str, app: &str) -> String {
        format!("{server}/{app}")
    }
}

impl std::fmt::Debug for AppSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets themselves.
        let apps: Vec<String> = self
            .0
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        f.debug_struct("AppSecrets").field("apps", &apps).finish()
    }
}

/// `err` and its sources, joined: tonic's transport errors keep the useful part (a certificate
/// problem, a refused connection) in the sources.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("{what}: server said {code:?}: {message}")]
    Status {
        what: String,
        code: Code,
        message: String,
    },
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Protocol(String),
}

impl ClientError {
    fn status(what: impl Into<String>, s: Status) -> Self {
        let mut message = s.message().to_string();
        if s.code() == Code::Internal && message.contains("h2 protocol error") {
            // What a plaintext client sees when the server speaks TLS.
            message.push_str(" (if the server uses TLS, connect with its CA: --tls-ca)");
        }
        ClientError::Status {
            what: what.into(),
            code: s.code(),
            message,
        }
    }

    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Blocks are gathered into batches of at most this many bytes.
    pub batch_bytes_max: usize,
    /// Blocks per batch, at most (the server refuses batches of more than 65,536 blocks).
    pub batch_blocks_max: usize,
    /// Batches sent and not yet acknowledged, at most.
    pub batches_in_flight_max: usize,
    /// RETRY_LATER answers tolerated for one map attempt before giving up.
    pub retry_later_max: u32,
    /// Push stream restarts after transport errors, per map attempt.
    pub stream_restarts_max: u32,
    /// The server's auth token, sent as `authorization: Bearer <token>` with every call.
    pub token: Option<String>,
    /// PEM CA certificate(s): connect over TLS (`https`) and trust only these.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// TLS server name to check the certificate against (default: the host of the address).
    pub tls_domain: Option<String>,
    /// Per-app secrets, learned from RegisterShuffle or set beforehand; shared by clones.
    pub app_secrets: AppSecrets,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            batch_bytes_max: 4 << 20,
            batch_blocks_max: 16_384,
            batches_in_flight_max: 4,
            retry_later_max: 3_000,
            stream_restarts_max: 5,
            token: None,
            tls_ca_pem: None,
            tls_domain: None,
            app_secrets: AppSecrets::default(),
        }
    }
}

#[derive(Clone)]
pub struct Client {
    addr: String,
    channel: Channel,
    inner: ShuffleServiceClient<Channel>,
    /// `Bearer <token>`, checked once at connect.
    bearer: Option<AsciiMetadataValue>,
    pub options: ClientOptions,
}

/// What a commit answered.
#[derive(Clone, Debug, PartialEq)]
pub struct CommitOutcome {
    pub committed: bool,
    pub committed_attempt_id: u64,
    /// The winner's promises on other servers (see `pb::CommitMapAttemptRequest::peers`).
    pub winner_peers: Vec<pb::PeerPromise>,
}

/// Counters of one map attempt's push.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PushStats {
    pub blocks: u64,
    pub bytes: u64,
    pub batches: u64,
    pub retry_later: u64,
    pub stream_restarts: u64,
    pub duplicate_blocks: u64,
}

impl Client {
    pub async fn connect(addr: &str, options: ClientOptions) -> Result<Client> {
        let connect_err = |message: String| ClientError::Connect {
            addr: addr.into(),
            message,
        };
        let tls = options.tls_ca_pem.is_some() || addr.starts_with("https://");
        let uri = if addr.contains("://") {
            addr.to_string()
        } else if tls {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        };
        let bearer = match &options.token {
            Some(t) => Some(
                AsciiMetadataValue::try_from(format!("Bearer {}", t.trim())).map_err(|_| {
                    connect_err("the token holds characters not allowed in metadata".into())
                })?,
            ),
            None => None,
        };
        let mut endpoint =
            Endpoint::from_shared(uri.clone()).map_err(|e| connect_err(e.to_string()))?;
        if tls {
            let mut cfg = ClientTlsConfig::new();
            if let Some(ca) = &options.tls_ca_pem {
                cfg = cfg.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some(d) = &options.tls_domain {
                cfg = cfg.domain_name(d.clone());
            }
            endpoint = endpoint
                .tls_config(cfg)
                .map_err(|e| connect_err(format!("TLS settings: {}", error_chain(&e))))?;
        }
        let endpoint = endpoint
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .max_frame_size(1u32 << 20)
            .initial_stream_window_size(8u32 << 20)
            .initial_connection_window_size(32u32 << 20);
        let channel = endpoint.connect().await.map_err(|e| {
            let mut message = error_chain(&e);
            if tls && message.to_ascii_lowercase().contains("certificate") {
                message.push_str(
                    " (the server's certificate must be signed by the CA given with --tls-ca)",
                );
            }
            connect_err(message)
        })?;
        let inner = ShuffleServiceClient::new(channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        Ok(Client {
            addr: addr.to_string(),
            channel,
            inner,
            bearer,
            options,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The secret of `app` this client knows (learned from RegisterShuffle, or set).
    pub fn app_secret(&self, app: &str) -> Option<String> {
        self.options.app_secrets.get(&self.addr, app)
    }

    /// Uses `secret` for every later call of `app` (for example one saved by `croupier load`).
    pub fn set_app_secret(&self, app: &str, secret: &str) {
        self.options.app_secrets.set(&self.addr, app, secret);
    }

    /// The token and (for a call naming an app) the app secret, as metadata.
    pub fn auth_metadata(&self, app: Option<&str>) -> MetadataMap {
        let mut md = MetadataMap::new();
        if let Some(b) = &self.bearer {
            md.insert(TOKEN_HEADER, b.clone());
        }
        if let Some(secret) = app.and_then(|a| self.app_secret(a)) {
            if let Ok(v) = AsciiMetadataValue::try_from(secret) {
                md.insert(APP_SECRET_HEADER, v);
            }
        }
        md
    }

    /// Opens a Push stream: the generated client's `push`, with [`push_codec::PushCodec`] (each batch
    /// encoded into a buffer allocated once at its length).
    async fn open_push(
        &self,
        request: Request<ReceiverStream<pb::PushBatch>>,
    ) -> std::result::Result<tonic::Streaming<pb::PushAck>, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        grpc.ready()
            .await
            .map_err(|e| Status::unknown(format!("service was not ready: {e}")))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/croupier.v1.ShuffleService/Push",
        );
        let mut request = request;
        request
            .extensions_mut()
            .insert(tonic::GrpcMethod::new("croupier.v1.ShuffleService", "Push"));
        Ok(grpc
            .streaming(request, path, push_codec::PushCodec)
            .await?
            .into_inner())
    }

    /// `msg` with the token and (for a call naming an app) the app secret.
    fn request<T>(&self, msg: T, app: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        *r.metadata_mut() = self.auth_metadata(app);
        r
    }

    /// Registers and returns the whole answer (including the app secret, which is also remembered).
    pub async fn register_shuffle_full(
        &self,
        app: &str,
        shuffle: u32,
        num_maps: u32,
        num_partitions: u32,
    ) -> Result<pb::RegisterShuffleResponse> {
        let r = self
            .inner
            .clone()
            .register_shuffle(self.request(
                pb::RegisterShuffleRequest {
                    app_id: app.into(),
                    shuffle_id: shuffle,
                    num_maps,
                    num_partitions,
                },
                Some(app),
            ))
            .await
            .map_err(|s| ClientError::status(format!("register app {app} shuffle {shuffle}"), s))?
            .into_inner();
        if !r.app_secret.is_empty() {
            self.set_app_secret(app, &r.app_secret);
        }
        Ok(r)
    }

    pub async fn register_shuffle(
        &self,
        app: &str,
        shuffle: u32,
        num_maps: u32,
        num_partitions: u32,
    ) -> Result<bool> {
        Ok(self
            .register_shuffle_full(app, shuffle, num_maps, num_partitions)
            .await?
            .created)
    }

    pub fn pusher(&self, app: &str, shuffle: u32, map_index: u32, attempt_id: u64) -> MapPusher {
        MapPusher::new(self.clone(), app, shuffle, map_index, attempt_id)
    }

    pub async fn commit(
        &self,
        app: &str,
        shuffle: u32,
        map_index: u32,
        attempt_id: u64,
        partitions: Vec<pb::PartitionCount>,
    ) -> Result<CommitOutcome> {
        self.commit_with_peers(app, shuffle, map_index, attempt_id, partitions, Vec::new())
            .await
    }

    /// A commit that also records what the attempt pushed to other servers (`peers`): for the server
    /// that decides a map spread over several servers.
    pub async fn commit_with_peers(
        &self,
        app: &str,
        shuffle: u32,
        map_index: u32,
        attempt_id: u64,
        partitions: Vec<pb::PartitionCount>,
        peers: Vec<pb::PeerPromise>,
    ) -> Result<CommitOutcome> {
        self.commit_request(pb::CommitMapAttemptRequest {
            app_id: app.into(),
            shuffle_id: shuffle,
            map_index,
            attempt_id,
            partitions,
            peers,
            blocks: Vec::new(),
        })
        .await
    }

    /// A commit that carries the attempt's blocks for this server (`blocks`, numbered and checksummed as
    /// in a push: see [`new_block`]) instead of pushing them first: one call for a small map output. Fails
    /// with RESOURCE_EXHAUSTED when the server has no memory for them (push them, then commit).
    pub async fn commit_with_blocks(
        &self,
        app: &str,
        shuffle: u32,
        map_index: u32,
        attempt_id: u64,
        blocks: Vec<pb::Block>,
    ) -> Result<CommitOutcome> {
        self.commit_request(pb::CommitMapAttemptRequest {
            app_id: app.into(),
            shuffle_id: shuffle,
            map_index,
            attempt_id,
            partitions: partition_counts_of(&blocks),
            peers: Vec::new(),
            blocks,
        })
        .await
    }

    async fn commit_request(&self, r: pb::CommitMapAttemptRequest) -> Result<CommitOutcome> {
        let what = format!(
            "commit app {} shuffle {} map {} attempt {}",
            r.app_id, r.shuffle_id, r.map_index, r.attempt_id
        );
        let app = r.app_id.clone();
        let r = self
            .inner
            .clone()
            .commit_map_attempt(self.request(r, Some(&app)))
            .await
            .map_err(|s| ClientError::status(what, s))?
            .into_inner();
        Ok(CommitOutcome {
            committed: r.committed,
            committed_attempt_id: r.committed_attempt_id,
            winner_peers: r.winner_peers,
        })
    }

    /// Fetches and checks; calls `on_block` for every block in order.
    pub async fn fetch_with(
        &self,
        request: pb::FetchRequest,
        mut on_block: impl FnMut(&pb::FetchedBlock),
    ) -> Result<pb::FetchSummary> {
        let what = format!(
            "fetch app {} shuffle {} partitions {}..{} maps {}..{}",
            request.app_id,
            request.shuffle_id,
            request.partition_start,
            request.partition_end,
            request.map_start,
            request.map_end
        );
        let app = request.app_id.clone();
        let mut stream = self
            .inner
            .clone()
            .fetch(self.request(request, Some(&app)))
            .await
            .map_err(|s| ClientError::status(&what, s))?
            .into_inner();
        let mut check = FetchChecker::default();
        loop {
            let msg = stream
                .message()
                .await
                .map_err(|s| ClientError::status(&what, s))?;
            let Some(msg) = msg else {
                return Err(ClientError::Protocol(format!(
                    "{what}: stream ended without a summary"
                )));
            };
            match msg.kind {
                Some(pb::fetch_response::Kind::Chunk(chunk)) => {
                    for b in &chunk.blocks {
                        check
                            .block(b)
                            .map_err(|e| ClientError::Corrupt(format!("{what}: {e}")))?;
                        on_block(b);
                    }
                }
                Some(pb::fetch_response::Kind::Summary(summary)) => {
                    check
                        .finish(&summary)
                        .map_err(|e| ClientError::Corrupt(format!("{what}: {e}")))?;
                    // Read the end of the stream (its trailers) instead of resetting it.
                    match stream.message().await {
                        Ok(None) => return Ok(summary),
                        Ok(Some(_)) => {
                            return Err(ClientError::Protocol(format!(
                                "{what}: data after the summary"
                            )))
                        }
                        Err(s) => return Err(ClientError::status(&what, s)),
                    }
                }
                None => return Err(ClientError::Protocol(format!("{what}: empty message"))),
            }
        }
    }

    /// Fetches and returns every block.
    pub async fn fetch(
        &self,
        request: pb::FetchRequest,
    ) -> Result<(Vec<pb::FetchedBlock>, pb::FetchSummary)> {
        let mut blocks = Vec::new();
        let summary = self.fetch_with(request, |b| blocks.push(b.clone())).await?;
        Ok((blocks, summary))
    }

    pub async fn unregister_shuffle(&self, app: &str, shuffle: u32) -> Result<bool> {
        let r = self
            .inner
            .clone()
            .unregister_shuffle(self.request(
                pb::UnregisterShuffleRequest {
                    app_id: app.into(),
                    shuffle_id: shuffle,
                },
                Some(app),
            ))
            .await
            .map_err(|s| {
                ClientError::status(format!("unregister app {app} shuffle {shuffle}"), s)
            })?;
        Ok(r.into_inner().existed)
    }

    pub async fn unregister_app(&self, app: &str) -> Result<bool> {
        let r = self
            .inner
            .clone()
            .unregister_app(
                self.request(pb::UnregisterAppRequest { app_id: app.into() }, Some(app)),
            )
            .await
            .map_err(|s| ClientError::status(format!("unregister app {app}"), s))?;
        Ok(r.into_inner().existed)
    }

    pub async fn heartbeat(&self, app: &str) -> Result<bool> {
        let r = self
            .inner
            .clone()
            .heartbeat(self.request(pb::HeartbeatRequest { app_id: app.into() }, Some(app)))
            .await
            .map_err(|s| ClientError::status(format!("heartbeat app {app}"), s))?;
        Ok(r.into_inner().known)
    }

    pub async fn status(&self) -> Result<pb::ServerStatus> {
        let r = self
            .inner
            .clone()
            .get_server_status(self.request(pb::GetServerStatusRequest {}, None))
            .await
            .map_err(|s| ClientError::status("server status", s))?;
        Ok(r.into_inner())
    }

    /// The raw generated client, for tests that need to send malformed requests. It adds no
    /// metadata: use [`Client::auth_metadata`] for a server with a token or app secrets.
    pub fn raw(&self) -> ShuffleServiceClient<Channel> {
        self.inner.clone()
    }
}

/// Checks a fetch stream: CRCs, order, seq continuity, and the closing summary.
#[derive(Default)]
pub struct FetchChecker {
    last: Option<(u32, u32, u32)>,
    /// (map, attempt) -> (blocks, bytes)
    per_map: BTreeMap<u32, (u64, u64, u64)>,
}

impl FetchChecker {
    pub fn block(&mut self, b: &pb::FetchedBlock) -> std::result::Result<(), String> {
        let actual = crc32fast::hash(&b.data);
        if actual != b.crc32 {
            return Err(format!(
                "block partition {} map {} seq {} fails its checksum (expected {:#010x}, got {actual:#010x})",
                b.partition_id, b.map_index, b.seq, b.crc32
            ));
        }
        let here = (b.partition_id, b.map_index, b.seq);
        let expected_seq = match self.last {
            Some((p, m, s)) if p == b.partition_id && m == b.map_index => s + 1,
            Some(last) if (last.0, last.1) > (here.0, here.1) => {
                return Err(format!(
                    "block {here:?} arrived after {last:?}: out of order"
                ))
            }
            _ => 0,
        };
        if b.seq != expected_seq {
            return Err(format!(
                "partition {} map {}: expected seq {expected_seq}, got {}",
                b.partition_id, b.map_index, b.seq
            ));
        }
        self.last = Some(here);
        let e = self
            .per_map
            .entry(b.map_index)
            .or_insert((b.attempt_id, 0, 0));
        if e.0 != b.attempt_id {
            return Err(format!(
                "map {} served from attempts {} and {}",
                b.map_index, e.0, b.attempt_id
            ));
        }
        e.1 += 1;
        e.2 += b.data.len() as u64;
        Ok(())
    }

    pub fn finish(&self, summary: &pb::FetchSummary) -> std::result::Result<(), String> {
        for m in &summary.maps {
            let got = self
                .per_map
                .get(&m.map_index)
                .copied()
                .unwrap_or((m.attempt_id, 0, 0));
            if (got.0, got.1, got.2) != (m.attempt_id, m.blocks, m.bytes) {
                return Err(format!(
                    "map {}: received {} blocks / {} bytes of attempt {}, the summary promises {} / {} of attempt {}",
                    m.map_index, got.1, got.2, got.0, m.blocks, m.bytes, m.attempt_id
                ));
            }
        }
        for map in self.per_map.keys() {
            if !summary.maps.iter().any(|m| m.map_index == *map) {
                return Err(format!("map {map} was served but is not in the summary"));
            }
        }
        Ok(())
    }
}

/// A broken connection (as opposed to an answer of the server): worth a resend on a new stream.
fn is_transport_error(s: &Status) -> bool {
    let m = s.message().to_ascii_lowercase();
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
    ) && [
        "transport",
        "connection",
        "broken pipe",
        "h2 protocol",
        "stream no longer needed",
        "reset",
    ]
    .iter()
    .any(|w| m.contains(w))
}

struct PushStream {
    tx: mpsc::Sender<pb::PushBatch>,
    acks: tonic::Streaming<pb::PushAck>,
}

/// A block as a push sends it: `seq` counts the partition's blocks of this attempt from 0.
pub fn new_block(partition_id: u32, seq: u32, data: Bytes) -> pb::Block {
    pb::Block {
        partition_id,
        seq,
        crc32: crc32fast::hash(&data),
        data,
    }
}

/// Blocks and bytes per partition of `blocks`, by partition: what a commit promises for them.
pub fn partition_counts_of(blocks: &[pb::Block]) -> Vec<pb::PartitionCount> {
    let mut counts: std::collections::BTreeMap<u32, (u32, u64)> = Default::default();
    for b in blocks {
        let c = counts.entry(b.partition_id).or_default();
        c.0 += 1;
        c.1 += b.data.len() as u64;
    }
    counts
        .into_iter()
        .map(|(partition_id, (blocks, bytes))| pb::PartitionCount {
            partition_id,
            blocks,
            bytes,
        })
        .collect()
}

/// Pushes one map attempt. Call [`MapPusher::push`] per block, then [`MapPusher::finish`], then commit
/// with [`MapPusher::partition_counts`] (or use [`MapPusher::commit`]).
pub struct MapPusher {
    client: Client,
    app: String,
    shuffle: u32,
    map_index: u32,
    attempt_id: u64,
    /// partition -> (blocks pushed, bytes pushed)
    counts: BTreeMap<u32, (u32, u64)>,
    batch: Vec<pb::Block>,
    batch_bytes: usize,
    next_batch_id: u64,
    unacked: VecDeque<pb::PushBatch>,
    stream: Option<PushStream>,
    pub stats: PushStats,
    /// Set when the server says another attempt committed the map.
    pub committed_by: Option<u64>,
}

impl MapPusher {
    fn new(client: Client, app: &str, shuffle: u32, map_index: u32, attempt_id: u64) -> Self {
        MapPusher {
            client,
            app: app.to_string(),
            shuffle,
            map_index,
            attempt_id,
            counts: BTreeMap::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            next_batch_id: 0,
            unacked: VecDeque::new(),
            stream: None,
            stats: PushStats::default(),
            committed_by: None,
        }
    }

    fn what(&self) -> String {
        format!(
            "push app {} shuffle {} map {} attempt {}",
            self.app, self.shuffle, self.map_index, self.attempt_id
        )
    }

    pub async fn push(&mut self, partition_id: u32, data: Bytes) -> Result<()> {
        if self.committed_by.is_some() {
            return Ok(());
        }
        let e = self.counts.entry(partition_id).or_insert((0, 0));
        let block = new_block(partition_id, e.0, data);
        e.0 += 1;
        e.1 += block.data.len() as u64;
        self.stats.blocks += 1;
        self.stats.bytes += block.data.len() as u64;
        self.batch_bytes += block.data.len();
        self.batch.push(block);
        if self.batch_bytes >= self.client.options.batch_bytes_max
            || self.batch.len() >= self.client.options.batch_blocks_max
        {
            self.send_batch().await?;
        }
        Ok(())
    }

    async fn send_batch(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = pb::PushBatch {
            app_id: self.app.clone(),
            shuffle_id: self.shuffle,
            map_index: self.map_index,
            attempt_id: self.attempt_id,
            batch_id: self.next_batch_id,
            blocks: std::mem::take(&mut self.batch),
        };
        self.batch_bytes = 0;
        self.next_batch_id += 1;
        self.stats.batches += 1;
        while self.unacked.len() >= self.client.options.batches_in_flight_max {
            self.recv_ack().await?;
            if self.committed_by.is_some() {
                return Ok(());
            }
        }
        self.unacked.push_back(batch.clone());
        if self.stream.is_none() {
            // A previous send failed: everything unacknowledged goes out again on a new stream, in
            // order, so the server never sees a seq gap.
            return self.reopen_and_resend().await;
        }
        self.send(batch).await;
        Ok(())
    }

    async fn open_stream(&mut self) -> Result<()> {
        let (tx, rx) = mpsc::channel(self.client.options.batches_in_flight_max.max(1) * 2);
        let acks = self
            .client
            .open_push(
                self.client
                    .request(ReceiverStream::new(rx), Some(&self.app)),
            )
            .await
            .map_err(|s| ClientError::status(self.what(), s))?;
        self.stream = Some(PushStream { tx, acks });
        Ok(())
    }

    /// Sends on the current stream. A failed send drops the stream; the next ack read notices.
    async fn send(&mut self, batch: pb::PushBatch) {
        if let Some(stream) = self.stream.as_ref() {
            if stream.tx.send(batch).await.is_err() {
                self.stream = None;
            }
        }
    }

    /// Go-back-N on the current stream: resends every unacknowledged batch, oldest first.
    async fn resend_unacked(&mut self) {
        let pending: Vec<pb::PushBatch> = self.unacked.iter().cloned().collect();
        for b in pending {
            self.send(b).await;
        }
    }

    /// Opens a new stream and sends every unacknowledged batch on it, oldest first.
    async fn reopen_and_resend(&mut self) -> Result<()> {
        self.open_stream().await?;
        self.resend_unacked().await;
        Ok(())
    }

    async fn restart(&mut self, why: String) -> Result<()> {
        self.stream = None;
        self.stats.stream_restarts += 1;
        if self.stats.stream_restarts > u64::from(self.client.options.stream_restarts_max) {
            return Err(ClientError::Protocol(format!(
                "{}: giving up after {} stream restarts: {why}",
                self.what(),
                self.stats.stream_restarts - 1
            )));
        }
        tracing::warn!(what = %self.what(), %why, "push stream broke; resending unacknowledged batches");
        tokio::time::sleep(Duration::from_millis(100 * self.stats.stream_restarts)).await;
        self.reopen_and_resend().await
    }

    async fn recv_ack(&mut self) -> Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return self.restart("stream closed".into()).await;
        };
        let ack = match stream.acks.message().await {
            Ok(Some(a)) => a,
            Ok(None) => return self.restart("server closed the stream".into()).await,
            Err(s) if is_transport_error(&s) => return self.restart(format!("{s}")).await,
            Err(s) => return Err(ClientError::status(self.what(), s)),
        };
        let Some(front) = self.unacked.front() else {
            return Err(ClientError::Protocol(format!(
                "{}: ack for batch {} with nothing in flight",
                self.what(),
                ack.batch_id
            )));
        };
        let status = pb::PushStatus::try_from(ack.status).unwrap_or(pb::PushStatus::Unspecified);
        if ack.batch_id != front.batch_id {
            if status == pb::PushStatus::RetryLater {
                return Ok(()); // a refused copy sent before the go-back; it is being resent
            }
            return Err(ClientError::Protocol(format!(
                "{}: ack for batch {} while batch {} is the oldest in flight",
                self.what(),
                ack.batch_id,
                front.batch_id
            )));
        }
        match status {
            pb::PushStatus::Accepted => {
                self.stats.duplicate_blocks += u64::from(ack.duplicate_blocks);
                self.unacked.pop_front();
                Ok(())
            }
            pb::PushStatus::RetryLater => {
                self.stats.retry_later += 1;
                if self.stats.retry_later > u64::from(self.client.options.retry_later_max) {
                    return Err(ClientError::Protocol(format!(
                        "{}: server still refuses pushes (memory) after {} retries",
                        self.what(),
                        self.stats.retry_later - 1
                    )));
                }
                tokio::time::sleep(Duration::from_millis(u64::from(ack.retry_after_ms.max(1))))
                    .await;
                if self.stream.is_none() {
                    return self.reopen_and_resend().await;
                }
                self.resend_unacked().await;
                Ok(())
            }
            pb::PushStatus::MapCommitted => {
                self.committed_by = Some(ack.committed_attempt_id);
                self.unacked.clear();
                Ok(())
            }
            pb::PushStatus::Unspecified => Err(ClientError::Protocol(format!(
                "{}: ack without a status",
                self.what()
            ))),
        }
    }

    /// Sends what is buffered and waits until every batch is acknowledged.
    pub async fn finish(&mut self) -> Result<()> {
        self.send_batch().await?;
        while !self.unacked.is_empty() && self.committed_by.is_none() {
            self.recv_ack().await?;
        }
        self.stream = None;
        Ok(())
    }

    pub fn partition_counts(&self) -> Vec<pb::PartitionCount> {
        self.counts
            .iter()
            .map(|(&p, &(blocks, bytes))| pb::PartitionCount {
                partition_id: p,
                blocks,
                bytes,
            })
            .collect()
    }

    /// `finish`, then commit.
    pub async fn commit(mut self) -> Result<(CommitOutcome, PushStats)> {
        self.finish().await?;
        let outcome = self
            .client
            .commit(
                &self.app,
                self.shuffle,
                self.map_index,
                self.attempt_id,
                self.partition_counts(),
            )
            .await?;
        Ok((outcome, self.stats))
    }
}
