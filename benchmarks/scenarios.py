"""The scenarios of a suite, each run the same way against either system.

- steady: preload the keys, then a sweep of closed-loop client counts with
  the main workload (PUT by default), linearizable GETs, and a mixed
  zipfian workload (put/get/cas);
- values: latency as the value grows (100 B .. 1 MiB), on the same cluster;
- store: latency as the store grows (a fresh cluster preloaded to each size
  in turn);
- catchup: a follower is killed, N writes go in, the follower restarts;
  the time until it has applied everything the leader had committed;
- failover: clients write while the leader is killed with SIGKILL; the
  client-observed unavailability (the longest stretch with no write
  completing, from the kill to the first write served again).

A fresh cluster for steady(+values), store, catchup and failover each.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.driver import RunSpec
from benchmarks.harness import Progress, WorkerPool, default_workers, run_workload
from benchmarks.profile import Profiler
from benchmarks.workload import PUT, WorkloadSpec

KiB = 1024
MiB = 1024 * 1024
SCENARIOS = ("steady", "values", "store", "catchup", "failover")


@dataclass
class SuiteConfig:
    """Everything a suite does; the CLI fills it from a preset and flags."""

    name: str = "standard"
    replicas: int = 3
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    workers: int | None = None
    seed: int = 1
    attempt_timeout: float = 1.0
    # steady state
    clients: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    duration: float = 3.0
    ops: int | None = None  # run each sweep point for an op count instead
    warmup: float = 0.5
    mix: dict[str, float] = field(default_factory=lambda: {PUT: 1.0})
    keys: int = 1000
    distribution: str = "uniform"
    theta: float = 0.99
    value_size: int = 100
    preload_clients: int = 64
    get_clients: list[int] = field(default_factory=lambda: [1, 64])
    mixed: dict[str, float] | None = field(
        default_factory=lambda: {"put": 50.0, "get": 45.0, "cas": 5.0}
    )
    mixed_clients: int = 64
    kvclient_duration: float = 2.0  # 1 client through client.client.KVClient (paxoskv)
    mixed_distribution: str = "zipfian"
    # value-size sweep
    value_sizes: list[int] = field(
        default_factory=lambda: [100, 1 * KiB, 10 * KiB, 100 * KiB, 1 * MiB]
    )
    value_clients: int = 1
    value_duration: float = 2.0
    value_keys: int = 100
    # store-size sweep
    store_sizes: list[int] = field(default_factory=lambda: [1000, 10_000, 50_000])
    store_clients: int = 16
    store_duration: float = 2.0
    # catch-up
    catchup_writes: int = 20_000
    catchup_clients: int = 64
    catchup_timeout: float = 120.0
    # failover
    failover_clients: int = 16
    failover_before: float = 1.5
    failover_after: float = 5.0
    failover_attempt_timeout: float = 0.25
    # py-spy on the leader during the largest sweep point (paxoskv only)
    profile: bool = False
    profile_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_cluster(system: str, replicas: int) -> Any:
    if system == "paxoskv":
        from benchmarks.cluster import KVCluster

        return KVCluster(replicas)
    from benchmarks.etcd import EtcdCluster

    return EtcdCluster(replicas)


class SystemRunner:
    """Runs the scenarios of a suite against one system."""

    def __init__(self, system: str, cfg: SuiteConfig, progress: Progress) -> None:
        self.system = system
        self.cfg = cfg
        self.progress = progress
        self.cluster_info: dict[str, Any] = {}
        self.pool: WorkerPool | None = None

    # -- helpers -----------------------------------------------------------
    def _workload(self, **kw: Any) -> WorkloadSpec:
        base = dict(
            mix=self.cfg.mix,
            keys=self.cfg.keys,
            distribution=self.cfg.distribution,
            theta=self.cfg.theta,
            value_size=self.cfg.value_size,
            seed=self.cfg.seed,
        )
        base.update(kw)
        return WorkloadSpec(**base)

    def _run(
        self, cluster: Any, label: str, clients: int, workload: WorkloadSpec, **kw: Any
    ) -> dict[str, Any]:
        on_tick = kw.pop("on_tick", None)
        leader = cluster.leader()
        pids = cluster.pids()
        cpu0 = {rid: proc_cpu_seconds(pid) for rid, pid in pids.items()}
        t0 = time.monotonic()
        spec = RunSpec(
            system=self.system,
            endpoints=cluster.endpoints(),
            leader=leader,
            clients=clients,
            workload=workload,
            duration=kw.pop("duration", self.cfg.duration),
            ops=kw.pop("ops", None),
            warmup=kw.pop("warmup", self.cfg.warmup),
            attempt_timeout=kw.pop("attempt_timeout", self.cfg.attempt_timeout),
            **kw,
        )
        result = run_workload(
            spec,
            workers=self.cfg.workers,
            pool=self.pool,
            progress=self.progress,
            label=f"{self.system}: {label}",
            on_tick=on_tick,
        )
        wall = time.monotonic() - t0
        result["label"] = label
        # CPU of the cluster's processes over the whole run (warm-up and
        # set-up included, so per-op figures are slight overestimates).
        used = {}
        for rid, pid in pids.items():
            after = proc_cpu_seconds(pid)
            if after is not None and cpu0.get(rid) is not None:
                used[rid] = round(after - cpu0[rid], 3)
        result["server_cpu_s"] = used
        result["server_cpu_share"] = round(sum(used.values()) / wall, 3) if wall > 0 else None
        result["client_cpu_share"] = round(result["client_cpu_s"] / wall, 3) if wall > 0 else None
        return result

    def preload(
        self, cluster: Any, start: int, end: int, value_size: int | None = None
    ) -> dict[str, Any]:
        """Puts keys [start, end) once each, with many concurrent clients."""
        n = end - start
        if n <= 0:
            return {"keys": 0, "seconds": 0.0, "rate": 0.0}
        clients = max(1, min(self.cfg.preload_clients, n))
        wl = self._workload(
            mix={PUT: 1.0},
            keys=n,
            key_offset=start,
            distribution="sequential",
            value_size=self.cfg.value_size if value_size is None else value_size,
        )
        t0 = time.monotonic()
        r = self._run(
            cluster, f"preload {start:,}..{end:,}", clients, wl, duration=None, warmup=0.0
        )
        secs = time.monotonic() - t0
        return {
            "keys": n,
            "seconds": round(secs, 3),
            "rate": r["ops"] / max(1e-9, r["duration_s"]),
            "errors": r["error_count"],
        }

    def _start(self) -> Any:
        cluster = make_cluster(self.system, self.cfg.replicas)
        t0 = time.monotonic()
        cluster.start()
        self.cluster_info = {
            "replicas": self.cfg.replicas,
            "start_s": round(time.monotonic() - t0, 2),
            "version": cluster.version(),
        }
        return cluster

    # -- scenarios ---------------------------------------------------------
    def run_all(self) -> dict[str, Any]:
        size = self.cfg.workers or default_workers(
            max([*self.cfg.clients, self.cfg.preload_clients])
        )
        with WorkerPool(size) as self.pool:
            return self._run_all()

    def _run_all(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        cfg = self.cfg
        wanted = set(cfg.scenarios)
        if wanted & {"steady", "values"}:
            cluster = self._start()
            try:
                if "steady" in wanted:
                    out["steady"] = self._guard("steady", lambda: self.steady(cluster))
                if "values" in wanted:
                    out["values"] = self._guard("values", lambda: self.values(cluster))
            finally:
                cluster.stop()
        for name, fn in (
            ("store", self.store),
            ("catchup", self.catchup),
            ("failover", self.failover),
        ):
            if name in wanted:
                out[name] = self._guard(name, fn)
        out["cluster"] = self.cluster_info
        return out

    def _guard(self, name: str, fn: Any) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not sink the suite
            self.progress.note(f"{self.system}: scenario {name} failed: {exc}")
            return {"error": f"{type(exc).__name__}: {exc}"}

    def steady(self, cluster: Any) -> dict[str, Any]:
        cfg = self.cfg
        res: dict[str, Any] = {"preload": self.preload(cluster, 0, cfg.keys)}
        sweep = []
        for c in cfg.clients:
            kw: dict[str, Any] = {}
            if cfg.ops is not None:
                kw = {"duration": None, "ops": cfg.ops}
            profiler = None
            if cfg.profile and self.system == "paxoskv" and c == max(cfg.clients):
                profiler = self._profiler(cluster)
                kw["on_tick"] = profiler.tick
            sweep.append(
                self._run(cluster, f"{self._workload().label} x{c}", c, self._workload(), **kw)
            )
            if profiler is not None:
                res["profile"] = profiler.finish()
                res["profile"]["clients"] = c
        res["sweep"] = sweep
        res["get"] = [
            self._run(cluster, f"get x{c}", c, self._workload(mix={"get": 1.0}))
            for c in cfg.get_clients
        ]
        if self.system == "paxoskv" and cfg.kvclient_duration > 0:
            res["kvclient"] = self._guard("kvclient", lambda: self.kvclient(cluster))
        if cfg.mixed:
            wl = self._workload(mix=cfg.mixed, distribution=cfg.mixed_distribution)
            res["mixed"] = [
                self._run(cluster, f"mixed x{cfg.mixed_clients}", cfg.mixed_clients, wl)
            ]
        return res

    def kvclient(self, cluster: Any) -> dict[str, Any]:
        """One client through the project's client library (client.client.
        KVClient, a REQ socket): sequential PUTs, then GETs, in this process."""
        import random

        from benchmarks.histogram import Histogram
        from benchmarks.workload import key_name, payload
        from client.client import KVClient

        cfg = self.cfg
        value = payload(cfg.value_size, cfg.seed)
        rng = random.Random(cfg.seed)
        out: dict[str, Any] = {"duration_s": cfg.kvclient_duration}
        addrs = [cluster.endpoints()[rid] for rid in sorted(cluster.endpoints())]
        with KVClient(addrs, timeout=10.0) as kv:
            for op in ("put", "get"):
                hist = Histogram()
                t_end = time.monotonic() + cfg.kvclient_duration
                while time.monotonic() < t_end:
                    key = key_name(rng.randrange(cfg.keys))
                    t0 = time.monotonic_ns()
                    if op == "put":
                        kv.put(key, value)
                    else:
                        kv.get(key)
                    hist.record(time.monotonic_ns() - t0)
                    self.progress.show(
                        f"{self.system}: KVClient {op} x1",
                        1 - (t_end - time.monotonic()) / cfg.kvclient_duration,
                        f"{hist.total:,} ops",
                    )
                self.progress.done()
                out[op] = {"ops": hist.total, "latency_ms": hist.summary()}
        return out

    def _profiler(self, cluster: Any) -> _LeaderProfile:
        out_dir = Path(self.cfg.profile_dir or tempfile.gettempdir())
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return _LeaderProfile(
            cluster, self.cfg.warmup, self.cfg.duration, out_dir / f"profile-leader-{stamp}.txt"
        )

    def values(self, cluster: Any) -> list[dict[str, Any]]:
        cfg = self.cfg
        out = []
        for i, size in enumerate(cfg.value_sizes):
            wl = self._workload(
                mix={PUT: 1.0},
                keys=cfg.value_keys,
                distribution="uniform",
                value_size=size,
                key_offset=1_000_000_000 + i * 100_000,
            )
            r = self._run(
                cluster,
                f"value {_size(size)} x{cfg.value_clients}",
                cfg.value_clients,
                wl,
                duration=cfg.value_duration,
            )
            r["value_size"] = size
            out.append(r)
        return out

    def store(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        cluster = self._start()
        out = []
        try:
            loaded = 0
            for n in sorted(cfg.store_sizes):
                pre = self.preload(cluster, loaded, n)
                loaded = max(loaded, n)
                point: dict[str, Any] = {"keys": n, "preload": pre}
                for op in ("put", "get"):
                    wl = self._workload(mix={op: 1.0}, keys=n, distribution="uniform")
                    point[op] = self._run(
                        cluster,
                        f"store {n:,} keys {op} x{cfg.store_clients}",
                        cfg.store_clients,
                        wl,
                        duration=cfg.store_duration,
                    )
                out.append(point)
        finally:
            cluster.stop()
        return out

    def catchup(self) -> dict[str, Any]:
        cfg = self.cfg
        cluster = self._start()
        try:
            leader = cluster.wait_leader()
            follower = next(i for i in sorted(cluster.endpoints()) if i != leader)
            cluster.kill(follower, signal.SIGKILL)
            t0 = time.monotonic()
            pre = self.preload_with(cluster, cfg.catchup_clients, 0, cfg.catchup_writes)
            write_s = time.monotonic() - t0
            leader = cluster.leader() or leader
            target = None
            for _ in range(50):
                target = cluster.commit_index(leader)
                if target is not None:
                    break
                time.sleep(0.05)
            if target is None:
                raise RuntimeError("the leader does not answer STATUS after the writes")
            t_restart = time.monotonic()
            cluster.restart(follower)
            t_up = None
            t_done = None
            last = None
            deadline = t_restart + cfg.catchup_timeout
            while time.monotonic() < deadline:
                applied = cluster.applied_index(follower)
                now = time.monotonic()
                if applied is not None:
                    last = applied
                    if t_up is None:
                        t_up = now
                    if applied >= target:
                        t_done = now
                        break
                self.progress.show(
                    f"{self.system}: catch-up of replica {follower}",
                    (last or 0) / max(1, target),
                    f"applied {last if last is not None else '-'}/{target}",
                )
                time.sleep(0.02)
            self.progress.done()
            return {
                "writes": cfg.catchup_writes,
                "write_s": round(write_s, 3),
                "write_rate": pre["rate"],
                "follower": follower,
                "leader": leader,
                "target_index": target,
                "last_applied": last,
                "restart_to_status_s": round(t_up - t_restart, 3) if t_up else None,
                "restart_to_caught_up_s": round(t_done - t_restart, 3) if t_done else None,
                "caught_up": t_done is not None,
                "timeout_s": cfg.catchup_timeout,
            }
        finally:
            cluster.stop()

    def preload_with(self, cluster: Any, clients: int, start: int, end: int) -> dict[str, Any]:
        saved = self.cfg.preload_clients
        self.cfg.preload_clients = clients
        try:
            return self.preload(cluster, start, end)
        finally:
            self.cfg.preload_clients = saved

    def failover(self) -> dict[str, Any]:
        cfg = self.cfg
        cluster = self._start()
        try:
            leader = cluster.wait_leader()
            state: dict[str, Any] = {"killed": False}

            def on_tick(elapsed: float) -> None:
                if not state["killed"] and elapsed >= cfg.failover_before:
                    state["t_kill_ns"] = time.monotonic_ns()
                    cluster.kill(leader, signal.SIGKILL)
                    state["killed"] = True
                elif state["killed"] and "t_elected_ns" not in state:
                    # a surviving replica that reports a new leader (STATUS)
                    lid = cluster.leader(timeout=0.05)
                    if lid is not None and lid != leader:
                        state["t_elected_ns"] = time.monotonic_ns()

            wl = self._workload(mix={PUT: 1.0}, distribution="uniform")
            spec = RunSpec(
                system=self.system,
                endpoints=cluster.endpoints(),
                leader=leader,
                clients=cfg.failover_clients,
                workload=wl,
                duration=cfg.failover_before + cfg.failover_after,
                warmup=0.0,
                attempt_timeout=cfg.failover_attempt_timeout,
                timeline=True,
            )
            r = run_workload(
                spec,
                workers=cfg.workers,
                pool=self.pool,
                progress=self.progress,
                label=f"{self.system}: failover x{cfg.failover_clients}",
                on_tick=on_tick,
            )
            new_leader = None
            for _ in range(100):
                new_leader = cluster.leader()
                if new_leader is not None:
                    break
                time.sleep(0.05)
            out = analyse_failover(r, state.get("t_kill_ns"), leader, new_leader, cfg)
            if "t_elected_ns" in state and "t_kill_ns" in state:
                out["leader_elected_s"] = round(
                    (state["t_elected_ns"] - state["t_kill_ns"]) / 1e9, 4
                )
            return out
        finally:
            cluster.stop()


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _LeaderProfile:
    """Starts py-spy on the leader when the measurement window opens."""

    def __init__(self, cluster: Any, warmup: float, duration: float | None, out: Path) -> None:
        self.cluster = cluster
        self.warmup = warmup
        self.duration = duration or 5.0
        self.out = out
        self.profiler: Profiler | None = None
        self.leader: int | None = None

    def tick(self, elapsed: float) -> None:
        if self.profiler is None and elapsed >= self.warmup:
            self.leader = self.cluster.leader()
            pid = self.cluster.pids().get(self.leader) if self.leader else None
            self.profiler = Profiler(pid or -1, self.duration, self.out)
            if pid:
                self.profiler.start()
            else:
                self.profiler.error = "no leader to profile"

    def finish(self) -> dict[str, Any]:
        if self.profiler is None:
            return {"error": "the run ended before the profile started"}
        summary = self.profiler.wait()
        summary["leader"] = self.leader
        return summary


def analyse_failover(
    r: dict[str, Any], t_kill: int | None, old: int, new: int | None, cfg: SuiteConfig
) -> dict[str, Any]:
    tl: list[int] = r.pop("timeline_ns")
    t_start = r.pop("t_start_ns")
    r.pop("histogram", None)
    out: dict[str, Any] = {
        "clients": cfg.failover_clients,
        "attempt_timeout_s": cfg.failover_attempt_timeout,
        "old_leader": old,
        "new_leader": new,
        "errors": r["errors"],
        "latency_ms": r["latency_ms"],
    }
    if t_kill is None:
        out["error"] = "the leader was never killed"
        return out
    after = [t for t in tl if t > t_kill]
    before = [t for t in tl if t <= t_kill]
    # Client-observed unavailability: from the kill to the first completion
    # that ends the longest silence after the last pre-kill completion.
    pts = ([before[-1]] if before else [t_kill]) + after
    best_gap, gap_end = 0, None
    for a, b in zip(pts, pts[1:], strict=False):
        if b - a > best_gap:
            best_gap, gap_end = b - a, b
    out["unavailable_s"] = round((gap_end - t_kill) / 1e9, 4) if gap_end is not None else None
    out["longest_gap_s"] = round(best_gap / 1e9, 4) if gap_end is not None else None
    out["writes_after_kill"] = len(after)
    out["recovered"] = bool(after)
    end_ns = t_start + int((cfg.failover_before + cfg.failover_after) * 1e9)
    if not after:
        out["unavailable_s"] = None
        out["note"] = f"no write completed in the {cfg.failover_after:.1f}s after the kill"
    # Throughput over time (100 ms bins), relative to the kill, for the plot.
    bin_ns = 100_000_000
    first = t_start
    nbins = max(1, (end_ns - first) // bin_ns)  # whole bins only
    counts = [0] * nbins
    for t in tl:
        i = (t - first) // bin_ns
        if 0 <= i < nbins:
            counts[i] += 1
    out["timeline"] = {
        "bin_s": bin_ns / 1e9,
        "t0_rel_kill_s": round((first - t_kill) / 1e9, 4),
        "rates": [c * 1e9 / bin_ns for c in counts],
    }
    secs_before = (t_kill - t_start) / 1e9
    out["throughput_before"] = len(before) / secs_before if secs_before > 0 else 0.0
    return out


def _size(n: int) -> str:
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= KiB and n % KiB == 0:
        return f"{n // KiB} KiB"
    return f"{n} B"
