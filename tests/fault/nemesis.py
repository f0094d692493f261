"""Faults for a real cluster: kill -9, SIGSTOP/SIGCONT and network partitions.

Theory of operation
-------------------
`Firewall` owns ONE iptables chain of its own, `KVF<pid>` in the filter
table, jumped to from the top of OUTPUT; it never touches another rule. A
cut "i -> j" is one rule:

    -p tcp -d 127.0.0.1 --dport <j's peer port> -m owner --gid-owner <i's gid> -j DROP

Every replica runs under its own group id (`FaultCluster.gid`), and replica
i's only traffic to j's peer port is its PUSH connection to j, which
carries every Paxos message from i to j (the peer PULL only receives).
Dropping that connection's packets (data, SYNs, ACKs, ZMTP heartbeats)
silences i -> j and nothing else: j -> i travels on j's own connection to
i's peer port. So a cut is one-way, and a partition cuts both ways between
the sides. Client traffic (this process, gid 0, to the client ports) is
never matched: a partitioned replica still talks to clients, which is what
exposes a replica that answers without its quorum.

Loopback packets traverse OUTPUT once; the owner match sees the socket of
the sending process. Tested with iptables 1.8 on both the nf_tables and the
legacy backend. `tc netem` is not available on these machines; delays and
loss are left out.

Cleanup: `Firewall.close` (idempotent) removes the jump and the chain; it is
registered with atexit when the chain is made, the runner calls it from a
finally block, and `remove_stale_chains` deletes chains left by launchers
that died (their pid, in the chain's name, is gone).

`Nemesis` runs a schedule in a thread: quiet for a while, one fault for a
bounded time, heal it, and again, until stopped. Faults by family:

    kill       kill-leader, kill-follower, kill-minority, kill-all
               (kill -9, then restart on the same data directory)
    pause      pause-leader, pause-follower, pause-minority (SIGSTOP, SIGCONT)
    partition  partition-leader (the leader alone on one side),
               partition-split (a random minority | majority),
               partition-bridge (two sides that cannot talk, one replica
               talking to both), partition-oneway (the leader's messages
               out, or in, dropped; the other direction works)
    wipe       wipe-follower, wipe-leader: kill -9, delete the data
               directory, start it again with --initial-cluster-state
               existing (it installs a snapshot, finds that its id ran
               before and exits 2: checked), then replace it through the
               membership: remove it, add a new id in its slot, start that
               one joining, wait until the leader recorded it, promote it
               once it has caught up (retried while the leader answers
               that it is still behind)

`--nemesis all` draws from every family: the kinds come in rounds, every
kind once per round in a seeded random order, so even a short run sees each.
At most one fault is active at a time, so a majority is reachable again
after every heal.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tests.fault.cluster import FaultCluster

CHAIN_PREFIX = "KVF"
FAMILIES: dict[str, tuple[str, ...]] = {
    "kill": ("kill-leader", "kill-follower", "kill-minority", "kill-all"),
    "pause": ("pause-leader", "pause-follower", "pause-minority"),
    "partition": ("partition-leader", "partition-split", "partition-bridge", "partition-oneway"),
    "wipe": ("wipe-follower", "wipe-leader"),
}
ALL_KINDS: tuple[str, ...] = tuple(k for kinds in FAMILIES.values() for k in kinds)


class FirewallError(RuntimeError):
    """iptables refused a command."""


def _iptables_binaries() -> list[str]:
    return [b for b in ("iptables", "iptables-legacy") if shutil.which(b)]


def firewall_problem() -> str | None:
    """Why partitions cannot be made here (one line), or None if they can."""
    if os.geteuid() != 0:
        return "network partitions need root (iptables)"
    if not _iptables_binaries():
        return "iptables is not installed (apt-get install -y iptables)"
    try:
        fw = Firewall()
    except FirewallError as exc:
        return f"iptables is not usable: {exc}"
    fw.close()
    return None


def remove_stale_chains() -> list[str]:
    """Deletes KVF<pid> chains whose launcher is gone; returns their names."""
    removed = []
    for binary in _iptables_binaries():
        out = subprocess.run([binary, "-w", "5", "-S"], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "-N" and parts[1].startswith(CHAIN_PREFIX):
                pid = parts[1][len(CHAIN_PREFIX) :]
                if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                    _drop_chain(binary, parts[1])
                    removed.append(parts[1])
    return removed


def _drop_chain(binary: str, chain: str) -> None:
    run = [binary, "-w", "5"]
    # The jump may be there more than once if something went very wrong.
    for _ in range(10):
        r = subprocess.run(run + ["-D", "OUTPUT", "-j", chain], capture_output=True)
        if r.returncode != 0:
            break
    subprocess.run(run + ["-F", chain], capture_output=True)
    subprocess.run(run + ["-X", chain], capture_output=True)


class Firewall:
    """One iptables chain of DROP rules between replicas; see the module doc."""

    def __init__(self, chain: str | None = None) -> None:
        self.chain = chain or f"{CHAIN_PREFIX}{os.getpid()}"
        self.cuts: set[tuple[int, int]] = set()  # (gid, dport) pairs dropped
        self._lock = threading.Lock()
        self.binary = ""
        remove_stale_chains()
        problems = []
        for binary in _iptables_binaries():
            try:
                self._setup(binary)
            except FirewallError as exc:
                problems.append(f"{binary}: {exc}")
                continue
            self.binary = binary
            atexit.register(self.close)
            return
        raise FirewallError("; ".join(problems) or "no iptables binary")

    def _run(self, *args: str, binary: str | None = None) -> None:
        cmd = [binary or self.binary, "-w", "5", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            raise FirewallError(f"{' '.join(cmd)}: {r.stderr.strip() or r.returncode}")

    def _setup(self, binary: str) -> None:
        _drop_chain(binary, self.chain)  # a leftover of a dead run with our pid
        self._run("-N", self.chain, binary=binary)
        try:
            self._run("-I", "OUTPUT", "1", "-j", self.chain, binary=binary)
            # Prove that the owner match works here, on a port nothing uses.
            self._run(
                "-A",
                self.chain,
                "-p",
                "tcp",
                "-d",
                "127.0.0.1",
                "--dport",
                "9",
                "-m",
                "owner",
                "--gid-owner",
                "2999999999",
                "-j",
                "DROP",
                binary=binary,
            )
            self._run("-F", self.chain, binary=binary)
        except FirewallError:
            _drop_chain(binary, self.chain)
            raise

    def cut_link(self, cluster: FaultCluster, src: int, dst: int) -> None:
        """Replica src's messages to replica dst are lost (src's gid, dst's peer port)."""
        self.cut(cluster.gid(src), cluster.peer_port(dst))

    def cut(self, gid: int, dport: int) -> None:
        """Drops what processes of group `gid` send to 127.0.0.1:`dport`."""
        with self._lock:
            if (gid, dport) in self.cuts:
                return
            self._run(
                "-A",
                self.chain,
                "-p",
                "tcp",
                "-d",
                "127.0.0.1",
                "--dport",
                str(dport),
                "-m",
                "owner",
                "--gid-owner",
                str(gid),
                "-j",
                "DROP",
            )
            self.cuts.add((gid, dport))

    def heal(self) -> None:
        """Removes every cut (the chain stays, empty)."""
        with self._lock:
            if self.binary:
                self._run("-F", self.chain)
            self.cuts.clear()

    def close(self) -> None:
        """Removes the jump and the chain. Safe to call more than once."""
        with self._lock:
            if self.binary:
                _drop_chain(self.binary, self.chain)
                self.binary = ""
            self.cuts.clear()

    def __enter__(self) -> Firewall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- topology helpers on a FaultCluster ---------------------------------------


