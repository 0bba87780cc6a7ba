//! A data directory (one per disk) and its writer thread.
//!
//! Every write to a disk goes through one thread that takes jobs from a queue. It drains all
//! queued jobs at once and handles them as a group: chunks of every job are appended first (the chunks
//! of all jobs of one shuffle in a single append, in queue order), then, when
//! durability is `fsync`, each shuffle with a commit in the group is synced once, then the commit records
//! are appended and synced once more, and only then are the jobs answered. Concurrent commits therefore share their
//! fsyncs (group commit), and a commit record is never on disk before the data it promises.
//!
//! Jobs are enqueued while the shuffle's state lock is held, so the queue order is the order in which
//! buffers were taken: a commit job always follows every flush job holding blocks of its attempt. The
//! queue therefore cannot make the enqueuer wait; it is bounded by the memory budget instead (every
//! flush job holds budgeted bytes) and by the number of commit RPCs in flight. Pushes are paced
//! before they are accepted: a batch for a disk with more than `write_queue_bytes_max` queued waits
//! for the writer ([`Disk::wait_for_queue_room`]), which keeps the writer on freshly received data.

use super::files::PendingChunk;
use super::memory::MemoryBudget;
use super::pool::SegmentPool;
use super::shuffle::Shuffle;
use super::syncer::SegmentSyncer;
use crate::config::Durability;
use crate::error::{Result, StoreError};
use crate::format::CommitRecord;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Jobs handled as one group, at most.
const GROUP_JOBS_MAX: usize = 256;

/// Health of a data dir.
///
/// - `Healthy`: takes new shuffles and writes.
/// - `Full`: free space is below the reserve: no new shuffles, and writes that would cross the reserve
///   are refused with "no space". Returns to `Healthy` by itself when space is freed.
/// - `Failed`: an I/O error or a failed probe. Every shuffle on the disk at that moment is lost (its
///   requests are answered UNAVAILABLE "DATA_LOST ..."); a later successful probe returns the disk to
///   service for new shuffles only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DiskState {
    Healthy = 0,
    Full = 1,
    Failed = 2,
}

impl DiskState {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskState::Healthy => "healthy",
            DiskState::Full => "full",
            DiskState::Failed => "failed",
        }
    }
}

pub struct WriteJob {
    pub shuffle: Arc<Shuffle>,
    pub chunks: Vec<PendingChunk>,
    pub commit: Option<CommitRecord>,
    pub reply: Option<oneshot::Sender<Result<()>>>,
}

impl WriteJob {
    pub fn payload_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.payload_bytes).sum()
    }
}

pub struct Disk {
    pub id: u32,
    pub root: PathBuf,
    tx: mpsc::UnboundedSender<WriteJob>,
    state: AtomicU8,
    /// Incremented every time the disk fails; a shuffle created in an earlier epoch is lost.
    epoch: AtomicU64,
    failure: parking_lot::Mutex<Option<String>>,
    /// Writes never take free space below this.
    pub reserve_bytes: u64,
    free_bytes: AtomicU64,
    total_bytes: AtomicU64,
    pub write_errors: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Payload bytes queued for this disk's writer and not yet written (write-behind and the push's
    /// queue wait look at it).
    queued_bytes: AtomicU64,
    /// Signalled every time the writer finishes a group (`queued_bytes` went down).
    queue_drained: tokio::sync::Notify,
    /// Segment files of deleted shuffles, to be overwritten by new segments.
    pub pool: Arc<SegmentPool>,
    /// Syncs finished segments off the writer thread.
    pub syncer: Arc<SegmentSyncer>,
}

