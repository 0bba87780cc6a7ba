//! The store: apps, shuffles and disks, and the operations the service layer calls (register, push,
//! commit, fetch, unregister, heartbeat, status). It never sees a protobuf type; requests arrive as
//! validated values and leave as plain structs.
//!
//! Module map:
//! - [`memory`]: the memory budget (high watermark, hard limit, waiting pushes).
//! - [`shuffle`]: per-shuffle state: partition buffers, attempts, commits, in-memory index.
//! - [`disk`]: a data directory and its writer thread (group commit).
//! - [`files`]: every file operation of a shuffle directory.
//! - [`pool`]: segment files of deleted shuffles, recycled for new segments.
//! - [`syncer`]: the final `fdatasync` of finished segments, off the writer thread.
//! - [`recovery`]: rebuilding shuffles from disk at startup.

pub mod disk;
pub mod files;
pub mod memory;
pub mod pool;
pub mod recovery;
pub mod shuffle;
pub mod syncer;

use crate::config::Config;
use crate::error::{Result, StoreError};
use crate::format::{PartitionCount, ShuffleMeta, FORMAT_VERSION};
use crate::ids::{AppId, ShuffleKey};
use bytes::Bytes;
use disk::{Disk, DiskState};
use memory::{Acquire, MemoryBudget};
use parking_lot::{Mutex, RwLock};
use shuffle::{BlockLoc, CommitStart, MapSummary, PushBlock, PushOutcome, Shuffle};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

/// Upper bound of the protobuf bytes a FetchedBlock adds to its data (tags, lengths, ids, crc).
const FETCHED_BLOCK_OVERHEAD_BYTES: u64 = 48;

/// How long a commit waits for a concurrent commit of another attempt of the same map.
const COMMIT_WAIT_MAX: Duration = Duration::from_secs(120);

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct AppLease {
    last_seen: Instant,
    shuffles: BTreeSet<u32>,
}

pub enum PushResult {
    Accepted { duplicate_blocks: u32 },
    RetryLater { retry_after_ms: u32 },
    MapCommitted { attempt_id: u64 },
}

pub struct CommitResult {
    pub committed: bool,
    pub committed_attempt_id: u64,
    /// The winner's promises on other servers, as recorded here.
    pub winner_peers: Vec<crate::format::PeerPromise>,
}

pub struct FetchRequest {
    pub key: ShuffleKey,
    pub partitions: std::ops::Range<u32>,
    /// `end == 0` means all maps.
    pub maps: std::ops::Range<u32>,
    pub accepted: Vec<(u32, u64)>,
    pub chunk_bytes_max: u64,
}

/// One message of a fetch stream.
pub enum FetchItem {
    Blocks(Vec<(BlockLoc, Bytes)>),
    Summary(Vec<MapSummary>),
}

#[derive(serde::Serialize)]
pub struct DiskSnapshot {
    pub path: String,
    pub state: &'static str,
    pub free_bytes: u64,
    pub total_bytes: u64,
    pub used_by_croupier_bytes: u64,
    pub reserve_bytes: u64,
    /// Segment files of deleted shuffles kept for reuse (the segment pool).
    pub segment_pool_bytes: u64,
    pub write_errors: u64,
    pub failure: Option<String>,
}

#[derive(serde::Serialize)]
pub struct ShuffleSnapshot {
    pub app_id: String,
    pub shuffle_id: u32,
    pub num_maps: u32,
    pub num_partitions: u32,
    pub committed_maps: u32,
    pub buffered_bytes: u64,
    pub disk_bytes: u64,
    pub disk: String,
    pub damaged: Option<String>,
    /// True when the shuffle's disk failed after it was placed: its data is gone.
    pub lost: bool,
}

#[derive(serde::Serialize)]
pub struct StatusSnapshot {
    pub version: &'static str,
    pub accepting_pushes: bool,
    pub draining: bool,
    pub memory_used_bytes: u64,
    pub memory_peak_bytes: u64,
    pub memory_high_watermark_bytes: u64,
    pub memory_limit_bytes: u64,
    pub metadata_bytes: u64,
    pub metadata_limit_bytes: u64,
    pub apps: usize,
    pub shuffles: Vec<ShuffleSnapshot>,
    pub disks: Vec<DiskSnapshot>,
    pub push_bytes_total: u64,
    pub push_blocks_total: u64,
    pub push_rejected_total: u64,
    pub fetch_bytes_total: u64,
    pub bytes_in_memory: u64,
    pub bytes_on_disk: u64,
}