class Cutter(Protocol):
    """What makes partitions: `Firewall` (loopback) or `NetnsNetwork`."""

    def cut_link(self, cluster: FaultCluster, src: int, dst: int) -> None: ...

    def heal(self) -> None: ...

    def close(self) -> None: ...


def cut_links(cluster: FaultCluster, fw: Cutter, links: Iterable[tuple[int, int]]) -> None:
    """Cuts every directed link (src, dst): src's messages to dst are lost
    (named by replica id; the cut is made between their slots)."""
    for src, dst in links:
        fw.cut_link(cluster, cluster.slot(src), cluster.slot(dst))


def partition_links(sides: Iterable[Iterable[int]]) -> list[tuple[int, int]]:
    """The directed links to cut so that the given sides cannot talk."""
    sides = [set(s) for s in sides]
    links = []
    for a, side in enumerate(sides):
        for b, other in enumerate(sides):
            if a != b:
                links += [(i, j) for i in sorted(side) for j in sorted(other)]
    return links


@dataclass
class FaultEvent:
    """One fault: what, to whom, when (monotonic ns) it began and ended."""

    kind: str
    targets: tuple[int, ...]
    detail: str
    start_ns: int
    end_ns: int | None = None

    def describe(self, t0_ns: int = 0) -> str:
        end = "..." if self.end_ns is None else f"{(self.end_ns - t0_ns) / 1e9:7.2f}s"
        return (
            f"[{(self.start_ns - t0_ns) / 1e9:7.2f}s .. {end}] {self.kind} "
            f"{list(self.targets)} {self.detail}"
        ).rstrip()