impl Disk {
    pub fn start(
        id: u32,
        root: PathBuf,
        reserve_bytes: u64,
        pool_bytes_max: u64,
        pool_file_bytes_min: u64,
        memory: Arc<MemoryBudget>,
        durability: Durability,
    ) -> std::io::Result<Arc<Disk>> {
        let pool = Arc::new(SegmentPool::open(
            &root,
            pool_bytes_max,
            pool_file_bytes_min,
        )?);
        let (tx, rx) = mpsc::unbounded_channel();
        let failing: Arc<std::sync::OnceLock<std::sync::Weak<Disk>>> = Arc::default();
        let syncer = {
            let failing = failing.clone();
            SegmentSyncer::start(format!("croupier-sync-{id}"), move |why| {
                if let Some(disk) = failing.get().and_then(std::sync::Weak::upgrade) {
                    disk.write_errors.fetch_add(1, Ordering::AcqRel);
                    metrics::counter!("croupier_disk_errors_total", "disk" => disk.root.display().to_string(), "reason" => "io")
                        .increment(1);
                    disk.fail(why);
                }
            })?
        };
        let disk = Arc::new(Disk {
            id,
            root,
            tx,
            state: AtomicU8::new(DiskState::Healthy as u8),
            epoch: AtomicU64::new(0),
            failure: parking_lot::Mutex::new(None),
            reserve_bytes,
            free_bytes: AtomicU64::new(0),
            total_bytes: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            queue_drained: tokio::sync::Notify::new(),
            pool,
            syncer,
        });
        disk.refresh_space();
        let weak = Arc::downgrade(&disk);
        let _ = failing.set(weak.clone());
        std::thread::Builder::new()
            .name(format!("croupier-disk-{id}"))
            .spawn(move || writer_loop(rx, memory, durability, weak))?;
        Ok(disk)
    }

    pub fn state(&self) -> DiskState {
        match self.state.load(Ordering::Acquire) {
            0 => DiskState::Healthy,
            1 => DiskState::Full,
            _ => DiskState::Failed,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    /// Takes the disk out of service; every shuffle on it is lost.
    pub fn fail(&self, why: &str) {
        let mut failure = self.failure.lock();
        if self.state() != DiskState::Failed {
            self.epoch.fetch_add(1, Ordering::AcqRel);
            self.state.store(DiskState::Failed as u8, Ordering::Release);
            *failure = Some(why.to_string());
            tracing::error!(disk = %self.root.display(), reason = why, "disk failed: taken out of service, its shuffles are lost");
            metrics::counter!("croupier_disk_failures_total", "disk" => self.root.display().to_string()).increment(1);
        }
    }

    /// A probe succeeded: a failed disk returns to service (for new shuffles).
    pub fn probe_succeeded(&self) {
        let mut failure = self.failure.lock();
        if self.state() == DiskState::Failed {
            tracing::warn!(disk = %self.root.display(), "disk passed its probe: back in service for new shuffles");
            *failure = None;
            self.state
                .store(DiskState::Healthy as u8, Ordering::Release);
        }
        drop(failure);
        self.refresh_space();
    }

    /// Re-reads free space and moves between `Healthy` and `Full` (never out of `Failed`). Below twice
    /// the reserve, pooled segments are deleted first (oldest first) until free space is back above it
    /// or the pool is empty: the pool never holds space that writes need.
    pub fn refresh_space(&self) -> u64 {
        let low_bytes = self.reserve_bytes.saturating_mul(2);
        let mut space = fs_space(&self.root);
        if space.is_some_and(|(free, _)| free < low_bytes) && self.pool.files() > 0 {
            let released = self.pool.shrink_while(|| {
                space = fs_space(&self.root);
                space.is_some_and(|(free, _)| free < low_bytes)
            });
            if released > 0 {
                tracing::info!(disk = %self.root.display(), released_bytes = released, "low on space: deleted pooled segments");
            }
        }
        let (free, total) = space.unwrap_or((0, 0));
        self.free_bytes.store(free, Ordering::Release);
        self.total_bytes.store(total, Ordering::Release);
        let want = if free < self.reserve_bytes {
            DiskState::Full
        } else {
            DiskState::Healthy
        };
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != DiskState::Failed as u8 && s != want as u8).then_some(want as u8)
            });
        free
    }

    /// True when the disk can take new shuffles.
    pub fn takes_new_shuffles(&self) -> bool {
        self.state() == DiskState::Healthy
    }

    pub fn apps_dir(&self) -> PathBuf {
        self.root.join("apps")
    }

    /// Queues a job (never waits; see the module doc for what bounds the queue). On error the job is
    /// dropped, its reply sender with it; the caller gives its bytes back.
    pub fn enqueue(&self, job: WriteJob) -> Result<()> {
        let bytes = job.payload_bytes();
        self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.tx.send(job).map_err(|_| {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            StoreError::Unavailable(format!(
                "the writer of disk {} has stopped",
                self.root.display()
            ))
        })
    }

    /// Payload bytes waiting in this disk's queue (or being written right now).
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes.load(Ordering::Acquire)
    }

    /// Waits until at most `bytes_max` bytes are queued for this disk's writer, or until `deadline`.
    /// Returns how long it waited, or `None` when there was room at once (`bytes_max` 0: always).
    pub async fn wait_for_queue_room(
        &self,
        bytes_max: u64,
        deadline: std::time::Instant,
    ) -> Option<std::time::Duration> {
        if bytes_max == 0 || self.queued_bytes() <= bytes_max {
            return None;
        }
        let started = std::time::Instant::now();
        super::memory::wait_until(&self.queue_drained, deadline, || {
            self.queued_bytes() <= bytes_max
        })
        .await;
        Some(started.elapsed())
    }

    /// (free bytes, total bytes) of the file system holding this disk, as last read.
    pub fn space(&self) -> (u64, u64) {
        (
            self.free_bytes.load(Ordering::Acquire),
            self.total_bytes.load(Ordering::Acquire),
        )
    }
}