pub struct Store {
    pub config: Config,
    pub disks: Vec<Arc<Disk>>,
    pub memory: Arc<MemoryBudget>,
    shuffles: RwLock<HashMap<ShuffleKey, Arc<Shuffle>>>,
    apps: Mutex<HashMap<AppId, AppLease>>,
    draining: AtomicBool,
    fetch_streams: Arc<Semaphore>,
    push_bytes_total: AtomicU64,
    push_blocks_total: AtomicU64,
    push_rejected_total: AtomicU64,
    fetch_bytes_total: AtomicU64,
    /// Serializes registrations so that two concurrent ones of the same shuffle create it once.
    register_lock: tokio::sync::Mutex<()>,
}

impl Store {
    /// Opens every data dir, recovers the shuffles found there, and starts the disk writers.
    pub fn open(config: Config) -> Result<Arc<Store>, String> {
        config.validate()?;
        let memory = Arc::new(
            MemoryBudget::new(
                config.memory_budget_bytes,
                config.memory_high_watermark_bytes(),
            )
            .with_metadata_limit(config.metadata_bytes_max),
        );
        let mut disks = Vec::new();
        for (i, dir) in config.data_dirs.iter().enumerate() {
            std::fs::create_dir_all(dir.join("apps"))
                .map_err(|e| format!("data dir {}: {e}", dir.display()))?;
            let root = dir
                .canonicalize()
                .map_err(|e| format!("data dir {}: {e}", dir.display()))?;
            if config.io == crate::config::IoMode::Direct {
                files::probe_direct(&root)?;
            }
            let disk = Disk::start(
                i as u32,
                root,
                config.disk_reserve_bytes,
                config.segment_pool_bytes_max,
                pool::pool_file_bytes_min(config.segment_bytes_max),
                memory.clone(),
                config.durability,
            )
            .map_err(|e| format!("starting the writer of {}: {e}", dir.display()))?;
            disks.push(disk);
        }
        let store = Arc::new(Store {
            fetch_streams: Arc::new(Semaphore::new(config.fetch_streams_max as usize)),
            config,
            disks,
            memory,
            shuffles: RwLock::new(HashMap::new()),
            apps: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            push_bytes_total: AtomicU64::new(0),
            push_blocks_total: AtomicU64::new(0),
            push_rejected_total: AtomicU64::new(0),
            fetch_bytes_total: AtomicU64::new(0),
            register_lock: tokio::sync::Mutex::new(()),
        });
        for disk in &store.disks {
            for shuffle in recovery::recover_disk(disk, &store.memory, &store.config) {
                store.adopt(Arc::new(shuffle));
            }
        }
        if store.config.segment_pool_prefill_bytes > 0 {
            for disk in &store.disks {
                start_pool_prefill(&store, disk).map_err(|e| {
                    format!("starting the pool prefill of {}: {e}", disk.root.display())
                })?;
            }
        }
        Ok(store)
    }

