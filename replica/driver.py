"""The replica driver: carries out the Paxos core's `Ready` and keeps track of
the clients waiting for an answer. No sockets, no disk: everything it touches
comes in through the small interfaces below, so the same class runs in the
replica process (replica/server.py: LevelDB, ZeroMQ, the wall clock) and in
the deterministic simulator (tests/sim: in-memory twins, a simulated network
and clock, crashes that lose unsynced writes).

Theory of operation
-------------------
The driver is fed one batch of input at a time by `iterate(messages,
requests)` (the server's poll loop hands it whatever arrived since the last
call; the simulator whatever its schedule delivers). One iteration:

1. every peer message goes to `core.step`, in arrival order;
2. every client request is parsed (`kvstore.protocol.parse_request`, the one
   request path); STATUS, stale reads, bad requests and anything a follower
   cannot serve (REDIRECT / UNAVAILABLE) are answered at once; writes (the
   raw request bytes) and linearizable reads (GET, RANGE) are collected;
3. on the leader, ONE `core.propose(writes)` and ONE `core.read_index(ids)`;
4. `core.tick()` for every tick that the clock says is due (at most
   `MAX_CATCHUP_TICKS` when the loop stalled; the schedule is then reset);
5. the `Ready`s of all the calls above are merged (`Ready.merge`) and
   honoured ONCE, in contract order (group commit):
   (1) one synced `storage.persist` batch if anything must persist
       (with committed slots to apply, handed to a writer thread while (3)
       runs: "Applying while the batch is synced" below),
   (2) only then every message is sent,
   (3) `state_machine.apply(committed)` in slot order (its unsynced
       LevelDB batch is written after the writers' answers of (4)),
   (4) clients are answered: the result of an applied command goes to the
       client waiting on its (client_id, seq); released reads are served
       from the state machine, once (3)'s batch is written; failed reads
       get REDIRECT / UNAVAILABLE;
6. if leadership was lost (or the ballot changed), every write and read still
   waiting gets REDIRECT / UNAVAILABLE: the client retries, and its session
   (client_id, seq) makes the retry of an applied write exactly-once.

A write retried (same client_id and seq, e.g. by a lazy-pirate client that
reopened its socket) while the first copy is in flight only replaces the
reply envelope; it is not proposed twice.

The early Phase2a exception to "persist, then send"
---------------------------------------------------
On the leader's hot path, Phase2a messages are sent just BEFORE the batch
holding the leader's own vote is synced (`early_phase2a`, on by default).
This is Raft's "the leader writes its log in parallel with replicating it",
and it is safe because a Phase2a reveals no acceptor state of its sender:
the ballot it uses was made durable as the leader's own promise before its
Phase1a went out, and the leader's own vote counts towards a quorum only
once some follower's Phase2b for that slot is processed, which happens in a
LATER iteration, after this iteration's sync returned (a Phase2b cannot
answer a Phase2a that has not been sent yet). If the leader crashes between
sending the Phase2a and syncing, its vote is lost, but it was never counted
and never revealed: the followers' votes alone decide (the simulator crashes
replicas exactly there: tests/sim, the early-Phase2a crash variant). A
single-replica cluster, whose own vote is a quorum at once, has no peers to
send to and answers only after the sync as usual. A leader that is the only
voter of a membership with learners counts its own vote at once too, and
its next Phase2a or heartbeat in the same Ready would carry the commit
index that vote made: a Ready in which a slot was chosen by the own vote
alone (`Ready.own_quorum`) sends nothing early (the simulator found this
with membership changes). Every message that does
reveal acceptor state (Phase1b, Phase2b, Nack, HeartbeatAck, ReadVouch, a Phase1a with
a fresh promise) waits for the sync. `early_phase2a=False` gives the textbook
order (one fsync more on the commit path). The argument needs the sync to
complete within the iteration that sent the Phase2a, which it still does
when the state machine applies beside it (below).

Applying while the batch is synced
----------------------------------
When an iteration has both a batch to sync and committed slots to apply
(a busy leader: new proposals and Phase2b answers; a busy follower: new
votes and a commit index), and at least `overlap_min_commands` commands
to apply (OVERLAP_MIN_COMMANDS; the simulator uses 1 on half its
replicas) that it will execute (a follower holding the leader's effects
does not overlap: writing them costs less than the hand-over), step (1)
is handed to the storage's writer
thread (`storage.persist_begin`, replica/storage.py `SyncWriter`: plyvel
releases the GIL in the write and fsync) and step (3) runs meanwhile on
the loop's thread; the loop waits for the sync before step (2) and step
(4). What is visible outside is unchanged: no message and no answer
leaves before the batch is on disk (the early Phase2a excepted, as
before), and the iteration ends only after its sync, so the early-Phase2a
argument holds as stated. What changes is the order of two writes in
LevelDB's log: the state machine's unsynced batch may now come before the
acceptor batch, and a crash during the sync may keep it and lose the
acceptor batch. That is safe because every slot applied in such an
iteration was chosen by votes that were durable before it began: a
follower applies what the leader reported committed, and a leader counts
its own vote only after a follower's Phase2b, which answers a Phase2a sent
in an earlier iteration, after that iteration's sync. The one exception
is a slot chosen by the leader's own vote of this very batch
(`Ready.own_quorum`: a single voter, or a leader whose other members are
learners): such an iteration syncs first, as before. The simulator writes
the acceptor batch before or after the state machine's at random, keeps a
random prefix of unsynced writes when it crashes in a sync, checks that
nothing is applied that no durable majority chose, and catches a driver
that applies beside the sync in the `own_quorum` case too
(tests/sim, `OverlapsOwnQuorum`).

Followers write the leader's effects
-----------------------------------
Executing a command (parse, session, record, watch event, msgpack) is the
largest Python cost per write, and every replica paid it. The leader now
applies with `capture=True` and sends the batch it wrote, as one `Effects`
message per apply (of at least EFFECTS_MIN_COMMANDS commands) and peer,
held until its next message to the peers (a Phase2a or a heartbeat, in
the next iteration) and sent right ahead of it, so that both mostly
travel in one TCP write and a follower takes them in one turn of its
loop; a follower about to apply exactly those slots writes that batch
instead (`apply_effects`,
kvstore/statemachine.py "Effects", which checks that the leader made it
from the same state) and executes whatever no fitting effects cover. It is
the same batch, since applying is deterministic and a slot's chosen value
is unique; the simulator compares every replica's state at every applied
index with the others' and catches followers that trust effects made from
another state (tests/sim, `TrustsEffectsOfAnotherGeneration`). Effects
reveal no acceptor state and may be sent at any time.

For them to arrive in time, the leader's core advertises a commit index
no higher than the driver's applied index (`core.note_applied`, after every
iteration): a follower learns that slot s is chosen only from a Phase2a or
heartbeat sent after the leader applied s, and the leader's Effects of s went
out before it on the same ordered channel to that peer. Where they are
lost or not sent (small applies), a batch of large values is not
captured, or a follower's state is in another generation (one of the two
installed a snapshot since), the follower executes, as every replica did
before. Only the current leader's effects are kept (EFFECTS_HELD at most),
and none by a leader.

Large values
------------
A PUT's value of at least `[storage] value_log_min_bytes` is kept in the
replica's value log beside LevelDB (kvstore/values.py), and applying it
does not sync the log: a record may survive a power failure that its
value does not. Such a value is restored when the replica starts, from
the chosen value of its slot (`repair_values`), which is durable locally
before any batch that applies the slot is written: the leader's own vote
(synced before it is counted), a follower's vote (synced before its
Phase2b), or a chosen value learned by catch-up (persisted in the
iteration's batch, whose sync ends before step (3)'s batch is written,
also when applying beside it: `write_applied` comes after the wait).
Step (1) syncs the value log before it persists a compaction point
(`sync_values`): the slots below it, whose values could no longer be
restored, have every entry durable. The simulator loses unsynced value
log entries in its power failures and catches a replica that does not
restore them, or compacts before syncing them (tests/sim). The vote of
such a PUT is persisted in the storage's vote log instead of LevelDB
(replica/storage.py, "The vote log"); step (1)'s sync covers both, in
the same place of the iteration, so nothing above changes.

The seams (typing.Protocol): `AcceptorStorage` (replica/storage.py), and
`StateMachine`, `PeerSender`, `ClientReplier` and `Clock` below.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol

from kvstore.backup import Chunk
from kvstore.config import CompactionSettings
from kvstore.limits import (
    EFFECTS_MAX_BYTES,
    LEASE_EXPIRY_LEASES,
    MAX_BATCH_BYTES,
    MAX_DELETE_RANGE_KEYS,
    MAX_LEASE_LIST,
    SESSION_TTL_MS,
)
from kvstore.membership import CONFIG_TAG, Change, ChangeKind, Membership, encode_change
from kvstore.membership import check as check_change
from kvstore.protocol import (
    READ_OPS,
    WRITE_OPS,
    Op,
    RangeResult,
    Request,
    Response,
    Status,
    decode_member_change,
    encode_clock,
    encode_lease_expiry,
    encode_response,
    parse_request,
)
from replica.badinput import BadFrames
from replica.counters import DriverCounters
from replica.logfmt import event
from replica.messages import (
    Effects,
    Heartbeat,
    Message,
    Phase2a,
    Phase2b,
    SnapshotChunk,
    SnapshotRequest,
    Value,
)
from replica.paxos import CoreConfig, CoreStatus, DurableState, PaxosCore, Ready, Role
from replica.snapshots import (
    ClientExports,
    Exporter,
    Installer,
    SnapshotSource,
    SnapshotTarget,
)
from replica.storage import AcceptorStorage, PendingPersist
from replica.trace import Tracer
from replica.watch import EventSource, Watches

log = logging.getLogger("replica.driver")

MAX_CATCHUP_TICKS = 5
"""Most ticks run in one iteration after a stall; the rest are skipped."""
SNAPSHOT_RETRY_TICKS = 10
"""An installer that heard no chunk for this long asks again."""
SNAPSHOT_GIVE_UP_TICKS = 200
"""... and abandons the install after this long (the core asks again)."""
SNAPSHOT_IDLE_TICKS = 500
BACKUP_CHUNK_BYTES = 1 << 20
"""A backup chunk holds at most about this many bytes of records."""
BACKUP_EXPORTS = 4
"""Backups streamed from one replica at once; more are answered UNAVAILABLE."""
LEASE_CHECK_TICKS = 5
"""The leader looks for leases past their deadline every this many ticks."""
LEASE_SCAN = 1024
"""... looking at most at this many of the earliest deadlines each time."""
LEASE_RETRY_S = 1.0
"""A lease named in an expiry command is not named again for this long (the
command is applied meanwhile, normally: a repeat would be a no-op)."""
PROMOTE_MAX_BEHIND = 64
"""A learner more slots than this behind the leader is not promoted yet."""
READ_LEASE_FRACTION = 0.8
"""A read lease (`lease_reads`) lasts this fraction of the (election_ticks -
1) ticks for which the replicas that acknowledged its heartbeat round grant
no pre-vote (replica/paxos.py, "Leader leases"): the margin for clocks that
run at different rates (a follower's up to 25% faster than the leader's)."""
VOUCH_BUSY_READS = 4
"""A leader that takes this many vouched reads in one iteration answers them
with VOUCH_PAUSE: with that many, one heartbeat round per iteration costs
each read less than the VOUCH frames its client sends and the followers
receive (replica/paxos.py, "Vouched reads")."""
VOUCH_PAUSE = {"vouch": False}
"""The `info` of a read's answer that asks its client to send its next
reads without VOUCH for a while (kvstore/protocol.py, Request)."""
READ_LEASE_ROUNDS = 64
"""Send times of unacknowledged heartbeat rounds kept for a lease."""
_CHANGE_PENDING = "a membership change is in progress (it takes effect in a few slots): retry"
"""Backups streamed from one replica at once; more are answered UNAVAILABLE."""
"""An export nobody asked for a chunk of for this long is closed."""

Envelope = Any
"""Whatever the client transport needs to route a reply (for ZeroMQ the
routing frames up to the empty delimiter); opaque to the driver."""

Result = tuple[bytes, int, Response]
"""(client_id, seq, response) of one applied command (client_id b"" when the
command could not be parsed: nobody to answer)."""

Clock = Callable[[], float]
"""Monotonic seconds (time.monotonic in a process, a counter in a simulation)."""


EFFECTS_HELD = 64
"""Most Effects messages a follower keeps for slots it has not applied."""

EFFECTS_MIN_COMMANDS = 4
"""The leader sends effects of an apply of at least this many commands. A
follower saves ~10 us per command it does not execute (this VM), but each
Effects message costs a send, the I/O threads of both ends and, when the
follower is idle, a wake-up of its loop of its own: with one client (one
command per slot) they made the 1-client PUT ~0.15 ms slower."""

GC_LOOP_SHARE = 0.25
"""A busy loop spends at most about this share of its time collecting
garbage (`_collect_garbage`): a step of s seconds is followed by 3s
without one. The value log's moves keep up with writes at that share
(a step moves up to 1 MiB: kvstore/statemachine.py VALUE_GC_BYTES); an
idle loop collects at every tick."""
GC_IDLE_S = 0.05
"""With nothing to collect, a busy loop looks again after this long."""

OVERLAP_MIN_COMMANDS = 8
"""Applying beside the sync (the module docstring) only pays when there is
enough to apply: handing a batch to the writer thread and waiting for it
costs two thread wake-ups (~0.1-0.2 ms of CPU and latency on the 2-core
test VM), more than applying a command or two. A smaller apply runs after
the sync, in the loop's thread, as without the overlap. So does a
follower's apply while it holds the leader's effects, whatever its size:
writing them is cheap (64 clients, one cluster switched between the two
rules every 3 s, 8 pairs: 16 us less cluster CPU per write, 6 of 8 lower,
+4 % throughput; benchmarks/README.md "Session 17")."""


def _chosen_of(durable: DurableState, slot: int) -> Value | None:
    """The chosen value of `slot` as the durable acceptor state holds it:
    learned by catch-up, or else the own vote (the only one a replica that
    applied the slot can hold, unless catch-up gave it the chosen one)."""
    chosen = durable.chosen.get(slot)
    if chosen is not None:
        return chosen
    vote = durable.votes.get(slot)
    return None if vote is None else vote.value


def _apply_work(committed: list[tuple[int, Value]], enough: int) -> int:
    """Commands to apply (stops counting at `enough`)."""
    n = 0
    for _, value in committed:
        n += len(value)
        if n >= enough:
            break
    return n


def _fits_effects(committed: list[tuple[int, Value]]) -> bool:
    """The commands may fit in EFFECTS_MAX_BYTES of effects (which hold every
    written value at least once): large values are not captured at all."""
    room = EFFECTS_MAX_BYTES
    for _, value in committed:
        room -= sum(map(len, value))
        if room < 0:
            return False
    return True


class StateMachine(SnapshotSource, SnapshotTarget, EventSource, Protocol):
    """The replicated state machine (kvstore.statemachine.KVStateMachine),
    with its snapshot export and staged install (replica/snapshots.py) and
    its watch events (replica/watch.py)."""

    @property
    def applied_index(self) -> int:
        """Slots applied so far: the next slot to apply."""
        ...

    @property
    def revision(self) -> int: ...

    def apply(
        self, entries: Sequence[tuple[int, Value]], defer_write: bool = False, capture: bool = False
    ) -> list[Result]:
        """Applies chosen slots in order from `applied_index`; deterministic.
        `defer_write`: the batch is written by `write_applied()` (or the
        next apply); nothing is read from the state machine before that.
        `capture`: keep the batch as effects for `take_effects()`."""
        ...

    def take_effects(self) -> bytes | None:
        """The last captured apply's effects, once (None: not captured)."""
        ...

    def apply_effects(
        self, entries: list[tuple[int, Value]], effects: bytes, defer_write: bool = False
    ) -> bool:
        """Applies `entries` by writing another replica's effects of exactly
        those slots; False (nothing changed) if they do not fit."""
        ...

    def write_applied(self) -> None:
        """Writes what `apply(..., defer_write=True)` left unwritten."""
        ...

    def sync_values(self) -> None:
        """Syncs the value log (before a compaction point is persisted)."""
        ...

    def repair_values(self, chosen: Callable[[int], Value | None], compacted: int) -> int:
        """Restores value log entries a power failure lost, from the log."""
        ...

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        """(value, version) as of `applied_index`, or None when absent."""
        ...

    def read_range(self, req: Request) -> Response:
        """The reply to a RANGE as of `applied_index` (bounded, with a continuation)."""
        ...

    def install_abort(self) -> None:
        """Forgets a snapshot being staged."""
        ...

    def collect_garbage(self) -> bool:
        """Deletes a bounded part of what an install left behind."""
        ...

    def session_count(self) -> int:
        """Client sessions held (for STATUS)."""
        ...

    @property
    def log_time(self) -> int:
        """The latest leader time (unix ms) applied from the log."""
        ...

    def lease(self, lease_id: int) -> tuple[int, int, int] | None:
        """(ttl_ms, deadline in log time, keys) of a lease, or None."""
        ...

    def lease_keys(self, lease_id: int) -> RangeResult:
        """A bounded page of the keys of a lease."""
        ...

    def lease_ids(self, after: int, limit: int) -> tuple[list[int], bool]:
        """Lease ids above `after`, and whether more remain."""
        ...

    def leases_due(self, now_ms: int, limit: int) -> Iterable[tuple[int, int, int]]:
        """(id, ttl_ms, keys) of leases whose deadline is at or before now_ms."""
        ...


