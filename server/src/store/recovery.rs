//! Rebuilding shuffles from disk at startup.
//!
//! For each `apps/<app>/<shuffle>/` directory: read `shuffle.meta`, replay `commit.log` (every committed
//! map attempt), replay `index.log` (where every written block is), then drop the index entries of
//! attempts that never committed. A torn tail of a log (an append that a crash interrupted) is cut;
//! damage in the middle of a log leaves the shuffle read-only: its intact committed maps are still
//! served, a map whose blocks are gone fails its fetch with DATA_CORRUPTED, and nothing new is written
//! after the damage.

use super::disk::Disk;
use super::files::{self, ShuffleFiles, WrittenChunk, COMMIT_FILE, INDEX_FILE, META_FILE};
use super::memory::MemoryBudget;
use super::shuffle::Shuffle;
use crate::config::Config;
use crate::format::{
    read_record, CommitRecord, IndexRecord, RecordRead, ShuffleMeta, CHUNK_HEADER_BYTES,
    MAGIC_COMMIT, MAGIC_INDEX, MAGIC_META,
};
use crate::ids::{AppId, ShuffleKey};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A shuffle's last segments that may hold unsynced chunks after a crash: the one being written, and
/// the one before it, whose final sync may not have finished (store/syncer.rs).
pub const UNSYNCED_SEGMENTS_MAX: usize = 2;

/// Recovers every shuffle of one disk. Directories that cannot be recovered are logged and left alone.
pub fn recover_disk(disk: &Arc<Disk>, memory: &Arc<MemoryBudget>, config: &Config) -> Vec<Shuffle> {
    let mut out = Vec::new();
    let apps_dir = disk.apps_dir();
    let Ok(apps) = std::fs::read_dir(&apps_dir) else {
        return out;
    };
    for app_entry in apps.flatten() {
        let name = app_entry.file_name();
        let Some(app) = name.to_str().and_then(|n| AppId::parse(n).ok()) else {
            tracing::warn!(dir = %app_entry.path().display(), "ignoring a directory that is not an app id");
            continue;
        };
        let Ok(shuffles) = std::fs::read_dir(app_entry.path()) else {
            continue;
        };
        for sh in shuffles.flatten() {
            let Some(shuffle_id) = sh.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let key = ShuffleKey {
                app: app.clone(),
                shuffle_id,
            };
            match recover_shuffle(disk, memory, &sh.path(), key.clone(), config) {
                Ok(s) => {
                    tracing::info!(shuffle = %key, committed_maps = s.committed_maps(), "recovered");
                    out.push(s);
                }
                Err(e) => {
                    tracing::error!(shuffle = %key, error = %e, "could not recover; left on disk")
                }
            }
        }
    }
    out
}

pub fn read_meta(dir: &Path) -> Result<ShuffleMeta, String> {
    let path = dir.join(META_FILE);
    let bytes = files::read_file(&path).map_err(|e| e.to_string())?;
    match read_record(&bytes, 0, MAGIC_META) {
        RecordRead::Valid { body, .. } => {
            ShuffleMeta::decode_body(body).map_err(|e| format!("{}: {e}", path.display()))
        }
        RecordRead::Torn => Err(format!("{}: truncated", path.display())),
        RecordRead::BadTail { reason } => Err(format!("{}: {reason}", path.display())),
        RecordRead::Corrupted { reason, .. } => Err(format!("{}: {reason}", path.display())),
    }
}

/// Lists segment ids in a shuffle directory, ascending.
pub fn segment_ids(dir: &Path) -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(files::parse_segment_file_name)
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

