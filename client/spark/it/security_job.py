"""Runs one half of the security scenario in its own SparkSession; prints one RESULT line of JSON.

Started by test_security.py in its own Python process, against the two secured servers that test starts
(token + TLS), given in CROUPIER_SECURE_SERVERS / CROUPIER_SECURE_ADMINS with CROUPIER_SECURE_TOKEN_FILE and
CROUPIER_SECURE_CA:

- `security_job.py authorized`: local-cluster session with spark.croupier.auth.tokenFile and
  spark.croupier.tls.caFile, a reduceByKey job (executors in their own JVMs push and fetch with the token and
  the per-server app secrets from the handle);
- `security_job.py no-token`: local session with the CA but without the token: the job must fail.

One process each: SparkSubmit leaves the first session's spark.* settings in the driver JVM's system
properties, so a second session in the same JVM would still see the token file.
"""
import collections
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import base_builder  # noqa: E402
from test_security import secure_counters  # noqa: E402

SERVERS = os.environ["CROUPIER_SECURE_SERVERS"]
TOKEN_FILE = os.environ["CROUPIER_SECURE_TOKEN_FILE"]
CA = os.environ["CROUPIER_SECURE_CA"]


def expected(n, keys):
    exp = collections.defaultdict(int)
    for i in range(n):
        exp[i % keys] += i
    return dict(exp)


def authorized():
    out = {}
    spark = base_builder(
        master="local-cluster[2,1,1024]",
        app_name="croupier-it-security",
        extra={
            "spark.croupier.servers": SERVERS,
            "spark.croupier.auth.tokenFile": TOKEN_FILE,
            "spark.croupier.tls.caFile": CA,
        },
    ).getOrCreate()
    sc = spark.sparkContext
    sc.setLogLevel("WARN")
    out["app_id"] = sc.applicationId
    before = secure_counters()
    n = 100_000
    got = dict(sc.parallelize(range(n), 4).map(lambda i: (i % 500, i)).reduceByKey(lambda a, b: a + b, 8).collect())
    out["reduce_ok"] = got == expected(n, 500)
    after = secure_counters()
    out["pushed"] = [a[0] - b[0] for a, b in zip(after, before)]
    out["fetched"] = [a[1] - b[1] for a, b in zip(after, before)]
    spark.stop()
    return out


def no_token():
    out = {}
    spark = base_builder(
        master="local[2]",
        app_name="croupier-it-security-no-token",
        extra={"spark.croupier.servers": SERVERS, "spark.croupier.tls.caFile": CA},
    ).getOrCreate()
    sc = spark.sparkContext
    sc.setLogLevel("ERROR")
    try:
        sc.parallelize(range(1000), 2).map(lambda i: (i % 7, 1)).reduceByKey(lambda a, b: a + b, 3).collect()
        out["no_token_error"] = None
    except Exception as e:  # noqa: BLE001 - py4j wraps the Spark exception
        out["no_token_error"] = str(e)[:4000] or traceback.format_exc()[-4000:]
    spark.stop()
    return out


if __name__ == "__main__":
    result = {"authorized": authorized, "no-token": no_token}[sys.argv[1]]()
    print("RESULT " + json.dumps(result), flush=True)
