"""Followers write the leader's effects (replica/driver.py, "Followers write
the leader's effects") on three in-process `Replica`s over real ZeroMQ and
LevelDB: the followers apply most slots from the leader's effects and end
in the same state as the leader; a follower keeps only the current leader's
effects, at most EFFECTS_HELD of them, and a leader none; effects that do
not fit are executed instead."""

# ruff: noqa: F811 - the fixture of test_server_loop is imported by name

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvstore.protocol import Op, Request, Status, encode_request
from replica.driver import EFFECTS_HELD
from replica.messages import Effects
from replica.server import Replica
from tests.unit.test_server_loop import Client, leader_of, make, pump  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)

CIDS = [bytes([65 + i]) * 16 for i in range(8)]


def _write_many(rs: list[Replica], leader: Replica, rounds: int) -> None:
    """`rounds` rounds of 8 pipelined writes (PUT, DELETE, CAS) by 8 clients."""
    clients = [Client(leader) for _ in CIDS]
    try:
        for n in range(1, rounds + 1):
            for i, (c, cid) in enumerate(zip(clients, CIDS, strict=True)):
                key = b"k%d" % ((n + i) % 5)
                op = (Op.PUT, Op.PUT, Op.DELETE, Op.CAS)[(n + i) % 4]
                req = Request(op, cid, n, key, b"v%d-%d" % (n, i))
                if op is Op.CAS:
                    req.expected_version = n % 3
                c.send(encode_request(req))
            for c in clients:
                assert c.recv(rs).status in (Status.OK, Status.NOT_FOUND, Status.CAS_FAILED)
    finally:
        for c in clients:
            c.close()


def _state(r: Replica) -> tuple[object, ...]:
    sm = r.sm
    return sm.applied_index, sm.revision, sm.checksum(), sm.session_count(), sm.events.count


def test_followers_apply_the_leaders_effects_and_agree(
    make: Callable[[int], list[Replica]],
) -> None:
    rs = make(3)
    leader = leader_of(rs)
    _write_many(rs, leader, 25)
    index = leader.sm.applied_index
    pump(rs, lambda: all(r.sm.applied_index >= index for r in rs))
    followers = [r for r in rs if r is not leader]
    for f in followers:
        # Most slots come with effects in time: the leader tells a follower
        # that a slot is chosen only after it sent the slot's effects.
        assert f.driver.counters.effects_slots > f.driver.counters.committed_slots // 2
    assert leader.driver.counters.effects_slots == 0
    pump(rs, lambda: len({_state(r) for r in rs}) == 1)
    assert len({_state(r) for r in rs}) == 1


def test_a_follower_keeps_only_the_current_leaders_effects_and_a_bounded_number(
    make: Callable[[int], list[Replica]],
) -> None:
    rs = make(3)
    leader = leader_of(rs)
    follower, other = (r for r in rs if r is not leader)
    start = follower.sm.applied_index + 1000  # far ahead: never applied here
    follower.driver._on_effects(Effects(other.id, start, start + 1, b"x"))
    assert follower.driver._effects_in == {}, "not from the leader"
    follower.driver._on_effects(Effects(leader.id, start, start, b"x"))
    assert follower.driver._effects_in == {}, "no slots"
    for i in range(EFFECTS_HELD + 10):
        follower.driver._on_effects(Effects(leader.id, start + i, start + i + 1, b"x"))
    held = follower.driver._effects_in
    assert len(held) == EFFECTS_HELD and min(held) == start + 10, "the oldest dropped"
    leader.driver._on_effects(Effects(follower.id, start, start + 1, b"x"))
    assert leader.driver._effects_in == {}, "a leader keeps none"


def test_effects_that_do_not_fit_are_executed_instead(
    make: Callable[[int], list[Replica]],
) -> None:
    """A follower holding malformed effects for the next slot refuses them,
    executes the slot and ends in the leader's state."""
    rs = make(3)
    leader = leader_of(rs)
    follower = next(r for r in rs if r is not leader)
    sent = leader.driver.peers.send

    def corrupt(messages: list) -> None:
        sent(
            [
                (d, Effects(m.sender, m.start, m.end, b"\x93\x01"))
                if type(m) is Effects
                else (d, m)
                for d, m in messages
            ]
        )

    leader.driver.peers.send = corrupt  # type: ignore[method-assign]
    _write_many(rs, leader, 3)
    index = leader.sm.applied_index
    pump(rs, lambda: follower.sm.applied_index >= index)
    assert follower.driver.counters.effects_slots == 0
    pump(rs, lambda: _state(follower) == _state(leader))
