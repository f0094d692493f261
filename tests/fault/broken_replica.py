"""A deliberately broken replica, to prove that the fault tests catch bugs.

`python -m tests.fault.broken_replica --config F --id N --data-dir D` runs
`replica.server` with ONE change to its driver (replica/driver.py): a
replica that believes it is the leader answers linearizable GETs from its
local state at once, without the read index (no heartbeat round confirming
with a majority that it still leads).

That is the classic "leader reads" bug: a leader cut off from its peers, or
paused long enough to be replaced, keeps believing it leads until its
check-quorum timer fires, and meanwhile serves reads that miss writes the
new leader has acknowledged. `runner.stale_read_scenario` makes that happen
deterministically and the linearizability checker must say "violation".

`tests.fault.broken_range_replica` (`main(ranges_only=True)`) breaks range
reads only: GETs keep the read index, so the GET scenario passes and only a
range read gives the bug away (`stale_read_scenario(read="range")`: a
range read of two accounts that misses an acknowledged transfer, which the
checker judges on the two keys together).

(Another classic, acknowledging votes that were never fsync'd, cannot be
caught by kill -9: the page cache survives a killed process. It needs a
simulated power loss, which is the simulator's job: tests/sim.)
"""

from __future__ import annotations

import sys

from kvstore.protocol import Op, Request
from replica import server
from replica.driver import Envelope, ReplicaDriver


def _read_local_if_leader(self: ReplicaDriver, envelope: Envelope, req: Request) -> None:
    """BROKEN on purpose: trusts the replica's own belief that it leads."""
    if not self.core.is_leader:
        self.clients.reply(envelope, self._not_leader_reply())
        return
    self._reply(envelope, self._read_local(req))


_READ_LINEARIZABLE = ReplicaDriver._read_linearizable


def _range_local_if_leader(self: ReplicaDriver, envelope: Envelope, req: Request) -> None:
    """BROKEN on purpose: the same, for RANGE requests only."""
    if req.op is Op.RANGE:
        _read_local_if_leader(self, envelope, req)
    else:
        _READ_LINEARIZABLE(self, envelope, req)


def main(argv: list[str] | None = None, *, ranges_only: bool = False) -> int:
    broken = _range_local_if_leader if ranges_only else _read_local_if_leader
    ReplicaDriver._read_linearizable = broken  # type: ignore[method-assign]
    return server.main(argv)


if __name__ == "__main__":
    sys.exit(main())
