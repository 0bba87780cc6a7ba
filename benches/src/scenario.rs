//! The scenarios and the knobs of a run (environment variables and command-line filters).

use std::path::PathBuf;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// One workload: what `croupier load` pushes (maps x partitions, block size, bytes) and how the server
/// is configured for it. Sizes are at scale 1.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub maps: u32,
    pub partitions: u32,
    pub bytes_per_map: u64,
    pub block_bytes: u64,
    pub memory_budget_bytes: u64,
    /// `write` or `fsync` (the server's `durability` key; the disk baseline follows it).
    pub durability: &'static str,
    /// Partitions fetched at once, when more than the run's concurrency (many small fetches are
    /// latency-bound: a reducer pool fetches many partitions in parallel).
    pub fetch_concurrency_min: u32,
}

impl Scenario {
    pub fn fsync(&self) -> bool {
        self.durability == "fsync"
    }

    /// The scenario at `scale` (bytes per map shrink or grow; every partition keeps some data).
    pub fn scaled(&self, scale: f64) -> Scenario {
        let mut s = self.clone();
        let floor = u64::from(self.partitions) * 1024;
        s.bytes_per_map = ((self.bytes_per_map as f64 * scale) as u64).max(floor);
        s
    }

    pub fn fetch_concurrency(&self, set: &Settings) -> u32 {
        set.concurrency.max(self.fetch_concurrency_min)
    }

    pub fn total_bytes(&self) -> u64 {
        u64::from(self.maps) * self.bytes_per_map
    }
}

pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "large_blocks",
            about: "16 maps x 256 partitions, 1 MiB blocks (one 1 MiB block per map and partition \
                    cell needs 4 GiB); push, then fetch every partition",
            maps: 16,
            partitions: 256,
            bytes_per_map: 256 * MIB,
            block_bytes: MIB,
            memory_budget_bytes: GIB,
            durability: "write",
            fetch_concurrency_min: 0,
        },
        Scenario {
            name: "small_blocks",
            about: "16 maps x 256 partitions, 4 KiB blocks, 512 MiB: per-block costs",
            maps: 16,
            partitions: 256,
            bytes_per_map: 32 * MIB,
            block_bytes: 4 << 10,
            memory_budget_bytes: GIB,
            durability: "write",
            fetch_concurrency_min: 0,
        },
        Scenario {
            name: "many_partitions",
            about:
                "16 maps x 10,000 partitions (one ~6.5 KiB block per cell), 1 GiB, memory budget \
                    256 MiB: buffers never fill, memory pressure and commits do the flushing",
            maps: 16,
            partitions: 10_000,
            bytes_per_map: 64 * MIB,
            block_bytes: 64 << 10,
            memory_budget_bytes: 256 * MIB,
            durability: "write",
            fetch_concurrency_min: 16,
        },
        Scenario {
            name: "durable",
            about:
                "16 maps x 128 partitions, 1 MiB blocks, 2 GiB, durability = fsync (group commit), \
                    against an fdatasync'd sequential write",
            maps: 16,
            partitions: 128,
            bytes_per_map: 128 * MIB,
            block_bytes: MIB,
            memory_budget_bytes: GIB,
            durability: "fsync",
            fetch_concurrency_min: 0,
        },
    ]
}

/// The knobs of one run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `CROUPIER_BENCH_SCALE` (default 1): multiplies the bytes of every scenario.
    pub scale: f64,
    /// `CROUPIER_BENCH_REPS` (default 5): repetitions; medians are reported.
    pub reps: u32,
    /// `CROUPIER_BENCH_ONLY=a,b` or names on the command line: scenarios to run (default all).
    pub only: Vec<String>,
    /// `CROUPIER_BENCH_CONCURRENCY` (default 4): maps pushed / partitions fetched at once, each on its
    /// own connection.
    pub concurrency: u32,
    /// `CROUPIER_BENCH_DIR` (default `target/croupier-bench`): data dirs and baseline files. Keep it on
    /// the disk you want to measure (not a tmpfs).
    pub dir: PathBuf,
    /// `CROUPIER_BENCH_VERIFY` (default 1): compare every fetched byte once per scenario (last repetition,
    /// outside the timed fetch).
    pub verify: bool,
    /// `CROUPIER_BENCH_PERF_DIR`: when set, `perf record` samples the server of each scenario into
    /// `DIR/<scenario>.perf.data` (figures of such a run are distorted by the sampling).
    pub perf_dir: Option<PathBuf>,
    /// `CROUPIER_BENCH_PERF_ARGS` (default `-F 999 -g`).
    pub perf_args: String,
    /// `CROUPIER_BENCH_WARMUP` (default 1): before the first repetition, write the scenario's bytes once,
    /// untimed, to the croupier server (then unregister them: their segments fill the pool) and to the
    /// disk baseline's file, so every timed repetition sees reused files on both sides, as a long-running
    /// server does. 0 measures the first repetition on new files.
    pub warmup: bool,
    /// `CROUPIER_BENCH_SERVER_TOML`: extra lines for every server's config file, for experiments
    /// (e.g. `chunk_bytes_target = "1MiB"`); figures of such a run are not the defaults'.
    pub server_toml: String,
}

