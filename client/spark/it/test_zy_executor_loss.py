"""An executor dies after its map tasks ran: the map outputs live on the Croupier servers, and the plugin's
ShuffleDataIO declares reliable storage, so Spark must not rerun those maps."""
import os
import signal
import time

from conftest import ThroughCroupier, wait_until


def executor_pids(app_id):
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if b"org.apache.spark.executor.CoarseGrainedExecutorBackend" in cmd and app_id.encode() in cmd:
            pids.append(int(d))
    return pids


def live_executors(sc):
    # getExecutorMemoryStatus includes the driver's block manager
    return sc._jsc.sc().getExecutorMemoryStatus().size() - 1


def test_map_outputs_survive_executor_loss(sc):
    assert wait_until(lambda: live_executors(sc) == 2, timeout=60)
    rdd = sc.parallelize(range(100_000), 8).map(lambda i: (i % 100, i)).reduceByKey(lambda a, b: a + b, 8)
    expected = sorted(rdd.collect())
    pids = executor_pids(sc.applicationId)
    assert len(pids) == 2, pids
    os.kill(pids[0], signal.SIGKILL)
    assert wait_until(lambda: live_executors(sc) < 2, timeout=60), "the driver did not notice the lost executor"
    # The maps that ran on the dead executor are not recomputed: nothing is pushed, only fetched.
    with ThroughCroupier(all_servers=False, expect_push=False) as t:
        assert sorted(rdd.collect()) == expected
    assert sum(t.pushed) == 0, f"map outputs were recomputed after the executor loss: pushed {t.pushed}"
    # The standalone worker starts a replacement executor; later tests want two again.
    assert wait_until(lambda: live_executors(sc) == 2, timeout=90), "no replacement executor"
    time.sleep(1)
