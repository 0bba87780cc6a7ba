//! A real server process for tests: temp data dirs, ports chosen by the kernel, kill -9 / restart /
//! SIGTERM, peak RSS from /proc, and a tiny HTTP GET for the admin port.

#![allow(dead_code)]

use croupier_client::{Client, ClientOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct TestServer {
    child: Option<Child>,
    pub grpc: String,
    pub admin: String,
    pub dirs: Vec<PathBuf>,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    under_fiu: bool,
    _tmp: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with `disks` data dirs and extra TOML lines.
    pub fn start(disks: usize, extra_toml: &str) -> TestServer {
        Self::start_with(disks, Vec::new(), extra_toml, false)
    }

    /// Starts a server on `extra_dirs` (e.g. a small tmpfs) plus `disks` temporary dirs; `under_fiu` runs
    /// it under libfiu's `fiu-run -x` so tests can inject I/O faults with [`TestServer::fiu`].
    pub fn start_with(
        disks: usize,
        extra_dirs: Vec<PathBuf>,
        extra_toml: &str,
        under_fiu: bool,
    ) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut dirs = extra_dirs;
        dirs.extend((0..disks).map(|i| tmp.path().join(format!("disk{i}"))));
        let config_path = tmp.path().join("croupier.toml");
        let dir_list = dirs
            .iter()
            .map(|d| format!("{:?}", d.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        let toml = format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dirs = [{dir_list}]\n{extra_toml}\n"
        );
        std::fs::write(&config_path, toml).expect("write config");
        let log_path = tmp.path().join("server.log");
        let mut s = TestServer {
            child: None,
            grpc: String::new(),
            admin: String::new(),
            dirs,
            config_path,
            log_path,
            under_fiu,
            _tmp: tmp,
        };
        s.spawn();
        s
    }

    /// Sends a libfiu control command (e.g. "enable name=posix/io/rw/pwritev,failinfo=5").
    pub fn fiu(&self, command: &str) {
        assert!(self.under_fiu, "server not started under fiu-run");
        let st = Command::new("fiu-ctrl")
            .arg("-c")
            .arg(command)
            .arg(self.pid().to_string())
            .status()
            .expect("fiu-ctrl");
        assert!(st.success(), "fiu-ctrl -c {command:?} failed");
    }

    pub fn tmp_path(&self) -> &Path {
        self._tmp.path()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log");
        let mut cmd = if self.under_fiu {
            let mut c = Command::new("fiu-run");
            c.arg("-x").arg(env!("CARGO_BIN_EXE_croupier"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_croupier"))
        };
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn croupier");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "server did not start; log: {}",
                self.log()
            );
            match lines.next() {
                Some(Ok(line)) if line.starts_with("croupier serving") => {
                    for part in line.split_whitespace() {
                        if let Some(v) = part.strip_prefix("grpc=") {
                            self.grpc = v.to_string();
                        }
                        if let Some(v) = part.strip_prefix("admin=") {
                            self.admin = v.to_string();
                        }
                    }
                    break;
                }
                Some(Ok(_)) => continue,
                _ => panic!("server exited before serving; log: {}", self.log()),
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// kill -9 (if running), then start again on the same data dirs.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// kill -9, then start again without fault injection.
    pub fn restart_plain(&mut self) {
        self.kill9();
        self.under_fiu = false;
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn disk_states(&self) -> Vec<String> {
        let st = self.status_json();
        st["disks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["state"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn sigterm_and_wait(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc_kill(c.id() as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak resident set size of the server process (VmHWM).
    pub fn peak_rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .expect("VmHWM");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .expect("value")
            .parse()
            .expect("number");
        kib * 1024
    }

    /// GET on the admin port: (status code, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(&self.admin, path)
    }

    pub fn status_json(&self) -> serde_json::Value {
        let (code, body) = self.admin_get("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.grpc, ClientOptions::default())
            .await
            .expect("connect")
    }

    pub fn shuffle_dir(&self, app: &str, shuffle: u32) -> Option<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.join("apps").join(app).join(shuffle.to_string()))
            .find(|p| p.exists())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let code: u16 = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Value of a Prometheus sample (summed over label sets) in a /metrics body.
pub fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn load_spec(
    server: &str,
    app: &str,
    shuffle: u32,
    maps: u32,
    partitions: u32,
    bytes_per_map: u64,
    block_bytes: u64,
) -> croupier_client::loadgen::LoadSpec {
    croupier_client::loadgen::LoadSpec {
        server: server.to_string(),
        app: app.to_string(),
        shuffle,
        maps,
        partitions,
        bytes_per_map,
        block_bytes,
        seed: 42,
        concurrency: 4,
        map_start: 0,
        map_end: 0,
        attempt_base: 1000,
        options: ClientOptions::default(),
    }
}

pub fn verify_spec(
    load: &croupier_client::loadgen::LoadSpec,
) -> croupier_client::loadgen::VerifySpec {
    croupier_client::loadgen::VerifySpec {
        server: load.server.clone(),
        app: load.app.clone(),
        shuffle: load.shuffle,
        maps: load.maps,
        partitions: load.partitions,
        bytes_per_map: load.bytes_per_map,
        seed: load.seed,
        concurrency: 4,
        options: ClientOptions::default(),
    }
}

/// Loads, then verifies; panics with the failures.
pub async fn load_and_verify(spec: croupier_client::loadgen::LoadSpec) {
    let r = croupier_client::loadgen::load(spec.clone())
        .await
        .expect("load");
    assert_eq!(r.maps_committed, spec.maps);
    assert_verified(&spec).await;
}

pub async fn assert_verified(spec: &croupier_client::loadgen::LoadSpec) {
    let v = croupier_client::loadgen::verify(verify_spec(spec))
        .await
        .expect("verify");
    assert_eq!(v.partitions_failed, 0, "{:?}", v.failures);
    assert_eq!(v.partitions_ok, spec.partitions);
    assert_eq!(v.bytes, spec.bytes_per_map * u64::from(spec.maps));
}

pub fn fetch_req(
    app: &str,
    shuffle: u32,
    partitions: std::ops::Range<u32>,
    maps: std::ops::Range<u32>,
) -> croupier_client::proto::FetchRequest {
    croupier_client::proto::FetchRequest {
        app_id: app.into(),
        shuffle_id: shuffle,
        partition_start: partitions.start,
        partition_end: partitions.end,
        map_start: maps.start,
        map_end: maps.end,
        ..Default::default()
    }
}

/// Runs `croupier inspect DIR`: (no damage found, its stdout).
pub fn inspect_dir(dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_croupier"))
        .arg("inspect")
        .arg(dir)
        .output()
        .expect("run inspect");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// Compares one map's fetched blocks (all partitions of `spec`) with the data `load` generated for it.
pub fn assert_map_bytes(
    spec: &croupier_client::loadgen::LoadSpec,
    map: u32,
    blocks: &[croupier_client::proto::FetchedBlock],
    case: &str,
) {
    use croupier_client::datagen::{partition_bytes, ByteStream};
    assert!(
        blocks
            .iter()
            .all(|b| b.map_index == map && b.attempt_id == spec.attempt_base + u64::from(map)),
        "{case}: map {map} served blocks of another map or attempt"
    );
    for p in 0..spec.partitions {
        let got: Vec<u8> = blocks
            .iter()
            .filter(|b| b.partition_id == p)
            .flat_map(|b| b.data.iter().copied())
            .collect();
        let mut want = vec![0u8; partition_bytes(spec.bytes_per_map, spec.partitions, p) as usize];
        ByteStream::new(spec.seed, map, p).fill(&mut want);
        assert!(
            got == want,
            "{case}: map {map} partition {p} differs from what was pushed"
        );
    }
}
