"""RDD shuffles through Croupier, each compared with a plain-Python computation of the same result."""
import collections
import hashlib
import os
import random

from conftest import FAULT_DIR, ThroughCroupier, WORK


def test_reduce_by_key(sc):
    data = [(i % 1000, i) for i in range(200_000)]
    expected = collections.defaultdict(int)
    for k, v in data:
        expected[k] += v
    with ThroughCroupier():
        got = dict(sc.parallelize(data, 6).reduceByKey(lambda a, b: a + b, 8).collect())
    assert got == dict(expected)


def test_group_by_key(sc):
    rnd = random.Random(7)
    data = [(rnd.randrange(500), rnd.randrange(10**6)) for _ in range(100_000)]
    expected = collections.defaultdict(list)
    for k, v in data:
        expected[k].append(v)
    with ThroughCroupier():
        got = sc.parallelize(data, 5).groupByKey(7).mapValues(sorted).collect()
    assert dict(got) == {k: sorted(v) for k, v in expected.items()}


def test_sort_by_key(sc):
    rnd = random.Random(3)
    data = [(rnd.random(), i) for i in range(50_000)]
    with ThroughCroupier():
        got = sc.parallelize(data, 4).sortByKey(True, 6).collect()
    assert got == sorted(data)


def test_join(sc):
    left = [(i % 3000, f"l{i}") for i in range(30_000)]
    right = [(i % 5000, f"r{i}") for i in range(0, 20_000, 3)]
    rmap = collections.defaultdict(list)
    for k, v in right:
        rmap[k].append(v)
    expected = sorted((k, (lv, rv)) for k, lv in left for rv in rmap.get(k, []))
    with ThroughCroupier():
        got = sc.parallelize(left, 4).join(sc.parallelize(right, 3), 9).collect()
    assert sorted(got) == expected


def test_empty_partitions(sc):
    # 5 distinct keys over 64 partitions: almost every reduce partition is empty, and so are most
    # (map, partition) blocks.
    data = [(i % 5, 1) for i in range(10_000)]
    with ThroughCroupier(all_servers=False):
        got = dict(sc.parallelize(data, 8).reduceByKey(lambda a, b: a + b, 64).collect())
    assert got == {k: 2000 for k in range(5)}
    # A shuffle of nothing at all, and one whose maps are all empty.
    assert sc.parallelize([], 3).reduceByKey(lambda a, b: a + b, 5).collect() == []
    assert sc.parallelize(range(100), 4).filter(lambda x: x < 0).map(lambda x: (x, x)).groupByKey(6).collect() == []
    # A shuffle with no map task at all (an RDD without partitions).
    assert sc.emptyRDD().map(lambda x: (x, 1)).reduceByKey(lambda a, b: a + b, 3).collect() == []


def test_values_of_several_mib(sc):
    def make(i):
        r = random.Random(i)
        size = (3 + i % 4) * 1024 * 1024 + r.randrange(1000)  # 3-6 MiB, incompressible
        return r.randbytes(size)

    n = 10
    expected = {i % 3: [] for i in range(n)}
    for i in range(n):
        expected[i % 3].append(hashlib.sha256(make(i)).hexdigest())
    with ThroughCroupier(all_servers=False):
        got = (
            sc.parallelize(range(n), 5)
            .map(lambda i: (i % 3, make(i)))
            .groupByKey(3)
            .mapValues(lambda vs: sorted(hashlib.sha256(v).hexdigest() for v in vs))
            .collect()
        )
    assert dict(got) == {k: sorted(v) for k, v in expected.items()}


def _retry_job(sc, marker_dir, fail):
    def gen(index, it):
        from pyspark import TaskContext

        ctx = TaskContext.get()
        items = list(it)
        # Partition 0 yields 16 MiB of incompressible values; its first attempt dies after 12 MiB, which
        # were pushed while the task ran.
        for n, x in enumerate(items):
            yield (x % 4, (x, os.urandom(16384) if index == 0 else b""))
            if fail and index == 0 and ctx.attemptNumber() == 0 and n == len(items) * 3 // 4:
                open(os.path.join(marker_dir, f"failed-{ctx.taskAttemptId()}"), "w").close()
                raise RuntimeError("injected failure after pushing part of the map output")

    def sums(it):
        d = collections.defaultdict(int)
        for k, v in it:
            d[k] += v[0]
        return list(d.items())

    # partitionBy (no combining in Python) so the map output streams to the JVM writer as it is produced.
    return dict(sc.parallelize(range(4_000), 4).mapPartitionsWithIndex(gen).partitionBy(4).mapPartitions(sums).collect())