    fn adopt(&self, shuffle: Arc<Shuffle>) {
        let key = shuffle.key.clone();
        self.apps
            .lock()
            .entry(key.app.clone())
            .or_insert_with(|| AppLease {
                last_seen: Instant::now(),
                shuffles: BTreeSet::new(),
            })
            .shuffles
            .insert(key.shuffle_id);
        self.shuffles.write().insert(key, shuffle);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn set_draining(&self, on: bool) {
        self.draining.store(on, Ordering::Release);
    }

    pub fn healthy_disks(&self) -> usize {
        self.disks.iter().filter(|d| d.takes_new_shuffles()).count()
    }

    /// True when pushes are accepted: not draining, a healthy disk, under the memory and metadata limits.
    pub fn accepting_pushes(&self) -> bool {
        !self.is_draining()
            && self.healthy_disks() > 0
            && self.memory.used_bytes() < self.memory.limit_bytes
            && !self.memory.metadata_full()
    }

    fn touch(&self, app: &AppId) -> bool {
        match self.apps.lock().get_mut(app) {
            Some(lease) => {
                lease.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    fn shuffle(&self, key: &ShuffleKey) -> Result<Arc<Shuffle>> {
        self.touch(&key.app);
        let shuffle = self.shuffles.read().get(key).cloned().ok_or_else(|| {
            StoreError::NotFound(format!("{key} is not registered on this server"))
        })?;
        if shuffle.is_lost() {
            return Err(shuffle.lost_error());
        }
        Ok(shuffle)
    }

    pub async fn register_shuffle(
        &self,
        key: ShuffleKey,
        num_maps: u32,
        num_partitions: u32,
    ) -> Result<bool> {
        if num_maps == 0 || num_maps > self.config.maps_max {
            return Err(StoreError::invalid(
                "num_maps",
                format!("{num_maps} is out of range 1..={}", self.config.maps_max),
            ));
        }
        if num_partitions == 0 || num_partitions > self.config.partitions_max {
            return Err(StoreError::invalid(
                "num_partitions",
                format!(
                    "{num_partitions} is out of range 1..={}",
                    self.config.partitions_max
                ),
            ));
        }
        let _guard = self.register_lock.lock().await;
        let lost = self
            .shuffles
            .read()
            .get(&key)
            .filter(|s| s.is_lost())
            .cloned();
        if let Some(lost) = lost {
            // Its disk failed: the data is gone. A new registration places the shuffle again.
            tracing::warn!(shuffle = %key, "re-registering a shuffle lost with its disk");
            self.shuffles.write().remove(&key);
            self.destroy(lost).await;
        }
        if let Some(existing) = self.shuffles.read().get(&key).cloned() {
            self.touch(&key.app);
            if existing.num_maps != num_maps || existing.num_partitions != num_partitions {
                return Err(StoreError::FailedPrecondition(format!(
                    "{key} is registered with num_maps {} and num_partitions {}; this registration says {num_maps} and {num_partitions}",
                    existing.num_maps, existing.num_partitions
                )));
            }
            return Ok(false);
        }
        if self.is_draining() {
            return Err(StoreError::Unavailable(
                "server is draining: no new shuffles".into(),
            ));
        }
        if self.shuffles.read().len() >= self.config.shuffles_max as usize {
            return Err(StoreError::Overloaded {
                message: format!(
                    "server holds its maximum of {} shuffles",
                    self.config.shuffles_max
                ),
                retry_after_ms: 10_000,
            });
        }
        let disk = self.pick_disk()?;
        let dir = disk
            .apps_dir()
            .join(key.app.as_str())
            .join(key.shuffle_id.to_string());
        let meta = ShuffleMeta {
            format_version: FORMAT_VERSION,
            shuffle_id: key.shuffle_id,
            num_maps,
            num_partitions,
            created_at_ms: now_ms(),
            app_id: key.app.to_string(),
        };
        let segment_bytes_max = self.config.segment_bytes_max;
        let dir2 = dir.clone();
        // Directories of this (app, shuffle) left on any disk (a delete that failed, or a shuffle that
        // could not be recovered) hold nothing live: remove them so their old logs are never replayed.
        let leftovers: Vec<std::path::PathBuf> = self
            .disks
            .iter()
            .map(|d| {
                d.apps_dir()
                    .join(key.app.as_str())
                    .join(key.shuffle_id.to_string())
            })
            .filter(|p| p.exists())
            .collect();
        let direct = self.config.io == crate::config::IoMode::Direct;
        let pool = disk.pool.clone();
        let syncer = disk.syncer.clone();
        let files = tokio::task::spawn_blocking(move || -> Result<files::ShuffleFiles> {
            for old in leftovers {
                tracing::warn!(dir = %old.display(), "removing a leftover directory of a re-registered shuffle");
                std::fs::remove_dir_all(&old).map_err(|e| StoreError::io(&old, e))?;
            }
            std::fs::create_dir_all(&dir2).map_err(|e| StoreError::io(&dir2, e))?;
            let mut body = Vec::new();
            meta.encode_body(&mut body);
            files::write_meta(&dir2, &body)?;
            // Make the new directory entries durable: <app>/<shuffle> in <app>, <app> in apps/.
            if let Some(app_dir) = dir2.parent() {
                files::sync_dir(app_dir)?;
                if let Some(apps_dir) = app_dir.parent() {
                    files::sync_dir(apps_dir)?;
                }
            }
            files::ShuffleFiles::open(
                &dir2,
                segment_bytes_max,
                &[],
                direct,
                Some(pool),
                Some(syncer),
            )
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("registration task failed: {e}")))??;
        let shuffle = Shuffle::new(
            key.clone(),
            num_maps,
            num_partitions,
            disk,
            self.memory.clone(),
            dir,
            files,
        );
        self.adopt(Arc::new(shuffle));
        self.touch(&key.app);
        metrics::counter!("croupier_shuffles_registered_total").increment(1);
        Ok(true)
    }

    /// The healthy disk with the most free space.
    fn pick_disk(&self) -> Result<Arc<Disk>> {
        for d in &self.disks {
            d.refresh_space();
        }
        self.disks
            .iter()
            .filter(|d| d.takes_new_shuffles())
            .max_by_key(|d| d.space().0)
            .cloned()
            .ok_or_else(|| {
                let states: Vec<String> = self
                    .disks
                    .iter()
                    .map(|d| format!("{} {}", d.root.display(), d.state().as_str()))
                    .collect();
                if self.disks.iter().any(|d| d.state() == DiskState::Full) {
                    StoreError::NoSpace(format!(
                        "no disk has room for a new shuffle ({})",
                        states.join(", ")
                    ))
                } else {
                    StoreError::Unavailable(format!("no healthy disk ({})", states.join(", ")))
                }
            })
    }

    /// Probes every disk once (write, fsync, read back), failing those that error or time out.
    pub async fn probe_disks(&self) {
        let timeout = Duration::from_millis(self.config.disk_probe_timeout_ms);
        for disk in &self.disks {
            let d = disk.clone();
            let probe = tokio::task::spawn_blocking(move || files::probe_dir(&d.root));
            match tokio::time::timeout(timeout, probe).await {
                Ok(Ok(Ok(()))) => disk.probe_succeeded(),
                Ok(Ok(Err(StoreError::NoSpace(_)))) => {
                    // A full file system is not a failed disk.
                    disk.refresh_space();
                }
                Ok(Ok(Err(e))) => probe_failed(disk, &format!("probe failed: {e}")),
                Ok(Err(e)) => probe_failed(disk, &format!("probe task failed: {e}")),
                Err(_) => probe_failed(
                    disk,
                    &format!("probe took longer than {} ms", timeout.as_millis()),
                ),
            }
        }
    }

    /// Stores one push batch. `held_bytes`: the memory its blocks keep allocated when that is more than
    /// their payload (blocks that are slices of received HTTP/2 frames keep whole frames alive); 0 when
    /// each block is its own buffer. The batch is charged the larger of the two.
    pub async fn push(
        &self,
        key: &ShuffleKey,
        map_index: u32,
        attempt_id: u64,
        blocks: Vec<PushBlock>,
        held_bytes: u64,
    ) -> Result<PushResult> {
        let shuffle = self.shuffle(key)?;
        if self.is_draining() {
            return Err(StoreError::Unavailable(
                "server is draining: pushes are refused".into(),
            ));
        }
        shuffle.validate_push(map_index, &blocks)?;
        check_room(&shuffle)?;
        if self.memory.metadata_full() {
            return Err(StoreError::MetadataFull(format!(
                "the server holds {} bytes of block index and commit records, at its metadata_bytes_max of {}; no pushes are taken until shuffles are unregistered (push larger blocks, or raise metadata_bytes_max)",
                self.memory.metadata_bytes(),
                self.memory.metadata_limit_bytes
            )));
        }
        let bytes: u64 = blocks.iter().map(|b| b.data.len() as u64).sum();
        let block_count = blocks.len() as u64;
        // Tiny blocks cost far more than their payload: charge each one's overhead too (capped, so that
        // a batch always fits the budget).
        let charged = (bytes.max(held_bytes) + block_count * memory::BLOCK_OVERHEAD_BYTES)
            .min(self.memory.limit_bytes);
        // One deadline for both waits: the writer's queue, then the memory budget.
        let deadline = Instant::now() + Duration::from_millis(self.config.push_wait_ms_max);
        if let Some(waited) = shuffle
            .disk
            .wait_for_queue_room(self.config.write_queue_bytes_max, deadline)
            .await
        {
            metrics::histogram!("croupier_push_write_queue_wait_seconds")
                .record(waited.as_secs_f64());
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        if let Acquire::Refused = self.memory.acquire(charged, wait).await {
            self.push_rejected_total.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("croupier_push_rejected_total", "reason" => "memory").increment(1);
            return Ok(PushResult::RetryLater {
                retry_after_ms: self.config.push_retry_after_ms,
            });
        }
        // Dropping the last holder of the charge gives the batch's bytes back: on error, for a batch
        // of duplicates or a discarded one at once, otherwise when its last block is written.
        let charge = memory::Charge::new(self.memory.clone(), charged);
        let outcome = shuffle.push(
            map_index,
            attempt_id,
            blocks,
            self.config.chunk_bytes_target,
            self.config.write_behind_bytes_min,
            charge,
        )?;
        match outcome {
            PushOutcome::MapCommitted(winner) => {
                Ok(PushResult::MapCommitted { attempt_id: winner })
            }
            PushOutcome::Accepted {
                duplicate_blocks,
                duplicate_bytes,
            } => {
                self.push_bytes_total
                    .fetch_add(bytes - duplicate_bytes, Ordering::Relaxed);
                self.push_blocks_total
                    .fetch_add(block_count - u64::from(duplicate_blocks), Ordering::Relaxed);
                metrics::counter!("croupier_push_bytes_total").increment(bytes - duplicate_bytes);
                metrics::counter!("croupier_push_blocks_total")
                    .increment(block_count - u64::from(duplicate_blocks));
                if duplicate_blocks > 0 {
                    metrics::counter!("croupier_push_duplicate_blocks_total")
                        .increment(u64::from(duplicate_blocks));
                }
                Ok(PushResult::Accepted { duplicate_blocks })
            }
        }
    }

    /// See [`Shuffle::attempt_is_committing_or_committed`]: a retried commit with inline blocks skips
    /// storing them again.
    pub fn attempt_is_committing_or_committed(
        &self,
        key: &ShuffleKey,
        map_index: u32,
        attempt_id: u64,
    ) -> Result<bool> {
        Ok(self
            .shuffle(key)?
            .attempt_is_committing_or_committed(map_index, attempt_id))
    }

    pub async fn commit(
        &self,
        key: &ShuffleKey,
        map_index: u32,
        attempt_id: u64,
        promised: Vec<PartitionCount>,
        peers: Vec<crate::format::PeerPromise>,
    ) -> Result<CommitResult> {
        let shuffle = self.shuffle(key)?;
        let started = Instant::now();
        loop {
            let changed = shuffle.commit_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match shuffle.begin_commit(
                map_index,
                attempt_id,
                promised.clone(),
                peers.clone(),
                now_ms(),
            )? {
                CommitStart::Done(winner) => {
                    return Ok(CommitResult {
                        committed: winner.attempt_id == attempt_id,
                        committed_attempt_id: winner.attempt_id,
                        winner_peers: winner.peers.clone(),
                    })
                }
                CommitStart::Wait => {
                    if started.elapsed() > COMMIT_WAIT_MAX {
                        return Err(StoreError::Overloaded {
                            message: format!("map {map_index} of {key} is still being committed by another attempt"),
                            retry_after_ms: 1_000,
                        });
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(200), changed).await;
                }
                CommitStart::Queued { written, record } => {
                    let result = written.await.unwrap_or_else(|_| {
                        Err(StoreError::Unavailable(
                            "the disk writer dropped the commit".into(),
                        ))
                    });
                    let ok = result.is_ok();
                    shuffle.finish_commit(record, ok);
                    metrics::histogram!("croupier_commit_latency_seconds")
                        .record(started.elapsed().as_secs_f64());
                    result?;
                    metrics::counter!("croupier_commits_total").increment(1);
                    return Ok(CommitResult {
                        committed: true,
                        committed_attempt_id: attempt_id,
                        winner_peers: peers,
                    });
                }
            }
        }
    }

    /// Plans a fetch and starts streaming it. The receiver yields block groups, then one summary.
    pub async fn fetch(&self, req: FetchRequest) -> Result<mpsc::Receiver<Result<FetchItem>>> {
        let shuffle = self.shuffle(&req.key)?;
        let p = &req.partitions;
        if p.start >= p.end || p.end > shuffle.num_partitions {
            return Err(StoreError::invalid(
                "partition_start",
                format!(
                    "partition range {}..{} is empty or exceeds num_partitions {} of {}",
                    p.start, p.end, shuffle.num_partitions, req.key
                ),
            ));
        }
        let maps = if req.maps.end == 0 {
            req.maps.start..shuffle.num_maps
        } else {
            req.maps.clone()
        };
        if maps.start >= maps.end || maps.end > shuffle.num_maps {
            return Err(StoreError::invalid(
                "map_start",
                format!(
                    "map range {}..{} is empty or exceeds num_maps {} of {}",
                    maps.start, maps.end, shuffle.num_maps, req.key
                ),
            ));
        }
        let plan = shuffle.plan_fetch(p.clone(), maps, &req.accepted)?;
        let permit = self
            .fetch_streams
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("server is shutting down".into()))?;
        let chunk_max = if req.chunk_bytes_max == 0 {
            self.config.fetch_chunk_bytes_max
        } else {
            req.chunk_bytes_max.min(self.config.fetch_chunk_bytes_max)
        };
        let (tx, rx) = mpsc::channel(1);
        let started = Instant::now();
        tokio::spawn(async move {
            let _permit = permit;
            stream_plan(shuffle, plan, chunk_max, tx).await;
            metrics::histogram!("croupier_fetch_latency_seconds")
                .record(started.elapsed().as_secs_f64());
        });
        Ok(rx)
    }

    /// Counts a push refused with an error (bad input, unknown shuffle, draining, ...).
    pub fn note_push_refused(&self, reason: &'static str) {
        self.push_rejected_total.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("croupier_push_rejected_total", "reason" => reason).increment(1);
    }

    pub fn note_fetched(&self, bytes: u64) {
        self.fetch_bytes_total.fetch_add(bytes, Ordering::Relaxed);
        metrics::counter!("croupier_fetch_bytes_total").increment(bytes);
    }

    pub async fn unregister_shuffle(&self, key: &ShuffleKey) -> bool {
        let removed = self.shuffles.write().remove(key);
        if let Some(lease) = self.apps.lock().get_mut(&key.app) {
            lease.shuffles.remove(&key.shuffle_id);
            lease.last_seen = Instant::now();
        }
        let Some(shuffle) = removed else { return false };
        self.destroy(shuffle).await;
        true
    }

    async fn destroy(&self, shuffle: Arc<Shuffle>) {
        shuffle.delete();
        let dir = shuffle.dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            recycle_segments(&shuffle);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not delete shuffle directory");
                }
            }
            // Remove the app directory once its last shuffle is gone.
            if let Some(app_dir) = dir.parent() {
                let _ = std::fs::remove_dir(app_dir);
            }
        })
        .await;
        metrics::counter!("croupier_shuffles_deleted_total").increment(1);
    }

