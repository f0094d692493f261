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
  completing, from the kill to the first write served again);
- catchup on a store (`catchup_store_keys` > 0): the store is loaded with
  that many keys, a follower is killed, the keys are overwritten many times
  (far more than a retained log tail), the follower restarts; its catch-up
  time and the bytes its data directory holds after;
- footprint (issue 11): closed-loop clients overwrite a few keys many
  times; every replica's RSS and data-directory size every second and at
  each 100k writes (benchmarks/footprint.py), then a follower restarts
  (SIGTERM) and the time until it has applied a write committed after its
  restart began;
- range, txn, watch (issue 14; `api` selects the three; benchmarks/api.py):
  linearizable scans of 100 and 10,000 keys (every page of a scan inside
  its latency) with 1 and a few clients; two-key compare-versions-and-put
  transactions with 1 and 64 clients; the time from a PUT's send to a
  watcher's event, on the leader and on a follower, at a steady rate.

A fresh cluster for steady(+values), store, catchup (each variant),
failover, footprint and range(+txn+watch) each.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import cost, trace
from benchmarks.driver import RunSpec
from benchmarks.footprint import (
    BudgetExceeded,
    FootprintSampler,
    dir_alloc_bytes,
    dir_bytes,
    live_bytes,
    mark_interval,
    rss_bytes,
    summarize,
)
from benchmarks.harness import Progress, WorkerPool, default_workers, run_workload
from benchmarks.profile import Profiler
from benchmarks.workload import PUT, WorkloadSpec

KiB = 1024
MiB = 1024 * 1024
SCENARIOS = (
    "steady", "values", "store", "catchup", "failover", "footprint", "range", "txn", "watch",
)  # fmt: skip
API_SCENARIOS = ("range", "txn", "watch")  # `--scenarios api` names the three
# Where the API scenarios' keys live: past every other scenario's (the
# steady keys, the value sizes' 1e9 + ..., the store's up to 1M keys), so
# that a range holds exactly the keys it was loaded with.
RANGE_KEY_BASE = 3_000_000_000  # + size index x 100,000,000
TXN_KEY_BASE = 4_000_000_000
# the standard suite leaves the footprint out (its minutes of writes would
# double it); quick and full run everything
DEFAULT_SCENARIOS = ("steady", "values", "store", "catchup", "failover")


@dataclass
class SuiteConfig:
    """Everything a suite does; the CLI fills it from a preset and flags."""

    name: str = "standard"
    replicas: int = 3
    scenarios: list[str] = field(default_factory=lambda: list(DEFAULT_SCENARIOS))
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
    # catch-up on a loaded store: 0 keys = off (--catchup-store-keys 100k)
    catchup_store_keys: int = 0
    catchup_store_writes: int = 100_000
    # footprint (issue 11): writes overwrite `footprint_keys` keys, uniformly
    footprint_writes: int = 200_000
    footprint_keys: int = 1000
    footprint_clients: int = 64
    footprint_interval: float = 1.0  # seconds between samples
    footprint_mark: int = 100_000  # a sample at every multiple (a tenth of short runs)
    footprint_timeout: float = 600.0  # time budget of a write phase (also catch-up store's)
    restart_timeout: float = 60.0
    # etcd's MVCC auto-compaction, "MODE:RETENTION" (revision:10000, periodic:30s)
    # or a revision count; None: off, etcd's default
    etcd_auto_compaction: str | None = None
    # failover
    failover_clients: int = 16
    failover_before: float = 1.5
    failover_after: float = 5.0
    failover_attempt_timeout: float = 0.25
    # API scenarios (issue 14): scans of each size with each client count
    # (`range_duration` each: a 10,000-key scan takes a tenth of a second or
    # more, and its p99 wants samples), txns with each client count
    # (`duration` each), after the warm-up; a watch at `watch_rate` PUTs/s
    # for `watch_duration` seconds
    range_sizes: list[int] = field(default_factory=lambda: [100, 10_000])
    range_clients: list[int] = field(default_factory=lambda: [1, 4])
    range_duration: float = 6.0
    txn_clients: list[int] = field(default_factory=lambda: [1, 64])
    watch_rate: float = 100.0
    watch_duration: float = 5.0
    # py-spy on the leader during the largest sweep point (paxoskv only)
    profile: bool = False
    profile_dir: str | None = None
    # CURVE on every socket of our cluster (README, Security); etcd unchanged
    curve: bool = False
    # the per-request trace of every N-th slot (paxoskv; 0: off): each run
    # of our cluster gets a commit-path breakdown (benchmarks/trace.py)
    trace_every: int = 0
    # our replicas answer linearizable reads on the leader's read lease
    lease_reads: bool = False
    # our load generators' GETs are vouched for by the other replicas (KVClient's default)
    vouch_reads: bool = True
    # our replicas' [storage] write_buffer_bytes (None: their default)
    write_buffer_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _trace_dirs(cluster: Any) -> list[Path]:
    """The data directories of our cluster's replicas (none for etcd)."""
    return [r.data_dir for r in getattr(cluster, "replicas", []) if hasattr(r, "data_dir")]


