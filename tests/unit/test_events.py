"""The watch event log (kvstore/events.py) under a real KVStateMachine, on
LevelDB and MemoryDB: one event per changed key at its command's revision
(puts, deletes, range deletes, transactions, lease expiry), reads filtered
by range in whole revisions with the revision to go on from, retention by
count and bytes raising the floor (a read below it is refused), the floor
kept across a restart and raised by a snapshot install; previous values
(prev_kv) found at read time from the event at the previous revision,
"no longer kept" once it is trimmed, unknown for events of the previous
release, and never a second copy of a value on the write path."""

# ruff: noqa: F811 - the fixtures of test_statemachine are imported by name

from __future__ import annotations

import struct
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.config import ConfigError, WatchSettings, load_watch_settings
from kvstore.events import (
    DELETE,
    EVENT_PREFIX,
    INLINE_VALUE_BYTES,
    OLD_EVENT_PREFIX,
    PUT,
    PUT_IN_RECORD,
    RECORD_EVENTS,
    WATCH_RETAIN_BYTES,
    WATCH_RETAIN_EVENTS,
    Event,
    record_events,
)
from kvstore.protocol import (
    FROM_KEY,
    PREV_UNKNOWN,
    Op,
    Status,
    Txn,
    TxnOp,
    TxnOpKind,
    encode_lease_expiry,
)
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


def everything(sm: KVStateMachine, start: int = 1, prev_kv: bool = False) -> list[Event]:
    found = sm.watch_events(start, b"\0", FROM_KEY, prev_kv=prev_kv)
    assert found is not None
    return found[0]


def prevs(events: list[Event]) -> list[tuple[int, bytes, int, bytes | None]]:
    return [(e.revision, e.key, e.prev_revision, e.prev_value) for e in events]


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


def test_previous_values_on_request(sm: KVStateMachine) -> None:
    c = WatchClient()
    run(sm, clk(T0), c.put(b"a", b"1"), c.put(b"a", b"2"), c.delete(b"a"), c.put(b"a", b"3"))
    run(sm, c.txn_puts(b"p/1", b"p/2"), c.put(b"p/1", b"u"), c.delete_range(b"p/", b"p0"))
    run(sm, c.grant(9), c.put_leased(b"l", 9), clk(T0 + 1_000), encode_lease_expiry([9]))
    assert prevs(everything(sm, prev_kv=True)) == [
        (1, b"a", 0, None),  # created: no previous value
        (2, b"a", 1, b"1"),
        (3, b"a", 2, b"2"),  # a delete: the value deleted
        (4, b"a", 0, None),  # created again
        (5, b"p/1", 0, None),
        (5, b"p/2", 0, None),
        (6, b"p/1", 5, b"t"),  # from a revision of two events
        (7, b"p/1", 6, b"u"),
        (7, b"p/2", 5, b"t"),
        (8, b"l", 0, None),
        (9, b"l", 8, b"l"),  # a lease expiry
    ]
    # Without the flag, nothing of it (what the wire then sends: six fields).
    assert {(e.prev_revision, e.prev_value) for e in everything(sm)} == {(PREV_UNKNOWN, None)}
    # A filtered read resolves from events outside its range's matches too.
    found = sm.watch_events(3, b"a", None, prev_kv=True)
    assert found is not None and prevs(found[0]) == [(3, b"a", 2, b"2"), (4, b"a", 0, None)]


def test_a_transaction_that_deletes_and_puts_a_key_has_its_previous_value(
    sm: KVStateMachine,
) -> None:
    c = WatchClient()
    run_one(sm, c.put(b"k", b"old"))
    ops = (TxnOp(TxnOpKind.DELETE, b"k"), TxnOp(TxnOpKind.PUT, b"k", value=b"new"))
    run_one(sm, c._cmd(op=Op.TXN, txn=Txn((), ops, ())))
    (event,) = everything(sm, 2, prev_kv=True)
    assert (event.kind, event.create_revision, event.prev_revision, event.prev_value) == (
        PUT,
        2,  # created anew at 2, as far as its create revision says ...
        1,  # ... but it existed before: its previous value is there
        b"old",
    )


