//! The segment pool of one data dir: segment files of deleted shuffles, kept to be overwritten by new
//! segments instead of being deleted and created again.
//!
//! Why: a new file's blocks must be allocated by the file system (and, on thin-provisioned or
//! ballooned hosts, backed by the host) and a buffered write into it allocates new page-cache pages. A
//! recycled file already has both: overwriting it in place is what the disk and the page cache do
//! fastest (docs/PERFORMANCE.md, round 4). A shuffle server deletes and creates shuffles all day, so
//! recycled segments are its steady state.
//!
//! On disk (docs/FORMAT.md, section 2): `<data_dir>/segment-pool/<n>.seg`, `n` a decimal `u64` that
//! only grows. A pooled file holds stale bytes of some deleted shuffle and belongs to nobody; a segment
//! taken from the pool (the oldest first) is renamed into its shuffle's directory, and its writer
//! starts at offset 0 (its logical end), so the stale bytes past that end are never indexed and never
//! read.
//!
//! Limits: the pool holds at most `segment_pool_bytes_max` bytes (file lengths); a file that does not
//! fit is deleted instead, and so is a file shorter than a sixteenth of a segment
//! ([`pool_file_bytes_min`]): overwriting it saves little, and a new segment given a short file grows
//! past it into new blocks anyway. So the pool holds at most 16 x `segment_pool_bytes_max` /
//! `segment_bytes_max` files (128 with the defaults). The pool gives its files up first when the disk
//! runs low on space ([`SegmentPool::shrink_while`]).
//!
//! Prefill ([`SegmentPool::prefill`], `segment_pool_prefill_bytes`): a new server has no deleted
//! shuffles, so its first shuffles would all write new files. At startup a background thread per data
//! dir tops the pool up with files of zeros, written once as `<n>.fill` and renamed to `<n>.seg` when
//! complete (a `.fill` file left by a crash is deleted at the next start). The pool persists across
//! restarts, so this costs a disk's write bandwidth once in its life, not at every start.

use parking_lot::Mutex;
use std::path::{Path, PathBuf};

pub const POOL_DIR: &str = "segment-pool";

/// The shortest file the pool keeps, for segments of `segment_bytes_max` bytes: a sixteenth of that,
/// and at least one 4 KiB page.
pub fn pool_file_bytes_min(segment_bytes_max: u64) -> u64 {
    (segment_bytes_max / 16).max(4096)
}

fn pool_file_name(n: u64) -> String {
    format!("{n}.seg")
}

fn parse_pool_file_name(name: &str) -> Option<u64> {
    name.strip_suffix(".seg")?.parse().ok()
}

#[derive(Default)]
struct PoolState {
    /// (file number, length in bytes), oldest first. New segments take the oldest: its dirty pages
    /// (a `write`-durability shuffle's last bytes) have had the longest time to be written back, and
    /// overwriting pages that are still being written back is slow.
    files: std::collections::VecDeque<(u64, u64)>,
    bytes: u64,
    next: u64,
}

pub struct SegmentPool {
    dir: PathBuf,
    bytes_max: u64,
    /// Shorter files are not pooled ([`pool_file_bytes_min`]); at least 1 (empty files never are).
    file_bytes_min: u64,
    /// Label of the disk in metrics.
    disk_label: String,
    state: Mutex<PoolState>,
}

impl SegmentPool {
    /// Opens the pool of the data dir `root`, adopting the files a previous run left in it (they are free
    /// by construction: only whole segments of deleted shuffles are ever moved in). Files beyond
    /// `bytes_max`, and files shorter than `file_bytes_min`, are deleted; `bytes_max` 0 turns the pool
    /// off and empties it.
    pub fn open(root: &Path, bytes_max: u64, file_bytes_min: u64) -> std::io::Result<SegmentPool> {
        let file_bytes_min = file_bytes_min.max(1);
        let dir = root.join(POOL_DIR);
        std::fs::create_dir_all(&dir)?;
        let mut found: Vec<(u64, u64)> = Vec::new();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let name = entry.file_name();
            let name = name.to_str().unwrap_or_default();
            if name.ends_with(FILL_SUFFIX) {
                // A prefill cut short by a crash or a stop: incomplete, never pooled.
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(n) = parse_pool_file_name(name) else {
                continue;
            };
            match entry.metadata() {
                Ok(m) if m.is_file() => found.push((n, m.len())),
                _ => continue,
            }
        }
        found.sort_unstable();
        let next = found.last().map_or(0, |(n, _)| n + 1);
        let pool = SegmentPool {
            dir,
            bytes_max,
            file_bytes_min,
            disk_label: root.display().to_string(),
            state: Mutex::new(PoolState {
                next,
                ..PoolState::default()
            }),
        };
        {
            let mut st = pool.state.lock();
            for (n, len) in found {
                if len >= file_bytes_min && st.bytes + len <= bytes_max {
                    st.files.push_back((n, len));
                    st.bytes += len;
                } else {
                    let _ = std::fs::remove_file(pool.dir.join(pool_file_name(n)));
                }
            }
        }
        Ok(pool)
    }