fn recover_shuffle(
    disk: &Arc<Disk>,
    memory: &Arc<MemoryBudget>,
    dir: &Path,
    key: ShuffleKey,
    config: &Config,
) -> Result<Shuffle, String> {
    let meta = read_meta(dir)?;
    if meta.app_id != key.app.as_str() || meta.shuffle_id != key.shuffle_id {
        return Err(format!(
            "shuffle.meta names app {} shuffle {}, the directory says {key}",
            meta.app_id, meta.shuffle_id
        ));
    }
    let segments = segment_ids(dir);
    let direct = config.io == crate::config::IoMode::Direct;
    let mut files = ShuffleFiles::open(
        dir,
        config.segment_bytes_max,
        &segments,
        direct,
        Some(disk.pool.clone()),
        Some(disk.syncer.clone()),
    )
    .map_err(|e| e.to_string())?;
    let mut damage: Vec<String> = Vec::new();
    let mut segment_lens = HashMap::new();
    for &id in &segments {
        let path = dir.join(files::segment_file_name(id));
        let f = if direct {
            files::open_direct(&path, false).map_err(|e| e.to_string())?
        } else {
            std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        segment_lens.insert(id, (Arc::new(f), len));
    }

    // Commits first: they say which attempts' index entries to keep.
    let commits_path = dir.join(COMMIT_FILE);
    let commit_bytes = files::read_file(&commits_path).map_err(|e| e.to_string())?;
    let mut commits = Vec::new();
    let cut = replay(
        &commit_bytes,
        MAGIC_COMMIT,
        &commits_path,
        &mut damage,
        |body| {
            commits.push(CommitRecord::decode_body(body)?);
            Ok(())
        },
    );
    if let Some(at) = cut {
        files.truncate_commits(at);
    }
    let index_path = dir.join(INDEX_FILE);
    let index_bytes = files::read_file(&index_path).map_err(|e| e.to_string())?;
    let mut chunks = Vec::new();
    // Every segment but the last two was fdatasync'd: a shuffle's previous segment may still have been
    // syncing on the disk's sync thread (store/syncer.rs), and the last one is synced only by commits
    // with durability `fsync`. Index records of those two can point at chunks that never reached the
    // disk while the file is long enough (a recycled segment's stale bytes): their chunk headers are
    // checked (FORMAT.md section 10.2 step 3).
    let unsynced_readers: HashMap<u32, std::fs::File> = segments
        .iter()
        .rev()
        .take(UNSYNCED_SEGMENTS_MAX)
        .filter_map(|&id| {
            std::fs::File::open(dir.join(files::segment_file_name(id)))
                .ok()
                .map(|f| (id, f))
        })
        .collect();
    // The segment before the last may still have been syncing when the server stopped (after kill -9
    // its dirty pages are left to the kernel): sync it now, so that only the last two segments can be
    // unsynced after this start too.
    if let Some(previous) = segments.iter().rev().nth(1) {
        if let Some(f) = unsynced_readers.get(previous) {
            f.sync_data().map_err(|e| {
                format!(
                    "fdatasync of {}: {e}",
                    dir.join(files::segment_file_name(*previous)).display()
                )
            })?;
        }
    }
    let mut skipped_attempts: std::collections::HashSet<(u32, u64)> = Default::default();
    let cut = replay(
        &index_bytes,
        MAGIC_INDEX,
        &index_path,
        &mut damage,
        |body| {
            let r = IndexRecord::decode_body(body)?;
            let end = r.chunk_offset + CHUNK_HEADER_BYTES as u64 + u64::from(r.payload_len);
            let missing = match segment_lens.get(&r.segment_id) {
                Some((_, len)) if end <= *len => match unsynced_readers
                    .get(&r.segment_id)
                    .map(|f| files::chunk_matches_record(f, &r))
                {
                    None | Some(Ok(Ok(()))) => None,
                    Some(Ok(Err(why))) => Some(why),
                    Some(Err(e)) => Some(format!("chunk header unreadable: {e}")),
                },
                Some((_, len)) => Some(format!(
                    "the chunk ends at {end}, past the end of the segment ({len} bytes)"
                )),
                None => Some("its segment file is missing".to_string()),
            };
            match missing {
                None => chunks.push(WrittenChunk { record: r }),
                // Data lost in a crash before it was synced. Not damage by itself: if a committed
                // attempt needed these blocks, its fetch fails with DATA_CORRUPTED naming them.
                Some(why) => {
                    tracing::warn!(
                        file = %index_path.display(),
                        partition = r.partition_id,
                        segment = r.segment_id,
                        offset = r.chunk_offset,
                        %why,
                        "index record whose chunk is not on disk; its blocks are skipped"
                    );
                    skipped_attempts.extend(r.blocks.iter().map(|b| (b.map_index, b.attempt_id)));
                }
            }
            Ok(())
        },
    );
    if let Some(at) = cut {
        files.truncate_index(at);
    }
    let bytes_on_disk = files.bytes_on_disk();
    let shuffle = Shuffle::new(
        key,
        meta.num_maps,
        meta.num_partitions,
        disk.clone(),
        memory.clone(),
        dir.to_path_buf(),
        files,
    );
    for (id, (f, _)) in segment_lens {
        shuffle.add_segment_reader(id, f);
    }
    for c in commits {
        if let Err(e) = shuffle.recover_commit(c) {
            damage.push(format!("{}: {e}", commits_path.display()));
        }
    }
    // Keep only entries that fit the shuffle's shape.
    chunks.retain(|c| {
        c.record.partition_id < meta.num_partitions
            && c.record.blocks.iter().all(|b| b.map_index < meta.num_maps)
    });
    shuffle.index_chunks(&chunks);
    shuffle.drop_uncommitted_index();
    shuffle.mark_dead_attempts(skipped_attempts);
    let data: u64 = segments_total(dir, &segments);
    shuffle
        .disk_bytes
        .store(data.max(bytes_on_disk), Ordering::Release);
    if !damage.is_empty() {
        for d in &damage {
            tracing::error!(shuffle = %shuffle.key, damage = %d, "damage found at recovery");
        }
        shuffle.mark_damaged(damage.join("; "));
    }
    Ok(shuffle)
}

fn segments_total(dir: &Path, segments: &[u32]) -> u64 {
    segments
        .iter()
        .filter_map(|id| std::fs::metadata(dir.join(files::segment_file_name(*id))).ok())
        .map(|m| m.len())
        .sum()
}

/// Replays a log. Returns the offset to cut the file at when its tail is torn.
fn replay(
    bytes: &[u8],
    magic: u32,
    path: &Path,
    damage: &mut Vec<String>,
    mut apply: impl FnMut(&[u8]) -> Result<(), String>,
) -> Option<u64> {
    let mut offset = 0usize;
    while offset < bytes.len() {
        match read_record(bytes, offset, magic) {
            RecordRead::Valid { body, end } => {
                if let Err(e) = apply(body) {
                    damage.push(format!("{} at offset {offset}: {e}", path.display()));
                }
                offset = end;
            }
            RecordRead::Torn => {
                tracing::warn!(file = %path.display(), offset, "cutting a torn tail");
                return Some(offset as u64);
            }
            RecordRead::BadTail { reason } => {
                // Either an append cut by power loss or bit rot: the record cannot be trusted either
                // way. Forgetting it never serves wrong data (a commit is lost, a chunk unindexed).
                tracing::error!(file = %path.display(), offset, %reason, "cutting a last record that fails its checksum");
                return Some(offset as u64);
            }
            RecordRead::Corrupted { reason, skip_to } => {
                damage.push(format!("{} at offset {offset}: {reason}", path.display()));
                match skip_to {
                    Some(next) => offset = next,
                    None => return None,
                }
            }
        }
    }
    None
}
