"""The same plugin with Kryo (which, unlike Java serialization, supports relocation of serialized objects)."""
import json
import os
import subprocess
import sys

from conftest import shuffles_of, wait_until


def test_kryo_serializer(spark):
    # `spark` only to keep the shared session alive; the Kryo session runs in its own process.
    here = os.path.dirname(os.path.abspath(__file__))
    p = subprocess.run(
        [sys.executable, os.path.join(here, "kryo_job.py")], capture_output=True, text=True, timeout=300
    )
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert p.returncode == 0 and lines, f"kryo job failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    r = json.loads(lines[-1][len("RESULT "):])
    assert r["serializer"] == "org.apache.spark.serializer.KryoSerializer"
    assert r["io_plugin"] == "io.croupier.spark.CroupierShuffleDataIO" and r["reliable_storage"] is True, r
    assert r["reduce_ok"] and r["count_by_value_ok"] and r["sort_ok"] and r["sql_ok"], r
    assert all(x > 0 for x in r["pushed"]) and all(x > 0 for x in r["fetched"]), r
    # The session stopped: the app was unregistered, none of its shuffles is left on the servers.
    assert wait_until(lambda: not shuffles_of(r["app_id"]), timeout=10), shuffles_of(r["app_id"])