def test_task_failing_after_partial_push(sc, tmp_path):
    expected = collections.defaultdict(int)
    for x in range(4_000):
        expected[x % 4] += x
    with ThroughCroupier(all_servers=False) as clean:
        assert _retry_job(sc, str(tmp_path), fail=False) == dict(expected)
    with ThroughCroupier(all_servers=False) as failed:
        assert _retry_job(sc, str(tmp_path), fail=True) == dict(expected)
    assert any(f.startswith("failed-") for f in os.listdir(tmp_path)), "the injected failure did not happen"
    # The failed attempt pushed data before dying: the server received more than in the clean run, yet the
    # result holds each record exactly once (the aborted attempt was never committed, so never served).
    assert sum(failed.pushed) > sum(clean.pushed) + (1 << 20), (failed.pushed, clean.pushed)


def test_map_dying_between_its_commits_is_finished_by_the_retry(sc):
    """A map attempt commits on its leader server, then dies before committing on the other server (the
    plugin's test fault hook). Its retry loses on the leader, commits the winner on the other server with
    the counts the leader recorded, and reports the winner: the reducers read the winner's data from both
    servers. Without that step the other server never has a commit for the map and the job fails."""
    assert FAULT_DIR, "run through it/run.sh (CROUPIER_IT_WORK)"
    fault = os.path.join(FAULT_DIR, "die-after-leader-commit")
    open(fault, "w").close()
    n = 40_000
    expected = collections.defaultdict(int)
    for x in range(n):
        expected[x % 97] += x
    try:
        with ThroughCroupier(all_servers=True):
            got = dict(sc.parallelize(range(n), 4).map(lambda x: (x % 97, x))
                       .reduceByKey(lambda a, b: a + b, 16).collect())
        assert not os.path.exists(fault), "no map attempt took the injected fault"
    finally:
        if os.path.exists(fault):
            os.remove(fault)
    assert got == dict(expected)


def test_jvm_aggregator_and_key_ordering(sc, tmp_path):
    """Shuffles built on the JVM side (Aggregator with map-side combine, combineValuesByKey, keyOrdering)."""
    lines = [f"w{(i * 7919) % 1313:05d}" for i in range(40_000)]
    src = tmp_path / "words.txt"
    src.write_text("\n".join(lines) + "\n")
    jsc = sc._jsc
    with ThroughCroupier(all_servers=False):
        jrdd = jsc.textFile(str(src), 4)
        # countByValue = map to (v, null) + reduceByKey: Aggregator with map-side combine
        counts = {k: v for k, v in jrdd.countByValue().items()}
        # distinct: reduceByKey too
        ndistinct = jrdd.distinct(5).count()
        # sortByKey on the JVM: key ordering applied by the reader's ExternalSorter
        pairs = jrdd.zipWithIndex()
        out = str(tmp_path / "sorted")
        pairs.sortByKey(True, 3).saveAsTextFile(out)
        # groupByKey on the JVM: Aggregator without map-side combine
        grouped = str(tmp_path / "grouped")
        pairs.groupByKey(4).saveAsTextFile(grouped)
    assert counts == dict(collections.Counter(lines))
    assert ndistinct == len(set(lines))
    sorted_keys = []
    for part in sorted(os.listdir(out)):
        if part.startswith("part-"):
            with open(os.path.join(out, part)) as f:
                sorted_keys.extend(line[1:].split(",")[0] for line in f if line.strip())
    assert sorted_keys == sorted(lines)
    groups = {}
    for part in os.listdir(grouped):
        if part.startswith("part-"):
            with open(os.path.join(grouped, part)) as f:
                for line in f:
                    k, rest = line.strip()[1:-1].split(",", 1)
                    groups[k] = len(rest.split(","))
    assert groups == dict(collections.Counter(lines))
