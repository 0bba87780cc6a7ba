//! Server configuration: defaults that make `croupier serve` work with no file, a TOML file
//! (`--config`, unknown keys are an error) and command-line flags that override both.
//!
//! Every limit is named with its unit. `Config::validate` checks the relations between limits
//! (a push message must fit many times into the memory budget, and so on) so that a bad
//! configuration fails at startup with a message instead of misbehaving under load.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// When a commit is acknowledged, its data has at least reached the OS (survives a process crash).
/// With `Fsync` it has also been fsync'd (survives power loss); concurrent commits share fsyncs.
/// Largest fetch message data size: clients accept messages up to 64 MiB.
pub const FETCH_CHUNK_BYTES_MAX: u64 = 32 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Write,
    Fsync,
}

/// How segment files are written and read.
///
/// - `Buffered`: through the page cache. Fetches soon after pushes are served from memory; every
///   pushed byte is copied into the page cache once, which costs CPU (a lot when the kernel has to
///   find fresh pages).
/// - `Direct`: `O_DIRECT`. Chunks are copied into a reused, aligned staging buffer and written to the
///   device without page-cache pages; each write is padded to [`DIRECT_IO_ALIGN_BYTES`] (unreferenced
///   bytes, FORMAT.md section 6.1), and fetches read aligned ranges from the device. For hosts whose
///   shuffle data does not fit in memory anyway, or whose CPU is the bottleneck.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    Buffered,
    Direct,
}

