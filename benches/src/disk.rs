//! The disk baseline: a plain sequential write of the same number of bytes into a file beside the
//! server's data dir, in writes of the server's chunk size, with the same durability (`fsync`: one
//! `fdatasync` at the end, included in the time; `write`: done when the last write returns, like a
//! `write`-durability commit).
//!
//! Same disk state: croupier recycles the segment files of deleted shuffles (its segment pool): the
//! benchmark unregisters the shuffle after each repetition, so the first repetition writes new files and
//! later ones overwrite pooled files in place. The baseline does the same: its file is created by the
//! first repetition and overwritten in place by later ones (it is deleted with the scenario's
//! directory at the start of the next run). Dirty pages left by a `write` phase are flushed outside the
//! timed window, so they do not slow the next phase.
//!
//! Same memory state: on this kind of VM the first touch of a guest page that was free costs ~10x a
//! touch of a recycled one (a fresh 1 GiB memcpy ran at 0.5-0.8 GiB/s, a repeated one at 6-7.5 GiB/s),
//! and a buffered write allocates page-cache pages. Whichever phase ran right after another one freed its
//! pages would write faster. So before each phase (the gRPC baseline, this baseline and croupier's),
//! [`prime`] writes the same number of bytes to a scratch file and deletes it, untimed: every phase starts
//! right after the same amount of page cache was freed.
//!
//! Same cached pages: between repetitions the kernel may evict part of the file a phase is about to
//! overwrite (the baseline's file, croupier's pooled segments). Overwriting an evicted page allocates a
//! new one, and on this VM a new page costs a host fault: a push into fully evicted segments took twice
//! the writer CPU of one into cached segments (PERFORMANCE.md round 12). So before each write phase
//! [`cache_files`] reads the files it will overwrite back into the page cache, untimed, and reports how
//! much of them had stayed cached.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Payload source: this many pseudo-random bytes, written cyclically.
pub const POOL_BYTES: usize = 64 << 20;

pub fn pool() -> Vec<u8> {
    let mut pool = vec![0u8; POOL_BYTES];
    croupier_client::datagen::ByteStream::new(0xD15C, 0, 0).fill(&mut pool);
    pool
}

pub struct DiskResult {
    pub bytes: u64,
    pub seconds: f64,
    /// CPU time of the writing thread within the timed window (the kernel's copy into the page cache).
    pub cpu_seconds: f64,
}

/// CPU time of the calling thread.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Writes `bytes` to a new file at `path` and deletes it (untimed, not synced: the dirty pages are simply
/// dropped), leaving that much freed page cache for the phase that follows.
pub fn prime(path: &Path, bytes: u64, pool: &[u8]) -> Result<(), String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    let mut left = bytes;
    let mut at = 0usize;
    while left > 0 {
        let n = (left.min(4 << 20) as usize).min(pool.len() - at);
        file.write_all(&pool[at..at + n]).map_err(err)?;
        left -= n as u64;
        at = (at + n) % pool.len();
    }
    drop(file);
    std::fs::remove_file(path).map_err(err)
}

/// Writes `bytes` to the file at `path` from offset 0 in `write_bytes` pieces, creating it if needed and
/// otherwise overwriting it in place; `fsync` adds one fdatasync at the end. The file is kept.
pub fn sequential_write(
    path: &Path,
    bytes: u64,
    write_bytes: usize,
    fsync: bool,
    pool: &[u8],
) -> Result<DiskResult, String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let write_bytes = write_bytes.clamp(4096, pool.len());
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(err)?;
    let started = Instant::now();
    let cpu_started = thread_cpu_seconds();
    let mut left = bytes;
    let mut at = 0usize;
    while left > 0 {
        let n = (left.min(write_bytes as u64) as usize).min(pool.len() - at);
        file.write_all(&pool[at..at + n]).map_err(err)?;
        left -= n as u64;
        at = (at + n) % pool.len();
    }
    if fsync {
        file.sync_data().map_err(err)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = thread_cpu_seconds() - cpu_started;
    if !fsync {
        // Outside the timed window: keep this write-back out of the next phase.
        file.sync_data().map_err(err)?;
    }
    drop(file);
    Ok(DiskResult {
        bytes,
        seconds,
        cpu_seconds,
    })
}

