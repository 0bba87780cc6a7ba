#!/usr/bin/env bash
# Spark shuffle benchmark: the same shuffle-heavy job (hash repartition of BENCH_BYTES of nearly
# incompressible rows, default 2.5 GiB of rows, about 2.15 GiB shuffled after lz4) with Croupier (one local `croupier serve`) and with Spark's built-in
# sort shuffle, in the same run on the same machine. Not a test. Prints one line:
#   BENCH {"name": ..., "croupier_seconds": ..., "builtin_seconds": ..., "shuffle_bytes": ...}
#
# Env: BENCH_BYTES (default 2684354560), BENCH_REDUCERS (64), BENCH_MASTER (local-cluster[2,1,2048]),
#      BENCH_RUNS (1: repetitions of both modes, alternating which goes first; medians are reported),
#      CROUPIER_BIN (default target/release/croupier), PYSPARK_VERSION (4.3.0),
#      BENCH_JAR (default: the plugin jar in client/spark/target),
#      BENCH_CONF / BENCH_CROUPIER_CONF (`k=v;k=v` Spark settings for both modes / for Croupier only; unset
#      by default: the comparison uses the same config except the shuffle manager lines),
#      BENCH_SERVER_TOML (extra lines for the server's config file, e.g. `io = "direct"`),
#      BENCH_POOL_PREFILL (8GiB: the server's `segment_pool_prefill_bytes`, as deploy/croupier.toml sets
#      it; the jobs start once the pool holds it, so they overwrite pooled files as a server that has
#      been running does; 0 makes the first jobs write new files),
#      BENCH_WARMUP_JOBS (1: untimed runs of the same job in the same Spark session before the measured one,
#      so that both modes are measured with warm executor JVMs; their times are reported as
#      `*_warmup_seconds`; 0 measures the first job of new executors).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SPARK_DIR="$REPO/client/spark"
BYTES="${BENCH_BYTES:-2684354560}"
REDUCERS="${BENCH_REDUCERS:-64}"
MASTER="${BENCH_MASTER:-local-cluster[2,1,2048]}"
PYSPARK_VERSION="${PYSPARK_VERSION:-4.3.0}"
VENV="$SPARK_DIR/target/venv"
[ "$PYSPARK_VERSION" = "4.3.0" ] || VENV="$SPARK_DIR/target/venv-$PYSPARK_VERSION"