pub fn fs_space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some((st.f_bavail as u64 * frsize, st.f_blocks as u64 * frsize))
}

fn writer_loop(
    mut rx: mpsc::UnboundedReceiver<WriteJob>,
    memory: Arc<MemoryBudget>,
    durability: Durability,
    disk: std::sync::Weak<Disk>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < GROUP_JOBS_MAX {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let Some(disk) = disk.upgrade() else { return };
        run_group(&mut jobs, &memory, durability, &disk);
    }
}

fn run_group(jobs: &mut [WriteJob], memory: &MemoryBudget, durability: Durability, disk: &Disk) {
    // Room left above the reserve for this group's chunks.
    let mut room = disk.refresh_space().saturating_sub(disk.reserve_bytes);
    let mut results: Vec<Result<()>> = jobs
        .iter()
        .map(|j| {
            let check = admit(j, disk, &mut room);
            if let Err(e) = &check {
                memory.written(j.payload_bytes());
                if !j.chunks.is_empty() {
                    j.shuffle.mark_lost(&j.chunks, &e.to_string());
                }
            }
            check
        })
        .collect();
    // The chunks of every admitted job of one shuffle go out in one append (queue order kept within the
    // shuffle; different shuffles have different files): write-behind jobs are often a single partition
    // buffer, and one large direct write or `pwritev` costs far less than many small ones.
    let mut written = vec![false; jobs.len()];
    for first in 0..jobs.len() {
        if written[first] || results[first].is_err() || jobs[first].chunks.is_empty() {
            continue;
        }
        let members: Vec<usize> = (first..jobs.len())
            .filter(|&k| {
                !written[k]
                    && results[k].is_ok()
                    && !jobs[k].chunks.is_empty()
                    && Arc::ptr_eq(&jobs[k].shuffle, &jobs[first].shuffle)
            })
            .collect();
        let member_jobs: Vec<&WriteJob> = members.iter().map(|&k| &jobs[k]).collect();
        let res = write_chunks(&member_jobs, memory, disk);
        if durability == Durability::Fsync && res.is_ok() {
            jobs[first].shuffle.files.lock().start_writeback();
        }
        for &k in &members {
            written[k] = true;
            results[k] = match &res {
                Ok(()) => Ok(()),
                Err(e) => Err(e.duplicate()),
            };
        }
    }
    // The chunks are in the kernel's hands (or refused): they no longer hold up write-behind.
    let group_bytes: u64 = jobs.iter().map(WriteJob::payload_bytes).sum();
    disk.queued_bytes.fetch_sub(group_bytes, Ordering::AcqRel);
    disk.queue_drained.notify_waiters();
    let fsync = durability == Durability::Fsync;
    if fsync {
        sync_each_shuffle(jobs, &mut results, disk, |f| f.sync_data());
    }
    for (job, res) in jobs.iter().zip(results.iter_mut()) {
        let (Some(record), Ok(())) = (&job.commit, &*res) else {
            continue;
        };
        if let Some(why) = job
            .shuffle
            .attempt_lost(record.map_index, record.attempt_id)
        {
            *res = Err(super::shuffle::attempt_lost_error(
                &job.shuffle.key,
                record.map_index,
                record.attempt_id,
                &why,
            ));
            continue;
        }
        if disk.state() == DiskState::Failed || job.shuffle.disk_epoch != disk.epoch() {
            // The disk failed earlier in this group: nothing more is recorded on it.
            *res = Err(job.shuffle.lost_error());
            continue;
        }
        if job.shuffle.is_deleted() {
            *res = Err(StoreError::NotFound(format!(
                "{} was unregistered",
                job.shuffle.key
            )));
            continue;
        }
        *res = job.shuffle.files.lock().append_commit(record);
        note_error(res, disk);
    }
    if fsync {
        sync_each_shuffle(jobs, &mut results, disk, |f| f.sync_commits(true));
    }
    for (job, res) in jobs.iter_mut().zip(results) {
        // Drop the written blocks first: their batches' memory is released before anyone hears back.
        job.chunks.clear();
        if let Some(reply) = job.reply.take() {
            let _ = reply.send(res);
        } else if let Err(e) = res {
            tracing::warn!(shuffle = %job.shuffle.key, error = %e, "background flush failed");
        }
    }
}