def test_the_write_path_keeps_no_second_copy_of_a_value(sm: KVStateMachine) -> None:
    c = WatchClient()
    run(sm, c.put(b"k", b"x" * 1000), c.put(b"k", b"y"), c.delete(b"k"))
    stored = b"".join(raw for _, raw in sm._db.iterator(prefix=EVENT_PREFIX))
    assert 1000 < len(stored) < 1100 and stored.count(b"x" * 1000) == 1  # the 1000 bytes once
    assert prevs(everything(sm, prev_kv=True))[1:] == [
        (2, b"k", 1, b"x" * 1000),
        (3, b"k", 2, b"y"),
    ]


def test_a_trimmed_previous_revision_is_no_longer_kept(new_db: NewDB) -> None:
    sm = KVStateMachine(new_db(), watch_retention=(10, 1 << 20))
    c = WatchClient()
    run_one(sm, c.put(b"rare", b"first"))
    for i in range(20):
        run_one(sm, c.put(b"busy", b"%d" % i))
    assert sm.events.floor > 1  # revision 1 was trimmed
    run_one(sm, c.put(b"rare", b"second"))
    run_one(sm, c.delete(b"rare"))
    found = sm.watch_events(22, b"rare", None, prev_kv=True)
    assert found is not None
    assert prevs(found[0]) == [(22, b"rare", 1, None), (23, b"rare", 22, b"second")]
    busy = sm.watch_events(sm.events.floor + 1, b"busy", None, prev_kv=True)
    assert busy is not None and all(e.prev_value is not None for e in busy[0])


def as_old_layout(db: object, fields: int = 6) -> None:
    """Rewrites the event log of `db` as the release before records wrote it:
    one LevelDB record per event under OLD_EVENT_PREFIX, `fields` fields
    each (five: the release before previous values)."""
    records = list(db.iterator(prefix=EVENT_PREFIX))  # type: ignore[attr-defined]
    last, index = -1, 0
    for db_key, raw in records:
        db.delete(db_key)  # type: ignore[attr-defined]
        for event in record_events(raw):
            index = index + 1 if event[0] == last else 0
            last = event[0]
            old_key = OLD_EVENT_PREFIX + struct.pack(">QI", event[0], index)
            db.put(old_key, msgpack.packb(event[1 : 1 + fields], use_bin_type=True))  # type: ignore[attr-defined]


def test_events_of_the_previous_release_read_as_unknown(new_db: NewDB) -> None:
    db = new_db()
    sm = KVStateMachine(db)
    c = WatchClient()
    run(sm, c.put(b"a", b"1"), c.put(b"a", b"2"), c.put(b"b", b"1"))
    as_old_layout(db, fields=5)  # what the release before previous values wrote
    sm = KVStateMachine(db)  # a restart on that data directory
    assert list(db.iterator(prefix=OLD_EVENT_PREFIX)) == []  # migrated
    run(sm, c.put(b"a", b"3"), c.delete(b"b"))
    assert prevs(everything(sm, prev_kv=True)) == [
        (1, b"a", PREV_UNKNOWN, None),
        (2, b"a", PREV_UNKNOWN, None),
        (3, b"b", PREV_UNKNOWN, None),
        (4, b"a", 2, b"2"),  # new events resolve from the old ones' values
        (5, b"b", 3, b"1"),
    ]


def test_previous_values_count_toward_a_reply_s_bytes(sm: KVStateMachine) -> None:
    c = WatchClient()
    for i in range(4):
        run_one(sm, c.put(b"k", b"%d" % i * 100))
    plain = sm.events.read(2, b"k", b"l", sm.revision, max_bytes=250)
    with_prev = sm.events.read(2, b"k", b"l", sm.revision, max_bytes=250, prev_kv=True)
    assert plain is not None and with_prev is not None
    assert [e.revision for e in plain[0]] == [2, 3, 4]  # 101 bytes each
    assert [e.revision for e in with_prev[0]] == [2, 3]  # 202 bytes each
    assert with_prev[1] == 4


