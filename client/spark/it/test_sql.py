"""DataFrame / SQL shuffles (UnsafeRow serializer) through Croupier, with AQE on."""
import collections
import contextlib

from conftest import ThroughCroupier


@contextlib.contextmanager
def sql_conf(spark, **kv):
    old = {k: spark.conf.get(k, None) for k in kv}
    for k, v in kv.items():
        spark.conf.set(k, str(v))
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)


def final_plan(df):
    return df._jdf.queryExecution().executedPlan().toString()


def test_sql_aggregation_with_coalesced_partitions(spark):
    n = 300_000
    df = spark.range(0, n, 1, 6).selectExpr("id % 1000 AS k", "id AS v", "CAST(id % 7 AS STRING) AS s")
    agg = df.groupBy("k").agg({"v": "sum", "*": "count", "s": "max"}).withColumnRenamed("count(1)", "c")
    with ThroughCroupier():
        rows = agg.collect()
    expected = collections.defaultdict(lambda: [0, 0, ""])
    for i in range(n):
        e = expected[i % 1000]
        e[0] += i
        e[1] += 1
        e[2] = max(e[2], str(i % 7))
    got = {r["k"]: [r["sum(v)"], r["c"], r["max(s)"]] for r in rows}
    assert got == {k: v for k, v in expected.items()}
    plan = final_plan(agg)
    assert "AQEShuffleRead" in plan and "coalesced" in plan, plan


def test_sql_skew_join_and_window(spark):
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    nl = 120_000
    # key 0 holds half of the left rows: AQE splits its partition by map ranges (skew join).
    left_rows = [(0 if i % 2 == 0 else i % 500, i) for i in range(nl)]
    right_rows = [(k, f"name{k}") for k in range(500)] + [(k, f"alt{k}") for k in range(0, 500, 50)]
    with sql_conf(
        spark,
        **{
            "spark.sql.autoBroadcastJoinThreshold": -1,
            "spark.sql.adaptive.skewJoin.enabled": "true",
            "spark.sql.adaptive.skewJoin.skewedPartitionFactor": 2,
            "spark.sql.adaptive.skewJoin.skewedPartitionThresholdInBytes": "64k",
            "spark.sql.adaptive.advisoryPartitionSizeInBytes": "64k",
            "spark.sql.adaptive.coalescePartitions.minPartitionSize": "1k",
            "spark.sql.shuffle.partitions": 20,
        },
    ):
        left = spark.createDataFrame(left_rows, "k INT, v BIGINT").repartition(8)
        right = spark.createDataFrame(right_rows, "k INT, name STRING").repartition(3)
        joined = left.join(right, "k")
        w = Window.partitionBy("name").orderBy(F.col("v").desc())
        result = joined.select(
            "k", "v", "name",
            F.row_number().over(w).alias("rn"),
            F.sum("v").over(Window.partitionBy("name")).alias("total"),
        ).where("rn <= 3")
        with ThroughCroupier():
            rows = result.collect()
        plan = final_plan(result)
    assert "skew=true" in plan, plan

    rmap = collections.defaultdict(list)
    for k, name in right_rows:
        rmap[k].append(name)
    by_name = collections.defaultdict(list)
    for k, v in left_rows:
        for name in rmap[k]:
            by_name[name].append((k, v))
    expected = set()
    for name, kvs in by_name.items():
        total = sum(v for _, v in kvs)
        for rn, (k, v) in enumerate(sorted(kvs, key=lambda kv: -kv[1])[:3], start=1):
            expected.add((k, v, name, rn, total))
    assert {tuple(r) for r in rows} == expected


def test_sql_over_1000_partitions(spark):
    n = 200_000
    with sql_conf(
        spark,
        **{"spark.sql.shuffle.partitions": 2100, "spark.sql.adaptive.coalescePartitions.enabled": "false"},
    ):
        df = spark.range(0, n, 1, 4).selectExpr("id % 5000 AS k", "id AS v").groupBy("k").sum("v")
        with ThroughCroupier():
            rows = df.collect()
        assert df.rdd.getNumPartitions() == 2100
    expected = collections.defaultdict(int)
    for i in range(n):
        expected[i % 5000] += i
    assert {r["k"]: r["sum(v)"] for r in rows} == dict(expected)


def _distinct_rows_roundtrip(spark, partitions):
    """CroupierShuffleManager is a SortShuffleManager, so Spark SQL hands the writer its reused row buffers
    without copying them: both writer paths must keep every row intact (streaming: serialized at once;
    sorting, above push.bypassThreshold partitions: copied by the writer before the sorter keeps it)."""
    n = 60_000
    with sql_conf(
        spark,
        **{"spark.sql.shuffle.partitions": partitions, "spark.sql.adaptive.coalescePartitions.enabled": "false"},
    ):
        df = spark.range(0, n, 1, 3).selectExpr("id", "id * 7 AS v", "concat('row-', id) AS s").repartition(
            partitions, "id"
        )
        with ThroughCroupier():
            rows = df.collect()
    assert len(rows) == n
    assert {(r["id"], r["v"], r["s"]) for r in rows} == {(i, i * 7, "row-%d" % i) for i in range(n)}


def test_sql_repartition_streaming_path_rows_intact(spark):
    _distinct_rows_roundtrip(spark, 64)


def test_sql_repartition_sorting_path_rows_intact(spark):
    _distinct_rows_roundtrip(spark, 300)
