"""Messages between replicas, named as in Lamport's Paxos.tla, plus the
Multi-Paxos extras a real log needs (commit notices, catch-up, pre-vote).

Every message is a frozen dataclass with slots and carries `sender`, the
replica id of whoever sent it (the transport checks it against the peer the
frame came from). A slot value is a `Value`: a tuple of opaque command byte
strings chosen together as one batch; the empty tuple is the no-op that fills
a hole. The core never looks inside a command.

Field meanings per message:

Phase1a(ballot, from_slot)
    A would-be leader asks every acceptor to promise `ballot` for every slot
    >= from_slot (one prepare covers the whole tail of the log).
Phase1b(ballot, from_slot, votes, compacted)
    The promise. `votes` maps each slot >= from_slot at which the acceptor
    has voted to (vballot, value) of its latest vote there. `compacted` is
    the acceptor's compaction point: it deleted its votes below it, all of
    them at chosen slots, so "no vote below `compacted`" means "compacted",
    never "free" (a candidate behind it must catch up before it leads).
Phase2a(ballot, slot, value, commit_index)
    The leader asks acceptors to vote for `value` at `slot` in `ballot`.
    `commit_index` piggybacks the leader's knowledge: every slot below it is
    chosen.
Phase2b(ballot, slot)
    The acceptor voted for the ballot's value at `slot`.
Nack(ballot, promised)
    The acceptor refused a message of `ballot` because it promised the higher
    ballot `promised`. The receiver steps down/stops campaigning.
Heartbeat(ballot, commit_index, round)
    Leader's periodic commit notice and leadership probe; `round` numbers the
    probe so that acknowledgements confirm pending linearizable reads.
HeartbeatAck(ballot, round, first_unchosen)
    A follower accepts `ballot` as the current leader's; `first_unchosen` lets
    the leader see who is behind.
ReadVouch(ballot, tokens)
    A follower that a client asked to vouch for its reads (Op.VOUCH) tells
    the replica the client sent them to that it has promised no ballot
    above `ballot` (its promise, after the client sent the reads); the
    leader of that ballot counts it towards confirming those reads
    (replica/paxos.py, "Vouched reads"). `tokens`: each read's client_id +
    nonce (8 bytes, big-endian).
CatchupRequest(ballot, from_slot)
    A replica that lacks chosen values asks the leader for slots >= from_slot.
CatchupReply(ballot, entries, commit_index, compacted)
    Chosen values, `entries` maps slot to value, every slot < commit_index
    is chosen. `compacted` is the sender's compaction point: no entries and a
    request below it means "ask for my snapshot instead".
PreVote(round, first_unchosen)
    A replica that lost contact with the leader asks whether the others would
    follow a new leader at a ballot with round `round` before disturbing
    anyone (pre-vote, as in Raft thesis 9.6).
PreVoteReply(round, granted)
SnapshotRequest(snapshot_id, after)
    A replica that needs the sender's state machine snapshot (its catch-up
    fell below the sender's compaction point) asks for the next chunk of
    snapshot `snapshot_id` after key `after` (b"" and None: a new snapshot
    from the start). Handled by the driver, not the core.
TimeoutNow(ballot)
    The leader of `ballot` hands leadership to the receiver (kvctl
    move-leader): having stopped proposing and seen the receiver caught up,
    it asks it to start Phase 1 at once, without a pre-vote.
Effects(start, end, effects)
    The leader applied slots start..end-1 (chosen) and sends the batch that
    made (kvstore/statemachine.py, "Effects"): a follower about to apply
    exactly those slots may write it instead of executing them. Handled by
    the driver, not the core; it reveals no acceptor state.
SnapshotChunk(snapshot_id, index, revision, items, last, after)
    One bounded chunk of the snapshot `snapshot_id` (the state machine at
    applied index `index`): (key, record) pairs in key order; `last` is the
    last key sent, or None when the snapshot is complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Ballot(NamedTuple):
    """A ballot number: totally ordered by (round, replica_id), unique per
    replica because only replica `replica_id` ever uses it."""

    round: int
    replica_id: int


ZERO_BALLOT = Ballot(0, 0)
"""Lower than every ballot a replica uses (replica ids start at 1, rounds at 1)."""

Value = tuple[bytes, ...]
"""A slot value: a batch of opaque commands. `NOOP` is the empty batch."""

NOOP: Value = ()


class Vote(NamedTuple):
    """An acceptor's vote at one slot: the ballot it voted in and the value."""

    ballot: Ballot
    value: Value


@dataclass(frozen=True, slots=True)
class Phase1a:
    sender: int
    ballot: Ballot
    from_slot: int


@dataclass(frozen=True, slots=True)
class Phase1b:
    sender: int
    ballot: Ballot
    from_slot: int
    votes: dict[int, Vote]
    compacted: int = 0


@dataclass(frozen=True, slots=True)
class Phase2a:
    sender: int
    ballot: Ballot
    slot: int
    value: Value
    commit_index: int


@dataclass(frozen=True, slots=True)
class Phase2b:
    sender: int
    ballot: Ballot
    slot: int


@dataclass(frozen=True, slots=True)
class Nack:
    sender: int
    ballot: Ballot
    promised: Ballot


@dataclass(frozen=True, slots=True)
class Heartbeat:
    sender: int
    ballot: Ballot
    commit_index: int
    round: int


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    sender: int
    ballot: Ballot
    round: int
    first_unchosen: int


@dataclass(frozen=True, slots=True)
class ReadVouch:
    sender: int
    ballot: Ballot  # the sender's promised ballot when it sent this
    tokens: tuple[bytes, ...]  # the reads' client_id + nonce, see replica/paxos.py


@dataclass(frozen=True, slots=True)
class CatchupRequest:
    sender: int
    ballot: Ballot
    from_slot: int


@dataclass(frozen=True, slots=True)
class CatchupReply:
    sender: int
    ballot: Ballot
    entries: dict[int, Value]
    commit_index: int
    compacted: int = 0


@dataclass(frozen=True, slots=True)
class PreVote:
    sender: int
    round: int
    first_unchosen: int


@dataclass(frozen=True, slots=True)
class PreVoteReply:
    sender: int
    round: int
    granted: bool
    first_unchosen: int = 0
    """The granter's commit index: a candidate behind it catches up from it."""


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    sender: int
    snapshot_id: bytes
    after: bytes | None


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    sender: int
    snapshot_id: bytes
    index: int
    revision: int
    items: list[tuple[bytes, bytes]]
    last: bytes | None
    after: bytes | None = None
    """The key these items follow (the request's), None for the first chunk:
    an installer stages a chunk only where it continues what it staged."""


@dataclass(frozen=True, slots=True)
class Effects:
    sender: int
    start: int
    end: int
    effects: bytes


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    sender: int
    ballot: Ballot


Message = (
    Phase1a
    | Phase1b
    | Phase2a
    | Phase2b
    | Nack
    | Heartbeat
    | HeartbeatAck
    | ReadVouch
    | CatchupRequest
    | CatchupReply
    | PreVote
    | PreVoteReply
    | SnapshotRequest
    | SnapshotChunk
    | TimeoutNow
    | Effects
)
