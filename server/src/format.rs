//! The on-disk format, byte for byte (specified in `docs/FORMAT.md`; keep the two in step).
//!
//! Four kinds of files live in a shuffle directory:
//! - `seg-NNNNNN.data`: chunks. A chunk is a 32-byte [`ChunkHeader`] followed by the payload: the data of
//!   the chunk's blocks, back to back.
//! - `index.log`: one framed [`IndexRecord`] per chunk: where it is and the (map, attempt, seq, length,
//!   crc) of each of its blocks.
//! - `commit.log`: one framed [`CommitRecord`] per committed map attempt.
//! - `shuffle.meta`: one framed [`ShuffleMeta`] record.
//!
//! A framed record is `magic u32 | body_len u32 | body_crc32 u32 | header_crc32 u32 | body`, all integers
//! little-endian; `header_crc32` covers the first 12 bytes so a damaged length is never trusted.
//!
//! Decoding never panics: reading a record yields [`RecordRead::Valid`], [`RecordRead::Torn`] (the
//! file ends inside the record: an interrupted append), [`RecordRead::BadTail`] (the last record is
//! whole but fails its checksum: an unsynced append cut by power loss, or bit rot) or
//! [`RecordRead::Corrupted`] (a record followed by more data fails its checksum).

/// Format version written in `shuffle.meta`; see the version log in docs/FORMAT.md.
pub const FORMAT_VERSION: u32 = 2;
/// Oldest format version this build still reads (version 2 only added an optional section to commit
/// records, which version 1 records never have).
pub const FORMAT_VERSION_MIN: u32 = 1;

pub const MAGIC_INDEX: u32 = u32::from_le_bytes(*b"CIDX");
pub const MAGIC_COMMIT: u32 = u32::from_le_bytes(*b"CCMT");
pub const MAGIC_META: u32 = u32::from_le_bytes(*b"CMET");
pub const MAGIC_CHUNK: u32 = u32::from_le_bytes(*b"CCHK");

pub const RECORD_HEADER_BYTES: usize = 16;
pub const CHUNK_HEADER_BYTES: usize = 32;
/// Bytes of one block entry in an index record.
pub const INDEX_BLOCK_BYTES: usize = 24;
/// Bytes of one partition entry in a commit record.
pub const COMMIT_PARTITION_BYTES: usize = 16;
/// Most peer promises one commit record holds (and one commit request may carry).
pub const COMMIT_PEERS_MAX: usize = 4096;
/// Longest server address in a peer promise.
pub const PEER_SERVER_BYTES_MAX: usize = 255;
/// Largest record body accepted when decoding; anything longer is corruption.
pub const RECORD_BODY_BYTES_MAX: u32 = 64 << 20;

/// What reading one framed record at an offset found.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordRead<'a> {
    Valid {
        body: &'a [u8],
        end: usize,
    },
    /// The file ends inside this record (an append that did not finish).
    Torn,
    /// The last record of the file is complete but its body fails the checksum. A power loss during
    /// an unsynced append can leave this, and so can bit rot: recovery cuts it like a torn tail (the
    /// record's commit or chunk is forgotten, never served wrong), `inspect` reports it as damage.
    BadTail {
        reason: String,
    },
    /// The record's bytes fail their checksum. `skip_to` is where the next record starts when the
    /// header itself was intact (only the body is bad), `None` when the length cannot be trusted.
    Corrupted {
        reason: String,
        skip_to: Option<usize>,
    },
}