    /// Bytes held by pooled files.
    pub fn bytes(&self) -> u64 {
        self.state.lock().bytes
    }

    /// Pooled files.
    pub fn files(&self) -> usize {
        self.state.lock().files.len()
    }

    /// Moves the segment file at `path` (a deleted shuffle's, on this data dir, with no open handle
    /// left) into the pool. Returns false, leaving the file where it is, when it is shorter than the
    /// pool's minimum (empty ones included), does not fit under the limit, or cannot be moved.
    /// Write-back of the file's dirty pages is started at once (without waiting), so that it is clean
    /// by the time a new segment overwrites it.
    pub fn put(&self, path: &Path) -> bool {
        let Ok(len) = std::fs::metadata(path).map(|m| m.len()) else {
            return false;
        };
        {
            let st = self.state.lock();
            if len < self.file_bytes_min || st.bytes + len > self.bytes_max {
                return false;
            }
        }
        start_writeback(path);
        let mut st = self.state.lock();
        if st.bytes + len > self.bytes_max {
            return false;
        }
        let n = st.next;
        let to = self.dir.join(pool_file_name(n));
        if let Err(e) = std::fs::rename(path, &to) {
            tracing::warn!(from = %path.display(), to = %to.display(), error = %e, "could not move a segment into the pool");
            return false;
        }
        st.next = n + 1;
        st.files.push_back((n, len));
        st.bytes += len;
        true
    }

    /// Renames the oldest pooled file to `to` (a new segment's path). Returns its length (the stale
    /// bytes it still holds), or None when the pool is empty or the move failed (the caller then
    /// creates a new file).
    pub fn take(&self, to: &Path) -> Option<u64> {
        let mut st = self.state.lock();
        while let Some((n, len)) = st.files.pop_front() {
            st.bytes -= len;
            let from = self.dir.join(pool_file_name(n));
            match std::fs::rename(&from, to) {
                Ok(()) => {
                    metrics::counter!("croupier_segments_recycled_total", "disk" => self.disk_label.clone())
                        .increment(1);
                    return Some(len);
                }
                Err(e) => {
                    tracing::warn!(from = %from.display(), error = %e, "could not take a segment from the pool; dropping it");
                    let _ = std::fs::remove_file(&from);
                }
            }
        }
        None
    }

    /// Deletes pooled files, oldest first, while `want_more` says more space is needed. Returns the
    /// bytes released.
    pub fn shrink_while(&self, mut want_more: impl FnMut() -> bool) -> u64 {
        let mut released = 0;
        loop {
            let next = {
                let mut st = self.state.lock();
                if st.files.is_empty() || !want_more() {
                    return released;
                }
                let Some((n, len)) = st.files.pop_front() else {
                    return released;
                };
                st.bytes -= len;
                (n, len)
            };
            let path = self.dir.join(pool_file_name(next.0));
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a pooled segment");
            }
            released += next.1;
        }
    }
}

/// What [`SegmentPool::prefill`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Prefilled {
    pub files: u64,
    pub bytes: u64,
}

