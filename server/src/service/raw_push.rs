//! Push served below tonic's codec, so that block data goes from the received HTTP/2 frames to the
//! segment write without another copy, and is checksummed as each frame arrives.
//!
//! Tonic decodes a streamed request by copying every DATA frame into one buffer per message and then
//! decoding that buffer: a full copy of everything pushed, and the receipt CRC then reads the batch again
//! from memory (together about a third of the server's push CPU, see docs/PERFORMANCE.md, round 8).
//! [`BatchReader`] instead reads the request body frame by frame and decodes each length-prefixed
//! `PushBatch` itself: the few field headers are read as they come, and each block's `data` is taken as
//! slices of the frames it arrived in ([`BlockData`]), with its CRC-32 computed slice by slice while the
//! frame is still in the cache. The decoding follows protobuf's rules as prost applies them (fields in
//! any order, the last value of a repeated scalar wins, unknown fields skipped); the unit tests compare
//! it with prost on every split of the encoded stream.
//!
//! **Memory.** A slice keeps its whole frame allocated, so a batch that keeps slices of a frame is
//! charged the whole frame ([`IncomingBatch::held_bytes`]). To bound that overhead, a batch takes
//! slices only of a frame it fills at least half of, and only of frames of at least
//! [`ZERO_COPY_FRAME_BYTES_MIN`] (h2 may read several small frames into one buffer): everything else is
//! copied, as tonic would, and charged exactly (`croupier_push_received_data_bytes_total{kept}` counts
//! the data kept each way). The reader holds at most one frame between batches and stops reading while
//! a batch is being stored, as tonic's stream does.
//!
//! The call itself is served by [`super::fast_path::FastPath`], with the same checks as the tonic
//! path: the token, each app's secret, the message size limit (`message_bytes_max`).

use super::fast_path::{put_message_prefix, trailers};
use super::IncomingBatch;
use crate::store::shuffle::{BlockData, PushBlock};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use croupier_proto::v1 as pb;
use http_body::Frame;
use prost::Message;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::Status;

/// The gRPC path of the Push method.
pub const PUSH_PATH: &str = "/croupier.v1.ShuffleService/Push";

/// Frames shorter than this are always copied from: their buffer may hold other frames too.
pub const ZERO_COPY_FRAME_BYTES_MIN: usize = 64 << 10;

/// Protobuf wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LENGTH_DELIMITED: u64 = 2;
const FIXED32: u64 = 5;

/// Field numbers (proto/croupier/v1/shuffle.proto).
mod field {
    pub const BATCH_APP_ID: u32 = 1;
    pub const BATCH_SHUFFLE_ID: u32 = 2;
    pub const BATCH_MAP_INDEX: u32 = 3;
    pub const BATCH_ATTEMPT_ID: u32 = 4;
    pub const BATCH_BATCH_ID: u32 = 5;
    pub const BATCH_BLOCKS: u32 = 6;
    pub const BLOCK_PARTITION_ID: u32 = 1;
    pub const BLOCK_SEQ: u32 = 2;
    pub const BLOCK_CRC32: u32 = 3;
    pub const BLOCK_DATA: u32 = 4;
}

/// Where the frames come from: the request body, or (in tests) a list.
pub trait FrameSource: Send {
    /// The next DATA frame's payload; `None` at the end of the body. Trailers are skipped.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Status>>>;
}

impl FrameSource for Body {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Status>>> {
        loop {
            let frame = match http_body::Body::poll_frame(Pin::new(&mut *self), cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(data)));
                }
            }
        }
    }
}

/// Decodes the `PushBatch` messages of one push stream, straight from its frames.
pub struct BatchReader<F> {
    frames: F,
    /// The unread rest of the current frame.
    frame: Bytes,
    /// The whole length of the current frame (what a slice of it keeps allocated).
    frame_bytes: usize,
    /// Whether the batch being decoded takes slices of the current frame (else it copies).
    frame_sliced: bool,
    /// Whether the batch being decoded has already been charged the current frame.
    frame_charged: bool,
    ended: bool,
    message_bytes_max: usize,
    /// Bytes consumed since the current message's first byte (after its prefix).
    pos: usize,
    /// The current message's length.
    message_bytes: usize,
    /// What the current batch keeps allocated (see [`IncomingBatch::held_bytes`]).
    held_bytes: u64,
    /// Block data bytes of the current batch kept as frame slices, and copied.
    sliced_bytes: u64,
    copied_bytes: u64,
}

