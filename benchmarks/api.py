"""The API scenarios of issue 14: range scans, transactions, watch latency.

The steady-state driver (benchmarks/driver.py) speaks each system's wire
protocol itself, one request per operation. These scenarios measure what
an application does through a client library instead, where one operation
may be several requests: this store is driven through `client.KVClient`
(`range` page after page, `txn`, `watch`), etcd through its gRPC API with
the hand-encoded messages of benchmarks/etcd.py (one `KV/Range`, one
`KV/Txn`, one `Watch/Watch` stream). Both are driven the same way:

- **Closed-loop clients as threads** (`run_api`, in the harness's worker
  processes: the same pool, warm-up, window and histograms as the other
  runs). Every logical client is a thread with a blocking client: its own
  `KVClient` (REQ sockets, leader discovery and retries inside), or the
  worker's gRPC channels, one per member, shared by its threads as etcd's
  clients share them (HTTP/2). Both ask the leader first; an etcd call that
  fails backs off and tries the next member, as `run_etcd` does; KVClient
  retries by itself. Latency runs from the first send of an operation to
  its last answer, so a scan's pages and every retry are inside it. The
  CPU time of the client's own thread over each operation is summed too
  (`counters["client_cpu_ns"]`: encoding, decoding, the library's Python;
  not ZeroMQ's or gRPC's I/O threads), so that a latency can be split
  into the client's work and the rest.
- **scan** (`{"op": "scan", "first": i, "count": n}`): a linearizable read
  of the n keys [key_name(i), key_name(i + n)). KVClient asks `range` again
  from `next_key` while `more` is set (the replicas bound a reply to
  kvstore.limits.MAX_RANGE_KEYS keys and MAX_RANGE_REPLY_BYTES bytes, so a
  10,000-key scan is two requests or more); etcd answers in one reply. A
  scan that returns another number of keys is an error. The KVClient
  decodes every key (msgpack, then a KeyValue each); the etcd side only
  walks the reply's top-level fields to count them (`scan_range_reply`):
  a pure-Python protobuf decoder would cost more than etcd's own client.
- **txn** (`{"op": "txn", "first": i}`): client c owns the keys
  key_name(i + 2c) and key_name(i + 2c + 1) (preloaded), reads their
  versions once, then loops: if both versions are the ones it knows, put
  the payload to both; the reply's revision is their new version. This
  store's `version` is the key's last modification revision, which is
  etcd's `mod_revision`, so etcd's Txn compares MOD. No two clients share
  a key, so every transaction succeeds (a failure is counted in
  `cas_failed` and the versions are read again).
- **put** (`{"op": "put", "first": i}`): client c PUTs the first key of
  its txn pair: the same client's single write, as a reference for the
  transactions measured minutes apart on a machine whose load changes.
- **watch** (`measure_watch`, in the harness's own process): one watcher on
  the leader and one on a follower watch a prefix; a writer PUTs keys under
  it at a steady rate (a warm-up first, until every watcher has seen an
  event); the latency of an event is the time from just before its PUT was
  sent to the moment its watcher's iterator returned it (one clock,
  CLOCK_MONOTONIC). Our watcher is `KVClient.watch` on a client that knows
  only that replica's address (so every long poll goes to it), started
  from the revision of a linearizable read through the whole cluster;
  etcd's is a Watch stream to that member. A last PUT of `<prefix>end`
  ends both.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks.driver import BACKOFF_MAX_NS, BACKOFF_MIN_NS, RunSpec, WorkerStats, _record, _Window
from benchmarks.histogram import Histogram
from benchmarks.workload import key_name, payload

SCAN, TXN, PUT = "scan", "txn", "put"
API_OPS = (SCAN, TXN, PUT)
# gRPC channels of the API clients: replies of 10,000 keys and more, and
# reconnects as quick as the steady-state driver's
ETCD_OPTIONS = (
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 200),
)


def scan_bounds(first: int, count: int) -> tuple[bytes, bytes]:
    """[start, end) of the `count` keys from key_name(first) on."""
    return key_name(first), key_name(first + count)


def txn_keys(first: int, client_no: int) -> list[bytes]:
    """The two keys logical client `client_no` transacts on."""
    return [key_name(first + 2 * client_no), key_name(first + 2 * client_no + 1)]


# --------------------------------------------------------------------------
# one blocking client per system
# --------------------------------------------------------------------------
class PaxosApi:
    """A logical client of our store: one KVClient, leader first."""

    def __init__(self, spec: RunSpec) -> None:
        from client.client import KVClient

        ids = sorted(spec.endpoints)
        first = ids.index(spec.leader) if spec.leader in spec.endpoints else 0
        self.kv = KVClient(
            [spec.endpoints[i] for i in ids],
            timeout=max(5.0, 4 * spec.attempt_timeout),
            attempt_timeout=spec.attempt_timeout,
            first=first,
            **spec.kv_args,
        )

    def scan(self, start: bytes, end: bytes) -> tuple[int, int]:
        """(keys, requests) of a linearizable scan of [start, end)."""
        keys = pages = 0
        while True:
            page = self.kv.range(start, end)
            pages += 1
            keys += len(page.kvs)
            if not page.more or page.next_key is None:
                return keys, pages
            start = page.next_key

    def put(self, key: bytes, value: bytes) -> None:
        self.kv.put(key, value)

    def versions(self, keys: list[bytes]) -> list[int]:
        out = []
        for key in keys:
            found = self.kv.get_versioned(key)
            out.append(0 if found is None else found[1])
        return out

    def txn(self, keys: list[bytes], versions: list[int], value: bytes) -> int | None:
        """The new version of the keys, None when a comparison failed."""
        from client.txn import cmp, op

        resp = self.kv.txn(
            [cmp.version(k) == v for k, v in zip(keys, versions, strict=True)],
            [op.put(k, value) for k in keys],
        )
        return resp.revision if resp.succeeded else None

    def close(self) -> None:
        self.kv.close()


class EtcdChannels:
    """A worker's gRPC channels, one per member, and the leader hint its
    threads share; `call` tries the leader, then the next member, until
    `stop_ns` (then the error is raised: a run never outlives its window
    by much, even against a broken cluster)."""

    def __init__(
        self, spec: RunSpec, stats: WorkerStats, lock: threading.Lock, stop_ns: int
    ) -> None:
        import grpc

        self.grpc = grpc
        self.ids = sorted(spec.endpoints)
        self.leader = spec.leader if spec.leader in spec.endpoints else self.ids[0]
        self.timeout = spec.attempt_timeout
        self.stats = stats
        self.lock = lock
        self.stop_ns = stop_ns
        self.channels = {
            rid: grpc.insecure_channel(ep, options=ETCD_OPTIONS)
            for rid, ep in spec.endpoints.items()
        }
        self._methods: dict[tuple[int, str], Any] = {}

    def call(self, method: str, body: bytes, timeout: float | None = None) -> bytes:
        backoff = BACKOFF_MIN_NS
        target = self.leader
        while True:
            fn = self._methods.get((target, method))
            if fn is None:
                fn = self._methods[(target, method)] = self.channels[target].unary_unary(method)
            try:
                return fn(body, timeout=timeout or self.timeout)
            except self.grpc.RpcError as exc:
                with self.lock:
                    self.stats.errors[exc.code().name] += 1
                    self.stats.retries += 1
                if time.monotonic_ns() > self.stop_ns:
                    raise
                if self.leader == target:
                    self.leader = self.ids[(self.ids.index(target) + 1) % len(self.ids)]
                target = self.leader
                time.sleep(backoff / 1e9)
                backoff = min(backoff * 2, BACKOFF_MAX_NS)

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()


class EtcdApi:
    """A logical client of etcd on the worker's shared channels."""

    def __init__(self, channels: EtcdChannels) -> None:
        self.ch = channels

    def scan(self, start: bytes, end: bytes) -> tuple[int, int]:
        from benchmarks import etcd as pb

        reply = self.ch.call(pb.KV_RANGE, pb.encode_range(start, range_end=end), timeout=30.0)
        keys, more, _count = pb.scan_range_reply(reply)
        if more:
            raise RuntimeError("etcd cut a range without a limit")
        return keys, 1

    def put(self, key: bytes, value: bytes) -> None:
        from benchmarks import etcd as pb

        self.ch.call(pb.KV_PUT, pb.encode_put(key, value))

    def versions(self, keys: list[bytes]) -> list[int]:
        from benchmarks import etcd as pb

        return [
            pb.decode_mod_revision(self.ch.call(pb.KV_RANGE, pb.encode_range(k))) or 0 for k in keys
        ]

    def txn(self, keys: list[bytes], versions: list[int], value: bytes) -> int | None:
        from benchmarks import etcd as pb

        reply = self.ch.call(pb.KV_TXN, pb.encode_txn_mod(keys, versions, value))
        if not pb.decode_txn_succeeded(reply):
            return None
        return pb.decode_header(pb.parse_fields(reply)[1][0])["revision"]

    def close(self) -> None:
        pass  # the channels are the worker's


