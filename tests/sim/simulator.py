"""A deterministic simulator that runs the real replica driver and tries hard
to break it.

Theory of operation
-------------------
N replicas, each the very `ReplicaDriver` that `kvstore-replica` runs
(replica/driver.py) with the real `LevelDBStorage` and `KVStateMachine` on a
`MemoryDB` (replica/inmem.py: LevelDB's batches and ordering, and a disk
that loses unsynced writes), a simulated clock, a simulated network and
simulated clients that send real encoded requests. Everything is driven by
ONE `random.Random(seed)`: the same seed replays the same run, event by
event.

Each event is one of: deliver a random in-flight peer message to its
destination together with up to three more for the same replica and the
client requests queued there (ONE driver iteration, so group commit merges
several Readys), serve a replica's queued client requests, drop or duplicate
a message, tick a replica (its clock advances one tick), a client starting
an operation or retrying one that got no answer, crash a replica, restart
one, partition the network into two groups, or heal it.

Crashes. Between iterations a crash is a power loss that keeps a random
prefix of the unsynced writes (none, some, or all as a killed process
would). A replica can also crash INSIDE an iteration, at a synced write,
just before or just after it (`MemoryDB.sync_hook`): that is the crash
between sending a leader's early Phase2a and syncing its own vote when the
iteration sent Phase2a first (`early_crash=True` makes that crash likely).

Compaction (tiny thresholds, `SIM_COMPACTIONS`) runs on every replica all the
time, and a replica that fell behind a peer's compaction point installs the
peer's snapshot through the real chunked protocol (replica/snapshots.py),
with crashes at any of its syncs and between chunks; a replica that stays
down while the others compact past it catches up that way when it returns.

Lost disks (`wipes=True`, every fifth seed in CI): a replica's disk dies
(a crash, then an empty MemoryDB). It restarts JOINING, as the real replica
does on an empty directory with --initial-cluster-state existing
(replica/paxos.py, "Joining"): it promises, votes and acknowledges nothing,
installs a snapshot, sees that its id ran before and is refused for good
(so at most a minority is wiped). `rejoin_wiped=True` models the naive
rejoin that this prevents (the replica comes back empty under its old id
and votes at once) and must be caught.

Membership changes (`members=True`, another fifth of the CI seeds): an admin
asks for one change at a time through the real MEMBER request: a spare id
added as a learner (its replica starts joining, installs a snapshot, is
recorded JOINED by the leader), a learner promoted, a member removed (the
leader too). Quorums follow the membership of each slot
(kvstore/membership.py); the observer decides "chosen" by the same rule,
from the values it saw chosen. `CountsLearners` (a leader that counts every
acknowledgement towards a majority) must be caught.

Clients (three per run) are lazy-pirate clients as in client/client.py:
one operation at a time (put, get, cas, delete of two keys, unique values),
numbered per client; a REDIRECT goes to the named leader, UNAVAILABLE or a
silence goes to another replica, with the same client id and sequence number
(exactly-once sessions), and now and then a client gives up (the outcome is
unknown) and goes on with its next number. Replies can be lost. Their history
is checked for linearizability at the end (tests/fault/linearizability.py).

Checks, after every event:
  * agreement: a value is chosen at a slot once a majority of acceptors have
    DURABLY voted for it in one ballot (an omniscient observer reads every
    synced vote); no slot ever has two different chosen values, and no two
    replicas ever apply different values at one slot;
  * every replica applies, slot by slot, exactly the chosen value (a replica
    applying a value that no durable majority holds is caught at once);
  * durability: a promise or vote a replica revealed to the network is still
    there after it restarts (unless compaction deleted its slot: below the
    compaction point every slot is chosen and applied);
  * an installed snapshot stands only for chosen slots, and after settling
    every live replica holds the same data (checksums);
  * exactly-once: two answers to one (client id, seq) write are equal.
At the end the network heals, crashed replicas restart (in half the runs a
minority stays down), clients retry, and every client operation must
complete and every live replica apply the same log within a bound; then the
whole history must be linearizable.

Deliberately broken drivers (subclasses overriding one step of the Ready
order) must be caught: `SendBeforeSync` reveals votes before they are synced,
`SkipSync` never syncs them, `AnswerBeforeSync` applies and answers clients
before the sync, `IgnoresCompaction` leads from behind a promiser's
compaction point (filling chosen slots it cannot see with no-ops); and
`rejoin_wiped=True` (not a driver: a way of running it) lets a replica that
lost its disk vote again.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from kvstore.config import CompactionSettings
from kvstore.events import EVENT_PREFIX, INLINE_VALUE_BYTES, PUT_IN_LOG, record_events
from kvstore.membership import ALPHA, ChangeKind, Membership, Schedule
from kvstore.protocol import (
    Op,
    Request,
    Response,
    Status,
    decode_response,
    encode_request,
    member_change,
)
from kvstore.statemachine import KVStateMachine, _canonical, _Meta
from kvstore.values import CorruptValue, MemoryValueLog, ref_length
from replica.driver import Envelope, ReplicaDriver, Result
from replica.inmem import MemoryDB
from replica.messages import (
    Ballot,
    Message,
    Nack,
    Phase1b,
    Phase2a,
    Phase2b,
    ReadVouch,
    TimeoutNow,
    Value,
    Vote,
)
from replica.paxos import CoreConfig, PaxosCore, Ready, Role
from replica.storage import LevelDBStorage
from tests.fault.history import History, Kind
from tests.fault.linearizability import check

SIM_CONFIG = CoreConfig(
    heartbeat_ticks=2, election_ticks=10, window=4, retransmit_ticks=3, catchup_entries=16
)
SIM_COMPACTIONS = (
    CompactionSettings(log_slots=3, retained_slots=0, snapshot_chunk_bytes=150),
    CompactionSettings(log_slots=6, retained_slots=2, retained_bytes=400, snapshot_chunk_bytes=150),
)
"""Compact every few slots and stream snapshots in tiny chunks, so that
compaction, installs (and crashes in the middle of them) happen in every run;
even seeds keep no tail (a replica a slot behind installs), odd seeds a tail
of two slots (catch-up by log from the retained tail)."""
TICK_S = 0.01
WALL_EPOCH = 1.8e9
"""The simulated wall clock (leader time in the log) starts here on every
replica and runs with its ticks, so replicas' clocks drift apart."""
KEYS = (b"x", b"y")
VALUE_LOG_MINS = (0, 1, 7)  # by replica id mod 3: see SimStateMachine
VALUE_SEGMENT_BYTES = 2500  # a few entries per value log segment
VALUE_SPARE = (None, -VALUE_SEGMENT_BYTES, None)  # by id mod 3: when live values move
VOTE_LOG_MINS = (0, 1, 1000)  # by id mod 3: votes with a command this large go to the vote log
VOTE_SEGMENT_BYTES = 3000  # a few votes per vote log segment
CLIENTS = 3
_QUIET = ("deliver", "serve", "tick")  # the events of the directed scenarios
ADMIN = -1
"""The envelope's client index of the membership admin's requests."""
SPARE_IDS = 4
"""Ids beyond the first replicas that membership changes may add."""
CLIENT_TIMEOUT = 60
"""Events without an answer before a client tries another replica."""
CRASH_AT_SYNC = 0.004
"""Chance that a replica crashes at any one synced write."""


