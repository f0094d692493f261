"""One replica process: LevelDB, ZeroMQ and the wall clock around the driver.

Theory of operation
-------------------
A `Replica` owns one plyvel DB (shared by `LevelDBStorage`, the acceptor
state, and `KVStateMachine`, the KV data and sessions), the two ZeroMQ
transports of `replica.transport` (peers: one PULL in, one PUSH per peer;
clients: one ROUTER) and one `ReplicaDriver` (replica/driver.py) built on
them. Everything the protocol does lives in the driver; this module is the
thin poll loop and the command line. Each iteration of the loop:

1. polls both sockets, with a timeout up to the driver's next tick;
2. takes what is waiting, at most `DRAIN_LIMIT` frames per socket (peers
   first), well-formed peer messages and client request frames;
3. hands both to `driver.iterate`, which steps the core, answers or queues
   the requests, runs the ticks that are due, and honours the merged Ready
   (persist, send, apply, answer; see replica/driver.py).

Tests build deliberately broken replicas by subclassing or monkeypatching the
driver's small methods (`_persist`, `_finish`, `_read_linearizable`).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import plyvel
import zmq

from kvstore.config import (
    WRITE_BUFFER_BYTES,
    CompactionSettings,
    ConfigError,
    ReplicaAddress,
    StorageSettings,
    WatchSettings,
    load_cluster_config,
    load_compaction_settings,
    load_metrics_settings,
    load_session_settings,
    load_storage_settings,
    load_timing_settings,
    load_watch_settings,
    parse_http_address,
)
from kvstore.events import EVENT_PREFIX, event_key
from kvstore.limits import MAX_BATCH_BYTES, SESSION_TTL_MS
from kvstore.membership import bootstrap
from kvstore.security import ClientKeys, CurveConfig, load_curve_config, public_of
from kvstore.statemachine import KVStateMachine
from kvstore.values import VALUE_LOG_DIR, CorruptValue, ValueLog
from replica import datadir, launch, logfmt, schedhint
from replica.badinput import BadFrames
from replica.curve import CurveGuard, PeerKeys
from replica.driver import ReplicaDriver
from replica.messages import Message
from replica.metrics import MetricsServer, ReplicaMetrics, probe_db
from replica.paxos import CoreConfig
from replica.reclaim import Reclaimer
from replica.schedhint import SchedulingHint
from replica.storage import (
    LOG_PREFIXES,
    VOTE_LOG_DIR,
    VOTE_SEGMENT_BYTES,
    LevelDBStorage,
    SyncWriter,
    slot_key,
)
from replica.trace import Tracer
from replica.transport import BindError, ClientTransport, Envelope, PeerTransport

log = logging.getLogger("replica.server")

LEVELDB_OPTIONS = {"write_buffer_size": WRITE_BUFFER_BYTES, "compression": None}
"""How a replica opens its LevelDB by default (`leveldb_options`: with its
`[storage]` settings, kvstore/config.py). Without Snappy: most of a replica's
writes are votes, session records and events that are deleted again within
seconds, and compressing them in every flush and compaction doubled the
CPU of LevelDB's background thread (64 PUT clients of 100-byte random
values: ~17 -> ~8 us per write on each replica). Values that compress
well take more disk; blocks written compressed before are still read
(the choice is recorded per block)."""


def leveldb_options(storage: StorageSettings | None = None) -> dict[str, Any]:
    """The plyvel options of a replica with these `[storage]` settings."""
    options = dict(LEVELDB_OPTIONS)
    if storage is not None:
        options["write_buffer_size"] = storage.write_buffer_bytes
    return options


DRAIN_LIMIT = 1024
"""Most frames taken from one socket per loop iteration (fairness, bounded latency)."""


class Replica:
    """One replica process's resources (DB, sockets) and its driver."""

    def __init__(
        self,
        me: ReplicaAddress,
        cluster: list[ReplicaAddress],
        data_dir: str | os.PathLike[str],
        tick_ms: float = 10.0,
        core_config: CoreConfig | None = None,
        driver_class: type[ReplicaDriver] = ReplicaDriver,
        compaction: CompactionSettings | None = None,
        session_ttl_ms: int = SESSION_TTL_MS,
        joining: bool = False,
        curve: CurveConfig | None = None,
        watch: WatchSettings | None = None,
        lease_reads: bool = False,
        storage: StorageSettings | None = None,
    ) -> None:
        """`joining`: started on an empty directory to join a running
        cluster (replica/paxos.py, "Joining"). `curve`: the `[curve]` table
        (kvstore/security.py), None for plaintext. `watch`: the event log's
        retention (the `[watch]` table). `lease_reads`: --lease-reads.
        `storage`: how LevelDB is opened (the `[storage]` table)."""
        self.id = me.id
        self.curve_config = curve
        self._peer_keys: PeerKeys | None = None
        self._client_keys: ClientKeys | None = None
        if curve is not None:
            secret = curve.replica_secret(me.id)
            self._peer_keys = PeerKeys(secret, public_of(secret), dict(curve.replica_keys))
            server_key = public_of(curve.server_secret)
            self._client_keys = ClientKeys(server_key, self._peer_keys.public, secret)
        self._toml_peers = {r.id: r.peer for r in cluster if r.id != me.id}
        if joining:
            found = _current_peers(me.id, cluster, self._client_keys)
            self._toml_peers = found or self._toml_peers
        self.me = me
        self.data_dir = Path(data_dir)
        self.metrics: ReplicaMetrics | None = None  # see serve_metrics
        self.metrics_server: MetricsServer | None = None
        self.session_ttl_ms = session_ttl_ms
        self.db = plyvel.DB(str(data_dir), create_if_missing=True, **leveldb_options(storage))
        self.reclaimer = Reclaimer(self.db, LOG_PREFIXES, slot_key)
        # The watch event log's trimmed revisions, reclaimed the same way
        # each time the log compacts (kvstore/events.py).
        self.event_reclaimer = Reclaimer(self.db, (EVENT_PREFIX,), _event_key)
        self.sync_writer = SyncWriter()  # the loop applies while it fsyncs
        self.values: ValueLog | None = None
        self.vote_log: ValueLog | None = None
        try:
            watch = watch or WatchSettings()
            storage = storage or StorageSettings()
            self.values = ValueLog(self.data_dir / VALUE_LOG_DIR)
            self.vote_log = ValueLog(self.data_dir / VOTE_LOG_DIR, VOTE_SEGMENT_BYTES)
            self.sm = KVStateMachine(
                self.db,
                (watch.retain_events, watch.retain_bytes),
                self.values,
                storage.value_log_min_bytes,
            )
            self._open_sockets(cluster)
            try:
                self.driver = driver_class(
                    me.id,
                    [r.id for r in cluster],
                    LevelDBStorage(
                        self.db,
                        on_compacted=self._compacted,
                        writer=self.sync_writer,
                        votes=self.vote_log,
                        vote_min_bytes=storage.vote_log_min_bytes,
                    ),
                    self.sm,
                    self.peers,
                    self.clients,
                    rng=random.Random(os.urandom(16)),
                    clock=time.monotonic,
                    wall_clock=time.time,
                    tick_s=tick_ms / 1000.0,
                    core_config=core_config,
                    bad=self.bad,
                    compaction=compaction,
                    session_ttl_ms=session_ttl_ms,
                    membership=bootstrap([(r.id, r.peer, r.client) for r in cluster]),
                    joining=joining,
                    lease_reads=lease_reads,
                )
            except BaseException:
                self._close_sockets()
                raise
        except BaseException:
            self._close_reclaimers()
            for log_ in (self.values, self.vote_log):
                if log_ is not None:
                    log_.close()
            self.db.close()
            raise
        self._known_peers = self.driver.core.peers
        self.exit_status = 0
        self._stopping = False
        self.sched_batch = False  # --sched-batch auto: `run` adapts the loop's policy
        self._hint: SchedulingHint | None = None

    def _open_sockets(self, cluster: list[ReplicaAddress]) -> None:
        self.ctx = zmq.Context()
        self.bad = BadFrames()
        peers = dict(self._toml_peers)
        curve = self.curve_config
        # The ZAP handler first: libzmq lets every key in while none is bound.
        self.guard = CurveGuard(self.ctx, curve, self.bad) if curve is not None else None
        server_secret = curve.server_secret if curve is not None else None
        try:
            self.peers = PeerTransport(
                self.ctx, self.me.peer_bind, peers, self.bad, self._peer_keys
            )
            try:
                self.clients = ClientTransport(
                    self.ctx, self.me.client_bind, self.bad, server_secret
                )
            except BaseException:
                self.peers.close()
                raise
        except BaseException:
            if self.guard is not None:
                self.guard.close()
            self.ctx.term()
            raise
        self.poller = zmq.Poller()
        self.poller.register(self.peers.inbox, zmq.POLLIN)
        self.poller.register(self.clients.router, zmq.POLLIN)
        if self.guard is not None:
            self.guard.watch(self.peers.inbox, "peer")
            self.guard.watch(self.clients.router, "client")
            for sock in self.guard.sockets():
                self.poller.register(sock, zmq.POLLIN)

    def serve_metrics(self, host: str, port: int, max_lag: int) -> MetricsServer:
        """Counts for Prometheus and serves /metrics, /health and /ready on
        host:port from a daemon thread (replica/metrics.py). Off unless
        called; OSError if the port cannot be bound."""
        self.metrics = ReplicaMetrics(self.driver, self.peers, lambda: probe_db(self.db))
        self.metrics_server = MetricsServer(
            self.metrics, host, port, max_lag=max_lag, data_dir=self.data_dir
        )
        return self.metrics_server

    # ------------------------------------------------------------------ loop

    def stop(self) -> None:
        """Asks the loop to finish its iteration and return (signal-safe)."""
        self._stopping = True

    def run(self) -> None:
        """Runs the event loop until `stop()`."""
        served = self.metrics_server
        metrics = f"http://{served.address[0]}:{served.address[1]}" if served else None
        figures = {
            "peer": self.me.peer_bind,
            "client": self.me.client_bind,
            "replicas": len(self.driver.status().peers) + 1,
            "applied_index": self.sm.applied_index,
            "metrics": metrics,
            "curve": self.curve_config is not None,
        }
        log.info(
            "replica %d up: peers on %s, clients on %s, %d replicas, applied index %d, "
            "session TTL %g s when leading (in force: %g s), metrics %s, CURVE %s",
            self.id,
            self.me.peer_bind,
            self.me.client_bind,
            figures["replicas"],
            self.sm.applied_index,
            self.session_ttl_ms / 1000,
            self.sm.session_ttl_ms / 1000,
            metrics or "off",
            "on" if self.curve_config is not None else "off",
            extra=logfmt.event("replica_started", **figures),
        )
        if self.sched_batch and schedhint.available():
            self._hint = SchedulingHint(time.perf_counter())
        more = False
        while not self._stopping:
            more = self.run_once(0 if more else None)

    def run_once(self, timeout_ms: int | None = None) -> bool:
        """One iteration of the loop; returns True if input may be left over.
        `timeout_ms` None waits up to the driver's next tick."""
        if timeout_ms is None:
            timeout_ms = max(0, int(self.driver.seconds_to_next_tick() * 1000.0 + 0.999))
        hint = self._hint
        if hint is None:
            events = dict(self.poller.poll(timeout_ms))
        else:
            began = time.perf_counter()
            events = dict(self.poller.poll(timeout_ms))
            now = time.perf_counter()
            hint.idle(now - began)
            hint.check(now)
        inbox: list[Message] = []
        requests: list[tuple[Envelope, bytes]] = []
        more = False
        if self.peers.inbox in events:
            more = self.peers.recv(DRAIN_LIMIT, inbox)
        if self.clients.router in events:
            more = self.clients.recv(DRAIN_LIMIT, requests) or more
        if self.guard is not None:
            self.guard.handle(events)  # ZAP requests and refused handshakes
        if self.metrics is not None:
            self.metrics.on_input(inbox, requests)
        self.driver.iterate(inbox, requests)
        core = self.driver.core
        if core.peers != self._known_peers:
            self._follow_membership()
        if core.refused is not None:
            log.error("replica %d: %s", self.id, core.refused)
            self.exit_status = 2
            self._stopping = True
        return more

    def _follow_membership(self) -> None:
        """Connects to the members the core now talks to (their addresses from
        the membership, else from the config file), drops the others."""
        core = self.driver.core
        self._known_peers = core.peers
        latest = core.status().membership
        peers = {}
        for pid in core.peers:
            found = latest.address(pid) if latest is not None else None
            address = found[0] if found else self._toml_peers.get(pid)
            if address:
                peers[pid] = address
        self._reload_keys(peers)
        self.peers.set_peers(peers)
        log.info("replica %d: peers now %s", self.id, sorted(peers))

    def _reload_keys(self, peers: dict[int, str]) -> None:
        """With CURVE: re-reads the key book of the config file when the
        membership names a member whose key it lacks (kvstore/security.py)."""
        keys, curve = self._peer_keys, self.curve_config
        if keys is None or curve is None or all(pid in keys.book for pid in peers):
            return
        try:
            fresh = load_curve_config(curve.path)
        except ConfigError as exc:
            log.error("replica %d: cannot re-read the CURVE keys: %s", self.id, exc)
            return
        if fresh is not None:
            keys.book.update(fresh.replica_keys)
            if self.guard is not None:
                self.guard.set_replica_keys(keys.book)

    def status_info(self) -> dict:
        """The STATUS report (docs/CONTRACTS.md)."""
        return self.driver.status_info()

    # ---------------------------------------------------------------- close

    def _close_sockets(self) -> None:
        if self.guard is not None:
            self.guard.close()
        self.peers.close()
        self.clients.close()
        self.ctx.term()

    def trace(self, every: int) -> None:
        """Traces every `every`-th slot into the data directory (replica/trace.py)."""
        self.driver.tracer = Tracer.to_dir(self.id, every, time.monotonic, self.data_dir)

    def _compacted(self, point: int) -> None:
        """After a log compaction to `point`: give back the disk of the log
        below it and of the watch events trimmed since the last one."""
        self.reclaimer.request(point)
        self.event_reclaimer.request(self.sm.events.oldest)

    def _close_reclaimers(self) -> None:
        self.sync_writer.close()
        self.reclaimer.close()
        self.event_reclaimer.close()

    def close(self) -> None:
        """Closes the sockets (linger 0) and the DB."""
        if self.metrics_server is not None:
            self.metrics_server.close()
        self._close_sockets()
        self._close_reclaimers()
        if self.driver.tracer is not None:
            self.driver.tracer.close()
        for log_ in (self.values, self.vote_log):
            if log_ is not None:
                log_.close()
        self.db.close()
        log.info("replica %d stopped", self.id)