fn invalid(what: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("PushBatch: {what}"))
}

fn truncated() -> Status {
    invalid("the stream ended inside a message")
}

impl<F: FrameSource> BatchReader<F> {
    pub fn new(frames: F, message_bytes_max: usize) -> Self {
        BatchReader {
            frames,
            frame: Bytes::new(),
            frame_bytes: 0,
            frame_sliced: false,
            frame_charged: false,
            ended: false,
            message_bytes_max,
            pos: 0,
            message_bytes: 0,
            held_bytes: 0,
            sliced_bytes: 0,
            copied_bytes: 0,
        }
    }

    /// The next batch of the stream; `None` when the client closed it between messages.
    pub async fn next_batch(&mut self) -> Result<Option<IncomingBatch>, Status> {
        if self.frame.is_empty() && !self.next_frame().await? {
            return Ok(None);
        }
        let mut prefix = [0u8; 5];
        for b in &mut prefix {
            *b = self.byte().await?;
        }
        if prefix[0] != 0 {
            return Err(Status::unimplemented(
                "PushBatch: compressed messages are not supported",
            ));
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.message_bytes_max {
            return Err(Status::out_of_range(format!(
                "PushBatch: message length too large: {len} bytes, above the server's message_bytes_max of {} bytes",
                self.message_bytes_max
            )));
        }
        self.pos = 0;
        self.message_bytes = len;
        self.held_bytes = 0;
        self.sliced_bytes = 0;
        self.copied_bytes = 0;
        self.frame_charged = false;
        self.decide_slicing();
        self.batch(len).await.map(Some)
    }

    /// Whether the current message takes slices of the current frame: see the module doc.
    fn decide_slicing(&mut self) {
        let in_message = self.frame.len().min(self.message_bytes - self.pos);
        self.frame_sliced =
            self.frame_bytes >= ZERO_COPY_FRAME_BYTES_MIN && in_message * 2 >= self.frame_bytes;
    }

    /// Makes the next frame current; false at the end of the body.
    async fn next_frame(&mut self) -> Result<bool, Status> {
        debug_assert!(self.frame.is_empty());
        if self.ended {
            return Ok(false);
        }
        match std::future::poll_fn(|cx| self.frames.poll_data(cx)).await {
            None => {
                self.ended = true;
                Ok(false)
            }
            Some(Err(status)) => Err(status),
            Some(Ok(frame)) => {
                self.frame_bytes = frame.len();
                self.frame = frame;
                self.frame_charged = false;
                if self.pos < self.message_bytes {
                    self.decide_slicing();
                }
                Ok(true)
            }
        }
    }

    /// Makes sure the current frame has a byte (inside a message).
    async fn fill(&mut self) -> Result<(), Status> {
        if self.frame.is_empty() && !self.next_frame().await? {
            return Err(truncated());
        }
        Ok(())
    }

    async fn byte(&mut self) -> Result<u8, Status> {
        self.fill().await?;
        self.pos += 1;
        Ok(self.frame.get_u8())
    }

    async fn varint(&mut self) -> Result<u64, Status> {
        // Fast path: the whole varint is in this frame.
        if self.frame.iter().take(10).any(|b| b & 0x80 == 0) {
            let before = self.frame.len();
            let v = prost::encoding::decode_varint(&mut self.frame).map_err(invalid)?;
            self.pos += before - self.frame.len();
            return Ok(v);
        }
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.byte().await?;
            if i == 9 && b > 1 {
                return Err(invalid("a varint is longer than 64 bits"));
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(invalid("a varint is longer than 10 bytes"))
    }

    /// A field key: (field number, wire type).
    async fn key(&mut self) -> Result<(u32, u64), Status> {
        let key = self.varint().await?;
        let number = key >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(invalid(format!("invalid field number {number}")));
        }
        Ok((number as u32, key & 7))
    }

    /// The length of a length-delimited field that must end by `end`.
    async fn length(&mut self, end: usize) -> Result<usize, Status> {
        let len = self.varint().await?;
        if self.pos > end || len > (end - self.pos) as u64 {
            return Err(invalid("a field's length runs past the end of its message"));
        }
        Ok(len as usize)
    }

    /// `n` bytes copied (small fields: strings, skipped unknown fields).
    async fn copy(&mut self, mut n: usize, mut out: Option<&mut Vec<u8>>) -> Result<(), Status> {
        while n > 0 {
            self.fill().await?;
            let k = n.min(self.frame.len());
            if let Some(out) = out.as_deref_mut() {
                out.extend_from_slice(&self.frame[..k]);
            }
            self.frame.advance(k);
            self.pos += k;
            n -= k;
        }
        Ok(())
    }

    /// A block's `n` data bytes: slices of the frames (or copies, see the module doc) and their CRC.
    async fn data(&mut self, mut n: usize) -> Result<BlockData, Status> {
        let mut crc = crc32fast::Hasher::new();
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut copied = BytesMut::new();
        while n > 0 {
            self.fill().await?;
            let k = n.min(self.frame.len());
            let piece = self.frame.split_to(k);
            crc.update(&piece);
            if self.frame_sliced {
                if !copied.is_empty() {
                    pieces.push(copied.split().freeze());
                }
                if !self.frame_charged {
                    self.frame_charged = true;
                    self.held_bytes += self.frame_bytes as u64;
                }
                self.sliced_bytes += k as u64;
                pieces.push(piece);
            } else {
                if copied.capacity() == 0 {
                    copied.reserve(n);
                }
                copied.put_slice(&piece);
                self.held_bytes += k as u64;
                self.copied_bytes += k as u64;
            }
            self.pos += k;
            n -= k;
        }
        if !copied.is_empty() {
            pieces.push(copied.freeze());
        }
        let mut pieces = pieces.into_iter();
        let first = pieces.next().unwrap_or_default();
        Ok(BlockData::from_pieces(
            first,
            pieces.collect(),
            crc.finalize(),
        ))
    }

    async fn skip(&mut self, wire_type: u64, end: usize) -> Result<(), Status> {
        match wire_type {
            VARINT => self.varint().await.map(drop),
            FIXED64 => self.copy(8, None).await,
            LENGTH_DELIMITED => {
                let len = self.length(end).await?;
                self.copy(len, None).await
            }
            FIXED32 => self.copy(4, None).await,
            other => Err(invalid(format!(
                "wire type {other} is not supported (groups or an invalid type)"
            ))),
        }
    }

    fn expect(wire_type: u64, expected: u64, name: &str) -> Result<(), Status> {
        if wire_type == expected {
            Ok(())
        } else {
            Err(invalid(format!(
                "{name}: wire type {wire_type}, expected {expected}"
            )))
        }
    }

    async fn batch(&mut self, end: usize) -> Result<IncomingBatch, Status> {
        let mut batch = IncomingBatch {
            app_id: String::new(),
            shuffle_id: 0,
            map_index: 0,
            attempt_id: 0,
            batch_id: 0,
            blocks: Vec::new(),
            held_bytes: 0,
        };
        while self.pos < end {
            let (number, wire_type) = self.key().await?;
            match number {
                field::BATCH_APP_ID => {
                    Self::expect(wire_type, LENGTH_DELIMITED, "app_id")?;
                    let len = self.length(end).await?;
                    let mut bytes = Vec::with_capacity(len);
                    self.copy(len, Some(&mut bytes)).await?;
                    batch.app_id =
                        String::from_utf8(bytes).map_err(|_| invalid("app_id: not valid UTF-8"))?;
                }
                field::BATCH_SHUFFLE_ID => {
                    Self::expect(wire_type, VARINT, "shuffle_id")?;
                    batch.shuffle_id = self.varint().await? as u32;
                }
                field::BATCH_MAP_INDEX => {
                    Self::expect(wire_type, VARINT, "map_index")?;
                    batch.map_index = self.varint().await? as u32;
                }
                field::BATCH_ATTEMPT_ID => {
                    Self::expect(wire_type, VARINT, "attempt_id")?;
                    batch.attempt_id = self.varint().await?;
                }
                field::BATCH_BATCH_ID => {
                    Self::expect(wire_type, VARINT, "batch_id")?;
                    batch.batch_id = self.varint().await?;
                }
                field::BATCH_BLOCKS => {
                    Self::expect(wire_type, LENGTH_DELIMITED, "blocks")?;
                    let len = self.length(end).await?;
                    let block = self.block(self.pos + len).await?;
                    batch.blocks.push(block);
                }
                _ => self.skip(wire_type, end).await?,
            }
            if self.pos > end {
                return Err(invalid("a field runs past the end of its message"));
            }
        }
        batch.held_bytes = self.held_bytes;
        // Whether clients' frames are large enough to be kept (a client sending small frames falls back
        // to copying): docs/PERFORMANCE.md, round 10.
        if self.sliced_bytes > 0 {
            metrics::counter!("croupier_push_received_data_bytes_total", "kept" => "frame_slice")
                .increment(self.sliced_bytes);
        }
        if self.copied_bytes > 0 {
            metrics::counter!("croupier_push_received_data_bytes_total", "kept" => "copy")
                .increment(self.copied_bytes);
        }
        Ok(batch)
    }

    async fn block(&mut self, end: usize) -> Result<PushBlock, Status> {
        let mut block = PushBlock {
            partition_id: 0,
            seq: 0,
            crc32: 0,
            data: BlockData::from(Bytes::new()),
        };
        while self.pos < end {
            let (number, wire_type) = self.key().await?;
            match number {
                field::BLOCK_PARTITION_ID => {
                    Self::expect(wire_type, VARINT, "blocks.partition_id")?;
                    block.partition_id = self.varint().await? as u32;
                }
                field::BLOCK_SEQ => {
                    Self::expect(wire_type, VARINT, "blocks.seq")?;
                    block.seq = self.varint().await? as u32;
                }
                field::BLOCK_CRC32 => {
                    Self::expect(wire_type, VARINT, "blocks.crc32")?;
                    block.crc32 = self.varint().await? as u32;
                }
                field::BLOCK_DATA => {
                    Self::expect(wire_type, LENGTH_DELIMITED, "blocks.data")?;
                    let len = self.length(end).await?;
                    block.data = self.data(len).await?;
                }
                _ => self.skip(wire_type, end).await?,
            }
            if self.pos > end {
                return Err(invalid("a block's field runs past the end of the block"));
            }
        }
        Ok(block)
    }
}

/// The response body of a push stream: one gRPC message per ack, then the trailers.
pub struct AckBody {
    rx: mpsc::Receiver<Result<pb::PushAck, Status>>,
    ended: bool,
}

impl AckBody {
    pub fn new(rx: mpsc::Receiver<Result<pb::PushAck, Status>>) -> Self {
        AckBody { rx, ended: false }
    }
}

impl http_body::Body for AckBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let status = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(ack))) => {
                let len = ack.encoded_len();
                let mut buf = BytesMut::with_capacity(5 + len);
                put_message_prefix(&mut buf, len);
                ack.encode_raw(&mut buf);
                return Poll::Ready(Some(Ok(Frame::data(buf.freeze()))));
            }
            Poll::Ready(Some(Err(status))) => status,
            Poll::Ready(None) => Status::ok(""),
        };
        self.ended = true;
        Poll::Ready(Some(Ok(trailers(&status, "Push"))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    /// Frames from a list, as a body would yield them.
    struct Frames(VecDeque<Bytes>);

    impl FrameSource for Frames {
        fn poll_data(&mut self, _cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Status>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn encode_stream(batches: &[pb::PushBatch]) -> Vec<u8> {
        let mut wire = Vec::new();
        for b in batches {
            wire.push(0);
            wire.extend_from_slice(&(b.encoded_len() as u32).to_be_bytes());
            b.encode(&mut wire).unwrap();
        }
        wire
    }

    /// Cuts `wire` into frames at the given lengths (cycled); the last frame takes the rest.
    fn split(wire: &[u8], lens: &[usize]) -> VecDeque<Bytes> {
        let wire = Bytes::copy_from_slice(wire);
        let mut frames = VecDeque::new();
        let mut at = 0;
        let mut i = 0;
        while at < wire.len() {
            let n = lens[i % lens.len()].max(1).min(wire.len() - at);
            frames.push_back(wire.slice(at..at + n));
            at += n;
            i += 1;
        }
        frames
    }

    fn read_all(frames: VecDeque<Bytes>, max: usize) -> Result<Vec<IncomingBatch>, Status> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut reader = BatchReader::new(Frames(frames), max);
            let mut out = Vec::new();
            while let Some(b) = reader.next_batch().await? {
                out.push(b);
            }
            Ok(out)
        })
    }

    fn to_pb(b: &IncomingBatch) -> pb::PushBatch {
        pb::PushBatch {
            app_id: b.app_id.clone(),
            shuffle_id: b.shuffle_id,
            map_index: b.map_index,
            attempt_id: b.attempt_id,
            batch_id: b.batch_id,
            blocks: b
                .blocks
                .iter()
                .map(|k| pb::Block {
                    partition_id: k.partition_id,
                    seq: k.seq,
                    crc32: k.crc32,
                    data: k.data.to_bytes(),
                })
                .collect(),
        }
    }

    fn batch_strategy() -> impl Strategy<Value = pb::PushBatch> {
        let block = (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            prop_oneof![0usize..64, 0usize..5000, 60_000usize..200_000],
        )
            .prop_map(|(partition_id, seq, crc32, len)| pb::Block {
                partition_id,
                seq,
                crc32,
                data: Bytes::from((0..len).map(|i| (i * 7 + len) as u8).collect::<Vec<u8>>()),
            });
        (
            "[a-z0-9_-]{0,20}",
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(block, 0..6),
        )
            .prop_map(
                |(app_id, shuffle_id, map_index, attempt_id, batch_id, blocks)| pb::PushBatch {
                    app_id,
                    shuffle_id,
                    map_index,
                    attempt_id,
                    batch_id,
                    blocks,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any stream of batches, cut into frames anywhere, decodes to what prost encoded, each block
        /// with the CRC of its bytes.
        #[test]
        fn decodes_what_prost_encodes_on_every_split(
            batches in proptest::collection::vec(batch_strategy(), 1..4),
            lens in proptest::collection::vec(prop_oneof![1usize..16, 1usize..4096, 60_000usize..300_000], 1..8),
        ) {
            let wire = encode_stream(&batches);
            let decoded = read_all(split(&wire, &lens), 8 << 20).unwrap();
            prop_assert_eq!(decoded.len(), batches.len());
            for (d, b) in decoded.iter().zip(&batches) {
                prop_assert_eq!(&to_pb(d), b);
                for k in &d.blocks {
                    prop_assert_eq!(k.data.crc32(), crc32fast::hash(&k.data.to_bytes()));
                }
            }
        }
    }

    /// Hand-made encodings prost accepts: fields out of order, repeated scalars (the last wins), a
    /// repeated `data` (the last wins), unknown fields of every wire type.
    #[test]
    fn decodes_out_of_order_repeated_and_unknown_fields_as_prost_does() {
        use prost::encoding::{encode_key, encode_varint, WireType};
        let mut block = Vec::new();
        encode_key(3, WireType::Varint, &mut block);
        encode_varint(0xdead_beef, &mut block);
        encode_key(4, WireType::LengthDelimited, &mut block);
        encode_varint(3, &mut block);
        block.extend_from_slice(b"old");
        encode_key(1, WireType::Varint, &mut block);
        encode_varint(u64::from(u32::MAX) + 5, &mut block); // truncated to u32, as prost does
        encode_key(9, WireType::ThirtyTwoBit, &mut block);
        block.extend_from_slice(&[1, 2, 3, 4]);
        encode_key(4, WireType::LengthDelimited, &mut block);
        encode_varint(5, &mut block);
        block.extend_from_slice(b"fresh");
        let mut msg = Vec::new();
        encode_key(5, WireType::Varint, &mut msg);
        encode_varint(77, &mut msg);
        encode_key(6, WireType::LengthDelimited, &mut msg);
        encode_varint(block.len() as u64, &mut msg);
        msg.extend_from_slice(&block);
        encode_key(12, WireType::SixtyFourBit, &mut msg);
        msg.extend_from_slice(&[9; 8]);
        encode_key(13, WireType::LengthDelimited, &mut msg);
        encode_varint(2, &mut msg);
        msg.extend_from_slice(b"zz");
        encode_key(1, WireType::LengthDelimited, &mut msg);
        encode_varint(3, &mut msg);
        msg.extend_from_slice(b"app");
        encode_key(2, WireType::Varint, &mut msg);
        encode_varint(1, &mut msg);
        encode_key(2, WireType::Varint, &mut msg);
        encode_varint(2, &mut msg);
        encode_key(14, WireType::Varint, &mut msg);
        encode_varint(u64::MAX, &mut msg);

        let expected = pb::PushBatch::decode(&msg[..]).unwrap();
        assert_eq!(expected.shuffle_id, 2);
        assert_eq!(&expected.blocks[0].data[..], b"fresh");
        let mut wire = vec![0];
        wire.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        wire.extend_from_slice(&msg);
        for cut in 1..8 {
            let decoded = read_all(split(&wire, &[cut]), 1 << 20).unwrap();
            assert_eq!(decoded.len(), 1);
            assert_eq!(to_pb(&decoded[0]), expected, "frames of {cut} bytes");
        }
    }

    fn status_of(wire: &[u8], max: usize) -> Status {
        match read_all(split(wire, &[3, 1000]), max) {
            Ok(b) => panic!("decoded {} batches", b.len()),
            Err(s) => s,
        }
    }

    #[test]
    fn refuses_what_prost_refuses_and_what_the_server_does_not_take() {
        let one = pb::PushBatch {
            app_id: "a".into(),
            blocks: vec![pb::Block {
                data: Bytes::from_static(b"0123456789"),
                ..Default::default()
            }],
            ..Default::default()
        };
        let wire = encode_stream(std::slice::from_ref(&one));

        let s = status_of(&wire[..wire.len() - 1], 1 << 20);
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("ended inside a message"), "{s:?}");

        let s = status_of(&wire, 4);
        assert_eq!(s.code(), tonic::Code::OutOfRange);
        assert!(s.message().contains("message length too large"), "{s:?}");
        assert!(s.message().contains("message_bytes_max"), "{s:?}");

        let mut compressed = wire.clone();
        compressed[0] = 1;
        assert_eq!(
            status_of(&compressed, 1 << 20).code(),
            tonic::Code::Unimplemented
        );

        // A block whose length runs past the message: prost refuses it too.
        let mut bad = wire.clone();
        let block_len_at = 5 + 3 + 1; // prefix, app_id field (3 bytes), blocks key
        bad[block_len_at] += 1;
        assert!(pb::PushBatch::decode(&bad[5..]).is_err());
        let s = status_of(&bad, 1 << 20);
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("past the end"), "{s:?}");

        // app_id that is not UTF-8.
        let mut bad = wire.clone();
        bad[5 + 2] = 0xff;
        assert!(pb::PushBatch::decode(&bad[5..]).is_err());
        assert!(status_of(&bad, 1 << 20).message().contains("app_id"));

        // A known field with the wrong wire type.
        let mut bad = wire.clone();
        bad[5] = (1 << 3) as u8; // app_id as a varint
        assert!(pb::PushBatch::decode(&bad[5..]).is_err());
        assert!(status_of(&bad, 1 << 20).message().contains("app_id"));
    }

    /// Large frames a batch fills are sliced (no copy) and charged whole; small frames are copied.
    #[test]
    fn slices_large_frames_and_charges_them_whole() {
        let big = Bytes::from(vec![5u8; 300_000]);
        let one = pb::PushBatch {
            app_id: "a".into(),
            blocks: vec![pb::Block {
                crc32: crc32fast::hash(&big),
                data: big.clone(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let wire = encode_stream(std::slice::from_ref(&one));

        let frames = split(&wire, &[100_000, 100_000, 200_000]);
        assert_eq!(frames.len(), 3);
        let frame_ptrs: Vec<(usize, usize)> = frames
            .iter()
            .map(|f| (f.as_ptr() as usize, f.len()))
            .collect();
        let decoded = read_all(frames, 1 << 20).unwrap();
        let data = &decoded[0].blocks[0].data;
        assert_eq!(data.crc32(), crc32fast::hash(&big));
        assert_eq!(data.pieces().count(), 3, "one slice per frame");
        for p in data.pieces() {
            let at = p.as_ptr() as usize;
            assert!(
                frame_ptrs
                    .iter()
                    .any(|&(start, len)| at >= start && at + p.len() <= start + len),
                "a piece is not a slice of a frame"
            );
        }
        // Every frame is this batch's alone: charged whole, which is the whole message.
        assert_eq!(decoded[0].held_bytes, wire.len() as u64);

        let decoded = read_all(split(&wire, &[16 << 10]), 1 << 20).unwrap();
        let data = &decoded[0].blocks[0].data;
        assert_eq!(
            data.pieces().count(),
            1,
            "small frames are copied into one buffer"
        );
        assert_eq!(data.to_bytes(), big);
        assert_eq!(decoded[0].held_bytes, big.len() as u64);
    }
}
