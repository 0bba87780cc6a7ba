//! Load benchmarks of Croupier: `cargo bench -p croupier-benches` (see `docs/PERFORMANCE.md`).
//!
//! Every scenario starts a real `croupier` server (the release binary, built on demand) on loopback with
//! its own data dir, and measures, in the same run, on the same disk and loopback:
//! - push and fetch through the server, with the client library's load generator;
//! - the same bytes over a bare tonic stream to a server that stores nothing (`grpc_gib_per_s`);
//! - the same bytes written sequentially to a file with the same durability (`disk_write_gib_per_s`).
//!
//! Each prints a human summary and one `BENCH {json}` line (contract: DESIGN.md section 1.5).
//!
//! Modules, from the top:
//! - [`scenario`]: the workloads and the knobs of a run (`CROUPIER_BENCH_*` variables).
//! - [`run`]: one scenario: processes, phases, repetitions, report.
//! - [`sink`]: the bare gRPC baseline server (this binary re-executed in another role).
//! - [`disk`]: the sequential file write baseline.
//! - [`procs`]: building and spawning processes, CPU time and peak RSS from `/proc`, admin `/status`.
//! - [`stats`]: samples, medians, paired ratios.

pub mod disk;
pub mod procs;
pub mod run;
pub mod scenario;
pub mod sink;
pub mod stats;