/// Bytes of the file at `path` that are in the page cache (`mincore`); None if that cannot be told.
fn resident_bytes(path: &Path) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).ok()?;
    let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
    if len == 0 {
        return Some(0);
    }
    // SAFETY: sysconf only reads a system constant.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|&p| p > 0)?;
    // SAFETY: a read-only shared mapping of a file we hold open, unmapped before returning; no page of
    // it is accessed, `mincore` only reports residency into a vector of one byte per page.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        if addr == libc::MAP_FAILED {
            return None;
        }
        let mut vec = vec![0u8; len.div_ceil(page)];
        let rc = libc::mincore(addr, len, vec.as_mut_ptr());
        libc::munmap(addr, len);
        if rc != 0 {
            return None;
        }
        let pages = vec.iter().filter(|&&b| b & 1 == 1).count() as u64;
        Some((pages * page as u64).min(len as u64))
    }
}

/// Reads every regular file in `paths` (files, or directories whose files are taken) through the page
/// cache, untimed, so that a phase overwriting them finds their pages cached. Returns the share of
/// their bytes that was cached before (1.0 when there are none).
pub fn cache_files(paths: &[&Path]) -> Result<f64, String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = std::fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()))?;
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    files.push(e.path());
                }
            }
        } else if p.is_file() {
            files.push(p.to_path_buf());
        }
    }
    let (mut total, mut resident) = (0u64, 0u64);
    let mut buf = vec![0u8; 4 << 20];
    for f in &files {
        let err = |e: std::io::Error| format!("{}: {e}", f.display());
        let len = std::fs::metadata(f).map_err(err)?.len();
        total += len;
        resident += resident_bytes(f).unwrap_or(len).min(len);
        let mut file = std::fs::File::open(f).map_err(err)?;
        while std::io::Read::read(&mut file, &mut buf).map_err(err)? > 0 {}
    }
    Ok(if total == 0 {
        1.0
    } else {
        resident as f64 / total as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Writes `bytes` to `path`, syncs it and asks the kernel to drop its (now clean) pages.
    fn write_evicted(path: &Path, bytes: usize) {
        std::fs::write(path, vec![7u8; bytes]).expect("write");
        let f = std::fs::File::open(path).expect("open");
        f.sync_all().expect("sync");
        // SAFETY: plain syscall on an fd we own.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }

    #[test]
    fn cache_files_reports_what_was_cached_and_leaves_every_page_cached() {
        let dir = tempfile::tempdir_in(std::env::current_dir().expect("cwd")).expect("tempdir");
        let sub = dir.path().join("pool");
        std::fs::create_dir(&sub).expect("mkdir");
        let a = dir.path().join("a.bin");
        let b = sub.join("b.bin");
        write_evicted(&a, 1 << 20);
        write_evicted(&b, 3 << 20);
        let before = resident_bytes(&a).expect("mincore") + resident_bytes(&b).expect("mincore");
        assert!(
            before < 4 << 20,
            "the kernel kept every page after POSIX_FADV_DONTNEED ({before} bytes)"
        );
        let share = cache_files(&[&a, &sub]).expect("cache");
        let want = before as f64 / (4 << 20) as f64;
        assert!(
            (share - want).abs() < 0.01,
            "share {share}, mincore before {want}"
        );
        assert_eq!(resident_bytes(&a), Some(1 << 20));
        assert_eq!(resident_bytes(&b), Some(3 << 20));
        // Nothing to cache: everything there is was cached.
        assert_eq!(
            cache_files(&[&dir.path().join("missing")]).expect("none"),
            1.0
        );
    }
}