    pub async fn unregister_app(&self, app: &AppId) -> bool {
        let lease = self.apps.lock().remove(app);
        let keys: Vec<ShuffleKey> = self
            .shuffles
            .read()
            .keys()
            .filter(|k| &k.app == app)
            .cloned()
            .collect();
        let existed = lease.is_some() || !keys.is_empty();
        for key in keys {
            let removed = self.shuffles.write().remove(&key);
            if let Some(s) = removed {
                self.destroy(s).await;
            }
        }
        existed
    }

    pub fn heartbeat(&self, app: &AppId) -> bool {
        self.touch(app)
    }

    /// Deletes apps whose lease ran out. Returns the expired app ids.
    pub async fn expire_apps(&self) -> Vec<AppId> {
        let timeout = Duration::from_millis(self.config.app_lease_timeout_ms);
        let expired: Vec<AppId> = self
            .apps
            .lock()
            .iter()
            .filter(|(_, l)| l.last_seen.elapsed() > timeout)
            .map(|(a, _)| a.clone())
            .collect();
        for app in &expired {
            tracing::info!(app = %app, "app lease expired; deleting its shuffles");
            metrics::counter!("croupier_apps_expired_total").increment(1);
            self.unregister_app(app).await;
        }
        expired
    }

    /// Writes the largest partition buffers when memory is above the high watermark.
    pub async fn flush_for_memory(&self) {
        let m = &self.memory;
        if !m.over_high_watermark() {
            return;
        }
        let low = m.high_watermark_bytes / 5 * 4;
        let mut wanted = m
            .used_bytes()
            .saturating_sub(low)
            .saturating_sub(m.queued_bytes());
        if wanted == 0 {
            return;
        }
        let mut candidates: Vec<Arc<Shuffle>> = self
            .shuffles
            .read()
            .values()
            .filter(|s| s.buffered_bytes() > 0)
            .cloned()
            .collect();
        candidates.sort_unstable_by_key(|s| std::cmp::Reverse(s.buffered_bytes()));
        for s in candidates {
            if wanted == 0 {
                break;
            }
            let bytes = s.flush_largest_buffers(wanted);
            wanted = wanted.saturating_sub(bytes);
            if bytes > 0 {
                metrics::counter!("croupier_memory_flushes_total").increment(1);
            }
        }
    }