impl Settings {
    pub fn from_env(args: &[String]) -> Result<Settings, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let scale: f64 = match var("CROUPIER_BENCH_SCALE") {
            Some(v) => v
                .parse()
                .map_err(|_| format!("CROUPIER_BENCH_SCALE={v}: not a number"))?,
            None => 1.0,
        };
        if !(scale > 0.0 && scale <= 16.0) {
            return Err(format!(
                "CROUPIER_BENCH_SCALE={scale}: must be within (0, 16]"
            ));
        }
        let reps: u32 = match var("CROUPIER_BENCH_REPS") {
            Some(v) => v
                .parse()
                .map_err(|_| format!("CROUPIER_BENCH_REPS={v}: not a count"))?,
            None => 5,
        };
        let concurrency: u32 = match var("CROUPIER_BENCH_CONCURRENCY") {
            Some(v) => v
                .parse()
                .map_err(|_| format!("CROUPIER_BENCH_CONCURRENCY={v}: not a count"))?,
            None => 4,
        };
        if reps == 0 || concurrency == 0 {
            return Err("CROUPIER_BENCH_REPS and CROUPIER_BENCH_CONCURRENCY must be >= 1".into());
        }
        let mut only: Vec<String> = var("CROUPIER_BENCH_ONLY")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default();
        only.extend(args.iter().filter(|a| !a.starts_with('-')).cloned());
        only.retain(|s| !s.is_empty());
        let known: Vec<&str> = all().iter().map(|s| s.name).collect();
        if let Some(bad) = only.iter().find(|n| !known.contains(&n.as_str())) {
            return Err(format!(
                "unknown scenario {bad:?}; scenarios: {}",
                known.join(", ")
            ));
        }
        Ok(Settings {
            scale,
            reps,
            only,
            concurrency,
            dir: var("CROUPIER_BENCH_DIR")
                .map(|d| crate::procs::from_root(&d))
                .unwrap_or_else(|| crate::procs::target_dir().join("croupier-bench")),
            verify: var("CROUPIER_BENCH_VERIFY").is_none_or(|v| v != "0"),
            warmup: var("CROUPIER_BENCH_WARMUP").is_none_or(|v| v != "0"),
            perf_dir: var("CROUPIER_BENCH_PERF_DIR").map(|d| crate::procs::from_root(&d)),
            perf_args: var("CROUPIER_BENCH_PERF_ARGS").unwrap_or_else(|| "-F 999 -g".into()),
            server_toml: var("CROUPIER_BENCH_SERVER_TOML").unwrap_or_default(),
        })
    }

    pub fn selected(&self) -> Vec<Scenario> {
        all()
            .into_iter()
            .filter(|s| self.only.is_empty() || self.only.iter().any(|n| n == s.name))
            .map(|s| s.scaled(self.scale))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_scale_sizes_match_the_issue() {
        let s = all();
        let by = |n: &str| s.iter().find(|x| x.name == n).unwrap().clone();
        let large = by("large_blocks");
        assert!(large.total_bytes() >= 2 * GIB);
        // Every (map, partition) cell holds whole 1 MiB blocks.
        assert_eq!(large.bytes_per_map % (u64::from(large.partitions) * MIB), 0);
        assert!(by("small_blocks").total_bytes() >= 512 * MIB);
        let many = by("many_partitions");
        assert_eq!(many.partitions, 10_000);
        assert!(many.total_bytes() >= GIB);
        assert_eq!(many.memory_budget_bytes, 256 * MIB);
        assert!(by("durable").fsync());
    }

    #[test]
    fn scaling_keeps_data_in_every_partition() {
        let s = all()[2].scaled(0.0001);
        assert!(s.bytes_per_map >= u64::from(s.partitions));
    }
}
