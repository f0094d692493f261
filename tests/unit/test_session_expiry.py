"""Session expiry seeks past the deleted part of the session index
(kvstore/statemachine.py, `_Sessions.next_floor`): an optimisation that
must never change what is expired, or replicas would disagree. A state
machine that keeps its floor is compared, after every apply, with one that
scans the whole index every time, over random schedules of clock commands
(time jumps, TTL changes), writes from returning and vanishing clients,
and applies of varying size, on LevelDB and MemoryDB."""

from __future__ import annotations

import random

import pytest

from kvstore.protocol import Status
from kvstore.statemachine import KVStateMachine
from tests.unit.test_statemachine import T0, Client, NewDB, clk, new_db  # noqa: F401, F811


def _sessions(db) -> list[tuple[bytes, bytes]]:  # noqa: ANN001 - plyvel or MemoryDB
    """Every session record and index key (the `s` and `t` data of either generation)."""
    return [(k, v) for k, v in db.iterator() if k[:1] in (b"s", b"t") or k[1:2] in (b"s", b"t")]


@pytest.mark.parametrize("seed", range(6))
def test_expiry_with_a_floor_equals_a_full_scan(new_db: NewDB, seed: int) -> None:  # noqa: F811
    rng = random.Random(seed)
    fast_db, full_db = new_db(), new_db()
    fast, full = KVStateMachine(fast_db), KVStateMachine(full_db)
    clients = [Client(bytes([i + 1]) * 16) for i in range(12)]
    now, ttl = T0, 2_000
    floors, ok, expired = [], 0, 0
    by_id = {c.client_id: c for c in clients}
    for _ in range(150):
        slot: list[bytes] = []
        for _ in range(rng.randint(1, 6)):
            if rng.random() < 0.35:
                now += rng.choice([0, 1, 50, 400, 1_500, 3_000])
                if rng.random() < 0.1:
                    ttl = rng.choice([500, 2_000, 5_000])
                slot.append(clk(now, ttl))
            else:
                # a few clients are busy, the others come back now and then
                c = clients[min(rng.randint(0, 11), rng.randint(0, 11))]
                slot.append(c.put(b"k%d" % rng.randint(0, 4), b"v"))
        full._session_floor = 0  # the reference scans from the start
        a = fast.apply([(fast.applied_index, tuple(slot))])
        b = full.apply([(full.applied_index, tuple(slot))])
        assert a == b
        for client_id, _, resp in a:
            ok += resp.status is Status.OK and client_id != b""
            if resp.status is Status.SESSION_EXPIRED:  # a new process, same id
                expired += 1
                by_id[client_id].seq = 0
        assert _sessions(fast_db) == _sessions(full_db)
        floors.append(fast._session_floor)
    assert fast.session_count() == full.session_count()
    assert ok > 200 and expired > 5  # writes, and sessions that expired
    # The floor did move (else this test would not test it), and never back.
    assert floors[-1] > T0 and floors == sorted(floors)