# --------------------------------------------------------------------------
# the closed loop of a worker's threads
# --------------------------------------------------------------------------
def run_api(
    spec: RunSpec, client_nos: list[int], start_ns: int, quota: int | None, progress: Any
) -> WorkerStats:
    """This worker's share of the logical clients of an API run, a thread
    each, from the common start to the end of the window (duration runs
    only); returns the worker's stats (the harness merges them)."""
    if spec.duration is None or spec.api is None:
        raise ValueError("an API run needs a duration and an op")
    op = spec.api["op"]
    if op not in API_OPS:
        raise ValueError(f"unknown API op {op!r}")
    stats = WorkerStats()
    stats.hists[op] = Histogram()
    lock = threading.Lock()
    win = _Window(spec, start_ns, None)
    value = payload(spec.workload.value_size, spec.workload.seed)
    # A thread blocked in a call at the end of the window finishes it (not
    # recorded); one still blocked after the attempt budget is abandoned.
    give_up = win.end_ns + int((4 * spec.attempt_timeout + 30) * 1e9)
    # etcd calls are retried until the window closes (an answer after it
    # would not be recorded anyway)
    channels = EtcdChannels(spec, stats, lock, win.end_ns) if spec.system == "etcd" else None

    def make() -> PaxosApi | EtcdApi:
        return PaxosApi(spec) if channels is None else EtcdApi(channels)

    def client(no: int) -> None:
        api = make()
        try:
            if op == SCAN:
                _scan_loop(api, spec.api, win, stats, lock)
            elif op == TXN:
                _txn_loop(api, txn_keys(spec.api["first"], no), value, win, stats, lock)
            else:
                _put_loop(api, txn_keys(spec.api["first"], no)[0], value, win, stats, lock)
        finally:
            api.close()

    while time.monotonic_ns() < start_ns:
        time.sleep(min(0.005, max(0.0, (start_ns - time.monotonic_ns()) / 1e9)))
    threads = [threading.Thread(target=client, args=(no,), daemon=True) for no in client_nos]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive() and time.monotonic_ns() < give_up:
                t.join(0.05)
                if progress is not None:
                    progress.value = stats.completed_total
        stats.abandoned = sum(t.is_alive() for t in threads)
    finally:
        if progress is not None:
            progress.value = stats.completed_total
        if channels is not None:
            channels.close()
    return stats


