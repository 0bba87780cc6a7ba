#!/usr/bin/env bash
# Runs the Spark integration tests: real PySpark (local-cluster, executors in their own JVMs) against two
# real `croupier serve` processes. Exit code = pytest's.
#
#   client/spark/it/run.sh [pytest args...]
#
# Env: PYSPARK_VERSION (default 4.3.0; the venv is per version), CROUPIER_BIN (default
# <repo>/target/release/croupier, built with cargo if missing), CROUPIER_SPARK_JAR (default: the built jar).
set -uo pipefail

IT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SPARK_DIR="$(dirname "$IT_DIR")"
REPO="$(cd "$SPARK_DIR/../.." && pwd)"
PYSPARK_VERSION="${PYSPARK_VERSION:-4.3.0}"
if [ "$PYSPARK_VERSION" = "4.3.0" ]; then
  VENV="$SPARK_DIR/target/venv"
else
  VENV="$SPARK_DIR/target/venv-$PYSPARK_VERSION"
fi

log() { echo "[it/run.sh] $*" >&2; }

# 1. Python venv with pyspark + pytest.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  python3 -m venv "$VENV" || exit 2
fi
if ! "$VENV/bin/python" -c "import pyspark, pytest, sys; sys.exit(0 if pyspark.__version__ == '$PYSPARK_VERSION' else 1)" 2>/dev/null; then
  log "installing pyspark==$PYSPARK_VERSION pytest"
  "$VENV/bin/pip" install -q "pyspark==$PYSPARK_VERSION" pytest || exit 2
fi

# 2. The plugin jar.
JAR="${CROUPIER_SPARK_JAR:-}"
if [ -z "$JAR" ]; then
  JAR="$(ls "$SPARK_DIR"/target/croupier-spark-*.jar 2>/dev/null | grep -v -e '/original-' -e '-sources.jar' | head -1)"
  if [ -z "$JAR" ]; then
    log "building the plugin jar"
    mvn -B -q -f "$SPARK_DIR/pom.xml" package -DskipTests || exit 2
    JAR="$(ls "$SPARK_DIR"/target/croupier-spark-*.jar | grep -v -e '/original-' -e '-sources.jar' | head -1)"
  fi
fi
log "jar: $JAR"

# 3. The server binary.
BIN="${CROUPIER_BIN:-$REPO/target/release/croupier}"
if [ ! -x "$BIN" ]; then
  log "building $BIN"
  (cd "$REPO" && cargo build --release -p croupier-server) || exit 2
fi
log "server: $BIN"

# 4. Two servers on free loopback ports, each with its own temp data dir.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/croupier-spark-it.XXXXXX")"
# A short app lease, so that a test can check that the driver's heartbeat keeps the app alive.
LEASE_MS="${CROUPIER_LEASE_MS:-6000}"
free_ports() {
  "$VENV/bin/python" - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()
PY
}
read -r -a PORTS <<<"$(free_ports 4)"
SERVERS=""
ADMINS=""
for i in 0 1; do
  grpc="${PORTS[$((2 * i))]}"
  admin="${PORTS[$((2 * i + 1))]}"
  mkdir -p "$WORK/data$i"
  echo "$BIN serve --listen 127.0.0.1:$grpc --admin-listen 127.0.0.1:$admin --data-dir $WORK/data$i --memory-budget 512MiB --app-lease-timeout-ms $LEASE_MS" >"$WORK/cmd$i"
  $(cat "$WORK/cmd$i") >"$WORK/server$i.log" 2>&1 &
  echo $! >"$WORK/pid$i"
  disown $! 2>/dev/null || true
  SERVERS="${SERVERS:+$SERVERS,}127.0.0.1:$grpc"
  ADMINS="${ADMINS:+$ADMINS,}127.0.0.1:$admin"
done

stop_servers() {
  for i in 0 1; do
    if [ -f "$WORK/pid$i" ]; then
      pid="$(cat "$WORK/pid$i")"
      kill "$pid" 2>/dev/null
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null
    fi
  done
  # Keep the servers' logs and data for a look after a failure; drop them after a clean run.
  if [ "${RC:-1}" = "0" ]; then rm -rf "$WORK"; else log "kept $WORK (server logs and data)"; fi
}
trap stop_servers EXIT

# Wait until both are healthy.
for i in 0 1; do
  admin="$(echo "$ADMINS" | cut -d, -f$((i + 1)))"
  ok=""
  for _ in $(seq 1 100); do
    if "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('http://$admin/healthz', timeout=1)" 2>/dev/null; then
      ok=1; break
    fi
    sleep 0.2
  done
  if [ -z "$ok" ]; then
    log "server $i did not become healthy; its log:"
    cat "$WORK/server$i.log" >&2
    exit 2
  fi
done
log "servers: $SERVERS (admin $ADMINS), work dir $WORK"

export CROUPIER_BIN="$BIN" CROUPIER_SPARK_JAR="$JAR" CROUPIER_SERVERS="$SERVERS" CROUPIER_ADMINS="$ADMINS" CROUPIER_IT_WORK="$WORK"
export CROUPIER_LEASE_MS="$LEASE_MS"
export PYSPARK_PYTHON="$VENV/bin/python" PYSPARK_DRIVER_PYTHON="$VENV/bin/python"
cd "$IT_DIR"
"$VENV/bin/python" -m pytest "$IT_DIR" -v -p no:cacheprovider "$@"
RC=$?
if [ $RC -ne 0 ]; then
  for i in 0 1; do log "last lines of server $i log:"; tail -20 "$WORK/server$i.log" >&2; done
fi
exit $RC
