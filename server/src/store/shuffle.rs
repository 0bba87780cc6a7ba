//! One shuffle's state: partition buffers, map attempts and their pushed counts, the commit of each map,
//! and the in-memory index of every block written to disk.
//!
//! All of it sits behind one mutex that is held only for bookkeeping (appending `Bytes` handles to
//! vectors, comparing counters); checksums, disk writes and reads happen outside it. Files are touched
//! only by the disk writer thread through [`ShuffleFiles`].
//!
//! Invariants:
//! - For every (map attempt, partition) the blocks held are exactly seq `0..next_seq`: a retried block
//!   (seq below `next_seq`) is dropped as a duplicate, a gap is refused.
//! - A map has at most one committed attempt, and it never changes once committed.
//! - Only blocks of committed attempts are ever planned for a fetch, and a fetch plan is checked against
//!   the commit's per-partition counts before any byte is sent.

use super::disk::{Disk, WriteJob};
use super::files::{BufferedBlock, PendingChunk, ShuffleFiles, WrittenChunk};
use super::memory::MemoryBudget;
use crate::error::{Result, StoreError};
use crate::format::{
    CommitRecord, PartitionCount, PeerPromise, CHUNK_HEADER_BYTES, COMMIT_PEERS_MAX,
    PEER_SERVER_BYTES_MAX,
};
use crate::ids::ShuffleKey;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, Notify};

/// A partition buffer is written as a chunk at this many blocks even if it is small, which bounds the
/// size of an index record (24 bytes per block).
pub const CHUNK_BLOCKS_MAX: usize = 65_536;

/// Write-behind (see [`Shuffle::push`]) pauses while the disk's queue holds this many
/// `chunk_bytes_target`s: a writer that falls behind then gets full-size chunks again.
pub const WRITE_BEHIND_QUEUE_CHUNKS: u64 = 4;

/// A pushed block, validated (partition in range, CRC matches) but not yet stored.
pub struct PushBlock {
    pub partition_id: u32,
    pub seq: u32,
    /// The CRC-32 the client sent; [`Shuffle::validate_push`] compares it with `data`'s.
    pub crc32: u32,
    pub data: BlockData,
}

/// A block's bytes as they arrived, and their CRC-32 (computed once, when the bytes are taken).
///
/// A block decoded by tonic is one `Bytes`; a block taken from a push stream's HTTP/2 DATA frames
/// (`service::raw_push`) may be split over several frames and is kept as their slices, so it is never
/// copied before the segment write.
#[derive(Clone, Debug)]
pub struct BlockData {
    first: Bytes,
    /// The pieces after `first`, in order (empty for a block in one piece: no allocation).
    rest: Vec<Bytes>,
    len: usize,
    crc32: u32,
}