def _count_error(stats: WorkerStats, lock: threading.Lock, exc: Exception) -> None:
    with lock:
        stats.errors[f"{type(exc).__name__}: {exc}"[:120]] += 1


def _scan_loop(
    api: PaxosApi | EtcdApi,
    params: dict[str, Any],
    win: _Window,
    stats: WorkerStats,
    lock: threading.Lock,
) -> None:
    start, end = scan_bounds(params["first"], params["count"])
    while win.may_issue(time.monotonic_ns()):
        cpu0 = time.thread_time_ns()
        t0 = time.monotonic_ns()
        try:
            keys, requests = api.scan(start, end)
        except Exception as exc:  # noqa: BLE001 - counted; the client goes on
            _count_error(stats, lock, exc)
            time.sleep(0.01)
            continue
        t1 = time.monotonic_ns()
        cpu = time.thread_time_ns() - cpu0
        with lock:
            if keys != params["count"]:
                stats.errors[f"short scan: {keys:,} of {params['count']:,} keys"] += 1
                continue
            _record(stats, win, SCAN, t0, t1, False)
            if t0 >= win.measure_from and t1 <= win.end_ns:
                stats.counters["requests"] += requests
                stats.counters["keys"] += keys
                stats.counters["client_cpu_ns"] += cpu


