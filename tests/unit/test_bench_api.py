"""The API scenarios' measuring side (benchmarks/api.py, issue 14) and their
rows in the table (benchmarks/run.py): key layout, the scan and txn loops
against a fake client, the watch arithmetic and its writer against fake
watchers, options and presets. No cluster is started."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from benchmarks import api
from benchmarks.driver import RunSpec, WorkerStats, _Window
from benchmarks.run import api_rows, build_parser, config_from_args, table_rows
from benchmarks.scenarios import scan_requests
from benchmarks.workload import WorkloadSpec, key_name

MS = 1_000_000


def test_a_scan_covers_exactly_its_keys():
    start, end = api.scan_bounds(3_000_000_000, 100)
    inside = [key_name(3_000_000_000 + i) for i in range(100)]
    assert all(start <= k < end for k in inside)
    assert not start <= key_name(3_000_000_100) < end
    assert not start <= key_name(2_999_999_999) < end


def test_txn_clients_own_disjoint_pairs():
    pairs = [api.txn_keys(4_000_000_000, c) for c in range(64)]
    keys = [k for p in pairs for k in p]
    assert len(set(keys)) == 128 and all(len(p) == 2 for p in pairs)
    assert pairs[1] == [key_name(4_000_000_002), key_name(4_000_000_003)]


def window(duration: float = 0.3, warmup: float = 0.0) -> _Window:
    spec = RunSpec("paxoskv", {1: "x"}, 1, 1, WorkloadSpec(), duration=duration, warmup=warmup)
    return _Window(spec, time.monotonic_ns(), None)


class FakeApi:
    """Versions per key; a txn succeeds when they match (and bumps them);
    `fail_next` makes the next comparison fail once."""

    def __init__(self, scan_keys: int = 100, pages: int = 1) -> None:
        self.store: dict[bytes, int] = {}
        self.rev = 10
        self.reads = 0
        self.fail_next = False
        self.scan_keys, self.pages = scan_keys, pages

    def scan(self, start, end):
        time.sleep(0.001)
        return self.scan_keys, self.pages

    def put(self, key, value):
        time.sleep(0.001)
        if key == b"bad":
            raise RuntimeError("refused")
        self.store[key] = self.rev = self.rev + 1

    def versions(self, keys):
        self.reads += 1
        return [self.store.get(k, 1) for k in keys]

    def txn(self, keys, versions, value):
        time.sleep(0.001)
        if self.fail_next or [self.store.get(k, 1) for k in keys] != versions:
            self.fail_next = False
            return None
        self.rev += 1
        for k in keys:
            self.store[k] = self.rev
        return self.rev


def test_txn_loop_reads_versions_once_and_after_a_failure():
    fake, stats = FakeApi(), WorkerStats()
    stats.hists[api.TXN] = api.Histogram()
    lock = threading.Lock()
    win = window(0.5)
    keys = api.txn_keys(0, 0)

    def flip():
        time.sleep(0.1)
        fake.fail_next = True

    threading.Thread(target=flip).start()
    api._txn_loop(fake, keys, b"v", win, stats, lock)
    done = stats.hists[api.TXN].total
    assert done > 5 and stats.cas_failed == 1
    assert fake.reads == 2  # at the start and after the failure
    assert fake.store[keys[0]] == fake.store[keys[1]] == fake.rev


def test_scan_loop_counts_requests_and_refuses_a_short_scan():
    stats, lock = WorkerStats(), threading.Lock()
    stats.hists[api.SCAN] = api.Histogram()
    api._scan_loop(FakeApi(6000, pages=2), {"first": 0, "count": 6000}, window(0.1), stats, lock)
    n = stats.hists[api.SCAN].total
    assert n > 3 and stats.counters["requests"] == 2 * n and stats.counters["keys"] == 6000 * n
    # the thread's CPU time (the fake sleeps: far less than the wall time)
    assert 0 < stats.counters["client_cpu_ns"] < stats.hists[api.SCAN].sum
    assert scan_requests({"ops": n, "counters": stats.counters}) == 2.0
    short = WorkerStats()
    api._scan_loop(FakeApi(99), {"first": 0, "count": 100}, window(0.05), short, lock)
    assert short.hists.get(api.SCAN) is None or short.hists[api.SCAN].total == 0
    (err,) = short.errors
    assert err == "short scan: 99 of 100 keys" and short.errors[err] > 2


def test_put_loop_records_puts_and_counts_errors():
    fake, stats, lock = FakeApi(), WorkerStats(), threading.Lock()
    api._put_loop(fake, b"k", b"v", window(0.1), stats, lock)
    assert stats.hists[api.PUT].total > 3 and fake.store[b"k"] == fake.rev
    bad = WorkerStats()
    api._put_loop(fake, b"bad", b"v", window(0.05), bad, lock)
    assert bad.hists[api.PUT].total == 0 and bad.errors["RuntimeError: refused"] >= 1


def test_etcd_calls_try_every_member_until_the_window_closes():
    grpc = pytest.importorskip("grpc")
    from benchmarks import etcd as pb
    from replica.launch import free_ports

    ports = free_ports(3)  # nothing listens: every call is refused
    spec = RunSpec("etcd", {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports)}, 2, 1,
                   WorkloadSpec(), attempt_timeout=0.2)  # fmt: skip
    stats, lock = WorkerStats(), threading.Lock()
    ch = api.EtcdChannels(spec, stats, lock, time.monotonic_ns() + 300 * MS)
    t0 = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError):
            ch.call(pb.KV_PUT, pb.encode_put(b"k", b"v"))
    finally:
        ch.close()
    assert time.monotonic() - t0 < 5
    assert stats.retries >= 2 and stats.errors["UNAVAILABLE"] == stats.retries
    # each refusal but the last (past the window) moves the hint on: 2, 3, 1, ...
    assert ch.leader == stats.retries % 3 + 1


def test_scan_requests_without_scans():
    assert scan_requests({"ops": 0, "counters": {}}) is None
    assert scan_requests({"ops": 5}) is None


def test_event_index_reads_only_measured_keys():
    assert api.event_index(b"w/00000042", b"w/") == 42
    assert api.event_index(b"w/warm000001", b"w/") is None
    assert api.event_index(b"w/end", b"w/") is None
    assert api.event_index(b"x/00000042", b"w/") is None


def test_watch_latencies_and_missing_events():
    sent = {0: 1000 * MS, 1: 1010 * MS, 2: 1020 * MS}
    hist, missing = api.watch_latencies(sent, {0: 1003 * MS, 2: 1021 * MS, 7: 5})
    assert missing == 1 and hist.total == 2
    assert hist.min == 1 * MS and abs(hist.max - 3 * MS) <= 3 * MS // 1000


class FakeWatcher(api.Watcher):
    """Gets every put's key, in order, `delay` seconds after the put; drops
    the write numbers in `drop`."""

    def __init__(self, name, prefix, delay, drop=()):
        super().__init__(name, prefix)
        self.q: queue.Queue = queue.Queue()
        self.delay, self.drop = delay, set(drop)

    def deliver(self, key):
        if api.event_index(key, self.prefix) not in self.drop:
            self.q.put((time.monotonic() + self.delay, key))

    def _events(self):
        while True:
            due, key = self.q.get()
            time.sleep(max(0.0, due - time.monotonic()))
            yield key


def test_measure_watch_times_each_event_from_its_put():
    prefix = b"w/"
    fast, slow = FakeWatcher("leader", prefix, 0.001), FakeWatcher("follower", prefix, 0.02, [3])
    puts = []

    def put(key, value):
        puts.append(key)
        for w in (fast, slow):
            w.deliver(key)

    out = api.measure_watch(put, [fast, slow], prefix, rate=200, duration=0.1, value=b"v")
    assert out["writes"] == 20 and puts[-1] == b"w/end"
    assert puts[0].startswith(b"w/warm") and out["warmup_writes"] >= 1
    assert out["put_latency_ms"]["count"] == 20
    a, b = out["watchers"]["leader"], out["watchers"]["follower"]
    assert a["received"] == 20 and a["missing"] == 0 and a["error"] is None
    assert b["received"] == 19 and b["missing"] == 1
    # from before the put to the delivery: at least the delay
    assert a["latency_ms"]["min"] >= 1 and b["latency_ms"]["min"] >= 20
    assert a["latency_ms"]["p50"] < b["latency_ms"]["p50"]
    assert a["events"] == 20 + out["warmup_writes"] + 1


def test_measure_watch_gives_up_on_a_deaf_watcher():
    deaf = FakeWatcher("leader", b"w/", 0.0)
    with pytest.raises(TimeoutError):
        api.measure_watch(lambda k, v: None, [deaf], b"w/", 100, 0.1, b"v", ready_timeout=0.2)


def test_api_scenarios_are_selected_by_name_or_as_api():
    def cfg(*argv):
        return config_from_args(build_parser().parse_args(list(argv)))

    assert cfg("--scenarios", "api").scenarios == ["range", "txn", "watch"]
    assert cfg("--scenarios", "txn,api,steady").scenarios == ["txn", "range", "watch", "steady"]
    assert not {"range", "txn", "watch"} & set(cfg().scenarios)  # standard: opt-in
    assert {"range", "txn", "watch"} <= set(cfg("--suite", "quick").scenarios)
    assert {"range", "txn", "watch"} <= set(cfg("--suite", "full").scenarios)
    c = cfg("--range-sizes", "100,10k", "--range-clients", "1,8", "--txn-clients", "16",
            "--watch-rate", "50", "--watch-duration", "2", "--range-duration", "4")  # fmt: skip
    assert c.range_sizes == [100, 10_000] and c.range_clients == [1, 8]
    assert c.txn_clients == [16] and c.watch_rate == 50.0 and c.watch_duration == 2.0
    assert c.range_duration == 4.0 and cfg().range_duration == 6.0
    assert cfg().range_sizes == [100, 10_000] and cfg().txn_clients == [1, 64]
    with pytest.raises(SystemExit):
        cfg("--scenarios", "ranges")


def lat(p50, p99):
    return {"p50": p50, "p99": p99}


def doc_with_api() -> dict:
    cfg = config_from_args(build_parser().parse_args(["--scenarios", "api"])).to_dict()

    def system(scale, pages):
        def run(clients, tput, **kw):
            return {"clients": clients, "ops": 100, "throughput": tput,
                    "latency_ms": lat(2.0 * scale, 9.0 * scale), **kw}  # fmt: skip

        return {
            "status": "ok",
            "scenarios": {
                "range": {
                    "runs": [
                        run(1, 400.0 / scale, keys_per_scan=100, counters={"requests": 100}),
                        run(4, 900.0 / scale, keys_per_scan=100, counters={"requests": 100}),
                        run(
                            1,
                            20.0 / scale,
                            keys_per_scan=10_000,
                            counters={"requests": 100 * pages, "client_cpu_ns": 300 * MS},
                        ),
                        run(
                            4,
                            50.0 / scale,
                            keys_per_scan=10_000,
                            counters={"requests": 100 * pages},
                        ),
                    ]
                },
                "txn": {
                    "put": run(1, 500.0 / scale),
                    "runs": [
                        run(1, 300.0 / scale, counters={"client_cpu_ns": 50 * MS}),
                        run(64, 3000.0 / scale),
                    ],
                },
                "watch": {
                    "watchers": {
                        "leader": {"received": 500, "missing": 0, "latency_ms": lat(3.0, 9.0)},
                        "follower": {"received": 0, "missing": 500, "latency_ms": lat(0, 0)},
                    }
                },
            },
        }

    return {"config": cfg, "systems": {"paxoskv": system(2.0, 2), "etcd": system(1.0, 1)}}


def test_table_rows_of_the_api_scenarios():
    rows = {r["key"]: r for r in table_rows(doc_with_api())}
    r = rows["range_10000_c1_p50"]
    assert r["values"] == {"paxoskv": 4.0, "etcd": 2.0} and r["ratio"] == pytest.approx(0.5)
    assert r["label"] == "range 10,000 keys, 1 client p50"
    t = rows["range_100_c4_tput"]
    assert t["unit"] == "scan/s" and t["ratio"] == pytest.approx(0.5)
    assert rows["range_10000_requests"]["values"] == {"paxoskv": 2.0, "etcd": 1.0}
    assert rows["range_10000_requests"]["ratio"] is None
    assert rows["range_10000_cpu"]["values"] == {"paxoskv": 3.0, "etcd": 3.0}
    assert rows["range_10000_cpu"]["ratio"] is None and "range_100_cpu" not in rows
    assert rows["txn_cpu"]["values"]["paxoskv"] == pytest.approx(0.5)
    assert rows["txn_c64_tput"]["values"]["etcd"] == 3000.0
    assert rows["txn_put1_p50"]["values"] == {"paxoskv": 4.0, "etcd": 2.0}
    assert rows["txn_c1_p99"]["values"]["paxoskv"] == 18.0
    assert rows["watch_leader_p50"]["values"] == {"paxoskv": 3.0, "etcd": 3.0}
    # a watcher that got nothing has no latency (not 0 ms)
    assert "watch_follower_p50" not in rows
    assert all(r["target"] is None for r in rows.values())


def test_api_labels_fit_the_table_column():
    cfg = config_from_args(build_parser().parse_args(["--suite", "full"])).to_dict()
    for _key, label, unit, _better in api_rows(cfg):
        assert len(label) <= 43, label
        assert len(unit) <= 6, unit
