"""Runs one workload against a running cluster with N closed-loop clients.

`run_workload` spawns the worker processes (benchmarks/driver.py), waits
until every worker has set up, gives one common start time, shows a
progress bar while they run, then merges their histograms into one result:

    {"clients", "duration_s", "ops", "throughput", "latency_ms": {count,
     mean, min, p50, p90, p99, p99.9, max}, "by_op": {op: latency_ms},
     "errors", "retries", "redirects", "cas_failed", "not_found",
     "histogram": <overall histogram, for the CDF plot>, ...}

Throughput is measured operations / measurement window (ops mode: first
send to last measured completion). Latency percentiles come from the merged
HDR-style histogram (3 significant digits).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from benchmarks.driver import RunSpec, worker_loop
from benchmarks.histogram import Histogram


class Progress:
    """A one-line progress bar on stderr (plain carriage returns)."""

    def __init__(self, enabled: bool | None = None, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last_len = 0

    def show(self, label: str, frac: float, detail: str) -> None:
        if not self.enabled:
            return
        frac = min(1.0, max(0.0, frac))
        width = 24
        filled = int(frac * width)
        bar = "#" * filled + "-" * (width - filled)
        line = f"\r{label[:34]:<34} [{bar}] {frac:4.0%} {detail}"
        pad = max(0, self._last_len - len(line))
        self.stream.write(line + " " * pad)
        self.stream.flush()
        self._last_len = len(line)

    def note(self, text: str) -> None:
        """A line of its own (clears the bar first)."""
        if self.enabled:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self._last_len = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.enabled and self._last_len:
            self.stream.write("\r" + " " * self._last_len + "\r")
            self.stream.flush()
            self._last_len = 0


def default_workers(clients: int) -> int:
    """Worker processes for a run: one per core (at most 4), never more than
    clients. The clients share the 2 cores with the cluster; more processes
    only add context switches."""
    return max(1, min(clients, min(4, os.cpu_count() or 2)))


class WorkerPool:
    """Load-generator processes kept across runs (spawning one costs about a
    second of imports; a suite makes dozens of runs). Each worker takes one
    task at a time: set up, say ready, wait for the common start time, run,
    send back its stats. A run that fails closes the pool; the next run
    starts a fresh one."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.tasks: list[Any] = []
        self.counters: list[Any] = []
        self.ready_q: Any = None
        self.result_q: Any = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ensure(self, n: int) -> None:
        """At least n live workers (n <= size grows the pool if needed)."""
        if self.procs and any(not p.is_alive() for p in self.procs):
            self.close()
        if not self.procs:
            self.ready_q = self.ctx.Queue()
            self.result_q = self.ctx.Queue()
        while len(self.procs) < n:
            w = len(self.procs)
            task_q = self.ctx.Queue()
            counter = self.ctx.Value("q", 0, lock=False)
            p = self.ctx.Process(
                target=worker_loop,
                name=f"bench-worker-{w}",
                daemon=True,
                args=(w, task_q, self.ready_q, self.result_q, counter),
            )
            p.start()
            self.procs.append(p)
            self.tasks.append(task_q)
            self.counters.append(counter)

    def close(self) -> None:
        for q in self.tasks:
            with contextlib.suppress(Exception):
                q.put(None)
        for p in self.procs:
            p.join(timeout=3)
            if p.is_alive():
                p.kill()
                p.join()
        for q in [*self.tasks, self.ready_q, self.result_q]:
            if q is not None:
                q.close()
                q.cancel_join_thread()
        self.procs, self.tasks, self.counters = [], [], []
        self.ready_q = self.result_q = None


