//! Runs one scenario: a fresh `croupier` server and gRPC sink, then repetitions of three phases, then the
//! report (a human summary and one `BENCH {json}` line).
//!
//! Phases of a repetition (their order rotates from one repetition to the next, so that no phase always
//! runs first, on a cold machine, or always right after another's write-back):
//! - grpc: `loadgen::load` against the sink, then every partition fetched from it.
//! - disk: the same number of bytes written sequentially to a file (see [`crate::disk`]).
//! - croupier: `loadgen::load` against the server, then every partition fetched from it; in the last
//!   repetition every byte is also compared with the regenerated data (`loadgen::verify`, not timed).
//!
//! Every phase starts right after an untimed [`disk::prime`], so all three start from the same
//! page-cache and free-memory state (see [`crate::disk`]).
//!
//! The client is the same code in both network phases, so it costs the same CPU (it generates the
//! pseudo-random payloads and CRCs them on push, CRCs them again on fetch); only the server differs.
//! Server CPU is read from `/proc` around every phase; client CPU from this process.

use crate::disk;
use crate::procs::{self, Served};
use crate::scenario::{Scenario, Settings};
use crate::sink;
use crate::stats::{gib, round, Samples};
use croupier_client::loadgen::{self, LoadSpec, VerifySpec};
use croupier_client::{proto as pb, Client, ClientOptions};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;

const APP: &str = "bench";

/// What one run needs besides the scenario.
pub struct Ctx<'a> {
    pub settings: &'a Settings,
    pub croupier_bin: &'a Path,
    pub rt: &'a Runtime,
    pub disk_pool: &'a [u8],
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    Grpc,
    Disk,
    Croupier,
}

/// The processes of one scenario.
struct Servers {
    croupier: Served,
    sink: Served,
    perf: Option<std::process::Child>,
}

/// Runs a scenario and returns its BENCH json (already printed with the human summary).
pub fn run_scenario(s: &Scenario, ctx: &Ctx<'_>) -> Result<serde_json::Value, String> {
    let started = Instant::now();
    let dir = ctx.settings.dir.join(s.name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir.join("data")).map_err(|e| format!("{}: {e}", dir.display()))?;
    print_header(s, ctx.settings);
    let servers = start_servers(s, ctx, &dir)?;
    let mut samples = Samples::default();
    let mut verify: Option<loadgen::VerifyResult> = None;
    let mut retry_later = 0u64;
    if ctx.settings.warmup {
        warm_up(s, ctx, &servers.croupier, &dir)?;
    }
    for rep in 0..ctx.settings.reps {
        let mut order = [Phase::Grpc, Phase::Disk, Phase::Croupier];
        order.rotate_left(rep as usize % 3);
        for phase in order {
            // Every phase starts from the same memory state (see `disk::prime`).
            disk::prime(&dir.join("prime.bin"), s.total_bytes(), ctx.disk_pool)?;
            match phase {
                Phase::Grpc => grpc_phase(s, ctx, &servers.sink, rep, &mut samples)?,
                Phase::Disk => disk_phase(s, ctx, &dir, &mut samples)?,
                Phase::Croupier => {
                    let last = rep + 1 == ctx.settings.reps;
                    let out =
                        croupier_phase(s, ctx, &servers.croupier, &dir, rep, last, &mut samples)?;
                    retry_later += out.0;
                    if out.1.is_some() {
                        verify = out.1;
                    }
                }
            }
        }
    }
    let memory = memory_report(s, &servers);
    stop_servers(servers)?;
    let report = report(
        s,
        ctx.settings,
        &samples,
        memory,
        verify,
        retry_later,
        started,
    );
    Ok(report)
}

fn print_header(s: &Scenario, set: &Settings) {
    println!();
    println!(
        "== {}: {} maps x {} partitions, {} KiB blocks, {:.2} GiB per repetition, durability {}, memory budget {} MiB, {} repetitions",
        s.name,
        s.maps,
        s.partitions,
        s.block_bytes >> 10,
        gib(s.total_bytes()),
        s.durability,
        s.memory_budget_bytes >> 20,
        set.reps
    );
    println!("   {}", s.about);
}

