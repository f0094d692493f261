"""Plain counters the event loop updates in place, for replica/metrics.py.

The loop must stay cheap, so what it counts is kept here as plain ints and
lists, bumped with `+=`: no locks, no library call per request. The
metrics HTTP thread never reads these objects; the loop copies them into a
frozen snapshot when a scrape asks for one (replica/metrics.py). This
module imports nothing, so the driver (which the simulator runs) may use it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence


class Histogram:
    """Observations counted per bucket (`bounds` are the buckets' upper
    bounds, inclusive, ascending; one more bucket above the last), with
    their sum: what a Prometheus histogram needs, built at scrape time."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("histogram bounds must be distinct and ascending")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def copy(self) -> Histogram:
        other = Histogram.__new__(Histogram)
        other.bounds, other.counts, other.sum = self.bounds, list(self.counts), self.sum
        return other

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= bound) per bucket, +Inf last."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
"""Commands per proposal (the leader's group commit of one loop iteration)."""


class DriverCounters:
    """What the replica driver counts (replica/driver.py bumps these)."""

    __slots__ = (
        "proposed_commands",
        "proposal_batch",
        "committed_slots",
        "effects_slots",
        "leader_changes",
        "installs_started",
        "installs_completed",
        "installs_abandoned",
        "install_started_at",
        "last_install_bytes",
        "last_install_keys",
        "lease_reads",
        "vouched_reads",
    )

    def __init__(self) -> None:
        self.proposed_commands = 0
        """Client write commands the leader proposed (clock commands not counted)."""
        self.proposal_batch = Histogram(BATCH_BUCKETS)
        """Client write commands per proposal: one per loop iteration that had any."""
        self.committed_slots = 0
        """Slots learned chosen and handed to the state machine."""
        self.effects_slots = 0
        """Of those, slots written from the leader's effects instead of executed."""
        self.leader_changes = 0
        """Times a leader became known that differs from the last one known
        (none included), as etcd's leader_changes_seen_total."""
        self.lease_reads = 0
        """Linearizable reads the leader answered on a read lease (--lease-reads)."""
        self.vouched_reads = 0
        """Linearizable reads the leader confirmed by followers' vouches
        (replica/paxos.py, "Vouched reads")."""
        self.installs_started = 0
        self.installs_completed = 0
        self.installs_abandoned = 0
        self.install_started_at: float | None = None
        """Clock time the running snapshot install started (None: none running)."""
        self.last_install_bytes = 0
        """Bytes (keys and records) of the last snapshot installed."""
        self.last_install_keys = 0

    def proposed(self, commands: int) -> None:
        self.proposed_commands += commands
        self.proposal_batch.observe(commands)