impl BlockData {
    /// Pieces in order; their CRC was computed as they were taken (`crc32`).
    pub fn from_pieces(first: Bytes, rest: Vec<Bytes>, crc32: u32) -> Self {
        let len = first.len() + rest.iter().map(Bytes::len).sum::<usize>();
        BlockData {
            first,
            rest,
            len,
            crc32,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The CRC-32 of the bytes.
    pub fn crc32(&self) -> u32 {
        self.crc32
    }

    /// The pieces, in order.
    pub fn pieces(&self) -> impl Iterator<Item = &Bytes> {
        std::iter::once(&self.first).chain(self.rest.iter())
    }

    /// The bytes in one buffer (a copy unless the block is one piece).
    #[cfg(test)]
    pub fn to_bytes(&self) -> Bytes {
        if self.rest.is_empty() {
            return self.first.clone();
        }
        let mut out = bytes::BytesMut::with_capacity(self.len);
        for piece in self.pieces() {
            out.extend_from_slice(piece);
        }
        out.freeze()
    }
}

impl From<Bytes> for BlockData {
    fn from(data: Bytes) -> Self {
        let crc32 = crc32fast::hash(&data);
        BlockData::from_pieces(data, Vec::new(), crc32)
    }
}

/// A block on disk.
#[derive(Clone, Copy, Debug)]
pub struct BlockLoc {
    pub partition_id: u32,
    pub map_index: u32,
    pub attempt_id: u64,
    pub seq: u32,
    pub len: u32,
    pub crc32: u32,
    pub segment_id: u32,
    /// Offset of the block's first data byte in the segment file.
    pub data_offset: u64,
}

#[derive(Clone, Debug)]
pub enum MapCommit {
    Open,
    Committing(u64),
    Committed(Arc<CommitRecord>),
}

#[derive(Default)]
struct AttemptState {
    /// partition -> (next expected seq, bytes held)
    partitions: HashMap<u32, (u32, u64)>,
    /// Set when some of the attempt's blocks could not be written: it can never commit.
    lost: Option<String>,
}

#[derive(Default)]
struct PartitionBuffer {
    blocks: Vec<BufferedBlock>,
    bytes: u64,
}

pub struct ShuffleState {
    buffers: Vec<PartitionBuffer>,
    attempts: HashMap<(u32, u64), AttemptState>,
    maps: Vec<MapCommit>,
    index: Vec<Vec<BlockLoc>>,
    /// Why the shuffle is read-only (damage found at recovery), if it is.
    damaged: Option<String>,
    /// Attempts that had uncommitted data when the server restarted. Their blocks before the restart are
    /// gone, so they may never push again (their seq numbers would restart inside old index records).
    dead_attempts: HashSet<(u32, u64)>,
}

pub struct Shuffle {
    pub key: ShuffleKey,
    pub num_maps: u32,
    pub num_partitions: u32,
    pub disk: Arc<Disk>,
    /// The disk's failure epoch when the shuffle was placed; a later failure makes the shuffle lost.
    pub disk_epoch: u64,
    memory: Arc<MemoryBudget>,
    pub dir: PathBuf,
    pub files: Mutex<ShuffleFiles>,
    state: Mutex<ShuffleState>,
    segments: RwLock<HashMap<u32, Arc<File>>>,
    pub commit_changed: Notify,
    deleted: AtomicBool,
    buffered_bytes: AtomicU64,
    /// This shuffle's share of the memory budget's metadata counter (index entries, commit records);
    /// given back when the shuffle is dropped.
    metadata_bytes: AtomicU64,
    pub disk_bytes: AtomicU64,
}

pub enum PushOutcome {
    Accepted {
        duplicate_blocks: u32,
        duplicate_bytes: u64,
    },
    MapCommitted(u64),
}

/// Memory a commit record holds: the record and its partition entries (its own and its peers').
fn commit_record_bytes(r: &CommitRecord) -> u64 {
    let entries = r.partitions.len() + r.peers.iter().map(|p| p.partitions.len()).sum::<usize>();
    (std::mem::size_of::<CommitRecord>()
        + entries * std::mem::size_of::<PartitionCount>()
        + r.peers
            .iter()
            .map(|p| std::mem::size_of::<PeerPromise>() + p.server.len())
            .sum::<usize>()) as u64
}

impl Drop for Shuffle {
    fn drop(&mut self) {
        self.memory
            .metadata_changed(-(self.metadata_bytes.load(Ordering::Acquire) as i64));
    }
}

pub enum CommitStart {
    /// This or another attempt already committed the map: its record.
    Done(Arc<CommitRecord>),
    /// Another attempt is committing: wait for `commit_changed`, then ask again.
    Wait,
    /// The commit job is queued behind every write holding the attempt's blocks; await its answer, then
    /// call [`Shuffle::finish_commit`].
    Queued {
        written: oneshot::Receiver<Result<()>>,
        record: CommitRecord,
    },
}

pub struct MapSummary {
    pub map_index: u32,
    pub attempt_id: u64,
    pub blocks: u64,
    pub bytes: u64,
}

pub struct FetchPlan {
    pub blocks: Vec<BlockLoc>,
    pub maps: Vec<MapSummary>,
}

impl Shuffle {
    pub fn new(
        key: ShuffleKey,
        num_maps: u32,
        num_partitions: u32,
        disk: Arc<Disk>,
        memory: Arc<MemoryBudget>,
        dir: PathBuf,
        files: ShuffleFiles,
    ) -> Shuffle {
        let mut buffers = Vec::new();
        buffers.resize_with(num_partitions as usize, PartitionBuffer::default);
        let mut index = Vec::new();
        index.resize_with(num_partitions as usize, Vec::new);
        Shuffle {
            key,
            num_maps,
            num_partitions,
            disk_epoch: disk.epoch(),
            disk,
            memory,
            dir,
            files: Mutex::new(files),
            state: Mutex::new(ShuffleState {
                buffers,
                attempts: HashMap::new(),
                maps: vec![MapCommit::Open; num_maps as usize],
                index,
                damaged: None,
                dead_attempts: HashSet::new(),
            }),
            segments: RwLock::new(HashMap::new()),
            commit_changed: Notify::new(),
            deleted: AtomicBool::new(false),
            buffered_bytes: AtomicU64::new(0),
            metadata_bytes: AtomicU64::new(0),
            disk_bytes: AtomicU64::new(0),
        }
    }

    /// True when the disk holding this shuffle failed after the shuffle was placed on it.
    pub fn is_lost(&self) -> bool {
        self.disk.epoch() != self.disk_epoch || self.disk.state() == super::disk::DiskState::Failed
    }

    /// The status for every request to a lost shuffle: clients rerun its maps (or fail over).
    pub fn lost_error(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "DATA_LOST: {} is lost: its disk {} failed ({}); rerun its maps",
            self.key,
            self.disk.root.display(),
            self.disk.failure().unwrap_or_else(|| "I/O error".into())
        ))
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub fn buffered_bytes(&self) -> u64 {
        self.buffered_bytes.load(Ordering::Acquire)
    }

    pub fn committed_maps(&self) -> u32 {
        let st = self.state.lock();
        st.maps
            .iter()
            .filter(|m| matches!(m, MapCommit::Committed(_)))
            .count() as u32
    }

    /// True when `attempt_id` is committing or has committed `map_index` (false for an index out of
    /// range: the push or commit that follows refuses it with its own error).
    pub fn attempt_is_committing_or_committed(&self, map_index: u32, attempt_id: u64) -> bool {
        let st = self.state.lock();
        match st.maps.get(map_index as usize) {
            Some(MapCommit::Committing(a)) => *a == attempt_id,
            Some(MapCommit::Committed(r)) => r.attempt_id == attempt_id,
            _ => false,
        }
    }

    pub fn add_segment_reader(&self, id: u32, file: Arc<File>) {
        self.segments.write().insert(id, file);
    }

    /// Removes every segment read handle (the shuffle is being deleted): fetches that start later find
    /// no segment, and a handle still held by a running fetch shows in its `Arc` count.
    pub fn take_segment_readers(&self) -> Vec<(u32, Arc<File>)> {
        self.segments.write().drain().collect()
    }

    pub fn segment_reader(&self, id: u32) -> Option<Arc<File>> {
        self.segments.read().get(&id).cloned()
    }

    pub fn mark_damaged(&self, why: String) {
        self.state.lock().damaged = Some(why);
    }

    pub fn damaged(&self) -> Option<String> {
        self.state.lock().damaged.clone()
    }

    /// Marks the shuffle deleted and drops its buffers (their charges give the memory back).
    /// Returns the buffered bytes dropped.
    pub fn delete(&self) -> u64 {
        self.deleted.store(true, Ordering::Release);
        let mut st = self.state.lock();
        let mut freed = 0;
        for b in &mut st.buffers {
            freed += b.bytes;
            *b = PartitionBuffer::default();
        }
        st.attempts.clear();
        self.buffered_bytes.fetch_sub(freed, Ordering::AcqRel);
        drop(st);
        self.commit_changed.notify_waiters();
        freed
    }

    /// Checks what can be checked without the lock: ranges and checksums.
    pub fn validate_push(&self, map_index: u32, blocks: &[PushBlock]) -> Result<()> {
        if map_index >= self.num_maps {
            return Err(StoreError::invalid(
                "map_index",
                format!(
                    "{map_index} is out of range: {} has {} maps",
                    self.key, self.num_maps
                ),
            ));
        }
        for (i, b) in blocks.iter().enumerate() {
            if b.partition_id >= self.num_partitions {
                return Err(StoreError::invalid(
                    "blocks.partition_id",
                    format!(
                        "block {i}: partition {} is out of range: {} has {} partitions",
                        b.partition_id, self.key, self.num_partitions
                    ),
                ));
            }
            if b.data.is_empty() {
                return Err(StoreError::invalid(
                    "blocks.data",
                    format!(
                        "block {i} (partition {}, seq {}) is empty; empty blocks are not pushed",
                        b.partition_id, b.seq
                    ),
                ));
            }
            let actual = b.data.crc32();
            if actual != b.crc32 {
                return Err(StoreError::invalid(
                    "blocks.crc32",
                    format!(
                        "block {i} (partition {}, map {map_index}, seq {}) of {}: crc32 {:#010x} does not match its data ({actual:#010x}); batch refused",
                        b.partition_id, b.seq, self.key, b.crc32
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Queues chunks for writing. Called with the state lock held, so queue order = take order.
    fn enqueue_locked(
        self: &Arc<Self>,
        chunks: Vec<PendingChunk>,
        commit: Option<CommitRecord>,
        reply: Option<oneshot::Sender<Result<()>>>,
    ) -> Result<()> {
        let job = WriteJob {
            shuffle: self.clone(),
            chunks,
            commit,
            reply,
        };
        let bytes = job.payload_bytes();
        self.memory.queue(bytes);
        if let Err(e) = self.disk.enqueue(job) {
            self.memory.written(bytes);
            return Err(e);
        }
        Ok(())
    }

    /// Stores a validated batch: all of it, or (on error) none of it. Partition buffers that reach
    /// `chunk_bytes_target` bytes or [`CHUNK_BLOCKS_MAX`] blocks are queued for writing; so are
    /// buffers of at least `write_behind_bytes_min` bytes while the disk's queue holds fewer than
    /// [`WRITE_BEHIND_QUEUE_CHUNKS`] chunks' worth (write-behind; 0 turns it off).
    pub fn push(
        self: &Arc<Self>,
        map_index: u32,
        attempt_id: u64,
        blocks: Vec<PushBlock>,
        chunk_bytes_target: u64,
        write_behind_bytes_min: u64,
        charge: Arc<super::memory::Charge>,
    ) -> Result<PushOutcome> {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if self.is_deleted() {
            return Err(StoreError::NotFound(format!(
                "{} was unregistered",
                self.key
            )));
        }
        if let Some(why) = &st.damaged {
            return Err(StoreError::FailedPrecondition(format!(
                "{} is read-only: {why}",
                self.key
            )));
        }
        match &st.maps[map_index as usize] {
            MapCommit::Committed(r) if r.attempt_id != attempt_id => {
                return Ok(PushOutcome::MapCommitted(r.attempt_id));
            }
            MapCommit::Committed(_) => {
                return Err(StoreError::FailedPrecondition(format!(
                    "map {map_index} attempt {attempt_id} of {} is committed: no more pushes",
                    self.key
                )));
            }
            MapCommit::Committing(a) if *a == attempt_id => {
                return Err(StoreError::FailedPrecondition(format!(
                    "map {map_index} attempt {attempt_id} of {} is committing: no more pushes",
                    self.key
                )));
            }
            // Another attempt committing may still fail: keep accepting this one.
            MapCommit::Committing(_) | MapCommit::Open => {}
        }
        if st.dead_attempts.contains(&(map_index, attempt_id)) {
            return Err(StoreError::FailedPrecondition(format!(
                "map {map_index} attempt {attempt_id} of {} lost its uncommitted blocks in a server restart; push the map again with a new attempt id",
                self.key
            )));
        }
        let attempt = st.attempts.entry((map_index, attempt_id)).or_default();
        if let Some(why) = &attempt.lost {
            return Err(attempt_lost_error(&self.key, map_index, attempt_id, why));
        }
        // Pass 1: classify every block (stored / duplicate) without changing anything.
        let mut next: HashMap<u32, u32> = HashMap::new();
        let mut keep = Vec::with_capacity(blocks.len());
        for b in &blocks {
            let expected = next
                .entry(b.partition_id)
                .or_insert_with(|| attempt.partitions.get(&b.partition_id).map_or(0, |e| e.0));
            if b.seq < *expected {
                keep.push(false);
                continue;
            }
            if b.seq > *expected {
                return Err(StoreError::invalid(
                    "blocks.seq",
                    format!(
                        "map {map_index} attempt {attempt_id} partition {} of {}: expected seq {}, got {} (blocks of a partition must be pushed in order); batch refused",
                        b.partition_id, self.key, expected, b.seq
                    ),
                ));
            }
            *expected += 1;
            keep.push(true);
        }
        // Pass 2: store.
        let mut duplicate_blocks = 0;
        let mut duplicate_bytes = 0;
        let mut accepted_bytes = 0;
        let mut flush = Vec::new();
        let write_behind = write_behind_bytes_min > 0
            && self.disk.queued_bytes()
                < chunk_bytes_target.saturating_mul(WRITE_BEHIND_QUEUE_CHUNKS);
        for (b, keep) in blocks.into_iter().zip(keep) {
            let len = b.data.len() as u64;
            if !keep {
                duplicate_blocks += 1;
                duplicate_bytes += len;
                continue;
            }
            let entry = attempt.partitions.entry(b.partition_id).or_insert((0, 0));
            entry.0 += 1;
            entry.1 += len;
            accepted_bytes += len;
            let buf = &mut st.buffers[b.partition_id as usize];
            buf.blocks.push(BufferedBlock {
                map_index,
                attempt_id,
                seq: b.seq,
                crc32: b.crc32,
                data: b.data,
                charge: charge.clone(),
            });
            buf.bytes += len;
            if buf.bytes >= chunk_bytes_target
                || buf.blocks.len() >= CHUNK_BLOCKS_MAX
                || (write_behind && buf.bytes >= write_behind_bytes_min)
            {
                flush.push(take_buffer(buf, b.partition_id));
            }
        }
        let flushed: u64 = flush.iter().map(|c| c.payload_bytes).sum();
        self.buffered_bytes
            .fetch_add(accepted_bytes, Ordering::AcqRel);
        self.buffered_bytes.fetch_sub(flushed, Ordering::AcqRel);
        if !flush.is_empty() {
            if let Err(e) = self.enqueue_locked(flush, None, None) {
                // The writer is gone; the attempt cannot commit what it pushed.
                let lost = st.attempts.entry((map_index, attempt_id)).or_default();
                lost.lost.get_or_insert_with(|| e.to_string());
                return Err(e);
            }
        }
        Ok(PushOutcome::Accepted {
            duplicate_blocks,
            duplicate_bytes,
        })
    }

    /// Queues the largest partition buffers for writing until at least `bytes_wanted` are taken.
    /// Returns the bytes taken.
    pub fn flush_largest_buffers(self: &Arc<Self>, bytes_wanted: u64) -> u64 {
        let mut st = self.state.lock();
        let mut sizes: Vec<(u64, u32)> = st
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.bytes > 0)
            .map(|(p, b)| (b.bytes, p as u32))
            .collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let mut taken = 0;
        let mut chunks = Vec::new();
        for (bytes, p) in sizes {
            if taken >= bytes_wanted {
                break;
            }
            chunks.push(take_buffer(&mut st.buffers[p as usize], p));
            taken += bytes;
        }
        self.buffered_bytes.fetch_sub(taken, Ordering::AcqRel);
        if !chunks.is_empty() {
            if let Err(e) = self.enqueue_locked(chunks, None, None) {
                tracing::error!(shuffle = %self.key, error = %e, "could not queue a flush");
            }
        }
        taken
    }

    /// First step of a commit: checks the promised counts, claims the map for this attempt, and queues
    /// the attempt's buffered blocks and the commit record for writing.
    pub fn begin_commit(
        self: &Arc<Self>,
        map_index: u32,
        attempt_id: u64,
        mut promised: Vec<PartitionCount>,
        mut peers: Vec<PeerPromise>,
        now_ms: u64,
    ) -> Result<CommitStart> {
        if map_index >= self.num_maps {
            return Err(StoreError::invalid(
                "map_index",
                format!(
                    "{map_index} is out of range: {} has {} maps",
                    self.key, self.num_maps
                ),
            ));
        }
        self.normalize_counts(&mut promised, "partitions.partition_id")?;
        self.check_peers(&mut peers, promised.len())?;
        let mut guard = self.state.lock();
        let st = &mut *guard;
        if self.is_deleted() {
            return Err(StoreError::NotFound(format!(
                "{} was unregistered",
                self.key
            )));
        }
        match &st.maps[map_index as usize] {
            MapCommit::Committed(r) => return Ok(CommitStart::Done(r.clone())),
            MapCommit::Committing(_) => return Ok(CommitStart::Wait),
            MapCommit::Open => {}
        }
        if let Some(why) = &st.damaged {
            return Err(StoreError::FailedPrecondition(format!(
                "{} is read-only: {why}",
                self.key
            )));
        }
        if st.dead_attempts.contains(&(map_index, attempt_id)) {
            return Err(StoreError::FailedPrecondition(format!(
                "map {map_index} attempt {attempt_id} of {} lost its uncommitted blocks in a server restart; push the map again with a new attempt id",
                self.key
            )));
        }
        let empty = AttemptState::default();
        let attempt = st.attempts.get(&(map_index, attempt_id)).unwrap_or(&empty);
        if let Some(why) = &attempt.lost {
            return Err(attempt_lost_error(&self.key, map_index, attempt_id, why));
        }
        check_counts(&self.key, map_index, attempt_id, attempt, &promised)?;
        let mut chunks = Vec::new();
        let mut taken = 0;
        for p in &promised {
            let buf = &mut st.buffers[p.partition_id as usize];
            if !buf.blocks.is_empty() {
                taken += buf.bytes;
                chunks.push(take_buffer(buf, p.partition_id));
            }
        }
        self.buffered_bytes.fetch_sub(taken, Ordering::AcqRel);
        let record = CommitRecord {
            map_index,
            attempt_id,
            committed_at_ms: now_ms,
            partitions: promised,
            peers,
        };
        let (tx, rx) = oneshot::channel();
        self.enqueue_locked(chunks, Some(record.clone()), Some(tx))?;
        st.maps[map_index as usize] = MapCommit::Committing(attempt_id);
        Ok(CommitStart::Queued {
            written: rx,
            record,
        })
    }

    /// Drops empty entries and sorts by partition; refuses duplicates and partitions out of range.
    fn normalize_counts(
        &self,
        counts: &mut Vec<PartitionCount>,
        field: &'static str,
    ) -> Result<()> {
        counts.retain(|p| p.blocks > 0 || p.bytes > 0);
        counts.sort_unstable_by_key(|p| p.partition_id);
        for w in counts.windows(2) {
            if w[0].partition_id == w[1].partition_id {
                return Err(StoreError::invalid(
                    field,
                    format!("partition {} is listed twice", w[0].partition_id),
                ));
            }
        }
        if let Some(p) = counts
            .iter()
            .find(|p| p.partition_id >= self.num_partitions)
        {
            return Err(StoreError::invalid(
                field,
                format!(
                    "{} is out of range: {} has {} partitions",
                    p.partition_id, self.key, self.num_partitions
                ),
            ));
        }
        Ok(())
    }

    /// Checks a commit's peer promises: at most [`COMMIT_PEERS_MAX`] distinct servers with addresses of
    /// 1..=[`PEER_SERVER_BYTES_MAX`] bytes, and, since every partition lives on one server, no more
    /// entries in all (this server's included) than the shuffle has partitions. Peers without data go.
    fn check_peers(&self, peers: &mut Vec<PeerPromise>, own_entries: usize) -> Result<()> {
        if peers.len() > COMMIT_PEERS_MAX {
            return Err(StoreError::invalid(
                "peers",
                format!("{} peers; at most {COMMIT_PEERS_MAX}", peers.len()),
            ));
        }
        let mut entries = own_entries;
        for peer in peers.iter_mut() {
            if peer.server.is_empty() || peer.server.len() > PEER_SERVER_BYTES_MAX {
                return Err(StoreError::invalid(
                    "peers.server",
                    format!(
                        "address of {} bytes; 1..={PEER_SERVER_BYTES_MAX} expected",
                        peer.server.len()
                    ),
                ));
            }
            self.normalize_counts(&mut peer.partitions, "peers.partitions.partition_id")?;
            entries += peer.partitions.len();
        }
        if entries > self.num_partitions as usize {
            return Err(StoreError::invalid(
                "peers.partitions",
                format!(
                    "{entries} partition entries in all, but {} has {} partitions (each lives on one server)",
                    self.key, self.num_partitions
                ),
            ));
        }
        peers.retain(|p| !p.partitions.is_empty());
        let mut names: Vec<&str> = peers.iter().map(|p| p.server.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(StoreError::invalid(
                "peers.server",
                format!("{} is listed twice", w[0]),
            ));
        }
        Ok(())
    }

    /// Called by the disk writer before it writes a commit record: an attempt that lost blocks in an
    /// earlier failed write must not commit.
    pub fn attempt_lost(&self, map_index: u32, attempt_id: u64) -> Option<String> {
        let st = self.state.lock();
        st.attempts
            .get(&(map_index, attempt_id))
            .and_then(|a| a.lost.clone())
    }

    /// Last step of a commit, after the writer answered.
    pub fn finish_commit(&self, record: CommitRecord, written: bool) {
        let mut st = self.state.lock();
        let map = record.map_index;
        let mut record_bytes = 0;
        if written {
            st.attempts.retain(|(m, _), _| *m != map);
            record_bytes = commit_record_bytes(&record);
            st.maps[map as usize] = MapCommit::Committed(Arc::new(record));
        } else if matches!(st.maps[map as usize], MapCommit::Committing(a) if a == record.attempt_id)
        {
            st.maps[map as usize] = MapCommit::Open;
        }
        drop(st);
        self.metadata_changed(record_bytes as i64);
        self.commit_changed.notify_waiters();
    }

    /// Recovery: a commit read back from the commit log.
    pub fn recover_commit(&self, record: CommitRecord) -> Result<(), String> {
        let mut st = self.state.lock();
        let Some(slot) = st.maps.get_mut(record.map_index as usize) else {
            return Err(format!("map {} out of range", record.map_index));
        };
        if let MapCommit::Committed(r) = slot {
            return Err(format!(
                "map {} committed twice (attempts {} and {}); the first is kept",
                record.map_index, r.attempt_id, record.attempt_id
            ));
        }
        let bytes = commit_record_bytes(&record);
        *slot = MapCommit::Committed(Arc::new(record));
        drop(st);
        self.metadata_changed(bytes as i64);
        Ok(())
    }

    /// The writer wrote chunks: make their blocks findable.
    pub fn index_chunks(&self, written: &[WrittenChunk]) {
        let mut st = self.state.lock();
        let mut grown_entries = 0usize;
        for w in written {
            let r = &w.record;
            let mut offset = r.chunk_offset + CHUNK_HEADER_BYTES as u64;
            let list = &mut st.index[r.partition_id as usize];
            let capacity = list.capacity();
            for b in &r.blocks {
                list.push(BlockLoc {
                    partition_id: r.partition_id,
                    map_index: b.map_index,
                    attempt_id: b.attempt_id,
                    seq: b.seq,
                    len: b.len,
                    crc32: b.crc32,
                    segment_id: r.segment_id,
                    data_offset: offset,
                });
                offset += u64::from(b.len);
            }
            grown_entries += list.capacity() - capacity;
        }
        drop(st);
        self.metadata_changed((grown_entries * std::mem::size_of::<BlockLoc>()) as i64);
    }

    /// The index or the commit records grew (or shrank) by `delta` bytes.
    fn metadata_changed(&self, delta: i64) {
        if delta == 0 {
            return;
        }
        if delta > 0 {
            self.metadata_bytes
                .fetch_add(delta as u64, Ordering::AcqRel);
        } else {
            self.metadata_bytes
                .fetch_sub(delta.unsigned_abs(), Ordering::AcqRel);
        }
        self.memory.metadata_changed(delta);
    }

    /// This shuffle's index entries and commit records, in bytes.
    pub fn metadata_bytes(&self) -> u64 {
        self.metadata_bytes.load(Ordering::Acquire)
    }

    /// Recovery: keep only index entries of committed attempts (uncommitted data is dropped, and its
    /// attempts may not push again).
    /// Recovery: attempts with index records that restart skipped (their chunks never reached the disk)
    /// are dead like those whose records it dropped, since their seqs are in `index.log` already. A
    /// map's committed attempt is never marked.
    pub fn mark_dead_attempts(&self, attempts: impl IntoIterator<Item = (u32, u64)>) {
        let mut st = self.state.lock();
        for (map, attempt) in attempts {
            let committed = matches!(st.maps.get(map as usize), Some(MapCommit::Committed(r)) if r.attempt_id == attempt);
            if !committed && (map as usize) < st.maps.len() {
                st.dead_attempts.insert((map, attempt));
            }
        }
    }

    pub fn drop_uncommitted_index(&self) {
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let maps = &st.maps;
        let dead = &mut st.dead_attempts;
        let mut delta = 0i64;
        for list in &mut st.index {
            let capacity = list.capacity();
            list.retain(|b| {
                let keep = matches!(&maps[b.map_index as usize], MapCommit::Committed(r) if r.attempt_id == b.attempt_id);
                if !keep {
                    dead.insert((b.map_index, b.attempt_id));
                }
                keep
            });
            list.shrink_to_fit();
            delta += list.capacity() as i64 - capacity as i64;
        }
        drop(guard);
        self.metadata_changed(delta * std::mem::size_of::<BlockLoc>() as i64);
    }

    /// A lost shuffle (its disk failed) can never write what it still buffers: drops those blocks,
    /// which gives their memory back to the budget at once instead of when the memory flusher or an
    /// unregister gets to them. Returns the bytes dropped.
    pub fn drop_buffers_if_lost(&self) -> u64 {
        if self.buffered_bytes() == 0 || !self.is_lost() {
            return 0;
        }
        let mut dropped = Vec::new();
        let mut bytes = 0;
        {
            let mut st = self.state.lock();
            for buf in st.buffers.iter_mut() {
                if buf.bytes > 0 {
                    bytes += buf.bytes;
                    buf.bytes = 0;
                    dropped.push(std::mem::take(&mut buf.blocks));
                }
            }
            self.buffered_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        // The blocks (and with the last of them, their batches' charges) go here, outside the lock.
        drop(dropped);
        bytes
    }

    /// The writer failed to write chunks: their attempts can never commit.
    pub fn mark_lost(&self, chunks: &[PendingChunk], why: &str) {
        let mut st = self.state.lock();
        for c in chunks {
            for b in &c.blocks {
                st.attempts
                    .entry((b.map_index, b.attempt_id))
                    .or_default()
                    .lost
                    .get_or_insert_with(|| why.to_string());
            }
        }
    }

    /// Plans a fetch: which blocks, in which order, checked against the commits' promises.
    pub fn plan_fetch(
        &self,
        partitions: std::ops::Range<u32>,
        maps: std::ops::Range<u32>,
        accepted: &[(u32, u64)],
    ) -> Result<FetchPlan> {
        let st = self.state.lock();
        // selected[m - maps.start] = the committed attempt to serve for map m.
        let width = (maps.end - maps.start) as usize;
        let mut selected: Vec<Option<Arc<CommitRecord>>> = vec![None; width];
        let commit_of = |m: u32| -> Result<Arc<CommitRecord>> {
            match &st.maps[m as usize] {
                MapCommit::Committed(r) => Ok(r.clone()),
                _ => Err(StoreError::FailedPrecondition(format!(
                    "map {m} of {} has no committed attempt",
                    self.key
                ))),
            }
        };
        if accepted.is_empty() {
            for m in maps.clone() {
                selected[(m - maps.start) as usize] = Some(commit_of(m)?);
            }
        } else {
            for &(m, a) in accepted {
                if !maps.contains(&m) {
                    return Err(StoreError::invalid(
                        "accepted_attempts.map_index",
                        format!(
                            "map {m} is outside the requested map range {}..{}",
                            maps.start, maps.end
                        ),
                    ));
                }
                let r = commit_of(m)?;
                if r.attempt_id != a {
                    return Err(StoreError::FailedPrecondition(format!(
                        "map {m} attempt {a} of {} is not the committed attempt (attempt {} is)",
                        self.key, r.attempt_id
                    )));
                }
                selected[(m - maps.start) as usize] = Some(r);
            }
        }
        let mut blocks = Vec::new();
        let mut summary: Vec<MapSummary> = Vec::new();
        for p in partitions.clone() {
            let start = blocks.len();
            for b in &st.index[p as usize] {
                if maps.contains(&b.map_index) {
                    if let Some(r) = &selected[(b.map_index - maps.start) as usize] {
                        if r.attempt_id == b.attempt_id {
                            blocks.push(*b);
                        }
                    }
                }
            }
            let found = &mut blocks[start..];
            found.sort_unstable_by_key(|b| (b.map_index, b.seq));
            check_partition(&self.key, p, found, &selected, maps.start)?;
        }
        for (i, r) in selected.iter().enumerate() {
            if let Some(r) = r {
                let mut s = MapSummary {
                    map_index: maps.start + i as u32,
                    attempt_id: r.attempt_id,
                    blocks: 0,
                    bytes: 0,
                };
                // The record's partitions are sorted by id (begin_commit sorts them).
                let lo = r
                    .partitions
                    .partition_point(|c| c.partition_id < partitions.start);
                let hi = r
                    .partitions
                    .partition_point(|c| c.partition_id < partitions.end);
                for pc in &r.partitions[lo..hi] {
                    s.blocks += u64::from(pc.blocks);
                    s.bytes += pc.bytes;
                }
                summary.push(s);
            }
        }
        Ok(FetchPlan {
            blocks,
            maps: summary,
        })
    }
}

/// The status for an attempt whose blocks could not be written: "no space" stays a RESOURCE_EXHAUSTED
/// status (the client may retry elsewhere or later), anything else is UNAVAILABLE.
pub fn attempt_lost_error(
    key: &ShuffleKey,
    map_index: u32,
    attempt_id: u64,
    why: &str,
) -> StoreError {
    let message =
        format!("map {map_index} attempt {attempt_id} of {key} lost blocks ({why}); rerun the map");
    if why.starts_with("no space") {
        StoreError::NoSpace(message)
    } else {
        StoreError::Unavailable(message)
    }
}

fn take_buffer(buf: &mut PartitionBuffer, partition_id: u32) -> PendingChunk {
    let b = std::mem::take(buf);
    PendingChunk {
        partition_id,
        blocks: b.blocks,
        payload_bytes: b.bytes,
    }
}

fn check_counts(
    key: &ShuffleKey,
    map_index: u32,
    attempt_id: u64,
    held: &AttemptState,
    promised: &[PartitionCount],
) -> Result<()> {
    for p in promised {
        let (blocks, bytes) = held
            .partitions
            .get(&p.partition_id)
            .copied()
            .unwrap_or((0, 0));
        if blocks != p.blocks || bytes != p.bytes {
            return Err(StoreError::FailedPrecondition(format!(
                "commit of map {map_index} attempt {attempt_id} of {key}: partition {} holds {blocks} blocks / {bytes} bytes, the request (partitions) says {} blocks / {} bytes",
                p.partition_id, p.blocks, p.bytes
            )));
        }
    }
    for (&p, &(blocks, bytes)) in &held.partitions {
        if blocks > 0
            && promised
                .binary_search_by_key(&p, |c| c.partition_id)
                .is_err()
        {
            return Err(StoreError::FailedPrecondition(format!(
                "commit of map {map_index} attempt {attempt_id} of {key}: partition {p} holds {blocks} blocks / {bytes} bytes the request (partitions) does not list"
            )));
        }
    }
    Ok(())
}

/// Checks that `found` (one partition's blocks, sorted by map and seq) is exactly what the selected
/// commits promised for it.
fn check_partition(
    key: &ShuffleKey,
    partition_id: u32,
    found: &[BlockLoc],
    selected: &[Option<Arc<CommitRecord>>],
    map_start: u32,
) -> Result<()> {
    let mut i = 0;
    for (k, r) in selected.iter().enumerate() {
        let Some(r) = r else { continue };
        let map = map_start + k as u32;
        let promised = r
            .partitions
            .binary_search_by_key(&partition_id, |c| c.partition_id)
            .map(|j| r.partitions[j])
            .unwrap_or(PartitionCount {
                partition_id,
                blocks: 0,
                bytes: 0,
            });
        let mut blocks = 0u32;
        let mut bytes = 0u64;
        while i < found.len() && found[i].map_index == map {
            if found[i].seq != blocks {
                return Err(StoreError::DataCorrupted(format!(
                    "{key} partition {partition_id} map {map} attempt {}: block seq {} is missing from the index",
                    r.attempt_id, blocks
                )));
            }
            blocks += 1;
            bytes += u64::from(found[i].len);
            i += 1;
        }
        if blocks != promised.blocks || bytes != promised.bytes {
            return Err(StoreError::DataCorrupted(format!(
                "{key} partition {partition_id} map {map} attempt {}: {blocks} blocks / {bytes} bytes on disk, the commit promised {} / {}",
                r.attempt_id, promised.blocks, promised.bytes
            )));
        }
    }
    Ok(())
}
