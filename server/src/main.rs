//! The `croupier` binary: `serve`, and the tools around it (`load`, `verify`, `inspect`, `admin`).

use clap::{Args, Parser, Subcommand};
use croupier_client::loadgen::{self, LoadSpec, VerifySpec};
use croupier_client::ClientOptions;
use croupier_server::admin_client::AdminTarget;
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
    /// Operate a running server through its admin port: drain, undrain, status.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Stop taking new shuffles and pushes (commits, fetches and deletions go on; /readyz turns 503).
    Drain(DrainArgs),
    /// Take new shuffles and pushes again after a drain.
    Undrain(AdminArgs),
    /// Print the server's state: readiness, memory, disks, apps and shuffles.
    Status(AdminArgs),
}

#[derive(Args, Clone)]
struct AdminArgs {
    /// Admin address, host:port (https://host:port or --tls-ca for TLS).
    #[arg(long, default_value = "127.0.0.1:19871")]
    admin: String,
    /// File holding the server's auth token (needed for drain / undrain when the server has one).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM CA certificate to trust: talk to the admin port over TLS.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

#[derive(Args)]
struct DrainArgs {
    #[command(flatten)]
    admin: AdminArgs,
    /// Then wait until the server holds no shuffle (every app unregistered or expired), reporting
    /// progress; exits 0 when empty.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds (exit 1); 0 = wait for ever.
    #[arg(long, default_value_t = 0)]
    wait_timeout_secs: u64,
    /// Poll /status this often while waiting.
    #[arg(long, default_value_t = 2_000)]
    poll_ms: u64,
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
    /// Require this token (file content) on every RPC and admin POST; implies per-app secrets.
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
    /// Issue and require per-app secrets even without an auth token.
    #[arg(long)]
    app_secrets: bool,
    /// PEM certificate chain: serve gRPC and admin over TLS (with --tls-key).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Bytes one app may hold on this server, e.g. 100GiB (0 = unlimited).
    #[arg(long, value_parser = parse_size)]
    app_quota_bytes: Option<u64>,
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
    /// Server address, host:port; several separated by commas spread the partitions over them
    /// (the Spark plugin's placement) and commit every map on all of them.
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
    /// File holding the server's auth token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// PEM CA certificate to trust: connect over TLS.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// The app's secret (servers that enforce app secrets). `load` reads it when the file exists
    /// (the app is already registered) and writes the secret it learns when it does not; `verify`
    /// reads it.
    #[arg(long)]
    app_secret_file: Option<PathBuf>,
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
        Command::Admin(a) => admin(a),
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
    if let Some(v) = a.auth_token_file {
        config.auth_token_file = Some(v);
    }
    if a.app_secrets {
        config.app_secrets = true;
    }
    if let Some(v) = a.tls_cert {
        config.tls_cert = Some(v);
    }
    if let Some(v) = a.tls_key {
        config.tls_key = Some(v);
    }
    if let Some(v) = a.app_quota_bytes {
        config.app_quota_bytes = v;
    }
    if let Err(e) = config.validate() {
        eprintln!("croupier: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    croupier_server::server::tune_allocator();
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

/// Client options from the common flags: token, TLS CA, a saved app secret.
fn options(t: &Target, batch_bytes: Option<u64>) -> Result<ClientOptions, String> {
    let mut o = ClientOptions::default();
    if let Some(b) = batch_bytes {
        o.batch_bytes_max = b as usize;
    }
    if let Some(path) = &t.token_file {
        o.token = Some(croupier_server::auth::read_token(path)?);
    }
    if let Some(path) = &t.tls_ca {
        o.tls_ca_pem =
            Some(std::fs::read(path).map_err(|e| format!("--tls-ca {}: {e}", path.display()))?);
    }
    if let Some(path) = &t.app_secret_file {
        if t.server.contains(',') {
            return Err(
                "--app-secret-file holds one server's secret: use it with a single --server".into(),
            );
        }
        match std::fs::read_to_string(path) {
            Ok(text) => o.app_secrets.set(&t.server, &t.app, text.trim()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("--app-secret-file {}: {e}", path.display())),
        }
    }
    Ok(o)
}

/// Writes the app secret `load` learned, if asked to and the file does not exist yet.
fn save_app_secret(t: &Target, o: &ClientOptions) -> Result<(), String> {
    let (Some(path), Some(secret)) = (&t.app_secret_file, o.app_secrets.get(&t.server, &t.app))
    else {
        return Ok(());
    };
    if path.exists() {
        return Ok(());
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{secret}\n").as_bytes()))
        .map_err(|e| format!("--app-secret-file {}: {e}", path.display()))
}

async fn load(a: LoadArgs) -> ExitCode {
    let t = a.target;
    let options = match options(&t, Some(a.batch_bytes)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("croupier load failed: {e}");
            return ExitCode::from(2);
        }
    };
    let spec = LoadSpec {
        server: t.server.clone(),
        app: t.app.clone(),
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
        options: options.clone(),
    };
    let result = loadgen::load(spec).await;
    if let Err(e) = save_app_secret(&t, &options) {
        eprintln!("croupier load: {e}");
        return ExitCode::FAILURE;
    }
    match result {
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
    let options = match options(&t, None) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("croupier verify failed: {e}");
            return ExitCode::from(2);
        }
    };
    let spec = VerifySpec {
        server: t.server,
        app: t.app,
        shuffle: t.shuffle,
        maps: t.maps,
        partitions: t.partitions,
        bytes_per_map: t.bytes_per_map,
        seed: t.seed,
        concurrency: t.concurrency,
        options,
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

fn admin_target(a: &AdminArgs) -> Result<AdminTarget, String> {
    let token = match &a.token_file {
        Some(path) => Some(croupier_server::auth::read_token(path)?),
        None => None,
    };
    let tls_ca_pem = match &a.tls_ca {
        Some(path) => {
            Some(std::fs::read(path).map_err(|e| format!("--tls-ca {}: {e}", path.display()))?)
        }
        None => None,
    };
    Ok(AdminTarget {
        addr: a.admin.clone(),
        token,
        tls_ca_pem,
        timeout: None,
    })
}

fn admin(cmd: AdminCommand) -> ExitCode {
    let (verb, result) = match cmd {
        AdminCommand::Drain(d) => ("drain", admin_drain(&d)),
        AdminCommand::Undrain(a) => ("undrain", admin_post(&a, "/undrain")),
        AdminCommand::Status(a) => ("status", admin_status(&a)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("croupier admin {verb} failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// GET /status as JSON.
fn fetch_status(t: &AdminTarget) -> Result<serde_json::Value, String> {
    let r = t.get("/status")?;
    if r.status != 200 {
        return Err(format!(
            "GET /status answered {}: {}",
            r.status,
            r.body.trim()
        ));
    }
    serde_json::from_str(&r.body).map_err(|e| format!("GET /status: not JSON: {e}"))
}

fn admin_post(a: &AdminArgs, path: &str) -> Result<(), String> {
    let t = admin_target(a)?;
    let r = t.post(path)?;
    if r.status != 200 {
        return Err(format!(
            "POST {path} answered {}: {}",
            r.status,
            r.body.trim()
        ));
    }
    println!("{} {}", path.trim_start_matches('/'), r.body.trim());
    Ok(())
}

fn admin_status(a: &AdminArgs) -> Result<(), String> {
    let t = admin_target(a)?;
    let st = fetch_status(&t)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&st).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// (shuffles, apps, bytes buffered in memory, bytes on disk) of a /status answer.
fn occupancy(st: &serde_json::Value) -> (usize, u64, u64, u64) {
    let shuffles = st["shuffles"].as_array().map_or(0, |s| s.len());
    let buffered = st["shuffles"].as_array().map_or(0, |s| {
        s.iter().filter_map(|x| x["buffered_bytes"].as_u64()).sum()
    });
    (
        shuffles,
        st["apps"].as_u64().unwrap_or(0),
        buffered,
        st["bytes_on_disk"].as_u64().unwrap_or(0),
    )
}

fn admin_drain(d: &DrainArgs) -> Result<(), String> {
    admin_post(&d.admin, "/drain")?;
    if !d.wait {
        return Ok(());
    }
    let t = admin_target(&d.admin)?;
    let started = std::time::Instant::now();
    let mut last = None;
    let mut reported_flushed = false;
    loop {
        let st = fetch_status(&t)?;
        if !st["draining"].as_bool().unwrap_or(false) {
            return Err("the server is no longer draining (undrained?)".into());
        }
        let now = occupancy(&st);
        let (shuffles, apps, buffered, disk) = now;
        if shuffles == 0 {
            println!("drained: the server holds no shuffles; it can be stopped");
            return Ok(());
        }
        if buffered == 0 && !reported_flushed {
            println!("draining: nothing buffered in memory any more");
            reported_flushed = true;
        }
        if last != Some(now) {
            println!(
                "draining: {shuffles} shuffles of {apps} apps remain, {buffered} bytes buffered, {disk} bytes on disk"
            );
            last = Some(now);
        }
        if d.wait_timeout_secs > 0 && started.elapsed().as_secs() >= d.wait_timeout_secs {
            return Err(format!(
                "still {shuffles} shuffles after {} s of waiting",
                d.wait_timeout_secs
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(d.poll_ms.max(100)));
    }
}