/// Refuses a job on a failed disk, or one whose chunks would take free space below the reserve.
fn admit(job: &WriteJob, disk: &Disk, room: &mut u64) -> Result<()> {
    if disk.state() == DiskState::Failed || job.shuffle.disk_epoch != disk.epoch() {
        return Err(job.shuffle.lost_error());
    }
    let need: u64 = job
        .chunks
        .iter()
        .map(|c| {
            c.payload_bytes
                + crate::format::CHUNK_HEADER_BYTES as u64
                + 64
                + 24 * c.blocks.len() as u64
        })
        .sum::<u64>()
        + job
            .commit
            .as_ref()
            .map_or(0, |c| 64 + 16 * c.partitions.len() as u64);
    if need > *room {
        metrics::counter!("croupier_disk_errors_total", "disk" => disk.root.display().to_string(), "reason" => "no_space")
            .increment(1);
        return Err(StoreError::NoSpace(format!(
            "disk {} has {} bytes above its reserve of {} bytes; {} needs {need} (move the shuffle elsewhere or free space)",
            disk.root.display(),
            *room,
            disk.reserve_bytes,
            job.shuffle.key
        )));
    }
    *room -= need;
    Ok(())
}

/// Appends the chunks of `jobs` (all of one shuffle, in queue order) to the shuffle's files in one go.
fn write_chunks(jobs: &[&WriteJob], memory: &MemoryBudget, disk: &Disk) -> Result<()> {
    let Some(shuffle) = jobs.first().map(|j| &j.shuffle) else {
        return Ok(());
    };
    debug_assert!(jobs.iter().all(|j| Arc::ptr_eq(&j.shuffle, shuffle)));
    let bytes: u64 = jobs.iter().map(|j| j.payload_bytes()).sum();
    let chunks: Vec<&PendingChunk> = jobs.iter().flat_map(|j| j.chunks.iter()).collect();
    let res = if shuffle.is_deleted() {
        Err(StoreError::NotFound(format!(
            "{} was unregistered",
            shuffle.key
        )))
    } else {
        let mut new_segments = Vec::new();
        let r = shuffle
            .files
            .lock()
            .append_chunks(&chunks, &mut new_segments);
        for (id, f) in new_segments {
            shuffle.add_segment_reader(id, f);
        }
        r
    };
    memory.written(bytes);
    match res {
        Ok(written) => {
            shuffle.index_chunks(&written);
            let on_disk: u64 = written
                .iter()
                .map(|w| w.record.payload_len as u64 + crate::format::CHUNK_HEADER_BYTES as u64)
                .sum();
            shuffle.disk_bytes.fetch_add(on_disk, Ordering::AcqRel);
            disk.bytes_written.fetch_add(on_disk, Ordering::AcqRel);
            metrics::counter!("croupier_disk_write_bytes_total", "disk" => disk.root.display().to_string())
                .increment(on_disk);
            Ok(())
        }
        Err(e) => {
            for j in jobs {
                shuffle.mark_lost(&j.chunks, &e.to_string());
            }
            let mut r = Err(e);
            note_error(&mut r, disk);
            r
        }
    }
}

