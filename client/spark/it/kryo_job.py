"""Runs a few shuffles in a separate SparkSession that uses Kryo; prints one RESULT line of JSON.

Started by test_kryo.py in its own Python process (one SparkContext per process)."""
import collections
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import base_builder, counters  # noqa: E402


def main():
    spark = base_builder(
        master="local-cluster[2,1,1024]",
        app_name="croupier-it-kryo",
        extra={"spark.serializer": "org.apache.spark.serializer.KryoSerializer"},
        explicit_io=False,
    ).getOrCreate()
    sc = spark.sparkContext
    sc.setLogLevel("WARN")
    out = {
        "serializer": sc.getConf().get("spark.serializer"),
        "app_id": sc.applicationId,
        # set by the plugin itself on the driver, since this session does not set it
        "io_plugin": sc.getConf().get("spark.shuffle.sort.io.plugin.class", None),
        "reliable_storage": sc._jsc.sc().shuffleDriverComponents().supportsReliableStorage(),
    }
    before = counters()

    data = [(i % 777, i) for i in range(100_000)]
    exp = collections.defaultdict(int)
    for k, v in data:
        exp[k] += v
    got = dict(sc.parallelize(data, 4).reduceByKey(lambda a, b: a + b, 6).collect())
    out["reduce_ok"] = got == dict(exp)

    with tempfile.TemporaryDirectory() as d:
        lines = [f"k{(i * 31) % 997}" for i in range(30_000)]
        path = os.path.join(d, "in.txt")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        jrdd = sc._jsc.textFile(path, 3)
        out["count_by_value_ok"] = dict(jrdd.countByValue().items()) == dict(collections.Counter(lines))
        sorted_dir = os.path.join(d, "sorted")
        jrdd.zipWithIndex().sortByKey(True, 4).saveAsTextFile(sorted_dir)
        keys = []
        for part in sorted(os.listdir(sorted_dir)):
            if part.startswith("part-"):
                with open(os.path.join(sorted_dir, part)) as f:
                    keys.extend(line[1:].split(",")[0] for line in f if line.strip())
        out["sort_ok"] = keys == sorted(lines)

    df = spark.range(0, 100_000, 1, 4).selectExpr("id % 100 AS k", "id AS v").groupBy("k").count()
    out["sql_ok"] = sorted((r["k"], r["count"]) for r in df.collect()) == [(k, 1000) for k in range(100)]

    after = counters()
    out["pushed"] = [a[0] - b[0] for a, b in zip(after, before)]
    out["fetched"] = [a[1] - b[1] for a, b in zip(after, before)]
    spark.stop()
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