    /// Drops the buffered blocks of shuffles lost with a failed disk (see
    /// [`Shuffle::drop_buffers_if_lost`]). Returns the bytes dropped.
    pub fn drop_lost_buffers(&self) -> u64 {
        let shuffles: Vec<Arc<Shuffle>> = self.shuffles.read().values().cloned().collect();
        let bytes: u64 = shuffles.iter().map(|s| s.drop_buffers_if_lost()).sum();
        if bytes > 0 {
            tracing::warn!(
                bytes,
                "dropped the buffered blocks of shuffles lost with a failed disk"
            );
        }
        bytes
    }

    /// Syncs every shuffle's files (used at shutdown so committed data is durable whatever the
    /// durability setting).
    pub fn sync_all(&self) {
        let shuffles: Vec<Arc<Shuffle>> = self.shuffles.read().values().cloned().collect();
        for s in shuffles {
            let mut f = s.files.lock();
            if let Err(e) = f.sync_data().and_then(|_| f.sync_commits(false)) {
                tracing::error!(shuffle = %s.key, error = %e, "sync at shutdown failed");
            }
        }
    }

    pub fn status(&self) -> StatusSnapshot {
        let shuffles: Vec<Arc<Shuffle>> = self.shuffles.read().values().cloned().collect();
        let mut per_disk: HashMap<u32, u64> = HashMap::new();
        let mut snaps: Vec<ShuffleSnapshot> = shuffles
            .iter()
            .map(|s| {
                let disk_bytes = s.disk_bytes.load(Ordering::Relaxed);
                *per_disk.entry(s.disk.id).or_default() += disk_bytes;
                ShuffleSnapshot {
                    app_id: s.key.app.to_string(),
                    shuffle_id: s.key.shuffle_id,
                    num_maps: s.num_maps,
                    num_partitions: s.num_partitions,
                    committed_maps: s.committed_maps(),
                    buffered_bytes: s.buffered_bytes(),
                    disk_bytes,
                    disk: s.disk.root.display().to_string(),
                    damaged: s.damaged(),
                    lost: s.is_lost(),
                }
            })
            .collect();
        snaps.sort_by(|a, b| (&a.app_id, a.shuffle_id).cmp(&(&b.app_id, b.shuffle_id)));
        let disks = self
            .disks
            .iter()
            .map(|d| {
                let (free, total) = d.space();
                DiskSnapshot {
                    path: d.root.display().to_string(),
                    state: d.state().as_str(),
                    free_bytes: free,
                    total_bytes: total,
                    used_by_croupier_bytes: per_disk.get(&d.id).copied().unwrap_or(0),
                    reserve_bytes: d.reserve_bytes,
                    segment_pool_bytes: d.pool.bytes(),
                    write_errors: d.write_errors.load(Ordering::Relaxed),
                    failure: d.failure(),
                }
            })
            .collect::<Vec<_>>();
        let bytes_on_disk = disks.iter().map(|d| d.used_by_croupier_bytes).sum();
        StatusSnapshot {
            version: env!("CARGO_PKG_VERSION"),
            accepting_pushes: self.accepting_pushes(),
            draining: self.is_draining(),
            memory_used_bytes: self.memory.used_bytes(),
            memory_peak_bytes: self.memory.peak_bytes(),
            memory_high_watermark_bytes: self.memory.high_watermark_bytes,
            memory_limit_bytes: self.memory.limit_bytes,
            metadata_bytes: self.memory.metadata_bytes(),
            metadata_limit_bytes: self.memory.metadata_limit_bytes,
            apps: self.apps.lock().len(),
            shuffles: snaps,
            disks,
            push_bytes_total: self.push_bytes_total.load(Ordering::Relaxed),
            push_blocks_total: self.push_blocks_total.load(Ordering::Relaxed),
            push_rejected_total: self.push_rejected_total.load(Ordering::Relaxed),
            fetch_bytes_total: self.fetch_bytes_total.load(Ordering::Relaxed),
            bytes_in_memory: self.memory.used_bytes(),
            bytes_on_disk,
        }
    }
}