fn start_servers(s: &Scenario, ctx: &Ctx<'_>, dir: &Path) -> Result<Servers, String> {
    let config = dir.join("croupier.toml");
    let data = dir.join("data");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dirs = [{:?}]\n\
             memory_budget_bytes = {}\ndurability = \"{}\"\n{}\n",
            data.display().to_string(),
            s.memory_budget_bytes,
            s.durability,
            ctx.settings.server_toml
        ),
    )
    .map_err(|e| format!("{}: {e}", config.display()))?;
    let mut cmd = Command::new(ctx.croupier_bin);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn");
    let croupier = Served::spawn(cmd, "croupier serving", &dir.join("server.log"))?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.env(sink::ROLE_ENV, sink::ROLE_SINK);
    let sink = Served::spawn(cmd, sink::READY_PREFIX, &dir.join("sink.log"))?;
    eprintln!(
        "   croupier pid {} grpc={} admin={}; grpc sink pid {} grpc={}",
        croupier.pid,
        croupier.grpc,
        croupier.admin.as_deref().unwrap_or("?"),
        sink.pid,
        sink.grpc
    );
    let perf = match &ctx.settings.perf_dir {
        Some(pd) => Some(start_perf(
            pd,
            s.name,
            croupier.pid,
            &ctx.settings.perf_args,
        )?),
        None => None,
    };
    Ok(Servers {
        croupier,
        sink,
        perf,
    })
}

fn start_perf(dir: &Path, name: &str, pid: u32, args: &str) -> Result<std::process::Child, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let out = dir.join(format!("{name}.perf.data"));
    let log =
        std::fs::File::create(dir.join(format!("{name}.perf.log"))).map_err(|e| e.to_string())?;
    let child = Command::new("perf")
        .arg("record")
        .args(args.split_whitespace())
        .arg("-p")
        .arg(pid.to_string())
        .arg("-o")
        .arg(&out)
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("perf record: {e} (install linux-perf)"))?;
    eprintln!("   perf record -> {}", out.display());
    std::thread::sleep(std::time::Duration::from_millis(300));
    Ok(child)
}

fn stop_servers(servers: Servers) -> Result<(), String> {
    if let Some(mut perf) = servers.perf {
        // SAFETY: SIGINT to our own child, so perf writes its file and exits.
        unsafe { libc::kill(perf.id() as libc::pid_t, libc::SIGINT) };
        let _ = perf.wait();
    }
    let status = servers.croupier.stop()?;
    if !status.success() {
        return Err(format!("croupier exited with {status} after SIGTERM"));
    }
    let _ = servers.sink.stop();
    Ok(())
}

fn load_spec(s: &Scenario, set: &Settings, server: &str, shuffle: u32) -> LoadSpec {
    LoadSpec {
        server: server.to_string(),
        app: APP.into(),
        shuffle,
        maps: s.maps,
        partitions: s.partitions,
        bytes_per_map: s.bytes_per_map,
        block_bytes: s.block_bytes,
        seed: u64::from(shuffle),
        concurrency: set.concurrency,
        map_start: 0,
        map_end: 0,
        attempt_base: 0,
        options: ClientOptions::default(),
    }
}

/// Time and CPU around one network phase.
struct Measured<T> {
    value: T,
    server_cpu_s: f64,
    /// CPU of the server's disk writer threads (`croupier-disk-*`; none in the sink).
    writer_cpu_s: f64,
    client_cpu_s: f64,
    /// Minor page faults of the server and of this process (the client) during the phase.
    server_faults: u64,
    client_faults: u64,
}

const WRITER_THREAD_PREFIX: &str = "croupier-disk";

fn measured<T>(server: &Served, f: impl FnOnce() -> T) -> Measured<T> {
    let writer = || procs::threads_cpu_seconds(server.pid, WRITER_THREAD_PREFIX);
    let faults = |pid: u32| procs::minor_faults(pid).unwrap_or(0);
    let (s0, w0, c0) = (server.cpu_seconds(), writer(), procs::own_cpu_seconds());
    let (sf0, cf0) = (faults(server.pid), faults(std::process::id()));
    let value = f();
    Measured {
        value,
        server_faults: faults(server.pid).saturating_sub(sf0),
        client_faults: faults(std::process::id()).saturating_sub(cf0),
        server_cpu_s: server.cpu_seconds() - s0,
        writer_cpu_s: writer() - w0,
        client_cpu_s: procs::own_cpu_seconds() - c0,
    }
}