@dataclass
class NemesisConfig:
    kinds: tuple[str, ...] = ALL_KINDS
    fault_min_s: float = 1.0
    fault_max_s: float = 4.0
    quiet_min_s: float = 0.5
    quiet_max_s: float = 2.0


def parse_kinds(spec: str, replicas: int) -> tuple[str, ...]:
    """'all', 'none', families and kinds, comma separated -> kinds."""
    kinds: list[str] = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if item == "all":
            kinds += ALL_KINDS
        elif item == "none":
            continue
        elif item in FAMILIES:
            kinds += FAMILIES[item]
        elif item in ALL_KINDS:
            kinds.append(item)
        else:
            raise ValueError(
                f"unknown nemesis {item!r}: use all, none, "
                f"{', '.join(FAMILIES)} or one of {', '.join(ALL_KINDS)}"
            )
    return tuple(dict.fromkeys(kinds))


@dataclass
class Nemesis:
    """Runs faults against `cluster` from a thread; see the module doc."""

    cluster: FaultCluster
    firewall: Cutter | None
    config: NemesisConfig
    rng: random.Random
    log: Callable[[str], None] = print
    events: list[FaultEvent] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _paused: set[int] = field(default_factory=set)
    _down: set[int] = field(default_factory=set)
    _deck: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        needs_fw = [k for k in self.config.kinds if k.startswith("partition")]
        if needs_fw and self.firewall is None:
            raise ValueError(f"{', '.join(needs_fw)} need a Firewall or a NetnsNetwork")

    # -- the schedule --

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="nemesis", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ends the schedule (the active fault is healed), waits for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def _loop(self) -> None:
        cfg = self.config
        try:
            while not self._stop.is_set():
                if self._sleep(self.rng.uniform(cfg.quiet_min_s, cfg.quiet_max_s)):
                    break
                if not cfg.kinds:
                    continue
                if not self._deck:  # every kind once, in a seeded order
                    self._deck = self.rng.sample(cfg.kinds, len(cfg.kinds))
                kind = self._deck.pop()
                self.inject(kind, self.rng.uniform(cfg.fault_min_s, cfg.fault_max_s))
        except Exception as exc:  # reported, never silent
            self.problems.append(f"nemesis crashed: {exc!r}")
            self.log(f"nemesis crashed: {exc!r}")
        finally:
            self.heal_all()

    def _sleep(self, seconds: float) -> bool:
        """Sleeps, watching the replicas; True if asked to stop."""
        end = time.monotonic() + seconds
        while True:
            self._watch()
            left = end - time.monotonic()
            if left <= 0:
                return False
            if self._stop.wait(min(left, 0.2)):
                return True

    def _watch(self) -> None:
        """A replica that exited by itself is a bug: noted, then restarted."""
        for rid, code in self.cluster.reap():
            msg = f"replica {rid} exited by itself with status {code}"
            self.problems.append(msg)
            self.log(msg + ":\n" + self.cluster.log_tail(rid, 15))
            if rid not in self._down:
                self.cluster.start_replica(rid)

    # -- one fault --

    def inject(self, kind: str, duration: float) -> FaultEvent | None:
        """Injects one fault for `duration` seconds, then heals it."""
        cluster = self.cluster
        ids = cluster.ids
        leader = cluster.leader_id()
        followers = [r for r in ids if r != leader]
        minority = (len(ids) - 1) // 2
        pick_leader = leader if leader is not None else self.rng.choice(ids)
        heal: Callable[[], None]
        detail = ""
        if kind.startswith("wipe"):
            victim = pick_leader if kind == "wipe-leader" else self.rng.choice(followers)
            event = FaultEvent(kind, (victim,), "", time.monotonic_ns())
            self.events.append(event)
            self.log(f"nemesis: {kind} [{victim}] (leader was {leader})")
            try:
                self._wipe_and_replace(victim)
            finally:
                event.end_ns = time.monotonic_ns()
            return event
        if kind.startswith(("kill", "pause")):
            if kind.endswith("-leader"):
                targets = [pick_leader]
            elif kind.endswith("-follower"):
                targets = [self.rng.choice(followers)]
            elif kind.endswith("-minority"):
                targets = self.rng.sample(ids, minority)
            else:  # kill-all
                targets = list(ids)
            if kind.startswith("kill"):
                for rid in targets:
                    self._down.add(rid)
                    cluster.kill(rid)
                heal = lambda: self._restart(targets)  # noqa: E731
            else:
                for rid in targets:
                    self._paused.add(rid)
                    cluster.pause(rid)
                heal = lambda: self._resume(targets)  # noqa: E731
        else:
            targets, links, detail = self._links(kind, pick_leader)
            assert self.firewall is not None
            cut_links(cluster, self.firewall, links)
            heal = self.firewall.heal
        event = FaultEvent(kind, tuple(targets), detail, time.monotonic_ns())
        self.events.append(event)
        what = detail or str(targets)  # a partition's detail names its sides
        self.log(f"nemesis: {kind} {what} for {duration:.1f}s (leader was {leader})")
        try:
            self._sleep(duration)
        finally:
            heal()
            event.end_ns = time.monotonic_ns()
        return event

    def _links(self, kind: str, leader: int) -> tuple[list[int], list[tuple[int, int]], str]:
        """(targets, directed links to cut, description) of a partition."""
        ids = list(self.cluster.ids)
        others = [r for r in ids if r != leader]
        if kind == "partition-leader":
            return [leader], partition_links([[leader], others]), f"{[leader]} | {others}"
        if kind == "partition-split":
            shuffled = self.rng.sample(ids, len(ids))
            small = sorted(shuffled[: (len(ids) - 1) // 2 or 1])
            big = sorted(r for r in ids if r not in small)
            return small, partition_links([small, big]), f"{small} | {big}"
        if kind == "partition-bridge":
            bridge = self.rng.choice(ids)
            rest = self.rng.sample([r for r in ids if r != bridge], len(ids) - 1)
            half = len(rest) // 2
            a, b = sorted(rest[:half]), sorted(rest[half:])
            return [bridge], partition_links([a, b]), f"{a} | {b}, bridged by {bridge}"
        if kind == "partition-oneway":
            if self.rng.random() < 0.5:
                return [leader], [(leader, r) for r in others], f"{leader} -> {others} dropped"
            return [leader], [(r, leader) for r in others], f"{others} -> {leader} dropped"
        raise ValueError(f"unknown fault {kind!r}")

    def _wipe_and_replace(self, victim: int) -> None:
        """See the module docstring, family `wipe`. A step that does not
        finish in its time is a problem of the run, reported."""
        from client import KVClient  # the nemesis is the operator here

        cluster = self.cluster
        self._down.add(victim)
        cluster.kill(victim)
        shutil.rmtree(cluster.data_dir(victim), ignore_errors=True)
        cluster.start_replica(victim, cluster_state="existing")
        proc = cluster.procs[victim]
        cluster.expect_exit(victim)
        end = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
        if proc.poll() is None:
            cluster.kill(victim)
            self.problems.append(f"wiped replica {victim} was not refused within 20 s")
        elif proc.returncode != 2 or "has run in this cluster before" not in (
            cluster.log_tail(victim, 20)
        ):
            self.problems.append(f"wiped replica {victim} exited {proc.returncode}, not refused")
        with KVClient(cluster.addresses, timeout=20.0) as admin:
            admin.member_remove(victim)
            new = cluster.replace(victim)
            address = cluster._replica(new)
            admin.member_add(new, address.peer, address.client)
            cluster.start_replica(new, cluster_state="existing")
            end = time.monotonic() + 30
            while not self._promoted(admin, new):
                if time.monotonic() > end:
                    self.problems.append(f"replica {new} did not catch up within 30 s")
                    break
                time.sleep(0.2)
        self._down.discard(victim)
        self.log(f"nemesis: replica {victim} replaced by {new}")

    @staticmethod
    def _promoted(admin: Any, new: int) -> bool:
        """Promotes learner `new` once it has started and caught up, as an
        operator would: False while it has not (the leader refuses a
        learner still applying the log after its snapshot: more than
        PROMOTE_MAX_BEHIND slots behind, replica/driver.py)."""
        from client import BadRequest

        if new not in admin.member_list()["started"]:
            return False
        try:
            admin.member_promote(new)
        except BadRequest as exc:
            if "behind the leader" not in str(exc):
                raise
            return False
        return True

    def _restart(self, rids: list[int]) -> None:
        for rid in rids:
            if not self.cluster.is_running(rid):
                self.cluster.start_replica(rid)
            self._down.discard(rid)

    def _resume(self, rids: list[int]) -> None:
        for rid in rids:
            if self.cluster.is_running(rid):
                self.cluster.resume(rid)
            self._paused.discard(rid)

    def heal_all(self) -> None:
        """Removes every cut, resumes every paused replica and starts every
        one that is not running."""
        if self.firewall is not None:
            self.firewall.heal()
        self._watch()
        for rid in self.cluster.ids:
            if self.cluster.is_running(rid):
                self.cluster.resume(rid)
            else:
                self.cluster.start_replica(rid)
        self._paused.clear()
        self._down.clear()

    def counts(self) -> Counter[str]:
        return Counter(e.kind for e in self.events)