/// Refuses new data for a shuffle whose disk is below its free-space reserve.
/// A failed or slow probe: counted as a disk error (reason `probe`) and the disk taken out of service.
fn probe_failed(disk: &Disk, why: &str) {
    disk.write_errors.fetch_add(1, Ordering::AcqRel);
    metrics::counter!("croupier_disk_errors_total", "disk" => disk.root.display().to_string(), "reason" => "probe")
        .increment(1);
    disk.fail(why);
}

fn check_room(shuffle: &Shuffle) -> Result<()> {
    if shuffle.disk.state() == DiskState::Full {
        let (free, _) = shuffle.disk.space();
        return Err(StoreError::NoSpace(format!(
            "disk {} of {} has {free} bytes free, below its reserve of {} bytes",
            shuffle.disk.root.display(),
            shuffle.key,
            shuffle.disk.reserve_bytes
        )));
    }
    Ok(())
}

/// Reads the planned blocks in runs of adjacent blocks, checks every block's CRC, and sends them.
async fn stream_plan(
    shuffle: Arc<Shuffle>,
    plan: shuffle::FetchPlan,
    chunk_bytes_max: u64,
    tx: mpsc::Sender<Result<FetchItem>>,
) {
    let blocks = plan.blocks;
    let mut i = 0;
    while i < blocks.len() {
        // One message: blocks [i, j) whose encoded size (data plus per-block fields) stays within
        // chunk_bytes_max (at least one block).
        let mut j = i;
        let mut bytes = 0u64;
        while j < blocks.len() {
            let encoded = u64::from(blocks[j].len) + FETCHED_BLOCK_OVERHEAD_BYTES;
            if j > i && bytes + encoded > chunk_bytes_max {
                break;
            }
            bytes += encoded;
            j += 1;
        }
        let group: Vec<BlockLoc> = blocks[i..j].to_vec();
        let s = shuffle.clone();
        let read = tokio::task::spawn_blocking(move || read_group(&s, group))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Unavailable(format!(
                    "fetch read task failed: {e}"
                )))
            });
        let failed = read.is_err();
        if tx.send(read.map(FetchItem::Blocks)).await.is_err() || failed {
            return;
        }
        i = j;
    }
    let _ = tx.send(Ok(FetchItem::Summary(plan.maps))).await;
}