pub fn frame_record(magic: u32, body: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(body.len()).expect("record body fits u32");
    assert!(len <= RECORD_BODY_BYTES_MAX, "record body of {len} bytes");
    let start = out.len();
    out.extend_from_slice(&magic.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    let header_crc = crc32fast::hash(&out[start..start + 12]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(body);
}

pub fn read_record(buf: &[u8], offset: usize, magic: u32) -> RecordRead<'_> {
    let Some(header) = buf.get(offset..offset + RECORD_HEADER_BYTES) else {
        return RecordRead::Torn;
    };
    let header_crc = le_u32(&header[12..16]);
    if crc32fast::hash(&header[..12]) != header_crc {
        // An all-zero header at the tail is a preallocated or torn area, not damage.
        if buf[offset..].iter().all(|b| *b == 0) {
            return RecordRead::Torn;
        }
        return RecordRead::Corrupted {
            reason: "record header checksum mismatch".into(),
            skip_to: None,
        };
    }
    let found_magic = le_u32(&header[0..4]);
    let body_len = le_u32(&header[4..8]);
    if found_magic != magic || body_len > RECORD_BODY_BYTES_MAX {
        return RecordRead::Corrupted {
            reason: format!("bad magic {found_magic:#010x} or body length {body_len}"),
            skip_to: None,
        };
    }
    let start = offset + RECORD_HEADER_BYTES;
    let end = start + body_len as usize;
    let Some(body) = buf.get(start..end) else {
        return RecordRead::Torn;
    };
    let expected = le_u32(&header[8..12]);
    let actual = crc32fast::hash(body);
    if expected != actual {
        if end == buf.len() {
            return RecordRead::BadTail {
                reason: format!(
                    "last record's body checksum mismatch: expected {expected:#010x}, found {actual:#010x}"
                ),
            };
        }
        return RecordRead::Corrupted {
            reason: format!(
                "record body checksum mismatch: expected {expected:#010x}, found {actual:#010x}"
            ),
            skip_to: Some(end),
        };
    }
    RecordRead::Valid { body, end }
}

/// The 32-byte header in front of every chunk in a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    pub partition_id: u32,
    pub block_count: u32,
    pub payload_len: u32,
    /// CRC-32 of the whole payload (combined from the block CRCs, so it costs no extra pass).
    pub payload_crc32: u32,
}

impl ChunkHeader {
    pub fn encode(&self) -> [u8; CHUNK_HEADER_BYTES] {
        let mut b = [0u8; CHUNK_HEADER_BYTES];
        b[0..4].copy_from_slice(&MAGIC_CHUNK.to_le_bytes());
        b[4..8].copy_from_slice(&self.partition_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.block_count.to_le_bytes());
        b[12..16].copy_from_slice(&self.payload_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.payload_crc32.to_le_bytes());
        // 20..28 reserved, zero.
        let crc = crc32fast::hash(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<ChunkHeader, String> {
        if b.len() < CHUNK_HEADER_BYTES {
            return Err(format!(
                "chunk header truncated ({} of {CHUNK_HEADER_BYTES} bytes)",
                b.len()
            ));
        }
        let expected = le_u32(&b[28..32]);
        let actual = crc32fast::hash(&b[0..28]);
        if expected != actual {
            return Err(format!(
                "chunk header checksum mismatch: expected {expected:#010x}, found {actual:#010x}"
            ));
        }
        if le_u32(&b[0..4]) != MAGIC_CHUNK {
            return Err("chunk header magic mismatch".into());
        }
        Ok(ChunkHeader {
            partition_id: le_u32(&b[4..8]),
            block_count: le_u32(&b[8..12]),
            payload_len: le_u32(&b[12..16]),
            payload_crc32: le_u32(&b[16..20]),
        })
    }
}

/// One block inside a chunk, as described by the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexBlock {
    pub map_index: u32,
    pub attempt_id: u64,
    pub seq: u32,
    pub len: u32,
    pub crc32: u32,
}

/// Where one chunk is, and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexRecord {
    pub partition_id: u32,
    pub segment_id: u32,
    /// Offset of the chunk header in the segment file.
    pub chunk_offset: u64,
    pub payload_len: u32,
    pub blocks: Vec<IndexBlock>,
}

