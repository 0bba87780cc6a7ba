//! The codec of the Push call: prost, except that each batch's buffer is allocated at its encoded
//! length before the batch is encoded into it.
//!
//! tonic's prost codec encodes into a buffer that grows as fields are appended: a 4 MiB batch went
//! through a dozen reallocations, each copying what was already encoded, and its pages were new each
//! time. Reserving the length first leaves one copy of every block (into the message the transport
//! sends) and one allocation per batch. The bytes on the wire are the same (every integration test's
//! push goes through it and is verified byte for byte).

use croupier_proto::v1 as pb;
use prost::Message;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::Status;

/// Codec of `ShuffleService/Push` on the client side: [`PushEncoder`] out, prost's decoder in.
pub struct PushCodec;

impl Codec for PushCodec {
    type Encode = pb::PushBatch;
    type Decode = pb::PushAck;
    type Encoder = PushEncoder;
    type Decoder = <tonic_prost::ProstCodec<pb::PushBatch, pb::PushAck> as Codec>::Decoder;

    fn encoder(&mut self) -> PushEncoder {
        PushEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<pb::PushBatch, pb::PushAck>::raw_decoder(BufferSettings::default())
    }
}

/// Encodes a batch into a buffer reserved at its encoded length.
pub struct PushEncoder;

impl Encoder for PushEncoder {
    type Item = pb::PushBatch;
    type Error = Status;

    fn encode(&mut self, batch: pb::PushBatch, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(batch.encoded_len());
        batch
            .encode(buf)
            .map_err(|e| Status::internal(format!("encoding a push batch: {e}")))
    }
}