fn grpc_phase(
    s: &Scenario,
    ctx: &Ctx<'_>,
    sink: &Served,
    rep: u32,
    samples: &mut Samples,
) -> Result<(), String> {
    let shuffle = rep + 1;
    let spec = load_spec(s, ctx.settings, &sink.grpc, shuffle);
    let push = measured(sink, || ctx.rt.block_on(loadgen::load(spec)));
    let r = push.value.map_err(|e| format!("grpc baseline push: {e}"))?;
    samples.add("grpc_gib_per_s", r.gib_per_s);
    samples.add("grpc_blocks_per_s", r.blocks as f64 / r.seconds);
    samples.add("grpc_server_cpu_s_push", push.server_cpu_s);
    samples.add("grpc_client_cpu_s_push", push.client_cpu_s);
    let fetch = measured(sink, || {
        ctx.rt.block_on(fetch_all(
            &sink.grpc,
            shuffle,
            s,
            s.fetch_concurrency(ctx.settings),
        ))
    });
    let f = fetch
        .value
        .map_err(|e| format!("grpc baseline fetch: {e}"))?;
    check_fetched(s, &f, "grpc sink")?;
    samples.add("grpc_fetch_gib_per_s", gib(f.bytes) / f.seconds);
    samples.add("grpc_server_cpu_s_fetch", fetch.server_cpu_s);
    samples.add("grpc_client_cpu_s_fetch", fetch.client_cpu_s);
    ctx.rt.block_on(unregister(&sink.grpc, shuffle))?;
    eprintln!(
        "   rep {rep} grpc:     push {:.3} GiB/s ({:.2} s, sink CPU {:.2} s, page faults sink {} client {}), fetch {:.3} GiB/s ({:.2} s, sink CPU {:.2} s)",
        r.gib_per_s, r.seconds, push.server_cpu_s, push.server_faults, push.client_faults, gib(f.bytes) / f.seconds, f.seconds, fetch.server_cpu_s
    );
    Ok(())
}

fn disk_phase(
    s: &Scenario,
    ctx: &Ctx<'_>,
    dir: &Path,
    samples: &mut Samples,
) -> Result<(), String> {
    let cached = disk::cache_files(&[&baseline_path(dir)])?;
    let r = write_baseline(s, ctx, dir)?;
    let rate = gib(r.bytes) / r.seconds;
    samples.add("disk_write_gib_per_s", rate);
    samples.add("disk_write_cpu_s", r.cpu_seconds);
    samples.add("disk_write_cached_before", cached);
    eprintln!(
        "   disk:           write {rate:.3} GiB/s ({:.2} s, CPU {:.2} s{}; file {:.0} % cached before)",
        r.seconds,
        r.cpu_seconds,
        if s.fsync() { ", fdatasync'd" } else { "" },
        cached * 100.0
    );
    Ok(())
}

/// The disk baseline's write: the scenario's bytes into `disk-baseline.bin`, in the server's chunk size.
fn write_baseline(s: &Scenario, ctx: &Ctx<'_>, dir: &Path) -> Result<disk::DiskResult, String> {
    let chunk_bytes = croupier_server::config::Config::default().chunk_bytes_target as usize;
    disk::sequential_write(
        &baseline_path(dir),
        s.total_bytes(),
        chunk_bytes,
        s.fsync(),
        ctx.disk_pool,
    )
}

fn baseline_path(dir: &Path) -> std::path::PathBuf {
    dir.join("disk-baseline.bin")
}