fn note_error(res: &mut Result<()>, disk: &Disk) {
    if let Err(e) = res {
        if let StoreError::Io { .. } = e {
            disk.fail(&e.to_string());
        }
        if matches!(e, StoreError::Io { .. } | StoreError::NoSpace(_)) {
            disk.write_errors.fetch_add(1, Ordering::AcqRel);
            metrics::counter!("croupier_disk_errors_total", "disk" => disk.root.display().to_string(), "reason" => e.reason())
                .increment(1);
        }
    }
}

fn sync_each_shuffle(
    jobs: &[WriteJob],
    results: &mut [Result<()>],
    disk: &Disk,
    sync: impl Fn(&mut super::files::ShuffleFiles) -> Result<()>,
) {
    let mut done: Vec<*const Shuffle> = Vec::new();
    for i in 0..jobs.len() {
        if results[i].is_err() {
            continue;
        }
        let ptr = Arc::as_ptr(&jobs[i].shuffle);
        if done.contains(&ptr) {
            continue;
        }
        done.push(ptr);
        // Only a shuffle with a commit in this group needs its appends on disk now: that sync also covers
        // every earlier append of the shuffle, so a group of flushes alone never waits for the disk (its
        // write-back was started, see `start_writeback`).
        let committing = jobs
            .iter()
            .zip(results.iter())
            .any(|(j, r)| r.is_ok() && j.commit.is_some() && Arc::as_ptr(&j.shuffle) == ptr);
        if !committing {
            continue;
        }
        if let Err(e) = sync(&mut jobs[i].shuffle.files.lock()) {
            let msg = e.to_string();
            disk.write_errors.fetch_add(1, Ordering::AcqRel);
            metrics::counter!("croupier_disk_errors_total", "disk" => disk.root.display().to_string(), "reason" => "io")
                .increment(1);
            disk.fail(&format!("fsync failed: {msg}"));
            for (j, job) in jobs.iter().enumerate() {
                if Arc::as_ptr(&job.shuffle) == ptr && results[j].is_ok() {
                    job.shuffle.mark_lost(&job.chunks, &msg);
                    results[j] = Err(StoreError::Unavailable(format!("fsync failed: {msg}")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn idle_disk(dir: &Path) -> Arc<Disk> {
        let memory = Arc::new(MemoryBudget::new(64 << 20, 48 << 20));
        Disk::start(0, dir.to_path_buf(), 0, 0, 4096, memory, Durability::Write)
            .expect("disk starts")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_push_waits_for_the_writer_queue_until_a_group_drains_it_or_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = idle_disk(dir.path());
        let cap = 4 << 20;
        let far = Instant::now() + Duration::from_secs(60);
        // Room at once, or the wait turned off: no wait at all.
        assert_eq!(disk.wait_for_queue_room(cap, far).await, None);
        disk.queued_bytes.store(cap + 1, Ordering::Release);
        assert_eq!(disk.wait_for_queue_room(0, far).await, None);

        // Over the cap and nothing drains: back at the deadline, not before.
        let started = Instant::now();
        let waited = disk
            .wait_for_queue_room(cap, started + Duration::from_millis(120))
            .await
            .expect("waited");
        assert!(started.elapsed() >= Duration::from_millis(120));
        assert!(waited >= Duration::from_millis(100), "{waited:?}");

        // A group that takes the queue back under the cap wakes the waiter long before its deadline.
        let drainer = {
            let disk = disk.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                disk.queued_bytes.fetch_sub(2, Ordering::AcqRel);
                disk.queue_drained.notify_waiters();
            })
        };
        let waited = disk.wait_for_queue_room(cap, far).await.expect("waited");
        // It came back because the queue drained, not at its deadline.
        assert_eq!(disk.queued_bytes(), cap - 1);
        assert!(waited < Duration::from_secs(30), "{waited:?}");
        drainer.await.expect("drainer");
    }
}