def _event_key(prefix: bytes, revision: int) -> bytes:
    return event_key(revision)


def _current_peers(
    me: int, cluster: list[ReplicaAddress], keys: ClientKeys | None = None
) -> dict[int, str]:
    """For a replica joining a running cluster: the members the cluster
    itself names (the highest membership epoch any configured replica
    reports in STATUS), since the config file may predate changes."""
    others = [r.client for r in cluster if r.id != me]
    reports = launch.statuses(others, timeout=1.0, curve=keys)
    best: dict | None = None
    for report in reports:
        membership = (report or {}).get("membership")
        if isinstance(membership, dict) and (
            best is None or membership.get("epoch", -1) > best.get("epoch", -1)
        ):
            best = membership
    peers: dict[int, str] = {}
    for row in (best or {}).get("addresses", []):
        if isinstance(row, list) and len(row) == 3 and row[0] != me and row[1]:
            peers[int(row[0])] = str(row[1])
    if peers:
        log.info("replica %d joining: the cluster names its members %s", me, sorted(peers))
    return peers


def _refuse_bootstrap_into_history(me: int, cluster: list[ReplicaAddress], data_dir: Path) -> None:
    """`--initial-cluster-state new` on an empty directory while a configured
    replica already applied slots: this is no new cluster, and this replica
    (perhaps one that lost its disk, restarted by a script or a compose file
    that always says `new`) must not vote as if nothing had happened. The
    identity just written is taken back, so the directory stays empty. (A
    cluster takes no slot before its first write, so the replicas of a new
    cluster, started together, never see history here.)"""
    reports = launch.statuses([r.client for r in cluster if r.id != me], timeout=1.0)
    history = [
        (r["id"], r.get("applied_index", 0)) for r in reports if r and r.get("applied_index")
    ]
    if not history:
        return
    (data_dir / datadir.IDENTITY_FILE).unlink(missing_ok=True)
    rid, index = history[0]
    raise datadir.DataDirError(
        f"--initial-cluster-state new, but replica {rid} already applied {index} slots: this "
        f"is no new cluster. If replica {me} lost its disk, replace it (docs/OPERATIONS.md); "
        "to join as an added member, use --initial-cluster-state existing"
    )


