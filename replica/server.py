"""One replica process: the event loop that drives the Paxos core.

Theory of operation
-------------------
A `Replica` owns one plyvel DB (shared by `LevelDBStorage`, the acceptor
state, and `KVStateMachine`, the KV data and sessions), one `PaxosCore`, and
two ZeroMQ ROUTER sockets (`replica.transport`): peers and clients. It runs
a single-threaded loop; each iteration:

1. polls both sockets, with a timeout up to the next tick;
2. drains what is waiting (at most `DRAIN_LIMIT` frames per socket):
   - peer messages go straight to `core.step`;
   - client requests are decoded and validated; STATUS, stale GETs, bad
     requests and anything a follower cannot serve (REDIRECT / UNAVAILABLE)
     are answered at once; writes (the raw request bytes) and linearizable
     GETs are collected;
3. on the leader, ONE `core.propose(writes)` and ONE `core.read_index(ids)`;
4. `core.tick()` for every tick due (at most `MAX_CATCHUP_TICKS` when the
   loop stalled; the schedule is then reset);
5. honours the merged `Ready` of every call above ONCE (group commit):
   (1) one synced `LevelDBStorage.persist` batch if anything must persist,
   (2) only then send every message,
   (3) `KVStateMachine.apply(committed)` in slot order,
   (4) answer clients: the results of applied commands go to the waiting
       client of (client_id, seq), released reads are served from the state
       machine, failed reads get REDIRECT / UNAVAILABLE;
6. if leadership was lost (or the ballot changed), every write and read
   still waiting gets REDIRECT / UNAVAILABLE: the client retries, and its
   session (client_id, seq) makes a retry of an applied write exactly-once.

Merging the Readys of one iteration is sound: promises only grow, a later
vote for a slot supersedes an earlier one in the same batch, committed
entries arrive in slot order, and everything is persisted before anything
of the iteration is sent.

One exception to "persist, then send", on the leader's hot path: Phase2a
messages are sent just BEFORE the batch holding the leader's own vote is
synced (`EARLY_PHASE2A`). This is the Raft "leader writes its log in parallel
with replicating it" optimisation and it is safe because Phase2a reveals no
acceptor state of the sender: the ballot it uses was made durable as the
leader's own promise before its Phase1a went out, and the leader's own vote
only counts towards a quorum once some follower's Phase2b for that slot is
processed, which happens in a later iteration, after the sync returned (a
single-replica cluster, whose own vote is a quorum, has no peers to send
to, and answers clients only after the sync as usual). Every
message that does reveal acceptor state (Phase1b, Phase2b, Nack, Phase1a
with a fresh promise, ...) waits for the sync. Set `EARLY_PHASE2A = False`
for the textbook order (one fsync more on the commit path).

A write that a client retries (same client_id and seq, e.g. a lazy-pirate
client that reopened its socket) while the first copy is still in flight
only replaces the reply envelope; it is not proposed twice.

Tests build deliberately broken variants by monkeypatching the small
methods `_persist` (e.g. sync=False) and `_read_linearizable` (e.g. serve
GETs locally).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Hashable
from pathlib import Path

import plyvel
import zmq

from kvstore.config import ConfigError, ReplicaAddress, load_cluster_config
from kvstore.limits import MAX_BATCH_BYTES, MAX_REQUEST_BYTES
from kvstore.protocol import (
    WRITE_OPS,
    Op,
    ProtocolError,
    Request,
    Response,
    Status,
    decode_request,
    encode_response,
    validate_request,
)
from kvstore.statemachine import KVStateMachine, Result
from replica.messages import Message, Phase2a
from replica.paxos import CoreConfig, PaxosCore, Ready, Role
from replica.storage import LevelDBStorage
from replica.transport import BadFrames, BindError, ClientTransport, Envelope, PeerTransport

log = logging.getLogger("replica.server")

DRAIN_LIMIT = 1024
"""Most frames taken from one socket per loop iteration (fairness, bounded latency)."""
MAX_CATCHUP_TICKS = 5
"""Most ticks run in one iteration after a stall; the rest are skipped."""
EARLY_PHASE2A = True
"""Send the leader's Phase2a before syncing its own vote (see the docstring)."""

_UNAVAILABLE_NO_LEADER = encode_response(Response(Status.UNAVAILABLE, error="no leader known"))
_UNAVAILABLE_LOST = encode_response(
    Response(Status.UNAVAILABLE, error="leadership changed before the request completed")
)


