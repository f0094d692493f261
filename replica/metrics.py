"""Prometheus metrics and HTTP health checks of one replica.

Theory of operation
-------------------
The replica's event loop is single-threaded and hot; the metrics must not
slow it down or race with it. So the work is split in two:

- The loop COUNTS, in plain Python ints, dicts and `replica.counters`
  histograms: the driver (`ReplicaDriver.counters`: proposals, commits,
  leader changes, snapshot installs), the peer transport (messages and
  bytes per peer), `BadFrames` (dropped input per kind), and the wrappers
  installed here by `ReplicaMetrics`: `RequestMeter` around the client
  replier (requests by op and status, latency from arrival to reply) and
  `TimedStorage` around the acceptor storage (the synced batch, i.e. the
  fsync). Once per iteration `ReplicaMetrics.on_input` tags the new
  requests, notes the commit index the leader announces in heartbeats,
  watches for catch-up, and, only if the HTTP thread asked, copies all of
  the above into a frozen `Snapshot`.
- A daemon thread serves HTTP (`MetricsServer`). A request asks the loop
  for a fresh snapshot (an Event the loop sets at its next iteration, at
  most a tick away) and reads only that snapshot: never the driver, the
  core or the DB. If the loop does not answer in time (stalled in a long
  write), the last snapshot is used and `/health` says so.

Endpoints: `/metrics` (Prometheus text format, or OpenMetrics if asked;
`ReplicaCollector`, built on prometheus_client), `/health` (200 while the
event loop answers and the DB is readable) and `/ready` (200 while this
replica knows a leader and its applied index is within `ready_max_lag`
slots of the commit index that leader announced); each answers a short
JSON object. Metric names and their meaning: README.md, "Monitoring".
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any

import msgpack
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from kvstore.protocol import PROTOCOL_VERSION, Op, Status
from replica.counters import Histogram
from replica.logfmt import event
from replica.messages import Heartbeat

log = logging.getLogger("replica.metrics")

PREFIX = "paxoskv_"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Client request latency, arrival to reply (seconds)."""
FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
"""One synced acceptor batch (seconds)."""
CATCHUP_SLOTS = 100
"""A replica this many slots behind its leader's commit index is catching
up: the episode is counted and logged when it starts and when it ends."""
SCRAPE_WAIT_S = 1.0
"""How long an HTTP request waits for the loop's fresh snapshot."""
HEALTH_WAIT_S = 2.0
"""... for `/health`, whose point is whether the loop answers at all."""

_OP_NAMES = {int(op): op.name.lower() for op in Op}
_STATUS_NAMES = {int(status): status.name.lower() for status in Status}


def _by_prefix(names: dict[int, str]) -> dict[bytes, str]:
    """The fast path of `_field_two`: the first three bytes of a fixarray
    frame [PROTOCOL_VERSION, code, ...] -> the code's name."""
    return {
        bytes((0x90 | length, PROTOCOL_VERSION, code)): name
        for length in range(2, 16)
        for code, name in names.items()
        if 0 <= code < 0x80
    }


_OP_BY_PREFIX = _by_prefix(_OP_NAMES)
_STATUS_BY_PREFIX = _by_prefix(_STATUS_NAMES)


# ---------------------------------------------------------------- counting


def _field_two(frame: bytes, names: dict[int, str]) -> str:
    """The name of field 2 (op or status) of a request or response frame, a
    msgpack array [PROTOCOL_VERSION, op|status, ...], found by unpacking
    its first fields (the callers look its first bytes up first: one dict
    lookup per request). "invalid" if it is not such an array."""
    try:
        unpacker = msgpack.Unpacker(max_buffer_size=len(frame) + 1)
        unpacker.feed(frame)
        if unpacker.read_array_header() < 2 or unpacker.unpack() != PROTOCOL_VERSION:
            return "invalid"
        code = unpacker.unpack()
    except Exception:  # noqa: BLE001 - any malformed frame is just "invalid"
        return "invalid"
    return names.get(code, "unknown") if isinstance(code, int) else "invalid"


def request_op(frame: bytes) -> str:
    """A request frame's op as a label: put, get, ..., "unknown", "invalid"."""
    name = _OP_BY_PREFIX.get(frame[:3])
    return name if name is not None else _field_two(frame, _OP_NAMES)


