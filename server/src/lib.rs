//! Croupier: a remote shuffle server.
//!
//! Map tasks push partitioned blocks over gRPC; the server buffers them per partition, writes them as
//! chunks into append-only, checksummed segment files, commits map attempts (first commit wins), and
//! streams committed partitions back to reducers. The code reads top to bottom, one layer per
//! representation:
//!
//! - [`service`]: gRPC messages -> validated requests ([`ids`] checks every identifier);
//!   [`service::fast_path`] serves the data plane below tonic's codec: [`service::raw_push`] decodes
//!   Push batches straight from the HTTP/2 frames, [`service::raw_fetch`] writes Fetch responses
//!   without an encode copy.
//! - [`store`]: operations on apps and shuffles: push, commit, fetch, unregister, leases, memory budget.
//!   - [`store::shuffle`]: one shuffle's buffers, attempts, commits and block index.
//!   - [`store::disk`]: one data dir and its writer thread (group commit).
//!   - [`store::files`]: every file operation; [`format`]: the bytes of every record.
//!   - [`store::recovery`]: rebuilding shuffles from disk at startup.
//! - [`server`]: listeners, background tasks, shutdown; [`admin`]: metrics, health, status over HTTP.
//! - [`inspect`]: offline check of a data dir; [`config`]: settings and their limits.
//! - [`auth`]: the auth token and per-app secrets; [`quota`]: per-app stored-bytes quota; [`tls`]: TLS
//!   for both listeners; [`admin_client`]: the HTTP client of `croupier admin`.
//!
//! The on-disk format is specified in `docs/FORMAT.md`, the protocol in `docs/PROTOCOL.md`.

pub mod admin;
pub mod admin_client;
pub mod auth;
pub mod config;
pub mod error;
pub mod format;
pub mod ids;
pub mod inspect;
pub mod quota;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