def run_workload(
    spec: RunSpec,
    *,
    workers: int | None = None,
    pool: WorkerPool | None = None,
    progress: Progress | None = None,
    label: str = "",
    on_tick: Callable[[float], None] | None = None,
    on_progress: Callable[[float, int], None] | None = None,
) -> dict[str, Any]:
    """Runs `spec`; returns the merged result (see the module doc).

    Without `pool` the worker processes are started for this run only.
    `on_tick(elapsed_seconds)` is called about every 20 ms from the start
    (the failover scenario kills the leader from there); `on_progress(
    elapsed_seconds, completed_ops)` likewise, with the operations the
    workers have completed so far (each worker reports every ~50 ms; the
    footprint scenario samples from there). An exception raised by either
    stops the run (the workers are closed) and propagates."""
    if spec.duration is None and spec.ops is None and spec.workload.distribution != "sequential":
        raise ValueError("a run needs a duration or an op count")
    nworkers = min(workers or (pool.size if pool else default_workers(spec.clients)), spec.clients)
    own_pool = pool is None
    if pool is None:
        pool = WorkerPool(nworkers)
    shares: list[list[int]] = [[] for _ in range(nworkers)]
    for i in range(spec.clients):
        shares[i % nworkers].append(spec.client_base + i)
    quotas: list[int | None] = [None] * nworkers
    if spec.duration is None and spec.ops is not None:
        for w in range(nworkers):
            quotas[w] = spec.ops * len(shares[w]) // spec.clients
        quotas[0] = (quotas[0] or 0) + spec.ops - sum(q or 0 for q in quotas)

    spec_dict = spec.to_dict()
    ok = False
    try:
        pool.ensure(nworkers)
        procs = pool.procs[:nworkers]
        counters = pool.counters[:nworkers]
        for w in range(nworkers):
            counters[w].value = 0
            pool.tasks[w].put((spec_dict, shares[w], quotas[w]))
        ready = 0
        deadline = time.monotonic() + 60
        while ready < nworkers:
            try:
                kind, wid, msg = pool.ready_q.get(timeout=0.5)
            except Exception:  # noqa: BLE001 - queue.Empty
                if time.monotonic() > deadline or any(not p.is_alive() for p in procs):
                    raise RuntimeError("a benchmark worker failed to start") from None
                continue
            if kind == "error":
                raise RuntimeError(f"benchmark worker {wid} failed:\n{msg}")
            ready += 1
        t_start = time.monotonic_ns() + 20_000_000
        for w in range(nworkers):
            pool.tasks[w].put(("go", t_start))

        total_s = (spec.warmup + spec.duration) if spec.duration is not None else None
        results: dict[int, dict[str, Any]] = {}
        pb = progress or Progress(enabled=False)
        while len(results) < nworkers:
            try:
                kind, wid, payload = pool.result_q.get(timeout=0.02)
                if kind == "error":
                    raise RuntimeError(f"benchmark worker {wid} failed:\n{payload}")
                results[wid] = payload
                continue
            except RuntimeError:
                raise
            except Exception:  # noqa: BLE001 - queue.Empty
                pass
            elapsed = (time.monotonic_ns() - t_start) / 1e9
            if on_tick is not None and elapsed >= 0:
                on_tick(elapsed)
            done_ops = sum(c.value for c in counters)
            if on_progress is not None and elapsed >= 0:
                on_progress(elapsed, done_ops)
            if total_s:
                frac = elapsed / total_s
                detail = f"{max(0.0, elapsed):5.1f}/{total_s:.1f}s {done_ops:>9,} ops"
            else:
                goal = spec.ops or spec.workload.keys
                frac = done_ops / max(1, goal)
                detail = f"{done_ops:>9,}/{goal:,} ops {max(0.0, elapsed):5.1f}s"
            if elapsed > 0:
                detail += f" {done_ops / elapsed:>8,.0f}/s"
            pb.show(label, frac, detail)
            if any(not p.is_alive() for p in procs) and pool.result_q.empty():
                raise RuntimeError("a benchmark worker died")
            limit = (total_s or 3600) + 4 * spec.attempt_timeout + 60
            if elapsed > limit:
                raise TimeoutError(f"the benchmark run did not finish within {limit:.0f}s")
        pb.done()
        ok = True
    finally:
        if own_pool or not ok:
            pool.close()
    return merge_results(spec, [results[w] for w in sorted(results)], t_start)


def merge_results(spec: RunSpec, parts: list[dict[str, Any]], t_start: int) -> dict[str, Any]:
    by_op: dict[str, Histogram] = {}
    errors: Counter = Counter()
    totals = Counter()
    timeline: list[int] = []
    counters: Counter = Counter()
    firsts, lasts = [], []
    for part in parts:
        for op, hd in part["hists"].items():
            by_op.setdefault(op, Histogram()).merge(Histogram.from_dict(hd))
        errors.update(part["errors"])
        for k in (
            "retries",
            "redirects",
            "cas_failed",
            "not_found",
            "abandoned",
            "completed_total",
        ):
            totals[k] += part[k]
        if part["first_ns"] is not None:
            firsts.append(part["first_ns"])
            lasts.append(part["last_ns"])
        timeline.extend(part["timeline"])
        counters.update(part.get("counters") or {})
        totals["cpu_ns"] += int(part.get("cpu_s", 0.0) * 1e9)
    overall = Histogram.merged(by_op.values())
    measure_from = t_start + int(spec.warmup * 1e9)
    if spec.duration is not None:
        window = spec.duration
    else:
        window = ((max(lasts) - measure_from) / 1e9) if lasts else 0.0
    result: dict[str, Any] = {
        "system": spec.system,
        "clients": spec.clients,
        "workload": spec.workload.to_dict(),
        "mix": spec.workload.label,
        "duration_s": round(window, 4),
        "warmup_s": spec.warmup,
        "ops": overall.total,
        "throughput": overall.total / window if window > 0 else 0.0,
        "latency_ms": overall.summary(),
        "by_op": {op: h.summary() for op, h in by_op.items() if h.total},
        "errors": dict(errors),
        "error_count": sum(errors.values()),
        **{k: totals[k] for k in ("retries", "redirects", "cas_failed", "not_found", "abandoned")},
        "client_cpu_s": round(totals["cpu_ns"] / 1e9, 3),
        "histogram": overall.to_dict(),
    }
    if counters:
        result["counters"] = dict(counters)
    if spec.timeline:
        result["timeline_ns"] = sorted(timeline)
        result["t_start_ns"] = t_start
    return result
