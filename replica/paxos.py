"""The Multi-Paxos core of one replica: pure, stepped, and free of I/O.

Theory of operation
-------------------
Every replica plays the three Paxos roles for an unbounded log of slots:

* Acceptor. Keeps one promised ballot for the whole log and, per slot, its
  latest vote (vballot, value). It promises a ballot on Phase1a and votes on
  Phase2a only if the ballot is >= the promised one, otherwise it answers Nack.
  Promises and votes are returned in `Ready` for the driver to persist, synced,
  BEFORE the replies that reveal them are sent (the `Ready` contract below).

* Proposer/leader. A replica that hears nothing from a leader for a randomized
  number of ticks first runs a pre-vote (would a majority follow a new leader?
  replicas that heard from a live leader recently say no, so a replica coming
  back from a partition cannot depose a healthy leader). With a majority it
  picks a ballot above every ballot it has seen and runs ONE Phase1a covering
  every slot from its first unchosen one. With a majority of Phase1b it
  re-proposes, per slot, the value with the highest vballot, fills holes with
  no-ops, and only then serves new commands. It batches waiting commands into
  one slot value and keeps up to `window` slots in flight. It steps down as
  soon as it sees a higher ballot, and when it has not heard from a majority
  for an election timeout (check-quorum).

* Learner. A slot is chosen when a majority voted for it in one ballot. The
  leader learns that from Phase2b and tells the others with `commit_index` on
  Phase2a and Heartbeat. A follower marks slot s chosen only if its own vote
  at s is from the leader's ballot (the leader proposed exactly one value at s
  in that ballot); otherwise it asks the leader for the chosen values
  (catch-up). A driver that calls `note_applied(index)` after every
  iteration makes the commit index those messages carry lag its own
  applied index (never its knowledge: a smaller commit index is always
  true): a follower then learns that a slot is chosen only after the
  leader applied it, and the leader's effects of it were sent before, on the
  same ordered channel (replica/driver.py, "Followers write the leader's
  effects"). CatchupReply carries the full commit index.

Linearizable reads use a read index: the leader records the index reads must
wait for, confirms with a majority (a heartbeat round, or the followers'
vouches: "Vouched reads") that it still leads, and releases the reads once
everything up to that index is applied.

The `Ready` contract (the driver MUST honour this order):
  1. persist `promised`, `votes` and `chosen` in one atomic synced batch;
  2. only then send `messages`;
  3. apply `committed` to the state machine, in slot order;
  4. answer the reads in `reads` (and fail those in `failed_reads`).
(The real driver may send a leader's Phase2a before syncing the leader's own
vote, since Phase2a reveals no acceptor state of its sender and the own vote
is only counted after a later Phase2b: see replica/driver.py, early_phase2a.)

Compaction points
-----------------
A replica's log is a bounded window: once its state machine applied slot S
(and a synced batch made that state durable), the driver may call
`compact(C)` for some C <= S; the votes and chosen values below C are then
deleted from memory and storage, and C is the replica's compaction point.
Every slot below C is chosen (it was applied), but the acceptor no longer
remembers its vote there, so "no vote below C" means "compacted", never
"free". The rule that keeps Phase 1 safe across compaction points:

  * every Phase1b carries the promiser's compaction point;
  * a candidate with a majority of Phase1b whose highest compaction point
    is above its own commit index (its first slot not known chosen) does NOT
    lead: it steps down and catches up from that promiser first (catch-up,
    or a snapshot install when the promiser compacted past what it needs).

Why it is safe. A new leader re-proposes, at every slot from its commit
index on, the value of the highest vballot among its quorum's Phase1b: that
is Paxos's safe value only if every promiser reports its vote at that slot.
A promiser reports every vote at or above its compaction point; with the
rule, every slot the leader re-proposes (>= its commit index >= every
promiser's compaction point) is covered by every promiser's report, so the
classic argument holds unchanged. Slots below its commit index the leader
already knows chosen. Without the rule a leader behind a promiser's
compaction point would fill a chosen slot with a no-op or another value
(tests/sim has that broken variant, and catches it).

A follower whose catch-up request falls below the peer's compaction point
gets an empty CatchupReply naming that point, and `Ready.install_from` asks
the driver to install the peer's state machine snapshot; `installed(S)`
then moves the log past S. A Phase2a below the compaction point is not
voted on (the slot is chosen and applied already).

A leader behind its followers. A promiser may compact after its Phase1b
(it applied more, or installed a snapshot while the election went on), so
a leader can re-propose a slot that every other voter has chosen, applied
and compacted: none of them votes there again and, in three replicas,
the leader waits forever (the simulator found this). So a leader whose
follower reports (HeartbeatAck) a first unchosen slot above the leader's
commit index asks it by catch-up for what it knows, and learns the chosen
values from the reply; if that follower compacted past the leader's
commit index, the leader steps down and installs its snapshot as a
follower. Learning a chosen value is always safe; so is stepping down.

Membership changes
------------------
Who votes changes through the log (kvstore/membership.py): a config command
chosen at slot c (add a learner, promote a learner to voter, remove a member;
one at a time, each against the epoch it was made for) puts a new membership
in force at slot c + ALPHA. The membership of slot s is therefore a function
of the chosen values of the slots <= s - ALPHA, the same on every replica
(`Schedule`). Quorums are per slot: a value is chosen at s when a majority of
the VOTERS of s's membership voted for it in one ballot; learners and removed
replicas vote too (a learner needs the log) but never count. The rules:

  * a leader proposes slot s only if s < its commit index + ALPHA, so the
    membership of every slot it proposes depends on slots it knows chosen;
    a change waits for ALPHA more slots, which a leader fills with no-ops;
  * a candidate leads only when its promises make a majority of every
    membership its recovery can reach: those in force from its commit index
    (known: they depend on chosen slots), and every one that a change among
    the values it will re-propose brings in force ALPHA slots later (it asks
    the voters such a change names, and waits for a majority of them too);
  * heartbeat rounds (read index), pre-votes and check-quorum need a majority
    of every membership from the commit index on, pending ones included.

Why it is safe. Take a value v chosen at slot s in ballot b by a majority Q
of the voters of M(s), and a later candidate with ballot b' > b and commit
index C <= s (if C > s it knows v). If s < C + ALPHA, M(s) is determined by
slots < C, the candidate's promises include a majority of M(s), which meets
Q, and the classic argument applies. Otherwise the change that put M(s) in
force was chosen at some slot c in [C, s - ALPHA]; by induction on slots the
candidate's Phase 1 finds the chosen value at c (every change in between
included), so its plan contains M(s), it waits for a majority of M(s), which
meets Q: it finds v (or a vote of a higher ballot, which Paxos makes v).
Since leaders never propose past commit + ALPHA, nothing is chosen at s
before c is, so no slot is decided under a membership nobody can see.

A learner is promoted only once it has caught up (the driver checks its
reported commit index), and a replica whose disk was lost comes back only
as a new member under a new id: an id once removed is never reused
(docs/OPERATIONS.md). tests/sim changes the membership at random in every
fifth seed, and catches a leader that counts learners' acknowledgements.

Leadership transfer
-------------------
`transfer(target)` (kvctl move-leader) hands leadership to another voter
without waiting for an election timeout: the leader stops starting slots
(commands queue and are dropped with its leadership; clients retry them at
the new leader, exactly once by their sessions), waits until the target
reports a commit index past every slot it started, and sends it
`TimeoutNow(ballot)`. The target, if it still follows that ballot, starts
Phase 1 at once (no pre-vote) with a ballot above any it has seen; the old
leader steps down on seeing it. Nothing here touches safety: Phase 1 is the
ordinary one, with its majority of promises (the simulator's broken
variant, a target that leads with the OLD ballot and no Phase 1, is caught
as two values in one ballot). If the target does not take over within an
election timeout, the leader goes on leading.

Leader leases (opt-in: `kvstore-replica --lease-reads`)
------------------------------------------------------
A read index costs a heartbeat round per batch of reads. With a lease the
leader answers a read at once while a lease holds: a heartbeat round that a
majority (of every membership from the commit index on) acknowledged gives
a lease of `lease_s` from the moment the leader SENT it (the driver notes
that time on its clock before the send; `Ready.read_lease_round` names the
round). Why no other replica can lead before it ends:

  * every replica that acknowledged the round heard from this leader at or
    after the send, and grants no pre-vote (nor starts its own) until it has
    counted election_ticks ticks without hearing from a leader, that is for
    at least (election_ticks - 1) ticks of its clock after that;
  * a new leader needs a majority of pre-votes (its own included), which
    meets the acknowledging majority, and leads only after that;
  * so no other leader exists, and nothing new is chosen, before send time
    + (election_ticks - 1) ticks on the acknowledger's clock. The driver's
    lease is shorter (replica/driver.py, LEASE_FRACTION of it): safe as
    long as no replica's clock runs faster than the leader's by more than
    that margin (the clock assumption; monotonic clocks on one host or on
    NTP-disciplined hosts differ by parts per million);
  * a replica that restarts forgets when it last heard from the leader, so
    with `read_lease_guard` it grants no pre-vote for election_ticks after it
    starts (a replica without it could grant one at once, as etcd's can);
  * a transfer skips the pre-vote (TimeoutNow), so a leader that began one
    takes no lease for the rest of its leadership;
  * the majorities above are of one membership: a round gives a lease only
    while no change is pending (one membership from the commit index on),
    and the lease ends when the leader learns a change chosen. Until the
    new membership is in force (ALPHA slots later, which only this leader
    can fill) every candidate still needs a majority of the old one.

A lease read is answered from the state at index max(commit index,
recovery end) at the time it arrived, exactly as a read index would be: the
lease only replaces the confirmation round. The simulator runs leases with
one clock for all replicas, and catches a lease longer than the bound.

Vouched reads
-------------
A read index costs four hops on the read's path: client -> leader ->
followers (heartbeat) -> leader -> client. A vouched read starts its
confirmation at the client instead: as the client sends the GET (with a
nonce it never reuses), it sends every other replica a VOUCH for it (Op.VOUCH,
kvstore/protocol.py), and each follower tells the read's replica, in a
ReadVouch (one per iteration, carrying the tokens = client id + nonce of
every VOUCH it took), the ballot it has promised. The leader counts the
vouches of its own ballot and releases the read once it and the vouchers
make a majority of every membership from the commit index on: client ->
follower -> leader -> client, three hops.

Why it is linearizable, as a read index is: the read must see every write
that completed before it was invoked and is answered from the state at index
max(commit index, recovery end) when it reached the leader (at or after
its invocation, so that state holds every write this leader completed
before it, and every earlier leader's, by recovery). The only danger is a
newer leader that completed a write this leader does not know. A newer
leader needs promises of a majority for its higher ballot, and that
majority meets the vouchers: one of them promised the higher ballot either
before it vouched (then its vouch names that ballot and is not counted) or
after (then the newer leader's Phase 1, and every write it completes, ends
after the vouch, which the follower sent after the client sent the VOUCH,
at or after the read's invocation: such a write is concurrent with the
read, which may miss it). A vouch may reach the leader before its read
(kept for one to two ticks) or after (the read waits): either way it was
made after the invocation, which is all the argument uses. A ReadVouch
reveals the promise, so it waits for the iteration's sync like a
HeartbeatAck. A nonce reused by its client (a bug) could let a vouch made
before the read confirm it; tokens are never trusted beyond that.

A read whose vouches do not come within a tick (followers down, VOUCHes
lost, a client asking too few) goes by the next heartbeat round, which
also finds out if the leader was deposed. The simulator's clients vouch
for half their GETs (to as many others as a majority needs, or to all;
delayed, lost, to replicas that moved on), and a directed scenario catches
a leader that counts a vouch of another ballot (tests/sim, CountsAnyVouch).

Joining
-------
A replica started on an empty directory to join a running cluster
(`joining=True`; `--initial-cluster-state existing`) may be a new learner,
or a member that lost its disk and forgot what it promised and voted. Until
it knows which, it promises nothing, votes for nothing, acknowledges no
heartbeat and grants no pre-vote: it only learns how far the log is, and
installs a snapshot (the log from slot 0 would need the first membership,
which the cluster may have forgotten). The snapshot's membership says
which: a member in `started` ran before, so this one is refused
(`CoreStatus.refused`; the replica stops); a learner not yet `started`
goes on as a learner. Only a learner that the leader has recorded as
JOINED (once it reported catching up) promises; only a started learner can
be promoted. So every replica that ever promised is in `started`, and one
that lost its disk can never promise again under its id: it must be
removed and come back as a new member with a new id (ids are never reused).

The core never touches a socket, a clock, a thread or a disk; randomness comes
from the `random.Random` the driver injects, so a seed replays a run exactly.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from kvstore.membership import ALPHA, Change, ChangeKind, Membership, Schedule, encode_change
from replica.messages import (
    NOOP,
    ZERO_BALLOT,
    Ballot,
    CatchupReply,
    CatchupRequest,
    Heartbeat,
    HeartbeatAck,
    Message,
    Nack,
    Phase1a,
    Phase1b,
    Phase2a,
    Phase2b,
    PreVote,
    PreVoteReply,
    ReadVouch,
    TimeoutNow,
    Value,
    Vote,
)

MAX_EARLY_VOUCHES = 65536
"""Vouches kept for reads that have not arrived (per generation of a tick)."""


@dataclass(slots=True)
class DurableState:
    """What a replica's core starts from after a (re)start: everything the
    driver persisted from `Ready.promised`, `Ready.votes` and `Ready.chosen`."""

    promised: Ballot = ZERO_BALLOT
    votes: dict[int, Vote] = field(default_factory=dict)
    chosen: dict[int, Value] = field(default_factory=dict)
    compacted: int = 0
    """The compaction point: votes and chosen values below it were deleted."""


class Role(Enum):
    FOLLOWER = "follower"
    PRECANDIDATE = "precandidate"  # running a pre-vote
    CANDIDATE = "candidate"  # running Phase 1
    LEADER = "leader"


class NotLeader(Exception):
    """propose/read_index on a replica that is not the serving leader."""


@dataclass(frozen=True, slots=True)
class CoreConfig:
    heartbeat_ticks: int = 2
    """Leader sends a heartbeat (commit notice) every this many ticks."""
    election_ticks: int = 20
    """A follower campaigns after a random timeout in [election_ticks, 2*election_ticks)."""
    window: int = 8
    """Slots a leader keeps in flight at once; more commands wait and batch."""
    max_batch_bytes: int = 4 * 1024 * 1024
    """A slot value stops growing past this many bytes of commands."""
    retransmit_ticks: int = 4
    """Phase1a/Phase2a/CatchupRequest not answered for this long are sent again."""
    catchup_entries: int = 512
    """Most slots one CatchupReply carries."""
    catchup_bytes: int = 8 * 1024 * 1024
    """A CatchupReply stops growing past this many bytes of commands."""
    read_lease_guard: bool = False
    """Leader leases for reads (see "Leader leases"): grant no pre-vote for
    election_ticks after this replica starts, as if it had just heard from
    a leader. Every replica of a cluster whose leader serves reads on a
    lease must have it."""


@dataclass(slots=True)
class Ready:
    """What the driver must do after a call into the core, in field order."""

    promised: Ballot | None = None
    votes: dict[int, Vote] = field(default_factory=dict)
    chosen: dict[int, Value] = field(default_factory=dict)
    messages: list[tuple[int, Message]] = field(default_factory=list)
    committed: list[tuple[int, Value]] = field(default_factory=list)
    reads: list[Hashable] = field(default_factory=list)
    failed_reads: list[Hashable] = field(default_factory=list)
    compacted: int | None = None
    """A new compaction point: delete the votes and chosen values below it
    (with the step-1 batch; the state machine state covering them must be
    durable by then, which one synced batch after it guarantees)."""
    install_from: int | None = None
    """Our next needed slot is below this peer's compaction point: install
    its state machine snapshot (the driver's job), then `installed()`."""
    own_quorum: bool = False
    """A slot was chosen by our own (not yet synced) vote alone: nothing of
    this Ready may be sent before the sync (the driver's early Phase2a)."""
    read_lease_round: int | None = None
    """Leader: the highest heartbeat round a majority acknowledged, while
    this leadership may hold a read lease (no transfer started, no
    membership change pending): its send time starts the driver's lease."""
    drop_read_lease: bool = False
    """Leader: a membership change was chosen; any read lease ends now
    (replica/paxos.py, "Leader leases")."""
    vouched_reads: int = 0
    """Leader: reads of `reads` confirmed by followers' vouches ("Vouched
    reads"), for the driver's counters."""

    def must_persist(self) -> bool:
        return (
            self.promised is not None
            or bool(self.votes)
            or bool(self.chosen)
            or self.compacted is not None
        )

    def merge(self, later: Ready) -> None:
        """Folds `later` (the Ready of a later call) into this one, so that one
        pass over the result honours both in contract order (group commit).
        Sound because promises only grow, a later vote at a slot supersedes an
        earlier one, committed entries and reads arrive in order, and nothing
        of either is sent before everything of both is persisted."""
        if later.promised is not None:
            self.promised = later.promised
        if later.votes:
            self.votes.update(later.votes)
        if later.chosen:
            self.chosen.update(later.chosen)
        if later.messages:
            self.messages.extend(later.messages)
        if later.committed:
            self.committed.extend(later.committed)
        if later.reads:
            self.reads.extend(later.reads)
        if later.failed_reads:
            self.failed_reads.extend(later.failed_reads)
        if later.compacted is not None:
            self.compacted = later.compacted  # compaction points only grow
        if later.install_from is not None:
            self.install_from = later.install_from
        if later.own_quorum:
            self.own_quorum = True
        if later.read_lease_round is not None:
            self.read_lease_round = max(later.read_lease_round, self.read_lease_round or 0)
        if later.drop_read_lease:
            self.drop_read_lease = True
        if later.vouched_reads:
            self.vouched_reads += later.vouched_reads


@dataclass(frozen=True, slots=True)
class CoreStatus:
    """A read-only snapshot of a core (as etcd's `Status()`): what the driver
    and the STATUS report need, without reaching into the core's state."""

    id: int
    role: Role
    leader_id: int | None
    """The replica this one follows (itself when leading), None if unknown."""
    leader_ballot: Ballot
    """The ballot of the known leader (ZERO_BALLOT if none)."""
    ballot: Ballot
    """This replica's own ballot as candidate or leader (ZERO_BALLOT if never)."""
    promised: Ballot
    commit_index: int
    compacted: int
    """The compaction point: the log starts here."""
    log_size: int
    """Chosen values held in memory."""
    peers: tuple[int, ...]
    membership: Membership | None = None
    """The latest membership (with changes chosen but not yet in force)."""
    change_pending: bool = False
    """A membership change is chosen but not in force yet."""
    joining: bool = False
    """Started on an empty directory: waits for a snapshot (see "Joining")."""
    refused: str | None = None
    """Why this replica must stop (it joined under an id that ran before)."""
    progress: dict[int, int] = field(default_factory=dict)
    """Leader: the commit index each peer last reported (heartbeat acks)."""


@dataclass(slots=True)
class _InFlight:
    value: Value
    acks: set[int]
    age: int = 0


class PaxosCore:
    """One replica's Multi-Paxos state machine. Drive it with `tick`, `step`,
    `propose` and `read_index`; each returns the `Ready` to carry out."""

    def __init__(
        self,
        replica_id: int,
        replica_ids: list[int],
        durable: DurableState,
        applied_index: int,
        rng: random.Random,
        config: CoreConfig | None = None,
        schedule: Schedule | None = None,
        joining: bool = False,
    ) -> None:
        """`replica_ids` are the voters of a new cluster; `schedule`, if
        given, the memberships in force from `applied_index` on (what the
        state machine recorded), which replaces them."""
        if schedule is None:
            if replica_id not in replica_ids or replica_id < 1:
                raise ValueError("replica_id must be one of replica_ids, all >= 1")
            ids = frozenset(replica_ids)
            schedule = Schedule([(0, Membership(0, ids, started=ids))])
        elif replica_id < 1:
            raise ValueError("replica ids are >= 1")
        self.id = replica_id
        self.config = config or CoreConfig()
        self._rng = rng
        self._ready = Ready()
        self._schedule = schedule.copy()
        self._joining = joining
        self._refused: str | None = None
        self._ticks_up = 0  # ticks since this core started (read_lease_guard)
        self._init_acceptor(durable, applied_index)
        self._refresh_peers()
        self._init_leader_state()

    def _refresh_peers(self) -> None:
        """Everyone in a membership of some slot from the commit index on."""
        self._schedule.prune(self._commit_index)
        self._memberships = self._schedule.from_slot(self._commit_index)
        members = set().union(*(m.members for m in self._memberships))
        self.peers = tuple(sorted(members - {self.id}))
        self._voter = any(self.id in m.voters for m in self._memberships)

    @property
    def quorum(self) -> int:
        """Votes that make a majority in the membership at the commit index."""
        return len(self._memberships[0].voters) // 2 + 1

    def _majority_everywhere(self, ids: set[int]) -> bool:
        """A majority of the voters of every membership from the commit index
        on (changes chosen but not in force yet included)."""
        return all(m.is_quorum(ids) for m in self._memberships)

    # ------------------------------------------------------------------ state

    def _init_acceptor(self, durable: DurableState, applied_index: int) -> None:
        self._promised: Ballot = durable.promised
        self._compacted = compacted = durable.compacted
        self._votes: dict[int, Vote] = {s: v for s, v in durable.votes.items() if s >= compacted}
        self._max_vote_slot = max(self._votes, default=-1)
        # Chosen values we know. Below applied_index every slot is chosen; its
        # value is the catch-up entry if one was stored, else our vote (a vote
        # at a chosen slot carries the chosen value once we learned it). Below
        # the compaction point there is nothing (the snapshot covers it); if
        # applied_index is below it (a crash in the middle of an install),
        # the slots in between must come by catch-up or another install.
        self._log: dict[int, Value] = {}
        for slot in range(compacted, applied_index):
            value = durable.chosen.get(slot)
            if value is None and slot in self._votes:
                value = self._votes[slot].value
            if value is not None:
                self._log[slot] = value
        for slot, value in durable.chosen.items():
            if slot >= compacted:
                self._log.setdefault(slot, value)
        self._commit_index = applied_index  # first slot not known chosen
        self._applied_limit: int | None = None  # note_applied: what we advertise at most
        self._emitted_index = applied_index  # first slot not yet handed out to apply
        self._highest_seen: Ballot = durable.promised

    def _init_leader_state(self) -> None:
        self._role = Role.FOLLOWER
        self._ballot: Ballot = ZERO_BALLOT  # our ballot as candidate/leader
        self._leader_id: int | None = None
        self._leader_ballot: Ballot = ZERO_BALLOT
        self._ticks_since_leader = 0
        self._election_timeout = self._random_timeout()
        self._prevote_round = 0
        self._prevote_grants: set[int] = set()
        self._phase1b: dict[int, Phase1b] = {}
        self._phase1_extra: set[int] = set()  # asked beyond our peers (see _check_phase1)
        self._recovery: dict[int, Value] = {}  # re-proposals not sent yet (leader)
        self._phase1_age = 0
        self._in_flight: dict[int, _InFlight] = {}
        self._pending: deque[bytes] = deque()
        self._next_slot = self._commit_index
        self._recovery_end = self._commit_index
        self._hb_ticks = 0
        self._hb_round = 0
        self._hb_acks: dict[int, set[int]] = {}
        self._reads_unsent: list[tuple[Hashable, int]] = []
        self._reads_waiting: dict[int, list[tuple[Hashable, int]]] = {}
        self._reads_confirmed: list[tuple[Hashable, int]] = []
        # Vouched reads (see "Vouched reads"): token -> [read id, index,
        # vouchers, tick registered]; vouches that came before their read.
        self._reads_vouched: dict[bytes, list] = {}
        self._early_vouches: dict[bytes, set[int]] = {}
        self._early_vouches_before: dict[bytes, set[int]] = {}  # of the previous tick
        self._heard_from: set[int] = set()
        self._progress: dict[int, int] = {}  # leader: each peer's last reported commit index
        self._joined_proposed: set[int] = set()
        self._transfer: int | None = None  # leader: handing over to this replica
        self._transfer_age = 0
        self._no_read_lease = False  # leader: a transfer began, no more read leases
        self._quorum_ticks = 0
        self._catchup_age: int | None = None

    def _random_timeout(self) -> int:
        e = self.config.election_ticks
        return self._rng.randrange(e, 2 * e)

    @property
    def is_leader(self) -> bool:
        """True while this replica is the serving leader (cheap: per request)."""
        return self._role is Role.LEADER

    @property
    def refused(self) -> str | None:
        """Why this replica must stop (see "Joining"), or None."""
        return self._refused

    @property
    def leader_id(self) -> int | None:
        """The leader this replica knows of (itself when leading), or None."""
        return self._leader_id

    @property
    def compacted(self) -> int:
        """The compaction point: no votes or chosen values below it."""
        return self._compacted

    def note_applied(self, index: int) -> None:
        """The driver applied every slot below `index`: the commit index sent
        on Phase2a and Heartbeat is at most that (see "Learner" above)."""
        self._applied_limit = index

    def _advertised_commit(self) -> int:
        limit = self._applied_limit
        commit = self._commit_index
        return commit if limit is None or limit >= commit else limit

    def role_view(self) -> tuple[Role, int | None, Ballot]:
        """(role, leader id, own ballot): what the driver checks after every
        iteration, without the copy `status()` makes (cheap: per iteration)."""
        return self._role, self._leader_id, self._ballot

    def status(self) -> CoreStatus:
        """A frozen snapshot of what a driver or an operator may look at."""
        return CoreStatus(
            id=self.id,
            role=self._role,
            leader_id=self._leader_id,
            leader_ballot=self._leader_ballot,
            ballot=self._ballot,
            promised=self._promised,
            commit_index=self._commit_index,
            compacted=self._compacted,
            log_size=len(self._log),
            peers=self.peers,
            membership=self._schedule.latest,
            change_pending=self._next_change() < 2**63,
            joining=self._joining,
            refused=self._refused,
            progress=dict(self._progress),
        )

    # ------------------------------------------------------------- public API

    def tick(self) -> Ready:
        """One abstract unit of time passes."""
        self._ticks_up += 1
        if self._role is Role.LEADER:
            self._leader_tick()
        else:
            self._follower_tick()
        return self._take_ready()

    def step(self, msg: Message) -> Ready:
        """A message from a peer arrives. Messages from removed replicas are
        ignored (once no slot from our commit index on is theirs to vote in);
        from a replica we do not know yet (a member added by a
        change we have not learned) they are taken: quorums count only the
        voters of a slot's membership, so a stranger's vote never counts."""
        sender = msg.sender
        if sender == self.id or (
            sender in self._schedule.latest.removed and sender not in self.peers
        ):
            return self._take_ready()
        handler = _HANDLERS.get(type(msg))
        if handler is not None:
            handler(self, msg)
        return self._take_ready()

    def propose(self, commands: list[bytes]) -> Ready:
        """Queues client commands on the leader; they are batched into slots
        as the pipeline window allows. Raises NotLeader elsewhere."""
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader_id)
        self._pending.extend(commands)
        self._fill_window()
        return self._take_ready()

    def read_index(
        self,
        read_ids: list[Hashable],
        leased: bool = False,
        tokens: Sequence[bytes | None] | None = None,
    ) -> Ready:
        """Registers linearizable reads; each id comes back in `Ready.reads`
        once the leader confirmed it still leads and applied far enough, or in
        `Ready.failed_reads` if it loses leadership first. `leased`: the
        driver holds a read lease now (see "Leader leases"), which confirms
        the leadership without a heartbeat round (ignored once a transfer
        began). `tokens` (one per read, None for none): a read with a token
        waits for the vouches of followers that its client asked (see
        "Vouched reads") instead of a heartbeat round of its own."""
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader_id)
        index = max(self._commit_index, self._recovery_end)
        if leased and not self._no_read_lease:
            self._reads_confirmed.extend((rid, index) for rid in read_ids)
            self._release_reads()
            return self._take_ready()
        if tokens is None:
            self._reads_unsent.extend((rid, index) for rid in read_ids)
        else:
            for rid, token in zip(read_ids, tokens, strict=True):
                if token is None:
                    self._reads_unsent.append((rid, index))
                else:
                    self._register_vouched(rid, index, token)
        if self._reads_unsent:
            self._send_heartbeats()
        elif self._reads_confirmed:
            self._release_reads()
        return self._take_ready()

    def _register_vouched(self, rid: Hashable, index: int, token: bytes) -> None:
        vouchers = (
            self._early_vouches.pop(token, None)
            or self._early_vouches_before.pop(token, None)
            or set()
        )
        vouchers.add(self.id)
        if self._majority_everywhere(vouchers):
            self._reads_confirmed.append((rid, index))
            self._ready.vouched_reads += 1
            return
        older = self._reads_vouched.get(token)
        if older is not None:  # the same read again (a retry): the older one goes by heartbeat
            self._reads_unsent.append((older[0], older[1]))
        self._reads_vouched[token] = [rid, index, vouchers, self._ticks_up]

    def vouch(self, target: int, tokens: list[bytes]) -> Ready:
        """A client asked this replica to confirm to `target` (the replica it
        sent a read to) that it has promised no ballot above the one it
        reports ("Vouched reads"). Sent after this iteration's sync, like
        every message that reveals acceptor state; dropped when there is
        nobody to tell (`target` is not a peer, or we are not a voter)."""
        if target in self.peers and self._voter and not self._joining and tokens:
            self._send(target, ReadVouch(self.id, self._promised, tuple(tokens)))
        return self._take_ready()

    def transfer(self, target: int) -> Ready:
        """Hands leadership to `target` (kvctl move-leader): stop starting
        slots (commands queue), wait until it has caught up with every slot
        we started, then tell it to start Phase 1 at once (TimeoutNow);
        its higher ballot makes us step down. Abandoned, and proposing
        resumes, after an election timeout. Raises NotLeader elsewhere;
        ValueError if `target` is not a voter that could lead."""
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader_id)
        if target == self.id or not all(target in m.voters for m in self._memberships):
            raise ValueError(f"replica {target} is not another voter of the membership")
        self._transfer, self._transfer_age = target, 0
        self._no_read_lease = True  # the target may start Phase 1 without a pre-vote
        self._try_transfer()
        return self._take_ready()

    def _try_transfer(self, now: bool = False) -> None:
        """TimeoutNow to the target once it has every slot we started (then
        again every retransmit period, or at once on its heartbeat ack)."""
        target = self._transfer
        if target is None:
            return
        caught_up = not self._in_flight and self._progress.get(target, -1) >= self._next_slot
        if caught_up and (now or self._transfer_age % self.config.retransmit_ticks == 0):
            self._send(target, TimeoutNow(self.id, self._ballot))

    def compact(self, point: int) -> Ready:
        """Forgets the log and the votes below `point` (capped at what was
        handed out to apply): the driver's state machine covers them. The
        Ready's `compacted` tells the driver to delete them from storage."""
        self._compact(min(point, self._emitted_index))
        return self._take_ready()

    def installed(self, index: int, schedule: Schedule | None = None) -> Ready:
        """The driver made a snapshot of the state machine at applied index
        `index` current: every slot below it is chosen and applied, and
        `schedule` (if given) holds the memberships from `index` on. The log
        continues from there (the values already known above it are kept)."""
        self._catchup_age = None
        if schedule is not None and index >= self._commit_index:
            self._schedule = schedule.copy()
        self._commit_index = max(self._commit_index, index)
        self._emitted_index = max(self._emitted_index, index)
        self._compact(index)
        self._advance_commit()
        self._refresh_peers()
        if self._role is Role.LEADER:
            self._skip_chosen()
        if self._joining:
            self._joining = False
            self._refused = self._joining_problem()
        return self._take_ready()

    def _joining_problem(self) -> str | None:
        """Why a replica that joined on an empty directory must not go on."""
        latest = self._schedule.latest
        if self.id in latest.started:
            return (
                f"replica {self.id} has run in this cluster before and started now on an "
                "empty data directory: it lost its disk and may have promised or voted "
                "before. Remove it (kvctl member remove) and add a new id"
            )
        if self.id not in latest.members:
            return f"replica {self.id} is not a member: add it first (kvctl member add)"
        return None

    def _compact(self, point: int) -> None:
        if point <= self._compacted:
            return
        for slot in [s for s in self._log if s < point]:
            del self._log[slot]
        for slot in [s for s in self._votes if s < point]:
            del self._votes[slot]
        self._compacted = point
        self._ready.compacted = point

    def _take_ready(self) -> Ready:
        ready, self._ready = self._ready, Ready()
        return ready

    def _send(self, dst: int, msg: Message) -> None:
        self._ready.messages.append((dst, msg))

    def _broadcast(self, msg: Message) -> None:
        for peer in self.peers:
            self._ready.messages.append((peer, msg))

    # ------------------------------------------------------------ acceptor

    def _promise(self, ballot: Ballot) -> None:
        if ballot > self._promised:
            self._promised = ballot
            self._ready.promised = ballot
        self._see(ballot)

    def _see(self, ballot: Ballot) -> None:
        self._highest_seen = max(self._highest_seen, ballot)

    def _vote(self, slot: int, ballot: Ballot, value: Value) -> None:
        vote = Vote(ballot, value)
        self._votes[slot] = vote
        self._ready.votes[slot] = vote
        self._max_vote_slot = max(self._max_vote_slot, slot)

    def _on_phase1a(self, msg: Phase1a) -> None:
        """Phase1b action: promise msg.ballot if it is >= promised. Learners
        promise too: a candidate may need them as voters of a membership
        that a change it re-proposes would bring in force."""
        if not self._voter and msg.from_slot > self._commit_index and self._catchup_age is None:
            # The candidate knows more of the log: perhaps a change that makes
            # us a voter. Learn it; the candidate asks again.
            self._catchup_age = 0
            self._send(msg.sender, CatchupRequest(self.id, msg.ballot, self._commit_index))
        if self.id not in self._schedule.latest.started or self._joining:
            return  # see "Joining": no promise before the leader recorded us
        if msg.ballot < self._promised:
            self._send(msg.sender, Nack(self.id, msg.ballot, self._promised))
            return
        self._promise(msg.ballot)
        self._follow(msg.sender, msg.ballot)
        votes = self._votes_from(msg.from_slot)
        self._send(msg.sender, Phase1b(self.id, msg.ballot, msg.from_slot, votes, self._compacted))

    def _votes_from(self, first: int) -> dict[int, Vote]:
        """Our latest vote at every slot >= first (what a Phase1b reports)."""
        votes = self._votes
        return {s: votes[s] for s in range(first, self._max_vote_slot + 1) if s in votes}

    def _on_phase2a(self, msg: Phase2a) -> None:
        """Phase2b action: vote for msg.value at msg.slot if the ballot is >= promised."""
        if self._joining:  # see "Joining": only learn how far the log is
            self._follow(msg.sender, msg.ballot)
            self._learn_commit(msg.sender, msg.ballot, msg.commit_index)
            return
        if msg.ballot < self._promised:
            self._send(msg.sender, Nack(self.id, msg.ballot, self._promised))
            return
        self._promise(msg.ballot)
        self._follow(msg.sender, msg.ballot)
        if msg.slot >= self._compacted:  # below it: chosen, applied and forgotten
            self._vote(msg.slot, msg.ballot, msg.value)
            self._send(msg.sender, Phase2b(self.id, msg.ballot, msg.slot))
        self._learn_commit(msg.sender, msg.ballot, msg.commit_index)

    def _follow(self, leader: int, ballot: Ballot) -> None:
        """Accept `leader` (the owner of `ballot`) as the current leader."""
        if self._role is not Role.FOLLOWER and ballot > self._ballot:
            self._step_down()
        if self._role is Role.FOLLOWER:
            self._leader_id = leader
            self._leader_ballot = ballot
            self._ticks_since_leader = 0

    # --------------------------------------------------------------- learner

    def _on_heartbeat(self, msg: Heartbeat) -> None:
        if msg.ballot < self._promised:
            self._send(msg.sender, Nack(self.id, msg.ballot, self._promised))
            return
        self._see(msg.ballot)
        self._follow(msg.sender, msg.ballot)
        self._learn_commit(msg.sender, msg.ballot, msg.commit_index)
        if not self._joining:  # a joining replica confirms no leadership
            self._send(msg.sender, HeartbeatAck(self.id, msg.ballot, msg.round, self._commit_index))

    def _learn_commit(self, leader: int, ballot: Ballot, commit_index: int) -> None:
        """Marks slots below the leader's commit_index chosen where our vote is
        from the leader's ballot; asks for the rest by catch-up."""
        slot = self._commit_index
        while slot < commit_index:
            if slot not in self._log:
                vote = self._votes.get(slot)
                if vote is None or vote.ballot != ballot:
                    break
                self._log[slot] = vote.value
            slot += 1
        self._advance_commit()
        if self._commit_index < commit_index and self._catchup_age is None:
            self._catchup_age = 0
            if self._joining:  # the log from slot 0 would need the first membership
                self._ready.install_from = leader
            else:
                self._send(leader, CatchupRequest(self.id, ballot, self._commit_index))

    def _advance_commit(self) -> None:
        """Moves commit_index over every contiguous chosen slot and hands the
        newly chosen values to the driver to apply."""
        changed = False
        while self._commit_index in self._log:
            if self._schedule.chosen(self._commit_index, self._log[self._commit_index]):
                changed = True
                self._ready.drop_read_lease = True
            self._commit_index += 1
        if changed or self._commit_index >= self._next_change():
            self._refresh_peers()
        while self._emitted_index < self._commit_index:
            self._ready.committed.append((self._emitted_index, self._log[self._emitted_index]))
            self._emitted_index += 1
        if self._reads_confirmed:
            self._release_reads()

    def _on_catchup_request(self, msg: CatchupRequest) -> None:
        """Sends the chosen values from msg.from_slot on; below our compaction
        point an empty reply that names it (the asker installs our snapshot)."""
        if msg.from_slot < self._compacted:
            reply = CatchupReply(self.id, self._promised, {}, self._commit_index, self._compacted)
            self._send(msg.sender, reply)
            return
        end = min(self._commit_index, msg.from_slot + self.config.catchup_entries)
        entries: dict[int, Value] = {}
        size = 0
        for slot in range(msg.from_slot, end):
            value = self._log.get(slot)
            if value is None:
                break
            entries[slot] = value
            size += sum(len(c) for c in value)
            if size >= self.config.catchup_bytes:
                break  # at least one entry; frames stay well under the limit
        reply = CatchupReply(self.id, self._promised, entries, self._commit_index, self._compacted)
        self._send(msg.sender, reply)

    def _on_catchup_reply(self, msg: CatchupReply) -> None:
        """Learns chosen values sent by a replica that knows them, or that we
        must install its snapshot: it compacted past what we need."""
        self._catchup_age = None
        if self._joining or (not msg.entries and msg.compacted > self._commit_index):
            if self._role is not Role.FOLLOWER:  # a snapshot is installed as a follower
                self._step_down()
            self._ready.install_from = msg.sender
            return
        for slot, value in msg.entries.items():
            if slot >= self._commit_index and slot not in self._log:
                self._log[slot] = value
                vote = self._votes.get(slot)
                if vote is None or vote.value != value:
                    self._ready.chosen[slot] = value
        self._advance_commit()
        if self._role is Role.LEADER:
            self._skip_chosen()
        if self._commit_index < msg.commit_index and msg.entries:
            self._catchup_age = 0
            self._send(msg.sender, CatchupRequest(self.id, msg.ballot, self._commit_index))

    # ------------------------------------------------------------- election

    def _next_change(self) -> int:
        """The first slot at which a later membership takes over (or never)."""
        entries = self._schedule.entries
        return entries[1][0] if len(entries) > 1 else 2**63

    def _follower_tick(self) -> None:
        self._ticks_since_leader += 1
        if self._catchup_age is not None:
            self._catchup_age += 1
            if self._catchup_age > self.config.retransmit_ticks:
                self._catchup_age = None  # the next commit notice asks again
        if self._role is Role.CANDIDATE:
            self._phase1_age += 1
            if self._phase1_age % self.config.retransmit_ticks == 0:
                self._send_phase1a(only_missing=True)
        if self._ticks_since_leader >= self._election_timeout:
            if not self._voter or self._joining:  # learners, removed, joining: never
                self._ticks_since_leader = 0
                return
            self._start_prevote()

    def _start_prevote(self) -> None:
        """Asks whether a majority would follow a new leader (pre-vote)."""
        self._role = Role.PRECANDIDATE
        self._leader_id = None
        self._ticks_since_leader = 0
        self._election_timeout = self._random_timeout()
        self._prevote_round = self._highest_seen.round + 1
        self._prevote_grants = {self.id}
        self._broadcast(PreVote(self.id, self._prevote_round, self._commit_index))
        self._check_prevote()

    def _on_timeout_now(self, msg: TimeoutNow) -> None:
        """Our leader hands over to us: start Phase 1 now, no pre-vote (a
        higher ballot, and a majority of promises, as for any election)."""
        if (
            msg.ballot == self._leader_ballot
            and self._role is Role.FOLLOWER
            and self._voter
            and not self._joining
        ):
            self._start_phase1()

    def _on_prevote(self, msg: PreVote) -> None:
        """Grants if we have not heard from a leader for a full minimum election
        timeout and the candidate knows at least as much of the log as we do."""
        leader_alive = (
            self._role is Role.LEADER
            or (
                self._leader_id is not None
                and self._ticks_since_leader < self.config.election_ticks
            )
            # It may have acknowledged a leader's heartbeat just before it
            # restarted (see "Leader leases").
            or (self.config.read_lease_guard and self._ticks_up < self.config.election_ticks)
        )
        granted = (
            not leader_alive and msg.first_unchosen >= self._commit_index and not self._joining
        )
        self._send(msg.sender, PreVoteReply(self.id, msg.round, granted, self._commit_index))

    def _on_prevote_reply(self, msg: PreVoteReply) -> None:
        if (
            not msg.granted
            and msg.first_unchosen > self._commit_index
            and self._catchup_age is None
        ):
            # Refused because we are behind: learn what we miss from that replica
            # (after a membership change, the replicas that know the newest
            # slots may be ones that no longer campaign).
            self._catchup_age = 0
            self._send(msg.sender, CatchupRequest(self.id, self._promised, self._commit_index))
        if self._role is Role.PRECANDIDATE and msg.round == self._prevote_round and msg.granted:
            self._prevote_grants.add(msg.sender)
            self._check_prevote()

    def _check_prevote(self) -> None:
        if self._majority_everywhere(self._prevote_grants):
            self._start_phase1()

    def _start_phase1(self) -> None:
        """Phase1a action: one prepare for every slot from the first unchosen."""
        self._role = Role.CANDIDATE
        self._ballot = Ballot(max(self._highest_seen.round, self._promised.round) + 1, self.id)
        self._promise(self._ballot)
        self._phase1_age = 0
        self._phase1b = {}
        own = self._votes_from(self._commit_index)
        self._phase1b[self.id] = Phase1b(
            self.id, self._ballot, self._commit_index, own, self._compacted
        )
        self._send_phase1a(only_missing=False)
        self._check_phase1()

    def _send_phase1a(self, only_missing: bool) -> None:
        msg = Phase1a(self.id, self._ballot, self._commit_index)
        for peer in (*self.peers, *sorted(self._phase1_extra)):
            if not (only_missing and peer in self._phase1b):
                self._send(peer, msg)

    def _on_phase1b(self, msg: Phase1b) -> None:
        if self._role is Role.CANDIDATE and msg.ballot == self._ballot:
            self._phase1b[msg.sender] = msg
            self._check_phase1()

    def _check_phase1(self) -> None:
        """Leads once the promises make a majority in every membership that
        the slots from our commit index on can be in (see "Membership
        changes" in the module docstring), asking whoever those name."""
        responders = set(self._phase1b)
        if not self._majority_everywhere(responders):
            return
        best = self._best_votes()
        plan = self._plan(best)
        wanted = set().union(*(m.voters for m in plan)) - responders - {self.id}
        unasked = wanted - set(self.peers) - self._phase1_extra
        if unasked:  # members only a change found in Phase 1 names
            self._phase1_extra |= unasked
            msg = Phase1a(self.id, self._ballot, self._commit_index)
            for peer in sorted(unasked):
                self._send(peer, msg)
        if not all(m.is_quorum(responders) for m in plan):
            return
        ahead = max(self._phase1b.values(), key=lambda p1b: p1b.compacted)
        if self._behind_compaction(ahead.compacted):
            # See "Compaction points" in the module docstring.
            self._step_down()
            self._catchup_age = 0
            self._send(ahead.sender, CatchupRequest(self.id, self._promised, self._commit_index))
            return
        self._become_leader(best)

    def _best_votes(self) -> dict[int, Vote]:
        """Per slot from the commit index on, the vote with the highest
        vballot among the promises received."""
        best: dict[int, Vote] = {}
        for p1b in self._phase1b.values():
            for slot, (vballot, value) in p1b.votes.items():
                if slot >= self._commit_index and (slot not in best or vballot > best[slot].ballot):
                    best[slot] = Vote(vballot, value)
        return best

    def _recovered_value(self, slot: int, best: dict[int, Vote]) -> Value:
        if slot in self._log:
            return self._log[slot]
        return best[slot].value if slot in best else NOOP

    def _plan(self, best: dict[int, Vote]) -> list[Membership]:
        """The memberships of every slot from the commit index on, if we
        re-propose `best` (each change among those values in force ALPHA
        slots after it)."""
        schedule = self._schedule.copy()
        end = max(best, default=self._commit_index - 1) + 1
        for slot in range(self._commit_index, end):
            schedule.chosen(slot, self._recovered_value(slot, best))
        return schedule.from_slot(self._commit_index)

    def _behind_compaction(self, compacted: int) -> bool:
        """True if a promiser deleted slots we do not know chosen values of:
        then its Phase1b cannot tell us what to re-propose there."""
        return compacted > self._commit_index

    def _on_nack(self, msg: Nack) -> None:
        """A higher ballot exists: stop campaigning or leading at once."""
        self._see(msg.promised)
        ours = self._role in (Role.CANDIDATE, Role.LEADER) and msg.ballot == self._ballot
        if ours and msg.promised > self._ballot:
            self._step_down()

    def _step_down(self) -> None:
        self._ready.failed_reads.extend(rid for rid, _ in self._reads_unsent)
        for reads in self._reads_waiting.values():
            self._ready.failed_reads.extend(rid for rid, _ in reads)
        self._ready.failed_reads.extend(rid for rid, _ in self._reads_confirmed)
        self._ready.failed_reads.extend(entry[0] for entry in self._reads_vouched.values())
        commit, emitted = self._commit_index, self._emitted_index
        self._init_leader_state()
        self._commit_index, self._emitted_index = commit, emitted
        self._next_slot = self._recovery_end = commit

    # --------------------------------------------------------------- leader

    def _become_leader(self, best: dict[int, Vote]) -> None:
        """With a majority of promises: re-propose, per slot, the value with the
        highest vballot, fill holes with no-ops, then serve new commands. The
        re-proposals go out as the window below allows (never past the commit
        index + ALPHA), before any new command."""
        self._role = Role.LEADER
        self._leader_id = self.id
        self._leader_ballot = self._ballot
        self._phase1b = {}
        end = max(best, default=self._commit_index - 1) + 1
        self._next_slot = self._commit_index
        self._recovery = {s: self._recovered_value(s, best) for s in range(self._commit_index, end)}
        self._recovery_end = end
        self._heard_from = set()
        self._quorum_ticks = 0
        self._send_heartbeats()
        self._fill_window()

    def _start_slot(self, value: Value) -> None:
        """Phase2a action for the next slot; the leader votes for itself too."""
        slot = self._next_slot
        self._next_slot += 1
        self._vote(slot, self._ballot, value)
        self._in_flight[slot] = _InFlight(value, {self.id})
        self._broadcast(Phase2a(self.id, self._ballot, slot, value, self._advertised_commit()))
        self._check_chosen(slot)

    def _fill_window(self) -> None:
        """Re-proposes what Phase 1 recovered, then drains waiting commands
        into new slots, one batch per slot; never a slot at or past the
        commit index + ALPHA, whose membership may not be known yet."""
        if self._transfer is not None:
            return  # handing over: commands wait for the next leader (see transfer)
        while self._next_slot < self._recovery_end:
            if self._next_slot >= self._commit_index + ALPHA or self._role is not Role.LEADER:
                return
            self._start_slot(self._recovery.pop(self._next_slot))
        limit = self.config.max_batch_bytes
        while (
            self._pending
            and len(self._in_flight) < self.config.window
            and self._next_slot < self._commit_index + ALPHA
        ):
            batch, size = [], 0
            while self._pending and (not batch or size + len(self._pending[0]) <= limit):
                cmd = self._pending.popleft()
                batch.append(cmd)
                size += len(cmd)
            self._start_slot(tuple(batch))

    def _on_phase2b(self, msg: Phase2b) -> None:
        if self._role is not Role.LEADER or msg.ballot != self._ballot:
            return
        self._heard_from.add(msg.sender)
        entry = self._in_flight.get(msg.slot)
        if entry is not None:
            entry.acks.add(msg.sender)
            self._check_chosen(msg.slot)

    def _skip_chosen(self) -> None:
        """A leader that learned chosen slots by catch-up or a snapshot
        install (answers to a request it sent before it led): it stops
        proposing them, frees their places in the window (acceptors that
        applied them do not vote there again) and fills the window, which a
        slot of its recovery may have waited for (the simulator's pause
        nemesis found a leader stalled so)."""
        commit = self._commit_index
        for slot in [s for s in self._in_flight if s < commit]:
            del self._in_flight[slot]
        while self._next_slot < commit:
            self._recovery.pop(self._next_slot, None)
            self._next_slot += 1
        self._fill_window()

    def _check_chosen(self, slot: int) -> None:
        entry = self._in_flight.get(slot)
        if entry is not None and self._schedule.at(slot).is_quorum(entry.acks):
            if entry.acks == {self.id}:
                self._ready.own_quorum = True
            del self._in_flight[slot]
            self._log[slot] = entry.value
            self._advance_commit()
            self._fill_window()

    def _leader_tick(self) -> None:
        if self._transfer is not None:
            self._transfer_age += 1
            if self._transfer_age > self.config.election_ticks:
                self._transfer = None  # the target did not take over: go on
                self._fill_window()
            else:
                self._try_transfer()
        self._hb_ticks += 1
        if self._hb_ticks >= self.config.heartbeat_ticks or self._vouches_overdue():
            self._send_heartbeats()
        # A vouch that came before its read waits for it one to two ticks.
        self._early_vouches_before, self._early_vouches = self._early_vouches, {}
        if self._catchup_age is not None:
            self._catchup_age += 1
            if self._catchup_age > self.config.retransmit_ticks:
                self._catchup_age = None  # the next HeartbeatAck asks again
        if (
            not self._pending
            and not self._in_flight
            and self._next_slot >= self._recovery_end
            and self._next_change() < 2**63
            and self._next_slot < self._commit_index + ALPHA
        ):
            self._start_slot(NOOP)  # a membership change waits for ALPHA more slots
        for slot, entry in self._in_flight.items():
            entry.age += 1
            if entry.age % self.config.retransmit_ticks == 0:
                msg = Phase2a(self.id, self._ballot, slot, entry.value, self._advertised_commit())
                for peer in self.peers:
                    if peer not in entry.acks:
                        self._send(peer, msg)
        self._record_joined()
        self._quorum_ticks += 1
        if not self._voter:  # removed: a leader that is no voter anywhere hands over
            self._step_down()
            return
        if self._quorum_ticks >= self.config.election_ticks:
            if not self._majority_everywhere(self._heard_from | {self.id}):
                self._step_down()  # check-quorum: we may be cut off
                return
            self._heard_from = set()
            self._quorum_ticks = 0

    def _record_joined(self) -> None:
        """Proposes the JOINED record of every learner that has caught up by
        a snapshot (it reports a commit index > 0), once per leadership."""
        latest = self._schedule.latest
        for rid in sorted(latest.learners - latest.started - self._joined_proposed):
            if self._progress.get(rid, 0) > 0:
                self._joined_proposed.add(rid)
                change = Change(ChangeKind.JOINED, rid, latest.epoch)
                self._pending.append(encode_change(change))
                self._fill_window()

    def _send_heartbeats(self) -> None:
        self._hb_ticks = 0
        self._hb_round += 1
        self._hb_acks[self._hb_round] = {self.id}
        overdue = self._vouches_overdue()
        if overdue:  # reads whose vouches did not come in a tick: this round decides
            for token in overdue:
                rid, index, _, _ = self._reads_vouched.pop(token)
                self._reads_unsent.append((rid, index))
        if self._reads_unsent:
            self._reads_waiting[self._hb_round] = self._reads_unsent
            self._reads_unsent = []
        commit = self._advertised_commit()
        self._broadcast(Heartbeat(self.id, self._ballot, commit, self._hb_round))
        self._check_heartbeat_round(self._hb_round)

    def _on_read_vouch(self, msg: ReadVouch) -> None:
        """Followers' word that they promised nothing above our ballot after
        the reads' clients sent them (see "Vouched reads")."""
        if self._role is not Role.LEADER or msg.ballot != self._ballot:
            return  # a higher ballot: the next heartbeat round finds out
        sender = msg.sender
        vouched, early = self._reads_vouched, self._early_vouches
        for token in msg.tokens:
            entry = vouched.get(token)
            if entry is None:  # before its read: kept a little (see _leader_tick)
                if len(early) >= MAX_EARLY_VOUCHES:
                    del early[next(iter(early))]
                early.setdefault(token, set()).add(sender)
                continue
            entry[2].add(sender)
            if self._majority_everywhere(entry[2]):
                del vouched[token]
                self._reads_confirmed.append((entry[0], entry[1]))
                self._ready.vouched_reads += 1
        if self._reads_confirmed:
            self._release_reads()

    def _on_heartbeat_ack(self, msg: HeartbeatAck) -> None:
        if self._role is not Role.LEADER or msg.ballot != self._ballot:
            return
        self._heard_from.add(msg.sender)
        self._progress[msg.sender] = msg.first_unchosen
        if msg.first_unchosen > self._commit_index and self._catchup_age is None:
            # A follower knows slots chosen that we do not ("A leader behind
            # its followers" in the module docstring).
            self._catchup_age = 0
            self._send(msg.sender, CatchupRequest(self.id, self._ballot, self._commit_index))
        if msg.sender == self._transfer:
            self._try_transfer(now=True)
        acks = self._hb_acks.get(msg.round)
        if acks is not None:
            acks.add(msg.sender)
            self._check_heartbeat_round(msg.round)

    def _vouches_overdue(self) -> list[bytes]:
        """The vouched reads that waited a whole tick (one to two)."""
        if not self._reads_vouched:
            return []
        before = self._ticks_up - 1
        return [t for t, entry in self._reads_vouched.items() if entry[3] < before]

    def _check_heartbeat_round(self, round_: int) -> None:
        """A majority acknowledged heartbeat `round_`: we were still leader when
        it was sent, so every read registered before it is confirmed."""
        if not self._majority_everywhere(self._hb_acks[round_]):
            return
        for r in [r for r in self._hb_acks if r <= round_]:
            del self._hb_acks[r]
            self._reads_confirmed.extend(self._reads_waiting.pop(r, ()))
        if not self._no_read_lease and len(self._memberships) == 1:
            self._ready.read_lease_round = max(round_, self._ready.read_lease_round or 0)
        self._release_reads()

    def _release_reads(self) -> None:
        keep = []
        for rid, index in self._reads_confirmed:
            if index <= self._emitted_index:
                self._ready.reads.append(rid)
            else:
                keep.append((rid, index))
        self._reads_confirmed = keep


_HANDLERS = {
    Phase1a: PaxosCore._on_phase1a,
    Phase1b: PaxosCore._on_phase1b,
    Phase2a: PaxosCore._on_phase2a,
    Phase2b: PaxosCore._on_phase2b,
    Nack: PaxosCore._on_nack,
    Heartbeat: PaxosCore._on_heartbeat,
    HeartbeatAck: PaxosCore._on_heartbeat_ack,
    ReadVouch: PaxosCore._on_read_vouch,
    CatchupRequest: PaxosCore._on_catchup_request,
    CatchupReply: PaxosCore._on_catchup_reply,
    PreVote: PaxosCore._on_prevote,
    TimeoutNow: PaxosCore._on_timeout_now,
    PreVoteReply: PaxosCore._on_prevote_reply,
}