def merge_ready(acc: Ready, ready: Ready) -> None:
    """Folds `ready` (a later call) into `acc` so that one pass over `acc`
    honours both in contract order."""
    if ready.promised is not None:
        acc.promised = ready.promised  # promises only grow
    if ready.votes:
        acc.votes.update(ready.votes)
    if ready.chosen:
        acc.chosen.update(ready.chosen)
    if ready.messages:
        acc.messages.extend(ready.messages)
    if ready.committed:
        acc.committed.extend(ready.committed)
    if ready.reads:
        acc.reads.extend(ready.reads)
    if ready.failed_reads:
        acc.failed_reads.extend(ready.failed_reads)


class Replica:
    """One replica: storage, state machine, core and sockets, and the loop."""

    def __init__(
        self,
        me: ReplicaAddress,
        cluster: list[ReplicaAddress],
        data_dir: str | os.PathLike[str],
        tick_ms: float = 10.0,
        core_config: CoreConfig | None = None,
    ) -> None:
        self.id = me.id
        self.me = me
        self.db = plyvel.DB(str(data_dir), create_if_missing=True)
        try:
            self.storage = LevelDBStorage(self.db)
            self.sm = KVStateMachine(self.db)
            config = core_config or CoreConfig(max_batch_bytes=MAX_BATCH_BYTES)
            self.core = PaxosCore(
                me.id,
                [r.id for r in cluster],
                self.storage.load(),
                self.sm.applied_index,
                random.Random(os.urandom(16)),
                config,
            )
            self._open_sockets(cluster)
        except BaseException:
            self.db.close()
            raise
        self._tick_s = tick_ms / 1000.0
        self._next_tick = time.monotonic() + self._tick_s
        self._stopping = False
        self._waiting: dict[tuple[bytes, int], Envelope] = {}  # writes in flight
        self._reads: dict[Hashable, tuple[Envelope, bytes]] = {}  # read id -> (env, key)
        self._read_seq = 0
        self._writes: list[bytes] = []  # this iteration's new write commands
        self._new_reads: list[Hashable] = []  # this iteration's new read ids
        self._leadership = self._leadership_key()
        self._last_seen = (self.core.role, self.core.leader_id)

    def _open_sockets(self, cluster: list[ReplicaAddress]) -> None:
        self.ctx = zmq.Context()
        self.bad = BadFrames()
        peers = {r.id: r.peer for r in cluster if r.id != self.id}
        try:
            self.peers = PeerTransport(self.ctx, self.me.peer_bind, peers, self.bad)
            try:
                self.clients = ClientTransport(self.ctx, self.me.client_bind, self.bad)
            except BaseException:
                self.peers.close()
                raise
        except BaseException:
            self.ctx.term()
            raise
        self.poller = zmq.Poller()
        self.poller.register(self.peers.inbox, zmq.POLLIN)
        self.poller.register(self.clients.router, zmq.POLLIN)

    # ------------------------------------------------------------------ loop

    def stop(self) -> None:
        """Asks the loop to finish its iteration and return (signal-safe)."""
        self._stopping = True

    def run(self) -> None:
        """Runs the event loop until `stop()`."""
        log.info(
            "replica %d up: peers on %s, clients on %s, %d replicas, applied index %d",
            self.id,
            self.me.peer_bind,
            self.me.client_bind,
            len(self.core.peers) + 1,
            self.sm.applied_index,
        )
        more = False
        while not self._stopping:
            more = self.run_once(0 if more else None)

    def run_once(self, timeout_ms: int | None = None) -> bool:
        """One iteration of the loop; returns True if input may be left over.
        `timeout_ms` None waits up to the next tick."""
        if timeout_ms is None:
            wait = self._next_tick - time.monotonic()
            timeout_ms = max(0, int(wait * 1000.0 + 0.999))
        events = dict(self.poller.poll(timeout_ms))
        acc = Ready()
        more = False
        # Peers first: a client request then meets the freshest role.
        if self.peers.inbox in events:
            more = self._drain_peers(acc)
        if self.clients.router in events:
            more = self._drain_clients() or more
        self._submit(acc)
        self._run_ticks(acc)
        self._finish(acc)
        self._after_iteration()
        return more

    def _drain_peers(self, acc: Ready) -> bool:
        inbox: list[Message] = []
        more = self.peers.recv(DRAIN_LIMIT, inbox)
        step = self.core.step
        for msg in inbox:
            merge_ready(acc, step(msg))
        return more

    def _drain_clients(self) -> bool:
        requests: list[tuple[Envelope, bytes]] = []
        more = self.clients.recv(DRAIN_LIMIT, requests)
        for envelope, payload in requests:
            self._on_request(envelope, payload)
        return more

    def _submit(self, acc: Ready) -> None:
        """One propose and one read_index call for the whole iteration. If the
        role changed since the requests were taken, they are left to
        `_after_iteration`, which fails everything of the lost leadership."""
        if self.core.role is not Role.LEADER:
            self._writes.clear()
            self._new_reads.clear()
            return
        if self._writes:
            writes, self._writes = self._writes, []
            merge_ready(acc, self.core.propose(writes))
        if self._new_reads:
            reads, self._new_reads = self._new_reads, []
            merge_ready(acc, self.core.read_index(reads))

    def _run_ticks(self, acc: Ready) -> None:
        now = time.monotonic()
        if now < self._next_tick:
            return
        for _ in range(MAX_CATCHUP_TICKS):
            merge_ready(acc, self.core.tick())
            self._next_tick += self._tick_s
            if now < self._next_tick:
                return
        self._next_tick = now + self._tick_s  # stalled: skip the missed ticks

    # -------------------------------------------------------- the Ready order

    def _finish(self, acc: Ready) -> None:
        """Honours the merged Ready: persist, send, apply, answer."""
        messages = acc.messages
        if acc.must_persist():
            if EARLY_PHASE2A and messages:
                messages = self._send_early(messages)
            self._persist(acc)
        if messages:
            self.peers.send(messages)
        results = self.sm.apply(acc.committed) if acc.committed else None
        if results:
            self._answer_writes(results)
        if acc.reads:
            self._answer_reads(acc.reads)
        if acc.failed_reads:
            self._fail_reads(acc.failed_reads)

    def _persist(self, acc: Ready) -> None:
        """Step (1): the acceptor writes of the iteration, one synced batch."""
        self.storage.persist(acc.promised, acc.votes, acc.chosen, sync=True)

    def _send_early(self, messages: list[tuple[int, Message]]) -> list[tuple[int, Message]]:
        """Sends the Phase2a messages now; returns the rest (see EARLY_PHASE2A)."""
        early = [m for m in messages if type(m[1]) is Phase2a]
        if not early:
            return messages
        self.peers.send(early)
        if len(early) == len(messages):
            return []
        return [m for m in messages if type(m[1]) is not Phase2a]

    def _answer_writes(self, results: list[Result]) -> None:
        waiting = self._waiting
        if not waiting:
            return
        for client_id, seq, resp in results:
            envelope = waiting.pop((client_id, seq), None)
            if envelope is not None:
                self.clients.reply(envelope, encode_response(resp))

    def _answer_reads(self, read_ids: list[Hashable]) -> None:
        for rid in read_ids:
            entry = self._reads.pop(rid, None)
            if entry is not None:
                self.clients.reply(entry[0], encode_response(self._read_local(entry[1])))

    def _fail_reads(self, read_ids: list[Hashable]) -> None:
        for rid in read_ids:
            entry = self._reads.pop(rid, None)
            if entry is not None:
                self.clients.reply(entry[0], self._not_leader_reply())

    def _after_iteration(self) -> None:
        """Fails whatever waits on a leadership that ended; logs role changes."""
        key = self._leadership_key()
        if key != self._leadership:
            self._leadership = key
            if self._waiting or self._reads:
                reply = self._not_leader_reply(_UNAVAILABLE_LOST)
                for envelope in self._waiting.values():
                    self.clients.reply(envelope, reply)
                for envelope, _ in self._reads.values():
                    self.clients.reply(envelope, reply)
                self._waiting.clear()
                self._reads.clear()
        seen = (self.core.role, self.core.leader_id)
        if seen != self._last_seen:
            self._last_seen = seen
            self._log_role()

    def _leadership_key(self) -> tuple[int, int] | None:
        core = self.core
        return tuple(core.ballot) if core.role is Role.LEADER else None

    def _log_role(self) -> None:
        core = self.core
        if core.role is Role.LEADER:
            log.info("replica %d is now the leader (ballot %s)", self.id, tuple(core.ballot))
        elif core.leader_id is not None:
            log.info("replica %d follows leader %d", self.id, core.leader_id)
        else:
            log.info("replica %d: no leader known (%s)", self.id, core.role.value)

    # --------------------------------------------------------------- clients

    def _on_request(self, envelope: Envelope, payload: bytes) -> None:
        """Decodes, validates and routes one client request."""
        if len(payload) > MAX_REQUEST_BYTES:
            self.bad.note("client_too_large", f"request of {len(payload)} bytes")
            error = f"request of {len(payload)} bytes is over the limit of {MAX_REQUEST_BYTES}"
            self._reply(envelope, Response(Status.TOO_LARGE, error=error))
            return
        try:
            req = decode_request(payload)
        except ProtocolError as exc:
            self.bad.note("client_bad_request", str(exc))
            self._reply(envelope, Response(Status.BAD_REQUEST, error=str(exc)))
            return
        problem = validate_request(req)
        if problem is not None:
            self._reply(envelope, Response(problem[0], error=problem[1]))
            return
        op = req.op
        if op in WRITE_OPS:
            self._on_write(envelope, req, payload)
        elif op == Op.GET:
            if req.stale:
                self._reply(envelope, self._read_local(req.key))
            else:
                self._read_linearizable(envelope, req)
        else:
            self._reply(envelope, self._status())

    def _on_write(self, envelope: Envelope, req: Request, payload: bytes) -> None:
        if self.core.role is not Role.LEADER:
            self.clients.reply(envelope, self._not_leader_reply())
            return
        key = (req.client_id, req.seq)
        if key not in self._waiting:
            self._writes.append(payload)
        self._waiting[key] = envelope  # a retry only replaces the envelope

    def _read_linearizable(self, envelope: Envelope, req: Request) -> None:
        """A GET that must reflect every write acknowledged before it: queued
        for the iteration's read_index on the leader, redirected elsewhere."""
        if self.core.role is not Role.LEADER:
            self.clients.reply(envelope, self._not_leader_reply())
            return
        self._read_seq += 1
        self._reads[self._read_seq] = (envelope, req.key)
        self._new_reads.append(self._read_seq)

    def _read_local(self, key: bytes) -> Response:
        """The key as of this replica's applied index."""
        found = self.sm.get(key)
        if found is None:
            return Response(Status.NOT_FOUND)
        return Response(Status.OK, value=found[0], version=found[1])

    def _not_leader_reply(self, unknown: bytes = _UNAVAILABLE_NO_LEADER) -> bytes:
        """REDIRECT to the known leader, else `unknown` (UNAVAILABLE)."""
        leader = self.core.leader_id
        if leader is None or leader == self.id:
            return unknown
        return encode_response(Response(Status.REDIRECT, leader=leader))

    def _reply(self, envelope: Envelope, resp: Response) -> None:
        self.clients.reply(envelope, encode_response(resp))

    def _status(self) -> Response:
        return Response(Status.OK, info=self.status_info())

    def status_info(self) -> dict:
        """The STATUS report (docs/CONTRACTS.md)."""
        core = self.core
        # The ballot of the leader we know (our own when leading), else the
        # highest we promised.
        ballot = core.promised if core.leader_id is None else core.leader_ballot
        return {
            "id": self.id,
            "role": core.role.value,
            "leader": core.leader_id,
            "ballot": [ballot[0], ballot[1]],
            "promised": [core.promised[0], core.promised[1]],
            "commit_index": core.commit_index,
            "applied_index": self.sm.applied_index,
            "log_size": core.log_size,
            "revision": self.sm.revision,
            "peers": list(core.peers),
            "bad_frames": self.bad.as_dict(),
            "waiting_writes": len(self._waiting),
            "pending_reads": len(self._reads),
        }

    # ---------------------------------------------------------------- close

    def close(self) -> None:
        """Closes the sockets (linger 0) and the DB."""
        self.peers.close()
        self.clients.close()
        self.ctx.term()
        self.db.close()
        log.info("replica %d stopped", self.id)