def response_status(frame: bytes) -> str:
    """A response frame's status as a label: ok, not_found, redirect, ..."""
    name = _STATUS_BY_PREFIX.get(frame[:3])
    return name if name is not None else _field_two(frame, _STATUS_NAMES)


class TaggedEnvelope(list):
    """A client's ZeroMQ routing frames (what the transport replies with)
    that also carry the request's op and arrival time."""

    __slots__ = ("op", "t0")


class RequestMeter:
    """Stands in for the client transport as the driver's ClientReplier:
    every reply is sent, then counted by (op, status) and timed from the
    request's arrival (`tag`)."""

    def __init__(self, replier: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._replier = replier
        self._clock = clock
        self.counts: dict[tuple[str, str], int] = {}
        self.latency: dict[str, Histogram] = {}

    def tag(self, requests: list[tuple[Any, bytes]], now: float) -> None:
        """Wraps each new request's envelope with its op and arrival time."""
        for i, (frames, payload) in enumerate(requests):
            envelope = TaggedEnvelope(frames)
            envelope.op = request_op(payload)
            envelope.t0 = now
            requests[i] = (envelope, payload)

    def reply(self, envelope: Any, payload: bytes) -> None:
        self._replier.reply(envelope, payload)
        op = getattr(envelope, "op", "unknown")
        key = (op, response_status(payload))
        self.counts[key] = self.counts.get(key, 0) + 1
        t0 = getattr(envelope, "t0", None)
        if t0 is not None:
            hist = self.latency.get(op)
            if hist is None:
                hist = self.latency[op] = Histogram(LATENCY_BUCKETS)
            hist.observe(self._clock() - t0)


class TimedStorage:
    """Stands in for the acceptor storage: times every synced `persist`
    (one atomic batch and its fsync); everything else is passed through."""

    def __init__(self, storage: Any, clock: Callable[[], float] = time.perf_counter) -> None:
        self._storage = storage
        self._clock = clock
        self.fsync = Histogram(FSYNC_BUCKETS)

    def load(self) -> Any:
        return self._storage.load()

    def persist(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("sync", True) is False:
            self._storage.persist(*args, **kwargs)
            return
        start = self._clock()
        self._storage.persist(*args, **kwargs)
        self.fsync.observe(self._clock() - start)

    def persist_begin(self, *args: Any, **kwargs: Any) -> Any:
        """Timed from the hand-over to the end of the wait (the fsync runs
        beside the loop's work, so this is the sync's time on the loop's
        clock, an overestimate of the fsync)."""
        return _TimedPending(self._storage.persist_begin(*args, **kwargs), self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)


class _TimedPending:
    def __init__(self, pending: Any, timed: TimedStorage) -> None:
        self._pending = pending
        self._timed = timed
        self._start = timed._clock()

    def wait(self) -> None:
        self._pending.wait()
        self._timed.fsync.observe(self._timed._clock() - self._start)


def probe_db(db: Any) -> str | None:
    """Reads the first key of a plyvel DB: None if it can, else why not."""
    try:
        with db.iterator(include_value=True) as it:
            next(it, None)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the DB is not readable
        return f"{type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------- snapshot


@dataclass(frozen=True, slots=True)
class PeerTraffic:
    sent_messages: int = 0
    sent_bytes: int = 0
    send_dropped: int = 0
    received_messages: int = 0
    received_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the HTTP thread may read, copied by the loop at once."""

    replica_id: int
    taken_at: float = 0.0
    """The loop's clock (monotonic seconds) when it was taken."""
    role: str = "follower"
    leader_id: int | None = None
    ballot_round: int = 0
    promised_round: int = 0
    commit_index: int = 0
    leader_commit_index: int = 0
    """The highest commit index a leader announced (ours when leading)."""
    applied_index: int = 0
    compacted: int = 0
    log_entries: int = 0
    revision: int = 0
    sessions: int = 0
    waiting_writes: int = 0
    pending_reads: int = 0
    install: dict[str, Any] | None = None
    snapshot_exports: int = 0
    proposed_commands: int = 0
    proposal_batch: Histogram = field(default_factory=lambda: Histogram((1,)))
    committed_slots: int = 0
    effects_slots: int = 0
    leader_changes: int = 0
    lease_reads: int = 0
    vouched_reads: int = 0
    installs_started: int = 0
    installs_completed: int = 0
    installs_abandoned: int = 0
    last_install_bytes: int = 0
    last_install_keys: int = 0
    catchups: int = 0
    catching_up: bool = False
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    latency: dict[str, Histogram] = field(default_factory=dict)
    fsync: Histogram = field(default_factory=lambda: Histogram(FSYNC_BUCKETS))
    peers: dict[int, PeerTraffic] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    db_error: str | None = None

    @property
    def lag(self) -> int:
        """Slots between the announced commit index and the applied index."""
        return max(0, self.leader_commit_index - self.applied_index)


class ReplicaMetrics:
    """The loop's side: installs the wrappers, counts per iteration, and
    publishes snapshots on demand (see the module docstring)."""

    def __init__(
        self,
        driver: Any,
        peers: Any,
        db_probe: Callable[[], str | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = driver.id
        self._driver = driver
        self._peers = peers
        self._db_probe = db_probe
        self._clock = clock
        self.requests = RequestMeter(driver.clients, clock)
        driver.clients = self.requests
        self.storage = TimedStorage(driver.storage)
        driver.storage = self.storage
        self.leader_commit = 0
        self.catchups = 0
        self._catchup: tuple[float, int, int] | None = None  # (since, from, target)
        self._waiters: list[threading.Event] = []
        self._snapshot: Snapshot | None = None

    # -- the loop's side (one call per iteration) --

    def on_input(self, inbox: Sequence[Any], requests: list[tuple[Any, bytes]]) -> None:
        """Before the driver's iteration: tags requests, notes announced
        commit indexes, watches catch-up, publishes if asked."""
        now = self._clock()
        if requests:
            self.requests.tag(requests, now)
        for msg in inbox:
            if type(msg) is Heartbeat and msg.commit_index > self.leader_commit:
                self.leader_commit = msg.commit_index
        self._watch_catchup(now)
        if self._waiters:
            self.publish(now)

    def _watch_catchup(self, now: float) -> None:
        applied = self._driver.sm.applied_index
        if self._catchup is None:
            behind = self.leader_commit - applied
            if behind >= CATCHUP_SLOTS:
                self._catchup = (now, applied, self.leader_commit)
                self.catchups += 1
                leader = self._driver.core.leader_id
                log.info(
                    "replica %d: catching up: %d slots behind leader %s (applied %d, commit %d)",
                    self.id,
                    behind,
                    leader,
                    applied,
                    self.leader_commit,
                    extra=event(
                        "catchup_started",
                        behind=behind,
                        leader=leader,
                        applied_index=applied,
                        commit_index=self.leader_commit,
                    ),
                )
        elif applied >= self._catchup[2]:
            since, start, _ = self._catchup
            self._catchup = None
            seconds = round(now - since, 3)
            log.info(
                "replica %d: caught up: %d slots in %g s (applied %d)",
                self.id,
                applied - start,
                seconds,
                applied,
                extra=event(
                    "catchup_finished",
                    slots=applied - start,
                    seconds=seconds,
                    applied_index=applied,
                ),
            )

    def publish(self, now: float | None = None) -> Snapshot:
        """Copies everything into a new Snapshot (loop thread only) and
        wakes the HTTP requests waiting for it."""
        d = self._driver
        st = d.status()
        info = d.status_info()
        c = d.counters
        p = self._peers
        ballot = info.get("ballot") or [0, 0]
        snap = Snapshot(
            replica_id=self.id,
            taken_at=self._clock() if now is None else now,
            role=st.role.value,
            leader_id=st.leader_id,
            ballot_round=ballot[0],
            promised_round=st.promised.round,
            commit_index=st.commit_index,
            leader_commit_index=max(self.leader_commit, st.commit_index),
            applied_index=info["applied_index"],
            compacted=st.compacted,
            log_entries=st.log_size,
            revision=info.get("revision", 0),
            sessions=info.get("sessions", 0),
            waiting_writes=info.get("waiting_writes", 0),
            pending_reads=info.get("pending_reads", 0),
            install=info.get("install"),
            snapshot_exports=len(info.get("serving_snapshots") or ()),
            proposed_commands=c.proposed_commands,
            proposal_batch=c.proposal_batch.copy(),
            committed_slots=c.committed_slots,
            effects_slots=c.effects_slots,
            leader_changes=c.leader_changes,
            lease_reads=c.lease_reads,
            vouched_reads=c.vouched_reads,
            installs_started=c.installs_started,
            installs_completed=c.installs_completed,
            installs_abandoned=c.installs_abandoned,
            last_install_bytes=c.last_install_bytes,
            last_install_keys=c.last_install_keys,
            catchups=self.catchups,
            catching_up=self._catchup is not None,
            requests=dict(self.requests.counts),
            latency={op: h.copy() for op, h in self.requests.latency.items()},
            fsync=self.storage.fsync.copy(),
            peers={
                pid: PeerTraffic(
                    p.sent_messages[pid],
                    p.sent_bytes[pid],
                    p.send_dropped[pid],
                    p.received_messages[pid],
                    p.received_bytes[pid],
                )
                for pid in p.sent_messages
            },
            dropped=dict(d.bad.counts),
            db_error=self._db_probe(),
        )
        self._snapshot = snap
        waiters, self._waiters = self._waiters, []
        for ev in waiters:
            ev.set()
        return snap

    # -- the HTTP thread's side --

    def fresh_snapshot(self, timeout: float) -> tuple[Snapshot | None, bool]:
        """(snapshot, fresh): asks the loop for a new snapshot and waits up
        to `timeout`; on time-out the last one (or None) and False."""
        ev = threading.Event()
        self._waiters.append(ev)
        fresh = ev.wait(timeout)
        return self._snapshot, fresh

    def now(self) -> float:
        return self._clock()


# ------------------------------------------------------------- judgements


def health(snap: Snapshot | None, fresh: bool, age: float | None = None) -> tuple[bool, dict]:
    """/health: the event loop answers and the DB is readable."""
    body: dict[str, Any] = {"replica": None if snap is None else snap.replica_id}
    if snap is None:
        return False, {**body, "status": "unavailable", "reason": "starting: no state yet"}
    if not fresh:
        waited = f"{age:.1f} s" if age is not None else "long"
        reason = f"the event loop did not answer (last answer {waited} ago)"
        return False, {**body, "status": "unavailable", "reason": reason}
    if snap.db_error is not None:
        return False, {**body, "status": "unavailable", "reason": f"DB: {snap.db_error}"}
    return True, {**body, "status": "ok", "role": snap.role, "applied_index": snap.applied_index}


def readiness(snap: Snapshot | None, fresh: bool, max_lag: int) -> tuple[bool, dict]:
    """/ready: healthy, a leader is known, and the applied index is within
    `max_lag` slots of the commit index the leader announced."""
    ok, body = health(snap, fresh)
    if not ok or snap is None:
        return False, body
    body = {
        "replica": snap.replica_id,
        "role": snap.role,
        "leader": snap.leader_id,
        "commit_index": snap.leader_commit_index,
        "applied_index": snap.applied_index,
        "lag": snap.lag,
    }
    if snap.leader_id is None:
        return False, {**body, "status": "unavailable", "reason": "no leader known"}
    if snap.lag > max_lag:
        reason = f"{snap.lag} slots behind the commit index (more than {max_lag})"
        return False, {**body, "status": "unavailable", "reason": reason}
    return True, {**body, "status": "ok"}


# -------------------------------------------------------------- exposition

ROLES = ("follower", "precandidate", "candidate", "leader")


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=float(value))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=float(value))


def _histogram(
    name: str, doc: str, label: str | None, hists: dict[str, Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(PREFIX + name, doc, labels=[label] if label else None)
    for value, hist in sorted(hists.items()):
        buckets = [
            ("+Inf" if b == float("inf") else repr(float(b)), n) for b, n in hist.cumulative()
        ]
        family.add_metric([value] if label else [], buckets, hist.sum)
    return family


def families(
    snap: Snapshot,
    max_lag: int,
    data_dir_bytes: int | None = None,
    version: str = "unknown",
    *,
    fresh: bool = True,
) -> Iterator[Metric]:
    """The paxoskv_* metric families of one snapshot (README: Monitoring);
    `fresh` False (the loop did not answer in time): paxoskv_ready is 0."""
    rid = str(snap.replica_id)
    info = InfoMetricFamily(PREFIX + "replica", "This replica: its id and the code's version")
    info.add_metric([], {"replica_id": rid, "version": version})
    yield info
    role = GaugeMetricFamily(
        PREFIX + "role", "1 for the role this replica has now", labels=["role"]
    )
    for name in ROLES:
        role.add_metric([name], 1.0 if snap.role == name else 0.0)
    yield role
    yield _gauge("is_leader", "1 while this replica leads", snap.role == "leader")
    yield _gauge("leader_id", "The replica id of the known leader; 0 if none", snap.leader_id or 0)
    ready, _ = readiness(snap, fresh, max_lag)
    yield _gauge("ready", "1 while /ready answers 200", ready)
    yield _gauge(
        "ballot_round",
        "Round of the ballot in force (known leader's, else promised)",
        snap.ballot_round,
    )
    yield _gauge("promised_round", "Round of the highest ballot promised", snap.promised_round)
    yield _counter("leader_changes", "Times a new leader became known", snap.leader_changes)
    yield _counter(
        "lease_reads",
        "Linearizable reads answered on a read lease as leader (--lease-reads)",
        snap.lease_reads,
    )
    yield _counter(
        "vouched_reads",
        "Linearizable reads confirmed as leader by followers' vouches (no heartbeat round)",
        snap.vouched_reads,
    )
    yield from _log_families(snap)
    yield from _traffic_families(snap)
    yield from _snapshot_families(snap)
    if data_dir_bytes is not None:
        yield _gauge("data_dir_bytes", "Bytes of files in the data directory", data_dir_bytes)
    yield _gauge("db_readable", "1 while a read of the DB succeeds", snap.db_error is None)


def _log_families(snap: Snapshot) -> Iterator[Metric]:
    yield _gauge("commit_index", "First slot not known chosen by this replica", snap.commit_index)
    yield _gauge(
        "leader_commit_index",
        "Highest commit index announced by a leader",
        snap.leader_commit_index,
    )
    yield _gauge("applied_index", "Slots applied to the state machine", snap.applied_index)
    yield _gauge("apply_lag_slots", "leader_commit_index minus applied_index", snap.lag)
    yield _gauge("compacted_index", "Compaction point: the log starts here", snap.compacted)
    yield _gauge("log_entries", "Chosen log entries held in memory", snap.log_entries)
    yield _gauge("revision", "Successful writes applied (latest version)", snap.revision)
    yield _gauge("sessions", "Client sessions held", snap.sessions)
    yield _gauge("waiting_writes", "Client writes in flight on this replica", snap.waiting_writes)
    yield _gauge("pending_reads", "Linearizable reads in flight", snap.pending_reads)
    yield _counter(
        "proposed_commands", "Client write commands proposed as leader", snap.proposed_commands
    )
    yield _histogram(
        "proposal_batch_commands",
        "Client write commands per proposal (group commit)",
        None,
        {"": snap.proposal_batch},
    )
    yield _counter("committed_slots", "Slots learned chosen and applied", snap.committed_slots)
    yield _counter(
        "effects_slots",
        "Of the applied slots, those written from the leader's effects",
        snap.effects_slots,
    )
    yield _counter(
        "catchups",
        f"Times this replica fell behind its leader by {CATCHUP_SLOTS} slots or more",
        snap.catchups,
    )
    yield _gauge("catching_up", "1 while a catch-up is in progress", snap.catching_up)


def _traffic_families(snap: Snapshot) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        PREFIX + "client_requests",
        "Client requests answered, by op and status",
        labels=["op", "status"],
    )
    for (op, status), n in sorted(snap.requests.items()):
        requests.add_metric([op, status], n)
    yield requests
    yield _histogram(
        "client_request_duration_seconds", "Client request arrival to reply", "op", snap.latency
    )
    yield _histogram(
        "fsync_duration_seconds", "One synced acceptor write batch", None, {"": snap.fsync}
    )
    specs = (
        ("peer_sent_messages", "Messages sent to a peer", "sent_messages"),
        ("peer_sent_bytes", "Bytes sent to a peer", "sent_bytes"),
        (
            "peer_send_dropped",
            "Messages to a peer dropped (not connected or queue full)",
            "send_dropped",
        ),
        (
            "peer_received_messages",
            "Well-formed messages received from a peer",
            "received_messages",
        ),
        (
            "peer_received_bytes",
            "Bytes of well-formed messages received from a peer",
            "received_bytes",
        ),
    )
    for name, doc, attr in specs:
        family = CounterMetricFamily(PREFIX + name, doc, labels=["peer"])
        for pid, traffic in sorted(snap.peers.items()):
            family.add_metric([str(pid)], getattr(traffic, attr))
        yield family
    dropped = CounterMetricFamily(
        PREFIX + "dropped_frames",
        "Input dropped as malformed or unauthorised, by kind",
        labels=["kind"],
    )
    for kind, n in sorted(snap.dropped.items()):
        dropped.add_metric([kind], n)
    yield dropped


def _snapshot_families(snap: Snapshot) -> Iterator[Metric]:
    install = snap.install or {}
    yield _gauge(
        "snapshot_install_in_progress",
        "1 while a snapshot is being installed",
        snap.install is not None,
    )
    yield _gauge(
        "snapshot_install_index", "Index of the snapshot being installed", install.get("index", 0)
    )
    yield _gauge(
        "snapshot_install_received_bytes", "Bytes of it staged so far", install.get("bytes", 0)
    )
    yield _gauge(
        "snapshot_install_received_keys", "Keys of it staged so far", install.get("keys", 0)
    )
    yield _counter("snapshot_installs_started", "Snapshot installs started", snap.installs_started)
    yield _counter(
        "snapshot_installs_completed", "Snapshot installs completed", snap.installs_completed
    )
    yield _counter(
        "snapshot_installs_abandoned", "Snapshot installs abandoned", snap.installs_abandoned
    )
    yield _gauge(
        "snapshot_last_installed_bytes",
        "Size of the last snapshot installed",
        snap.last_install_bytes,
    )
    yield _gauge(
        "snapshot_last_installed_keys",
        "Keys of the last snapshot installed",
        snap.last_install_keys,
    )
    yield _gauge(
        "snapshot_exports", "Peers this replica is sending its snapshot to", snap.snapshot_exports
    )


def directory_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (files that vanish while
    it is walked, as LevelDB compacts, are skipped)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name), follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def _version() -> str:
    try:
        return metadata.version("paxoskv")
    except metadata.PackageNotFoundError:
        return "unknown"


class ReplicaCollector:
    """The prometheus_client collector: a fresh snapshot per scrape."""

    def __init__(self, metrics: ReplicaMetrics, max_lag: int, data_dir: Path | None) -> None:
        self._metrics = metrics
        self._max_lag = max_lag
        self._data_dir = data_dir
        self._version = _version()

    def collect(self) -> Iterator[Metric]:
        snap, fresh = self._metrics.fresh_snapshot(SCRAPE_WAIT_S)
        if snap is None:
            return
        size = None if self._data_dir is None else directory_bytes(self._data_dir)
        yield from families(snap, self._max_lag, size, self._version, fresh=fresh)


# ------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        path = self.path.split("?", 1)[0]
        app = self.server.app
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, content_type, encoder(app.registry))
        elif path in ("/health", "/ready"):
            ok, body = app.judge(path)
            payload = (json.dumps(body, sort_keys=True) + "\n").encode()
            self._send(200 if ok else 503, "application/json", payload)
        else:
            self._send(404, "text/plain; charset=utf-8", b"try /metrics, /health or /ready\n")

    def _send(self, code: int, content_type: str, payload: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("metrics http: " + format, *args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    app: MetricsServer


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves /metrics, /health and /ready from a daemon thread."""

    def __init__(
        self,
        metrics: ReplicaMetrics,
        host: str,
        port: int,
        *,
        max_lag: int,
        data_dir: Path | None = None,
    ) -> None:
        self.metrics = metrics
        self.max_lag = max_lag
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ReplicaCollector(metrics, max_lag, data_dir))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        server_class = _HTTPServer6 if ":" in host else _HTTPServer
        self.httpd = server_class((host, port), _Handler)  # OSError if it cannot bind
        self.httpd.app = self
        self.address = self.httpd.server_address[:2]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, args=(0.05,), name="metrics-http", daemon=True
        )
        self._thread.start()

    def judge(self, path: str) -> tuple[bool, dict]:
        snap, fresh = self.metrics.fresh_snapshot(HEALTH_WAIT_S)
        if path == "/health":
            age = None if snap is None else self.metrics.now() - snap.taken_at
            return health(snap, fresh, age)
        return readiness(snap, fresh, self.max_lag)

    def close(self) -> None:
        """Stops serving (before the replica closes its DB)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
