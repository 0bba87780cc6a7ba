//! The `croupier` binary: `serve`, and the tools around it (`load`, `verify`, `inspect`).

use clap::{Args, Parser, Subcommand};
use croupier_client::loadgen::{self, LoadSpec, VerifySpec};
use croupier_client::ClientOptions;
use croupier_server::config::{parse_size, Config, Durability};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "croupier",
    version,
    about = "Croupier: a remote shuffle server for Spark and Flink batch jobs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (with no arguments: gRPC on 127.0.0.1:19870, admin on 127.0.0.1:19871, data in ./croupier-data).
    Serve(ServeArgs),
    /// Push deterministic data for M maps x P partitions and commit every map; prints `RESULT {json}`.
    Load(LoadArgs),
    /// Fetch every partition pushed by `load` and compare byte for byte; prints `RESULT {json}`.
    Verify(VerifyArgs),
    /// Check every checksum of a data dir (or one shuffle dir) offline; prints damage by file and offset.
    Inspect(InspectArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file; flags override its values. Unknown keys are an error.
    #[arg(long)]
    config: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin HTTP listen address (metrics, health, status).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Data directory, one per disk; repeat the flag for several disks.
    #[arg(long = "data-dir")]
    data_dirs: Vec<PathBuf>,
    /// Memory budget for buffered push data, e.g. 1GiB, 512MiB.
    #[arg(long, value_parser = parse_size)]
    memory_budget: Option<u64>,
    /// `write` (commit = data reached the OS) or `fsync` (commit = data fsync'd, group commit).
    #[arg(long, value_parser = parse_durability)]
    durability: Option<Durability>,
    /// Roll segment files at this size, e.g. 1GiB.
    #[arg(long, value_parser = parse_size)]
    segment_bytes_max: Option<u64>,
    /// Delete an app that sent nothing for this many milliseconds.
    #[arg(long)]
    app_lease_timeout_ms: Option<u64>,
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "write" => Ok(Durability::Write),
        "fsync" => Ok(Durability::Fsync),
        _ => Err(format!("{s:?}: expected write or fsync")),
    }
}

#[derive(Args, Clone)]
struct Target {
    /// Server address, host:port.
    #[arg(long, default_value = "127.0.0.1:19870")]
    server: String,
    #[arg(long)]
    app: String,
    #[arg(long)]
    shuffle: u32,
    #[arg(long)]
    maps: u32,
    #[arg(long)]
    partitions: u32,
    /// Bytes each map pushes, spread evenly over the partitions (e.g. 64MiB).
    #[arg(long, value_parser = parse_size)]
    bytes_per_map: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Maps (load) or partitions (verify) in flight at once, each on its own connection.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
}

#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    target: Target,
    /// Block size, e.g. 64KiB, 1MiB.
    #[arg(long, value_parser = parse_size, default_value = "256KiB")]
    block_bytes: u64,
    /// Push only maps [map-start, map-end): split one load over several processes or hosts.
    #[arg(long, default_value_t = 0)]
    map_start: u32,
    #[arg(long, default_value_t = 0)]
    map_end: u32,
    /// Attempt id of map m is attempt-base + m.
    #[arg(long, default_value_t = 0)]
    attempt_base: u64,
    /// Bytes per push batch.
    #[arg(long, value_parser = parse_size, default_value = "4MiB")]
    batch_bytes: u64,
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    target: Target,
}

#[derive(Args)]
struct InspectArgs {
    /// A data dir (containing apps/) or one shuffle directory.
    dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(a) => serve(a),
        Command::Load(a) => runtime().block_on(load(a)),
        Command::Verify(a) => runtime().block_on(verify(a)),
        Command::Inspect(a) => inspect(a),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn serve(a: ServeArgs) -> ExitCode {
    let mut config = match &a.config {
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| Config::from_toml(&t))
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("croupier: config {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if let Some(v) = a.listen {
        config.listen = v;
    }
    if let Some(v) = a.admin_listen {
        config.admin_listen = v;
    }
    if !a.data_dirs.is_empty() {
        config.data_dirs = a.data_dirs;
    }
    if let Some(v) = a.memory_budget {
        config.memory_budget_bytes = v;
    }
    if let Some(v) = a.durability {
        config.durability = v;
    }
    if let Some(v) = a.segment_bytes_max {
        config.segment_bytes_max = v;
    }
    if let Some(v) = a.app_lease_timeout_ms {
        config.app_lease_timeout_ms = v;
    }
    if let Err(e) = config.validate() {
        eprintln!("croupier: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let rt = runtime();
    let result = rt.block_on(async {
        // Subscribe to SIGTERM before the server announces itself, so that a signal sent right after
        // the "serving" line is never missed.
        let shutdown =
            shutdown_signal().map_err(|e| format!("installing the SIGTERM handler: {e}"))?;
        croupier_server::server::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("croupier: {e}");
            ExitCode::FAILURE
        }
    }
}

fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn options(batch_bytes: Option<u64>) -> ClientOptions {
    let mut o = ClientOptions::default();
    if let Some(b) = batch_bytes {
        o.batch_bytes_max = b as usize;
    }
    o
}

async fn load(a: LoadArgs) -> ExitCode {
    let t = a.target;
    let spec = LoadSpec {
        server: t.server,
        app: t.app,
        shuffle: t.shuffle,
        maps: t.maps,
        partitions: t.partitions,
        bytes_per_map: t.bytes_per_map,
        block_bytes: a.block_bytes,
        seed: t.seed,
        concurrency: t.concurrency,
        map_start: a.map_start,
        map_end: a.map_end,
        attempt_base: a.attempt_base,
        options: options(Some(a.batch_bytes)),
    };
    match loadgen::load(spec).await {
        Ok(r) => {
            println!("RESULT {}", serde_json::to_string(&r).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("croupier load failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn verify(a: VerifyArgs) -> ExitCode {
    let t = a.target;
    let spec = VerifySpec {
        server: t.server,
        app: t.app,
        shuffle: t.shuffle,
        maps: t.maps,
        partitions: t.partitions,
        bytes_per_map: t.bytes_per_map,
        seed: t.seed,
        concurrency: t.concurrency,
        options: options(None),
    };
    match loadgen::verify(spec).await {
        Ok(r) => {
            for f in &r.failures {
                eprintln!("croupier verify: {f}");
            }
            println!("RESULT {}", serde_json::to_string(&r).unwrap_or_default());
            if r.partitions_failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("croupier verify failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn inspect(a: InspectArgs) -> ExitCode {
    if !a.dir.is_dir() {
        eprintln!("croupier inspect: {} is not a directory", a.dir.display());
        return ExitCode::from(2);
    }
    let report = croupier_server::inspect::inspect(&a.dir);
    for t in &report.torn_tails {
        println!("TORN {t}");
    }
    for d in &report.damage {
        println!("DAMAGE {d}");
    }
    println!(
        "RESULT {}",
        serde_json::to_string(&report).unwrap_or_default()
    );
    if report.damage.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