/// Offset, length and memory alignment of every `O_DIRECT` transfer (a multiple of any common logical
/// block size).
pub const DIRECT_IO_ALIGN_BYTES: u64 = 4096;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Admin HTTP listen address (metrics, health, status).
    pub admin_listen: SocketAddr,
    /// One data directory per disk.
    pub data_dirs: Vec<PathBuf>,
    /// Upper bound of pushed bytes held in memory (buffered or queued for writing).
    #[serde(deserialize_with = "de_size")]
    pub memory_budget_bytes: u64,
    /// Above this fraction of the budget, the largest partition buffers are flushed early.
    pub memory_high_watermark_ratio: f64,
    /// Upper bound of the metadata kept in memory for stored data (block index entries, about 40 bytes
    /// per stored block, and commit records). At the limit pushes are refused (RESOURCE_EXHAUSTED) until
    /// shuffles are unregistered. Only tiny blocks come near it: 512 MiB indexes ~13 million blocks.
    #[serde(deserialize_with = "de_size")]
    pub metadata_bytes_max: u64,
    /// How long a push waits for memory before it is refused with RETRY_LATER.
    pub push_wait_ms_max: u64,
    /// The retry-after hint sent with RETRY_LATER.
    pub push_retry_after_ms: u32,
    /// Largest accepted gRPC message (one push batch); larger ones are refused with OUT_OF_RANGE.
    #[serde(deserialize_with = "de_size")]
    pub message_bytes_max: u64,
    /// A partition buffer is written as one chunk when it reaches this size.
    #[serde(deserialize_with = "de_size")]
    pub chunk_bytes_target: u64,
    /// Write-behind: a partition buffer holding at least this many bytes is written as soon as its
    /// disk's writer has less than four `chunk_bytes_target`s queued, instead of waiting to reach
    /// `chunk_bytes_target` or the map's commit. Data then leaves memory while it is still in the CPU
    /// caches, and commits find little left to write. 0 turns write-behind off; values above
    /// `chunk_bytes_target` act as `chunk_bytes_target`.
    #[serde(deserialize_with = "de_size")]
    pub write_behind_bytes_min: u64,
    /// A push to a disk whose writer has more than this many bytes queued waits (within
    /// `push_wait_ms_max`) until the writer is below it again. The writer then works on data that has
    /// just arrived, still in the CPU caches and in buffers the allocator reuses, instead of a backlog
    /// hundreds of MiB long; and a commit waits for at most this much of other maps' data ahead of its
    /// own. 0 turns the wait off (the memory budget alone bounds the queue). Below
    /// `chunk_bytes_target`, one full chunk already makes pushes wait until the writer has written it.
    #[serde(deserialize_with = "de_size")]
    pub write_queue_bytes_max: u64,
    /// Segment files are rolled when they reach this size.
    #[serde(deserialize_with = "de_size")]
    pub segment_bytes_max: u64,
    /// Segment files of deleted shuffles kept per data dir to be overwritten by new segments (the
    /// segment pool), at most this many bytes; 0 turns recycling off. Overwriting a file reuses its
    /// allocated blocks and page-cache pages, which is several times cheaper than filling a new one.
    /// Files shorter than `segment_bytes_max` / 16 are not kept. The pool gives its files back first
    /// when a disk runs low on space.
    #[serde(deserialize_with = "de_size")]
    pub segment_pool_bytes_max: u64,
    /// At startup, each data dir's segment pool is topped up to this many bytes with files of zeros
    /// (`segment_bytes_max` each), written in the background, so that a new server's first shuffles
    /// overwrite allocated files as later ones do. The pool persists across restarts: a disk is filled
    /// once. Stops early rather than take a disk below 2 x `disk_reserve_bytes`. At most
    /// `segment_pool_bytes_max`; 0 (the default) fills nothing.
    #[serde(deserialize_with = "de_size")]
    pub segment_pool_prefill_bytes: u64,
    /// Largest data size of one FetchChunk message.
    #[serde(deserialize_with = "de_size")]
    pub fetch_chunk_bytes_max: u64,
    /// Fetch streams served at once; further fetches wait.
    pub fetch_streams_max: u32,
    /// See [`Durability`].
    pub durability: Durability,
    /// See [`IoMode`].
    pub io: IoMode,
    /// An app that sends no request for this long is deleted with all its data.
    pub app_lease_timeout_ms: u64,
    /// Blocks per push batch, at most.
    pub batch_blocks_max: u32,
    /// Shuffles per server, at most.
    pub shuffles_max: u32,
    /// Partitions per shuffle, at most.
    pub partitions_max: u32,
    /// Maps per shuffle, at most.
    pub maps_max: u32,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_grace_ms: u64,
    /// File holding the shared-secret token every RPC must carry (`authorization: Bearer <token>`);
    /// also required by the admin POST endpoints. Unset: no token is required.
    pub auth_token_file: Option<PathBuf>,
    /// Issue a per-app secret at registration and require it (`x-croupier-app-secret`) on every
    /// per-app RPC. Always on when `auth_token_file` is set.
    pub app_secrets: bool,
    /// Key from which app secrets are derived (HMAC-SHA256); created on first use. Unset: the file
    /// `croupier-server.key` in the first data dir.
    pub app_secret_key_file: Option<PathBuf>,
    /// PEM certificate chain for TLS on the gRPC and admin listeners (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Bytes one app may hold on this server (buffered plus on disk); 0: unlimited.
    #[serde(deserialize_with = "de_size")]
    pub app_quota_bytes: u64,
    /// Free space kept on every disk: writes that would go below it are refused with "no space", and a
    /// disk below it takes no new shuffles.
    #[serde(deserialize_with = "de_size")]
    pub disk_reserve_bytes: u64,
    /// Each disk is probed (write, fsync, read back a small file) this often.
    pub disk_probe_interval_ms: u64,
    /// A probe that takes longer fails the disk.
    pub disk_probe_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:19870".parse().expect("literal address"),
            admin_listen: "127.0.0.1:19871".parse().expect("literal address"),
            data_dirs: vec![PathBuf::from("./croupier-data")],
            memory_budget_bytes: 1 << 30,
            metadata_bytes_max: 512 << 20,
            memory_high_watermark_ratio: 0.75,
            push_wait_ms_max: 1_000,
            push_retry_after_ms: 200,
            message_bytes_max: 8 << 20,
            chunk_bytes_target: 4 << 20,
            write_behind_bytes_min: 512 << 10,
            write_queue_bytes_max: 16 << 20,
            segment_bytes_max: 1 << 30,
            segment_pool_bytes_max: 8 << 30,
            segment_pool_prefill_bytes: 0,
            fetch_chunk_bytes_max: 4 << 20,
            fetch_streams_max: 64,
            durability: Durability::Write,
            io: IoMode::Buffered,
            app_lease_timeout_ms: 300_000,
            batch_blocks_max: 65_536,
            shuffles_max: 65_536,
            partitions_max: 1 << 20,
            maps_max: 1 << 22,
            shutdown_grace_ms: 30_000,
            auth_token_file: None,
            app_secrets: false,
            app_secret_key_file: None,
            tls_cert: None,
            tls_key: None,
            app_quota_bytes: 0,
            disk_reserve_bytes: 256 << 20,
            disk_probe_interval_ms: 5_000,
            disk_probe_timeout_ms: 10_000,
        }
    }
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Per-app secrets are enforced: asked for, or implied by the auth token.
    pub fn app_secrets_enforced(&self) -> bool {
        self.app_secrets || self.auth_token_file.is_some()
    }

    /// Largest message the server sends: a fetch chunk, or one block of the largest push message.
    pub fn encoding_bytes_max(&self) -> usize {
        (self.message_bytes_max.max(self.fetch_chunk_bytes_max) + (1 << 20)) as usize
    }

    pub fn memory_high_watermark_bytes(&self) -> u64 {
        (self.memory_budget_bytes as f64 * self.memory_high_watermark_ratio) as u64
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.data_dirs.is_empty() {
            return Err("data_dirs: at least one data directory is required".into());
        }
        if self.message_bytes_max < 64 << 10 {
            return Err("message_bytes_max: must be at least 64KiB".into());
        }
        if self.memory_budget_bytes < 4 * self.message_bytes_max {
            return Err(format!(
                "memory_budget_bytes ({}) must be at least 4 x message_bytes_max ({})",
                self.memory_budget_bytes, self.message_bytes_max
            ));
        }
        if self.metadata_bytes_max < 1 << 20 {
            return Err("metadata_bytes_max: must be at least 1MiB".into());
        }
        if !(0.1..=1.0).contains(&self.memory_high_watermark_ratio) {
            return Err("memory_high_watermark_ratio: must be within 0.1 ..= 1.0".into());
        }
        if self.chunk_bytes_target == 0 || self.chunk_bytes_target > (1 << 30) {
            return Err("chunk_bytes_target: must be within 1 ..= 1GiB".into());
        }
        if self.segment_bytes_max < 4096 {
            return Err("segment_bytes_max: must be at least 4KiB".into());
        }
        if self.segment_pool_prefill_bytes > self.segment_pool_bytes_max {
            return Err(format!(
                "segment_pool_prefill_bytes ({}) must be at most segment_pool_bytes_max ({})",
                self.segment_pool_prefill_bytes, self.segment_pool_bytes_max
            ));
        }
        if self.fetch_chunk_bytes_max == 0 || self.fetch_chunk_bytes_max > FETCH_CHUNK_BYTES_MAX {
            return Err(format!(
                "fetch_chunk_bytes_max: must be within 1 ..= {FETCH_CHUNK_BYTES_MAX}"
            ));
        }
        if self.fetch_streams_max == 0 {
            return Err("fetch_streams_max: must be at least 1".into());
        }
        if self.disk_probe_interval_ms < 10 || self.disk_probe_timeout_ms < 10 {
            return Err(
                "disk_probe_interval_ms and disk_probe_timeout_ms: must be at least 10".into(),
            );
        }
        if self.app_lease_timeout_ms < 100 {
            return Err("app_lease_timeout_ms: must be at least 100".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("tls_cert and tls_key: set both (TLS on) or neither (TLS off)".into());
        }
        Ok(())
    }
}