# ------------------------------------------------------------------ command


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kvstore-replica", description="Run one replica of the key-value store."
    )
    parser.add_argument("--config", required=True, help="cluster config file (TOML)")
    parser.add_argument("--id", required=True, type=int, help="this replica's id")
    parser.add_argument("--data-dir", required=True, help="LevelDB directory")
    parser.add_argument(
        "--initial-cluster-state",
        choices=datadir.STATES,
        help="only for an empty --data-dir: 'new' bootstraps a new cluster (every replica "
        "starts empty); 'existing' joins a running one as a member added with kvctl member "
        "add (it installs a snapshot first; an id that ran before is refused: "
        "docs/OPERATIONS.md). Ignored once the directory has an identity",
    )
    parser.add_argument(
        "--tick-ms", type=float, help="tick length (ms; default: [timing] tick_ms, else 10)"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="text", choices=logfmt.FORMATS)
    parser.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="serve /metrics, /health, /ready here (default: the replica's metrics "
        "address in the config; none: off)",
    )
    parser.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="same as --metrics-addr 0.0.0.0:PORT"
    )
    parser.add_argument(
        "--trace-every",
        type=int,
        default=0,
        metavar="N",
        help="trace the commit path of every N-th slot into DATA_DIR/trace.jsonl, for "
        "`python -m benchmarks.run --trace` (replica/trace.py; the file grows while on; "
        "default 0: off)",
    )
    parser.add_argument(
        "--sched-batch",
        choices=["auto", "off"],
        default="auto",
        help="auto (default, Linux): the event loop switches itself to SCHED_BATCH while "
        "it is busy (at least half the time out of poll) and back to the default policy "
        "when it is not: fewer preemptions under load, less CPU per write "
        "(replica/schedhint.py); off: always the default policy",
    )
    parser.add_argument(
        "--lease-reads",
        action="store_true",
        help="as leader, answer linearizable reads on a read lease instead of a heartbeat "
        "round per batch of reads (faster; assumes no replica's clock runs over 25%% "
        "faster than another's, README 'Lease reads'). Give it to EVERY replica: a "
        "replica with it also waits an election timeout after it starts before it "
        "supports a new leader",
    )
    args = parser.parse_args(argv)
    if args.trace_every < 0:
        parser.error("--trace-every must be >= 0 (0: off)")
    if args.tick_ms is not None and not args.tick_ms > 0:
        parser.error("--tick-ms must be > 0")
    if args.metrics_port is not None:
        if args.metrics_addr is not None:
            parser.error("give --metrics-addr or --metrics-port, not both")
        args.metrics_addr = f"0.0.0.0:{args.metrics_port}"
    return args


