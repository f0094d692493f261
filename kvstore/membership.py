"""Cluster membership, changed through the log (pure: no I/O).

A `Membership` is the set of voters (whose votes and promises make
majorities), the learners (replicas that receive the log and catch up but
never count), the replicas removed for good (an id is never reused: a
replica that lost its disk comes back under a new id), the address of every
member, and an epoch that counts the changes.

A change is a command in the log (`CONFIG_TAG` + msgpack), one replica at a
time: add a learner, promote a learner to voter, remove a member. It names
the epoch it was made against, so a change proposed twice, or two changes
raced against one epoch, apply at most once: `apply_command` returns the
new membership, or None for a stale or invalid change, and every replica
(the Paxos core and the state machine) runs the same function on the same
chosen commands, in log order.

A change chosen at slot s takes effect at slot s + ALPHA (Lamport's
reconfiguration with a bounded window): the quorums of slot t are those of
the membership in force at t, which depends only on the chosen values of
slots <= t - ALPHA. A leader never proposes slot t unless every slot below
t - ALPHA + 1 is known chosen, so it always knows the membership of every
slot it proposes in. replica/paxos.py ("Membership changes") says why Phase
1 is still safe.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

# msgpack is imported where it is used: the Paxos core imports this module
# and stays free of anything that loads `time` (tests/unit/test_core_purity.py).

CONFIG_TAG = b"\xc2"
ALPHA = 8
"""Slots between a change being chosen and taking effect. Cluster-wide:
every replica must use the same value (it is part of the log's meaning)."""
MAX_ADDRESS = 256


class ChangeKind(IntEnum):
    ADD_LEARNER = 1
    PROMOTE = 2
    REMOVE = 3
    JOINED = 4  # the leader records that a new learner started (see `started`)


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    replica_id: int
    base_epoch: int
    peer: str = ""
    client: str = ""
    request_id: bytes = b""  # which waiting client request it answers


@dataclass(frozen=True)
class Membership:
    epoch: int
    voters: frozenset[int]
    learners: frozenset[int] = frozenset()
    removed: frozenset[int] = frozenset()
    addresses: tuple[tuple[int, str, str], ...] = ()  # (id, peer, client), by id
    started: frozenset[int] = frozenset()
    """Members that have run: the first replicas, and each learner once the
    leader saw it caught up (a JOINED record). A replica starting on an
    empty directory whose id is here lost its disk: it is refused (it may
    have promised before), see replica/paxos.py, "Joining"."""

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners

    def is_quorum(self, ids: set[int] | frozenset[int]) -> bool:
        """True if `ids` holds a majority of the voters."""
        return 2 * len(self.voters & ids) > len(self.voters)

    def address(self, replica_id: int) -> tuple[str, str] | None:
        for rid, peer, client in self.addresses:
            if rid == replica_id:
                return peer, client
        return None

    def pack(self) -> list[Any]:
        return [self.epoch, sorted(self.voters), sorted(self.learners), sorted(self.removed),
                [list(a) for a in self.addresses], sorted(self.started)]  # fmt: skip

    @classmethod
    def unpack(cls, raw: Any) -> Membership:
        epoch, voters, learners, removed, addresses, started = raw
        return cls(
            int(epoch),
            frozenset(int(v) for v in voters),
            frozenset(int(v) for v in learners),
            frozenset(int(v) for v in removed),
            tuple((int(i), str(p), str(c)) for i, p, c in addresses),
            frozenset(int(v) for v in started),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "voters": sorted(self.voters),
            "learners": sorted(self.learners),
            "removed": sorted(self.removed),
            "started": sorted(self.started),
        }

    def report(self) -> dict[str, Any]:
        """`describe()` with every member's addresses and role: the answer
        to a MEMBER request (kvctl member)."""
        info = self.describe()
        info["members"] = [
            {"id": rid, "peer": peer, "client": client,
             "role": "voter" if rid in self.voters else "learner"}
            for rid, peer, client in self.addresses
        ]  # fmt: skip
        return info


def bootstrap(addresses: list[tuple[int, str, str]]) -> Membership:
    """The membership a new cluster starts with: every replica a voter."""
    ids = frozenset(a[0] for a in addresses)
    return Membership(0, ids, addresses=tuple(sorted(addresses)), started=ids)


def encode_change(change: Change) -> bytes:
    import msgpack

    body = [int(change.kind), change.replica_id, change.base_epoch, change.peer, change.client,
            change.request_id]  # fmt: skip
    return CONFIG_TAG + msgpack.packb(body, use_bin_type=True)


def decode_change(command: bytes) -> Change | None:
    """The change in a config command, or None for any other command (or a
    malformed one: the same None on every replica)."""
    if command[:1] != CONFIG_TAG:
        return None
    import msgpack

    try:
        kind, rid, epoch, peer, client, request_id = msgpack.unpackb(command[1:], raw=False)
        return Change(ChangeKind(kind), int(rid), int(epoch), str(peer), str(client),
                      bytes(request_id))  # fmt: skip
    except (ValueError, TypeError, msgpack.UnpackException):
        return None


def check(m: Membership, change: Change) -> str | None:
    """Why `change` cannot apply to `m` (one line), or None if it can."""
    rid = change.replica_id
    if change.kind is ChangeKind.JOINED:  # recorded by a leader, not an operator
        if rid not in m.learners or rid in m.started:
            return f"replica {rid} is no learner waiting to be recorded as started"
        return None
    if change.base_epoch != m.epoch:
        return (
            f"the membership changed (now epoch {m.epoch}; "
            f"the change was made against {change.base_epoch})"
        )
    if rid < 1:
        return "replica ids are >= 1"
    if change.kind is ChangeKind.ADD_LEARNER:
        if rid in m.members:
            return f"replica {rid} is already a member"
        if rid in m.removed:
            return f"replica id {rid} was removed; ids are never reused (pick a new id)"
        if not change.peer or not change.client:
            return "a new member needs a peer address and a client address"
        if len(change.peer) > MAX_ADDRESS or len(change.client) > MAX_ADDRESS:
            return "address too long"
        return None
    if change.kind is ChangeKind.PROMOTE:
        if rid not in m.learners:
            return f"replica {rid} is not a learner"
        if rid not in m.started:
            return f"replica {rid} has not started and caught up yet (see kvctl member list)"
        return None
    if rid not in m.members:
        return f"replica {rid} is not a member"
    if m.voters == {rid}:
        return f"replica {rid} is the last voter"
    return None


def apply_change(m: Membership, change: Change) -> Membership | None:
    """The membership after `change`, or None if it does not apply."""
    if check(m, change) is not None:
        return None
    rid = change.replica_id
    if change.kind is ChangeKind.JOINED:  # no new epoch: it changes no quorum
        return replace(m, started=m.started | {rid})
    epoch = m.epoch + 1
    if change.kind is ChangeKind.ADD_LEARNER:
        addresses = tuple(sorted((*m.addresses, (rid, change.peer, change.client))))
        return replace(m, epoch=epoch, learners=m.learners | {rid}, addresses=addresses)
    if change.kind is ChangeKind.PROMOTE:
        return replace(m, epoch=epoch, voters=m.voters | {rid}, learners=m.learners - {rid})
    addresses = tuple(a for a in m.addresses if a[0] != rid)
    return replace(
        m,
        epoch=epoch,
        voters=m.voters - {rid},
        learners=m.learners - {rid},
        removed=m.removed | {rid},
        addresses=addresses,
        started=m.started - {rid},
    )


def apply_command(m: Membership, command: bytes) -> Membership | None:
    """The membership after a chosen command: None if it is no config
    change or one that does not apply."""
    change = decode_change(command)
    return None if change is None else apply_change(m, change)


class Schedule:
    """Which membership is in force at each slot: a list of (first slot,
    membership), ascending. `chosen(slot, value)` feeds the chosen values in
    slot order; a change chosen at s is in force from s + ALPHA."""

    def __init__(self, entries: list[tuple[int, Membership]]) -> None:
        if not entries:
            raise ValueError("a schedule needs a first membership")
        self.entries = sorted(entries, key=lambda e: e[0])

    @property
    def latest(self) -> Membership:
        """After every change chosen so far (in force or not yet)."""
        return self.entries[-1][1]

    def at(self, slot: int) -> Membership:
        found = self.entries[0][1]
        for first, m in self.entries:
            if first > slot:
                break
            found = m
        return found

    def chosen(self, slot: int, value: tuple[bytes, ...]) -> list[Membership]:
        """Feeds one chosen slot; returns the memberships it made (applied)."""
        made = []
        for command in value:
            if command[:1] == CONFIG_TAG:
                new = apply_command(self.latest, command)
                if new is not None:
                    self.entries.append((slot + ALPHA, new))
                    made.append(new)
        return made

    def prune(self, slot: int) -> None:
        """Forgets memberships no slot >= `slot` can be in."""
        keep = 0
        for i, (first, _) in enumerate(self.entries):
            if first <= slot:
                keep = i
        del self.entries[:keep]

    def from_slot(self, slot: int) -> list[Membership]:
        """Every membership in force at some slot >= `slot`."""
        out = [self.at(slot)]
        out.extend(m for first, m in self.entries if first > slot)
        return out

    def copy(self) -> Schedule:
        return Schedule(list(self.entries))

    def pack(self) -> bytes:
        import msgpack

        return msgpack.packb([[first, m.pack()] for first, m in self.entries], use_bin_type=True)

    @classmethod
    def unpack(cls, raw: bytes) -> Schedule:
        import msgpack

        return cls([(int(first), Membership.unpack(m)) for first, m in msgpack.unpackb(raw)])
