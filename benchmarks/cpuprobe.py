"""`python -m benchmarks.cpuprobe`: where a replica's loop spends its CPU, per request.

Starts a local 3-replica cluster whose replicas load a probe at start-up
(benchmarks/cpuprobe_site/sitecustomize.py, through PYTHONPATH): it wraps
the loop's steps (poll, receive, `core.step`, the driver's `iterate` and its
parts, the state machine's apply) with `time.thread_time_ns`, the CPU time
of the loop's thread, the system time of its calls included. One client
then sends PUTs (or GETs) back to back through KVClient; after a warm-up the
tool reads the probes and /proc before and after a window and prints, per
replica, the loop thread's CPU per request and, per step, its CPU per
request, calls per request and CPU per call.

Why not a sampling profiler: py-spy samples wall-clock stacks, and on a
busy 2-core machine a thread waiting for a core looks as busy as one
running (benchmarks/README.md, "Session 18"). The probe counts CPU only,
at ~1 us per wrapped call. The steps nest (`iterate` holds `_finish`,
which holds `_apply`, ...): read a row as inclusive, not as a share.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SITE_DIR = Path(__file__).resolve().parent / "cpuprobe_site"
WARMUP_S = 1.5


def _thread_cpu_s(pid: int, tid: int) -> float | None:
    """User + system CPU seconds of one thread (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _read_probe(out_dir: Path, pid: int) -> dict[str, Any] | None:
    try:
        with open(out_dir / f"probe-{pid}.json") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def per_request(
    before: dict[str, Any], after: dict[str, Any], requests: int
) -> dict[str, dict[str, float]]:
    """{step: {"us_per_request", "calls_per_request", "us_per_call"}} between
    two probe snapshots, for the steps called in between."""
    out: dict[str, dict[str, float]] = {}
    for step, (ns, calls) in after["totals"].items():
        ns0, calls0 = before["totals"].get(step, (0, 0))
        d_ns, d_calls = ns - ns0, calls - calls0
        if d_calls <= 0 or requests <= 0:
            continue
        out[step] = {
            "us_per_request": round(d_ns / requests / 1e3, 1),
            "calls_per_request": round(d_calls / requests, 2),
            "us_per_call": round(d_ns / d_calls / 1e3, 1),
        }
    return out


def _wait_for_probes(out_dir: Path, pids: dict[int, int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_read_probe(out_dir, pid) is not None for pid in pids.values()):
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"the replicas' CPU probes did not report in {timeout:g}s "
        f"(is {SITE_DIR} importable as sitecustomize?)"
    )


def _snapshot(out_dir: Path, pids: dict[int, int]) -> tuple[dict, dict]:
    return (
        {rid: _read_probe(out_dir, pid) for rid, pid in pids.items()},
        {rid: _thread_cpu_s(pid, pid) for rid, pid in pids.items()},
    )


def _window_one(cluster, leader, pids, out_dir, op, seconds):  # type: ignore[no-untyped-def]
    """One KVClient thread, requests back to back; the probes read after the
    warm-up and after the window."""
    from client.client import KVClient

    done = [0]
    stop = threading.Event()
    failure: list[BaseException] = []

    def load() -> None:
        try:
            with KVClient([cluster.endpoints()[leader]], timeout=5) as kv:
                value = b"x" * 100
                while not stop.is_set():
                    key = b"cpuprobe-%d" % (done[0] % 1000)
                    if op == "get":
                        kv.get(key)
                    else:
                        kv.put(key, value)
                    done[0] += 1
        except BaseException as exc:  # reported by the caller
            failure.append(exc)

    client = threading.Thread(target=load, name="cpuprobe-client")
    client.start()
    try:
        time.sleep(WARMUP_S)
        first, cpu0 = _snapshot(out_dir, pids)
        n0 = done[0]
        time.sleep(seconds + 2 * 0.25)  # two probe periods: the last write is fresh
        last, cpu1 = _snapshot(out_dir, pids)
        requests = done[0] - n0
    finally:
        stop.set()
        client.join(10)
    if failure:
        raise RuntimeError(f"the client failed: {failure[0]}")
    return first, cpu0, last, cpu1, requests


def _window_many(cluster, leader, pids, out_dir, op, seconds, clients):  # type: ignore[no-untyped-def]
    """`clients` closed-loop clients in the benchmark's worker processes
    (benchmarks/driver.py, as `python -m benchmarks.run` drives them); the
    probes read when the workers' completed count passes the warm-up and
    again after the window."""
    from benchmarks.driver import RunSpec
    from benchmarks.harness import run_workload
    from benchmarks.workload import GET, PUT, WorkloadSpec

    spec = RunSpec(
        system="paxoskv",
        endpoints=cluster.endpoints(),
        leader=leader,
        clients=clients,
        workload=WorkloadSpec(mix={GET if op == "get" else PUT: 1.0}),
        duration=WARMUP_S + seconds + 1.0,
        warmup=0.0,
    )
    marks: dict[str, Any] = {}
    end_at = WARMUP_S + seconds + 2 * 0.25  # two probe periods: the last write is fresh

    def on_progress(elapsed: float, done: int) -> None:
        if "first" not in marks and elapsed >= WARMUP_S:
            marks["first"] = (*_snapshot(out_dir, pids), done)
        elif "first" in marks and "last" not in marks and elapsed >= end_at:
            marks["last"] = (*_snapshot(out_dir, pids), done)

    run_workload(spec, on_progress=on_progress)
    if "last" not in marks:
        raise RuntimeError("the load ended before the measured window did")
    first, cpu0, n0 = marks["first"]
    last, cpu1, n1 = marks["last"]
    return first, cpu0, last, cpu1, n1 - n0


def measure(op: str = "put", seconds: float = 4.0, clients: int = 1) -> dict[str, Any]:
    """Runs the cluster and the clients; returns {"op", "clients", "requests",
    "replicas": {id: {"role", "loop_cpu_us_per_request", "steps", "missing"}}}."""
    from benchmarks.cluster import KVCluster

    with tempfile.TemporaryDirectory(prefix="cpuprobe-") as tmp:
        out_dir = Path(tmp)
        saved = {k: os.environ.get(k) for k in ("KV_CPUPROBE_DIR", "PYTHONPATH")}
        os.environ["KV_CPUPROBE_DIR"] = str(out_dir)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(SITE_DIR), saved["PYTHONPATH"]])
        )
        try:
            with KVCluster(3) as cluster:
                leader = cluster.leader()
                pids = cluster.pids()
                _wait_for_probes(out_dir, pids)
                if clients > 1:
                    first, cpu0, last, cpu1, requests = _window_many(
                        cluster, leader, pids, out_dir, op, seconds, clients
                    )
                else:
                    first, cpu0, last, cpu1, requests = _window_one(
                        cluster, leader, pids, out_dir, op, seconds
                    )
        finally:
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old
    replicas: dict[int, Any] = {}
    for rid in sorted(pids):
        a, b = first[rid], last[rid]
        c0, c1 = cpu0[rid], cpu1[rid]
        replicas[rid] = {
            "role": "leader" if rid == leader else "follower",
            "loop_cpu_us_per_request": (
                round((c1 - c0) / requests * 1e6, 1)
                if c0 is not None and c1 is not None and requests
                else None
            ),
            "steps": per_request(a, b, requests) if a and b else {},
            "missing": (b or {}).get("missing", []),
        }
    return {"op": op, "clients": clients, "requests": requests, "replicas": replicas}


