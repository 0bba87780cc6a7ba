//! `cargo bench -p croupier-benches [-- SCENARIO...]`: runs the load scenarios and prints one
//! `BENCH {json}` line per scenario. The same binary also serves as the bare gRPC baseline server when
//! started with `CROUPIER_BENCH_ROLE=grpc-sink` (the benchmark does that itself).

use croupier_benches::{disk, procs, run, scenario::Settings, sink};
use std::process::ExitCode;

fn main() -> ExitCode {
    // Library diagnostics (h2, tonic) on stderr when RUST_LOG asks for them; silent otherwise.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if std::env::var(sink::ROLE_ENV).as_deref() == Ok(sink::ROLE_SINK) {
        // The baseline runs with the server's allocator settings, as it does with its HTTP/2 settings:
        // otherwise it pays page faults for its message buffers that the server does not.
        croupier_server::server::tune_allocator();
        sink::run_sink_process();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = match Settings::from_env(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("croupier bench: {e}");
            return ExitCode::from(2);
        }
    };
    let bin = match procs::croupier_binary() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("croupier bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let pool = disk::pool();
    let ctx = run::Ctx {
        settings: &settings,
        croupier_bin: &bin,
        rt: &rt,
        disk_pool: &pool,
    };
    println!(
        "croupier load benchmarks: server {}, {} CPUs, load average {}, scale {}, {} repetitions, concurrency {}, dir {}",
        bin.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        settings.scale,
        settings.reps,
        settings.concurrency,
        settings.dir.display()
    );
    let mut failed = 0;
    for s in settings.selected() {
        if let Err(e) = run::run_scenario(&s, &ctx) {
            eprintln!("croupier bench: scenario {} failed: {e}", s.name);
            failed += 1;
        }
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
