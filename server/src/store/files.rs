//! All file I/O of a shuffle directory goes through this module: appending chunks to segment files,
//! appending index and commit records, syncing, positioned reads, and reading logs back at recovery.
//!
//! Appends are positioned and vectored (`pwritev`): a chunk header and the blocks' `Bytes` go to the kernel without being
//! copied into an intermediate buffer, and many chunks share one system call. A failed append is cut back
//! (`ftruncate`) to where it began, so a file never keeps a half-written record that a later append
//! would bury.

use super::pool::SegmentPool;
use super::syncer::{PendingSync, SegmentSyncer};
use crate::error::{Result, StoreError};
use crate::format::{
    frame_record, ChunkHeader, CommitRecord, IndexBlock, IndexRecord, CHUNK_HEADER_BYTES,
    MAGIC_COMMIT, MAGIC_INDEX, MAGIC_META,
};
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const INDEX_FILE: &str = "index.log";
pub const COMMIT_FILE: &str = "commit.log";
pub const META_FILE: &str = "shuffle.meta";

/// `pwritev` takes at most this many slices per call (IOV_MAX on Linux).
const IOV_MAX: usize = 1024;

const ALIGN: u64 = crate::config::DIRECT_IO_ALIGN_BYTES;

/// The zero padding that ends every segment append on an [`ALIGN`] boundary.
static PAGE_ZEROS: [u8; ALIGN as usize] = [0; ALIGN as usize];

/// Size of a writer thread's staging buffer for `O_DIRECT` appends (allocated on first use, reused).
pub const DIRECT_STAGING_BYTES: usize = 4 << 20;

/// A heap buffer aligned for `O_DIRECT`.
struct StagingBuffer {
    ptr: std::ptr::NonNull<u8>,
}

impl StagingBuffer {
    fn layout() -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(DIRECT_STAGING_BYTES, ALIGN as usize)
            .expect("constant layout")
    }

    fn new() -> StagingBuffer {
        let layout = Self::layout();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = std::ptr::NonNull::new(ptr) else {
            std::alloc::handle_alloc_error(layout)
        };
        StagingBuffer { ptr }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to DIRECT_STAGING_BYTES initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), DIRECT_STAGING_BYTES) }
    }
}

impl Drop for StagingBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout()) }
    }
}

thread_local! {
    /// The disk writer thread's staging buffer (only writer threads append).
    static STAGING: std::cell::RefCell<Option<StagingBuffer>> = const { std::cell::RefCell::new(None) };
}

/// Opens `path` with `O_DIRECT`, for appends (`write`) or reads. A file system without direct I/O
/// support (tmpfs on old kernels) fails here with EINVAL.
pub fn open_direct(path: &Path, write: bool) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| StoreError::io(path, e))
}

