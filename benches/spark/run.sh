#!/usr/bin/env bash
# Spark shuffle benchmark: the same shuffle-heavy job (hash repartition of BENCH_BYTES of nearly
# incompressible rows, default 2.5 GiB of rows, about 2.15 GiB shuffled after lz4) with Croupier (one local `croupier serve`) and with Spark's built-in
# sort shuffle, in the same run on the same machine. Not a test. Prints one line:
#   BENCH {"name": ..., "croupier_seconds": ..., "builtin_seconds": ..., "shuffle_bytes": ...}
#
# Env: BENCH_BYTES (default 2684354560), BENCH_REDUCERS (64), BENCH_MASTER (local-cluster[2,1,2048]),
#      CROUPIER_BIN (default target/release/croupier), PYSPARK_VERSION (4.3.0).
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
JAR="$(ls "$SPARK_DIR"/target/croupier-spark-*.jar 2>/dev/null | grep -v -e '/original-' -e '-sources.jar' | head -1)"
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
"$BIN" serve --listen "127.0.0.1:$GRPC" --admin-listen "127.0.0.1:$ADMIN" --data-dir "$WORK/data" \
  --memory-budget 1GiB >"$WORK/server.log" 2>&1 &
PID=$!
disown $PID 2>/dev/null || true
cleanup() { kill "$PID" 2>/dev/null; sleep 1; kill -9 "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$ADMIN/healthz', timeout=1)" 2>/dev/null && break
  sleep 0.2
done

pushed() {
  "$VENV/bin/python" -c "import json, urllib.request; print(json.load(urllib.request.urlopen('http://127.0.0.1:$ADMIN/status'))['push_bytes_total'])"
}

run() {
  local mode="$1"
  log "running $mode ($BYTES bytes, $MASTER)"
  PYSPARK_PYTHON="$VENV/bin/python" "$VENV/bin/python" "$HERE/bench.py" --mode "$mode" --bytes "$BYTES" \
    --jar "$JAR" --servers "127.0.0.1:$GRPC" --master "$MASTER" --reducers "$REDUCERS" 2>"$WORK/$mode.err" \
    | grep '^RESULT ' | tail -1 | cut -c8-
}

BUILTIN="$(run builtin)"
[ -n "$BUILTIN" ] || { log "builtin run failed:"; tail -30 "$WORK/builtin.err" >&2; exit 1; }
P0="$(pushed)"
CROUPIER="$(run croupier)"
[ -n "$CROUPIER" ] || { log "croupier run failed:"; tail -30 "$WORK/croupier.err" >&2; exit 1; }
P1="$(pushed)"

"$VENV/bin/python" - "$BUILTIN" "$CROUPIER" "$P0" "$P1" "$BYTES" <<'PY'
import json, sys
b, c = json.loads(sys.argv[1]), json.loads(sys.argv[2])
pushed = int(sys.argv[4]) - int(sys.argv[3])
print("builtin :", b, file=sys.stderr)
print("croupier:", c, "pushed to server:", pushed, file=sys.stderr)
print("BENCH " + json.dumps({
    "name": "spark_repartition_%dMiB" % (int(sys.argv[5]) >> 20),
    "croupier_seconds": c["seconds"],
    "builtin_seconds": b["seconds"],
    "shuffle_bytes": c["shuffle_write_bytes"],
    "builtin_shuffle_bytes": b["shuffle_write_bytes"],
    "croupier_pushed_bytes": pushed,
    "rows": c["rows"],
}))
PY
