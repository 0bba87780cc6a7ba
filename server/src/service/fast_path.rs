//! The two data-plane calls served below tonic's codec, in front of the generated service.
//!
//! [`FastPath`] wraps the generated `ShuffleService` server (with its token interceptor). Every call
//! passes through to it unchanged, except `Fetch` ([`super::raw_fetch`]: block data is not copied into
//! an encode buffer) and `Push` ([`super::raw_push`]: block data is not copied out of the received
//! frames). Both carry the same messages on the wire and make the same checks as the tonic path, which
//! stays in [`super::Service`]'s `ShuffleService` impl for a `Service` used without this wrapper.

use super::raw_fetch::FETCH_PATH;
use super::raw_push::{AckBody, BatchReader, PUSH_PATH};
use super::{BatchSource, Service};
use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::Status;

/// The generated service `S` (with its interceptors), except that Fetch and Push are served by
/// [`Service`] directly.
#[derive(Clone)]
pub struct FastPath<S> {
    inner: S,
    service: Arc<Service>,
    message_bytes_max: usize,
}

impl<S> FastPath<S> {
    /// `message_bytes_max`: the largest request message accepted (the server's decoding limit).
    pub fn new(inner: S, service: Arc<Service>, message_bytes_max: usize) -> Self {
        FastPath {
            inner,
            service,
            message_bytes_max,
        }
    }
}

impl<S: NamedService> NamedService for FastPath<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<http::Request<Body>> for FastPath<S>
where
    S: tonic::codegen::Service<
            http::Request<Body>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path();
        if path != FETCH_PATH && path != PUSH_PATH {
            let call = self.inner.call(req);
            return Box::pin(async move { call.await.map(|r| r.map(Body::new)) });
        }
        let push = path == PUSH_PATH;
        let service = self.service.clone();
        let limit = self.message_bytes_max;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let md = MetadataMap::from_headers(parts.headers);
            // What the token interceptor does for the calls tonic serves.
            let served = match service.auth.check_token(&md) {
                Err(status) => Err(status),
                Ok(()) if push => raw_push(&service, md, body, limit),
                Ok(()) => service.raw_fetch(md, body, limit).await,
            };
            Ok(served.unwrap_or_else(|status| status.into_http()))
        })
    }
}

/// Starts serving one push stream: answers with the stream of acks while a task reads the batches.
fn raw_push(
    service: &Service,
    md: MetadataMap,
    body: Body,
    message_bytes_max: usize,
) -> Result<http::Response<Body>, Status> {
    let source = BatchSource::Raw(BatchReader::new(body, message_bytes_max));
    let acks = service.spawn_push_stream(md, source);
    grpc_response(Body::new(AckBody::new(acks)), "Push")
}

/// The response of a call served here: its messages and trailers come from `body`.
pub(super) fn grpc_response(body: Body, call: &str) -> Result<http::Response<Body>, Status> {
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(body)
        .map_err(|e| Status::internal(format!("building the {call} response: {e}")))
}

/// The 5-byte gRPC prefix of an uncompressed message of `message_len` bytes.
pub(super) fn put_message_prefix(buf: &mut BytesMut, message_len: usize) {
    buf.put_u8(0); // not compressed
    buf.put_u32(u32::try_from(message_len).unwrap_or(u32::MAX));
}

/// The trailers that end a call with `status`.
pub(super) fn trailers(status: &Status, call: &str) -> Frame<Bytes> {
    let mut trailers = http::HeaderMap::new();
    if let Err(e) = status.add_header(&mut trailers) {
        tracing::warn!(error = %e, "could not encode a {call} status as trailers");
    }
    Frame::trailers(trailers)
}