/// Untimed: the scenario's bytes once to the disk baseline's file and once through croupier (pushed,
/// committed, unregistered: the segments go to the server's segment pool), so that the timed
/// repetitions compare a server in its steady state (overwriting recycled segments) with a baseline
/// overwriting its file, not the first fill of new files on either side.
fn warm_up(s: &Scenario, ctx: &Ctx<'_>, server: &Served, dir: &Path) -> Result<(), String> {
    let started = Instant::now();
    write_baseline(s, ctx, dir)?;
    let shuffle = WARMUP_SHUFFLE;
    let spec = load_spec(s, ctx.settings, &server.grpc, shuffle);
    let r = ctx
        .rt
        .block_on(loadgen::load(spec))
        .map_err(|e| format!("croupier warm-up push: {e}"))?;
    ctx.rt.block_on(unregister(&server.grpc, shuffle))?;
    eprintln!(
        "   warm-up:        baseline file and croupier segments written once, untimed ({:.1} s; croupier push on new files {:.3} GiB/s)",
        started.elapsed().as_secs_f64(),
        r.gib_per_s
    );
    Ok(())
}

/// Shuffle id of the warm-up load (timed repetitions use 1, 2, ...).
const WARMUP_SHUFFLE: u32 = 1_000_000;

/// Returns (RETRY_LATER answers seen by the client, the verify result in the last repetition).
fn croupier_phase(
    s: &Scenario,
    ctx: &Ctx<'_>,
    server: &Served,
    dir: &Path,
    rep: u32,
    last: bool,
    samples: &mut Samples,
) -> Result<(u64, Option<loadgen::VerifyResult>), String> {
    let shuffle = rep + 1;
    let pool = dir
        .join("data")
        .join(croupier_server::store::pool::POOL_DIR);
    let cached = disk::cache_files(&[&pool])?;
    samples.add("segments_cached_before", cached);
    let spec = load_spec(s, ctx.settings, &server.grpc, shuffle);
    let push = measured(server, || ctx.rt.block_on(loadgen::load(spec)));
    let r = push.value.map_err(|e| format!("croupier push: {e}"))?;
    samples.add("push_gib_per_s", r.gib_per_s);
    samples.add("push_blocks_per_s", r.blocks as f64 / r.seconds);
    samples.add("blocks", r.blocks as f64);
    samples.add("server_cpu_s_push", push.server_cpu_s);
    samples.add("writer_busy_push", push.writer_cpu_s / r.seconds);
    samples.add("client_cpu_s_push", push.client_cpu_s);
    if !s.fsync() {
        // Not timed: the write-back of what the push wrote stays out of the fetch phase.
        procs::sync_file_system(&dir.join("data"));
    }
    let fetch = measured(server, || {
        ctx.rt.block_on(fetch_all(
            &server.grpc,
            shuffle,
            s,
            s.fetch_concurrency(ctx.settings),
        ))
    });
    let f = fetch.value.map_err(|e| format!("croupier fetch: {e}"))?;
    check_fetched(s, &f, "croupier")?;
    samples.add("fetch_gib_per_s", gib(f.bytes) / f.seconds);
    samples.add("server_cpu_s_fetch", fetch.server_cpu_s);
    samples.add("client_cpu_s_fetch", fetch.client_cpu_s);
    eprintln!(
        "   rep {rep} croupier: push {:.3} GiB/s ({:.2} s, server CPU {:.2} s of which disk writers {:.2} s, page faults server {} client {}; pooled segments {:.0} % cached before), fetch {:.3} GiB/s ({:.2} s, server CPU {:.2} s)",
        r.gib_per_s, r.seconds, push.server_cpu_s, push.writer_cpu_s, push.server_faults, push.client_faults, cached * 100.0, gib(f.bytes) / f.seconds, f.seconds, fetch.server_cpu_s
    );
    let verified = if last && ctx.settings.verify {
        let v = ctx
            .rt
            .block_on(loadgen::verify(verify_spec(
                s,
                ctx.settings,
                &server.grpc,
                shuffle,
            )))
            .map_err(|e| format!("croupier verify: {e}"))?;
        if v.partitions_failed > 0 {
            return Err(format!(
                "verify: {} partitions differ from what was pushed: {}",
                v.partitions_failed,
                v.failures.first().cloned().unwrap_or_default()
            ));
        }
        eprintln!(
            "   verify:         {} partitions byte for byte ok ({:.3} GiB/s, not part of the figures)",
            v.partitions_ok, v.gib_per_s
        );
        Some(v)
    } else {
        None
    };
    ctx.rt.block_on(unregister(&server.grpc, shuffle))?;
    Ok((r.retry_later, verified))
}

