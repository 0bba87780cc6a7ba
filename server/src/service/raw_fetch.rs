//! Fetch answered below tonic's codec, so that block data goes from the segment read to the socket
//! without another copy.
//!
//! Fetch responses are almost all block bytes. Tonic encodes every response message into its own buffer,
//! a full copy of everything a reducer reads (a fifth of the server's CPU while serving fetches, see
//! docs/PERFORMANCE.md, round 5). [`super::fast_path::FastPath`] routes `/croupier.v1.ShuffleService/Fetch`
//! here, and it is served with the same checks as through tonic (token, app secret, request validation
//! in [`Service::open_fetch`]) and the same messages on the wire.
//! Each `FetchResponse` is written as gRPC length-prefixed frames whose protobuf field headers are built
//! here, while large `data` fields are handed to hyper as the `Bytes` read from the segment (h2 slices them
//! into DATA frames and writes them with `writev`). Small blocks are copied into the header buffer, so a
//! chunk of small blocks still leaves as few large pieces.
//!
//! Tonic's `max_encoding_message_size` does not apply here; the bound holds by construction instead: the
//! fetch planner puts at most `chunk_bytes_max` of blocks, or a single block (at most
//! `message_bytes_max`), into one message, which stays within `Config::encoding_bytes_max`.

use super::fast_path::{grpc_response, put_message_prefix, trailers};
use super::{fetched_block, summary_message, Service};
use crate::store::shuffle::BlockLoc;
use crate::store::{FetchItem, Store};
use bytes::{Bytes, BytesMut};
use croupier_proto::v1 as pb;
use http_body::Frame;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The gRPC path of the Fetch method.
pub const FETCH_PATH: &str = "/croupier.v1.ShuffleService/Fetch";

/// Blocks at least this large are sent as their own piece (no copy); smaller ones are copied next to
/// their field headers.
const ZERO_COPY_BLOCK_BYTES_MIN: usize = 16 << 10;

/// Field numbers of the messages written here (proto/croupier/v1/shuffle.proto).
const FETCH_RESPONSE_CHUNK: u32 = 1;
const FETCH_CHUNK_BLOCKS: u32 = 1;
const FETCHED_BLOCK_DATA: u32 = 6;

impl Service {
    /// Serves a Fetch call whose token was checked.
    pub(super) async fn raw_fetch(
        &self,
        md: MetadataMap,
        body: Body,
        request_bytes_max: usize,
    ) -> Result<http::Response<Body>, Status> {
        let request = read_request(body, request_bytes_max).await?;
        let rx = self.open_fetch(&md, request).await?;
        let body = FetchBody {
            rx,
            store: self.store.clone(),
            pieces: VecDeque::new(),
            ended: false,
        };
        grpc_response(Body::new(body), "Fetch")
    }
}

