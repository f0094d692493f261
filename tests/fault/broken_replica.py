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

`tests.fault.broken_range_replica` (`main(broken="ranges")`) breaks range
reads only: GETs keep the read index, so the GET scenario passes and only a
range read gives the bug away (`stale_read_scenario(read="range")`: a
range read of two accounts that misses an acknowledged transfer, which the
checker judges on the two keys together).

`tests.fault.broken_txn_replica` (`main(broken="compares")`) evaluates a
transaction's comparisons against the state stored before the current
`apply()` call (kvstore/statemachine.py `_Layer.record`), missing the
commands before it in the same batch: two transfers committed together
both succeed on the values they saw, and one's money is lost. Nothing
deterministic makes batches; the bank workload under load makes them often
enough (docs/FAULTS.md says how often it was caught).

(Another classic, acknowledging votes that were never fsync'd, cannot be
caught by kill -9: the page cache survives a killed process. It needs a
simulated power loss, which is the simulator's job: tests/sim.)
"""

from __future__ import annotations

import sys

from kvstore import statemachine
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


def _stored_record(self: statemachine._Layer, key: bytes) -> statemachine._Record | None:
    """BROKEN on purpose: a transaction's view of a key is what LevelDB held
    before this apply() call, not the pending state of the commands before
    it (nor the transaction's own writes)."""
    raw = self.pending.db.get(self.pending.gen.data + key)
    return None if raw is None else statemachine._record(raw)


BROKEN = ("reads", "ranges", "compares")


def main(argv: list[str] | None = None, *, broken: str = "reads") -> int:
    """The replica with the `broken` change: "reads" (linearizable reads
    from local state on a leader), "ranges" (the same for RANGE only),
    "compares" (transaction comparisons against stale state)."""
    if broken == "compares":
        statemachine._Layer.record = _stored_record  # type: ignore[method-assign]
    else:
        read = _range_local_if_leader if broken == "ranges" else _read_local_if_leader
        ReplicaDriver._read_linearizable = read  # type: ignore[method-assign]
    return server.main(argv)


if __name__ == "__main__":
    sys.exit(main())