/// Starts the thread that tops up `disk`'s segment pool to `segment_pool_prefill_bytes`
/// ([`pool::SegmentPool::prefill`]). It stops when done, when the store is dropped or draining, when
/// the disk leaves service, or before a file would take the disk below twice its reserve (where the
/// pool starts giving files back).
fn start_pool_prefill(store: &Arc<Store>, disk: &Arc<Disk>) -> std::io::Result<()> {
    let target_bytes = store.config.segment_pool_prefill_bytes;
    let file_bytes = store.config.segment_bytes_max;
    let weak_store = Arc::downgrade(store);
    let disk = disk.clone();
    std::thread::Builder::new()
        .name(format!("croupier-pool-fill-{}", disk.id))
        .spawn(move || {
            let started = Instant::now();
            let low_bytes = disk.reserve_bytes.saturating_mul(2);
            let mut since_space_check = u64::MAX;
            let (done, result) = disk.pool.prefill(target_bytes, file_bytes, || {
                let Some(store) = weak_store.upgrade() else {
                    return false;
                };
                if store.is_draining() || !disk.takes_new_shuffles() {
                    return false;
                }
                // statvfs every 64 MiB, not every 1 MiB step.
                since_space_check =
                    since_space_check.saturating_add(pool::PREFILL_WRITE_BYTES as u64);
                if since_space_check >= 64 << 20 {
                    since_space_check = 0;
                    let free = disk::fs_space(&disk.root).map_or(0, |(free, _)| free);
                    if free < low_bytes.saturating_add(file_bytes.min(64 << 20)) {
                        return false;
                    }
                }
                true
            });
            let pooled_bytes = disk.pool.bytes();
            match result {
                Ok(()) => tracing::info!(
                    disk = %disk.root.display(),
                    written_files = done.files,
                    written_bytes = done.bytes,
                    pooled_bytes,
                    target_bytes,
                    seconds = started.elapsed().as_secs_f64(),
                    "segment pool prefill finished"
                ),
                Err(e) => tracing::warn!(
                    disk = %disk.root.display(),
                    written_bytes = done.bytes,
                    pooled_bytes,
                    error = %e,
                    "segment pool prefill stopped by a write error"
                ),
            }
        })
        .map(|_| ())
}