impl IndexRecord {
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.partition_id.to_le_bytes());
        out.extend_from_slice(&self.segment_id.to_le_bytes());
        out.extend_from_slice(&self.chunk_offset.to_le_bytes());
        out.extend_from_slice(&self.payload_len.to_le_bytes());
        out.extend_from_slice(&(self.blocks.len() as u32).to_le_bytes());
        for b in &self.blocks {
            out.extend_from_slice(&b.map_index.to_le_bytes());
            out.extend_from_slice(&b.attempt_id.to_le_bytes());
            out.extend_from_slice(&b.seq.to_le_bytes());
            out.extend_from_slice(&b.len.to_le_bytes());
            out.extend_from_slice(&b.crc32.to_le_bytes());
        }
    }

    pub fn decode_body(body: &[u8]) -> Result<IndexRecord, String> {
        let mut r = Reader::new(body);
        let partition_id = r.u32()?;
        let segment_id = r.u32()?;
        let chunk_offset = r.u64()?;
        let payload_len = r.u32()?;
        let count = r.u32()? as usize;
        if r.remaining() != count * INDEX_BLOCK_BYTES {
            return Err(format!(
                "index record says {count} blocks but holds {} bytes of entries",
                r.remaining()
            ));
        }
        let mut blocks = Vec::with_capacity(count);
        let mut total: u64 = 0;
        for _ in 0..count {
            let b = IndexBlock {
                map_index: r.u32()?,
                attempt_id: r.u64()?,
                seq: r.u32()?,
                len: r.u32()?,
                crc32: r.u32()?,
            };
            total += u64::from(b.len);
            blocks.push(b);
        }
        if total != u64::from(payload_len) {
            return Err(format!(
                "index record blocks sum to {total} bytes, payload_len is {payload_len}"
            ));
        }
        Ok(IndexRecord {
            partition_id,
            segment_id,
            chunk_offset,
            payload_len,
            blocks,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionCount {
    pub partition_id: u32,
    pub blocks: u32,
    pub bytes: u64,
}

/// A committed map attempt and what it promised, per partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRecord {
    pub map_index: u32,
    pub attempt_id: u64,
    pub committed_at_ms: u64,
    /// Sorted by partition, no duplicates, no empty partitions.
    pub partitions: Vec<PartitionCount>,
    /// What the attempt promised on other servers (format version 2; empty when it sent none).
    pub peers: Vec<PeerPromise>,
}

/// What a map attempt pushed to another server, kept in the commit record of the server that decided
/// the map, so that a later attempt can finish the winner's commits there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPromise {
    /// 1..=PEER_SERVER_BYTES_MAX bytes of UTF-8.
    pub server: String,
    /// Sorted by partition, no duplicates, no empty partitions.
    pub partitions: Vec<PartitionCount>,
}

impl CommitRecord {
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.map_index.to_le_bytes());
        out.extend_from_slice(&self.attempt_id.to_le_bytes());
        out.extend_from_slice(&self.committed_at_ms.to_le_bytes());
        encode_counts(&self.partitions, out);
        if self.peers.is_empty() {
            return;
        }
        out.extend_from_slice(&(self.peers.len() as u32).to_le_bytes());
        for peer in &self.peers {
            assert!(
                !peer.server.is_empty() && peer.server.len() <= PEER_SERVER_BYTES_MAX,
                "peer server addresses are checked before they reach a record"
            );
            out.extend_from_slice(&(peer.server.len() as u16).to_le_bytes());
            out.extend_from_slice(peer.server.as_bytes());
            encode_counts(&peer.partitions, out);
        }
    }

    pub fn decode_body(body: &[u8]) -> Result<CommitRecord, String> {
        let mut r = Reader::new(body);
        let map_index = r.u32()?;
        let attempt_id = r.u64()?;
        let committed_at_ms = r.u64()?;
        let partitions = decode_counts(&mut r)?;
        let mut peers = Vec::new();
        if r.remaining() > 0 {
            let n = r.u32()? as usize;
            if n == 0 || n > COMMIT_PEERS_MAX {
                return Err(format!(
                    "commit record says {n} peers (1..={COMMIT_PEERS_MAX} when present)"
                ));
            }
            for _ in 0..n {
                let len = r.u16()? as usize;
                if len == 0 || len > PEER_SERVER_BYTES_MAX {
                    return Err(format!("peer server address of {len} bytes"));
                }
                let server = String::from_utf8(r.bytes(len)?.to_vec())
                    .map_err(|_| "peer server address is not UTF-8".to_string())?;
                peers.push(PeerPromise {
                    server,
                    partitions: decode_counts(&mut r)?,
                });
            }
            if r.remaining() > 0 {
                return Err(format!(
                    "commit record has {} bytes after its peers",
                    r.remaining()
                ));
            }
        }
        Ok(CommitRecord {
            map_index,
            attempt_id,
            committed_at_ms,
            partitions,
            peers,
        })
    }

    pub fn total_blocks(&self) -> u64 {
        self.partitions.iter().map(|p| u64::from(p.blocks)).sum()
    }
}