fn verify_spec(s: &Scenario, set: &Settings, server: &str, shuffle: u32) -> VerifySpec {
    VerifySpec {
        server: server.to_string(),
        app: APP.into(),
        shuffle,
        maps: s.maps,
        partitions: s.partitions,
        bytes_per_map: s.bytes_per_map,
        seed: u64::from(shuffle),
        concurrency: s.fetch_concurrency(set),
        options: ClientOptions::default(),
    }
}

async fn unregister(server: &str, shuffle: u32) -> Result<(), String> {
    let c = Client::connect(server, ClientOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    c.unregister_shuffle(APP, shuffle)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// What a fetch of every partition moved.
pub struct Fetched {
    pub bytes: u64,
    pub blocks: u64,
    pub seconds: f64,
}

/// Fetches every partition (all maps), `concurrency` partitions at a time, each client on its own
/// connection, like `loadgen::verify` but without regenerating the data: the client checks every block's
/// CRC, the order and the closing summary, as a reducer does.
pub async fn fetch_all(
    server: &str,
    shuffle: u32,
    s: &Scenario,
    concurrency: u32,
) -> Result<Fetched, String> {
    let clients = loadgen::connect_many(server, concurrency, &ClientOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(concurrency as usize));
    let mut tasks = Vec::with_capacity(s.partitions as usize);
    for p in 0..s.partitions {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let client = clients[p as usize % clients.len()].clone();
        let maps = s.maps;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let req = pb::FetchRequest {
                app_id: APP.into(),
                shuffle_id: shuffle,
                partition_start: p,
                partition_end: p + 1,
                map_start: 0,
                map_end: maps,
                ..Default::default()
            };
            let (mut bytes, mut blocks) = (0u64, 0u64);
            client
                .fetch_with(req, |b| {
                    bytes += b.data.len() as u64;
                    blocks += 1;
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((bytes, blocks))
        }));
    }
    let mut out = Fetched {
        bytes: 0,
        blocks: 0,
        seconds: 0.0,
    };
    for t in tasks {
        let (bytes, blocks) = t.await.map_err(|e| format!("fetch task: {e}"))??;
        out.bytes += bytes;
        out.blocks += blocks;
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

fn check_fetched(s: &Scenario, f: &Fetched, from: &str) -> Result<(), String> {
    if f.bytes != s.total_bytes() {
        return Err(format!(
            "fetch from {from} returned {} bytes, {} were pushed",
            f.bytes,
            s.total_bytes()
        ));
    }
    Ok(())
}

struct Memory {
    server_peak_rss_bytes: u64,
    sink_peak_rss_bytes: u64,
    accounted_peak_bytes: u64,
    push_rejected_total: u64,
    /// Mean commit latency over the scenario, from the server's `croupier_commit_latency_seconds`.
    commit_latency_mean_s: f64,
}

fn memory_report(s: &Scenario, servers: &Servers) -> Memory {
    let status = servers
        .croupier
        .admin
        .as_deref()
        .map(|a| procs::http_get_json(a, "/status"));
    let (accounted, rejected) = match status {
        Some(Ok(v)) => (
            v["memory_peak_bytes"].as_u64().unwrap_or(0),
            v["push_rejected_total"].as_u64().unwrap_or(0),
        ),
        Some(Err(e)) => {
            eprintln!("   {}: GET /status failed: {e}", s.name);
            (0, 0)
        }
        None => (0, 0),
    };
    let commit_latency_mean_s = servers
        .croupier
        .admin
        .as_deref()
        .and_then(|a| procs::http_get(a, "/metrics").ok())
        .and_then(|text| {
            let sum = procs::prometheus_value(&text, "croupier_commit_latency_seconds_sum")?;
            let count = procs::prometheus_value(&text, "croupier_commit_latency_seconds_count")?;
            (count > 0.0).then(|| sum / count)
        })
        .unwrap_or(f64::NAN);
    Memory {
        commit_latency_mean_s,
        server_peak_rss_bytes: servers.croupier.peak_rss_bytes(),
        sink_peak_rss_bytes: servers.sink.peak_rss_bytes(),
        accounted_peak_bytes: accounted,
        push_rejected_total: rejected,
    }
}

struct Target {
    what: &'static str,
    value: f64,
    limit: f64,
    /// true: value must be >= limit; false: <= limit.
    at_least: bool,
}

impl Target {
    fn met(&self) -> bool {
        if self.at_least {
            self.value >= self.limit
        } else {
            self.value <= self.limit
        }
    }
}

fn targets(s: &Scenario, m: &Samples, mem: &Memory) -> Vec<Target> {
    match s.name {
        "large_blocks" => vec![
            Target {
                what: "push_vs_grpc",
                value: m.paired_ratio("push_gib_per_s", "grpc_gib_per_s"),
                limit: 0.8,
                at_least: true,
            },
            Target {
                what: "fetch_vs_grpc",
                value: m.paired_ratio("fetch_gib_per_s", "grpc_fetch_gib_per_s"),
                limit: 0.8,
                at_least: true,
            },
        ],
        "many_partitions" => vec![Target {
            what: "server_peak_rss_bytes",
            value: mem.server_peak_rss_bytes as f64,
            limit: (s.memory_budget_bytes + (256 << 20)) as f64,
            at_least: false,
        }],
        "durable" => vec![Target {
            what: "push_vs_disk",
            value: m.paired_ratio("push_gib_per_s", "disk_write_gib_per_s"),
            limit: 0.8,
            at_least: true,
        }],
        _ => Vec::new(),
    }
}

fn report(
    s: &Scenario,
    set: &Settings,
    m: &Samples,
    mem: Memory,
    verify: Option<loadgen::VerifyResult>,
    retry_later: u64,
    started: Instant,
) -> serde_json::Value {
    let bytes = s.total_bytes();
    let per_gib = |cpu: &str| round(m.median(cpu) / gib(bytes));
    let targets = targets(s, m, &mem);
    let mut j = json!({
        "name": s.name,
        "push_gib_per_s": round(m.median("push_gib_per_s")),
        "fetch_gib_per_s": round(m.median("fetch_gib_per_s")),
        "disk_write_gib_per_s": round(m.median("disk_write_gib_per_s")),
        "grpc_gib_per_s": round(m.median("grpc_gib_per_s")),
        "grpc_fetch_gib_per_s": round(m.median("grpc_fetch_gib_per_s")),
        "server_peak_rss_bytes": mem.server_peak_rss_bytes,
        "memory_budget_bytes": s.memory_budget_bytes,
        "push_vs_grpc": round(m.paired_ratio("push_gib_per_s", "grpc_gib_per_s")),
        "fetch_vs_grpc": round(m.paired_ratio("fetch_gib_per_s", "grpc_fetch_gib_per_s")),
        "push_vs_disk": round(m.paired_ratio("push_gib_per_s", "disk_write_gib_per_s")),
        "push_blocks_per_s": round(m.median("push_blocks_per_s")),
        "grpc_blocks_per_s": round(m.median("grpc_blocks_per_s")),
    });
    let cpu = json!({
        "server_cpu_s_push": round(m.median("server_cpu_s_push")),
        "server_cpu_s_fetch": round(m.median("server_cpu_s_fetch")),
        "server_cpu_s_per_gib_push": per_gib("server_cpu_s_push"),
        "server_cpu_s_per_gib_fetch": per_gib("server_cpu_s_fetch"),
        "grpc_server_cpu_s_per_gib_push": per_gib("grpc_server_cpu_s_push"),
        "grpc_server_cpu_s_per_gib_fetch": per_gib("grpc_server_cpu_s_fetch"),
        "client_cpu_s_per_gib_push": per_gib("client_cpu_s_push"),
        "disk_write_cpu_s_per_gib": per_gib("disk_write_cpu_s"),
        "client_cpu_s_per_gib_fetch": per_gib("client_cpu_s_fetch"),
        "grpc_client_cpu_s_per_gib_push": per_gib("grpc_client_cpu_s_push"),
        "grpc_client_cpu_s_per_gib_fetch": per_gib("grpc_client_cpu_s_fetch"),
    });
    let memory = json!({
        "server_memory_accounted_peak_bytes": mem.accounted_peak_bytes,
        "server_peak_rss_vs_budget": round(mem.server_peak_rss_bytes as f64 / s.memory_budget_bytes as f64),
        "grpc_server_peak_rss_bytes": mem.sink_peak_rss_bytes,
        "push_retry_later": retry_later,
        "push_rejected_total": mem.push_rejected_total,
        "commit_latency_mean_s": round(mem.commit_latency_mean_s),
        "writer_busy_push": round(m.median("writer_busy_push")),
    });
    let shape = json!({
        "verified": verify.as_ref().map(|v| v.partitions_failed == 0),
        "bytes": bytes,
        "blocks": m.median("blocks"),
        "maps": s.maps,
        "partitions": s.partitions,
        "block_bytes": s.block_bytes,
        "durability": s.durability,
        "reps": set.reps,
        "scale": set.scale,
        "concurrency": set.concurrency,
        "fetch_concurrency": s.fetch_concurrency(set),
        "wall_s": round(started.elapsed().as_secs_f64()),
    });
    let targets_json: Vec<serde_json::Value> = targets
        .iter()
        .map(|t| {
            json!({
                "what": t.what, "value": round(t.value), "limit": round(t.limit),
                "at_least": t.at_least, "met": t.met(),
            })
        })
        .collect();
    for part in [cpu, memory, shape] {
        if let (Some(to), serde_json::Value::Object(from)) = (j.as_object_mut(), part) {
            to.extend(from);
        }
    }
    j["targets"] = json!(targets_json);
    j["samples"] = m.to_json();
    if set.perf_dir.is_some() {
        j["profiled"] = json!(true);
    }
    if !set.server_toml.is_empty() {
        j["server_toml"] = json!(set.server_toml);
    }
    print_summary(s, &mem, &targets, &j);
    println!("BENCH {j}");
    j
}

fn print_summary(s: &Scenario, mem: &Memory, targets: &[Target], j: &serde_json::Value) {
    let f = |k: &str| j[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "   push   {:.3} GiB/s  = {:.2} x grpc ({:.3} GiB/s), {:.2} x disk write ({:.3} GiB/s); {:.0} blocks/s (grpc {:.0})",
        f("push_gib_per_s"),
        f("push_vs_grpc"),
        f("grpc_gib_per_s"),
        f("push_vs_disk"),
        f("disk_write_gib_per_s"),
        f("push_blocks_per_s"),
        f("grpc_blocks_per_s"),
    );
    println!(
        "   fetch  {:.3} GiB/s  = {:.2} x grpc ({:.3} GiB/s)",
        f("fetch_gib_per_s"),
        f("fetch_vs_grpc"),
        f("grpc_fetch_gib_per_s"),
    );
    let (server, sink, disk) = (
        f("server_cpu_s_per_gib_push"),
        f("grpc_server_cpu_s_per_gib_push"),
        f("disk_write_cpu_s_per_gib"),
    );
    println!(
        "   CPU s/GiB  push: server {server:.2} = grpc sink {sink:.2} + file write {disk:.2} + rest {:.2}; client {:.2}",
        server - sink - disk,
        f("client_cpu_s_per_gib_push"),
    );
    println!(
        "   disk writer thread busy (CPU) {:.0}% of the push; mean commit {:.1} ms",
        f("writer_busy_push") * 100.0,
        f("commit_latency_mean_s") * 1e3,
    );
    println!(
        "   CPU s/GiB  fetch: server {:.2}, grpc sink {:.2}; client {:.2} (grpc {:.2})",
        f("server_cpu_s_per_gib_fetch"),
        f("grpc_server_cpu_s_per_gib_fetch"),
        f("client_cpu_s_per_gib_fetch"),
        f("grpc_client_cpu_s_per_gib_fetch"),
    );
    println!(
        "   memory  server peak RSS {} MiB (budget {} MiB, accounted peak {} MiB); grpc sink peak RSS {} MiB; RETRY_LATER {}",
        mem.server_peak_rss_bytes >> 20,
        s.memory_budget_bytes >> 20,
        mem.accounted_peak_bytes >> 20,
        mem.sink_peak_rss_bytes >> 20,
        f("push_retry_later"),
    );
    for t in targets {
        println!(
            "   target  {} = {} ({} {}): {}",
            t.what,
            round(t.value),
            if t.at_least { ">=" } else { "<=" },
            round(t.limit),
            if t.met() { "met" } else { "MISSED" }
        );
    }
}
