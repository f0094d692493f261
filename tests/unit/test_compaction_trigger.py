"""When a replica compacts its log by bytes (replica/driver.py
`_note_applied`): `log_bytes` counts beyond the retained tail, so a log of
large commands is compacted every `log_bytes` or so, not at every slot once
the tail alone reaches `log_bytes` (each compaction is a synced batch)."""

# ruff: noqa: F811 - the fixture of test_server_loop is imported by name
from __future__ import annotations

from collections.abc import Callable

import pytest

from kvstore.config import CompactionSettings
from kvstore.protocol import Op, Request, Status
from replica.server import Replica
from tests.unit.test_server_loop import Client, leader_of, make, pump  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)

CID = b"C" * 16
VALUE_BYTES = 5_000
LIMIT = 20_000  # log_bytes = retained_bytes: 4 slots of these values
PUTS = 40


def test_large_commands_are_compacted_every_log_bytes(
    make: Callable[[int], list[Replica]],
) -> None:
    rs = make(3)
    policy = CompactionSettings(
        log_slots=100_000, log_bytes=LIMIT, retained_slots=100_000, retained_bytes=LIMIT
    )
    for r in rs:
        r.driver.compaction = policy
    leader = leader_of(rs)
    client = Client(leader)
    points = []
    for seq in range(1, PUTS + 1):
        req = Request(Op.PUT, CID, seq, b"k%d" % seq, bytes([seq]) * VALUE_BYTES)
        assert client.call(rs, req).status is Status.OK
        pump(rs, lambda: leader.driver._compact_to is None)  # carried out, if decided
        points.append(leader.driver.core.status().compacted)
    client.close()
    moves = len(set(points)) - (points[0] == 0)
    written = PUTS * VALUE_BYTES
    # Each compaction removes at least log_bytes: at most written / LIMIT of
    # them (at every slot past the tail, as before: over 30).
    assert 1 <= moves <= written // LIMIT
    # ... and the log holds at most log_bytes + retained_bytes (+ a slot).
    held = leader.sm.applied_index - points[-1]
    assert held * VALUE_BYTES <= 2 * LIMIT + VALUE_BYTES + 1_000