def _txn_loop(
    api: PaxosApi | EtcdApi,
    keys: list[bytes],
    value: bytes,
    win: _Window,
    stats: WorkerStats,
    lock: threading.Lock,
) -> None:
    versions: list[int] | None = None
    while win.may_issue(time.monotonic_ns()):
        try:
            if versions is None:
                versions = api.versions(keys)
                continue
            cpu0 = time.thread_time_ns()
            t0 = time.monotonic_ns()
            revision = api.txn(keys, versions, value)
            t1 = time.monotonic_ns()
            cpu = time.thread_time_ns() - cpu0
        except Exception as exc:  # noqa: BLE001 - counted; read the versions again
            _count_error(stats, lock, exc)
            versions = None
            time.sleep(0.01)
            continue
        with lock:
            _record(stats, win, TXN, t0, t1, False)
            if t0 >= win.measure_from and t1 <= win.end_ns:
                stats.counters["client_cpu_ns"] += cpu
            if revision is None:
                stats.cas_failed += 1
        versions = None if revision is None else [revision] * len(keys)


def _put_loop(
    api: PaxosApi | EtcdApi,
    key: bytes,
    value: bytes,
    win: _Window,
    stats: WorkerStats,
    lock: threading.Lock,
) -> None:
    while win.may_issue(time.monotonic_ns()):
        cpu0 = time.thread_time_ns()
        t0 = time.monotonic_ns()
        try:
            api.put(key, value)
        except Exception as exc:  # noqa: BLE001 - counted; the client goes on
            _count_error(stats, lock, exc)
            time.sleep(0.01)
            continue
        t1 = time.monotonic_ns()
        cpu = time.thread_time_ns() - cpu0
        with lock:
            _record(stats, win, PUT, t0, t1, False)
            if t0 >= win.measure_from and t1 <= win.end_ns:
                stats.counters["client_cpu_ns"] += cpu


# --------------------------------------------------------------------------
# watch latency (in the harness's process)
# --------------------------------------------------------------------------
def event_index(key: bytes, prefix: bytes) -> int | None:
    """The write number of a measured key (prefix + 8 digits), else None
    (the warm-up keys and the final one)."""
    tail = key[len(prefix) :]
    return int(tail) if key.startswith(prefix) and len(tail) == 8 and tail.isdigit() else None


def watch_latencies(sent: dict[int, int], received: dict[int, int]) -> tuple[Histogram, int]:
    """The histogram of receive - send (ns) over the writes a watcher got,
    and how many writes it never got."""
    hist = Histogram()
    missing = 0
    for i, t_send in sent.items():
        t_recv = received.get(i)
        if t_recv is None:
            missing += 1
        else:
            hist.record(max(0, t_recv - t_send))
    return hist, missing


class Watcher:
    """A thread that watches `prefix` at one replica and keeps the time it
    received each measured key (`received`: write number -> ns), until the
    key prefix + b"end". `events` counts every event it got."""

    def __init__(self, name: str, prefix: bytes) -> None:
        self.name = name
        self.prefix = prefix
        self.received: dict[int, int] = {}
        self.events = 0
        self.error: str | None = None
        self.seen_any = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _events(self) -> Iterator[bytes]:
        """The keys of the events, as they arrive (one per event)."""
        raise NotImplementedError

    def _run(self) -> None:
        end = self.prefix + b"end"
        try:
            for key in self._events():
                now = time.monotonic_ns()
                self.events += 1
                self.seen_any.set()
                i = event_index(key, self.prefix)
                if i is not None:
                    self.received.setdefault(i, now)
                elif key == end:
                    return
        except Exception as exc:  # noqa: BLE001 - reported in the result
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.seen_any.set()
            self.close()

    def close(self) -> None:
        """Releases the watcher's client (from its own thread, at its end)."""

    def stop(self) -> None:
        """Ends a watcher that is still waiting (from another thread), when
        the client allows it."""


class PaxosWatcher(Watcher):
    """`KVClient.watch` on a client that knows only `address`."""

    def __init__(
        self, name: str, prefix: bytes, address: str, start_revision: int, kv_args: dict[str, str]
    ) -> None:
        super().__init__(name, prefix)
        from client.client import KVClient

        self.kv = KVClient([address], timeout=10.0, **kv_args)
        self.start_revision = start_revision
        self._it: Any = None

    def _events(self) -> Iterator[bytes]:
        self._it = self.kv.watch(self.prefix, prefix=True, start_revision=self.start_revision)
        for ev in self._it:
            yield ev.key

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
        self.kv.close()