def test_the_watch_table_of_the_cluster_config(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text("[watch]\nretain_events = 5\n")
    assert load_watch_settings(path) == WatchSettings(5, WATCH_RETAIN_BYTES)
    path.write_text("")
    assert load_watch_settings(path) == WatchSettings(WATCH_RETAIN_EVENTS, WATCH_RETAIN_BYTES)
    path.write_text("[watch]\nretain_bytes = 0\n")
    with pytest.raises(ConfigError, match="retain_bytes must be an integer >= 1"):
        load_watch_settings(path)


# --- large values: kept in the record, copied into the event when replaced ------------------

BIG = b"B" * (INLINE_VALUE_BYTES + 1)


def stored_events(sm: KVStateMachine) -> list[list]:
    """The stored events, in order, without their revisions."""
    records = sm._db.iterator(prefix=EVENT_PREFIX)
    return [event[1:] for _, raw in records for event in record_events(raw)]


def test_a_large_value_stays_in_its_record_until_the_key_changes(sm: KVStateMachine) -> None:
    c = WatchClient()
    run_one(sm, c.put(b"k", BIG + b"1"))
    (first,) = stored_events(sm)
    assert first[0] == PUT_IN_RECORD and first[2] is None  # not copied a third time
    assert everything(sm) == [Event(1, PUT, b"k", BIG + b"1", 1, 1)]
    run_one(sm, c.put(b"k", BIG + b"2"))  # the next write copies it into its event
    old, new = stored_events(sm)
    assert old[:3] == [PUT, b"k", BIG + b"1"] and new[0] == PUT_IN_RECORD
    run_one(sm, c.delete(b"k"))
    assert [e[0] for e in stored_events(sm)] == [PUT, PUT, DELETE]
    assert prevs(everything(sm, prev_kv=True)) == [
        (1, b"k", 0, None),
        (2, b"k", 1, BIG + b"1"),
        (3, b"k", 2, BIG + b"2"),
    ]
    assert [e.value for e in everything(sm)] == [BIG + b"1", BIG + b"2", None]


def test_a_large_value_replaced_in_the_same_batch_is_kept_in_its_event(
    sm: KVStateMachine,
) -> None:
    c = WatchClient()
    run(sm, c.put(b"k", BIG + b"1"), c.put(b"k", BIG + b"2"), c.put(b"j", BIG))
    kinds = [e[0] for e in stored_events(sm)]
    assert kinds == [PUT, PUT_IN_RECORD, PUT_IN_RECORD]
    assert [e.value for e in everything(sm)] == [BIG + b"1", BIG + b"2", BIG]


def _reference_machine(db: object) -> KVStateMachine:
    """A state machine that keeps every value in the event log."""
    ref = KVStateMachine(db, watch_retention=(12, 1 << 30))  # type: ignore[arg-type]
    ref.events._value_at = None
    return ref


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["put", "put", "delete", "range", "txn"]),
                st.sampled_from([b"a", b"b", b"c"]),
                st.booleans(),
            ),
            min_size=1,
            max_size=4,
        ),
        min_size=1,
        max_size=12,
    )
)
def test_watchers_see_the_same_events_as_with_every_value_kept(calls: list) -> None:
    """Random batches of puts (small and large values), deletes, range
    deletes and transactions: every read with previous values, after every
    batch and from every revision, equals that of a log keeping every
    value (retention by count, so both keep the same revisions)."""
    import tempfile

    import plyvel

    with tempfile.TemporaryDirectory() as d1, tempfile.TemporaryDirectory() as d2:
        dbs = [plyvel.DB(d, create_if_missing=True) for d in (d1, d2)]
        try:
            sm = KVStateMachine(dbs[0], watch_retention=(12, 1 << 30))
            ref = _reference_machine(dbs[1])
            clients = (WatchClient(), WatchClient())
            n = 0
            for call in calls:
                cmds: list[list[bytes]] = [[], []]
                for kind, key, big in call:
                    n += 1
                    value = (BIG if big else b"s") + b"%d" % n
                    for c, out in zip(clients, cmds, strict=True):
                        if kind == "put":
                            out.append(c.put(key, value))
                        elif kind == "delete":
                            out.append(c.delete(key))
                        elif kind == "range":
                            out.append(c.delete_range(b"a", b"c"))
                        else:
                            ops = (TxnOp(TxnOpKind.PUT, key, value=value),)
                            out.append(c._cmd(op=Op.TXN, txn=Txn((), ops, ())))
                run(sm, *cmds[0])
                run(ref, *cmds[1])
                assert sm.events.floor == ref.events.floor
                for start in range(sm.events.floor, sm.revision + 2):
                    for prev in (False, True):
                        got = sm.watch_events(start, b"\0", FROM_KEY, prev_kv=prev)
                        assert got == ref.watch_events(start, b"\0", FROM_KEY, prev_kv=prev)
        finally:
            for db in dbs:
                db.close()


