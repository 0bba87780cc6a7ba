//! Processes: building the release `croupier` binary, spawning it (and the gRPC sink) on loopback,
//! waiting for their ready line, stopping them, and reading what the kernel knows about them (CPU time
//! and peak RSS from `/proc`, the server's own `/status` over its admin HTTP port).
//!
//! Every child is stopped by its own pid (SIGTERM, then SIGKILL after a grace period), never by name.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a child may take to print its ready line.
const READY_WAIT_MAX: Duration = Duration::from_secs(60);
/// How long a child may take to exit after SIGTERM before it is killed.
const STOP_WAIT_MAX: Duration = Duration::from_secs(30);

/// Builds `target/release/croupier` with the cargo that runs this benchmark and returns its path.
/// `CROUPIER_BENCH_SERVER_BIN` skips the build and names the binary to use.
pub fn croupier_binary() -> Result<PathBuf, String> {
    if let Ok(path) = std::env::var("CROUPIER_BENCH_SERVER_BIN") {
        return Ok(from_root(&path));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = workspace_root();
    eprintln!(
        "building the croupier binary: {cargo} build --release -p croupier-server --bin croupier"
    );
    let out = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "croupier-server",
            "--bin",
            "croupier",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {cargo}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cargo} build of croupier-server failed ({})",
            out.status
        ));
    }
    // The compiler-artifact message of the binary names the executable, wherever the target dir is.
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "croupier" {
            if let Some(exe) = msg["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    Err("cargo build succeeded but named no croupier executable".into())
}

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the benches crate sits inside the workspace")
        .to_path_buf()
}

/// A path from the environment: `cargo bench` runs the benchmark in the crate's directory, so a
/// relative path is taken relative to the workspace root instead.
pub fn from_root(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        p
    } else {
        workspace_root().join(p)
    }
}

/// The target directory of the workspace (for the benchmark's scratch files).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => from_root(&d.to_string_lossy()),
        None => workspace_root().join("target"),
    }
}

/// A child process that announced `... grpc=ADDR [admin=ADDR]` on stdout. Killed when dropped.
pub struct Served {
    child: Option<Child>,
    pub pid: u32,
    pub grpc: String,
    pub admin: Option<String>,
    pub log: PathBuf,
}

impl Served {
    /// Spawns `cmd` (stderr to `log`) and waits for a stdout line starting with `ready_prefix`.
    pub fn spawn(mut cmd: Command, ready_prefix: &str, log: &Path) -> Result<Served, String> {
        let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let mut child = cmd.spawn().map_err(|e| format!("spawning {cmd:?}: {e}"))?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        // Keeps draining stdout after the ready line so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut served = Served {
            child: Some(child),
            pid,
            grpc: String::new(),
            admin: None,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + READY_WAIT_MAX;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(ready_prefix) => {
                    for word in line.split_whitespace() {
                        if let Some(a) = word.strip_prefix("grpc=") {
                            served.grpc = a.to_string();
                        } else if let Some(a) = word.strip_prefix("admin=") {
                            served.admin = Some(a.to_string());
                        }
                    }
                    if served.grpc.is_empty() {
                        return Err(format!("ready line without grpc=ADDR: {line}"));
                    }
                    return Ok(served);
                }
                Ok(_) => continue,
                Err(_) => {
                    return Err(format!(
                    "{cmd:?} did not print {ready_prefix:?} within {READY_WAIT_MAX:?}; log {}:\n{}",
                    log.display(),
                    tail(log)
                ))
                }
            }
        }
    }

    /// SIGTERM, then waits (SIGKILL after a grace period). Returns the exit status.
    pub fn stop(mut self) -> Result<ExitStatus, String> {
        let mut child = self.child.take().expect("stopped once");
        terminate(&mut child)
    }

    /// CPU seconds (user + system) the process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid).unwrap_or(f64::NAN)
    }

    /// Peak resident set size so far (VmHWM).
    pub fn peak_rss_bytes(&self) -> u64 {
        peak_rss_bytes(self.pid).unwrap_or(0)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&mut child);
        }
    }
}

fn terminate(child: &mut Child) -> Result<ExitStatus, String> {
    if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
        return Ok(status);
    }
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet (try_wait above).
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_WAIT_MAX;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().map_err(|e| e.to_string())
}

/// The last lines of a log file, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process (all its threads), from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field `n` (numbered from 1, as in proc(5)) of the text of a `/proc/.../stat` file, parsed.
fn stat_field(stat: &str, n: usize) -> Option<u64> {
    // Fields after the command name (field 2), which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

/// utime + stime (fields 14 and 15) from the text of a `/proc/.../stat` file.
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    let ticks = stat_field(stat, 14)? + stat_field(stat, 15)?;
    Some(ticks as f64 / clock_ticks_per_second())
}

/// Minor page faults of a process so far (all its threads), from `/proc/PID/stat` (field 10). On VMs
/// whose balloon reports free pages to the host, a fault on a page the guest had freed costs far more
/// than a reused one (docs/PERFORMANCE.md, round 3): phases that differ in CPU for the same bytes often
/// differ here.
pub fn minor_faults(pid: u32) -> Option<u64> {
    stat_field(
        &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
        10,
    )
}

/// CPU seconds used so far by the threads of `pid` whose name starts with `prefix` (the server names its
/// disk writer threads `croupier-disk-N`).
pub fn threads_cpu_seconds(pid: u32, prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    let mut total = 0.0;
    for task in tasks.flatten() {
        let dir = task.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        if let Some(cpu) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .and_then(|stat| stat_cpu_seconds(&stat))
        {
            total += cpu;
        }
    }
    total
}

/// CPU seconds of this process (the benchmark client).
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(f64::NAN)
}

/// VmHWM (peak resident set size) of a process, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// GET `path` from an HTTP/1.1 server (the admin port); returns the body of a 200 answer.
pub fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: no HTTP header in the answer"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "GET {path}: {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Err(format!("GET {path}: chunked answers are not supported"));
    }
    Ok(body.to_string())
}

/// GET `path` and parse the body as JSON.
pub fn http_get_json(addr: &str, path: &str) -> Result<serde_json::Value, String> {
    let body = http_get(addr, path)?;
    serde_json::from_str(&body).map_err(|e| format!("GET {path}: {e}"))
}

/// The value of an unlabelled sample in Prometheus text (`name value`).
pub fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        if n == name {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Flushes the dirty pages of the file system holding `dir`, so that one phase's write-back does not
/// run (and cost time) inside the next phase.
pub fn sync_file_system(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        use std::os::fd::AsRawFd;
        // SAFETY: syncfs on a file descriptor we own for the duration of the call.
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples_are_found_by_exact_name() {
        let text =
            "# TYPE x histogram\nx_bucket{le=\"1\"} 3\nx_sum 1.5\nx_count 3\nx_sum_other 9\n";
        assert_eq!(prometheus_value(text, "x_sum"), Some(1.5));
        assert_eq!(prometheus_value(text, "x_count"), Some(3.0));
        assert_eq!(prometheus_value(text, "y"), None);
    }

    #[test]
    fn own_cpu_time_and_peak_rss_are_readable() {
        assert!(own_cpu_seconds() >= 0.0);
        assert!(peak_rss_bytes(std::process::id()).unwrap() > 0);
    }
}