class InvariantViolation(AssertionError):
    pass


class SimCrash(Exception):
    """Raised by a sync hook: the replica loses power right there."""


# ------------------------------------------------------------ broken drivers


class SendBeforeSync(ReplicaDriver):
    """BROKEN: sends every message (Phase2b, Phase1b...) before the sync."""

    def _finish(self, acc: Ready) -> None:
        if acc.messages:
            self.peers.send(acc.messages)
        if acc.must_persist():
            self._persist(acc)
        self._apply_and_answer(acc)


class SkipSync(ReplicaDriver):
    """BROKEN: never fsyncs; promises and votes sit in the page cache."""

    def _persist(self, acc: Ready) -> None:
        self.storage.persist(acc.promised, acc.votes, acc.chosen, sync=False)


class _CoreIgnoringCompaction(PaxosCore):
    def _behind_compaction(self, compacted: int) -> bool:
        return False


class IgnoresCompaction(ReplicaDriver):
    """BROKEN: leads even when a promiser compacted past its commit index,
    filling the slots it cannot see with no-ops (or stale votes)."""

    core_class = _CoreIgnoringCompaction


class _CoreCountingLearners(PaxosCore):
    def _check_chosen(self, slot: int) -> None:
        entry = self._in_flight.get(slot)
        voters = self._schedule.at(slot).voters
        if entry is not None and 2 * len(entry.acks) > len(voters):
            del self._in_flight[slot]
            self._log[slot] = entry.value
            self._advance_commit()
            self._fill_window()


class _CoreHandingOverItsBallot(PaxosCore):
    def transfer(self, target: int) -> Ready:
        """Tells the target at once, and goes on proposing."""
        if self._role is Role.LEADER and target != self.id:
            self._send(target, TimeoutNow(self.id, self._ballot))
        return self._take_ready()

    def step(self, msg) -> Ready:  # noqa: ANN001
        """The core dispatches through a table of PaxosCore's own handlers
        (replica/paxos.py `_HANDLERS`): route TimeoutNow to the one below."""
        if type(msg) is TimeoutNow and msg.sender != self.id:
            self._on_timeout_now(msg)
            return self._take_ready()
        return super().step(msg)

    def _on_timeout_now(self, msg) -> None:  # noqa: ANN001
        if msg.ballot == self._leader_ballot and self._role is Role.FOLLOWER:
            self._ballot = msg.ballot  # "you lead now": no Phase 1, the old ballot
            own = self._votes_from(self._commit_index)
            self._phase1b = {self.id: Phase1b(self.id, msg.ballot, self._commit_index, own, 0)}
            self._become_leader(self._best_votes())


class HandsOverItsBallot(ReplicaDriver):
    """BROKEN: move-leader hands the leader's ballot to the target, which
    leads at once without a Phase 1 of its own, while the old leader, which
    never sees a higher ballot, goes on leading: two leaders of one ballot."""

    core_class = _CoreHandingOverItsBallot


class CountsLearners(ReplicaDriver):
    """BROKEN: counts every acknowledgement towards a majority of the voters,
    learners' (and removed replicas') included."""

    core_class = _CoreCountingLearners


class AnswerBeforeSync(ReplicaDriver):
    """BROKEN: applies and answers clients before the sync."""

    def _finish(self, acc: Ready) -> None:
        self._apply_and_answer(acc)
        if acc.must_persist():
            self._persist(acc)
        if acc.messages:
            self.peers.send(acc.messages)


class TrustsEffectsOfAnotherGeneration(ReplicaDriver):
    """BROKEN: its state machine writes the leader's effects of the right
    slots even when the leader made them in another generation (one of the
    two installed a snapshot since: their keys have another prefix)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        sm = self.sm
        checked = sm._effects_refusal

        def refusal(entries, header):  # noqa: ANN001, ANN202
            ours = sm._meta.generation
            if type(header) is list and len(header) == 9 and header[3] != ours:
                header = list(header)
                header[3] = ours
                header[6] = list(header[6])
                meta = _Meta.unpack(header[6][-1])
                header[6][-1] = meta._replace(generation=ours).pack()
            return checked(entries, header)

        sm._effects_refusal = refusal


# ------------------------------------------------------------ the twins


class OverlapsOwnQuorum(ReplicaDriver):
    """Broken on purpose: applies while the batch is synced even when a slot
    was chosen by this replica's own unsynced vote alone (Ready.own_quorum)."""

    def _finish(self, acc: Ready) -> None:
        if acc.must_persist() and acc.committed and acc.own_quorum:
            if self._compact_to is not None:
                acc.merge(self.core.compact(self._compact_to))
                self._compact_to = None
            self._finish_overlapped(acc, acc.messages)
            return
        super()._finish(acc)


class _CoreCountingAnyVouch(PaxosCore):
    def step(self, msg) -> Ready:  # noqa: ANN001
        """Routed past the core's dispatch table (see _CoreHandingOverItsBallot):
        a vouch counts as if its sender had promised our ballot."""
        if type(msg) is ReadVouch and msg.sender != self.id:
            self._on_read_vouch(ReadVouch(msg.sender, self._ballot, msg.tokens))
            return self._take_ready()
        return super().step(msg)


class CountsAnyVouch(ReplicaDriver):
    """BROKEN: a leader counts a follower's vouch for a read whatever ballot
    the follower promised (replica/paxos.py, "Vouched reads"): a leader that
    was deposed while paused answers a read from its old state on the vouch
    of a follower that promised the new leader."""

    core_class = _CoreCountingAnyVouch


class LeaseTooLong(ReplicaDriver):
    """BROKEN: a read lease far past the time for which the replicas that
    acknowledged its heartbeat round refuse a new leader (the bound in
    replica/paxos.py, "Leader leases"): a leader cut off from the others
    answers reads from its lease after a new leader took writes."""

    @staticmethod
    def _read_lease_seconds(config: CoreConfig, tick_s: float) -> float:
        return 4 * config.election_ticks * tick_s