def render(result: dict[str, Any]) -> str:
    """The report: per replica, the loop's CPU per request and its steps."""
    lines = [
        f"{result['op'].upper()} x{result.get('clients', 1)}: {result['requests']:,} "
        "requests in the window "
        "(CPU of each replica's loop thread; steps nest, read them as inclusive)"
    ]
    for rid, rep in result["replicas"].items():
        loop = rep["loop_cpu_us_per_request"]
        total = "n/a" if loop is None else f"{loop:.0f} us per request"
        lines.append(f"replica {rid} ({rep['role']}): loop thread {total} (/proc)")
        lines.append(f"  {'step':<34} {'us/request':>10} {'calls/request':>14} {'us/call':>8}")
        steps = sorted(rep["steps"].items(), key=lambda kv: -kv[1]["us_per_request"])
        for step, s in steps:
            lines.append(
                f"  {step:<34} {s['us_per_request']:>10.1f} "
                f"{s['calls_per_request']:>14.2f} {s['us_per_call']:>8.1f}"
            )
        if rep["missing"]:
            lines.append(f"  not probed (not found): {', '.join(rep['missing'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.cpuprobe",
        description="Where each replica's loop spends its CPU per request: a local "
        "3-replica cluster, closed-loop clients sending requests back to back, the loop's "
        "steps timed with the thread's CPU clock (Linux).",
    )
    ap.add_argument("--op", choices=("put", "get"), default="put", help="request kind (put)")
    ap.add_argument("--seconds", type=float, default=4.0, help="measured window (default 4)")
    ap.add_argument(
        "--clients",
        type=int,
        default=1,
        help="closed-loop clients (default 1: one KVClient thread; more run in the "
        "benchmark's worker processes, as `python -m benchmarks.run` drives them)",
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    if args.seconds <= 0:
        ap.error("--seconds must be positive")
    if not 1 <= args.clients <= 1024:
        ap.error("--clients must be between 1 and 1024")
    if not sys.platform.startswith("linux"):
        print("cpuprobe: needs Linux (/proc and the thread CPU clock)", file=sys.stderr)
        return 2
    try:
        result = measure(args.op, args.seconds, args.clients)
    except (OSError, RuntimeError) as exc:
        print(f"cpuprobe: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1) if args.json else render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