impl SegmentPool {
    /// Writes files of zeros into the pool (each `file_bytes` long, the last one shorter, none shorter
    /// than the pool's minimum) until it holds `target_bytes` (capped by its limit), checking `go_on`
    /// before each file and every [`PREFILL_WRITE_BYTES`] written; a `false` stops it and deletes the
    /// file being written. A write error stops it too, returned with what was pooled before it. Files
    /// that shuffles take from the pool meanwhile leave room that is filled again: the loop stops at
    /// the target, not at a count.
    pub fn prefill(
        &self,
        target_bytes: u64,
        file_bytes: u64,
        mut go_on: impl FnMut() -> bool,
    ) -> (Prefilled, std::io::Result<()>) {
        use std::io::Write;
        assert!(file_bytes > 0, "prefill: file_bytes must be positive");
        let target_bytes = target_bytes.min(self.bytes_max);
        let zeros = vec![0u8; PREFILL_WRITE_BYTES];
        let mut done = Prefilled::default();
        // Bounded: each round pools one file or returns; shuffles taking files can add rounds, at most
        // one per file they take.
        loop {
            let (n, len) = {
                let mut st = self.state.lock();
                let want = target_bytes.saturating_sub(st.bytes).min(file_bytes);
                // `file_bytes_min` is at least 1: this also stops at the target.
                if want < self.file_bytes_min {
                    return (done, Ok(()));
                }
                let n = st.next;
                st.next += 1;
                (n, want)
            };
            if !go_on() {
                return (done, Ok(()));
            }
            let tmp = self.dir.join(format!("{n}{FILL_SUFFIX}"));
            let written = (|| -> std::io::Result<bool> {
                let mut f = std::fs::File::create(&tmp)?;
                let mut left = len;
                while left > 0 {
                    if !go_on() {
                        return Ok(false);
                    }
                    let step = left.min(PREFILL_WRITE_BYTES as u64) as usize;
                    f.write_all(&zeros[..step])?;
                    left -= step as u64;
                }
                Ok(true)
            })();
            match written {
                Ok(true) => {}
                Ok(false) => {
                    let _ = std::fs::remove_file(&tmp);
                    return (done, Ok(()));
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return (done, Err(e));
                }
            }
            start_writeback(&tmp);
            let mut st = self.state.lock();
            if st.bytes + len > self.bytes_max {
                // Deleted shuffles filled the pool meanwhile.
                drop(st);
                let _ = std::fs::remove_file(&tmp);
                return (done, Ok(()));
            }
            if let Err(e) = std::fs::rename(&tmp, self.dir.join(pool_file_name(n))) {
                drop(st);
                let _ = std::fs::remove_file(&tmp);
                return (done, Err(e));
            }
            st.files.push_back((n, len));
            st.bytes += len;
            done.files += 1;
            done.bytes += len;
        }
    }
}

/// Suffix of a pool file being prefilled.
const FILL_SUFFIX: &str = ".fill";