class EtcdWatcher(Watcher):
    """A Watch stream to one member."""

    def __init__(self, name: str, prefix: bytes, endpoint: str) -> None:
        super().__init__(name, prefix)
        import grpc

        self.channel = grpc.insecure_channel(endpoint, options=ETCD_OPTIONS)
        self._stop = threading.Event()
        self._call: Any = None

    def _requests(self) -> Iterator[bytes]:
        from benchmarks import etcd as pb
        from kvstore.protocol import prefix_end

        yield pb.encode_watch_create(self.prefix, prefix_end(self.prefix))
        self._stop.wait()  # the stream stays open until the watcher ends

    def _events(self) -> Iterator[bytes]:
        from benchmarks import etcd as pb

        self._call = self.channel.stream_stream(pb.WATCH)(self._requests())
        for reply in self._call:
            resp = pb.decode_watch_response(reply)
            if resp["canceled"]:
                raise RuntimeError(f"etcd canceled the watch: {resp['cancel_reason']}")
            for _kind, key, _rev in resp["events"]:
                yield key

    def close(self) -> None:
        self._stop.set()
        if self._call is not None:
            self._call.cancel()
        self.channel.close()

    def stop(self) -> None:
        self.close()


def measure_watch(
    put: Callable[[bytes, bytes], object],
    watchers: list[Watcher],
    prefix: bytes,
    rate: float,
    duration: float,
    value: bytes,
    ready_timeout: float = 10.0,
    progress: Callable[[float, int], None] | None = None,
) -> dict[str, Any]:
    """Starts the watchers, PUTs warm-up keys until each has seen an event,
    then `rate` PUTs a second for `duration` seconds (each PUT right after
    the previous one returns when behind), then the end key; returns the
    PUT latencies and, per watcher, the PUT-to-event latencies."""
    for w in watchers:
        w.start()
    t_ready0 = time.monotonic()
    n = 0
    while not all(w.seen_any.is_set() for w in watchers):
        if time.monotonic() - t_ready0 > ready_timeout:
            raise TimeoutError(f"a watcher saw no event within {ready_timeout:g} s")
        put(prefix + b"warm%06d" % n, value)
        n += 1
        time.sleep(0.02)
    ready_s = time.monotonic() - t_ready0
    sent: dict[int, int] = {}
    put_hist = Histogram()
    interval = 1e9 / rate
    total = max(1, int(rate * duration))
    t_start = time.monotonic_ns()
    for i in range(total):
        due = t_start + int(i * interval)
        now = time.monotonic_ns()
        if due > now:
            time.sleep((due - now) / 1e9)
        t0 = time.monotonic_ns()
        sent[i] = t0
        put(prefix + b"%08d" % i, value)
        put_hist.record(time.monotonic_ns() - t0)
        if progress is not None:
            progress((time.monotonic_ns() - t_start) / 1e9, i + 1)
    write_s = (time.monotonic_ns() - t_start) / 1e9
    put(prefix + b"end", value)
    for w in watchers:
        w.thread.join(10.0)
    out: dict[str, Any] = {
        "rate": rate,
        "writes": total,
        "write_s": round(write_s, 3),
        "achieved_rate": total / write_s if write_s > 0 else None,
        "warmup_writes": n,
        "ready_s": round(ready_s, 3),
        "put_latency_ms": put_hist.summary(),
        "watchers": {},
    }
    for w in watchers:
        if w.thread.is_alive():
            # A KVClient cannot be closed from another thread: a stuck one
            # (a broken cluster) is left to its daemon thread.
            w.error = w.error or "the watcher did not see the end key within 10 s"
            w.stop()
        hist, missing = watch_latencies(sent, w.received)
        out["watchers"][w.name] = {
            "events": w.events,
            "received": len(w.received),
            "missing": missing,
            "error": w.error,
            "latency_ms": hist.summary(),
            "histogram": hist.to_dict(),
        }
    return out


def random_prefix() -> bytes:
    """A fresh watch prefix per run (a rerun on one cluster starts clean)."""
    return b"watch%06d/" % random.randrange(1_000_000)