class SimStorage(LevelDBStorage):
    """The real acceptor storage; tells the observer which votes are durable.
    Replica 1 (mod 3) puts every vote in its vote log (`node.votes`,
    replica/storage.py), 2 those with a command of a large value, 0 none;
    the vote log's sync is a crash point like LevelDB's."""

    def __init__(self, sim: Simulation, node: Node) -> None:
        votes = node.votes.restart()
        votes.skip_sync = not sim.vote_sync
        super().__init__(node.db, votes=votes, vote_min_bytes=VOTE_LOG_MINS[node.id % 3])
        self._sim, self._node = sim, node
        self._unsynced: list[dict[int, Vote]] = []

    def _sync_votes(self, sync: bool) -> None:
        hook = self._node.db.sync_hook if sync else None
        try:
            if hook is not None:
                hook("before")
            super()._sync_votes(sync)
            self._sim.stats.vote_log_syncs += sync
            if hook is not None:
                hook("after")
        except SimCrash:
            self._sim.stats.vote_log_crashes += 1
            raise

    def persist(self, promised, votes, chosen, sync=True, compacted=None) -> None:  # noqa: ANN001
        self._unsynced.append(dict(votes))
        super().persist(promised, votes, chosen, sync=sync, compacted=compacted)
        if compacted is not None:
            self._sim.stats.compactions += 1
        if sync:  # reached only if the sync hook did not crash before it
            self._synced()

    def _synced(self) -> None:
        for batch in self._unsynced:
            self._sim.observe_votes(self._node, batch)
        self._unsynced.clear()

    def persist_begin(self, promised, votes, chosen, compacted=None):  # noqa: ANN001, ANN201
        """The driver applies while this batch is synced: either order of
        the two writes may reach the log first (LevelDB queues writers), so
        the batch is written at once or, at random, only in `wait()`, after
        the state machine's batch (a crash in its sync may then keep that
        batch and lose this one)."""
        self._sim.stats.overlapped += 1
        if self._sim.rng.random() < 0.5:
            self.persist(promised, votes, chosen, sync=True, compacted=compacted)
            return _Written()
        self._sim.stats.deferred_syncs += 1
        return _Deferred(lambda: self.persist(promised, votes, chosen, True, compacted))


class _Written:
    def wait(self) -> None:
        return None


class _Deferred:
    def __init__(self, write) -> None:  # noqa: ANN001
        self._write = write

    def wait(self) -> None:
        self._write()


class SimStateMachine(KVStateMachine):
    """The real state machine; checks every applied slot against the chosen ones.
    Its value log (kvstore/values.py) is the node's `MemoryValueLog`: replica
    1 (mod 3) puts every value there, 2 only those of 7 bytes and more (the
    simulator's values are 5 to 9 bytes, or over 1 KiB: `_value`), 0 none;
    tiny segments make the value log's garbage collection run all the time,
    and replica 1 (mod 3) moves live values whenever a segment is mostly dead
    (`VALUE_SPARE`), not only once the log outgrows twice its live values."""

    def __init__(self, sim: Simulation, node: Node) -> None:
        values = node.values.restart()
        values.skip_sync = not sim.value_sync
        super().__init__(
            node.db, None, values, VALUE_LOG_MINS[node.id % 3], VALUE_SPARE[node.id % 3]
        )
        self._sim, self._node = sim, node

    def apply(self, entries, defer_write: bool = False, capture: bool = False) -> list[Result]:  # noqa: ANN001
        for slot, value in entries:
            self._sim.check_apply(self._node, slot, value)
            self._node.applied.append(value)
        return super().apply(entries, defer_write, capture)

    def apply_effects(self, entries, effects: bytes, defer_write: bool = False) -> bool:  # noqa: ANN001
        if not super().apply_effects(entries, effects, defer_write):
            return False
        for slot, value in entries:
            self._sim.check_apply(self._node, slot, value)
            self._node.applied.append(value)
        self._sim.stats.effects_slots += len(entries)
        return True

    def write_applied(self) -> None:
        super().write_applied()
        self._sim.check_state(self._node, self)

    def repair_values(self, chosen, compacted: int) -> int:  # noqa: ANN001
        restored = super().repair_values(chosen, compacted)
        self._sim.stats.values_restored += restored
        return restored

    def _collect_values(self) -> bool:
        appends = self._values.appends
        more = super()._collect_values()
        self._sim.stats.value_moves += self._values.appends - appends
        return more

    def install_finish(self) -> None:
        super().install_finish()
        # The snapshot stands for the chosen values of every slot below it.
        self._sim.stats.installs += 1
        self._sim.covered_by_snapshot(self._node, self.applied_index)
        self._sim.check_state(self._node, self)


def _kept_in_log(record: bytes) -> int:
    """The bytes of value log a record's events count in the span beside
    their own (kvstore/events.py, PUT_IN_LOG)."""
    return sum(ref_length(e[3]) for e in record_events(record) if e[1] == PUT_IN_LOG)


class SkipsTheValueBarrier(SimStateMachine):
    """Broken: deletes value log segments that no record refers to any more
    without first syncing the batches that dropped their last references
    (kvstore/statemachine.py, "Large values in the value log"). A crash can
    then bring back a record whose value is gone."""

    def _values_barrier(self) -> None:
        pass


class SkipsValueRepair(SimStateMachine):
    """Broken: does not restore, at start, the values a power failure took
    from the value log while the records naming them survived."""

    def repair_values(self, chosen, compacted: int) -> int:  # noqa: ANN001
        return 0


class CompactsBeforeSyncingValues(SimStateMachine):
    """Broken: lets the driver persist a compaction point without syncing
    the value log first; a lost value of a compacted slot cannot be restored."""

    def sync_values(self) -> None:
        pass


class SimPeers:
    """The network side of one replica: what it sends goes in flight."""

    def __init__(self, sim: Simulation, node: Node) -> None:
        self._sim, self._node = sim, node

    def send(self, messages) -> None:  # noqa: ANN001
        for dst, msg in messages:
            self._sim.reveal(self._node, msg)
            if type(msg) is Phase2a:
                self._node.sent_phase2a = True
            self._sim.network.append((self._node.id, dst, msg))


class SimClients:
    """The client side of one replica: replies go to the simulated clients."""

    def __init__(self, sim: Simulation) -> None:
        self._sim = sim

    def reply(self, envelope: Envelope, payload: bytes) -> None:
        if self._sim.rng.random() < 0.03:
            return  # a lost reply
        client_index, attempt = envelope
        if client_index == ADMIN:
            self._sim.on_admin_reply(payload)
            return
        self._sim.clients[client_index].on_reply(attempt, payload)


# ------------------------------------------------------------ replicas


@dataclass
class Node:
    id: int
    db: MemoryDB = field(default_factory=MemoryDB)
    driver: ReplicaDriver | None = None
    clock: float = 0.0
    applied: list[Value] = field(default_factory=list)
    requests: list[tuple[Envelope, bytes]] = field(default_factory=list)
    revealed_promise: Ballot = Ballot(0, 0)
    revealed_votes: dict[int, Ballot] = field(default_factory=dict)
    sent_phase2a: bool = False  # in the current iteration
    wiped: bool = False  # its disk was lost (the wipe nemesis)
    joining: bool = False  # starts on an empty disk to join (replica/paxos.py, "Joining")
    refused: bool = False  # joined under an id that ran before: stopped for good
    paused: bool = False  # stopped, not crashed (the pause nemesis, lease_reads runs)
    checked_index: int = -1  # the applied index check_state last compared
    values: MemoryValueLog = field(default_factory=lambda: MemoryValueLog(VALUE_SEGMENT_BYTES))
    votes: MemoryValueLog = field(default_factory=lambda: MemoryValueLog(VOTE_SEGMENT_BYTES))


