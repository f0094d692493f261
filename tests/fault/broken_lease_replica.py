"""A deliberately broken replica for read leases (`--lease-reads`,
replica/paxos.py "Leader leases"): its read lease lasts a minute instead of
0.8 x (election timeout - 1 tick) from the heartbeat round that gave it.
A leader cut off and paused (runner.stale_read_scenario with
`lease_reads=True`) wakes up still holding it, after the others elected a
new leader and took a write, and answers a read from its old state: the
checker must say "violation". The simulator catches the same bug
(tests/sim, LeaseTooLong).

    python -m tests.fault.broken_lease_replica --config F --id N --data-dir D --lease-reads
"""

from __future__ import annotations

import sys

from replica import server
from replica.driver import ReplicaDriver
from replica.paxos import CoreConfig

BROKEN_LEASE_S = 60.0


def _a_minute(config: CoreConfig, tick_s: float) -> float:
    """BROKEN on purpose: far past the bound the followers keep."""
    return BROKEN_LEASE_S


def main(argv: list[str] | None = None) -> int:
    ReplicaDriver._read_lease_seconds = staticmethod(_a_minute)  # type: ignore[method-assign]
    return server.main(argv)


if __name__ == "__main__":
    sys.exit(main())