fn encode_counts(counts: &[PartitionCount], out: &mut Vec<u8>) {
    out.extend_from_slice(&(counts.len() as u32).to_le_bytes());
    for p in counts {
        out.extend_from_slice(&p.partition_id.to_le_bytes());
        out.extend_from_slice(&p.blocks.to_le_bytes());
        out.extend_from_slice(&p.bytes.to_le_bytes());
    }
}

fn decode_counts(r: &mut Reader<'_>) -> Result<Vec<PartitionCount>, String> {
    let count = r.u32()? as usize;
    if r.remaining() < count.saturating_mul(COMMIT_PARTITION_BYTES) {
        return Err(format!(
            "commit record says {count} partitions but holds {} bytes",
            r.remaining()
        ));
    }
    let mut partitions = Vec::with_capacity(count);
    for _ in 0..count {
        partitions.push(PartitionCount {
            partition_id: r.u32()?,
            blocks: r.u32()?,
            bytes: r.u64()?,
        });
    }
    Ok(partitions)
}

/// What a shuffle is; written once at registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShuffleMeta {
    pub format_version: u32,
    pub shuffle_id: u32,
    pub num_maps: u32,
    pub num_partitions: u32,
    pub created_at_ms: u64,
    pub app_id: String,
}

impl ShuffleMeta {
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.format_version.to_le_bytes());
        out.extend_from_slice(&self.shuffle_id.to_le_bytes());
        out.extend_from_slice(&self.num_maps.to_le_bytes());
        out.extend_from_slice(&self.num_partitions.to_le_bytes());
        out.extend_from_slice(&self.created_at_ms.to_le_bytes());
        out.extend_from_slice(&(self.app_id.len() as u32).to_le_bytes());
        out.extend_from_slice(self.app_id.as_bytes());
    }

    pub fn decode_body(body: &[u8]) -> Result<ShuffleMeta, String> {
        let mut r = Reader::new(body);
        let format_version = r.u32()?;
        if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&format_version) {
            return Err(format!(
                "unsupported format version {format_version} (this build reads {FORMAT_VERSION_MIN}..={FORMAT_VERSION})"
            ));
        }
        let shuffle_id = r.u32()?;
        let num_maps = r.u32()?;
        let num_partitions = r.u32()?;
        let created_at_ms = r.u64()?;
        let len = r.u32()? as usize;
        let app = r.bytes(len)?;
        let app_id =
            String::from_utf8(app.to_vec()).map_err(|_| "app id is not UTF-8".to_string())?;
        Ok(ShuffleMeta {
            format_version,
            shuffle_id,
            num_maps,
            num_partitions,
            created_at_ms,
            app_id,
        })
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Bounds-checked little-endian reader over a record body.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).ok_or("length overflow")?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| format!("record body truncated at byte {}", self.pos))?;
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.bytes(4)?;
        Ok(le_u32(b))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_index() -> IndexRecord {
        IndexRecord {
            partition_id: 7,
            segment_id: 2,
            chunk_offset: 4096,
            payload_len: 30,
            blocks: vec![
                IndexBlock {
                    map_index: 1,
                    attempt_id: 11,
                    seq: 0,
                    len: 10,
                    crc32: 5,
                },
                IndexBlock {
                    map_index: 2,
                    attempt_id: 12,
                    seq: 3,
                    len: 20,
                    crc32: 6,
                },
            ],
        }
    }

    #[test]
    fn index_record_round_trips_and_every_flipped_byte_is_caught() {
        let rec = sample_index();
        let mut body = Vec::new();
        rec.encode_body(&mut body);
        let mut file = Vec::new();
        frame_record(MAGIC_INDEX, &body, &mut file);
        file.extend_from_slice(b"next");
        match read_record(&file, 0, MAGIC_INDEX) {
            RecordRead::Valid { body, end } => {
                assert_eq!(IndexRecord::decode_body(body).unwrap(), rec);
                assert_eq!(end, file.len() - 4);
            }
            other => panic!("{other:?}"),
        }
        for i in 0..file.len() - 4 {
            let mut bad = file.clone();
            bad[i] ^= 0x40;
            assert!(
                matches!(
                    read_record(&bad, 0, MAGIC_INDEX),
                    RecordRead::Corrupted { .. }
                ),
                "flip at {i} not detected"
            );
        }
    }

    #[test]
    fn a_record_cut_anywhere_reads_as_torn() {
        let mut body = Vec::new();
        sample_index().encode_body(&mut body);
        let mut file = Vec::new();
        frame_record(MAGIC_INDEX, &body, &mut file);
        for cut in 0..file.len() {
            assert_eq!(
                read_record(&file[..cut], 0, MAGIC_INDEX),
                RecordRead::Torn,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn chunk_header_detects_damage() {
        let h = ChunkHeader {
            partition_id: 3,
            block_count: 2,
            payload_len: 100,
            payload_crc32: 9,
        };
        let enc = h.encode();
        assert_eq!(ChunkHeader::decode(&enc).unwrap(), h);
        for i in 0..CHUNK_HEADER_BYTES {
            let mut bad = enc;
            bad[i] ^= 1;
            assert!(ChunkHeader::decode(&bad).is_err(), "flip at {i}");
        }
    }

    proptest! {
        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = read_record(&bytes, 0, MAGIC_INDEX);
            let _ = IndexRecord::decode_body(&bytes);
            let _ = CommitRecord::decode_body(&bytes);
            let _ = ShuffleMeta::decode_body(&bytes);
            let _ = ChunkHeader::decode(&bytes);
        }

        #[test]
        fn commit_records_round_trip(map in any::<u32>(), attempt in any::<u64>(),
                                     parts in proptest::collection::vec((any::<u32>(), any::<u32>(), any::<u64>()), 0..50),
                                     peers in proptest::collection::vec(("[a-z0-9.:]{1,40}", proptest::collection::vec((any::<u32>(), any::<u32>(), any::<u64>()), 0..8)), 0..5)) {
            let counts = |v: Vec<(u32, u32, u64)>| -> Vec<PartitionCount> {
                v.into_iter().map(|(p, b, n)| PartitionCount { partition_id: p, blocks: b, bytes: n }).collect()
            };
            let rec = CommitRecord {
                map_index: map, attempt_id: attempt, committed_at_ms: 1,
                partitions: counts(parts),
                peers: peers.into_iter().map(|(server, p)| PeerPromise { server, partitions: counts(p) }).collect(),
            };
            let mut body = Vec::new();
            rec.encode_body(&mut body);
            // Without peers the body is exactly the version 1 layout.
            if rec.peers.is_empty() {
                prop_assert_eq!(body.len(), 24 + 16 * rec.partitions.len());
            }
            prop_assert_eq!(CommitRecord::decode_body(&body).unwrap(), rec.clone());
            // A body cut anywhere, or with a byte more, is refused (never misread, never a panic).
            for cut in 0..body.len() {
                if cut != 24 + 16 * rec.partitions.len() {
                    prop_assert!(CommitRecord::decode_body(&body[..cut]).is_err(), "cut at {}", cut);
                }
            }
            body.push(0);
            prop_assert!(CommitRecord::decode_body(&body).is_err());
        }
    }
}