class StartupError(Exception):
    """A problem that stops the replica from starting: one line, exit 2."""


def _build(args: argparse.Namespace) -> Replica:
    try:
        cluster = load_cluster_config(args.config)
        compaction = load_compaction_settings(args.config)
        sessions = load_session_settings(args.config)
        timing = load_timing_settings(args.config)
        monitoring = load_metrics_settings(args.config)
        curve = load_curve_config(args.config)
        watch = load_watch_settings(args.config)
        storage = load_storage_settings(args.config)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    tick_ms = args.tick_ms or timing.tick_ms or 10.0
    defaults = CoreConfig()
    try:
        heartbeat, election = timing.ticks(
            tick_ms, defaults.heartbeat_ticks, defaults.election_ticks
        )
    except ConfigError as exc:  # the rule between the timers, checked at start
        raise StartupError(f"cluster config {args.config}, {exc}") from None
    core = CoreConfig(
        heartbeat_ticks=heartbeat, election_ticks=election, max_batch_bytes=MAX_BATCH_BYTES
    )
    me = next((r for r in cluster if r.id == args.id), None)
    if me is None:
        ids = ", ".join(str(r.id) for r in cluster)
        raise StartupError(f"replica id {args.id} is not in {args.config} (ids: {ids})")
    if curve is not None:
        try:  # before the data directory is touched
            curve.replica_secret(me.id)
        except ConfigError as exc:
            raise StartupError(f"CURVE: {exc}") from None
    metrics_addr = args.metrics_addr or me.metrics
    try:
        metrics_at = parse_http_address(metrics_addr) if metrics_addr else None
    except ConfigError as exc:
        raise StartupError(f"metrics address: {exc}") from None
    data_dir = Path(args.data_dir)
    try:
        name = datadir.load_cluster_name(args.config)
        fresh = datadir.read_identity(data_dir) is None
        identity = datadir.prepare(
            data_dir, name=name, replica_id=me.id, state=args.initial_cluster_state
        )
        if fresh and not identity.joining:
            _refuse_bootstrap_into_history(me.id, cluster, data_dir)
    except (ConfigError, datadir.DataDirError) as exc:
        raise StartupError(str(exc)) from None
    except OSError as exc:
        raise StartupError(f"cannot prepare the data directory {data_dir}: {exc}") from None
    try:
        replica = Replica(
            me,
            cluster,
            data_dir,
            tick_ms=tick_ms,
            core_config=core,
            compaction=compaction,
            session_ttl_ms=sessions.ttl_ms,
            joining=identity.joining,
            curve=curve,
            watch=watch,
            lease_reads=args.lease_reads,
            storage=storage,
        )
    except (BindError, ConfigError) as exc:
        raise StartupError(str(exc)) from None
    except (plyvel.Error, OSError, CorruptValue) as exc:
        raise StartupError(f"cannot open the data directory {data_dir}: {exc}") from None
    if args.trace_every:
        try:
            replica.trace(args.trace_every)
        except OSError as exc:
            replica.close()
            raise StartupError(f"cannot write the trace into {data_dir}: {exc}") from None
    if metrics_at is not None:
        try:
            replica.serve_metrics(*metrics_at, monitoring.ready_max_lag)
        except OSError as exc:
            replica.close()
            raise StartupError(f"cannot serve metrics on {metrics_addr}: {exc}") from None
    return replica


def main(argv: list[str] | None = None) -> int:
    """`kvstore-replica --config FILE --id N --data-dir DIR [--tick-ms 10]`."""
    args = _parse_args(argv)
    logfmt.configure(args.log_level, args.log_format, args.id)
    try:
        replica = _build(args)
    except StartupError as exc:
        print(f"kvstore-replica: error: {exc}", file=sys.stderr)
        return 2
    replica.sched_batch = args.sched_batch == "auto"
    signal.signal(signal.SIGTERM, lambda *_: replica.stop())
    signal.signal(signal.SIGINT, lambda *_: replica.stop())
    status = 0
    try:
        replica.run()
    except Exception:  # a disk or driver failure: crash-stop, never limp on
        log.exception("replica %d: fatal error", replica.id)
        status = 1
    finally:
        log.info("replica %d shutting down", replica.id)
        replica.close()
    if replica.exit_status:
        print(f"kvstore-replica: error: {replica.driver.core.refused}", file=sys.stderr)
    return status or replica.exit_status


if __name__ == "__main__":
    sys.exit(main())