/// Parses `1073741824`, `"1GiB"`, `"512MiB"`, `"64KiB"`, `"1GB"`, `"10MB"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 512MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use KiB, MiB, GiB)"
            ))
        }
    };
    Ok((num * mult as f64) as u64)
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_unknown_keys_are_refused() {
        Config::default().validate().unwrap();
        let err = Config::from_toml("memory_budget = 5").unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        let c =
            Config::from_toml("memory_budget_bytes = \"256MiB\"\ndurability = \"fsync\"").unwrap();
        assert_eq!(c.memory_budget_bytes, 256 << 20);
        assert_eq!(c.durability, Durability::Fsync);
    }

    #[test]
    fn pool_prefill_is_bounded_by_the_pool() {
        let c = Config::from_toml("segment_pool_prefill_bytes = \"8GiB\"").unwrap();
        c.validate().unwrap();
        let c = Config::from_toml(
            "segment_pool_bytes_max = \"1GiB\"\nsegment_pool_prefill_bytes = \"2GiB\"",
        )
        .unwrap();
        let err = c.validate().unwrap_err();
        assert!(
            err.contains("segment_pool_prefill_bytes") && err.contains("segment_pool_bytes_max"),
            "{err}"
        );
    }

    #[test]
    fn the_write_queue_wait_is_independent_of_the_chunk_size() {
        // A large chunk target with the default wait is valid (the wait then applies after one chunk).
        let c = Config::from_toml("chunk_bytes_target = \"64MiB\"").unwrap();
        c.validate().unwrap();
        let c = Config::from_toml("write_queue_bytes_max = 0").unwrap();
        c.validate().unwrap();
        assert_eq!(c.write_queue_bytes_max, 0);
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("lots").is_err());
    }
}
