"""WATCH long polls (replica/watch.py) in-process on three `Replica`s: a
request from a revision already applied is answered at once with whole
revisions in order, a held one as soon as a matching change applies (on a
follower too), one with nothing to report after its hold time with the
revision to go on from, and one below the retention with COMPACTED naming
the oldest revision kept."""

# ruff: noqa: F811 - the fixture of test_server_loop is imported by name

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvstore.protocol import (
    Op,
    Request,
    Response,
    Status,
    WatchResult,
    encode_request,
    prefix_end,
)
from replica.server import Replica
from tests.unit.test_server_loop import Client, leader_of, make, pump  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)

CID = b"W" * 16


def watch_req(start: int, hold_ms: int, key: bytes = b"p/") -> Request:
    return Request(
        Op.WATCH, CID, 1, key, range_end=prefix_end(key), expected_version=start, limit=hold_ms
    )


def put(rs: list[Replica], leader: Replica, seq: int, key: bytes) -> None:
    c = Client(leader)
    assert c.call(rs, Request(Op.PUT, CID, seq, key, b"v%d" % seq)).status is Status.OK
    c.close()


def events_of(resp: Response) -> list[tuple[int, bytes]]:
    assert resp.status is Status.OK and isinstance(resp.result, WatchResult)
    return [(e.revision, e.key) for e in resp.result.events]


def test_watch_from_a_revision_then_held_then_heartbeat(
    make: Callable[[int], list[Replica]],
) -> None:
    rs = make(3)
    leader = leader_of(rs)
    follower = next(r for r in rs if r is not leader)
    for seq, key in enumerate((b"p/a", b"q/x", b"p/b"), start=1):
        put(rs, leader, seq, key)
    pump(rs, lambda: follower.sm.revision == 3)
    watcher = Client(follower)
    resp = watcher.call(rs, watch_req(1, 0))
    assert events_of(resp) == [(1, b"p/a"), (3, b"p/b")]
    assert resp.result.next_revision == 4
    watcher.send(encode_request(watch_req(4, 5_000)))  # held until a change to p/ applies
    put(rs, leader, 4, b"q/y")  # not in the range: still held
    pump(rs, lambda: follower.sm.revision == 4)
    assert not watcher.sock.poll(0)
    put(rs, leader, 5, b"p/c")
    resp = watcher.recv(rs)
    assert events_of(resp) == [(5, b"p/c")] and resp.result.next_revision == 6
    resp = watcher.call(rs, watch_req(6, 50))  # nothing within 50 ms: a heartbeat
    assert events_of(resp) == [] and resp.result.next_revision == 6
    watcher.close()


def test_a_compacted_revision_names_the_oldest(make: Callable[[int], list[Replica]]) -> None:
    rs = make(3)
    leader = leader_of(rs)
    leader.sm.events.retain_events = 3
    for seq in range(1, 11):
        put(rs, leader, seq, b"p/%d" % seq)
    oldest = leader.sm.events.floor
    assert oldest > 1
    c = Client(leader)
    resp = c.call(rs, watch_req(1, 0))
    assert resp.status is Status.COMPACTED and resp.info == {"oldest": oldest}
    assert f"the oldest available is {oldest}" in resp.error
    assert events_of(c.call(rs, watch_req(oldest, 0)))[0] == (oldest, b"p/%d" % oldest)
    c.close()
