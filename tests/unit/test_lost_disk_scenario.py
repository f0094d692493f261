"""Issue 12's reproduction, as a directed scenario on the Paxos core: a value
is chosen with a follower's vote, that follower's disk is wiped and the old
leader goes down; the wiped follower and the third replica then elect a
leader. Restarted naively (empty, under its old id, voting at once) the
wiped replica helps choose a second value at the slot; restarted JOINING
(what `--initial-cluster-state existing` does, replica/paxos.py "Joining")
it promises and votes nothing, so no majority forms without the old
leader, and once it is back the chosen value stands everywhere."""

from __future__ import annotations

import random

import pytest

from replica.messages import Phase2a
from replica.paxos import CoreConfig, DurableState, PaxosCore

CFG = CoreConfig(heartbeat_ticks=1, election_ticks=5, retransmit_ticks=2)
IDS = [1, 2, 3]


class Cluster:
    def __init__(self) -> None:
        self.cores = {i: PaxosCore(i, IDS, DurableState(), 0, random.Random(i), CFG) for i in IDS}
        self.applied: dict[int, list] = {i: [] for i in IDS}
        self.down: set[int] = set()
        self.cut: set[tuple[int, int]] = set()  # (src, dst) links that lose messages

    def deliver(self, rid: int, ready) -> None:  # noqa: ANN001
        queue = list(ready.messages)
        self.applied[rid].extend(ready.committed)
        src = rid
        pending = [(src, dst, m) for dst, m in queue]
        while pending:
            src, dst, msg = pending.pop(0)
            if dst in self.down or src in self.down or (src, dst) in self.cut:
                continue
            r = self.cores[dst].step(msg)
            self.applied[dst].extend(r.committed)
            pending.extend((dst, d, m) for d, m in r.messages)

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            for rid, c in self.cores.items():
                if rid not in self.down:
                    self.deliver(rid, c.tick())

    def leader(self) -> int | None:
        found = [i for i, c in self.cores.items() if c.is_leader and i not in self.down]
        return found[0] if found else None

    def elect(self, limit: int = 400) -> int | None:
        for _ in range(limit):
            if self.leader() is not None:
                return self.leader()
            self.tick()
        return None


@pytest.mark.parametrize("joining", [False, True], ids=["naive-rejoin", "joining"])
def test_the_lost_disk_reproduction(joining: bool) -> None:
    c = Cluster()
    leader = c.elect()
    assert leader is not None
    victim, third = [i for i in IDS if i != leader]
    # Slot s is chosen as X with the votes of the leader and the victim only.
    c.cut |= {(leader, third), (third, leader)}
    c.deliver(leader, c.cores[leader].propose([b"X"]))
    slot = next(s for s, v in c.applied[leader] if v == (b"X",))
    assert (slot, (b"X",)) in c.applied[leader]
    # The victim's disk dies; the old leader goes down; the links heal.
    c.down.add(leader)
    c.cut.clear()
    c.cores[victim] = PaxosCore(
        victim, IDS, DurableState(), 0, random.Random(99), CFG, joining=joining
    )
    c.applied[victim] = []
    # The victim and the third replica try to go on without the old leader.
    new = c.elect(limit=300)
    if not joining:
        # Naive: they elect a leader, which puts Y at the chosen slot.
        assert new is not None
        c.deliver(new, c.cores[new].propose([b"Y"]))
        c.tick(20)
        assert dict(c.applied[third]).get(slot) == (b"Y",)  # a second value chosen
        assert dict(c.applied[leader]).get(slot) == (b"X",)
        return
    # Joining: the wiped replica promises nothing, so no majority forms.
    assert new is None
    assert dict(c.applied[third]).get(slot) is None
    # The old leader comes back: X stands, on every replica that applies slot s.
    c.down.discard(leader)
    assert c.elect() is not None
    c.tick(30)
    for rid in (leader, third):
        assert dict(c.applied[rid]).get(slot) == (b"X",), rid
    # The victim is still joining (it waits for a snapshot, which the driver
    # installs; test_joining_replica_sends_nothing_that_counts shows it
    # promised and voted nothing meanwhile).
    assert c.cores[victim].status().joining


def test_joining_replica_sends_nothing_that_counts() -> None:
    from replica.messages import Ballot, Heartbeat, HeartbeatAck, Phase1a, Phase1b, Phase2b, PreVote

    j = PaxosCore(2, IDS, DurableState(), 0, random.Random(2), CFG, joining=True)
    replies = []
    for msg in (
        Phase1a(1, Ballot(1, 1), 0),
        Phase2a(1, Ballot(1, 1), 0, (b"v",), 0),
        Heartbeat(1, Ballot(1, 1), 0, 1),
        PreVote(3, 1, 0),
    ):
        r = j.step(msg)
        assert r.promised is None and not r.votes
        replies += [m for _, m in r.messages]
    assert not any(isinstance(m, (Phase1b, Phase2b, HeartbeatAck)) for m in replies)
    assert all(not getattr(m, "granted", False) for m in replies)
