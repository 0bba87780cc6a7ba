"""One shuffle-heavy Spark job, run once per invocation with either Croupier or Spark's built-in shuffle.

Prints `RESULT {"seconds":..., "shuffle_write_bytes":..., "rows":...}`. Driven by run.sh."""
import argparse
import datetime
import json
import os
import time
import urllib.request

from pyspark.sql import SparkSession

ROW_BYTES = 124  # 14 longs/doubles in an UnsafeRow (8 null-bit bytes + 14 x 8) + 4 bytes of length prefix


def completed_stages(sc):
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/stages?status=complete"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def stage_summary(st):
    """Seconds of the stage's task metrics (summed over tasks): where the executors' time went."""
    ns = 1e-9
    ms = 1e-3
    out = {
        "stage": st.get("stageId"),
        "tasks": st.get("numCompleteTasks"),
        "wall_s": None,
        "run_s": round(st.get("executorRunTime", 0) * ms, 2),
        "cpu_s": round(st.get("executorCpuTime", 0) * ns, 2),
        "gc_s": round(st.get("jvmGcTime", 0) * ms, 2),
    }
    if st.get("submissionTime") and st.get("completionTime"):
        def parse(t):
            return datetime.datetime.strptime(t.replace("GMT", ""), "%Y-%m-%dT%H:%M:%S.%f")
        out["wall_s"] = round((parse(st["completionTime"]) - parse(st["submissionTime"])).total_seconds(), 2)
    if st.get("shuffleWriteBytes"):
        out["write_s"] = round(st.get("shuffleWriteTime", 0) * ns, 2)
    if st.get("shuffleReadBytes"):
        out["fetch_wait_s"] = round(st.get("shuffleFetchWaitTime", 0) * ms, 2)
    return out


def extra_conf(var):
    """`k=v;k=v` pairs from an environment variable (for profiling and tuning runs)."""
    pairs = []
    for kv in os.environ.get(var, "").split(";"):
        if kv.strip():
            k, v = kv.split("=", 1)
            pairs.append((k.strip(), v.strip()))
    return pairs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["croupier", "builtin"], required=True)
    ap.add_argument("--bytes", type=int, required=True)
    ap.add_argument("--jar")
    ap.add_argument("--servers")
    ap.add_argument("--master", default="local-cluster[2,1,2048]")
    ap.add_argument("--reducers", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=1, help="untimed jobs before the measured one")
    a = ap.parse_args()

    b = (
        SparkSession.builder.master(a.master)
        .appName(f"croupier-bench-{a.mode}")
        .config("spark.executor.memory", "1536m")
        .config("spark.driver.memory", "1g")
        .config("spark.ui.enabled", "true")
        .config("spark.ui.port", "0")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.sql.shuffle.partitions", str(a.reducers))
    )
    # BENCH_CONF applies to both modes (e.g. profiler options), BENCH_CROUPIER_CONF to Croupier only
    # (spark.croupier.* tunables). Neither is set by default.
    for k, v in extra_conf("BENCH_CONF"):
        b = b.config(k, v)
    if a.mode == "croupier":
        b = (
            b.config("spark.jars", a.jar)
            .config("spark.shuffle.manager", "io.croupier.spark.CroupierShuffleManager")
            .config("spark.croupier.servers", a.servers)
        )
        for k, v in extra_conf("BENCH_CROUPIER_CONF"):
            b = b.config(k, v)
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    sc = spark.sparkContext

    rows = max(1, a.bytes // ROW_BYTES)
    maps = max(4, rows // 1_000_000)

    def job():
        """A new query each time: a Dataset re-executed would reuse its shuffle and skip the map stage."""
        cols = ["id", "id % 1000003 AS k"] + [f"rand({i}) AS r{i}" for i in range(12)]
        df = spark.range(0, rows, 1, maps).selectExpr(*cols)
        # Hash-repartition every row (the shuffle measured), then aggregate each reduce partition.
        # Every column is used after the shuffle, so column pruning cannot shrink what is shuffled.
        total = " + ".join(f"r{i}" for i in range(12))
        q = df.repartition(a.reducers, "k").selectExpr("count(*) AS c", f"sum({total}) AS s", "max(id) AS m")
        t0 = time.time()
        out = q.collect()[0]
        seconds = time.time() - t0
        assert out["c"] == rows, (out, rows)
        return seconds

    # Warm-up jobs in the same session (same executors), untimed: new executor JVMs spend most of a
    # first job compiling (the JIT threads burn more CPU than the tasks on a 2-core machine), which a
    # long-lived cluster pays once. Their times are reported as `warmup_seconds`.
    warmup = [round(job(), 3) for _ in range(a.warmup)]
    first_measured_stage = 1 + max([s["stageId"] for s in completed_stages(sc)], default=-1)
    seconds = job()
    stages = [s for s in completed_stages(sc) if s["stageId"] >= first_measured_stage]
    write_bytes = sum(s.get("shuffleWriteBytes", 0) for s in stages)
    spark.stop()
    print("RESULT " + json.dumps({"seconds": round(seconds, 3), "shuffle_write_bytes": write_bytes, "rows": rows,
                                  "maps": maps, "reducers": a.reducers, "warmup_seconds": warmup,
                                  "stages": [stage_summary(s) for s in sorted(stages, key=lambda s: s["stageId"])]}),
          flush=True)


if __name__ == "__main__":
    main()