log() { echo "[benches/spark] $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV" || exit 2; fi
if ! "$VENV/bin/python" -c "import pyspark, sys; sys.exit(0 if pyspark.__version__ == '$PYSPARK_VERSION' else 1)" 2>/dev/null; then
  "$VENV/bin/pip" install -q "pyspark==$PYSPARK_VERSION" pytest || exit 2
fi
JAR="${BENCH_JAR:-$(ls "$SPARK_DIR"/target/croupier-spark-*.jar 2>/dev/null | grep -v -e '/original-' -e '-sources.jar' | head -1)}"
if [ -z "$JAR" ]; then
  mvn -B -q -f "$SPARK_DIR/pom.xml" package -DskipTests || exit 2
  JAR="$(ls "$SPARK_DIR"/target/croupier-spark-*.jar | grep -v -e '/original-' -e '-sources.jar' | head -1)"
fi
BIN="${CROUPIER_BIN:-$REPO/target/release/croupier}"
if [ ! -x "$BIN" ]; then (cd "$REPO" && cargo build --release -p croupier-server) || exit 2; fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/croupier-spark-bench.XXXXXX")"
read -r GRPC ADMIN <<<"$("$VENV/bin/python" -c '
import socket
a = socket.socket(); a.bind(("127.0.0.1", 0)); b = socket.socket(); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')"
PREFILL="${BENCH_POOL_PREFILL:-8GiB}"
printf 'segment_pool_prefill_bytes = "%s"\n%s\n' "$PREFILL" "${BENCH_SERVER_TOML:-}" >"$WORK/server.toml"
"$BIN" serve --config "$WORK/server.toml" --listen "127.0.0.1:$GRPC" --admin-listen "127.0.0.1:$ADMIN" \
  --data-dir "$WORK/data" --memory-budget 1GiB >"$WORK/server.log" 2>&1 &
PID=$!
disown $PID 2>/dev/null || true
cleanup() { kill "$PID" 2>/dev/null; sleep 1; kill -9 "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$ADMIN/healthz', timeout=1)" 2>/dev/null && break
  sleep 0.2
done

# Wait (at most 5 minutes) for the segment pool prefill: the log line says when it is done.
if [ "$PREFILL" != "0" ]; then
  log "waiting for the server's segment pool prefill ($PREFILL)"
  for _ in $(seq 1 1500); do
    grep -q -e "segment pool prefill finished" -e "segment pool prefill stopped" "$WORK/server.log" && break
    sleep 0.2
  done
  grep -e "segment pool prefill" "$WORK/server.log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g' >&2
fi

# CPU seconds (user + system) the server process used so far.
server_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$PID/stat" 2>/dev/null || echo 0
}

# Write system calls the server process made so far (its socket and file writes).
server_writes() {
  awk '/^syscw:/ { print $2 }' "/proc/$PID/io" 2>/dev/null || echo 0
}

# "sum count" of the server's commit latency histogram so far.
commits() {
  "$VENV/bin/python" -c "import urllib.request
m = dict(l.rsplit(' ', 1) for l in urllib.request.urlopen('http://127.0.0.1:$ADMIN/metrics').read().decode().splitlines()
         if l.startswith('croupier_commit_latency_seconds_'))
print(m.get('croupier_commit_latency_seconds_sum', '0'), m.get('croupier_commit_latency_seconds_count', '0'))"
}

pushed() {
  "$VENV/bin/python" -c "import json, urllib.request; print(json.load(urllib.request.urlopen('http://127.0.0.1:$ADMIN/status'))['push_bytes_total'])"
}

run() {
  local mode="$1"
  log "running $mode ($BYTES bytes, $MASTER)"
  PYSPARK_PYTHON="$VENV/bin/python" "$VENV/bin/python" "$HERE/bench.py" --mode "$mode" --bytes "$BYTES" \
    --jar "$JAR" --servers "127.0.0.1:$GRPC" --master "$MASTER" --reducers "$REDUCERS" --warmup "${BENCH_WARMUP_JOBS:-1}" 2>"$WORK/$mode.err" \
    | grep '^RESULT ' | tail -1 | cut -c8-
}

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
# One repetition of one mode: its RESULT json plus, for Croupier, the bytes pushed and the server's CPU.
measure() {
  local mode="$1" p0 c0 w0 k0 r t0
  p0="$(pushed)"; c0="$(server_cpu)"; w0="$(server_writes)"; k0="$(commits)"; t0="$(date +%s)"
  r="$(run "$mode")"
  [ -n "$r" ] || { log "$mode run failed:"; tail -30 "$WORK/$mode.err" >&2; exit 1; }
  "$VENV/bin/python" -c 'import json, sys
r = json.loads(sys.argv[2]); r["mode"] = sys.argv[1]
# The server counters cover the warm-up jobs too (identical jobs): report the mean per job.
jobs = 1 + len(r.get("warmup_seconds", []))
r["pushed"] = (int(sys.argv[5]) - int(sys.argv[3])) // jobs
r["server_cpu"] = round((float(sys.argv[6]) - float(sys.argv[4])) / jobs, 2)
r["t0"], r["t1"] = int(sys.argv[7]), int(sys.argv[8])
r["server_writes"] = (int(sys.argv[10]) - int(sys.argv[9])) // jobs
(s0, n0), (s1, n1) = [map(float, a.split()) for a in (sys.argv[11], sys.argv[12])]
r["commit_ms_mean"] = round(1000 * (s1 - s0) / (n1 - n0), 1) if n1 > n0 else None
print(json.dumps(r))' "$mode" "$r" "$p0" "$c0" "$(pushed)" "$(server_cpu)" "$t0" "$(date +%s)" "$w0" "$(server_writes)" \
    "$k0" "$(commits)" >>"$RESULTS"
}

# BENCH_RUNS repetitions, alternating which mode goes first (builtin, croupier, croupier, builtin, ...) so
# that a change in the machine's load during the run hits both modes alike. Medians are reported.
RUNS="${BENCH_RUNS:-1}"
for i in $(seq 1 "$RUNS"); do
  if [ $((i % 2)) -eq 1 ]; then measure builtin; measure croupier; else measure croupier; measure builtin; fi
done

# Share of the pushed block data the server kept as received HTTP/2 frame slices rather than copying it
# (all jobs of the run; docs/PERFORMANCE.md round 10): whether the plugin's frames are large enough.
SLICED_SHARE="$("$VENV/bin/python" -c "import urllib.request
kept = {'frame_slice': 0.0, 'copy': 0.0}
for l in urllib.request.urlopen('http://127.0.0.1:$ADMIN/metrics').read().decode().splitlines():
    for k in kept:
        if l.startswith('croupier_push_received_data_bytes_total{kept=\"%s\"}' % k):
            kept[k] = float(l.rsplit(' ', 1)[1])
total = sum(kept.values())
print(round(kept['frame_slice'] / total, 3) if total else 'null')")"

"$VENV/bin/python" - "$RESULTS" "$BYTES" "$SLICED_SHARE" <<'PY'
import json, statistics, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
b = [r for r in rs if r["mode"] == "builtin"]
c = [r for r in rs if r["mode"] == "croupier"]
for r in rs:
    name = "%-8s" % r["mode"]
    print(name + ":", {k: v for k, v in r.items() if k not in ("stages", "mode", "pushed", "server_cpu", "server_writes", "commit_ms_mean", "t0", "t1")},
          file=sys.stderr)
    for st in r.get("stages", []):
        print("    stage", st, file=sys.stderr)
    print("    process from %d to %d" % (r["t0"], r["t1"]), file=sys.stderr)
    if r["mode"] == "croupier":
        print("    per job: pushed to the server", r["pushed"], "bytes; server CPU", r["server_cpu"], "s;",
              r["server_writes"], "write system calls; commits took", r["commit_ms_mean"], "ms on average",
              file=sys.stderr)
med = lambda xs: round(statistics.median(xs), 3)
print("BENCH " + json.dumps({
    "name": "spark_repartition_%dMiB" % (int(sys.argv[2]) >> 20),
    "croupier_seconds": med([r["seconds"] for r in c]),
    "builtin_seconds": med([r["seconds"] for r in b]),
    "croupier_over_builtin": med([x["seconds"] / y["seconds"] for x, y in zip(c, b)]),
    "warmup_jobs": len(c[-1].get("warmup_seconds", [])),
    "croupier_warmup_seconds": med([r["warmup_seconds"][0] for r in c]) if c[-1].get("warmup_seconds") else None,
    "builtin_warmup_seconds": med([r["warmup_seconds"][0] for r in b]) if b[-1].get("warmup_seconds") else None,
    "runs": len(c),
    "croupier_samples": [r["seconds"] for r in c],
    "builtin_samples": [r["seconds"] for r in b],
    "shuffle_bytes": c[-1]["shuffle_write_bytes"],
    "builtin_shuffle_bytes": b[-1]["shuffle_write_bytes"],
    "croupier_pushed_bytes": c[-1]["pushed"],
    "croupier_server_cpu_seconds": med([r["server_cpu"] for r in c]),
    "rows": c[-1]["rows"],
    "croupier_push_frame_slice_share": json.loads(sys.argv[3]),
}))
PY
