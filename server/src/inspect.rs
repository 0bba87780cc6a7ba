//! `croupier inspect DIR`: an offline walk over a data dir (or one shuffle dir) that checks every
//! checksum: meta, commit log, index log, every chunk header and every block, and that every committed
//! attempt's blocks are all there. Each problem is reported with its file and offset.
//!
//! It only reads; run it on a stopped server's data dir or on a copy.

use crate::format::{
    read_record, CommitRecord, IndexRecord, RecordRead, CHUNK_HEADER_BYTES, MAGIC_COMMIT,
    MAGIC_INDEX,
};
use crate::store::files::{self, segment_file_name, COMMIT_FILE, INDEX_FILE, META_FILE};
use crate::store::recovery::{read_meta, segment_ids};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(Default, serde::Serialize)]
pub struct Report {
    pub shuffles: u64,
    pub commits: u64,
    pub chunks: u64,
    pub blocks: u64,
    pub bytes: u64,
    /// Torn tails: interrupted appends that restart cuts; not damage.
    pub torn_tails: Vec<String>,
    pub damage: Vec<String>,
}

pub fn inspect(dir: &Path) -> Report {
    let mut report = Report::default();
    if dir.join(META_FILE).exists() {
        inspect_shuffle(dir, &mut report);
        return report;
    }
    let apps = if dir.join("apps").is_dir() {
        dir.join("apps")
    } else {
        dir.to_path_buf()
    };
    let mut shuffle_dirs: Vec<PathBuf> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&apps) {
        for app in rd.flatten() {
            if let Ok(rd2) = std::fs::read_dir(app.path()) {
                shuffle_dirs.extend(rd2.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
    }
    shuffle_dirs.sort();
    for d in shuffle_dirs {
        inspect_shuffle(&d, &mut report);
    }
    report
}

fn inspect_shuffle(dir: &Path, report: &mut Report) {
    report.shuffles += 1;
    if let Err(e) = read_meta(dir) {
        report.damage.push(e);
    }
    let commits = read_log(
        &dir.join(COMMIT_FILE),
        MAGIC_COMMIT,
        report,
        CommitRecord::decode_body,
    );
    let index = read_log(
        &dir.join(INDEX_FILE),
        MAGIC_INDEX,
        report,
        IndexRecord::decode_body,
    );
    let mut segments: HashMap<u32, std::fs::File> = HashMap::new();
    let ids = segment_ids(dir);
    // Only the last two segments can hold unsynced appends (every finished segment is fdatasync'd, and
    // the writer waits for that before it rolls past the next one): there, a chunk header that disagrees
    // with its index record is a chunk that never reached the disk, as restart sees it, not bit rot.
    let unsynced_segments: Vec<u32> = ids
        .iter()
        .rev()
        .take(crate::store::recovery::UNSYNCED_SEGMENTS_MAX)
        .copied()
        .collect();
    for id in ids {
        if let Ok(f) = std::fs::File::open(dir.join(segment_file_name(id))) {
            segments.insert(id, f);
        }
    }
    let segment_lens: HashMap<u32, u64> = segments
        .iter()
        .map(|(id, f)| (*id, f.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect();
    let committed: HashSet<(u32, u64)> = commits
        .iter()
        .map(|(_, c)| (c.map_index, c.attempt_id))
        .collect();
    // (map, attempt, partition) -> blocks found intact
    let mut intact: HashMap<(u32, u64, u32), u32> = HashMap::new();
    for (_, rec) in &index {
        report.chunks += 1;
        let path = dir.join(segment_file_name(rec.segment_id));
        let end = rec.chunk_offset + CHUNK_HEADER_BYTES as u64 + u64::from(rec.payload_len);
        // The index record outlived its chunk (a crash took an append before it reached the disk):
        // restart skips such a record; it is damage only when a commit needs its blocks.
        let outlived = |what: String, report: &mut Report| {
            if rec
                .blocks
                .iter()
                .any(|b| committed.contains(&(b.map_index, b.attempt_id)))
            {
                report
                    .damage
                    .push(format!("{what}: committed blocks are lost"));
            } else {
                report.torn_tails.push(format!(
                    "{what}: only uncommitted blocks, cut by a crash; restart skips the index record"
                ));
            }
        };
        let Some(&len) = segment_lens.get(&rec.segment_id).filter(|&&len| end <= len) else {
            let what = match segment_lens.get(&rec.segment_id) {
                Some(len) => format!(
                    "{} offset {}: chunk of partition {} ends at {end}, past the end of the segment ({len} bytes)",
                    path.display(),
                    rec.chunk_offset,
                    rec.partition_id
                ),
                None => format!("{}: missing (index names it)", path.display()),
            };
            outlived(what, report);
            continue;
        };
        debug_assert!(end <= len);
        let Some(file) = segments.get(&rec.segment_id) else {
            continue;
        };
        match files::chunk_matches_record(file, rec) {
            Ok(Ok(())) => {}
            Ok(Err(why)) if unsynced_segments.contains(&rec.segment_id) => {
                outlived(
                    format!(
                        "{} offset {}: chunk of partition {} is not on disk ({why})",
                        path.display(),
                        rec.chunk_offset,
                        rec.partition_id
                    ),
                    report,
                );
                continue;
            }
            Ok(Err(why)) => report.damage.push(format!(
                "{} offset {}: {why}",
                path.display(),
                rec.chunk_offset
            )),
            Err(e) => {
                report.damage.push(format!(
                    "{} offset {}: chunk header unreadable: {e}",
                    path.display(),
                    rec.chunk_offset
                ));
                continue;
            }
        }
        let mut offset = rec.chunk_offset + CHUNK_HEADER_BYTES as u64;
        for b in &rec.blocks {
            let mut buf = vec![0u8; b.len as usize];
            let ok = match file.read_exact_at(&mut buf, offset) {
                Ok(()) => {
                    let actual = crc32fast::hash(&buf);
                    if actual != b.crc32 {
                        report.damage.push(format!(
                            "{} offset {offset}: block of partition {} map {} attempt {} seq {} fails its checksum (expected {:#010x}, found {actual:#010x}) in the chunk at offset {}",
                            path.display(), rec.partition_id, b.map_index, b.attempt_id, b.seq, b.crc32, rec.chunk_offset
                        ));
                        false
                    } else {
                        true
                    }
                }
                Err(e) => {
                    report.damage.push(format!(
                        "{} offset {offset}: block of partition {} map {} seq {} unreadable: {e}",
                        path.display(),
                        rec.partition_id,
                        b.map_index,
                        b.seq
                    ));
                    false
                }
            };
            if ok {
                report.blocks += 1;
                report.bytes += u64::from(b.len);
                *intact
                    .entry((b.map_index, b.attempt_id, rec.partition_id))
                    .or_default() += 1;
            }
            offset += u64::from(b.len);
        }
    }
    for (off, c) in &commits {
        report.commits += 1;
        for p in &c.partitions {
            let found = intact
                .get(&(c.map_index, c.attempt_id, p.partition_id))
                .copied()
                .unwrap_or(0);
            if found != p.blocks {
                report.damage.push(format!(
                    "{} offset {off}: committed map {} attempt {} partition {} promised {} blocks, {found} are intact",
                    dir.join(COMMIT_FILE).display(),
                    c.map_index,
                    c.attempt_id,
                    p.partition_id,
                    p.blocks
                ));
            }
        }
    }
}

fn read_log<T>(
    path: &Path,
    magic: u32,
    report: &mut Report,
    decode: impl Fn(&[u8]) -> Result<T, String>,
) -> Vec<(usize, T)> {
    let mut out = Vec::new();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            report.damage.push(format!("{}: {e}", path.display()));
            return out;
        }
    };
    let mut offset = 0;
    while offset < bytes.len() {
        match read_record(&bytes, offset, magic) {
            RecordRead::Valid { body, end } => {
                match decode(body) {
                    Ok(v) => out.push((offset, v)),
                    Err(e) => report
                        .damage
                        .push(format!("{} offset {offset}: {e}", path.display())),
                }
                offset = end;
            }
            RecordRead::BadTail { reason } => {
                report.damage.push(format!(
                    "{} offset {offset}: {reason} (bit rot, or an append cut by power loss; restart cuts it)",
                    path.display()
                ));
                break;
            }
            RecordRead::Torn => {
                report.torn_tails.push(format!(
                    "{} offset {offset}: torn tail of {} bytes",
                    path.display(),
                    bytes.len() - offset
                ));
                break;
            }
            RecordRead::Corrupted { reason, skip_to } => {
                report
                    .damage
                    .push(format!("{} offset {offset}: {reason}", path.display()));
                match skip_to {
                    Some(n) => offset = n,
                    None => break,
                }
            }
        }
    }
    out
}