@dataclass
class Stats:
    events: int = 0
    delivered: int = 0
    iterations: int = 0
    vouches: int = 0  # vouches delivered in a directed scenario
    vouched_reads: int = 0  # reads a leader confirmed by vouches
    crashes: int = 0
    compactions: int = 0
    installs: int = 0
    install_crashes: int = 0
    wipes: int = 0
    refusals: int = 0
    member_changes: int = 0
    moves: int = 0
    sync_crashes: int = 0
    early_phase2a_crashes: int = 0
    overlapped: int = 0  # iterations that applied while their batch was synced
    deferred_syncs: int = 0  # ... whose batch reached the log after the apply's
    elections: int = 0
    chosen: int = 0
    ops_ok: int = 0
    ops_unknown: int = 0
    lease_reads: int = 0  # reads a leader answered on its read lease
    effects_slots: int = 0  # slots a follower wrote from the leader's effects
    state_checks: int = 0  # states compared with another replica's at the same index
    value_appends: int = 0  # values put into value logs (kvstore/values.py)
    value_segments_removed: int = 0  # value log segments deleted as garbage
    vote_log_syncs: int = 0  # synced batches with votes in a vote log (replica/storage.py)
    vote_segments_removed: int = 0  # vote log segments deleted below compaction points
    vote_log_crashes: int = 0  # crashes just before or after a vote log's sync
    value_moves: int = 0  # live values the value log's garbage collection moved
    values_restored: int = 0  # value log entries restored from the log at a start


# ------------------------------------------------------------ clients


def _value(client: int, seq: int) -> bytes:
    """A client's value for its write `seq`: unique, and every fifth one
    over INLINE_VALUE_BYTES, so that watch events keep large values in the
    key's record or the value log (kvstore/events.py, "Large values")."""
    value = b"c%d-%d" % (client, seq)
    return value + b"." * (INLINE_VALUE_BYTES + 1) if seq % 5 == 0 else value


class SimClient:
    """A lazy-pirate client with one operation at a time."""

    def __init__(self, sim: Simulation, index: int) -> None:
        self.sim = sim
        self.index = index
        self.cid = b"sim-client-%05d" % index
        self.seq = 0
        self.handle: int | None = None
        self.kind: Kind | None = None
        self.frame = b""
        self.target = sim.ids[index % len(sim.ids)]
        self.attempt = 0
        self.sent_at = 0
        self.answers: dict[int, bytes] = {}  # seq -> first OK answer (writes)
        self.vouchers = 0  # a vouched GET: followers asked to vouch at each send
        self.forced_vouchers: list[int] | None = None

    @property
    def busy(self) -> bool:
        return self.handle is not None

    def start(
        self, force: tuple[Kind, int] | None = None, vouchers: list[int] | None = None
    ) -> None:
        """A random operation, or `force`: (PUT or GET of key x, at this replica);
        a forced GET with `vouchers` asks those replicas to vouch for it."""
        rng, sim = self.sim.rng, self.sim
        self.seq += 1
        self.vouchers, self.forced_vouchers = 0, vouchers
        if force is not None:
            kind, self.target = force
            if kind is Kind.PUT:
                value = _value(self.index, self.seq)
                req = Request(Op.PUT, self.cid, self.seq, KEYS[0], value)
                self.handle = sim.history.invoke(self.index, Kind.PUT, KEYS[0], value)
            else:
                self.vouchers = len(vouchers or ())
                nonce = self.seq if vouchers else None  # a seq is never reused: a nonce
                req = Request(Op.GET, self.cid, self.seq, KEYS[0], expected_version=nonce)
                self.handle = sim.history.invoke(self.index, Kind.GET, KEYS[0])
            self.kind = kind
            self.frame = encode_request(req)
            self.send()
            return
        if sim.lease_reads and rng.random() < 0.3:
            # Any replica may get any request: here, as from a client that
            # still takes a replica that was paused or cut off for the leader.
            self.target = rng.choice(sim.ids)
        key = rng.choice(KEYS)
        value = _value(self.index, self.seq)
        pick = rng.random()
        if pick < 0.35:
            self.kind, req = Kind.PUT, Request(Op.PUT, self.cid, self.seq, key, value)
            self.handle = sim.history.invoke(self.index, Kind.PUT, key, value)
        elif pick < 0.65:
            if rng.random() < 0.5:  # vouched: as many others as a majority needs, or all
                self.vouchers = len(sim.ids) // 2 if rng.random() < 0.5 else len(sim.ids)
            nonce = self.seq if self.vouchers else None  # a seq is never reused: a nonce
            req = Request(Op.GET, self.cid, self.seq, key, expected_version=nonce)
            self.kind = Kind.GET
            self.handle = sim.history.invoke(self.index, Kind.GET, key)
        elif pick < 0.85:
            expected = self._expected(key)
            if expected is None:
                req = Request(Op.CAS, self.cid, self.seq, key, value, expected_version=0)
            else:
                req = Request(Op.CAS, self.cid, self.seq, key, value, expected_value=expected)
            self.kind = Kind.CAS
            self.handle = sim.history.invoke(self.index, Kind.CAS, key, value, expected=expected)
        else:
            self.kind, req = Kind.DELETE, Request(Op.DELETE, self.cid, self.seq, key)
            self.handle = sim.history.invoke(self.index, Kind.DELETE, key)
        self.frame = encode_request(req)
        self.send()

    def _expected(self, key: bytes) -> bytes | None:
        """A value the key may well hold (or None: must be absent)."""
        seen = [o.value for o in self.sim.history.operations() if o.key == key and o.value]
        if not seen or self.sim.rng.random() < 0.2:
            return None
        return self.sim.rng.choice(seen[-4:])

    def send(self, target: int | None = None) -> None:
        self.attempt += 1
        self.sent_at = self.sim.stats.events
        if target is not None:
            self.target = target
        self.sim.nodes[self.target].requests.append(((self.index, self.attempt), self.frame))
        if self.vouchers:
            self._ask_vouches()

    def _ask_vouches(self) -> None:
        """VOUCH requests for this attempt of the GET, to random other
        replicas (or the forced ones); never answered (attempt 0)."""
        sim = self.sim
        chosen = self.forced_vouchers
        if chosen is None:
            others = [i for i in sim.nodes if i != self.target]
            chosen = sim.rng.sample(others, min(self.vouchers, len(others)))
        target = None if sim.rng.random() < 0.3 else self.target  # None: the leader it knows
        req = Request(Op.VOUCH, self.cid, self.seq, expected_version=target)
        frame = encode_request(req)
        for rid in chosen:
            sim.nodes[rid].requests.append(((self.index, 0), frame))

    def other_replica(self) -> int:
        others = [i for i in self.sim.ids if i != self.target] or self.sim.ids
        return self.sim.rng.choice(others)

    def on_timeout(self, may_give_up: bool) -> None:
        if may_give_up and self.sim.rng.random() < 0.1:
            self.sim.history.unknown(self.handle)
            self.sim.stats.ops_unknown += 1
            self.handle = None
            return
        self.send(self.other_replica())

    def on_reply(self, attempt: int, payload: bytes) -> None:
        if attempt != self.attempt or self.handle is None:
            return  # a late reply to an abandoned attempt (a reopened REQ socket)
        resp = decode_response(payload)
        if resp.status is Status.REDIRECT:
            self.send(resp.leader)
        elif resp.status is Status.UNAVAILABLE:
            self.send(self.other_replica())
        else:
            self._complete(resp, payload)

    def _complete(self, resp: Response, payload: bytes) -> None:
        sim, kind = self.sim, self.kind
        if resp.status in (Status.BAD_REQUEST, Status.TOO_LARGE):
            sim.fail(f"client {self.index} seq {self.seq} got {resp.status.name}: {resp.error}")
        if kind is not Kind.GET:
            first = self.answers.setdefault(self.seq, payload)
            if first != payload:
                sim.fail(f"client {self.index} seq {self.seq} answered twice, differently")
        if kind is Kind.GET:
            result = resp.value if resp.status is Status.OK else None
        elif kind is Kind.CAS or kind is Kind.DELETE:
            result = resp.status is Status.OK
        else:
            result = None
        sim.history.ok(self.handle, result)
        sim.stats.ops_ok += 1
        self.handle = None