# --- records: many events under one LevelDB key ------------------------------------------


def records(sm: KVStateMachine) -> list[tuple[int, list[int]]]:
    """(the key's revision, the events' revisions) of each stored record."""
    return [
        (struct.unpack_from(">Q", key, 1)[0], [e[0] for e in record_events(raw)])
        for key, raw in sm._db.iterator(prefix=EVENT_PREFIX)
    ]


def test_an_apply_s_events_are_records_of_whole_revisions(new_db: NewDB) -> None:
    sm = KVStateMachine(new_db(), watch_retention=(1000, 1 << 30))
    c = WatchClient()
    run(sm, *(c.put(b"k%03d" % i, b"v") for i in range(300)))  # revisions 1-300
    assert [(key, len(revs)) for key, revs in records(sm)] == [
        (RECORD_EVENTS, RECORD_EVENTS),
        (2 * RECORD_EVENTS, RECORD_EVENTS),
        (300, 300 - 2 * RECORD_EVENTS),
    ]  # keyed by their last revision
    assert run_one(sm, c.delete_range(b"k", b"l")).status == Status.OK
    assert records(sm)[-1] == (301, [301] * 300)  # one revision: never split
    run(sm, c.put(b"big", b"x" * 1000), *(c.put(b"b%02d" % i, b"x" * 1000) for i in range(40)))
    assert [len(revs) for _, revs in records(sm)[-2:]] == [33, 8]  # ~RECORD_BYTES each
    assert sm.events.count == 641
    # Reads start in the middle of a record and stop at a revision boundary.
    found = sm.events.read(100, b"\0", None, sm.revision, max_events=250)
    assert found is not None
    assert [e.revision for e in found[0]] == list(range(100, 301)) + [301] * 300
    assert found[1] == 302
    found = sm.events.read(130, b"k", b"l", sm.revision, max_events=5)
    assert found is not None and [e.revision for e in found[0]] == [130, 131, 132, 133, 134]
    assert found[1] == 135


def test_trimming_deletes_whole_records_and_raises_the_floor_to_the_next(new_db: NewDB) -> None:
    sm = KVStateMachine(new_db(), watch_retention=(300, 1 << 30))
    c = WatchClient()
    run(sm, *(c.put(b"k%03d" % i, b"v") for i in range(300)))
    assert sm.events.floor == 1 and sm.events.count == 300
    run_one(sm, c.put(b"k", b"v"))  # 301 events: the oldest record goes
    assert sm.events.floor == RECORD_EVENTS + 1 == sm.events.oldest
    assert sm.events.count == 301 - RECORD_EVENTS
    assert sm.watch_events(RECORD_EVENTS, b"\0", FROM_KEY) is None  # compacted
    found = sm.watch_events(RECORD_EVENTS + 1, b"\0", FROM_KEY)
    assert found is not None and found[0][0].revision == RECORD_EVENTS + 1
    assert [revs[0] for _, revs in records(sm)] == [RECORD_EVENTS + 1, 2 * RECORD_EVENTS + 1, 301]