/// Moves the segment files of a deleted shuffle into its disk's pool (docs/FORMAT.md, section 2), when
/// the disk is in service and nothing uses them any more. First `shuffle.meta` goes, so that a crash
/// from here on leaves a directory restart does not load (its index may point into moved segments);
/// then the files lock is taken, which waits for a running append and stops later ones; then every
/// read handle is removed, and a segment still held by a running fetch is left to be deleted with the
/// directory, never reused under a reader.
fn recycle_segments(shuffle: &Shuffle) {
    let disk = &shuffle.disk;
    let meta = shuffle.dir.join(files::META_FILE);
    if let Err(e) = std::fs::remove_file(&meta) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %meta.display(), error = %e, "could not remove shuffle.meta of a deleted shuffle");
            return;
        }
    }
    shuffle.files.lock().retire();
    let mut readers = shuffle.take_segment_readers();
    // In segment order: the pool hands out its oldest file first, so a shuffle of the same shape gets
    // full-size files for its full segments and does not grow a short last segment into new blocks.
    readers.sort_unstable_by_key(|(id, _)| *id);
    if disk.state() == DiskState::Failed || shuffle.disk_epoch != disk.epoch() {
        return;
    }
    for (id, reader) in readers {
        if Arc::strong_count(&reader) > 1 {
            continue;
        }
        drop(reader);
        let path = shuffle.dir.join(files::segment_file_name(id));
        // A file the pool does not take (full, or empty) goes with the directory.
        disk.pool.put(&path);
    }
}

/// Reads a group of blocks with one positioned read per run of adjacent blocks.
fn read_group(shuffle: &Shuffle, group: Vec<BlockLoc>) -> Result<Vec<(BlockLoc, Bytes)>> {
    let mut out = Vec::with_capacity(group.len());
    let mut i = 0;
    while i < group.len() {
        let first = group[i];
        let mut end = first.data_offset + u64::from(first.len);
        let mut j = i + 1;
        while j < group.len()
            && group[j].segment_id == first.segment_id
            && group[j].data_offset == end
        {
            end += u64::from(group[j].len);
            j += 1;
        }
        let path = shuffle.dir.join(files::segment_file_name(first.segment_id));
        let file = shuffle.segment_reader(first.segment_id).ok_or_else(|| {
            if shuffle.is_deleted() {
                return StoreError::NotFound(format!("{} was unregistered", shuffle.key));
            }
            StoreError::DataCorrupted(format!(
                "{} partition {}: segment file {} is missing",
                shuffle.key,
                first.partition_id,
                path.display()
            ))
        })?;
        let run = files::read_at(
            &file,
            &path,
            first.data_offset,
            (end - first.data_offset) as usize,
        )
        .inspect_err(|e| {
            if let StoreError::Io { .. } = e {
                shuffle.disk.fail(&format!("read failed: {e}"));
            }
        })?;
        let mut pos = 0usize;
        for b in &group[i..j] {
            let data = run.slice(pos..pos + b.len as usize);
            pos += b.len as usize;
            let actual = crc32fast::hash(&data);
            if actual != b.crc32 {
                metrics::counter!("croupier_fetch_corrupt_blocks_total").increment(1);
                return Err(StoreError::DataCorrupted(format!(
                    "{} partition {} map {} attempt {} seq {}: block at offset {} of file {} fails its checksum (expected {:#010x}, found {:#010x}); it was not sent",
                    shuffle.key, b.partition_id, b.map_index, b.attempt_id, b.seq, b.data_offset, path.display(), b.crc32, actual
                )));
            }
            out.push((*b, data));
        }
        i = j;
    }
    Ok(out)
}
