"""Vouched reads through the replica driver (replica/paxos.py, "Vouched
reads"), in-process on three `Replica`s: once a leader is elected the test
drives `iterate` by hand and records what the drivers send to peers and
answer to clients, so that which path confirmed a read is certain."""

# ruff: noqa: F811 - the fixture of test_server_loop is imported by name

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kvstore.protocol import Op, Request, Status, decode_response, encode_request
from replica.messages import Heartbeat, ReadVouch
from replica.server import Replica
from tests.unit.test_server_loop import Client, leader_of, make, pump  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)

CID = b"V" * 16


class Recorder:
    """Stands in for a driver's peer and client transports."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, Any]] = []
        self.replies: list[tuple[Any, bytes]] = []

    def send(self, messages: list[tuple[int, Any]]) -> None:
        self.messages.extend(messages)

    def reply(self, envelope: Any, payload: bytes) -> None:
        self.replies.append((envelope, payload))


def _cluster(make: Callable[[int], list[Replica]]) -> tuple[Replica, list[Replica]]:
    rs = make(3)
    leader = leader_of(rs)
    client = Client(leader)
    try:
        put = Request(Op.PUT, CID, 1, b"k", b"v")
        assert client.call(rs, put).status is Status.OK
    finally:
        client.close()
    pump(rs, lambda: len({r.sm.applied_index for r in rs}) == 1)
    for r in rs:  # from now on only the test moves them: a tick every hour
        r.driver._tick_s = 3600.0
        r.driver._next_tick = r.driver._clock() + 3600.0
    return leader, [r for r in rs if r is not leader]


def _record(replica: Replica) -> Recorder:
    rec = Recorder()
    replica.driver.peers = rec
    replica.driver.clients = rec
    return rec


def _get(nonce: int | None, cid: bytes = CID) -> bytes:
    return encode_request(Request(Op.GET, cid, 2, b"k", expected_version=nonce))


def _vouch(nonce: int, target: int | None = None, cid: bytes = CID) -> bytes:
    return encode_request(Request(Op.VOUCH, cid, nonce, expected_version=target))


def test_a_vouched_get_is_answered_on_a_followers_vouch(
    make: Callable[[int], list[Replica]],
) -> None:
    leader, (follower, _) = _cluster(make)
    lrec, frec = _record(leader), _record(follower)
    leader.driver.iterate([], [(("client",), _get(7))])
    assert lrec.replies == [] and not any(type(m) is Heartbeat for _, m in lrec.messages)
    follower.driver.iterate([], [(("client",), _vouch(7))])  # to the leader it knows
    assert frec.replies == []  # a VOUCH is never answered
    ((dst, vouch),) = [(d, m) for d, m in frec.messages if type(m) is ReadVouch]
    assert dst == leader.id and vouch.tokens == (CID + (7).to_bytes(8, "big"),)
    leader.driver.iterate([vouch], [])
    ((envelope, payload),) = lrec.replies
    resp = decode_response(payload)
    assert envelope == ("client",) and resp.status is Status.OK and resp.value == b"v"
    assert resp.info is None
    assert leader.driver.counters.vouched_reads == 1


def test_a_vouch_for_another_read_or_from_a_non_follower_confirms_nothing(
    make: Callable[[int], list[Replica]],
) -> None:
    leader, (follower, _) = _cluster(make)
    lrec, frec = _record(leader), _record(follower)
    leader.driver.iterate([], [(("client",), _get(8))])
    follower.driver.iterate([], [(("c",), _vouch(9, leader.id)), (("c",), _vouch(8, follower.id))])
    ((_, vouch),) = [(d, m) for d, m in frec.messages if type(m) is ReadVouch]
    assert vouch.tokens == (CID + (9).to_bytes(8, "big"),)  # the one naming itself: dropped
    leader.driver.iterate([vouch], [])
    assert lrec.replies == [] and leader.driver.counters.vouched_reads == 0


def test_a_get_without_a_nonce_goes_by_heartbeat_round(
    make: Callable[[int], list[Replica]],
) -> None:
    leader, _ = _cluster(make)
    lrec = _record(leader)
    leader.driver.iterate([], [(("client",), _get(None))])
    assert any(type(m) is Heartbeat for _, m in lrec.messages)
    assert lrec.replies == []


def test_a_busy_leader_asks_for_gets_without_vouches(
    make: Callable[[int], list[Replica]],
) -> None:
    """Four vouched GETs in one iteration: their answers carry {"vouch":
    False}; one alone does not."""
    leader, (follower, _) = _cluster(make)
    lrec, frec = _record(leader), _record(follower)
    cids = [bytes([65 + i]) * 16 for i in range(4)]
    leader.driver.iterate([], [((i,), _get(11, cid)) for i, cid in enumerate(cids)])
    follower.driver.iterate([], [(("c",), _vouch(11, None, cid)) for cid in cids])
    ((_, vouch),) = [(d, m) for d, m in frec.messages if type(m) is ReadVouch]
    assert len(vouch.tokens) == 4  # one ReadVouch per iteration and leader
    leader.driver.iterate([vouch], [])
    answers = [decode_response(p) for _, p in lrec.replies]
    assert len(answers) == 4
    assert all(a.status is Status.OK and a.info == {"vouch": False} for a in answers)
    lrec.replies.clear()
    frec.messages.clear()
    leader.driver.iterate([], [(("one",), _get(12))])
    follower.driver.iterate([], [(("c",), _vouch(12))])
    ((_, vouch),) = [(d, m) for d, m in frec.messages if type(m) is ReadVouch]
    leader.driver.iterate([vouch], [])
    ((_, payload),) = lrec.replies
    assert decode_response(payload).info is None
