"""WATCH long polls (replica/watch.py) in-process on three `Replica`s: a
request from a revision already applied is answered at once with whole
revisions in order, a held one as soon as a matching change applies (on a
follower too), one with nothing to report after its hold time with the
revision to go on from, and one below the retention with COMPACTED naming
the oldest revision kept; with the prev_kv flag (the request's `stale`)
each event also carries the key's previous revision and value, on the
wire as two more fields that only such a watcher gets."""

# ruff: noqa: F811 - the fixture of test_server_loop is imported by name

from __future__ import annotations

from collections.abc import Callable

import msgpack
import pytest

from kvstore.protocol import (
    PREV_UNKNOWN,
    Op,
    Request,
    Response,
    Status,
    WatchEvent,
    WatchResult,
    decode_response,
    encode_request,
    encode_response,
    prefix_end,
)
from replica.server import Replica
from tests.unit.test_server_loop import Client, leader_of, make, pump  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(60)

CID = b"W" * 16


def watch_req(start: int, hold_ms: int, key: bytes = b"p/", prev_kv: bool = False) -> Request:
    return Request(
        Op.WATCH,
        CID,
        1,
        key,
        stale=prev_kv,
        range_end=prefix_end(key),
        expected_version=start,
        limit=hold_ms,
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


def test_previous_values_on_request_and_only_then_on_the_wire(
    make: Callable[[int], list[Replica]],
) -> None:
    rs = make(3)
    leader = leader_of(rs)
    follower = next(r for r in rs if r is not leader)
    c = Client(leader)
    assert c.call(rs, Request(Op.PUT, CID, 1, b"p/a", b"one")).status is Status.OK
    assert c.call(rs, Request(Op.PUT, CID, 2, b"p/a", b"two")).status is Status.OK
    assert c.call(rs, Request(Op.DELETE, CID, 3, b"p/a")).status is Status.OK
    pump(rs, lambda: follower.sm.revision == 3)
    watcher = Client(follower)
    raw_events = {}
    for prev_kv in (False, True):
        watcher.send(encode_request(watch_req(1, 0, prev_kv=prev_kv)))
        pump(rs, lambda: watcher.sock.poll(0))
        _, payload = watcher.sock.recv_multipart()
        raw_events[prev_kv] = msgpack.unpackb(payload)[7][1]
        resp = decode_response(payload)
        assert isinstance(resp.result, WatchResult)
        got = [(e.revision, e.kind, e.prev_revision, e.prev_value) for e in resp.result.events]
        if prev_kv:
            assert got == [(1, 0, 0, None), (2, 0, 1, b"one"), (3, 1, 2, b"two")]
        else:
            assert got == [(1, 0, PREV_UNKNOWN, None), (2, 0, PREV_UNKNOWN, None),
                           (3, 1, PREV_UNKNOWN, None)]  # fmt: skip
    # Six fields an event unless asked: what a client of the previous release decodes.
    assert [len(e) for e in raw_events[False]] == [6, 6, 6]
    assert [len(e) for e in raw_events[True]] == [8, 8, 8]
    watcher.close()
    c.close()


def test_a_watch_reply_from_a_replica_without_previous_values_still_decodes() -> None:
    """A replica of the previous release ignores the flag and sends six
    fields: the events decode with PREV_UNKNOWN; eight decode both."""
    six = WatchEvent(4, 0, b"k", b"v", 4, 2)
    eight = six._replace(prev_revision=2, prev_value=b"u")
    old_reply = msgpack.packb([1, 0, None, 4, None, "", None, [5, [list(six)], 5]])
    assert decode_response(old_reply).result == WatchResult((six,), 5)
    assert six.prev_revision == PREV_UNKNOWN and six.prev_value is None
    both = Response(Status.OK, version=4, result=WatchResult((six, eight), 5))
    assert decode_response(encode_response(both)) == both
    created = six._replace(prev_revision=0)  # known: no previous value
    assert decode_response(
        encode_response(Response(Status.OK, result=WatchResult((created,), 5)))
    ).result == WatchResult((created,), 5)
