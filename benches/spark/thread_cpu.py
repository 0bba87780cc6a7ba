"""CPU seconds per thread group of the Spark executors and the croupier server, while a benchmark runs.

Samples /proc/PID/task/*/stat of every process whose command line names `CoarseGrainedExecutorBackend`
(executors) or `croupier serve` (the server) every 0.5 s. Threads are grouped by name with digits
masked (`C2 CompilerThread0` and `C1 CompilerThread1` are one group, `C# CompilerThread#`). Prints one
line per `--every` seconds with the busiest groups in that window, and the totals when stopped (SIGINT or
SIGTERM). Not a test; a profiling aid for benches/spark (see docs/PERFORMANCE.md, round 5):

    python3 benches/spark/thread_cpu.py > /tmp/threads.txt & P=$!
    BENCH_RUNS=1 benches/spark/run.sh; kill $P; cat /tmp/threads.txt
"""
import argparse
import collections
import os
import re
import signal
import time

HZ = os.sysconf("SC_CLK_TCK")


def processes():
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"CoarseGrainedExecutorBackend" in cmd:
            yield pid, "executor"
        elif b"croupier\x00serve" in cmd:
            yield pid, "server"


def sample(ticks):
    """Updates ticks[(pid, tid)] = (group, user + system ticks) for every live thread."""
    for pid, kind in processes():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            name = st[st.index("(") + 1:st.rindex(")")]
            fields = st[st.rindex(")") + 2:].split()
            ticks[(pid, tid)] = (kind + ":" + re.sub(r"\d+", "#", name), int(fields[11]) + int(fields[12]))


def by_group(now, base):
    out = collections.Counter()
    for key, (group, t) in now.items():
        out[group] += (t - base.get(key, (group, 0))[1]) / HZ
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=float, default=3.0, help="seconds per window line (0: totals only)")
    ap.add_argument("--top", type=int, default=7, help="groups per window line")
    a = ap.parse_args()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    now = {}
    sample(now)
    start, window = dict(now), dict(now)
    t0 = last = time.time()
    while not stop:
        time.sleep(0.5)
        sample(now)
        if a.every > 0 and time.time() - last >= a.every:
            last = time.time()
            busy = by_group(now, window).most_common(a.top)
            window = dict(now)
            print(f"t={last - t0:6.1f}s " + " ".join(f"{g}={s:.1f}" for g, s in busy if s >= 0.05), flush=True)
    total = by_group(now, start)
    for group, s in total.most_common():
        if s >= 0.05:
            print(f"{s:8.2f} {group}")
    for kind in ("executor", "server"):
        print(f"{sum(s for g, s in total.items() if g.startswith(kind + ':')):8.2f} {kind} total")


if __name__ == "__main__":
    main()
