"""Lease expiry decided by the leader (replica/driver.py), in-process on
three `Replica`s with a wall clock the test moves: nothing expires before
the deadline, a due lease goes on every replica at one revision, a
keep-alive saves it, and a new leader gives every lease a full TTL from
its takeover before it expires any (etcd's rule)."""

# ruff: noqa: F811 - the fixture of test_server_loop is imported by name

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvstore.protocol import Op, Request, Status
from replica.server import Replica
from tests.unit.test_server_loop import Client, leader_of, make, pump  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)

CID = b"L" * 16
LEASE = 42
T0 = 1_800_000_000.0


class Wall:
    """The replicas' wall clock, moved by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def with_wall(replicas: list[Replica]) -> Wall:
    wall = Wall()
    for r in replicas:
        r.driver._wall_clock = wall
    return wall


def settle(replicas: list[Replica], iterations: int = 200) -> None:
    """Runs every replica for a while (ticks pass: expiry checks run)."""
    for _ in range(iterations):
        for r in replicas:
            r.run_once(1)


def write(replicas: list[Replica], leader: Replica, seq: int, **fields: object) -> Status:
    client = Client(leader)
    try:
        return client.call(replicas, Request(client_id=CID, seq=seq, **fields)).status
    finally:
        client.close()


def test_a_due_lease_goes_everywhere_at_one_revision(
    make: Callable[[int], list[Replica]],
) -> None:
    rs = make(3)
    wall = with_wall(rs)
    leader = leader_of(rs)
    assert write(rs, leader, 1, op=Op.LEASE_GRANT, lease=LEASE, ttl=2) is Status.OK
    for seq, key in ((2, b"a"), (3, b"b")):
        assert write(rs, leader, seq, op=Op.PUT, key=key, value=b"v", lease=LEASE) is Status.OK
    wall.now += 1.9
    settle(rs)
    assert all(r.sm.lease(LEASE) is not None for r in rs)
    # A keep-alive at +1.9 s: the lease now lasts until +3.9 s.
    assert write(rs, leader, 4, op=Op.LEASE_KEEPALIVE, lease=LEASE) is Status.OK
    wall.now += 1.9
    settle(rs)
    assert all(r.sm.lease(LEASE) is not None for r in rs)
    before = leader.sm.revision
    wall.now += 0.2
    pump(rs, lambda: all(r.sm.lease(LEASE) is None for r in rs))
    pump(rs, lambda: len({r.sm.applied_index for r in rs}) == 1)
    assert {r.sm.revision for r in rs} == {before + 1}
    assert all(r.sm.get(b"a") is None and r.sm.get(b"b") is None for r in rs)


def test_a_new_leader_gives_every_lease_a_full_ttl(
    make: Callable[[int], list[Replica]],
) -> None:
    rs = make(3)
    wall = with_wall(rs)
    old = leader_of(rs)
    assert write(rs, old, 1, op=Op.LEASE_GRANT, lease=LEASE, ttl=3) is Status.OK
    assert write(rs, old, 2, op=Op.PUT, key=b"k", value=b"v", lease=LEASE) is Status.OK
    pump(rs, lambda: all(r.sm.lease(LEASE) is not None for r in rs))
    # The old leader goes silent at +2 s: its deadline (+3 s) passes while
    # the others elect a new leader.
    wall.now += 2.0
    rest = [r for r in rs if r is not old]
    new = leader_of(rest)
    took_over = wall.now
    wall.now = took_over + 2.9  # past the deadline, within the new leader's grace
    settle(rest)
    assert all(r.sm.lease(LEASE) is not None for r in rest)
    ttl = Client(new)
    resp = ttl.call(rest, Request(Op.LEASE_TTL, CID, 3, lease=LEASE, keys_only=True))
    ttl.close()
    assert resp.status is Status.OK
    assert resp.info is not None and resp.info["granted_ttl"] == 3 and resp.info["ttl"] == 0
    assert resp.result is not None and [kv.key for kv in resp.result.kvs] == [b"k"]
    wall.now = took_over + 3.1
    pump(rest, lambda: all(r.sm.lease(LEASE) is None and r.sm.get(b"k") is None for r in rest))
