//! Background `fdatasync` of finished segment files, one thread per disk.
//!
//! When a segment reaches `segment_bytes_max` the writer rolls to a new one, and the finished segment
//! gets its final sync. That segment can still hold most of a gigabyte of dirty pages: its `fdatasync`
//! took 0.6-1.3 s here, and on the disk's writer thread it stalled every write and commit queued behind
//! it for as long (docs/PERFORMANCE.md, round 7). The writer now hands the finished file to this thread
//! and goes on with the new segment.
//!
//! A shuffle has at most one segment syncing: its next roll, and every sync of its own (group commit
//! with durability `fsync`, shutdown), first waits for that sync ([`PendingSync::wait`]). So only a
//! shuffle's last two segments can ever hold unsynced data, which is what recovery checks
//! (docs/FORMAT.md section 10.2). A failed sync takes the disk out of service at once, as a failed
//! write does, and the waiting roll or commit gets the error too.

use crate::error::{Result, StoreError};
use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

/// Finished segments queued for their sync, at most; a writer that finds the queue full syncs the
/// segment itself. Each shuffle has at most one queued, so this only bounds many shuffles rolling at once.
const QUEUED_SYNCS_MAX: usize = 64;

struct SyncJob {
    file: File,
    path: PathBuf,
    done: mpsc::SyncSender<std::io::Result<()>>,
}

/// The handle a writer keeps for a segment being synced in the background.
pub struct PendingSync {
    path: PathBuf,
    done: mpsc::Receiver<std::io::Result<()>>,
}

impl PendingSync {
    fn finished(path: PathBuf, result: std::io::Result<()>) -> PendingSync {
        let (tx, rx) = mpsc::sync_channel(1);
        let _ = tx.send(result);
        PendingSync { path, done: rx }
    }

    /// Blocks until the segment is synced; the sync's error names the file.
    pub fn wait(self) -> Result<()> {
        match self.done.recv() {
            Ok(result) => result.map_err(|e| StoreError::io(&self.path, e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "the segment syncer stopped before syncing {}",
                self.path.display()
            ))),
        }
    }
}

/// The sync thread of one disk.
pub struct SegmentSyncer {
    tx: mpsc::SyncSender<SyncJob>,
}

impl SegmentSyncer {
    /// Starts the thread. `on_error` runs on it with the error's text when a sync fails (the disk
    /// fails itself).
    pub fn start(
        thread_name: String,
        on_error: impl Fn(&str) + Send + 'static,
    ) -> std::io::Result<Arc<SegmentSyncer>> {
        let (tx, rx) = mpsc::sync_channel::<SyncJob>(QUEUED_SYNCS_MAX);
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let started = Instant::now();
                    let result = job.file.sync_data();
                    metrics::histogram!("croupier_segment_sync_seconds")
                        .record(started.elapsed().as_secs_f64());
                    if let Err(e) = &result {
                        on_error(&format!(
                            "fdatasync of finished segment {} failed: {e}",
                            job.path.display()
                        ));
                    }
                    // The writer may be gone (its shuffle was deleted meanwhile): nobody to tell.
                    let _ = job.done.send(result);
                }
            })?;
        Ok(Arc::new(SegmentSyncer { tx }))
    }

    /// Queues `file` for its sync. Never blocks on the queue: when it is full (or the thread is gone)
    /// the file is synced right here, as before there was a sync thread.
    pub fn submit(&self, file: File, path: PathBuf) -> PendingSync {
        let (done, rx) = mpsc::sync_channel(1);
        match self.tx.try_send(SyncJob {
            file,
            path: path.clone(),
            done,
        }) {
            Ok(()) => PendingSync { path, done: rx },
            Err(mpsc::TrySendError::Full(job) | mpsc::TrySendError::Disconnected(job)) => {
                let result = job.file.sync_data();
                PendingSync::finished(path, result)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_submitted_segment_is_synced_and_its_waiter_gets_the_result() {
        let dir = tempfile::tempdir().expect("tempdir");
        let errors = Arc::new(AtomicUsize::new(0));
        let seen = errors.clone();
        let syncer = SegmentSyncer::start("test-sync".into(), move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .expect("start");
        let mut pending = Vec::new();
        for i in 0..QUEUED_SYNCS_MAX + 8 {
            let path = dir.path().join(format!("{i}.seg"));
            let mut f = File::create(&path).expect("create");
            f.write_all(&[i as u8; 4096]).expect("write");
            // More than the queue holds: the overflow is synced inline, never refused.
            pending.push(syncer.submit(f, path));
        }
        for p in pending {
            p.wait().expect("synced");
        }
        assert_eq!(errors.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_failed_sync_reaches_both_the_disk_and_the_waiter() {
        // fdatasync of a pipe fails with EINVAL: a stand-in for a disk's write-back error.
        let (reader, _writer) = std::io::pipe().expect("pipe");
        let file = File::from(std::os::fd::OwnedFd::from(reader));
        let errors = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
        let seen = errors.clone();
        let syncer = SegmentSyncer::start("test-sync".into(), move |why| {
            seen.lock().push(why.to_string());
        })
        .expect("start");
        let err = syncer
            .submit(file, PathBuf::from("/data/apps/a/1/000001.seg"))
            .wait()
            .expect_err("a pipe cannot be synced");
        assert!(err.to_string().contains("000001.seg"), "{err}");
        let seen = errors.lock();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].contains("000001.seg"), "{}", seen[0]);
    }
}
