"""Auth token, per-app secrets and TLS, end to end.

Starts two `croupier serve` of its own with --auth-token-file and --tls-cert/--tls-key (a throwaway CA and a
certificate for 127.0.0.1 made with the openssl CLI). Each server derives its own secret for the app, so the
job only works if the plugin keeps one secret per server and the executors get them. The Spark side runs in
its own process (security_job.py: one SparkContext per process, and the shared session stays untouched).
"""
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
BIN = os.environ.get("CROUPIER_BIN") or os.path.join(REPO, "target", "release", "croupier")
TOKEN = "it-token-" + os.urandom(8).hex()


def _ssl_context():
    return ssl.create_default_context(cafile=os.environ["CROUPIER_SECURE_CA"])


def admin_get(i, path, timeout=5):
    admin = os.environ["CROUPIER_SECURE_ADMINS"].split(",")[i]
    with urllib.request.urlopen(f"https://{admin}{path}", timeout=timeout, context=_ssl_context()) as r:
        return r.read().decode()


def secure_counters():
    """(push_bytes_total, fetch_bytes_total) of every secured server."""
    out = []
    for i in range(len(os.environ["CROUPIER_SECURE_ADMINS"].split(","))):
        s = json.loads(admin_get(i, "/status"))
        out.append((s["push_bytes_total"], s["fetch_bytes_total"]))
    return out


def auth_failures(i):
    """{reason: count} of croupier_auth_failures_total on server i."""
    out = {}
    for line in admin_get(i, "/metrics").splitlines():
        if line.startswith("croupier_auth_failures_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def _openssl(cwd, *args):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_certs(d):
    """ca.pem, and server.pem / server.key for IP 127.0.0.1 signed by it."""
    _openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=croupier it CA")
    _openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1")
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    _openssl(d, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.pem")


def _free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def secure_servers():
    if not shutil.which("openssl"):
        pytest.skip("openssl CLI not found")
    if not os.access(BIN, os.X_OK):
        pytest.skip(f"croupier binary not found: {BIN}")
    d = tempfile.mkdtemp(prefix="croupier-it-security.")
    _make_certs(d)
    token_file = os.path.join(d, "token")
    with open(token_file, "w") as f:
        f.write(TOKEN + "\n")
    os.chmod(token_file, stat.S_IRUSR | stat.S_IWUSR)
    ports = _free_ports(4)
    procs, servers, admins = [], [], []
    for i in range(2):
        grpc, admin = ports[2 * i], ports[2 * i + 1]
        data = os.path.join(d, f"data{i}")  # its own key file here: each server issues its own app secrets
        os.makedirs(data)
        log = open(os.path.join(d, f"server{i}.log"), "w")
        procs.append(subprocess.Popen(
            [BIN, "serve", "--listen", f"127.0.0.1:{grpc}", "--admin-listen", f"127.0.0.1:{admin}",
             "--data-dir", data, "--memory-budget", "256MiB", "--auth-token-file", token_file,
             "--tls-cert", os.path.join(d, "server.pem"), "--tls-key", os.path.join(d, "server.key")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        servers.append(f"127.0.0.1:{grpc}")
        admins.append(f"127.0.0.1:{admin}")
    env = {
        "CROUPIER_SECURE_DIR": d,
        "CROUPIER_SECURE_SERVERS": ",".join(servers),
        "CROUPIER_SECURE_ADMINS": ",".join(admins),
        "CROUPIER_SECURE_TOKEN_FILE": token_file,
        "CROUPIER_SECURE_CA": os.path.join(d, "ca.pem"),
    }
    os.environ.update(env)
    try:
        for i in range(2):
            for _ in range(100):
                try:
                    admin_get(i, "/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            else:
                logs = open(os.path.join(d, f"server{i}.log")).read()
                raise AssertionError(f"secured server {i} did not become healthy:\n{logs[-3000:]}")
        yield env
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        for k in env:
            os.environ.pop(k, None)
        shutil.rmtree(d, ignore_errors=True)


def _server_logs():
    d = os.environ["CROUPIER_SECURE_DIR"]
    out = []
    for i in range(2):
        with open(os.path.join(d, f"server{i}.log"), errors="replace") as f:
            out.append(f"--- secured server {i} log (end):\n" + f.read()[-2000:])
    return "\n".join(out)


def _job(mode):
    """Runs security_job.py MODE in its own process; returns (its RESULT, its stdout + stderr)."""
    p = subprocess.run([sys.executable, os.path.join(HERE, "security_job.py"), mode], capture_output=True,
                       text=True, timeout=300, env=dict(os.environ))
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert p.returncode == 0 and lines, \
        f"{mode} job failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}\n{_server_logs()}"
    return json.loads(lines[-1][len("RESULT "):]), p.stdout + p.stderr


def test_security_token_tls_and_per_server_app_secrets(secure_servers):
    for i in range(2):
        sec = json.loads(admin_get(i, "/status"))["security"]
        assert sec == {"token_required": True, "app_secrets": True, "tls": True}, sec
    failures_before = [auth_failures(i) for i in range(2)]

    # 1. With the token file and the CA: the right result, and the data went through both secured servers.
    r, out = _job("authorized")
    assert r["reduce_ok"], r
    assert all(x > 0 for x in r["pushed"]) and all(x > 0 for x in r["fetched"]), r
    # The session's end unregistered the app (UnregisterApp with each server's secret was accepted).
    for i in range(2):
        apps = {s["app_id"] for s in json.loads(admin_get(i, "/status"))["shuffles"]}
        assert r["app_id"] not in apps, f"app still on secured server {i}: {apps}"

    # 2. Without the token: a clear failure.
    r, out2 = _job("no-token")
    out += out2
    err = r["no_token_error"]
    assert err is not None, "a job without the token must fail"
    assert "UNAUTHENTICATED" in err and "spark.croupier.auth.tokenFile" in err, err
    assert TOKEN not in err and TOKEN not in out, "the token leaked into the output"

    # No call of the authorized app was refused for its app secret (one secret per server, on every call).
    for i in range(2):
        after = auth_failures(i)
        for reason in ("app_secret_missing", "app_secret_wrong"):
            assert after.get(reason, 0) == failures_before[i].get(reason, 0), (i, failures_before[i], after)
    # ...and the job without the token was refused by the server for that reason.
    assert auth_failures(0).get("token_missing", 0) > failures_before[0].get("token_missing", 0)