# ------------------------------------------------------------------ command


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kvstore-replica", description="Run one replica of the key-value store."
    )
    parser.add_argument("--config", required=True, help="cluster config file (TOML)")
    parser.add_argument("--id", required=True, type=int, help="this replica's id")
    parser.add_argument("--data-dir", required=True, help="LevelDB directory")
    parser.add_argument("--tick-ms", type=float, default=10.0, help="tick length (ms)")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    args = parser.parse_args(argv)
    if not args.tick_ms > 0:
        parser.error("--tick-ms must be > 0")
    return args


class StartupError(Exception):
    """A problem that stops the replica from starting: one line, exit 2."""


def _build(args: argparse.Namespace) -> Replica:
    try:
        cluster = load_cluster_config(args.config)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    me = next((r for r in cluster if r.id == args.id), None)
    if me is None:
        ids = ", ".join(str(r.id) for r in cluster)
        raise StartupError(f"replica id {args.id} is not in {args.config} (ids: {ids})")
    data_dir = Path(args.data_dir)
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        return Replica(me, cluster, data_dir, tick_ms=args.tick_ms)
    except BindError as exc:
        raise StartupError(str(exc)) from None
    except (plyvel.Error, OSError) as exc:
        raise StartupError(f"cannot open the data directory {data_dir}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    """`kvstore-replica --config FILE --id N --data-dir DIR [--tick-ms 10]`."""
    args = _parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format=f"%(asctime)s replica-{args.id} %(levelname)s %(message)s",
    )
    try:
        replica = _build(args)
    except StartupError as exc:
        print(f"kvstore-replica: error: {exc}", file=sys.stderr)
        return 2
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
    return status


if __name__ == "__main__":
    sys.exit(main())