class PeerSender(Protocol):
    def send(self, messages: Iterable[tuple[int, Message]]) -> None:
        """Sends (destination id, message) pairs; never blocks; may drop."""
        ...


class ClientReplier(Protocol):
    def reply(self, envelope: Envelope, payload: bytes) -> None:
        """Sends one encoded Response; dropped if the client is gone."""
        ...


def _encoded(status: Status, error: str) -> bytes:
    return encode_response(Response(status, error=error))


_UNAVAILABLE_NO_LEADER = _encoded(Status.UNAVAILABLE, "no leader known")
_UNAVAILABLE_LOST = _encoded(Status.UNAVAILABLE, "leadership changed before the request completed")


class ReplicaDriver:
    """One replica's core, storage, state machine and waiting clients."""

    core_class: type[PaxosCore] = PaxosCore

    def __init__(
        self,
        replica_id: int,
        replica_ids: Sequence[int],
        storage: AcceptorStorage,
        state_machine: StateMachine,
        peers: PeerSender,
        clients: ClientReplier,
        *,
        rng: random.Random,
        clock: Clock,
        tick_s: float,
        core_config: CoreConfig | None = None,
        bad: BadFrames | None = None,
        early_phase2a: bool = True,
        overlap_apply: bool = True,
        compaction: CompactionSettings | None = None,
        wall_clock: Clock | None = None,
        session_ttl_ms: int = SESSION_TTL_MS,
        membership: Membership | None = None,
        joining: bool = False,
        lease_reads: bool = False,
    ) -> None:
        """`membership` is a new cluster's (every replica a voter, with its
        addresses); by default the voters `replica_ids` without addresses. A
        replica that ever applied a slot has its own record instead.
        `joining`: this replica started on an empty directory to join a
        running cluster (replica/paxos.py, "Joining"). `lease_reads`: as
        leader, answer linearizable reads on a read lease instead of a
        heartbeat round (replica/paxos.py, "Leader leases"; it turns on the
        core's `read_lease_guard`, which every replica of the cluster needs)."""
        if not tick_s > 0:
            raise ValueError("tick_s must be > 0")
        if not 1 <= session_ttl_ms < 2**64:
            raise ValueError("session_ttl_ms must be >= 1")
        self.id = replica_id
        self.storage = storage
        self.sm = state_machine
        self.peers = peers
        self.clients = clients
        self.bad = bad if bad is not None else BadFrames()
        self.counters = DriverCounters()  # read by replica/metrics.py
        self.early_phase2a = early_phase2a
        self.overlap_apply = overlap_apply
        self.overlap_min_commands = OVERLAP_MIN_COMMANDS
        self.effects_min_commands = EFFECTS_MIN_COMMANDS
        ids = frozenset(replica_ids)
        self._bootstrap = membership or Membership(0, ids, started=ids)
        config = core_config or CoreConfig(max_batch_bytes=MAX_BATCH_BYTES)
        if lease_reads:
            config = dataclasses.replace(config, read_lease_guard=True)
        self.read_lease_s = self._read_lease_seconds(config, tick_s) if lease_reads else 0.0
        self._read_lease_until = 0.0  # clock time; valid while clock() is below it
        self._hb_sent: dict[int, float] = {}  # heartbeat round -> clock before its send
        durable = storage.load()
        self._finish_interrupted_install(replica_id, state_machine, durable.compacted)
        restored = state_machine.repair_values(
            lambda slot: _chosen_of(durable, slot), durable.compacted
        )
        if restored:
            log.warning(
                "replica %d: %d value(s) the value log lost in a crash restored from the log",
                replica_id,
                restored,
            )
        self.core = self.core_class(
            replica_id,
            list(replica_ids),
            durable,
            state_machine.applied_index,
            rng,
            config,
            schedule=state_machine.membership_schedule(self._bootstrap),
            joining=joining and state_machine.applied_index == 0,
        )
        self._member_requests = 0
        self.tracer: Tracer | None = None  # replica/trace.py; off unless set
        self._move_to: int | None = None  # kvctl move-leader, for _submit
        self.compaction = compaction or CompactionSettings()
        self._exporter = Exporter(
            replica_id, state_machine, self.compaction.snapshot_chunk_bytes, SNAPSHOT_IDLE_TICKS
        )
        self._backups = ClientExports(
            replica_id, state_machine, BACKUP_CHUNK_BYTES, SNAPSHOT_IDLE_TICKS, BACKUP_EXPORTS
        )
        self._installer: Installer | None = None
        self._gc_next = 0.0  # a busy loop collects garbage again from then on
        self._held: deque[tuple[int, int]] = deque()  # (slot, bytes) applied since compaction
        self._effects_in: dict[int, Effects] = {}  # follower: the leader's, by first slot
        self._effects_out: list[Effects] = []  # leader: sent before its next peer message
        self._held_bytes = 0
        self._compact_to: int | None = None
        self._clock = clock
        self._wall_clock = wall_clock
        self._session_ttl_ms = session_ttl_ms  # stamped into each clock command as leader
        self._tick_s = tick_s
        self._next_tick = clock() + tick_s
        self._waiting: dict[tuple[bytes, int], Envelope] = {}  # writes in flight
        self._reads: dict[Hashable, tuple[Envelope, Request]] = {}  # read id -> (env, GET/RANGE)
        self._read_seq = 0
        self._writes: list[bytes] = []  # this iteration's new write commands
        self._new_reads: list[Hashable] = []  # this iteration's new read ids
        self._new_tokens: list[bytes | None] = []  # their vouch tokens (if any has one)
        self._vouches: dict[int, list[bytes]] = {}  # VOUCH requests: target -> tokens
        self._vouch_busy: set[Hashable] = set()  # vouched reads answered with VOUCH_PAUSE
        self._leader_since_ms: int | None = None  # wall clock when this leadership began
        self._next_lease_check = 0.0
        self._expiring: dict[int, float] = {}  # lease id -> when named in an expiry command
        self._watches = Watches(state_machine, self._reply)  # held WATCH long polls
        status = self.core.status()
        self._leadership = _leadership_key(status)
        self._last_seen = (status.role, status.leader_id)

    # ------------------------------------------------------------ iteration

    @staticmethod
    def _read_lease_seconds(config: CoreConfig, tick_s: float) -> float:
        """How long a read lease lasts from its heartbeat's send."""
        return max(0, config.election_ticks - 1) * tick_s * READ_LEASE_FRACTION

    def seconds_to_next_tick(self) -> float:
        """How long the caller may wait for input before calling `iterate`."""
        return max(0.0, self._next_tick - self._clock())

    def iterate(
        self, messages: Sequence[Message], requests: Sequence[tuple[Envelope, bytes]]
    ) -> None:
        """One iteration: step, route, submit, tick, then honour the merged
        Ready once (see the module docstring)."""
        acc = Ready()
        step = self.core.step
        tracer = self.tracer
        began = 0.0 if tracer is None else tracer.now()
        before = self._clock() if self.read_lease_s else 0.0  # any heartbeat is sent after
        for msg in messages:  # peers first: a request then meets the freshest role
            kind = type(msg)
            if kind is SnapshotRequest:
                acc.messages.append((msg.sender, self._exporter.on_request(msg)))
            elif kind is SnapshotChunk:
                self._on_snapshot_chunk(msg, acc)
            elif kind is Effects:
                self._on_effects(msg)
            else:
                acc.merge(step(msg))
                if tracer is not None and (kind is Phase2a or kind is Phase2b):
                    self._trace_message(msg, began)
        for envelope, payload in requests:
            self._on_request(envelope, payload)
        if self._vouches:
            for target, tokens in self._vouches.items():
                acc.merge(self.core.vouch(target, tokens))
            self._vouches.clear()
        self._propose_lease_expiry()
        self._submit(acc)
        if tracer is not None and acc.votes and self.core.is_leader:
            self._trace_proposed(acc, began)
        self._run_ticks(acc)
        self._start_install(acc)
        if self.read_lease_s:
            self._note_read_lease(acc, before)
        self._finish(acc)
        self._collect_garbage(quiet=not messages and not requests)
        self._after_iteration()

    def _submit(self, acc: Ready) -> None:
        """One propose and one read_index call for the whole iteration. If the
        role changed since the requests were taken, they are left to
        `_after_iteration`, which fails everything of the lost leadership."""
        if not self.core.is_leader:
            self._writes.clear()
            self._new_reads.clear()
            self._new_tokens.clear()
            self._move_to = None
            return
        if self._move_to is not None:
            target, self._move_to = self._move_to, None
            try:
                acc.merge(self.core.transfer(target))
                log.info("replica %d: handing leadership to replica %d", self.id, target)
            except ValueError as exc:
                log.info("replica %d: no hand-over: %s", self.id, exc)
        if self._writes:
            writes, self._writes = self._writes, []
            self.counters.proposed(len(writes))
            if self._wall_clock is not None:  # leader time and session TTL for the log
                now_ms = int(self._wall_clock() * 1000)
                writes.insert(0, encode_clock(now_ms, self._session_ttl_ms))
            acc.merge(self.core.propose(writes))
        if self._new_reads:
            reads, self._new_reads = self._new_reads, []
            tokens, self._new_tokens = self._new_tokens, []
            if len(tokens) >= VOUCH_BUSY_READS:  # a heartbeat round is cheaper per read
                self._vouch_busy.update(r for r, t in zip(reads, tokens, strict=True) if t)
            leased = self.read_lease_s > 0 and self._clock() < self._read_lease_until
            if leased:
                self.counters.lease_reads += len(reads)
            acc.merge(self.core.read_index(reads, leased=leased, tokens=tokens or None))

    def _note_read_lease(self, acc: Ready, before: float) -> None:
        """Notes when this iteration's heartbeat rounds go out (`before`: the
        clock read before the core made them) and extends the read lease
        from the send time of the round a majority acknowledged."""
        if not self.core.is_leader:
            return
        sent = self._hb_sent
        for _, msg in acc.messages:
            if type(msg) is Heartbeat and msg.round not in sent:
                sent[msg.round] = before
        confirmed = acc.read_lease_round
        if confirmed is not None:
            at = sent.get(confirmed)
            if at is not None:
                self._read_lease_until = max(self._read_lease_until, at + self.read_lease_s)
            for r in [r for r in sent if r <= confirmed]:
                del sent[r]
        if acc.drop_read_lease:  # a membership change was chosen (after that round)
            self._read_lease_until = 0.0
            sent.clear()
        while len(sent) > READ_LEASE_ROUNDS:
            del sent[min(sent)]

    def _propose_lease_expiry(self) -> None:
        """On the leader, every LEASE_CHECK_TICKS: an expiry command for the
        leases past their deadline (the state machine checks it again by log
        time when it applies it), sent with a clock command like any write.
        etcd's rule on a leader change: a new leader gives every lease a
        full TTL from its takeover before it expires it, so a lease whose
        keep-alives were lost in the failover is not expired for it."""
        since = self._leader_since_ms
        if self._wall_clock is None or since is None or not self.core.is_leader:
            return
        now = self._clock()
        if now < self._next_lease_check:
            return
        self._next_lease_check = now + LEASE_CHECK_TICKS * self._tick_s
        self._expiring = {i: t for i, t in self._expiring.items() if now - t < LEASE_RETRY_S}
        now_ms = int(self._wall_clock() * 1000)
        due: list[int] = []
        keys = 0
        for lease_id, ttl_ms, held in self.sm.leases_due(now_ms, LEASE_SCAN):
            if now_ms < since + ttl_ms or lease_id in self._expiring:
                continue  # within the new leader's grace, or named already
            if due and (len(due) == LEASE_EXPIRY_LEASES or keys + held > MAX_DELETE_RANGE_KEYS):
                break
            due.append(lease_id)
            keys += held
            self._expiring[lease_id] = now
        if due:
            self._writes.append(encode_lease_expiry(due))

    def _lease_read(self, req: Request) -> Response:
        """LEASE_TTL (with the keys when keys_only) or LEASE_LIST. On the
        leader the remaining TTL counts the grace it gives after its
        election and its wall clock; elsewhere (stale) log time."""
        if req.op is Op.LEASE_LIST:
            ids, more = self.sm.lease_ids(req.lease, MAX_LEASE_LIST)
            return Response(Status.OK, info={"leases": ids, "more": more})
        found = self.sm.lease(req.lease)
        if found is None:
            return Response(Status.NOT_FOUND, error=f"lease {req.lease} not found")
        ttl_ms, deadline, held = found
        now_ms = self.sm.log_time
        if self._leader_since_ms is not None and self._wall_clock is not None:
            deadline = max(deadline, self._leader_since_ms + ttl_ms)
            now_ms = int(self._wall_clock() * 1000)
        info = {
            "id": req.lease,
            "granted_ttl": ttl_ms // 1000,
            "ttl": max(0, deadline - now_ms) // 1000,
            "keys": held,
        }
        keys = self.sm.lease_keys(req.lease) if req.keys_only else None
        return Response(Status.OK, info=info, result=keys)

    def _run_ticks(self, acc: Ready) -> None:
        now = self._clock()
        if now < self._next_tick:
            return
        for _ in range(MAX_CATCHUP_TICKS):
            acc.merge(self.core.tick())
            self._tick_snapshots(acc)
            self._next_tick += self._tick_s
            if now < self._next_tick:
                return
        self._next_tick = now + self._tick_s  # stalled: skip the missed ticks

    # -------------------------------------------------------- the Ready order

    def _finish(self, acc: Ready) -> None:
        """Honours the merged Ready: persist, send, apply, answer."""
        if self._compact_to is not None:  # decided after the last apply
            acc.merge(self.core.compact(self._compact_to))
            self._compact_to = None
        messages = acc.messages
        tracer = self.tracer
        if acc.must_persist():
            if self.early_phase2a and messages and not acc.own_quorum:
                messages = self._send_early(messages)
            if (
                self.overlap_apply
                and acc.committed
                and not acc.own_quorum
                and not self._effects_in  # a follower writing effects: cheap (OVERLAP_MIN_COMMANDS)
                and _apply_work(acc.committed, self.overlap_min_commands)
                >= self.overlap_min_commands
            ):
                self._finish_overlapped(acc, messages)
                return
            self._persist(acc)
            if tracer is not None:
                self._trace_persisted(acc)
        if messages:
            if tracer is not None:  # handed to ZeroMQ now (the send may yield the core)
                self._trace_sent(messages)
            self._send(messages)
        self._apply_and_answer(acc)
        self._watches.poll(self._clock())

    def _finish_overlapped(self, acc: Ready, messages: list[tuple[int, Message]]) -> None:
        """Steps (1) and (3) side by side (module docstring, "Applying while
        the batch is synced"): the batch goes to the storage's writer, the
        committed slots are applied meanwhile, and only once the batch is on
        disk are the messages sent and the clients answered."""
        if self.tracer is not None:  # the commit no longer waits for this sync
            self._trace_slots(acc.committed, "chosen_persisted")
        pending = self._persist_begin(acc)
        results = self._apply(acc)
        pending.wait()
        if self.tracer is not None:
            self._trace_persisted(acc)
        if messages:
            if self.tracer is not None:
                self._trace_sent(messages)
            self._send(messages)
        self._answer(acc, results)
        self._watches.poll(self._clock())

    def _persist_begin(self, acc: Ready) -> PendingPersist:
        """Step (1), handed to the storage's writer thread."""
        if acc.compacted is not None:
            self.sm.sync_values()  # "Large values" in the module docstring
        return self.storage.persist_begin(
            acc.promised, acc.votes, acc.chosen, compacted=acc.compacted
        )

    def _persist(self, acc: Ready) -> None:
        """Step (1): the acceptor writes of the iteration, one synced batch
        (with a new compaction point, the deletion of the log below it: the
        state machine batches that cover those slots were written before, so
        this sync makes them durable too; and the value log is synced
        first: "Large values" in the module docstring)."""
        if acc.compacted is not None:
            self.sm.sync_values()
        self.storage.persist(
            acc.promised, acc.votes, acc.chosen, sync=True, compacted=acc.compacted
        )

    def _send_early(self, messages: list[tuple[int, Message]]) -> list[tuple[int, Message]]:
        """Sends the Phase2a messages now; returns the rest (module docstring)."""
        early = [m for m in messages if type(m[1]) is Phase2a]
        if not early:
            return messages
        if self.tracer is not None:
            self._trace_sent(early)
        self._send(early)
        if len(early) == len(messages):
            return []
        return [m for m in messages if type(m[1]) is not Phase2a]

    def _apply_and_answer(self, acc: Ready) -> None:
        """Steps (3) and (4)."""
        self._answer(acc, self._apply(acc))

    def _apply(self, acc: Ready) -> list[Result] | None:
        """Step (3)."""
        results = None
        if acc.committed:
            if self.tracer is not None:  # if this iteration had nothing to sync
                self._trace_slots(acc.committed, "chosen_persisted")
            if self.core.is_leader:
                self._effects_in.clear()  # a former leader's: their results are needed here
            if self._effects_in:
                results = self._apply_with_effects(acc.committed)
            elif (
                self.core.is_leader
                and self.core.peers
                and _apply_work(acc.committed, self.effects_min_commands)
                >= self.effects_min_commands
                and _fits_effects(acc.committed)
            ):
                results = self.sm.apply(acc.committed, defer_write=True, capture=True)
                effects = self.sm.take_effects()
                if effects is not None:  # sent ahead of the next peer message
                    end = acc.committed[-1][0] + 1
                    self._effects_out.append(Effects(self.id, acc.committed[0][0], end, effects))
            else:
                results = self.sm.apply(acc.committed, defer_write=True)
            self.counters.committed_slots += len(acc.committed)
            self._note_applied(acc.committed)
            if self.tracer is not None:
                self._trace_slots(acc.committed, "applied")
        return results

    def _collect_garbage(self, quiet: bool) -> None:
        """One step of the state machine's garbage collection (what an
        install left behind, the value log's dead segments and moves), after
        the iteration answered its clients: in a quiet iteration (no input:
        the loop was idle until a tick), or once GC_LOOP_SHARE of the busy
        loop's time since the last step allows it. A step can take a few
        milliseconds (its value log and LevelDB syncs); run in every
        iteration without commits, as it was, it sat between a leader's
        Phase2a and the Phase2b answering it (100 KiB PUTs: the leader's
        request iterations had a p90 of 4.6 ms, 3.1 after;
        benchmarks/README.md, "Session 14")."""
        if self._installer is not None:
            return
        now = self._clock()
        if not quiet and now < self._gc_next:
            return
        if self.sm.collect_garbage():
            self._gc_next = now + (self._clock() - now) / GC_LOOP_SHARE
        else:
            self._gc_next = now + GC_IDLE_S

    def _send(self, messages: list[tuple[int, Message]]) -> None:
        """Sends peer messages, with the leader's effects held since its last
        send ahead of them ("Followers write the leader's effects" in the
        module docstring): every peer gets them before any message that
        could tell it those slots are chosen, and both leave together."""
        held = self._effects_out
        if held:
            self._effects_out = []
            if self.core.is_leader:
                peers = self.core.peers
                messages = [(peer, msg) for msg in held for peer in peers] + messages
        self.peers.send(messages)

    def _on_effects(self, msg: Effects) -> None:
        """Keeps the current leader's effects of slots not applied yet."""
        if msg.sender != self.core.leader_id or self.core.is_leader:
            return
        if msg.start < self.sm.applied_index or msg.end <= msg.start:
            return
        held = self._effects_in
        if len(held) >= EFFECTS_HELD:
            held.pop(min(held))
        held[msg.start] = msg

    def _apply_with_effects(self, committed: list[tuple[int, Value]]) -> list[Result]:
        """Step (3) on a follower holding effects: each run of slots that
        effects cover exactly, from the applied index on, is written from
        them; the rest is executed."""
        held = self._effects_in
        done, total = 0, len(committed)
        while done < total:
            msg = held.pop(committed[done][0], None)
            if msg is None or msg.end - msg.start > total - done:
                break
            part = committed[done : done + msg.end - msg.start]
            if not self.sm.apply_effects(part, msg.effects, defer_write=True):
                break
            done += len(part)
            self.counters.effects_slots += len(part)
        results = self.sm.apply(committed[done:], defer_write=True) if done < total else []
        applied = self.sm.applied_index
        for start in [start for start in held if start < applied]:
            del held[start]
        return results

    def _answer(self, acc: Ready, results: list[Result] | None) -> None:
        """Step (4). The writers are answered before the state machine's
        batch of step (3) is written (`apply(defer_write=True)`): their
        answers are already computed and that batch is an unsynced write
        (a large value's copy into LevelDB's log no longer delays its
        reply); reads are served after it is written."""
        try:
            if results:
                self._answer_writes(results)
            if self.tracer is not None and acc.committed:
                self._trace_replied(acc.committed)
        finally:
            self.sm.write_applied()
        if acc.reads:
            self.counters.vouched_reads += acc.vouched_reads
            self._answer_reads(acc.reads)
        if acc.failed_reads:
            self._fail_reads(acc.failed_reads)

    # ------------------------------------------------- the trace (replica/trace.py)

    def _trace_message(self, msg: Message, began: float) -> None:
        tracer = self.tracer
        assert tracer is not None
        if not tracer.wants(msg.slot):  # type: ignore[attr-defined]
            return
        if type(msg) is Phase2a:
            tracer.begin(msg.slot, "follower", began, commands=len(msg.value))
        else:
            tracer.mark(msg.slot, "p2b", began, p2b_from=msg.sender)  # type: ignore[attr-defined]

    def _trace_proposed(self, acc: Ready, began: float) -> None:
        tracer = self.tracer
        assert tracer is not None
        now = tracer.now()
        for slot, vote in acc.votes.items():
            if tracer.wants(slot) and tracer.role_of(slot) is None:
                tracer.begin(slot, "leader", began, commands=len(vote.value), proposed=now)

    def _trace_persisted(self, acc: Ready) -> None:
        tracer = self.tracer
        assert tracer is not None
        now = tracer.now()
        for slot in acc.votes:
            if tracer.wants(slot):
                tracer.mark(slot, "persisted", now)
        for slot, _ in acc.committed:
            if tracer.wants(slot):
                tracer.mark(slot, "chosen_persisted", now)

    def _trace_sent(self, messages: list[tuple[int, Message]]) -> None:
        tracer = self.tracer
        assert tracer is not None
        now = tracer.now()
        for _, msg in messages:
            kind = type(msg)
            if kind is Phase2a and tracer.wants(msg.slot):
                tracer.mark(msg.slot, "sent", now)
            elif (
                kind is Phase2b
                and tracer.wants(msg.slot)
                and tracer.role_of(msg.slot) == "follower"
            ):
                tracer.finish(msg.slot, "sent", now)

    def _trace_slots(self, entries: list[tuple[int, Value]], stage: str) -> None:
        tracer = self.tracer
        assert tracer is not None
        now = tracer.now()
        for slot, _ in entries:
            if tracer.wants(slot):
                tracer.mark(slot, stage, now)

    def _trace_replied(self, entries: list[tuple[int, Value]]) -> None:
        tracer = self.tracer
        assert tracer is not None
        now = tracer.now()
        for slot, _ in entries:
            if tracer.wants(slot) and tracer.role_of(slot) == "leader":
                tracer.finish(slot, "replied", now)

    def _answer_writes(self, results: list[Result]) -> None:
        waiting = self._waiting
        if not waiting:
            return
        reply = self.clients.reply
        for client_id, seq, resp in results:
            envelope = waiting.pop((client_id, seq), None)
            if envelope is not None:
                reply(envelope, encode_response(resp))

    def _answer_reads(self, read_ids: list[Hashable]) -> None:
        busy = self._vouch_busy
        for rid in read_ids:
            entry = self._reads.pop(rid, None)
            if entry is not None:
                resp = self._read_local(entry[1])
                if busy and rid in busy:
                    busy.discard(rid)
                    resp.info = dict(VOUCH_PAUSE)
                self.clients.reply(entry[0], encode_response(resp))

    def _fail_reads(self, read_ids: list[Hashable]) -> None:
        self._vouch_busy.difference_update(read_ids)
        for rid in read_ids:
            entry = self._reads.pop(rid, None)
            if entry is not None:
                self.clients.reply(entry[0], self._not_leader_reply())

    def _after_iteration(self) -> None:
        """Fails whatever waits on a leadership that ended; logs role changes."""
        self.core.note_applied(self.sm.applied_index)
        role, leader_id, ballot = self.core.role_view()
        key = tuple(ballot) if role is Role.LEADER else None
        if key != self._leadership:
            self._leadership = key
            self._read_lease_until = 0.0
            self._hb_sent.clear()
            self._leader_since_ms = None
            self._expiring.clear()
            self._effects_out.clear()
            if key is not None and self._wall_clock is not None:
                self._leader_since_ms = int(self._wall_clock() * 1000)
            if self._waiting or self._reads:
                reply = self._not_leader_reply(_UNAVAILABLE_LOST)
                for envelope in self._waiting.values():
                    self.clients.reply(envelope, reply)
                for envelope, _ in self._reads.values():
                    self.clients.reply(envelope, reply)
                self._waiting.clear()
                self._reads.clear()
                self._vouch_busy.clear()
        seen = (role, leader_id)
        if seen != self._last_seen:
            if leader_id is not None and leader_id != self._last_seen[1]:
                self.counters.leader_changes += 1
            self._last_seen = seen
            _log_role(self.core.status())

    # ------------------------------------------------- compaction, snapshots

    def _note_applied(self, committed: list[tuple[int, Value]]) -> None:
        """Counts what the log holds since the compaction point; decides the
        next compaction (carried out with the next iteration's batch)."""
        held = self._held
        for slot, value in committed:
            size = sum(map(len, value))
            held.append((slot, size))
            self._held_bytes += size
        policy = self.compaction
        since = self.sm.applied_index - self.core.compacted
        # Both limits count beyond the retained tail: with `log_bytes` alone,
        # a log of large commands, whose tail stays near `retained_bytes`
        # after each compaction, compacted again at every slot (a synced
        # batch each time, which held up the leader's next request).
        if (
            since < policy.log_slots + policy.retained_slots
            and self._held_bytes < policy.log_bytes + policy.retained_bytes
        ):
            return
        # Keep the newest slots within both retained limits; compact the rest.
        keep_bytes, target = 0, self.sm.applied_index
        for kept, (slot, size) in enumerate(reversed(held)):
            if kept + 1 > policy.retained_slots or keep_bytes + size > policy.retained_bytes:
                break
            keep_bytes += size
            target = slot
        while held and held[0][0] < target:
            self._held_bytes -= held.popleft()[1]
        self._compact_to = target

    def _start_install(self, acc: Ready) -> None:
        peer = acc.install_from
        if peer is None or self._installer is not None:
            return
        self._installer = Installer(
            self.id,
            self.sm,
            peer,
            retry_ticks=SNAPSHOT_RETRY_TICKS,
            give_up_ticks=SNAPSHOT_GIVE_UP_TICKS,
        )
        self.counters.installs_started += 1
        self.counters.install_started_at = self._clock()
        commit = self.core.status().commit_index
        log.info(
            "replica %d: behind replica %d's compaction point at commit index %d: "
            "asking for its snapshot",
            self.id,
            peer,
            commit,
            extra=event("snapshot_install_started", peer=peer, commit_index=commit),
        )
        acc.messages.append((peer, self._installer.request()))

    def _on_snapshot_chunk(self, msg: SnapshotChunk, acc: Ready) -> None:
        installer = self._installer
        if installer is None:
            return
        before = installer.bytes
        result = installer.on_chunk(msg, self.core.status().commit_index)
        if isinstance(result, SnapshotRequest):
            acc.messages.append((installer.peer, result))
            if installer.bytes // (64 << 20) != before // (64 << 20):
                log.info("replica %d: snapshot install: %s", self.id, installer.progress())
        elif result is not None:
            self._finish_install(result, acc)

    def _finish_install(self, index: int, acc: Ready) -> None:
        """Makes a completely staged snapshot current (replica/snapshots.py
        says why in this order)."""
        installer, self._installer = self._installer, None
        acc.install_from = None  # asked for before this install completed
        if index <= self.sm.applied_index:
            self.sm.install_abort()  # caught up by log meanwhile
            return
        # Slots the core handed out to apply in this iteration that the
        # snapshot covers are in it already.
        acc.committed = [entry for entry in acc.committed if entry[0] >= index]
        self.sm.sync_values()
        self.storage.persist(None, {}, {}, sync=True, compacted=index)
        try:
            self.sm.install_finish()
        except ValueError as exc:  # incomplete or behind: the core asks again later
            log.warning("replica %d: snapshot install not finished: %s", self.id, exc)
            self.sm.install_abort()
            return
        self._held.clear()
        self._held_bytes = 0
        acc.merge(self.core.installed(index, self.sm.membership_schedule(self._bootstrap)))
        self._note_install_end(installer, "snapshot_installed", "installed")

    @staticmethod
    def _finish_interrupted_install(replica_id: int, sm: StateMachine, compacted: int) -> None:
        """A crash between `_finish_install`'s two steps (the compaction
        point synced, the generation not yet flipped) leaves the log
        compacted past the applied index and the snapshot completely staged
        at exactly that index: flip it now. Installing another snapshot
        instead, from a peer that is behind that point, would leave the
        slots between its index and the compaction point in no log at all
        (the simulator found such a replica stuck, and its peer with it)."""
        progress = sm.install_progress()
        if compacted <= sm.applied_index or progress is None or progress["index"] != compacted:
            return
        try:
            sm.install_finish()
        except ValueError as exc:  # not completely staged: installs again
            log.warning("replica %d: staged snapshot not finished: %s", replica_id, exc)
            return
        log.info(
            "replica %d: finished the snapshot install a crash interrupted (index %d)",
            replica_id,
            compacted,
        )

    def _tick_snapshots(self, acc: Ready) -> None:
        self._exporter.tick()
        self._backups.tick()
        installer = self._installer
        if installer is None:
            return
        outcome = installer.tick()
        if outcome is True:
            self._note_install_end(installer, "snapshot_install_abandoned", "install abandoned")
            self._installer = None
        elif outcome:
            acc.messages.append((installer.peer, outcome))

    def _note_install_end(self, installer: Installer, name: str, what: str) -> None:
        """Counts and logs (once, with its figures) the end of an install."""
        c = self.counters
        progress = installer.progress()
        started, c.install_started_at = c.install_started_at, None
        seconds = round(self._clock() - started, 3) if started is not None else None
        if name == "snapshot_installed":
            c.installs_completed += 1
            c.last_install_bytes, c.last_install_keys = installer.bytes, installer.keys
        else:
            c.installs_abandoned += 1
        log.info(
            "replica %d: snapshot %s after %s s: %s",
            self.id,
            what,
            seconds,
            progress,
            extra=event(name, seconds=seconds, **progress),
        )

    # --------------------------------------------------------------- clients

    def _on_request(self, envelope: Envelope, payload: bytes) -> None:
        """Parses and routes one client request."""
        req = parse_request(payload)
        if isinstance(req, Response):
            self._note_bad_request(req, len(payload))
            self.clients.reply(envelope, encode_response(req))
            return
        op = req.op
        if op in WRITE_OPS:
            self._on_write(envelope, req, payload)
        elif op in READ_OPS:  # GET, RANGE, LEASE_TTL, LEASE_LIST
            if req.stale:
                self._reply(envelope, self._read_local(req))
            else:
                self._read_linearizable(envelope, req)
        elif op is Op.SNAPSHOT:
            self._on_backup(envelope, req)
        elif op is Op.MEMBER:
            self._on_member(envelope, req)
        elif op is Op.WATCH:  # any replica, from what it applied (replica/watch.py)
            self._watches.on_request(envelope, req, self._clock())
        elif op is Op.MOVE_LEADER:
            self._on_move_leader(envelope, req)
        elif op is Op.VOUCH:  # never answered (see "Vouched reads" in replica/paxos.py)
            target = req.expected_version
            if target is None:
                target = self.core.leader_id
            if target is not None and target != self.id:
                token = req.client_id + req.seq.to_bytes(8, "big")
                self._vouches.setdefault(target, []).append(token)
        else:  # Op.STATUS: answered by every replica itself
            self._reply(envelope, Response(Status.OK, info=self.status_info()))

    def _note_bad_request(self, resp: Response, size: int) -> None:
        if resp.status is Status.BAD_REQUEST:
            self.bad.note("client_bad_request", resp.error)
        elif resp.status is Status.TOO_LARGE:
            self.bad.note("client_too_large", f"request of {size} bytes: {resp.error}")

    def _on_write(self, envelope: Envelope, req: Request, payload: bytes) -> None:
        if not self.core.is_leader:
            self.clients.reply(envelope, self._not_leader_reply())
            return
        key = (req.client_id, req.seq)
        if key not in self._waiting:
            self._writes.append(payload)
        self._waiting[key] = envelope  # a retry only replaces the envelope

    def _read_linearizable(self, envelope: Envelope, req: Request) -> None:
        """A read that must reflect every write acknowledged before it: queued
        for the iteration's read_index on the leader, redirected elsewhere."""
        if not self.core.is_leader:
            self.clients.reply(envelope, self._not_leader_reply())
            return
        self._read_seq += 1
        self._reads[self._read_seq] = (envelope, req)
        self._new_reads.append(self._read_seq)
        nonce = req.expected_version if req.op is Op.GET else None
        if nonce is not None:  # its client asks followers to vouch for it
            if not self._new_tokens:
                self._new_tokens = [None] * (len(self._new_reads) - 1)
            self._new_tokens.append(req.client_id + nonce.to_bytes(8, "big"))
        elif self._new_tokens:
            self._new_tokens.append(None)

    def _on_backup(self, envelope: Envelope, req: Request) -> None:
        """A backup (kvstore/backup.py): a new export starts after a read-index
        round on the leader (so it holds every write acknowledged before it);
        the next chunks come from the replica that holds the export."""
        if req.value is None:
            self._read_linearizable(envelope, req)
            return
        found = self._backups.chunk(req.value, req.key or None)
        if found is None:
            self._reply(envelope, Response(Status.NOT_FOUND, error="no such snapshot export"))
            return
        reader, items, last = found
        chunk = Chunk(req.value, reader.index, reader.revision, items, last)
        self._reply(envelope, Response(Status.OK, value=chunk.pack(), leader=self.id))

    def _on_member(self, envelope: Envelope, req: Request) -> None:
        """Membership (kvstore/membership.py): a list is a linearizable read;
        a change goes through the log on the leader, one at a time. A change
        already in force is answered OK at once (a retry, or a repeat)."""
        if req.value is None:
            self._read_linearizable(envelope, req)
            return
        if not self.core.is_leader:
            self.clients.reply(envelope, self._not_leader_reply())
            return
        kind_no, rid, peer, client = decode_member_change(req.value)  # type: ignore[misc]
        kind = ChangeKind(kind_no)
        status = self.core.status()
        latest = status.membership
        assert latest is not None
        done = (
            (kind is ChangeKind.ADD_LEARNER and latest.address(rid) == (peer, client))
            or (kind is ChangeKind.PROMOTE and rid in latest.voters)
            or (kind is ChangeKind.REMOVE and rid in latest.removed)
        )
        if done:
            self._reply(envelope, self._member_info())
            return
        if status.change_pending:
            self._reply(envelope, Response(Status.UNAVAILABLE, error=_CHANGE_PENDING))
            return
        change = Change(kind, rid, latest.epoch, peer, client, b"")
        problem = check_change(latest, change) or self._unsafe_change(change, status)
        if problem is not None:
            self._reply(envelope, Response(Status.BAD_REQUEST, error=problem))
            return
        self._member_requests += 1
        request_id = b"%d/%d" % (self.id, self._member_requests)
        change = Change(kind, rid, latest.epoch, peer, client, request_id)
        self._writes.append(encode_change(change))
        self._waiting[(CONFIG_TAG + request_id, 0)] = envelope

    def _on_move_leader(self, envelope: Envelope, req: Request) -> None:
        """kvctl move-leader: the core hands over (PaxosCore.transfer) in
        this iteration; the answer says it started, or why not."""
        if not self.core.is_leader:
            self.clients.reply(envelope, self._not_leader_reply())
            return
        target = int(req.value or b"0")
        if target == self.id:
            self._reply(envelope, Response(Status.OK, leader=self.id))
            return
        status = self.core.status()
        latest = status.membership
        if latest is None or target not in latest.voters or status.change_pending:
            problem = (
                f"replica {target} is not a voter (see kvctl member list)"
                if latest is None or target not in latest.voters
                else "a membership change is in progress: retry in a moment"
            )
            self._reply(envelope, Response(Status.BAD_REQUEST, error=problem))
            return
        self._move_to = target  # started in _submit, with this iteration's Ready
        self._reply(envelope, Response(Status.OK, leader=self.id))

    def _unsafe_change(self, change: Change, status: CoreStatus) -> str | None:
        """What would make a valid change unwise now: promoting a learner
        that has not caught up, or removing a voter when the voters left
        would not make a majority among the replicas we hear from."""
        latest = status.membership
        assert latest is not None
        if change.kind is ChangeKind.PROMOTE:
            behind = status.commit_index - status.progress.get(change.replica_id, 0)
            if behind > PROMOTE_MAX_BEHIND:
                return (
                    f"replica {change.replica_id} is {behind} slots behind the leader; "
                    "promote it once it has caught up (see kvctl member list)"
                )
        if change.kind is ChangeKind.REMOVE:
            left = latest.voters - {change.replica_id}
            live = {self.id} | {p for p, _ in status.progress.items()}
            if 2 * len(left & live) <= len(left):
                return f"removing replica {change.replica_id} would leave no live majority"
        return None

    def _member_info(self) -> Response:
        latest = self.core.status().membership
        assert latest is not None
        return Response(Status.OK, info=latest.report(), leader=self.core.leader_id)

    def _backup_begin(self) -> Response:
        begun = self._backups.begin()
        if begun is None:
            return Response(Status.UNAVAILABLE, error="too many snapshot exports at once")
        export_id, reader, items, last = begun
        chunk = Chunk(export_id, reader.index, reader.revision, items, last)
        return Response(Status.OK, value=chunk.pack(), leader=self.id)

    def _read_local(self, req: Request) -> Response:
        """The key (GET) or range (RANGE) as of this replica's applied index."""
        if req.op is Op.SNAPSHOT:
            return self._backup_begin()
        if req.op is Op.MEMBER:
            return self._member_info()
        if req.op is Op.RANGE:
            return self.sm.read_range(req)
        if req.op in (Op.LEASE_TTL, Op.LEASE_LIST):
            return self._lease_read(req)
        found = self.sm.get(req.key)
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

    # --------------------------------------------------------------- status

    @property
    def waiting_writes(self) -> int:
        return len(self._waiting)

    @property
    def pending_reads(self) -> int:
        return len(self._reads)

    def status(self) -> CoreStatus:
        return self.core.status()

    def status_info(self) -> dict[str, Any]:
        """The STATUS report (docs/CONTRACTS.md)."""
        s = self.core.status()
        # The ballot of the leader we know (our own when leading), else the
        # highest we promised.
        ballot = s.promised if s.leader_id is None else s.leader_ballot
        return {
            "id": self.id,
            "role": s.role.value,
            "leader": s.leader_id,
            "ballot": [ballot.round, ballot.replica_id],
            "promised": [s.promised.round, s.promised.replica_id],
            "commit_index": s.commit_index,
            "applied_index": self.sm.applied_index,
            "compacted": s.compacted,
            "log_size": s.log_size,
            "install": None if self._installer is None else self._installer.progress(),
            "serving_snapshots": self._exporter.serving,
            "revision": self.sm.revision,
            "sessions": self.sm.session_count(),
            "peers": list(s.peers),
            "membership": None if s.membership is None else _membership_report(s.membership),
            "bad_frames": self.bad.as_dict(),
            "waiting_writes": len(self._waiting),
            "pending_reads": len(self._reads),
        }


def _membership_report(m: Membership) -> dict[str, Any]:
    """The membership in STATUS: ids, and where each member is reached
    (clients follow a redirect to a member they were not told about; a
    joining replica finds the current members)."""
    report: dict[str, Any] = m.describe()
    report["addresses"] = [[rid, peer, client] for rid, peer, client in m.addresses]
    return report


def _leadership_key(status: CoreStatus) -> tuple[int, int] | None:
    return tuple(status.ballot) if status.role is Role.LEADER else None


def _log_role(s: CoreStatus) -> None:
    figures = {"role": s.role.value, "commit_index": s.commit_index}
    if s.role is Role.LEADER:
        ballot = tuple(s.ballot)
        ev = event("leader_elected", ballot=list(ballot), **figures)
        log.info("replica %d is now the leader (ballot %s)", s.id, ballot, extra=ev)
    elif s.leader_id is not None:
        ev = event("leader_followed", leader=s.leader_id, ballot=list(s.leader_ballot), **figures)
        log.info("replica %d follows leader %d", s.id, s.leader_id, extra=ev)
    else:
        ev = event("leader_lost", promised=list(s.promised), **figures)
        log.info("replica %d: no leader known (%s)", s.id, s.role.value, extra=ev)
