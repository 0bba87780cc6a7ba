//! The Croupier wire contract: generated types and services of package `croupier.v1`
//! (see `croupier/v1/shuffle.proto`). `bytes` fields are `bytes::Bytes`, so payloads are not copied.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("croupier.v1");
}
