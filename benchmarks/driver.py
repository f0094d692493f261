"""The load generator: one worker process running many closed-loop clients.

The harness (benchmarks/harness.py) starts a few worker processes (spawned,
so no ZeroMQ or gRPC state crosses a fork) and gives each a share of the
logical clients. A logical client has one request outstanding at a time
(closed loop): it sends, waits for the answer, records the latency, sends
the next. The GIL makes threads useless here; instead each worker
multiplexes its clients on one event loop:

- paxoskv: every logical client has its own 16-byte client_id and seq, and
  one ZeroMQ DEALER socket per replica it has talked to. A DEALER speaks to
  the replica's ROUTER as a REQ socket would: [b"", request] out, [b"",
  reply] back. One zmq.Poller covers all the sockets of the worker. A
  REDIRECT resends the same frame (same seq: exactly-once) to the named
  leader and tells the other clients of the worker; UNAVAILABLE backs off
  (5 ms doubling to 100 ms) and tries the next replica; silence for
  `attempt_timeout` closes that socket (a late reply must not be taken for
  the next request's) and tries the next replica with the same frame.
- etcd: grpc.aio, one channel per member per worker (HTTP/2 multiplexes the
  worker's clients on it, as etcd's own clients do), one coroutine per
  logical client. Errors (leader lost, member down, deadline) back off and
  try the next member with the same request.

A RunSpec with `api` set runs the API scenarios instead (range scans and
transactions through the client libraries, a thread per logical client:
benchmarks/api.py), in the same workers, window and histograms.

Both send to the leader first (the harness tells them which it is); both
measure from the first send of a request to its final answer, so retries
and redirects are inside the latency.

Latencies go into per-op histograms (benchmarks/histogram.py), in
nanoseconds of CLOCK_MONOTONIC (system-wide on Linux, so the parent and the
workers share a time base). Only requests started after the warm-up and
finished before the end of the window count. Requests still outstanding at
the end are abandoned.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import resource
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from msgpack import packb as _packb
from msgpack import unpackb as _unpackb

from benchmarks.histogram import Histogram
from benchmarks.workload import CAS, GET, OPS, PUT, OpStream, WorkloadSpec, key_name, payload

MS = 1_000_000
BACKOFF_MIN_NS = 5 * MS
BACKOFF_MAX_NS = 100 * MS


@dataclass
class RunSpec:
    """One run of a workload against one cluster, as handed to the workers."""

    system: str  # "paxoskv" or "etcd"
    endpoints: dict[int, str]  # replica id -> address
    leader: int | None
    clients: int
    workload: WorkloadSpec
    duration: float | None = 5.0  # seconds of measurement (None: run `ops`)
    ops: int | None = None  # total operations to complete (with duration None)
    warmup: float = 0.5
    attempt_timeout: float = 1.0
    timeline: bool = False  # keep every completion time (failover scenario)
    client_base: int = 0  # logical client numbers start here (distinct streams per run)
    curve: list[str] | None = None  # CURVE: [server key, public, secret] (Z85); None: plaintext
    # the API scenarios (benchmarks/api.py): {"op": "scan"|"txn", ...}; the
    # logical clients are then threads with blocking clients (KVClient, gRPC)
    api: dict[str, Any] | None = None
    kv_args: dict[str, str] = field(default_factory=dict)  # KVClient's key files (CURVE)
    # linearizable GETs vouched for by the other replicas, as KVClient sends them
    # (replica/paxos.py "Vouched reads"); False: a heartbeat round confirms them
    vouch_reads: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["workload"] = self.workload.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        d = dict(d)
        d["workload"] = WorkloadSpec(**d["workload"])
        d["endpoints"] = {int(k): v for k, v in d["endpoints"].items()}
        return cls(**d)


@dataclass
class WorkerStats:
    hists: dict[str, Histogram] = field(
        default_factory=lambda: {PUT: Histogram(), GET: Histogram(), CAS: Histogram()}
    )
    errors: Counter = field(default_factory=Counter)
    retries: int = 0
    redirects: int = 0
    cas_failed: int = 0
    not_found: int = 0
    abandoned: int = 0
    completed_total: int = 0  # including warm-up
    first_ns: int | None = None  # first measured completion
    last_ns: int | None = None  # last measured completion
    timeline: list[int] = field(default_factory=list)
    cpu_s: float = 0.0  # CPU time of this worker process during the run (all threads)
    counters: Counter = field(default_factory=Counter)  # API scenarios: requests, keys

    def to_dict(self) -> dict[str, Any]:
        return {
            "hists": {op: h.to_dict() for op, h in self.hists.items()},
            "errors": dict(self.errors),
            "retries": self.retries,
            "redirects": self.redirects,
            "cas_failed": self.cas_failed,
            "not_found": self.not_found,
            "abandoned": self.abandoned,
            "completed_total": self.completed_total,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "timeline": self.timeline,
            "cpu_s": self.cpu_s,
            "counters": dict(self.counters),
        }


class _Window:
    """The measurement window and the stop rule shared by both drivers."""

    def __init__(self, spec: RunSpec, start_ns: int, quota: int | None) -> None:
        self.start_ns = start_ns
        self.measure_from = start_ns + int(spec.warmup * 1e9)
        self.end_ns = (
            self.measure_from + int(spec.duration * 1e9) if spec.duration is not None else None
        )
        self.quota = quota  # measured ops this worker must complete (ops mode)
        self.issued_measured = 0

    def may_issue(self, now: int) -> bool:
        if self.end_ns is not None:
            return now < self.end_ns
        if now < self.measure_from:
            return True
        if self.quota is not None and self.issued_measured >= self.quota:
            return False
        self.issued_measured += 1
        return True


def _stream(spec: RunSpec, no: int) -> OpStream:
    return OpStream(spec.workload, no, no - spec.client_base, spec.clients)


def _record(
    stats: WorkerStats, win: _Window, op: str, t0: int, t1: int, keep_timeline: bool
) -> None:
    stats.completed_total += 1
    if keep_timeline:
        stats.timeline.append(t1)
    if t0 < win.measure_from or (win.end_ns is not None and t1 > win.end_ns):
        return
    stats.hists[op].record(t1 - t0)
    if stats.first_ns is None:
        stats.first_ns = t1
    stats.last_ns = t1


# --------------------------------------------------------------------------
# paxoskv over ZeroMQ
# --------------------------------------------------------------------------
def fast_encode(
    op: str, cid: bytes, seq: int, key: bytes, value: bytes, vouched: bool = False
) -> bytes:
    """`kvstore.protocol.encode_request` of a PUT, GET or CAS (expected value =
    new value), without building a Request; the unit tests check that the
    bytes are identical. `vouched`: a GET whose vouch nonce is `seq` (every
    request of a logical client has a seq of its own)."""
    from kvstore.protocol import PROTOCOL_VERSION, Op

    if op == PUT:
        fields = [PROTOCOL_VERSION, int(Op.PUT), cid, seq, key, value, None, None, False]
    elif op == GET:
        nonce = seq if vouched else None
        fields = [PROTOCOL_VERSION, int(Op.GET), cid, seq, key, None, None, nonce, False]
    else:
        fields = [PROTOCOL_VERSION, int(Op.CAS), cid, seq, key, value, value, None, False]
    return _packb(fields, use_bin_type=True)


def fast_vouch(cid: bytes, nonce: int, target: int) -> bytes:
    """`encode_request` of the VOUCH for the GET of nonce `nonce` sent to
    replica `target`."""
    from kvstore.protocol import PROTOCOL_VERSION, Op

    fields = [PROTOCOL_VERSION, int(Op.VOUCH), cid, nonce, b"", None, None, target, False]
    return _packb(fields, use_bin_type=True)


def fast_status(frame: bytes) -> int:
    """The status of an encoded Response (-1 if it is not a response); the
    full `decode_response` runs only for the rare non-final statuses."""
    return fast_status_pause(frame)[0]


def fast_status_pause(frame: bytes) -> tuple[int, bool]:
    """`fast_status`, and whether the answer asks for GETs without VOUCH
    for a while (its `info` is {"vouch": False}: a busy leader)."""
    try:
        obj = _unpackb(frame, raw=False)
    except Exception:  # noqa: BLE001
        return -1, False
    if not isinstance(obj, list) or len(obj) != 7:
        return -1, False
    info = obj[6]
    return obj[1], type(info) is dict and info.get("vouch") is False


def check_workload(workload: WorkloadSpec) -> None:
    """Raises ValueError if the replicas would refuse the requests of this
    workload (a key or value over kvstore.limits), as judged by their own
    `parse_request` on one request of each op with the longest key: such a
    workload fails before its run instead of counting an error a request."""
    from kvstore.protocol import Response, parse_request

    if workload.distribution == "sequential":
        ops = [PUT]
    else:
        ops = [op for op in OPS if workload.mix.get(op, 0) > 0]
    key = key_name(workload.key_offset + workload.keys - 1)
    value = payload(workload.value_size, workload.seed)
    for op in ops:
        parsed = parse_request(fast_encode(op, bytes(16), 1, key, value))
        if isinstance(parsed, Response):
            raise ValueError(
                f"the replicas would refuse every {op} of this workload: "
                f"{parsed.status.name}: {parsed.error}"
            )


class _ZClient:
    __slots__ = ("idx", "cid", "seq", "stream", "op", "frame", "t0", "target", "attempt",
                 "deadline", "backoff", "active", "vouched", "vouch_from")  # fmt: skip

    def __init__(self, idx: int, stream: OpStream, cid: bytes) -> None:
        self.idx = idx
        self.cid = cid
        self.seq = 0
        self.stream = stream
        self.op = PUT
        self.frame = b""
        self.t0 = 0
        self.target = 0
        self.attempt = 0
        self.deadline = 0
        self.backoff = BACKOFF_MIN_NS
        self.active = False
        self.vouched = False  # the request in flight is a GET with VOUCHes
        self.vouch_from = 0  # its GETs ask for vouches from this time on (monotonic ns)


def run_paxoskv(
    spec: RunSpec, client_nos: list[int], start_ns: int, quota: int | None, progress: Any
) -> WorkerStats:
    """The closed loop of this worker's clients against our replicas.

    One DEALER per replica carries all the worker's logical clients: a
    request goes out as [tag, b"", request] and the replica's ROUTER sends
    the reply back with the same envelope (every frame up to the empty
    delimiter, as for a REQ socket behind a proxy), so the reply arrives as
    [tag, b"", reply]. The 8-byte tag names the logical client and its
    attempt: a late reply to an attempt that was given up is recognised
    and dropped. The sessions are per logical client (client_id, seq), as
    the replicas see them."""
    import zmq

    from kvstore.protocol import VOUCH_PAUSE_S, Status, decode_response

    ctx = zmq.Context()
    SNDMORE = int(zmq.SNDMORE)
    stats = WorkerStats()
    win = _Window(spec, start_ns, quota)
    ids = sorted(spec.endpoints)
    leader = [spec.leader if spec.leader in spec.endpoints else ids[0]]
    value = payload(spec.workload.value_size, spec.workload.seed)
    fresh, vsize, urandom = spec.workload.fresh_values, spec.workload.value_size, os.urandom
    timeout_ns = int(spec.attempt_timeout * 1e9)
    keep_tl = spec.timeline
    # Fresh random client ids for every run: a worker process serves many
    # runs, and the replicas remember every (client_id, seq) they applied.
    clients = [_ZClient(i, _stream(spec, no), os.urandom(16)) for i, no in enumerate(client_nos)]
    wakeups: list[tuple[int, int, _ZClient]] = []  # (time, tiebreak, client) to resend
    NOT_FOUND, CAS_FAILED = int(Status.NOT_FOUND), int(Status.CAS_FAILED)
    REDIRECT, UNAVAILABLE = Status.REDIRECT, Status.UNAVAILABLE
    FINAL = (int(Status.OK), NOT_FOUND, CAS_FAILED)
    NOBLOCK = zmq.NOBLOCK
    now_ns = time.monotonic_ns
    suspect_until: dict[int, int] = {}  # replicas that just timed out

    socks: dict[int, Any] = {}
    poller = zmq.Poller()
    for rid in ids:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        if spec.curve:
            server, public, secret = (k.encode() for k in spec.curve)
            s.setsockopt(zmq.CURVE_SERVERKEY, server)
            s.setsockopt(zmq.CURVE_PUBLICKEY, public)
            s.setsockopt(zmq.CURVE_SECRETKEY, secret)
        s.connect(spec.endpoints[rid])
        socks[rid] = s
        poller.register(s, zmq.POLLIN)

    vouch_reads = spec.vouch_reads and len(ids) > 1
    vouch_pause_ns = int(VOUCH_PAUSE_S * 1e9)

    def send(c: _ZClient, now: int) -> None:
        c.attempt += 1
        target = c.target
        s = socks[target]
        s.send(((c.attempt << 16) | c.idx).to_bytes(8, "little"), SNDMORE)
        s.send(b"", SNDMORE)
        s.send(c.frame, 0, copy=True)
        c.deadline = now + timeout_ns
        if c.vouched:
            vouch = fast_vouch(c.cid, c.seq, target)
            tag = c.idx.to_bytes(8, "little")  # attempt 0: an answer would be dropped
            for rid, other in socks.items():
                if rid != target:
                    other.send(tag, SNDMORE)
                    other.send(b"", SNDMORE)
                    other.send(vouch, 0)

    def start_next(c: _ZClient, now: int) -> None:
        nxt = c.stream.next() if win.may_issue(now) else None
        if nxt is None:
            c.active = False
            return
        op, key = nxt
        c.seq += 1
        c.op = op
        v = urandom(vsize) if fresh and op == PUT else value
        c.vouched = vouch_reads and op == GET and now >= c.vouch_from
        c.frame = fast_encode(op, c.cid, c.seq, key, v, c.vouched)
        c.t0 = now
        c.target = leader[0]
        c.backoff = BACKOFF_MIN_NS
        c.active = True
        send(c, now)

    def next_target(c: _ZClient, now: int) -> int:
        """The leader hint unless it is the replica that just failed us or
        is suspect; else the next replica that is not suspect."""
        hint = leader[0]
        if hint != c.target and suspect_until.get(hint, 0) <= now:
            return hint
        i = ids.index(c.target)
        for k in range(1, len(ids) + 1):
            rid = ids[(i + k) % len(ids)]
            if suspect_until.get(rid, 0) <= now and rid != c.target:
                return rid
        return ids[(i + 1) % len(ids)]

    def retry_later(c: _ZClient, now: int) -> None:
        stats.retries += 1
        c.target = next_target(c, now)
        c.attempt += 1  # any reply to the attempt given up is now stale
        c.deadline = 1 << 62
        heapq.heappush(wakeups, (now + c.backoff, c.idx, c))
        c.backoff = min(c.backoff * 2, BACKOFF_MAX_NS)

    def on_reply(frames: list[bytes], now: int) -> None:
        if len(frames) != 3:
            stats.errors["malformed reply envelope"] += 1
            return
        tag = int.from_bytes(frames[0], "little")
        idx = tag & 0xFFFF
        if idx >= len(clients):
            return
        c = clients[idx]
        if not c.active or (tag >> 16) != c.attempt:
            return  # a reply to an attempt we gave up on
        st, pause = fast_status_pause(frames[2])
        if pause and c.vouched:  # a busy leader: GETs without VOUCH for a while
            c.vouch_from = now + vouch_pause_ns
        if st in FINAL:
            if st == NOT_FOUND:
                stats.not_found += 1
            elif st == CAS_FAILED:
                stats.cas_failed += 1
            _record(stats, win, c.op, c.t0, now, keep_tl)
            if c.target != leader[0]:
                leader[0] = c.target
            start_next(c, now)
            return
        try:
            resp = decode_response(frames[2])
        except Exception:  # noqa: BLE001
            stats.errors["undecodable reply"] += 1
            retry_later(c, now)
            return
        st = resp.status
        if (
            st == REDIRECT
            and resp.leader in spec.endpoints
            and resp.leader != c.target
            and suspect_until.get(resp.leader, 0) <= now
        ):
            stats.redirects += 1
            c.target = resp.leader
            leader[0] = resp.leader
            send(c, now)
        elif st in (REDIRECT, UNAVAILABLE):
            retry_later(c, now)
        else:
            stats.errors[f"{st.name}: {resp.error}"[:120]] += 1
            start_next(c, now)

    # Wait for the common start (the sockets are connected by now).
    while now_ns() < start_ns:
        time.sleep(min(0.005, max(0.0, (start_ns - now_ns()) / 1e9)))
    now = now_ns()
    for c in clients:
        start_next(c, now)

    last_scan = now
    last_progress = now
    grace_end: int | None = None
    try:
        while True:
            now = now_ns()
            if win.end_ns is not None and now >= win.end_ns:
                stats.abandoned = sum(1 for c in clients if c.active)
                break
            if now - last_scan >= 5 * MS:
                last_scan = now
                active = 0
                for c in clients:
                    if c.active:
                        active += 1
                        if c.deadline <= now:
                            stats.errors["attempt timeout"] += 1
                            suspect_until[c.target] = now + 2 * timeout_ns
                            retry_later(c, now)
                if active == 0 and not wakeups:
                    break
                if progress is not None and now - last_progress >= 50 * MS:
                    last_progress = now
                    progress.value = stats.completed_total
                if (
                    win.end_ns is None
                    and grace_end is None
                    and win.quota is not None
                    and win.issued_measured >= win.quota
                ):
                    grace_end = now + 2 * timeout_ns + 5_000 * MS
                if grace_end is not None and now > grace_end:
                    stats.abandoned = active
                    break
            wait_ms = 5
            if wakeups:
                wait_ms = max(0, min(wait_ms, (wakeups[0][0] - now) // MS))
            if win.end_ns is not None:
                wait_ms = max(0, min(wait_ms, (win.end_ns - now) // MS + 1))
            for s, _ in poller.poll(wait_ms):
                for _ in range(1024):
                    try:
                        frames = s.recv_multipart(NOBLOCK)
                    except zmq.Again:
                        break
                    on_reply(frames, now_ns())
            if wakeups:
                now = now_ns()
                while wakeups and wakeups[0][0] <= now:
                    _, _, c = heapq.heappop(wakeups)
                    if c.active:
                        send(c, now)
    finally:
        if progress is not None:
            progress.value = stats.completed_total
        for s in socks.values():
            s.close(0)
        ctx.term()
    return stats


# --------------------------------------------------------------------------
# etcd over gRPC (grpc.aio)
# --------------------------------------------------------------------------
def run_etcd(
    spec: RunSpec, client_nos: list[int], start_ns: int, quota: int | None, progress: Any
) -> WorkerStats:
    import asyncio

    return asyncio.run(_run_etcd_async(spec, client_nos, start_ns, quota, progress))


async def _run_etcd_async(
    spec: RunSpec, client_nos: list[int], start_ns: int, quota: int | None, progress: Any
) -> WorkerStats:
    import asyncio

    import grpc

    from benchmarks import etcd as pb

    stats = WorkerStats()
    win = _Window(spec, start_ns, quota)
    ids = sorted(spec.endpoints)
    leader = [spec.leader if spec.leader in spec.endpoints else ids[0]]
    value = payload(spec.workload.value_size, spec.workload.seed)
    fresh, vsize = spec.workload.fresh_values, spec.workload.value_size
    keep_tl = spec.timeline
    now_ns = time.monotonic_ns
    options = [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.initial_reconnect_backoff_ms", 20),
        ("grpc.min_reconnect_backoff_ms", 20),
        ("grpc.max_reconnect_backoff_ms", 200),
    ]
    channels = {
        rid: grpc.aio.insecure_channel(ep, options=options) for rid, ep in spec.endpoints.items()
    }
    methods = {
        rid: {
            PUT: ch.unary_unary(pb.KV_PUT),
            GET: ch.unary_unary(pb.KV_RANGE),
            CAS: ch.unary_unary(pb.KV_TXN),
        }
        for rid, ch in channels.items()
    }
    for ch in channels.values():
        with contextlib.suppress(Exception):  # a member may be down (failover runs)
            await asyncio.wait_for(ch.channel_ready(), timeout=5)
    while now_ns() < start_ns:
        await asyncio.sleep(min(0.005, max(0.0, (start_ns - now_ns()) / 1e9)))

    async def client(no: int) -> None:
        stream = _stream(spec, no)
        while True:
            now = now_ns()
            nxt = stream.next() if win.may_issue(now) else None
            if nxt is None:
                return
            op, key = nxt
            if op == PUT:
                body = pb.encode_put(key, os.urandom(vsize) if fresh else value)
            elif op == GET:
                body = pb.encode_range(key)
            else:
                body = pb.encode_cas(key, value, value)
            t0 = now
            backoff = BACKOFF_MIN_NS
            target = leader[0]
            while True:
                try:
                    reply = await methods[target][op](body, timeout=spec.attempt_timeout)
                    break
                except grpc.aio.AioRpcError as exc:
                    stats.errors[f"{exc.code().name}"] += 1
                    stats.retries += 1
                    if leader[0] == target:
                        leader[0] = ids[(ids.index(target) + 1) % len(ids)]
                    target = leader[0]
                    await asyncio.sleep(backoff / 1e9)
                    backoff = min(backoff * 2, BACKOFF_MAX_NS)
            t1 = now_ns()
            if op == GET:
                if pb.decode_range_value(reply) is None:
                    stats.not_found += 1
            elif op == CAS and not pb.decode_txn_succeeded(reply):
                stats.cas_failed += 1
            _record(stats, win, op, t0, t1, keep_tl)

    async def reporter() -> None:
        while True:
            if progress is not None:
                progress.value = stats.completed_total
            await asyncio.sleep(0.05)

    rep = asyncio.create_task(reporter())
    tasks = [asyncio.create_task(client(no)) for no in client_nos]
    try:
        if win.end_ns is not None:
            remaining = max(0.0, (win.end_ns - now_ns()) / 1e9)
            done, pending = await asyncio.wait(tasks, timeout=remaining)
        else:
            done, pending = await asyncio.wait(tasks)
        stats.abandoned = len(pending)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        rep.cancel()
        if progress is not None:
            progress.value = stats.completed_total
        for ch in channels.values():
            await ch.close(grace=None)
    return stats


# --------------------------------------------------------------------------
# the worker process
# --------------------------------------------------------------------------
def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def worker_loop(wid: int, task_q: Any, ready_q: Any, result_q: Any, progress: Any) -> None:
    """Entry point of a spawned worker: for each task, set up, say ready,
    wait for ("go", start_ns), run, send back the stats. None ends it."""
    import zmq  # noqa: F401 - the imports happen once, before any run

    import kvstore.protocol  # noqa: F401

    with contextlib.suppress(ImportError):
        import grpc  # noqa: F401
    while True:
        task = task_q.get()
        if task is None:
            return
        spec_dict, client_nos, quota = task
        try:
            spec = RunSpec.from_dict(spec_dict)
            run = run_paxoskv if spec.system == "paxoskv" else run_etcd
            if spec.api is not None:
                from benchmarks.api import run_api as run
            elif spec.system == "paxoskv":
                check_workload(spec.workload)
            if spec.workload.distribution == "zipfian":  # the O(keys) set-up, before the start
                from benchmarks.workload import _zipf_cdf

                _zipf_cdf(spec.workload.keys, spec.workload.theta)
            ready_q.put(("ready", wid, None))
            go = task_q.get()
            if go is None:
                return
            progress.value = 0
            cpu0 = _cpu_seconds()
            stats = run(spec, client_nos, go[1], quota, progress)
            stats.cpu_s = _cpu_seconds() - cpu0
            result_q.put(("ok", wid, stats.to_dict()))
        except BaseException:  # noqa: BLE001 - report everything to the parent
            msg = traceback.format_exc()
            try:
                ready_q.put(("error", wid, msg))
                result_q.put(("error", wid, msg))
            except Exception:  # noqa: BLE001
                pass
            return