/// Reads the one length-prefixed FetchRequest of the call.
async fn read_request(body: Body, bytes_max: usize) -> Result<pb::FetchRequest, Status> {
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while let Some(frame) =
        std::future::poll_fn(|cx| http_body::Body::poll_frame(body.as_mut(), cx)).await
    {
        let frame =
            frame.map_err(|e| Status::internal(format!("reading the FetchRequest: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > bytes_max.saturating_add(5) {
                return Err(Status::out_of_range(format!(
                    "FetchRequest: message length too large: above the server's message_bytes_max of {bytes_max} bytes"
                )));
            }
            buf.extend_from_slice(&data);
        }
    }
    if buf.len() < 5 {
        return Err(Status::invalid_argument(
            "FetchRequest: the call carried no complete gRPC message",
        ));
    }
    if buf[0] != 0 {
        return Err(Status::unimplemented(
            "FetchRequest: compressed requests are not supported",
        ));
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() != 5 + len {
        return Err(Status::invalid_argument(format!(
            "FetchRequest: a unary request carries exactly one message (prefix says {len} bytes, call carried {})",
            buf.len() - 5
        )));
    }
    pb::FetchRequest::decode(&buf[5..])
        .map_err(|e| Status::invalid_argument(format!("FetchRequest: {e}")))
}

/// The response body: one gRPC message per block group, then the summary, then the trailers.
struct FetchBody {
    rx: mpsc::Receiver<crate::error::Result<FetchItem>>,
    store: Arc<Store>,
    /// Encoded pieces of the current message not yet handed to hyper.
    pieces: VecDeque<Bytes>,
    ended: bool,
}

impl http_body::Body for FetchBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(piece) = this.pieces.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        let item = match this.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        let status = match item {
            Some(Ok(FetchItem::Blocks(blocks))) => {
                let data_bytes = encode_chunk(&blocks, &mut this.pieces);
                this.store.note_fetched(data_bytes);
                None
            }
            Some(Ok(FetchItem::Summary(maps))) => {
                let message = summary_message(maps);
                let len = message.encoded_len();
                let mut buf = BytesMut::with_capacity(5 + len);
                put_message_prefix(&mut buf, len);
                message.encode_raw(&mut buf);
                this.pieces.push_back(buf.freeze());
                None
            }
            Some(Err(e)) => Some(Status::from(e)),
            None => Some(Status::ok("")),
        };
        if let Some(status) = status {
            // Only reached with no piece pending: the trailers follow the last message.
            this.ended = true;
            return Poll::Ready(Some(Ok(trailers(&status, "Fetch"))));
        }
        match this.pieces.pop_front() {
            Some(piece) => Poll::Ready(Some(Ok(Frame::data(piece)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.pieces.is_empty()
    }
}

/// The fields of a FetchedBlock before its data (prost omits the empty `data`).
fn block_header(loc: &BlockLoc) -> pb::FetchedBlock {
    fetched_block(loc, Bytes::new())
}

fn data_field_len(data_len: usize) -> usize {
    if data_len == 0 {
        0
    } else {
        1 + encoded_len_varint(data_len as u64) + data_len
    }
}

/// Appends one gRPC message `FetchResponse { chunk: FetchChunk { blocks } }` to `pieces`, byte for byte
/// what prost would encode. Returns the data bytes it carries.
fn encode_chunk(blocks: &[(BlockLoc, Bytes)], pieces: &mut VecDeque<Bytes>) -> u64 {
    let headers: Vec<pb::FetchedBlock> = blocks.iter().map(|(loc, _)| block_header(loc)).collect();
    let block_lens: Vec<usize> = headers
        .iter()
        .zip(blocks)
        .map(|(h, (_, data))| h.encoded_len() + data_field_len(data.len()))
        .collect();
    let chunk_len: usize = block_lens
        .iter()
        .map(|&n| 1 + encoded_len_varint(n as u64) + n)
        .sum();
    let message_len = 1 + encoded_len_varint(chunk_len as u64) + chunk_len;

    let mut buf = BytesMut::with_capacity(64 + blocks.len() * 48);
    put_message_prefix(&mut buf, message_len);
    encode_key(FETCH_RESPONSE_CHUNK, WireType::LengthDelimited, &mut buf);
    encode_varint(chunk_len as u64, &mut buf);
    let mut data_bytes = 0u64;
    for ((header, (_, data)), &block_len) in headers.iter().zip(blocks).zip(&block_lens) {
        encode_key(FETCH_CHUNK_BLOCKS, WireType::LengthDelimited, &mut buf);
        encode_varint(block_len as u64, &mut buf);
        header.encode_raw(&mut buf);
        data_bytes += data.len() as u64;
        if data.is_empty() {
            continue;
        }
        encode_key(FETCHED_BLOCK_DATA, WireType::LengthDelimited, &mut buf);
        encode_varint(data.len() as u64, &mut buf);
        if data.len() < ZERO_COPY_BLOCK_BYTES_MIN {
            buf.extend_from_slice(data);
        } else {
            pieces.push_back(buf.split().freeze());
            pieces.push_back(data.clone());
        }
    }
    if !buf.is_empty() {
        pieces.push_back(buf.freeze());
    }
    data_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(i: u32, len: usize) -> BlockLoc {
        BlockLoc {
            partition_id: 3 + i,
            map_index: 1000 + i,
            attempt_id: u64::from(i) << 40 | 7,
            seq: i * 3,
            len: len as u32,
            crc32: 0xdead_beef ^ i,
            segment_id: 0,
            data_offset: 0,
        }
    }

    /// The pieces of every mix of block sizes concatenate to prost's own encoding of the same message.
    #[test]
    fn chunk_pieces_are_prost_encoding_byte_for_byte() {
        for sizes in [
            vec![1usize],
            vec![0, 5],
            vec![ZERO_COPY_BLOCK_BYTES_MIN - 1, ZERO_COPY_BLOCK_BYTES_MIN],
            vec![300_000, 7, 1 << 20, 0, 40_000],
            (0..200).map(|i| i * 97).collect(),
        ] {
            let blocks: Vec<(BlockLoc, Bytes)> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let data: Vec<u8> = (0..n).map(|b| (b * 31 + i) as u8).collect();
                    (loc(i as u32, n), Bytes::from(data))
                })
                .collect();
            let mut pieces = VecDeque::new();
            let data_bytes = encode_chunk(&blocks, &mut pieces);
            assert_eq!(data_bytes, sizes.iter().sum::<usize>() as u64);
            let wire: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();

            let message = pb::FetchResponse {
                kind: Some(pb::fetch_response::Kind::Chunk(pb::FetchChunk {
                    blocks: blocks
                        .iter()
                        .map(|(l, d)| pb::FetchedBlock {
                            data: d.clone(),
                            ..block_header(l)
                        })
                        .collect(),
                })),
            };
            let mut expected = BytesMut::new();
            put_message_prefix(&mut expected, message.encoded_len());
            message.encode_raw(&mut expected);
            assert_eq!(wire, expected.to_vec(), "sizes {sizes:?}");
            // Large blocks travel as their own piece: the very Bytes read from the segment.
            for (_, d) in blocks
                .iter()
                .filter(|(_, d)| d.len() >= ZERO_COPY_BLOCK_BYTES_MIN)
            {
                assert!(pieces
                    .iter()
                    .any(|p| p.as_ptr() == d.as_ptr() && p.len() == d.len()));
            }
        }
    }
}
