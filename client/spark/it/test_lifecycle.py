"""Shuffle registration, cleanup and the app lease on the servers."""
import time

from conftest import LEASE_MS, ThroughCroupier, shuffles_of, wait_until


def _new_shuffle(sc, before):
    now = shuffles_of(sc.applicationId)
    new = {sid for _, sid in now - before}
    assert new, "the shuffle was not registered on the servers"
    return max(new), now


def test_shuffle_registered_on_every_server_and_cleaned_up(sc):
    before = shuffles_of(sc.applicationId)
    rdd = sc.parallelize(range(10_000), 4).map(lambda i: (i % 10, 1)).reduceByKey(lambda a, b: a + b, 6)
    with ThroughCroupier():
        assert sorted(rdd.collect()) == [(k, 1000) for k in range(10)]
    sid, now = _new_shuffle(sc, before)
    assert {(0, sid), (1, sid)} <= now, "shuffle must be registered on both servers"
    # What Spark's ContextCleaner does when the shuffle dependency is garbage collected.
    sc._jsc.sc().cleaner().get().doCleanupShuffle(sid, True)
    assert wait_until(lambda: all(s != sid for _, s in shuffles_of(sc.applicationId))), \
        "UnregisterShuffle did not reach every server"


def test_heartbeat_keeps_the_app_alive(sc):
    before = shuffles_of(sc.applicationId)
    rdd = sc.parallelize(range(10_000), 4).map(lambda i: (i % 10, i)).reduceByKey(lambda a, b: a + b, 4)
    expected = sorted(rdd.collect())
    sid, _ = _new_shuffle(sc, before)
    # Nothing but the driver's heartbeat talks to the servers for longer than the lease (run.sh starts the
    # servers with a short one): the app and its shuffle must still be there...
    time.sleep(LEASE_MS / 1000 * 1.5)
    assert {(0, sid), (1, sid)} <= shuffles_of(sc.applicationId), "the app's lease expired despite heartbeats"
    # ...and the committed map outputs are read again without rerunning the maps.
    with ThroughCroupier(all_servers=False, expect_push=False) as t:
        assert sorted(rdd.collect()) == expected
    assert sum(t.pushed) == 0, f"map stage was recomputed: pushed {t.pushed}"
