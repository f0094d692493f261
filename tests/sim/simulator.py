"""A deterministic simulator that tries hard to break the Paxos core.

Theory of operation
-------------------
N `PaxosCore`s run against `MemoryStorage` (which loses every unsynced write
on crash) and a simulated network, all driven by ONE `random.Random(seed)`:
the same seed replays the same run, event for event.

Each event is one of: deliver a random in-flight message (so the network
reorders and delays), drop one, duplicate one, tick one replica, a client
proposing a command (new or a retry) to whoever believes it leads, a client
asking that leader for a linearizable read, crash a replica (its unsynced
writes are lost), restart a crashed replica from its storage, partition the
replicas into two groups, or heal the partition.

The driver of each replica honours the `Ready` contract (persist synced, then
send, then apply, then answer reads). `broken=True` selects the one bug the
tests want caught: messages are sent first and the writes are persisted
unsynced, flushed only at the replica's next tick, so a crash in between
forgets promises and votes that others already saw.

After every event the invariants are checked:
  * agreement: a value is chosen at a slot when a majority of acceptors voted
    for it in one ballot (an omniscient observer sees every vote as it is
    cast); no slot ever has two different chosen values;
  * every replica applies, slot by slot, exactly the chosen value, so applied
    logs are prefixes of one another;
  * durability: a promise or vote a replica revealed to the network is still
    there after it restarts;
  * linearizable reads: a read is released only once the leader has applied
    everything any replica had applied when the read was registered.
At the end the network heals, crashed replicas restart (in half the runs a
minority stays down), clients keep retrying, and every command they proposed
must be chosen, and applied by every live replica, within a bound.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from replica.messages import Ballot, Message, Nack, Phase1b, Phase2b, Value
from replica.paxos import CoreConfig, PaxosCore, Ready
from replica.storage import MemoryStorage

SIM_CONFIG = CoreConfig(
    heartbeat_ticks=2, election_ticks=10, window=4, retransmit_ticks=3, catchup_entries=16
)


class InvariantViolation(AssertionError):
    pass


@dataclass
class Node:
    id: int
    storage: MemoryStorage
    core: PaxosCore | None
    applied: list[Value] = field(default_factory=list)
    durable_applied: int = 0  # applied slots that survive a crash (last sync)
    revealed_promise: Ballot = Ballot(0, 0)
    revealed_votes: dict[int, Ballot] = field(default_factory=dict)
    unflushed: bool = False  # broken mode: writes waiting for the next tick


@dataclass
class Stats:
    events: int = 0
    delivered: int = 0
    crashes: int = 0
    elections: int = 0
    chosen: int = 0
    reads: int = 0


class Simulation:
    WEIGHTS = (
        ("deliver", 50),
        ("tick", 20),
        ("propose", 12),
        ("read", 3),
        ("drop", 3),
        ("duplicate", 3),
        ("crash", 1),
        ("restart", 3),
        ("partition", 1),
        ("heal", 3),
    )

    def __init__(
        self, seed: int, replicas: int = 3, broken: bool = False, check_durability: bool = True
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.ids = list(range(1, replicas + 1))
        self.quorum = replicas // 2 + 1
        self.broken = broken
        self.check_durability = check_durability
        self.nodes = {i: Node(i, MemoryStorage(), None) for i in self.ids}
        for node in self.nodes.values():
            node.core = self._new_core(node)
        self.network: list[tuple[int, int, Message]] = []  # (src, dst, msg)
        self.group = {i: 0 for i in self.ids}
        self.votes_seen: dict[tuple[int, Ballot], tuple[Value, set[int]]] = {}
        self.chosen: dict[int, Value] = {}
        self.next_command = 0
        self.pending: list[bytes] = []  # proposed, not yet chosen
        self.proposed: set[bytes] = set()
        self.reads: dict[tuple[int, int], int] = {}  # (node, read id) -> required index
        self.read_counter = 0
        self.stats = Stats()
        self._names, self._weights = zip(*self.WEIGHTS, strict=False)

    # ---------------------------------------------------------------- driver

    def _new_core(self, node: Node) -> PaxosCore:
        durable = node.storage.load()
        rng = random.Random(self.rng.getrandbits(64))
        return PaxosCore(node.id, self.ids, durable, len(node.applied), rng, SIM_CONFIG)

    def _handle(self, node: Node, ready: Ready) -> None:
        """Carries out a Ready in the contract's order (or the broken order)."""
        self._observe_votes(node, ready)
        if ready.must_persist():
            if self.broken:
                node.storage.persist(ready.promised, ready.votes, ready.chosen, sync=False)
                node.unflushed = True
            else:
                node.storage.persist(ready.promised, ready.votes, ready.chosen, sync=True)
                node.durable_applied = len(node.applied)
        for dst, msg in ready.messages:
            self._reveal(node, msg)
            self.network.append((node.id, dst, msg))
        for slot, value in ready.committed:
            self._apply(node, slot, value)
        for rid in ready.reads:
            self._check_read(node, rid)
        for rid in ready.failed_reads:
            self.reads.pop((node.id, rid), None)

    def _observe_votes(self, node: Node, ready: Ready) -> None:
        for slot, (ballot, value) in ready.votes.items():
            key = (slot, ballot)
            seen = self.votes_seen.get(key)
            if seen is None:
                seen = self.votes_seen[key] = (value, set())
            elif seen[0] != value:
                self._fail(f"two values proposed at slot {slot} in ballot {ballot}")
            seen[1].add(node.id)
            if len(seen[1]) >= self.quorum:
                self._chosen(slot, value)

    def _chosen(self, slot: int, value: Value) -> None:
        prior = self.chosen.get(slot)
        if prior is None:
            self.chosen[slot] = value
            self.stats.chosen += 1
            for cmd in value:
                if cmd in self.proposed and cmd in self.pending:
                    self.pending.remove(cmd)
        elif prior != value:
            self._fail(f"agreement violated: slot {slot} chose {prior!r} and {value!r}")

    def _reveal(self, node: Node, msg: Message) -> None:
        """Remembers what the network learned of this acceptor's state."""
        if isinstance(msg, (Phase1b, Nack)):
            promised = msg.ballot if isinstance(msg, Phase1b) else msg.promised
            node.revealed_promise = max(node.revealed_promise, promised)
        if isinstance(msg, Phase1b):
            for slot, (vballot, _) in msg.votes.items():
                node.revealed_votes[slot] = max(node.revealed_votes.get(slot, vballot), vballot)
        elif isinstance(msg, Phase2b):
            node.revealed_votes[msg.slot] = max(
                node.revealed_votes.get(msg.slot, msg.ballot), msg.ballot
            )

    def _apply(self, node: Node, slot: int, value: Value) -> None:
        if slot != len(node.applied):
            self._fail(f"replica {node.id} applied slot {slot} out of order")
        chosen = self.chosen.get(slot)
        if chosen is None:
            self._fail(f"replica {node.id} applied slot {slot} that is not chosen")
        if chosen != value:
            self._fail(f"replica {node.id} applied {value!r} at slot {slot}; chosen {chosen!r}")
        node.applied.append(value)

    def _check_read(self, node: Node, rid: int) -> None:
        required = self.reads.pop((node.id, rid), None)
        if required is None:
            return
        self.stats.reads += 1
        if len(node.applied) < required:
            self._fail(
                f"stale read on replica {node.id}: applied {len(node.applied)}, "
                f"but {required} slots were applied elsewhere before the read began"
            )

    def _fail(self, what: str) -> None:
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
        return self.stats

    def _live(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.core is not None]

    def _pop_message(self) -> tuple[int, int, Message] | None:
        if not self.network:
            return None
        i = self.rng.randrange(len(self.network))
        self.network[i], self.network[-1] = self.network[-1], self.network[i]
        return self.network.pop()

    def _ev_deliver(self) -> None:
        item = self._pop_message()
        if item is None:
            return
        src, dst, msg = item
        node = self.nodes[dst]
        if node.core is None or self.group[src] != self.group[dst]:
            return
        self.stats.delivered += 1
        was_leader = node.core.is_leader
        self._handle(node, node.core.step(msg))
        if node.core.is_leader and not was_leader:
            self.stats.elections += 1

    def _ev_drop(self) -> None:
        self._pop_message()

    def _ev_duplicate(self) -> None:
        if self.network:
            self.network.append(self.rng.choice(self.network))

    def _ev_tick(self) -> None:
        live = self._live()
        if live:
            self._tick(self.rng.choice(live))

    def _tick(self, node: Node) -> None:
        if node.unflushed:  # broken mode: the lazy flush finally happens
            node.storage.persist(None, {}, {}, sync=True)
            node.durable_applied = len(node.applied)
            node.unflushed = False
        was_leader = node.core.is_leader
        self._handle(node, node.core.tick())
        if node.core.is_leader and not was_leader:
            self.stats.elections += 1

    def _leader(self) -> Node | None:
        leaders = [n for n in self._live() if n.core.is_leader]
        return self.rng.choice(leaders) if leaders else None

    def _ev_propose(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        if self.pending and self.rng.random() < 0.3:
            cmd = self.rng.choice(self.pending)  # a client retrying
        else:
            cmd = b"s%d-c%d" % (self.seed, self.next_command)
            self.next_command += 1
            self.pending.append(cmd)
            self.proposed.add(cmd)
        self._handle(leader, leader.core.propose([cmd]))

    def _ev_read(self) -> None:
        leader = self._leader()
        if leader is None:
            return
        self.read_counter += 1
        rid = self.read_counter
        self.reads[(leader.id, rid)] = max(len(n.applied) for n in self.nodes.values())
        self._handle(leader, leader.core.read_index([rid]))

    def _ev_crash(self) -> None:
        live = self._live()
        if not live:
            return
        node = self.rng.choice(live)
        node.core = None
        node.storage.crash()
        node.unflushed = False
        del node.applied[node.durable_applied :]  # the state machine's unsynced tail
        self.reads = {k: v for k, v in self.reads.items() if k[0] != node.id}
        self.stats.crashes += 1

    def _ev_restart(self) -> None:
        dead = [n for n in self.nodes.values() if n.core is None]
        if dead:
            self._restart(self.rng.choice(dead))

    def _restart(self, node: Node) -> None:
        node.core = self._new_core(node)
        if not self.check_durability:
            return
        durable = node.storage.load()
        if durable.promised < node.revealed_promise:
            self._fail(
                f"replica {node.id} forgot its promise {node.revealed_promise} "
                f"(has {durable.promised}) across a restart"
            )
        for slot, ballot in node.revealed_votes.items():
            vote = durable.votes.get(slot)
            if vote is None or vote[0] < ballot:
                self._fail(f"replica {node.id} forgot its vote at slot {slot} in {ballot}")

    def _ev_partition(self) -> None:
        cut = self.rng.randrange(1, len(self.ids))
        order = self.ids[:]
        self.rng.shuffle(order)
        self.group = {i: (0 if k < cut else 1) for k, i in enumerate(order)}

    def _ev_heal(self) -> None:
        self.group = {i: 0 for i in self.ids}

    # ---------------------------------------------------------------- liveness

    def _finish(self, rounds: int = 1500) -> None:
        """Heal, restart everyone, keep retrying: every proposal gets chosen
        and every replica applies everything chosen."""
        self._ev_heal()
        # Half the runs end with a minority still down: a live majority suffices.
        stay_down = len(self.ids) - self.quorum if self.rng.random() < 0.5 else 0
        for node in self.nodes.values():
            if node.core is None and stay_down:
                stay_down -= 1
            elif node.core is None:
                self._restart(node)
        for _ in range(rounds):
            if self._settled():
                return
            for node in self._live():
                self._tick(node)
            leader = self._leader()
            if leader is not None and self.pending:
                self._handle(leader, leader.core.propose(list(self.pending)))
            while self.network:
                self._ev_deliver()
        self._fail(
            f"not live after healing: {len(self.pending)} proposals not chosen, "
            f"applied {[len(n.applied) for n in self.nodes.values()]}, "
            f"chosen {len(self.chosen)}"
        )

    def _settled(self) -> bool:
        if self.pending:
            return False
        done = len(self.chosen)
        return all(len(n.applied) >= done for n in self._live())