/// Prefill writes (and checks whether to go on) in steps of this size.
pub const PREFILL_WRITE_BYTES: usize = 1 << 20;

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)` over the whole file: starts write-back, does not wait. A
/// hint; errors are ignored (the file's bytes are stale anyway).
fn start_writeback(path: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(path) else {
        return;
    };
    // SAFETY: plain syscall on an fd we own; offset 0 and length 0 mean "to the end of the file".
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(dir: &Path, name: &str, len: usize) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, vec![7u8; len]).expect("write segment");
        p
    }

    #[test]
    fn keeps_files_under_its_limit_and_hands_out_the_oldest() {
        let root = tempfile::tempdir().expect("tempdir");
        let shuffle = root.path().join("s");
        std::fs::create_dir(&shuffle).expect("mkdir");
        let pool = SegmentPool::open(root.path(), 10_000, 1).expect("open");
        assert!(pool.put(&segment(&shuffle, "a", 4_000)));
        assert!(pool.put(&segment(&shuffle, "b", 5_000)));
        // Would pass the limit: stays where it is.
        let c = segment(&shuffle, "c", 2_000);
        assert!(!pool.put(&c));
        assert!(c.exists());
        // Empty files are not worth keeping.
        assert!(!pool.put(&segment(&shuffle, "d", 0)));
        assert_eq!((pool.files(), pool.bytes()), (2, 9_000));

        let to = shuffle.join("seg-000000.data");
        assert_eq!(pool.take(&to), Some(4_000), "oldest first");
        assert_eq!(std::fs::metadata(&to).expect("moved").len(), 4_000);
        assert_eq!((pool.files(), pool.bytes()), (1, 5_000));

        // A restart adopts what is left; numbering goes on after the highest file left (1.seg).
        drop(pool);
        let pool = SegmentPool::open(root.path(), 10_000, 1).expect("reopen");
        assert_eq!((pool.files(), pool.bytes()), (1, 5_000));
        assert!(!pool.put(&segment(&shuffle, "e", 6_000)), "over the limit");
        assert!(pool.put(&c));
        assert!(root.path().join(POOL_DIR).join("2.seg").exists());
        assert_eq!(pool.take(&shuffle.join("x")), Some(5_000));
        assert_eq!(pool.take(&shuffle.join("y")), Some(2_000));
        assert_eq!(pool.take(&shuffle.join("z")), None);
        assert_eq!(pool.bytes(), 0);
    }

    #[test]
    fn prefill_tops_up_to_the_target_and_a_stop_leaves_no_partial_file() {
        let root = tempfile::tempdir().expect("tempdir");
        let pool = SegmentPool::open(root.path(), 5 * PREFILL_WRITE_BYTES as u64, 1).expect("open");
        assert!(pool.put(&segment(root.path(), "old", 1_000)));
        // Stopped inside its second file (after the first file's two go_on calls, the second's check
        // and one write step): the first file is pooled, the partial second one is deleted.
        let mut calls = 0;
        let (done, result) = pool.prefill(u64::MAX, 2 * PREFILL_WRITE_BYTES as u64, || {
            calls += 1;
            calls <= 5
        });
        result.expect("no write error");
        assert_eq!(
            done,
            Prefilled {
                files: 1,
                bytes: 2 * PREFILL_WRITE_BYTES as u64
            }
        );
        let names: Vec<String> = std::fs::read_dir(root.path().join(POOL_DIR))
            .expect("list")
            .flatten()
            .map(|e| e.file_name().into_string().expect("utf-8"))
            .collect();
        assert!(names.iter().all(|n| n.ends_with(".seg")), "{names:?}");
        // Going on (number 2 was used by the file deleted): capped by the limit, the last file shorter.
        let (done, result) = pool.prefill(u64::MAX, 2 * PREFILL_WRITE_BYTES as u64, || true);
        result.expect("no write error");
        let limit = 5 * PREFILL_WRITE_BYTES as u64;
        assert_eq!(done.bytes, limit - 1_000 - 2 * PREFILL_WRITE_BYTES as u64);
        assert_eq!(done.files, 2);
        assert_eq!(pool.bytes(), limit);
        let zeros = std::fs::read(root.path().join(POOL_DIR).join("3.seg")).expect("read");
        assert_eq!(zeros.len() as u64, 2 * PREFILL_WRITE_BYTES as u64);
        assert!(zeros.iter().all(|b| *b == 0));
        // Full: nothing to do. A leftover `.fill` file is deleted at the next open.
        assert_eq!(
            pool.prefill(u64::MAX, 4096, || true).0,
            Prefilled::default()
        );
        std::fs::write(root.path().join(POOL_DIR).join("9.fill"), b"partial").expect("plant");
        drop(pool);
        let pool = SegmentPool::open(root.path(), limit, 1).expect("reopen");
        assert_eq!(pool.bytes(), limit);
        assert!(!root.path().join(POOL_DIR).join("9.fill").exists());
    }

    #[test]
    fn shrinks_oldest_first_and_a_smaller_limit_at_restart_drops_files() {
        let root = tempfile::tempdir().expect("tempdir");
        let pool = SegmentPool::open(root.path(), 1 << 20, 1).expect("open");
        for (i, len) in [1_000usize, 2_000, 3_000].into_iter().enumerate() {
            assert!(pool.put(&segment(root.path(), &format!("s{i}"), len)));
        }
        let mut asked = 0;
        let released = pool.shrink_while(|| {
            asked += 1;
            asked <= 2
        });
        assert_eq!(released, 3_000, "the two oldest files");
        assert_eq!(pool.bytes(), 3_000);
        let left: Vec<_> = std::fs::read_dir(root.path().join(POOL_DIR))
            .expect("list")
            .flatten()
            .map(|e| e.file_name().into_string().expect("utf-8"))
            .collect();
        assert_eq!(left, vec!["2.seg".to_string()]);
        drop(pool);
        let off = SegmentPool::open(root.path(), 0, 1).expect("reopen with the pool off");
        assert_eq!(off.bytes(), 0);
        assert!(!off.put(&segment(root.path(), "t", 10)));
        assert_eq!(
            std::fs::read_dir(root.path().join(POOL_DIR))
                .expect("list")
                .count(),
            0
        );
    }
    #[test]
    fn files_shorter_than_the_minimum_are_not_pooled() {
        assert_eq!(pool_file_bytes_min(1 << 30), 64 << 20);
        assert_eq!(pool_file_bytes_min(16 << 10), 4096);
        let root = tempfile::tempdir().expect("tempdir");
        let pool = SegmentPool::open(root.path(), 1 << 20, 1_000).expect("open");
        let short = segment(root.path(), "short", 999);
        assert!(!pool.put(&short), "under the minimum");
        assert!(short.exists(), "left for the caller to delete");
        assert!(pool.put(&segment(root.path(), "a", 1_000)));
        assert!(pool.put(&segment(root.path(), "b", 3_000)));
        // A restart with a higher minimum (larger segments) drops the files now too short.
        drop(pool);
        let pool = SegmentPool::open(root.path(), 1 << 20, 2_000).expect("reopen");
        assert_eq!((pool.files(), pool.bytes()), (1, 3_000));
        assert!(!root.path().join(POOL_DIR).join("0.seg").exists());
        // Prefill stops rather than write a file under the minimum: 3_000 + 2 x 2_500 = 8_000, and the
        // 1_000 bytes left to the 9_000 target are not written.
        let (done, result) = pool.prefill(9_000, 2_500, || true);
        result.expect("no write error");
        assert_eq!(
            done,
            Prefilled {
                files: 2,
                bytes: 5_000
            }
        );
        assert_eq!((pool.files(), pool.bytes()), (3, 8_000));
    }
}