def make_cluster(system: str, replicas: int, cfg: SuiteConfig | None = None) -> Any:
    if system == "paxoskv":
        from benchmarks.cluster import KVCluster

        if cfg is None:
            return KVCluster(replicas)
        return KVCluster(
            replicas,
            curve=cfg.curve,
            trace_every=cfg.trace_every,
            lease_reads=cfg.lease_reads,
            write_buffer_bytes=cfg.write_buffer_bytes,
        )
    from benchmarks.etcd import EtcdCluster

    extra: list[str] = []
    if cfg is not None and cfg.etcd_auto_compaction:
        mode, retention = etcd_compaction(cfg.etcd_auto_compaction)
        extra = ["--auto-compaction-mode", mode, "--auto-compaction-retention", retention]
    return EtcdCluster(replicas, extra_args=extra)


def _curve_of(cluster: Any) -> list[str] | None:
    """The load generators' CURVE keys for our cluster (None: plaintext, etcd)."""
    keys = getattr(cluster, "client_keys", None)
    return (
        None if keys is None else [k.decode() for k in (keys.server_key, keys.public, keys.secret)]
    )


def etcd_compaction(text: str) -> tuple[str, str]:
    """ "revision:10000" / "periodic:30s" / "10000" -> (mode, retention)."""
    mode, sep, retention = str(text).partition(":")
    if not sep:
        mode, retention = "revision", mode
    if mode not in ("revision", "periodic") or not retention:
        raise ValueError(f"etcd auto-compaction {text!r}: use revision:N or periodic:DURATION")
    return mode, retention


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
        on_progress = kw.pop("on_progress", None)
        leader = cluster.leader()
        pids = cluster.pids()
        counted = self.system == "paxoskv" and leader is not None
        commit0 = cost.commit_counters(cluster.status(leader)) if counted else None
        cpu0 = {rid: proc_cpu_seconds(pid) for rid, pid in pids.items()}
        written0 = {rid: proc_write_bytes(pid) for rid, pid in pids.items()}
        traced = None
        if self.cfg.trace_every and self.system == "paxoskv":
            traced = trace.Marks(_trace_dirs(cluster))
        t0 = time.monotonic()
        spec = RunSpec(
            system=self.system,
            endpoints=cluster.endpoints(),
            curve=_curve_of(cluster),
            leader=leader,
            clients=clients,
            workload=workload,
            duration=kw.pop("duration", self.cfg.duration),
            ops=kw.pop("ops", None),
            warmup=kw.pop("warmup", self.cfg.warmup),
            attempt_timeout=kw.pop("attempt_timeout", self.cfg.attempt_timeout),
            vouch_reads=self.cfg.vouch_reads,
            **kw,
        )
        result = run_workload(
            spec,
            workers=self.cfg.workers,
            pool=self.pool,
            progress=self.progress,
            label=f"{self.system}: {label}",
            on_tick=on_tick,
            on_progress=on_progress,
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
        # Bytes the cluster's processes sent towards the disk over the same
        # window (/proc/PID/io write_bytes: logs, tables, compactions).
        written = {}
        for rid, pid in pids.items():
            after = proc_write_bytes(pid)
            if after is not None and written0.get(rid) is not None:
                written[rid] = after - written0[rid]
        result["server_write_bytes"] = written
        result["wall_s"] = round(wall, 3)
        if counted:  # slots and writes over the same window (benchmarks/cost.py)
            commit1 = cost.commit_counters(cluster.status(leader))
            result["commit"] = cost.commit_delta(commit0, commit1)
        result["server_cpu_share"] = round(sum(used.values()) / wall, 3) if wall > 0 else None
        result["client_cpu_share"] = round(result["client_cpu_s"] / wall, 3) if wall > 0 else None
        if traced is not None:
            p50 = (result.get("latency_ms") or {}).get("p50")
            result["trace"] = trace.breakdown(traced.since(), p50)
        return result

    def preload(
        self,
        cluster: Any,
        start: int,
        end: int,
        value_size: int | None = None,
        fresh_values: bool = False,
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
            fresh_values=fresh_values,
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
        cluster = make_cluster(self.system, self.cfg.replicas, self.cfg)
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
            max([*self.cfg.clients, self.cfg.preload_clients, *self.cfg.txn_clients])
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
        if "store" in wanted:
            out["store"] = self._guard("store", self.store)
        if "catchup" in wanted and cfg.catchup_writes > 0:
            out["catchup"] = self._guard("catchup", self.catchup)
        if "catchup" in wanted and cfg.catchup_store_keys > 0:
            out["catchup_store"] = self._guard("catchup_store", self.catchup_store)
        if "failover" in wanted:
            out["failover"] = self._guard("failover", self.failover)
        if "footprint" in wanted:
            out["footprint"] = self._guard("footprint", self.footprint)
        if wanted & set(API_SCENARIOS):
            cluster = self._start()
            try:
                for name, fn in (
                    ("range", self.range_scans),
                    ("txn", self.txn),
                    ("watch", self.watch),
                ):
                    if name in wanted:
                        out[name] = self._guard(name, lambda fn=fn: fn(cluster))
            finally:
                cluster.stop()
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
        if self.system == "paxoskv" and {op for op, w in cfg.mix.items() if w > 0} == {PUT}:
            res["cost"] = cost.summary(sweep)  # per write: a sweep of writes only
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
        kv_args = dict(getattr(cluster, "client_key_args", {}))
        with KVClient(addrs, timeout=10.0, vouch_reads=cfg.vouch_reads, **kv_args) as kv:
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

    # -- the API scenarios (issue 14; benchmarks/api.py) ----------------------
    def _api_run(
        self, cluster: Any, label: str, clients: int, api: dict[str, Any], duration: float
    ) -> dict[str, Any]:
        wl = self._workload(mix={PUT: 1.0}, distribution="uniform")
        r = self._run(
            cluster, label, clients, wl, api=api, duration=duration,
            kv_args=dict(getattr(cluster, "client_key_args", {})),
        )  # fmt: skip
        return r

    def range_scans(self, cluster: Any) -> dict[str, Any]:
        """Linearizable scans of `range_sizes` keys, with each of
        `range_clients` closed-loop clients."""
        cfg = self.cfg
        out: dict[str, Any] = {"preload": [], "runs": []}
        for i, n in enumerate(cfg.range_sizes):
            first = RANGE_KEY_BASE + i * 100_000_000
            out["preload"].append(self.preload(cluster, first, first + n))
            for c in cfg.range_clients:
                r = self._api_run(
                    cluster, f"scan {n:,} keys x{c}", c,
                    {"op": "scan", "first": first, "count": n}, cfg.range_duration,
                )  # fmt: skip
                r["keys_per_scan"] = n
                r["requests_per_scan"] = scan_requests(r)
                out["runs"].append(r)
        return out

    def txn(self, cluster: Any) -> dict[str, Any]:
        """Two-key transactions (compare both versions, put both), each
        client on its own pair, with each of `txn_clients` clients; before
        them one client's single PUTs through the same client library."""
        cfg = self.cfg
        pre = self.preload(cluster, TXN_KEY_BASE, TXN_KEY_BASE + 2 * max(cfg.txn_clients))
        # the same client's single PUT, as a reference measured minutes apart
        put = self._api_run(
            cluster, "put x1 (reference)", 1, {"op": "put", "first": TXN_KEY_BASE}, cfg.duration
        )
        runs = [
            self._api_run(
                cluster, f"txn x{c}", c, {"op": "txn", "first": TXN_KEY_BASE}, cfg.duration
            )
            for c in cfg.txn_clients
        ]
        return {"preload": pre, "put": put, "runs": runs}

    def watch(self, cluster: Any) -> dict[str, Any]:
        """PUT-to-event latency of a prefix watcher on the leader and one on
        a follower, PUTs through the leader at `watch_rate` a second."""
        from benchmarks import api
        from benchmarks.workload import payload

        cfg = self.cfg
        leader = cluster.wait_leader()
        follower = next(i for i in sorted(cluster.endpoints()) if i != leader)
        where = {"leader": leader, "follower": follower}
        prefix = api.random_prefix()
        value = payload(cfg.value_size, cfg.seed)
        eps = cluster.endpoints()
        closers: list[Any] = []
        if self.system == "paxoskv":
            from client.client import KVClient

            kv_args = dict(getattr(cluster, "client_key_args", {}))
            ids = sorted(eps)
            kv = KVClient([eps[i] for i in ids], timeout=10.0, first=ids.index(leader), **kv_args)
            closers.append(kv)
            rev = kv.range(prefix, prefix=True, count_only=True).revision + 1
            watchers: list[api.Watcher] = [
                api.PaxosWatcher(name, prefix, eps[rid], rev, kv_args)
                for name, rid in where.items()
            ]
            put = kv.put
        else:
            admin = cluster.admin
            watchers = [api.EtcdWatcher(name, prefix, eps[rid]) for name, rid in where.items()]
            ep = eps[leader]

            def put(key: bytes, val: bytes) -> object:
                return admin.put(ep, key, val)

        total = max(1, int(cfg.watch_rate * cfg.watch_duration))

        def show(elapsed: float, done: int) -> None:
            self.progress.show(
                f"{self.system}: watch {cfg.watch_rate:g}/s", done / total, f"{done:,} puts"
            )

        try:
            out = api.measure_watch(
                put, watchers, prefix, cfg.watch_rate, cfg.watch_duration, value, progress=show
            )
        finally:
            self.progress.done()
            for c in closers:
                c.close()
        for name, rid in where.items():
            out["watchers"][name]["replica"] = rid
        out["prefix"] = prefix.decode()
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
            t_up, t_done, last = self._await_applied(cluster, follower, target, t_restart)
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

    def _await_applied(
        self, cluster: Any, rid: int, target: int, t_restart: float
    ) -> tuple[float | None, float | None, int | None]:
        """Polls replica `rid` (restarted at `t_restart`) until its applied
        index reaches `target`, at most `catchup_timeout` seconds; returns
        (first STATUS answer, caught up, last applied index), the times as
        monotonic clock values or None."""
        t_up = t_done = None
        last = None
        deadline = t_restart + self.cfg.catchup_timeout
        while time.monotonic() < deadline:
            applied = cluster.applied_index(rid)
            now = time.monotonic()
            if applied is not None:
                last = applied
                if t_up is None:
                    t_up = now
                if applied >= target:
                    t_done = now
                    break
            self.progress.show(
                f"{self.system}: catch-up of replica {rid}",
                (last or 0) / max(1, target),
                f"applied {last if last is not None else '-'}/{target}",
            )
            time.sleep(0.02)
        self.progress.done()
        return t_up, t_done, last

    def _leader_commit(self, cluster: Any, leader: int) -> tuple[int, int]:
        """(leader, its commit index), asking again for up to 2.5 s."""
        for _ in range(50):
            leader = cluster.leader() or leader
            target = cluster.commit_index(leader)
            if target is not None:
                return leader, target
            time.sleep(0.05)
        raise RuntimeError("the leader does not answer STATUS after the writes")

    def _budget(self, seconds: float) -> Any:
        """A progress callback that stops a run after `seconds`."""

        def check(elapsed: float, done: int) -> None:
            if elapsed > seconds:
                raise BudgetExceeded(f"stopped after {done:,} writes ({seconds:g} s budget)")

        return check

    def catchup_store(self) -> dict[str, Any]:
        """Catch-up on a loaded store: `catchup_store_keys` keys are loaded,
        a follower is killed (SIGKILL), `catchup_store_writes` uniform
        overwrites of those keys go in, the follower restarts; the time until
        its applied index reaches the leader's commit index, and the bytes of
        its data directory (and the leader's) after."""
        cfg = self.cfg
        keys, writes = cfg.catchup_store_keys, cfg.catchup_store_writes
        cluster = self._start()
        try:
            pre = self.preload(cluster, 0, keys, fresh_values=True)
            leader = cluster.wait_leader()
            follower = next(i for i in sorted(cluster.endpoints()) if i != leader)
            dirs = cluster.data_dirs()
            follower_dir_before = dir_bytes(dirs[follower])
            cluster.kill(follower, signal.SIGKILL)
            wl = self._workload(
                mix={PUT: 1.0}, keys=keys, distribution="uniform", fresh_values=True
            )
            t0 = time.monotonic()
            stopped = None
            try:
                r = self._run(
                    cluster, f"overwrite {keys:,} keys x{cfg.catchup_clients}",
                    cfg.catchup_clients, wl, duration=None, ops=writes, warmup=0.0,
                    on_progress=self._budget(cfg.footprint_timeout),
                )  # fmt: skip
                done, rate = r["ops"], r["throughput"]
            except BudgetExceeded as exc:
                stopped, done, rate = str(exc), None, None
            write_s = time.monotonic() - t0
            leader, target = self._leader_commit(cluster, leader)
            leader_dir = dir_bytes(dirs[leader])
            t_restart = time.monotonic()
            cluster.restart(follower)
            t_up, t_done, last = self._await_applied(cluster, follower, target, t_restart)
            pid = cluster.pids().get(follower)
            out = {
                "store_keys": keys,
                "writes": writes,
                "writes_done": done,
                "stopped_early": stopped,
                "preload": pre,
                "write_s": round(write_s, 3),
                "write_rate": rate,
                "follower": follower,
                "leader": leader,
                "target_index": target,
                "last_applied": last,
                "restart_to_status_s": round(t_up - t_restart, 3) if t_up else None,
                "restart_to_caught_up_s": round(t_done - t_restart, 3) if t_done else None,
                "caught_up": t_done is not None,
                "timeout_s": cfg.catchup_timeout,
                "live_bytes": live_bytes(keys, cfg.value_size),
                "follower_dir_before_bytes": follower_dir_before,
                "follower_dir_after_bytes": dir_bytes(dirs[follower]),
                "follower_dir_after_alloc_bytes": dir_alloc_bytes(dirs[follower]),
                "leader_dir_bytes": leader_dir,
                "follower_rss_after_bytes": rss_bytes(pid),
            }
            return out
        finally:
            cluster.stop()

    def footprint(self) -> dict[str, Any]:
        """Issue 11: is every replica bounded by its live data? Overwrites
        `footprint_keys` keys `footprint_writes` times (uniform, closed loop)
        while sampling RSS and data-directory sizes; then restarts a
        follower (SIGTERM) and times it to its first committed write."""
        cfg = self.cfg
        cluster = self._start()
        try:
            leader = cluster.wait_leader()
            mark = mark_interval(cfg.footprint_writes, cfg.footprint_mark)
            live = live_bytes(cfg.footprint_keys, cfg.value_size)
            sampler = FootprintSampler(
                cluster.pids(), cluster.data_dirs(), interval=cfg.footprint_interval, mark=mark,
                deadline=time.monotonic() + cfg.footprint_timeout,
            )  # fmt: skip
            sampler.sample(0)
            wl = self._workload(
                mix={PUT: 1.0}, keys=cfg.footprint_keys, distribution="uniform", fresh_values=True
            )
            stopped = None
            run: dict[str, Any] = {}
            try:
                r = self._run(
                    cluster,
                    f"overwrite {cfg.footprint_keys:,} keys x{cfg.footprint_clients}",
                    cfg.footprint_clients, wl, duration=None, ops=cfg.footprint_writes,
                    warmup=0.0, on_progress=sampler.on_progress,
                )  # fmt: skip
                done = r["ops"]
                run = {
                    "seconds": r["duration_s"],
                    "throughput": r["throughput"],
                    "latency_ms": r["latency_ms"],
                    "errors": r["errors"],
                    "server_cpu_share": r["server_cpu_share"],
                    "client_cpu_share": r["client_cpu_share"],
                }
            except BudgetExceeded as exc:
                stopped, done = str(exc), sampler.last_writes
            settled_s = self._settle(cluster, leader)
            sampler.sample(done)
            status_end = {rid: cluster.status(rid) for rid in sorted(cluster.endpoints())}
            leader = cluster.leader() or leader
            restart = self._restart_follower(cluster, leader, sampler)
            series = sampler.series()
            return {
                "writes": cfg.footprint_writes,
                "writes_done": done,
                "stopped_early": stopped,
                "keys": cfg.footprint_keys,
                "value_size": cfg.value_size,
                "clients": cfg.footprint_clients,
                "run": run,
                "settle_s": settled_s,
                "summary": summarize(series, live),
                "restart": restart,
                "status_end": {str(k): v for k, v in status_end.items()},
                "series": series,
            }
        finally:
            cluster.stop()

    def _settle(self, cluster: Any, leader: int, timeout: float = 30.0) -> float | None:
        """Waits until every replica has applied the leader's commit index
        (the end of the writes); returns how long that took, None on timeout."""
        t0 = time.monotonic()
        try:
            leader, target = self._leader_commit(cluster, leader)
        except RuntimeError:
            return None
        ids = sorted(cluster.endpoints())
        while time.monotonic() - t0 < timeout:
            applied = [cluster.applied_index(rid) for rid in ids]
            if all(a is not None and a >= target for a in applied):
                return round(time.monotonic() - t0, 3)
            time.sleep(0.05)
        return None

    def _restart_follower(
        self, cluster: Any, leader: int, sampler: FootprintSampler
    ) -> dict[str, Any]:
        """SIGTERM a follower, start it again through the launcher, and time
        it from its start until it has applied a write committed after that
        start: marker writes go through the leader every 50 ms; paxoskv:
        the follower's applied index (STATUS) reaches the leader's commit
        index after the first of them; etcd: a serializable read at the
        member returns the marker key."""
        cfg = self.cfg
        follower = next(i for i in sorted(cluster.endpoints()) if i != leader)
        dirs = cluster.data_dirs()
        old_pid = cluster.pids().get(follower)
        rss_before = rss_bytes(old_pid)
        dir_before = dir_bytes(dirs[follower])
        t_kill = time.monotonic()
        cluster.kill(follower, signal.SIGTERM)
        stop_s = time.monotonic() - t_kill
        key = b"__bench_restart_%d" % time.time_ns()
        t0 = time.monotonic()
        cluster.restart(follower)
        sampler.set_pid(follower, cluster.pids().get(follower))
        token = None
        t_first_write = t_status = t_done = None
        write_errors = 0
        last_write = -1.0
        n = 0
        deadline = t0 + cfg.restart_timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now - last_write >= 0.05:
                last_write = now
                try:
                    tok = cluster.write_marker(leader, key, b"%d" % n)
                    n += 1
                    if token is None:
                        token, t_first_write = tok, time.monotonic()
                except Exception:  # noqa: BLE001 - counted; the next one is tried
                    write_errors += 1
            if token is not None:
                ok = cluster.marker_applied(follower, key, token)
            else:
                ok = None if cluster.status(follower, timeout=0.2) is None else False
            now = time.monotonic()
            if ok is not None and t_status is None:
                t_status = now
            if ok:
                t_done = now
                break
            self.progress.show(
                f"{self.system}: restart of replica {follower}",
                (now - t0) / cfg.restart_timeout,
                "up" if t_status else "starting",
            )
            time.sleep(0.01)
        self.progress.done()
        pid = cluster.pids().get(follower)
        return {
            "replica": follower,
            "leader": leader,
            "signal": "SIGTERM",
            "stop_s": round(stop_s, 3),
            "rss_before_bytes": rss_before,
            "dir_before_bytes": dir_before,
            "restart_to_status_s": round(t_status - t0, 3) if t_status else None,
            "restart_to_first_write_s": round(t_done - t0, 3) if t_done else None,
            "first_marker_after_s": round(t_first_write - t0, 3) if t_first_write else None,
            "marker_writes": n,
            "marker_errors": write_errors,
            "rss_after_bytes": rss_bytes(pid),
            "dir_after_bytes": dir_bytes(dirs[follower]),
            "timeout_s": cfg.restart_timeout,
        }

    def preload_with(self, cluster: Any, clients: int, start: int, end: int) -> dict[str, Any]:
        saved = self.cfg.preload_clients
        self.cfg.preload_clients = clients
        try:
            return self.preload(cluster, start, end)
        finally:
            self.cfg.preload_clients = saved

    def failover(self) -> dict[str, Any]:
        out = self._failover_run(move=False)
        if self.system == "paxoskv":
            # The same load while `kvctl move-leader` hands over (issue 15).
            out["move_leader"] = self._guard("failover (move-leader)", self._failover_move)
        return out

    def _failover_move(self) -> dict[str, Any]:
        return self._failover_run(move=True)

    def _failover_run(self, move: bool) -> dict[str, Any]:
        cfg = self.cfg
        cluster = self._start()
        try:
            leader = cluster.wait_leader()
            state: dict[str, Any] = {"killed": False}

            def hand_over() -> None:
                from client import KVClient  # the operator's tool, as kvctl uses it

                target = next(r for r in cluster.endpoints() if r != leader)
                with KVClient(list(cluster.endpoints().values()), timeout=10.0) as kv:
                    try:
                        kv.move_leader(target)
                    except Exception as exc:  # noqa: BLE001 - reported in the result
                        state["move_error"] = f"{type(exc).__name__}: {exc}"

            def on_tick(elapsed: float) -> None:
                if not state["killed"] and elapsed >= cfg.failover_before:
                    state["t_kill_ns"] = time.monotonic_ns()
                    if move:
                        threading.Thread(target=hand_over, daemon=True).start()
                    else:
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
                curve=_curve_of(cluster),
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
            if "move_error" in state:
                out["error"] = state["move_error"]
            if "t_elected_ns" in state and "t_kill_ns" in state:
                out["leader_elected_s"] = round(
                    (state["t_elected_ns"] - state["t_kill_ns"]) / 1e9, 4
                )
            return out
        finally:
            cluster.stop()


def scan_requests(run: dict[str, Any]) -> float | None:
    """Requests per measured scan (pages: 1 for etcd, more for a range
    longer than a reply of ours may be)."""
    return per_op(run, "requests")


def per_op(run: dict[str, Any], counter: str, scale: float = 1.0) -> float | None:
    """An API run's counter per measured operation (x scale), None without
    operations or without the counter."""
    ops = run.get("ops") or 0
    total = (run.get("counters") or {}).get(counter)
    return total * scale / ops if ops and total is not None else None


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_write_bytes(pid: int) -> int | None:
    """`write_bytes` of /proc/PID/io: what the process (all its threads)
    caused to be written to the storage layer, counted when it dirties a
    page cache page (so a tmpfs counts nothing). None if unreadable."""
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            for line in f:
                if line.startswith(b"write_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def written_per_op(run: dict[str, Any]) -> float | None:
    """Bytes the cluster wrote towards its disks per operation of a run:
    its write rate over the whole run (warm-up included) over the measured
    throughput, like the CPU per op. None without both."""
    written = run.get("server_write_bytes")
    wall, rate = run.get("wall_s"), run.get("throughput")
    if not written or not wall or not rate:
        return None
    return sum(written.values()) / wall / rate


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