/// Checks at startup that a data dir supports `O_DIRECT` writes and reads of aligned buffers.
pub fn probe_direct(root: &Path) -> std::result::Result<(), String> {
    let path = root.join(".croupier-direct-probe");
    let res = (|| -> std::result::Result<(), String> {
        std::fs::write(&path, b"").map_err(|e| e.to_string())?;
        let f = open_direct(&path, true).map_err(|e| e.to_string())?;
        let mut buf = StagingBuffer::new();
        let block = &buf.as_mut_slice()[..ALIGN as usize];
        write_all_vectored_at(&f, &mut [IoSlice::new(block)], 0).map_err(|e| e.to_string())?;
        let r = open_direct(&path, false).map_err(|e| e.to_string())?;
        let back = read_at(&r, &path, 0, ALIGN as usize).map_err(|e| e.to_string())?;
        if back.len() != ALIGN as usize {
            return Err("direct read returned a short block".into());
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    res.map_err(|e| {
        format!(
            "io = \"direct\": {} does not support O_DIRECT: {e}",
            root.display()
        )
    })
}

pub fn segment_file_name(segment_id: u32) -> String {
    format!("seg-{segment_id:06}.data")
}

/// Parses `seg-000123.data` into 123.
pub fn parse_segment_file_name(name: &str) -> Option<u32> {
    name.strip_prefix("seg-")?
        .strip_suffix(".data")?
        .parse()
        .ok()
}

/// A block waiting in memory to be written.
#[derive(Clone)]
pub struct BufferedBlock {
    pub map_index: u32,
    pub attempt_id: u64,
    pub seq: u32,
    pub crc32: u32,
    pub data: super::shuffle::BlockData,
    /// The memory budget of the block's push batch; released when the batch's last block drops.
    pub charge: std::sync::Arc<super::memory::Charge>,
}

/// One partition's buffered blocks, to be written as one chunk.
pub struct PendingChunk {
    pub partition_id: u32,
    pub blocks: Vec<BufferedBlock>,
    pub payload_bytes: u64,
}

struct AppendFile {
    path: PathBuf,
    file: File,
    len: u64,
    /// Set when the file's length is unknown after a failed cut-back: it takes no more appends.
    broken: bool,
    /// Length at the last successful sync.
    synced_len: u64,
    /// Write-back was started (`sync_file_range`) up to here.
    writeback_len: u64,
    /// `O_DIRECT` handle of the same file, for segment appends with `io = "direct"`.
    direct: Option<File>,
}

impl AppendFile {
    fn open(path: PathBuf) -> Result<AppendFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        Ok(AppendFile {
            path,
            file,
            len,
            broken: false,
            synced_len: len,
            writeback_len: len,
            direct: None,
        })
    }

    /// Opens the file for appends through `O_DIRECT` (a second handle; syncs, cut-backs and length
    /// stay on the first).
    fn open_direct(path: PathBuf) -> Result<AppendFile> {
        let mut f = AppendFile::open(path)?;
        f.direct = Some(open_direct(&f.path, true)?);
        Ok(f)
    }

    /// Treats the file as empty: appends start at offset 0 and overwrite what is there (a segment taken
    /// from the pool, whose old bytes are stale). Nothing is cut: the stale tail past the logical end
    /// is never indexed.
    fn start_over(&mut self) {
        self.len = 0;
        self.synced_len = 0;
        self.writeback_len = 0;
    }

    /// Appends `parts` through the `O_DIRECT` handle: copies them into the thread's aligned staging
    /// buffer and writes it out whenever it is full, then once more with the tail padded by zeros to
    /// [`DIRECT_IO_ALIGN_BYTES`]. The file length therefore stays aligned; the padding is never referenced.
    fn append_direct(&mut self, parts: &[IoSlice<'_>]) -> Result<()> {
        if self.broken {
            return Err(StoreError::Unavailable(format!(
                "{} takes no more appends after an unrecoverable write error",
                self.path.display()
            )));
        }
        let Some(direct) = self.direct.as_ref() else {
            return Err(StoreError::Unavailable(format!(
                "{} is not open for direct I/O",
                self.path.display()
            )));
        };
        let start = self.len;
        assert!(
            start.is_multiple_of(ALIGN),
            "direct appends start at aligned offsets"
        );
        let res = STAGING.with(|staging| -> std::io::Result<u64> {
            let mut staging = staging.borrow_mut();
            let buf = staging
                .get_or_insert_with(StagingBuffer::new)
                .as_mut_slice();
            let mut offset = start;
            let mut fill = 0usize;
            for part in parts {
                let mut rest: &[u8] = part;
                while !rest.is_empty() {
                    let n = rest.len().min(buf.len() - fill);
                    buf[fill..fill + n].copy_from_slice(&rest[..n]);
                    fill += n;
                    rest = &rest[n..];
                    if fill == buf.len() {
                        write_all_vectored_at(direct, &mut [IoSlice::new(buf)], offset)?;
                        offset += fill as u64;
                        fill = 0;
                    }
                }
            }
            if fill > 0 {
                let padded = (fill as u64).div_ceil(ALIGN) * ALIGN;
                buf[fill..padded as usize].fill(0);
                write_all_vectored_at(
                    direct,
                    &mut [IoSlice::new(&buf[..padded as usize])],
                    offset,
                )?;
                offset += padded;
            }
            Ok(offset)
        });
        match res {
            Ok(end) => {
                self.len = end;
                Ok(())
            }
            Err(e) => {
                let err = StoreError::io(&self.path, e);
                self.cut_back(start);
                Err(err)
            }
        }
    }

    /// Asks the kernel to start writing the bytes appended since the last call, without waiting
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so a later `fdatasync` only waits for the tail.
    /// Purely a hint: an I/O error surfaces in that `fdatasync`.
    fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        let from = self.writeback_len.min(self.len);
        let len = self.len - from;
        if len == 0 {
            return;
        }
        // SAFETY: plain syscall on an fd this struct owns; offsets are within the file.
        let rc = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                from as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc == 0 {
            self.writeback_len = self.len;
        }
    }

    fn append(&mut self, slices: &mut [IoSlice<'_>]) -> Result<()> {
        if self.broken {
            return Err(StoreError::Unavailable(format!(
                "{} takes no more appends after an unrecoverable write error",
                self.path.display()
            )));
        }
        let total: u64 = slices.iter().map(|s| s.len() as u64).sum();
        let start = self.len;
        match write_all_vectored_at(&self.file, slices, start) {
            Ok(()) => {
                self.len = start + total;
                Ok(())
            }
            Err(e) => {
                let err = StoreError::io(&self.path, e);
                self.cut_back(start);
                Err(err)
            }
        }
    }

    /// Cuts the file back to `len` after a failed append. If even that fails, the file keeps the failed
    /// bytes; its length is then re-read so that later appends land at offsets the index can trust (the
    /// failed bytes stay as an unindexed gap).
    fn cut_back(&mut self, len: u64) {
        if let Err(e) = self.file.set_len(len) {
            tracing::error!(path = %self.path.display(), error = %e, "could not cut back a failed append");
            match self.file.metadata() {
                Ok(m) => self.len = m.len(),
                Err(_) => self.broken = true,
            }
            return;
        }
        self.len = len;
        self.synced_len = self.synced_len.min(len);
        self.writeback_len = self.writeback_len.min(len);
    }

    /// The last sync of a finished segment: handed to `syncer` (the caller waits on the result before
    /// it relies on the segment being synced), or done here without one. None when nothing is unsynced.
    fn final_sync(self, syncer: Option<&SegmentSyncer>) -> Result<Option<PendingSync>> {
        if self.synced_len == self.len && !self.broken {
            return Ok(None);
        }
        match syncer {
            Some(s) => Ok(Some(s.submit(self.file, self.path))),
            None => {
                let mut f = self;
                f.sync()?;
                Ok(None)
            }
        }
    }

    fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| StoreError::io(&self.path, e))?;
        self.synced_len = self.len;
        Ok(())
    }
}

/// `pwritev` until every slice is written. Positioned writes (rather than `writev` on an O_APPEND file)
/// keep file appends on a system call that sockets never use, so fault injection (libfiu's
/// `posix/io/rw/pwritev`) can target the disks alone.
fn write_all_vectored_at(
    file: &File,
    mut slices: &mut [IoSlice<'_>],
    mut offset: u64,
) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    while !slices.is_empty() {
        let n = slices.len().min(IOV_MAX);
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix; the pointer and count describe `n`
        // valid slices that outlive the call, and the fd is open for writing.
        let rc = unsafe {
            libc::pwritev64(
                file.as_raw_fd(),
                slices.as_ptr() as *const libc::iovec,
                n as libc::c_int,
                offset as libc::off64_t,
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        offset += rc as u64;
        IoSlice::advance_slices(&mut slices, rc as usize);
    }
    Ok(())
}

/// Checks that a data dir can be written, synced and read back, through the same system calls as real
/// appends and reads. Leaves nothing behind on success.
pub fn probe_dir(root: &Path) -> Result<()> {
    let path = root.join(".croupier-probe");
    let mut payload = [0u8; 4096];
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    for (i, b) in payload.iter_mut().enumerate() {
        *b = (stamp
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(i as u32 % 64)
            >> (i % 8)) as u8;
    }
    let mut f = AppendFile::open(path.clone())?;
    f.cut_back(0);
    f.append(&mut [IoSlice::new(&payload)])?;
    f.sync()?;
    let back = read_at(&f.file, &path, 0, payload.len())?;
    if back[..] != payload[..] {
        return Err(StoreError::DataCorrupted(format!(
            "{}: read back differs from what was written",
            path.display()
        )));
    }
    drop(f);
    std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))
}

/// Where a written chunk's blocks are, for the in-memory index.
pub struct WrittenChunk {
    pub record: IndexRecord,
}

/// The writer side of one shuffle directory. Owned by a `Mutex` in the shuffle; only the disk writer
/// thread (and recovery, before the shuffle is shared) touches it.
pub struct ShuffleFiles {
    pub dir: PathBuf,
    segment_bytes_max: u64,
    segment: Option<(u32, AppendFile)>,
    next_segment_id: u32,
    index: AppendFile,
    commits: AppendFile,
    /// Data or index bytes written since the last sync.
    unsynced: bool,
    commits_unsynced: bool,
    /// Segments are written and read with `O_DIRECT` (`io = "direct"`).
    direct: bool,
    /// Where new segments come from when it has files (the pool of the shuffle's data dir).
    pool: Option<Arc<SegmentPool>>,
    /// Set when the shuffle is deleted: no more appends (its segments may be in the pool by then).
    retired: bool,
    /// Syncs finished segments off the writer thread (synced here when None).
    syncer: Option<Arc<SegmentSyncer>>,
    /// The previous segment's final sync, when it may still be running: waited for before the next
    /// roll and before any sync of this shuffle, so at most the last two segments are ever unsynced.
    syncing: Option<PendingSync>,
}

impl ShuffleFiles {
    /// Opens (creating if needed) the files of a shuffle directory. `segments` are the existing segment
    /// ids, ascending; appends continue in the last one.
    pub fn open(
        dir: &Path,
        segment_bytes_max: u64,
        segments: &[u32],
        direct: bool,
        pool: Option<Arc<SegmentPool>>,
        syncer: Option<Arc<SegmentSyncer>>,
    ) -> Result<ShuffleFiles> {
        let created = !dir.join(INDEX_FILE).exists() || !dir.join(COMMIT_FILE).exists();
        let index = AppendFile::open(dir.join(INDEX_FILE))?;
        let commits = AppendFile::open(dir.join(COMMIT_FILE))?;
        if created {
            sync_dir(dir)?;
        }
        let segment = match segments.last() {
            Some(&id) if direct => Some((
                id,
                AppendFile::open_direct(dir.join(segment_file_name(id)))?,
            )),
            Some(&id) => Some((id, AppendFile::open(dir.join(segment_file_name(id)))?)),
            None => None,
        };
        let next_segment_id = segments.last().map_or(0, |id| id + 1);
        Ok(ShuffleFiles {
            dir: dir.to_path_buf(),
            segment_bytes_max,
            segment,
            next_segment_id,
            index,
            commits,
            unsynced: false,
            commits_unsynced: false,
            direct,
            pool,
            retired: false,
            syncer,
            syncing: None,
        })
    }

    /// Closes the files for good (the shuffle is being deleted): later appends fail NOT_FOUND. Called
    /// with the shuffle's files lock held, so no append is running; after it, the segment files have
    /// no writer handle left and may move to the pool.
    pub fn retire(&mut self) {
        self.retired = true;
        self.segment = None;
    }

    /// Returns a handle for positioned reads of the segment being written, when a new one was started.
    fn current_segment(
        &mut self,
        new_segments: &mut Vec<(u32, Arc<File>)>,
    ) -> Result<&mut (u32, AppendFile)> {
        let roll = match &self.segment {
            None => true,
            // Direct appends need an aligned end (a segment written buffered before a restart may not have one).
            Some((_, f)) => {
                f.len >= self.segment_bytes_max || (self.direct && !f.len.is_multiple_of(ALIGN))
            }
        };
        if roll {
            let id = self.next_segment_id;
            let path = self.dir.join(segment_file_name(id));
            // A pooled file becomes the new segment when there is one; it is renamed before it is
            // opened, and the directory sync below makes the rename durable with the segment.
            let recycled = self.pool.as_ref().and_then(|p| p.take(&path)).is_some();
            let mut file = if self.direct {
                AppendFile::open_direct(path.clone())?
            } else {
                AppendFile::open(path.clone())?
            };
            if recycled {
                file.start_over();
            }
            // Before the finished segment's sync is queued: behind that gigabyte of write-back, this
            // small sync kept the writer waiting for up to 1.8 s (docs/PERFORMANCE.md, round 9).
            sync_dir(&self.dir)?;
            let reader = if self.direct {
                open_direct(&path, false)?
            } else {
                file.file
                    .try_clone()
                    .map_err(|e| StoreError::io(&path, e))?
            };
            // The finished segment gets its final sync, on the disk's sync thread; the one before it
            // must be done first (later group syncs only see the new segment and this one).
            if let Some(previous) = self.syncing.take() {
                previous.wait()?;
            }
            if let Some((_, old)) = self.segment.take() {
                self.syncing = old.final_sync(self.syncer.as_deref())?;
            }
            new_segments.push((id, Arc::new(reader)));
            self.next_segment_id = id + 1;
            self.segment = Some((id, file));
        }
        Ok(self.segment.as_mut().expect("segment opened above"))
    }

    /// Appends chunks to the current segment (rolling it at its size limit), then their index records.
    /// On error nothing of this call stays in the files.
    pub fn append_chunks(
        &mut self,
        chunks: &[&PendingChunk],
        new_segments: &mut Vec<(u32, Arc<File>)>,
    ) -> Result<Vec<WrittenChunk>> {
        if self.retired {
            return Err(StoreError::NotFound(format!(
                "{} was deleted",
                self.dir.display()
            )));
        }
        let mut written = Vec::with_capacity(chunks.len());
        let mut headers: Vec<[u8; CHUNK_HEADER_BYTES]> = Vec::with_capacity(chunks.len());
        for c in chunks {
            headers.push(chunk_header(c).encode());
        }
        let mut touched: Vec<(u32, u64)> = Vec::new();
        let segment_bytes_max = self.segment_bytes_max;
        let direct = self.direct;
        let mut i = 0;
        let result: Result<()> = (|| {
            while i < chunks.len() {
                let (segment_id, seg) = {
                    let s = self.current_segment(new_segments)?;
                    (s.0, &mut s.1)
                };
                if !touched.iter().any(|(id, _)| *id == segment_id) {
                    touched.push((segment_id, seg.len));
                }
                // Take chunks into this segment until it reaches its size limit.
                let mut offset = seg.len;
                let mut slices: Vec<IoSlice<'_>> = Vec::new();
                let first = i;
                while i < chunks.len() && (i == first || offset < segment_bytes_max) {
                    let c = &chunks[i];
                    slices.push(IoSlice::new(&headers[i]));
                    for b in &c.blocks {
                        slices.extend(b.data.pieces().map(|p| IoSlice::new(p)));
                    }
                    written.push(WrittenChunk {
                        record: index_record(c, segment_id, offset),
                    });
                    offset += CHUNK_HEADER_BYTES as u64 + c.payload_bytes;
                    i += 1;
                }
                if direct {
                    seg.append_direct(&slices)?;
                } else {
                    // End on a page boundary, as direct appends do: a write that ends inside a page
                    // whose old bytes are not cached (a recycled segment) makes the kernel read that
                    // page from the disk first, and the writer waits for the read behind the
                    // write-back of everything it wrote before.
                    let pad = (ALIGN - offset % ALIGN) % ALIGN;
                    if pad > 0 {
                        slices.push(IoSlice::new(&PAGE_ZEROS[..pad as usize]));
                    }
                    seg.append(&mut slices)?;
                }
            }
            let mut bytes = Vec::with_capacity(written.len() * 64);
            let mut body = Vec::new();
            for w in &written {
                body.clear();
                w.record.encode_body(&mut body);
                frame_record(MAGIC_INDEX, &body, &mut bytes);
            }
            self.index.append(&mut [IoSlice::new(&bytes)])?;
            Ok(())
        })();
        self.unsynced = true;
        match result {
            Ok(()) => Ok(written),
            Err(e) => {
                for (id, len) in touched {
                    if let Some((cur, f)) = self.segment.as_mut() {
                        if *cur == id {
                            f.cut_back(len);
                        }
                    }
                }
                Err(e)
            }
        }
    }

    pub fn append_commit(&mut self, record: &CommitRecord) -> Result<()> {
        let mut body = Vec::with_capacity(24 + record.partitions.len() * 16);
        record.encode_body(&mut body);
        let mut bytes = Vec::with_capacity(body.len() + 16);
        frame_record(MAGIC_COMMIT, &body, &mut bytes);
        self.commits_unsynced = true;
        self.commits.append(&mut [IoSlice::new(&bytes)])
    }

    /// Starts write-back of the segment bytes appended since the last call (durability `fsync`):
    /// the commit's `fdatasync` then finds most of them on their way to the disk already.
    pub fn start_writeback(&mut self) {
        if let Some((_, seg)) = self.segment.as_mut() {
            seg.start_writeback();
        }
    }

    /// fsyncs the segment and index when they have unsynced appends, after the previous segment's
    /// final sync finished.
    pub fn sync_data(&mut self) -> Result<()> {
        if let Some(previous) = self.syncing.take() {
            previous.wait()?;
        }
        if !self.unsynced {
            return Ok(());
        }
        if let Some((_, seg)) = self.segment.as_mut() {
            seg.sync()?;
        }
        self.index.sync()?;
        self.unsynced = false;
        Ok(())
    }

    /// fsyncs the commit log. If that fails, the records appended since the last good sync are cut
    /// off again (their commits are answered with the error), so a restart cannot replay a commit that
    /// was refused.
    ///
    /// `cut_on_failure` is false at shutdown (any durability): those records were acknowledged already
    /// and must stay.
    pub fn sync_commits(&mut self, cut_on_failure: bool) -> Result<()> {
        if !self.commits_unsynced {
            return Ok(());
        }
        self.commits_unsynced = false;
        if let Err(e) = self.commits.sync() {
            if cut_on_failure {
                let synced = self.commits.synced_len;
                self.commits.cut_back(synced);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Cuts a log back to `len` bytes (recovery removes a torn tail this way).
    pub fn truncate_index(&mut self, len: u64) {
        self.index.cut_back(len);
    }

    pub fn truncate_commits(&mut self, len: u64) {
        self.commits.cut_back(len);
    }

    pub fn bytes_on_disk(&self) -> u64 {
        let seg = self.segment.as_ref().map_or(0, |(_, f)| f.len);
        seg + self.index.len + self.commits.len
    }
}

pub fn chunk_header(c: &PendingChunk) -> ChunkHeader {
    let mut crc = crc32fast::Hasher::new();
    for b in &c.blocks {
        crc.combine(&crc32fast::Hasher::new_with_initial_len(
            b.crc32,
            b.data.len() as u64,
        ));
    }
    ChunkHeader {
        partition_id: c.partition_id,
        block_count: u32::try_from(c.blocks.len()).expect("blocks per chunk fit u32"),
        payload_len: u32::try_from(c.payload_bytes).expect("chunk payload fits u32"),
        payload_crc32: crc.finalize(),
    }
}

/// Whether the chunk an index record names is what the segment holds at its offset: the chunk header
/// there decodes and agrees with the record (partition, block count, payload length, and the payload
/// CRC that the record's block CRCs combine to). `Ok(Err(why))` when it does not (for example stale
/// bytes of a recycled segment that the chunk never reached); `Err` when the header cannot be read.
/// `file` must be a buffered handle (a 32-byte read at any offset).
pub fn chunk_matches_record(
    file: &File,
    record: &IndexRecord,
) -> std::io::Result<std::result::Result<(), String>> {
    use std::os::unix::fs::FileExt;
    let mut bytes = [0u8; CHUNK_HEADER_BYTES];
    file.read_exact_at(&mut bytes, record.chunk_offset)?;
    let header = match ChunkHeader::decode(&bytes) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    let mut crc = crc32fast::Hasher::new();
    for b in &record.blocks {
        crc.combine(&crc32fast::Hasher::new_with_initial_len(
            b.crc32,
            u64::from(b.len),
        ));
    }
    let expected = (
        record.partition_id,
        record.blocks.len(),
        record.payload_len,
        crc.finalize(),
    );
    let found = (
        header.partition_id,
        header.block_count as usize,
        header.payload_len,
        header.payload_crc32,
    );
    if found == expected {
        Ok(Ok(()))
    } else {
        Ok(Err(format!(
            "chunk header disagrees with the index (partition, blocks, payload bytes, payload crc: found {found:?}, the index says {expected:?})"
        )))
    }
}

fn index_record(c: &PendingChunk, segment_id: u32, chunk_offset: u64) -> IndexRecord {
    IndexRecord {
        partition_id: c.partition_id,
        segment_id,
        chunk_offset,
        payload_len: u32::try_from(c.payload_bytes).expect("chunk payload fits u32"),
        blocks: c
            .blocks
            .iter()
            .map(|b| IndexBlock {
                map_index: b.map_index,
                attempt_id: b.attempt_id,
                seq: b.seq,
                len: b.data.len() as u32,
                crc32: b.crc32,
            })
            .collect(),
    }
}

/// Writes `shuffle.meta` atomically (temp file, fsync, rename, fsync of the directory).
pub fn write_meta(dir: &Path, body: &[u8]) -> Result<()> {
    let mut bytes = Vec::new();
    frame_record(MAGIC_META, body, &mut bytes);
    let tmp = dir.join("shuffle.meta.tmp");
    let dst = dir.join(META_FILE);
    let mut f = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    f.write_all(&bytes).map_err(|e| StoreError::io(&tmp, e))?;
    f.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
    std::fs::rename(&tmp, &dst).map_err(|e| StoreError::io(&dst, e))?;
    sync_dir(dir)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| StoreError::io(path, e))
}

/// Reads exactly `len` bytes at `offset`; a file that ends early is corruption, reported with its path.
/// The buffer is not zeroed first: `pread` fills it (zeroing cost ~5 % of a large fetch's CPU). On an
/// `O_DIRECT` handle the aligned range around the bytes is read into an aligned buffer, and the bytes
/// are a slice of it.
pub fn read_at(file: &File, path: &Path, offset: u64, len: usize) -> Result<Bytes> {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL on an fd this File owns.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    let direct = flags >= 0 && flags & libc::O_DIRECT != 0;
    let (start, want, span) = if direct {
        let start = offset / ALIGN * ALIGN;
        let end = (offset + len as u64).div_ceil(ALIGN) * ALIGN;
        (
            start,
            (offset - start) as usize + len,
            (end - start) as usize,
        )
    } else {
        (offset, len, len)
    };
    let slack = if direct { ALIGN as usize } else { 0 };
    let mut buf: Vec<u8> = Vec::with_capacity(span + slack);
    // Where the aligned read starts inside `buf` (0 for buffered reads).
    let head = if direct {
        buf.as_ptr().align_offset(ALIGN as usize)
    } else {
        0
    };
    let mut filled = 0usize;
    while filled < want {
        let spare = &mut buf.spare_capacity_mut()[head + filled..head + span];
        // SAFETY: `spare` is writable, uninitialised memory owned by `buf` of `span - filled` bytes;
        // pread writes at most that many bytes into it and reports how many it wrote. For direct reads
        // the address and length stay multiples of ALIGN (a short read only happens at end of file).
        let n = unsafe {
            libc::pread64(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                span - filled,
                (start + filled as u64) as libc::off64_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(StoreError::io(path, e));
        }
        if n == 0 {
            return Err(StoreError::DataCorrupted(format!(
                "{} ends before offset {} + {} bytes",
                path.display(),
                offset,
                len
            )));
        }
        filled += n as usize;
        if direct && filled < want && !(filled as u64).is_multiple_of(ALIGN) {
            // A short direct read that is not at the end of the file: the rest cannot be read aligned.
            return Err(StoreError::DataCorrupted(format!(
                "{} ends before offset {} + {} bytes",
                path.display(),
                offset,
                len
            )));
        }
    }
    // SAFETY: bytes head..head + filled were written by pread above; 0..head are never exposed, but
    // are initialised here so that the Vec's contents are all initialised.
    unsafe {
        std::ptr::write_bytes(buf.as_mut_ptr(), 0, head);
        buf.set_len(head + filled);
    }
    let skip = head + (offset - start) as usize;
    Ok(Bytes::from(buf).slice(skip..skip + len))
}