# ------------------------------------------------------------ the simulation


def _finishing_install(node: Node) -> bool:
    """The replica is in an install's finish (replica/driver.py
    `_finish_install`): its installer is done, the staged snapshot not
    flipped yet, and the compaction point is being synced."""
    driver = node.driver
    return driver._installer is None and driver.sm._install is not None


class Simulation:
    WEIGHTS = (
        ("deliver", 45),
        ("serve", 8),
        ("tick", 20),
        ("client", 12),
        ("drop", 3),
        ("duplicate", 3),
        ("crash", 1),
        ("restart", 3),
        ("partition", 1),
        ("heal", 3),
    )

    def __init__(
        self,
        seed: int,
        replicas: int = 3,
        *,
        driver_class: type[ReplicaDriver] = ReplicaDriver,
        check_durability: bool = True,
        early_crash: bool = False,
        install_crash: bool = False,
        compaction: CompactionSettings | None = None,
        wipes: bool = False,
        rejoin_wiped: bool = False,
        members: bool = False,
        driver_classes: dict[int, type[ReplicaDriver]] | None = None,
        lease_reads: bool = False,
        value_sync: bool = True,
        state_machine_class: type[SimStateMachine] | None = None,
        vote_sync: bool = True,
    ) -> None:
        """`value_sync` False: the broken variant whose value logs never
        sync (kvstore/values.py); `state_machine_class`: another broken one;
        `vote_sync` False: vote logs that never sync (replica/storage.py)."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.ids = list(range(1, replicas + 1))
        self.quorum = replicas // 2 + 1
        self.bootstrap = Membership(0, frozenset(self.ids), started=frozenset(self.ids))
        self.members = members
        self.lease_reads = lease_reads
        self.value_sync = value_sync
        self.vote_sync = vote_sync
        self.state_machine_class = state_machine_class or SimStateMachine
        self.time = 0.0  # with lease_reads: the one clock every replica reads
        self.driver_classes = driver_classes or {}
        self.spares = list(range(replicas + 1, replicas + 1 + SPARE_IDS)) if members else []
        self.obs_schedule = Schedule([(0, self.bootstrap)])
        self.obs_prefix = 0  # the observer's first slot not known chosen
        self.undecided: set[tuple[int, Ballot]] = set()
        self.driver_class = driver_class
        self.check_durability = check_durability
        self.early_crash = early_crash
        self.install_crash = install_crash
        self.compaction = compaction or SIM_COMPACTIONS[seed % len(SIM_COMPACTIONS)]
        self.wipes = wipes or rejoin_wiped
        self.rejoin_wiped = rejoin_wiped
        self.faults = True  # off while the run settles at the end
        self.network: list[tuple[int, int, Message]] = []  # (src, dst, msg)
        self.group = {i: 0 for i in self.ids}
        self.votes_seen: dict[tuple[int, Ballot], tuple[Value, set[int]]] = {}
        self.chosen: dict[int, Value] = {}
        self.applied_at: dict[int, Value] = {}
        self.states: dict[int, tuple[bytes, int]] = {}  # applied index -> (digest, replica)
        self.stats = Stats()
        self._tick = 0
        self.history = History(clock=self._now)
        self.nodes = {i: Node(i) for i in self.ids}
        for node in self.nodes.values():
            self._start(node)
        self.clients = [SimClient(self, i) for i in range(CLIENTS)]
        weights = self.WEIGHTS
        if lease_reads:
            # Partitions long enough for a cut-off leader to be replaced, and
            # pauses (a leader that stops for a while, then answers what
            # waited for it before it runs its timers).
            weights = tuple((n, 1 if n == "heal" else w) for n, w in weights)
            weights += (("pause", 1), ("resume", 1))
        weights += (("wipe", 1),) if self.wipes else ()
        weights += (("member", 2), ("move", 2)) if self.members else ()
        self._names, self._weights = zip(*weights, strict=True)

    def _now(self) -> int:
        self._tick += 1
        return self._tick

    # ---------------------------------------------------------------- replicas

    def _start(self, node: Node) -> None:
        if self.lease_reads:
            node.clock = self.time
        node.db.sync_hook = None  # no crash in a restart's own flip (installs model that batch)
        try:
            self._new_driver(node)
        except CorruptValue as exc:  # repair_values could not restore a lost value
            self.fail(f"replica {node.id} lost a value: {exc}")
        if node.id % 2:  # overlap every apply here, only the larger ones elsewhere
            node.driver.overlap_min_commands = 1
        else:  # effects of every apply here, only of the larger ones elsewhere
            node.driver.effects_min_commands = 1
        node.db.sync_hook = lambda stage, node=node: self._maybe_crash_at_sync(node, stage)

    def _new_driver(self, node: Node) -> None:
        node.driver = self.driver_classes.get(node.id, self.driver_class)(
            node.id,
            sorted(self.bootstrap.voters),
            SimStorage(self, node),
            self.state_machine_class(self, node),
            SimPeers(self, node),
            SimClients(self),
            rng=random.Random(self.rng.getrandbits(64)),
            clock=lambda node=node: node.clock,
            wall_clock=lambda node=node: WALL_EPOCH + node.clock,
            tick_s=TICK_S,
            core_config=SIM_CONFIG,
            compaction=self.compaction,
            membership=self.bootstrap,
            joining=node.joining,
            lease_reads=self.lease_reads,
        )

    def _iterate(self, node: Node, messages: list[Message]) -> None:
        """One driver iteration: these messages and the queued requests."""
        requests, node.requests = node.requests, []
        node.sent_phase2a = False
        was_leader = node.driver.core.is_leader
        leased = node.driver.counters.lease_reads
        vouched = node.driver.counters.vouched_reads
        self.stats.iterations += 1
        try:
            node.driver.iterate(messages, requests)
        except SimCrash:  # power lost in a sync: a prefix of the unsynced writes survives
            self._crash(node, keep=self.rng.randint(0, node.db.unsynced_batches))
            return
        except CorruptValue as exc:  # a record whose value the value log lost
            self.fail(f"replica {node.id} lost a value: {exc}")
        self.stats.lease_reads += node.driver.counters.lease_reads - leased
        self.stats.vouched_reads += node.driver.counters.vouched_reads - vouched
        if node.driver.core.is_leader and not was_leader:
            self.stats.elections += 1
            ballot = node.driver.core.status().ballot
            if ballot.replica_id != node.id:  # ballots are unique: a proposer's own
                self.fail(f"replica {node.id} leads in ballot {ballot}, another's")
        if node.driver.core.status().refused is not None:  # the replica stops
            self.stats.refusals += 1
            node.refused = True
            self._crash(node, keep=None)

    def _maybe_crash_at_sync(self, node: Node, stage: str) -> None:
        if not self.faults:
            return
        chance = CRASH_AT_SYNC
        if self.early_crash and node.sent_phase2a and stage == "before":
            chance = 0.3
        if self.install_crash and stage == "after" and _finishing_install(node):
            chance = 0.5  # its compaction point is synced, its flip not done yet
        if self.rng.random() < chance:
            self.stats.sync_crashes += 1
            if node.sent_phase2a and stage == "before":
                self.stats.early_phase2a_crashes += 1
            raise SimCrash

    def _crash(self, node: Node, keep: int | None) -> None:
        if node.driver.status_info()["install"] is not None:
            self.stats.install_crashes += 1
        node.driver = None
        node.requests.clear()
        node.db.crash(keep)
        node.values.crash(power_loss=keep is not None)
        node.votes.crash(power_loss=keep is not None)
        self.stats.crashes += 1

    def _restart(self, node: Node) -> None:
        self._start(node)
        # What the crash kept is durable now: let the observer see its votes.
        durable = node.driver.storage.load()
        self.observe_votes(node, durable.votes)
        applied = node.driver.sm.applied_index
        # Ahead of what it applied only if a snapshot install's flip reached
        # the disk just before the crash.
        self.covered_by_snapshot(node, applied)
        del node.applied[applied:]
        if not self.check_durability:
            return
        if durable.promised < node.revealed_promise:
            self.fail(
                f"replica {node.id} forgot its promise {node.revealed_promise} "
                f"(has {durable.promised}) across a restart"
            )
        for slot, ballot in node.revealed_votes.items():
            if slot < durable.compacted:
                continue  # deleted by compaction: chosen and applied below it
            vote = durable.votes.get(slot)
            if vote is None or vote.ballot < ballot:
                self.fail(f"replica {node.id} forgot its vote at slot {slot} in {ballot}")

    # ---------------------------------------------------------------- observer

    def observe_votes(self, node: Node, votes: dict[int, Vote]) -> None:
        for slot, (ballot, value) in votes.items():
            key = (slot, ballot)
            seen = self.votes_seen.get(key)
            if seen is None:
                seen = self.votes_seen[key] = (value, set())
            elif seen[0] != value:
                self.fail(f"two values proposed at slot {slot} in ballot {ballot}")
            seen[1].add(node.id)
            self._decide(slot, ballot)

    def _decide(self, slot: int, ballot: Ballot) -> None:
        """Chosen once a majority of the voters of the slot's membership voted
        for it in one ballot; that membership is known once every slot up to
        slot - ALPHA is chosen (until then the decision waits)."""
        if slot >= self.obs_prefix + ALPHA:
            self.undecided.add((slot, ballot))
            return
        value, ids = self.votes_seen[(slot, ballot)]
        if self.obs_schedule.at(slot).is_quorum(ids):
            self._chosen(slot, value)

    def _chosen(self, slot: int, value: Value) -> None:
        prior = self.chosen.get(slot)
        if prior is None:
            self.chosen[slot] = value
            self.stats.chosen += 1
        elif prior != value:
            self.fail(f"agreement violated: slot {slot} chose {prior!r} and {value!r}")
        if slot != self.obs_prefix:
            return
        while self.obs_prefix in self.chosen:
            self.obs_schedule.chosen(self.obs_prefix, self.chosen[self.obs_prefix])
            self.obs_prefix += 1
        ready = [k for k in self.undecided if k[0] < self.obs_prefix + ALPHA]
        for key in sorted(ready):
            self.undecided.discard(key)
            self._decide(*key)

    def reveal(self, node: Node, msg: Message) -> None:
        """Remembers what the network learned of this acceptor's state."""
        if isinstance(msg, (Phase1b, Nack, ReadVouch)):
            promised = msg.promised if isinstance(msg, Nack) else msg.ballot
            node.revealed_promise = max(node.revealed_promise, promised)
        if isinstance(msg, Phase1b):
            for slot, vote in msg.votes.items():
                prior = node.revealed_votes.get(slot, vote.ballot)
                node.revealed_votes[slot] = max(prior, vote.ballot)
        elif isinstance(msg, Phase2b):
            prior = node.revealed_votes.get(msg.slot, msg.ballot)
            node.revealed_votes[msg.slot] = max(prior, msg.ballot)

    def covered_by_snapshot(self, node: Node, index: int) -> None:
        """A snapshot made `node` jump to applied index `index`: it stands for
        the chosen values (with the durability checks off, for the values
        other replicas applied) of the slots it skipped."""
        for slot in range(len(node.applied), index):
            known = self.chosen if self.check_durability else self.applied_at
            if slot not in known:
                self.fail(f"replica {node.id} installed a snapshot covering unchosen slot {slot}")
            self.check_apply(node, slot, known[slot])
            node.applied.append(known[slot])

    def check_apply(self, node: Node, slot: int, value: Value) -> None:
        if slot != len(node.applied):
            self.fail(f"replica {node.id} applied slot {slot} out of order")
        other = self.applied_at.setdefault(slot, value)
        if other != value:
            self.fail(f"agreement violated: slot {slot} applied as {other!r} and {value!r}")
        if not self.check_durability:
            return
        chosen = self.chosen.get(slot)
        if chosen is None:
            self.fail(f"replica {node.id} applied slot {slot}, which no durable majority chose")
        if chosen != value:
            self.fail(f"replica {node.id} applied {value!r} at slot {slot}; chosen {chosen!r}")

    def check_state(self, node: Node, sm: KVStateMachine) -> None:
        """Two replicas at one applied index hold the same state machine
        (executed or written from the leader's effects, kvstore/statemachine.py
        "Effects", alike): every record of its generation (the digit
        stripped) and its `m state` but the generation. The event log is a
        replica's own (a snapshot does not carry it): it must agree with its
        own span."""
        index = sm.applied_index
        if index == node.checked_index:
            return
        node.checked_index = index
        digest = hashlib.sha256(sm._meta._replace(generation=0).pack())
        for prefix in sm._gen.prefixes():
            if prefix == sm._gen.values:
                continue  # where values are kept is each replica's own layout
            for key, value in node.db.iterator(prefix=prefix):
                if prefix == sm._gen.data:
                    try:
                        value = _canonical(value, node.values)
                    except CorruptValue as exc:
                        self.fail(f"replica {node.id} lost the value of {key[2:]!r}: {exc}")
                digest.update(b"%d:%s%d:%s" % (len(key), key[:1] + key[2:], len(value), value))
        self._check_events(node, sm)
        other = self.states.setdefault(index, (digest.digest(), node.id))
        if other[0] != digest.digest():
            self.fail(
                f"replica {node.id} holds another state than replica {other[1]} at applied "
                f"index {index}"
            )
        self.stats.state_checks += 1

    def _check_events(self, node: Node, sm: KVStateMachine) -> None:
        floor, count, size = sm.events.span
        records = list(node.db.iterator(prefix=EVENT_PREFIX))
        revisions = [event[0] for _, raw in records for event in record_events(raw)]
        stored = sum(len(v) + len(k) - 1 + _kept_in_log(v) for k, v in records)
        if count != len(revisions) or size != stored:
            self.fail(
                f"replica {node.id}: event log span says {count} events of {size} bytes, "
                f"it holds {len(revisions)} of {stored}"
            )
        if revisions and min(revisions) < sm.events.oldest:
            self.fail(f"replica {node.id}: an event below the event log's oldest revision")

    def fail(self, what: str) -> None:
        raise InvariantViolation(f"{what} (seed={self.seed}, event={self.stats.events})")

    # ---------------------------------------------------------------- events

    def run(self, events: int) -> Stats:
        for _ in range(events):
            self.stats.events += 1
            name = self.rng.choices(self._names, self._weights)[0]
            if name != "deliver" and len(self.network) > 400:
                name = "deliver"
            elif name == "deliver" and not self.network:
                name = "tick"
            getattr(self, "_ev_" + name)()
        self._finish()
        self._check_history()
        return self.stats

    def _live(self) -> list[Node]:
        """The replicas that run: up and not paused."""
        return [n for n in self.nodes.values() if n.driver is not None and not n.paused]

    def _pop(self, index: int) -> tuple[int, int, Message]:
        self.network[index], self.network[-1] = self.network[-1], self.network[index]
        return self.network.pop()

    def _ev_deliver(self) -> None:
        index = self.rng.randrange(len(self.network))
        if self.nodes[self.network[index][1]].paused:  # its messages wait for it
            ready = [i for i, m in enumerate(self.network) if not self.nodes[m[1]].paused]
            if not ready:
                return
            index = self.rng.choice(ready)
        src, dst, msg = self._pop(index)
        batch = [(src, msg)]
        for _ in range(self.rng.randrange(4)):  # group commit: more for dst
            same = [i for i, m in enumerate(self.network) if m[1] == dst]
            if not same:
                break
            s, _, m = self._pop(self.rng.choice(same))
            batch.append((s, m))
        self._deliver(dst, batch)

    def _deliver(self, dst: int, batch: list[tuple[int, Message]]) -> None:
        node = self.nodes[dst]
        if node.driver is None:
            return
        if node.paused:  # they wait in its socket (the end's delivery loop)
            self.network.extend((s, dst, m) for s, m in batch)
            return
        messages = [m for s, m in batch if self.group.get(s, 0) == self.group.get(dst, 0)]
        self.stats.delivered += len(messages)
        self._iterate(node, messages)

    def _ev_serve(self) -> None:
        waiting = [n for n in self._live() if n.requests]
        if waiting:
            self._iterate(self.rng.choice(waiting), [])

    def _ev_drop(self) -> None:
        if self.network:
            self._pop(self.rng.randrange(len(self.network)))

    def _ev_duplicate(self) -> None:
        if self.network:
            self.network.append(self.rng.choice(self.network))

    def _ev_tick(self) -> None:
        live = self._live()
        if live:
            self._tick_node(self.rng.choice(live))

    def _tick_node(self, node: Node) -> None:
        if self.lease_reads:  # one clock: time passes for every replica
            self.time += TICK_S
            for other in self.nodes.values():
                other.clock = self.time
        else:
            node.clock += TICK_S
        self._iterate(node, [])

    def _ev_client(self) -> None:
        client = self.rng.choice(self.clients)
        if not client.busy:
            client.start()
        elif self.stats.events - client.sent_at > CLIENT_TIMEOUT:
            client.on_timeout(may_give_up=True)

    def _ev_crash(self) -> None:
        live = self._live()
        if live:
            node = self.rng.choice(live)
            self._crash(node, keep=self.rng.randint(0, node.db.unsynced_batches))

    def _ev_pause(self) -> None:
        """A replica stops (SIGSTOP, a long GC): the leader half the time."""
        live = self._live()
        leaders = [n for n in live if n.driver.core.is_leader]
        if leaders and self.rng.random() < 0.5:
            self.rng.choice(leaders).paused = True
        elif live:
            self.rng.choice(live).paused = True

    def _ev_resume(self) -> None:
        paused = [n for n in self.nodes.values() if n.paused]
        if paused:
            self.rng.choice(paused).paused = False

    def _ev_restart(self) -> None:
        dead = [n for n in self.nodes.values() if n.driver is None and self._may_start(n)]
        if dead:
            self._restart(self.rng.choice(dead))

    def _may_start(self, node: Node) -> bool:
        """A replica refused after joining stays down; a wiped one restarts
        joining (replica/paxos.py, "Joining") and is refused once its
        snapshot shows it ran before."""
        return not node.refused

    def _ev_wipe(self) -> None:
        """The disk of a replica dies: it crashes (if up) and its data is gone.
        It restarts joining and is refused for good, so at most a minority is
        wiped; the naive-rejoin variant restarts it empty under its old id,
        voting at once."""
        wiped = sum(n.wiped for n in self.nodes.values())
        if not self.rejoin_wiped and wiped >= len(self.ids) - self.quorum:
            return
        node = self.rng.choice([n for n in self.nodes.values() if not n.wiped])
        if node.driver is not None:
            self._crash(node, keep=0)
        node.db = MemoryDB()
        self._count_values(node)
        node.values = MemoryValueLog(VALUE_SEGMENT_BYTES)
        node.votes = MemoryValueLog(VOTE_SEGMENT_BYTES)
        node.applied.clear()
        node.revealed_promise = Ballot(0, 0)
        node.revealed_votes.clear()
        # The real replica comes back joining (--initial-cluster-state existing)
        # and is refused once it sees it ran before; the naive variant forgets
        # it ever was and votes at once.
        node.joining = not self.rejoin_wiped
        node.wiped = not self.rejoin_wiped
        self.stats.wipes += 1

    def _ev_member(self) -> None:
        """The admin asks a replica (the leader, if one says so) for one
        membership change: add a spare id as a learner (its replica starts
        empty), promote a learner, or remove a member."""
        latest = self.obs_schedule.latest
        options: list[tuple[ChangeKind, int]] = []
        options += [(ChangeKind.ADD_LEARNER, i) for i in self.spares
                    if i not in latest.members and i not in latest.removed]  # fmt: skip
        options += [(ChangeKind.PROMOTE, i) for i in sorted(latest.learners & latest.started)]
        options += [(ChangeKind.REMOVE, i) for i in sorted(latest.members)
                    if latest.voters != {i}]  # fmt: skip
        live = self._live()
        if not options or not live:
            return
        kind, rid = self.rng.choice(options)
        if rid not in self.nodes:  # a new replica, started on an empty disk
            self.nodes[rid] = Node(rid, joining=True)
            self.ids.append(rid)
            self._start(self.nodes[rid])
        leaders = [n for n in live if n.driver.core.is_leader]
        target = self.rng.choice(leaders or live)
        addr = f"sim://{rid}"
        req = Request(Op.MEMBER, value=member_change(int(kind), rid, addr, addr))
        target.requests.append(((ADMIN, 0), encode_request(req)))

    def _ev_move(self) -> None:
        """The admin asks the leader to hand over to another voter."""
        leaders = [n for n in self._live() if n.driver.core.is_leader]
        voters = sorted(self.obs_schedule.latest.voters - {n.id for n in leaders})
        if not leaders or not voters:
            return
        req = Request(Op.MOVE_LEADER, value=b"%d" % self.rng.choice(voters))
        leaders[0].requests.append(((ADMIN, 0), encode_request(req)))

    def on_admin_reply(self, payload: bytes) -> None:
        resp = decode_response(payload)
        if resp.status is Status.OK and resp.info is not None:
            self.stats.member_changes += 1
        elif resp.status is Status.OK and resp.leader is not None:
            self.stats.moves += 1

    def members_live(self) -> list[Node]:
        """The live replicas that are members (voters or learners) of the
        latest membership the observer knows."""
        members = self.obs_schedule.latest.members
        return [n for n in self._live() if n.id in members]

    def _ev_partition(self) -> None:
        if len(self.ids) < 2:
            return
        cut = self.rng.randrange(1, len(self.ids))
        order = self.ids[:]
        self.rng.shuffle(order)
        self.group = {i: (0 if k < cut else 1) for k, i in enumerate(order)}

    def _ev_heal(self) -> None:
        self.group = {i: 0 for i in self.ids}

    # ---------------------------------------------------------------- the end

    def _finish(self, rounds: int = 1500) -> None:
        """Heal, restart (all, or all but a minority), keep the clients going
        until every operation completed and every live replica applied all."""
        self.faults = False
        self._ev_heal()
        for node in self.nodes.values():
            node.paused = False
        stay_down = len(self.ids) - self.quorum if self.rng.random() < 0.5 else 0
        stay_down -= sum(n.wiped for n in self.nodes.values())
        if self.members:
            stay_down = 0  # which minority may stay down depends on the membership
        for node in self.nodes.values():
            if node.driver is None and not self._may_start(node):
                continue
            if node.driver is None and stay_down > 0:
                stay_down -= 1
            elif node.driver is None:
                self._restart(node)
        for _ in range(rounds):
            if self._settled():
                return
            self.stats.events += 1
            for node in self._live():
                self._tick_node(node)
            for client in self.clients:
                if client.busy and self.stats.events - client.sent_at > 5:
                    client.on_timeout(may_give_up=False)
            while self.network:
                src, dst, msg = self._pop(len(self.network) - 1)
                self._deliver(dst, [(src, msg)])
        self.fail(
            f"not live after healing: {sum(c.busy for c in self.clients)} operations open, "
            f"applied {[len(n.applied) for n in self.nodes.values()]}, chosen {len(self.chosen)}"
        )

    def _settled(self) -> bool:
        if any(c.busy for c in self.clients):
            return False
        done = len(self.chosen)
        return all(len(n.applied) >= done for n in self.members_live())

    # ------------------------------------------------ a directed lease scenario

    def lease_scenario(self) -> Stats:
        """A leader reads on its lease, pauses, the others elect a new leader
        that takes a write, and a read reaches the old leader when it resumes
        (before any message of the new leader): it must not answer from its
        old state. Then the run settles and the history is checked."""
        assert self.lease_reads and len(self.ids) >= 3
        old = self._leader_with_a_write()
        reader = self.clients[2]
        self._run_until(lambda: old.driver._read_lease_until > old.clock, _QUIET)
        reader.start(force=(Kind.GET, old.id))  # on the lease
        self._run_until(lambda: not reader.busy, _QUIET)
        self._pause_and_replace(old)
        reader.start(force=(Kind.GET, old.id))
        old.paused = False
        self._iterate(old, [])  # its client requests before any peer message
        self._finish()
        self._check_history()
        return self.stats

    def vouch_scenario(self) -> Stats:
        """A leader takes a write and pauses; the others elect a new leader
        that takes another; then a vouched read reaches the old leader when it
        resumes (before any message of the new leader), and a follower of the
        new leader vouches for it to the old one. Its vouch names the new
        ballot: the old leader must not count it (it answers only once a
        round confirms it, i.e. never: it learns it was deposed)."""
        assert len(self.ids) == 3
        old = self._leader_with_a_write()
        new = self._pause_and_replace(old)
        (voucher,) = [n for n in self.nodes.values() if n is not old and n is not new]
        self.clients[2].start(force=(Kind.GET, old.id), vouchers=[voucher.id])
        old.paused = False
        self._iterate(old, [])  # the read, before any peer message
        self._iterate(voucher, [])  # the VOUCH: a ReadVouch to the old leader
        found = [i for i, m in enumerate(self.network) if type(m[2]) is ReadVouch]
        if not found:
            self.fail("the follower did not vouch")
        _, _, vouch = self._pop(found[0])
        self.stats.vouches += 1
        self._iterate(old, [vouch])
        self._finish()
        self._check_history()
        return self.stats

    def _leader_with_a_write(self) -> Node:
        """The directed scenarios' start: no more faults, a leader, and a
        write (the first client's) that it took."""
        self.faults = False
        old = self._run_until(lambda: self._leader(), _QUIET)
        first = self.clients[0]
        first.start(force=(Kind.PUT, old.id))
        self._run_until(lambda: not first.busy and self._leader() is old, _QUIET)
        return old

    def _pause_and_replace(self, old: Node) -> Node:
        """Pauses leader `old` until the others elected a new leader that
        took a write (the second client's); returns the new leader."""
        old.paused = True
        new = self._run_until(
            lambda: (n := self._leader()) is not None and n is not old and n, _QUIET
        )
        second = self.clients[1]
        second.start(force=(Kind.PUT, new.id))
        self._run_until(lambda: not second.busy, _QUIET)
        return new

    def _leader(self) -> Node | None:
        leaders = [n for n in self._live() if n.driver.core.is_leader]
        return leaders[0] if len(leaders) == 1 else None

    def _run_until(self, done, events: tuple[str, ...], limit: int = 20_000):  # noqa: ANN001
        for _ in range(limit):
            found = done()
            if found:
                return found
            self.stats.events += 1
            name = self.rng.choice(events)
            if name == "deliver" and not self.network:
                name = "tick"
            getattr(self, "_ev_" + name)()
            for client in self.clients:  # a lost reply: try again
                if client.busy and self.stats.events - client.sent_at > CLIENT_TIMEOUT:
                    client.on_timeout(may_give_up=False)
        self.fail(f"the lease scenario did not get there in {limit} events")

    def _count_values(self, node: Node) -> None:
        self.stats.value_appends += node.values.appends
        self.stats.value_segments_removed += node.values.removed
        self.stats.vote_segments_removed += node.votes.removed
        node.values.appends = node.values.removed = node.votes.removed = 0

    def _check_history(self) -> None:
        for node in self.nodes.values():
            self._count_values(node)
        result = check(self.history)
        if not result.ok:
            self.fail(f"the clients' history is not linearizable:\n{result.report()}")
