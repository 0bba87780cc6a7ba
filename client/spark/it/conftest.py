"""Shared fixtures of the Croupier Spark integration tests.

One SparkSession (local-cluster: 2 workers, 1 core, 1 GiB each, executors in their own JVMs) is shared by
every test, since starting one costs ~30 s. The servers are started by run.sh, which passes their addresses
in CROUPIER_SERVERS / CROUPIER_ADMINS.
"""
import json
import os
import time
import urllib.request

import pytest

SERVERS = os.environ.get("CROUPIER_SERVERS", "").split(",")
ADMINS = os.environ.get("CROUPIER_ADMINS", "").split(",")
JAR = os.environ.get("CROUPIER_SPARK_JAR", "")
WORK = os.environ.get("CROUPIER_IT_WORK", "")
LEASE_MS = int(os.environ.get("CROUPIER_LEASE_MS", "300000"))
# The plugin's test fault hook (spark.croupier.test.faultDir) watches this directory in the shared session.
FAULT_DIR = os.path.join(WORK, "faults") if WORK else ""


def server_status(i, timeout=5):
    with urllib.request.urlopen(f"http://{ADMINS[i]}/status", timeout=timeout) as r:
        return json.loads(r.read())


def counters():
    """(push_bytes_total, fetch_bytes_total) of every server."""
    out = []
    for i in range(len(ADMINS)):
        s = server_status(i)
        out.append((s["push_bytes_total"], s["fetch_bytes_total"]))
    return out


class ThroughCroupier:
    """Asserts that pushes and fetches grew on the servers while the block ran."""

    def __init__(self, all_servers=True, expect_push=True):
        self.all_servers = all_servers
        self.expect_push = expect_push
        self.pushed = self.fetched = None

    def __enter__(self):
        self.before = counters()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            return False
        after = counters()
        self.pushed = [a[0] - b[0] for a, b in zip(after, self.before)]
        self.fetched = [a[1] - b[1] for a, b in zip(after, self.before)]
        grew = [(p > 0 or not self.expect_push) and f > 0 for p, f in zip(self.pushed, self.fetched)]
        check = all(grew) if self.all_servers else any(grew)
        assert check, f"shuffle data did not go through Croupier: pushed {self.pushed}, fetched {self.fetched}"
        return False


def base_builder(master="local-cluster[2,1,1024]", app_name="croupier-it", extra=None, explicit_io=True):
    from pyspark.sql import SparkSession

    assert JAR and os.path.exists(JAR), f"plugin jar not found: {JAR!r} (run through it/run.sh)"
    b = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.jars", JAR)
        .config("spark.shuffle.manager", "io.croupier.spark.CroupierShuffleManager")
        .config("spark.croupier.servers", ",".join(SERVERS))
        .config("spark.executor.memory", "768m")
        .config("spark.driver.memory", "1g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.shuffle.partitions", "16")
        .config("spark.default.parallelism", "4")
        .config("spark.task.maxFailures", "4")
        .config("spark.python.worker.reuse", "true")
    )
    if explicit_io:
        # Map outputs survive executor loss (reliable storage declared by our ShuffleDataIO). The plugin sets
        # this itself when it is unset (the Kryo session checks that); here it is set explicitly.
        b = b.config("spark.shuffle.sort.io.plugin.class", "io.croupier.spark.CroupierShuffleDataIO")
    if FAULT_DIR:
        os.makedirs(FAULT_DIR, exist_ok=True)
        b = b.config("spark.croupier.test.faultDir", FAULT_DIR)
    for k, v in (extra or {}).items():
        b = b.config(k, v)
    return b


@pytest.fixture(scope="session")
def spark():
    t0 = time.time()
    session = base_builder().getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    print(f"SparkSession {session.version} started in {time.time() - t0:.1f}s")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def sc(spark):
    return spark.sparkContext


def shuffles_of(app_id):
    """{(server index, shuffle id)} of the app's shuffles registered on the servers."""
    out = set()
    for i in range(len(ADMINS)):
        for s in server_status(i)["shuffles"]:
            if s["app_id"] == app_id:
                out.add((i, s["shuffle_id"]))
    return out


def wait_until(cond, timeout=15.0, step=0.2):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()
