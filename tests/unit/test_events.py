"""The watch event log (kvstore/events.py) under a real KVStateMachine, on
LevelDB and MemoryDB: one event per changed key at its command's revision
(puts, deletes, range deletes, transactions, lease expiry), reads filtered
by range in whole revisions with the revision to go on from, retention by
count and bytes raising the floor (a read below it is refused), the floor
kept across a restart and raised by a snapshot install."""

# ruff: noqa: F811 - the fixtures of test_statemachine are imported by name

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore.config import ConfigError, WatchSettings, load_watch_settings
from kvstore.events import DELETE, PUT, WATCH_RETAIN_BYTES, WATCH_RETAIN_EVENTS, Event
from kvstore.protocol import FROM_KEY, Op, Txn, TxnOp, TxnOpKind, encode_lease_expiry
from kvstore.statemachine import KVStateMachine
from tests.unit.test_statemachine import (  # noqa: F401 - fixtures
    T0,
    Client,
    NewDB,
    clk,
    db,
    new_db,
    run,
    run_one,
    sm,
    transfer,
)


class WatchClient(Client):
    def delete_range(self, key: bytes, range_end: bytes) -> bytes:
        return self._cmd(op=Op.DELETE_RANGE, key=key, range_end=range_end)

    def txn_puts(self, *keys: bytes) -> bytes:
        ops = tuple(TxnOp(TxnOpKind.PUT, k, value=b"t") for k in keys)
        return self._cmd(op=Op.TXN, txn=Txn((), ops, ()))

    def grant(self, lease: int) -> bytes:
        return self._cmd(op=Op.LEASE_GRANT, lease=lease, ttl=1)

    def put_leased(self, key: bytes, lease: int) -> bytes:
        return self._cmd(op=Op.PUT, key=key, value=b"l", lease=lease)


def everything(sm: KVStateMachine, start: int = 1) -> list[Event]:
    found = sm.watch_events(start, b"\0", FROM_KEY)
    assert found is not None
    return found[0]


def test_every_change_is_an_event_at_its_revision(sm: KVStateMachine) -> None:
    c = WatchClient()
    run(sm, clk(T0), c.put(b"a", b"1"), c.put(b"a", b"2"), c.delete(b"a"), c.delete(b"a"))
    run(sm, c.txn_puts(b"p/1", b"p/2"), c.delete_range(b"p/", b"p0"))
    run(sm, c.grant(9), c.put_leased(b"l", 9), clk(T0 + 1_000), encode_lease_expiry([9]))
    assert everything(sm) == [
        Event(1, PUT, b"a", b"1", 1, 1),
        Event(2, PUT, b"a", b"2", 2, 1),
        Event(3, DELETE, b"a", None, 3, 1),
        Event(4, PUT, b"p/1", b"t", 4, 4),
        Event(4, PUT, b"p/2", b"t", 4, 4),
        Event(5, DELETE, b"p/1", None, 5, 4),
        Event(5, DELETE, b"p/2", None, 5, 4),
        Event(6, PUT, b"l", b"l", 6, 6),
        Event(7, DELETE, b"l", None, 7, 6),
    ]
    assert sm.revision == 7
    assert sm.watch_events(4, b"p/", b"p0") == (everything(sm)[3:7], 8)
    assert sm.watch_events(8, b"a", None) == ([], 8)
    assert sm.watch_events(2, b"a", None) == ([everything(sm)[1], everything(sm)[2]], 8)


def test_a_read_stops_at_a_revision_boundary(sm: KVStateMachine) -> None:
    c = WatchClient()
    run(sm, c.txn_puts(b"k1", b"k2", b"k3"), c.put(b"k4", b"v"))
    events, after = sm.events.read(1, b"\0", None, sm.revision, max_events=1)
    assert [e.key for e in events] == [b"k1", b"k2", b"k3"] and after == 2  # one whole revision
    assert sm.events.read(after, b"\0", None, sm.revision, max_events=1)[1] == 3


def test_retention_raises_the_floor_and_refuses_older_starts(new_db: NewDB) -> None:
    db = new_db()
    sm = KVStateMachine(db, watch_retention=(10, 1 << 20))
    c = WatchClient()
    for i in range(30):
        run_one(sm, c.put(b"k%d" % i, b"v"))
    floor = sm.events.floor
    assert 1 < floor <= 21 and sm.events.count <= 10 + 1
    assert sm.watch_events(floor - 1, b"\0", FROM_KEY) is None
    kept = everything(sm, floor)
    assert [e.revision for e in kept] == list(range(floor, 31))  # complete from the floor
    # Trimming seeks to the oldest revision left (not over the tombstones
    # of those it deleted), which a restart finds again.
    assert sm.events.oldest == floor
    again = KVStateMachine(db, watch_retention=(10, 1 << 20))  # a restart keeps it
    assert (again.events.floor, again.events.count) == (floor, sm.events.count)
    assert again.events.oldest == floor
    for i in range(30, 60):
        run_one(again, c.put(b"k%d" % i, b"v"))
    assert again.events.oldest == again.events.floor > floor
    assert [e.revision for e in everything(again, again.events.floor)] == list(
        range(again.events.floor, 61)
    )
    assert again.events.count == 61 - again.events.floor
    small = KVStateMachine(new_db(), watch_retention=(1000, 200))
    for i in range(30):
        run_one(small, c.put(b"big%d" % i, b"x" * 50))
    assert small.events.floor > 20  # about three 60-byte events fit in 200 bytes


def test_a_snapshot_install_raises_the_floor(new_db: NewDB) -> None:
    src, dst = KVStateMachine(new_db()), KVStateMachine(new_db())
    c = WatchClient()
    run_one(dst, c.put(b"old", b"v"))
    for i in range(5):
        run_one(src, c.put(b"k%d" % i, b"v"))
    transfer(src, dst)
    assert dst.events.floor == src.revision + 1
    assert dst.watch_events(src.revision, b"\0", FROM_KEY) is None
    follow = [(src.applied_index, (c.put(b"after", b"v"),))]
    src.apply(follow)
    dst.apply(follow)
    assert everything(dst, dst.events.floor) == everything(src, dst.events.floor)
    assert dst.events.count == 1  # the stale event below the floor was trimmed


def test_the_watch_table_of_the_cluster_config(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text("[watch]\nretain_events = 5\n")
    assert load_watch_settings(path) == WatchSettings(5, WATCH_RETAIN_BYTES)
    path.write_text("")
    assert load_watch_settings(path) == WatchSettings(WATCH_RETAIN_EVENTS, WATCH_RETAIN_BYTES)
    path.write_text("[watch]\nretain_bytes = 0\n")
    with pytest.raises(ConfigError, match="retain_bytes must be an integer >= 1"):
        load_watch_settings(path)
