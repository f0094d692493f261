"""The value log (kvstore/values.py) and the state machine's use of it
(kvstore/statemachine.py, "Large values in the value log"): values kept
once beside LevelDB, read back on every path (GET, RANGE, transactions,
watch events, checksums, snapshots), synced before the records that
name them, garbage collected, and lost only by a broken variant."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import plyvel
import pytest

from kvstore.config import VOTE_LOG_MIN_BYTES, ConfigError, load_storage_settings
from kvstore.events import EVENT_PREFIX, EventLog, record_events
from kvstore.protocol import (
    Compare,
    CompareOp,
    CompareTarget,
    Op,
    Request,
    Status,
    Txn,
    TxnOp,
    TxnOpKind,
    encode_request,
)
from kvstore.statemachine import KVStateMachine
from kvstore.values import (
    VALUE_LOG_MIN_BYTES,
    CorruptValue,
    MemoryValueLog,
    ValueLog,
    ref_length,
    ref_segment,
)
from replica.inmem import MemoryDB

CID = b"c" * 16
BIG = 200  # the tests' threshold: values of at least this many bytes go to the log


class Writer:
    def __init__(self, sm: KVStateMachine, client_id: bytes = CID) -> None:
        self.sm, self.client_id, self.seq = sm, client_id, 0

    def run(self, *commands: bytes) -> list[Any]:
        results = self.sm.apply([(self.sm.applied_index, commands)])
        return [r[2] for r in results]

    def cmd(self, **fields: Any) -> bytes:
        self.seq += 1
        return encode_request(Request(client_id=self.client_id, seq=self.seq, **fields))

    def put(self, key: bytes, value: bytes) -> Any:
        return self.run(self.cmd(op=Op.PUT, key=key, value=value))[0]

    def delete(self, key: bytes) -> Any:
        return self.run(self.cmd(op=Op.DELETE, key=key))[0]


def value(n: int, size: int = 1000) -> bytes:
    return (b"%06d" % n) * (size // 6) + b"v" * (size % 6)


@pytest.fixture(params=["files", "memory"])
def parts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    """(db, value log) on disk (plyvel and segment files) or in memory."""
    if request.param == "memory":
        yield MemoryDB(), MemoryValueLog(segment_bytes=4096)
        return
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    values = ValueLog(tmp_path / "db" / "values", segment_bytes=4096)
    yield db, values
    values.close()
    db.close()


def collect(sm: KVStateMachine) -> None:
    """All the garbage collection there is to do, as the idle loop would."""
    while sm.collect_garbage():
        pass


def stored_fields(sm: KVStateMachine, key: bytes) -> list[Any]:
    return msgpack.unpackb(sm._db.get(sm._gen.data + key), raw=False)


# -------------------------------------------------------------- the log alone


def test_an_entry_reads_back_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    log = ValueLog(tmp_path / "v", segment_bytes=1 << 20)
    refs = [log.append(b"k%d" % i, value(i), i) for i in range(3)]
    log.sync()
    assert [log.read(r) for r in refs] == [value(i) for i in range(3)]
    assert {ref_segment(r) for r in refs} == {log.active} and ref_length(refs[0]) == 1000
    log.close()
    path = next((tmp_path / "v").iterdir())
    raw = bytearray(path.read_bytes())
    raw[len(raw) - 10] ^= 0xFF  # a flipped bit in the last value
    path.write_bytes(bytes(raw))
    reopened = ValueLog(tmp_path / "v")
    assert reopened.read(refs[0]) == value(0)
    with pytest.raises(CorruptValue, match="missing or damaged"):
        reopened.read(refs[2])
    assert reopened.active == ref_segment(refs[0]) + 1  # a new segment at every start
    reopened.close()


def test_segments_roll_and_a_removed_one_is_gone(tmp_path: Path) -> None:
    log = ValueLog(tmp_path / "v", segment_bytes=2000)  # two entries each
    refs = [log.append(b"k", value(i), i) for i in range(6)]
    log.sync()
    segments = sorted({ref_segment(r) for r in refs})
    assert len(segments) == 3 and sorted(log.sizes) == segments
    log.remove(segments[0])
    with pytest.raises(CorruptValue, match="missing"):
        log.read(refs[0])
    assert log.read(refs[-1]) == value(5)
    with pytest.raises(ValueError, match="active"):
        log.remove(log.active)
    log.pin()
    log.remove(segments[1])  # waits for the pin
    assert log.read(refs[2]) == value(2)
    log.unpin()
    with pytest.raises(CorruptValue):
        log.read(refs[2])
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == [f"{segments[2]:08d}.vlog"]
    log.close()


def test_the_memory_twin_loses_what_was_not_synced() -> None:
    log = MemoryValueLog()
    kept = log.append(b"k", value(1), 1)
    log.sync()
    flushed = log.append(b"k", value(2), 2)
    log.flush()
    held = log.append(b"k", value(3), 3)
    log.crash(power_loss=False)  # a killed process: the page cache stays, its memory not
    assert log.read(flushed) == value(2)
    with pytest.raises(CorruptValue):
        log.read(held)
    lost = log.restart().append(b"k", value(4), 4)
    log.flush()
    log.crash()
    assert log.read(kept) == value(1)
    with pytest.raises(CorruptValue):
        log.read(lost)


def test_appends_are_written_by_flush_and_read_sees_them_before(tmp_path: Path) -> None:
    log = ValueLog(tmp_path / "v", segment_bytes=1 << 20)
    refs = [log.append(b"k%d" % i, value(i), i) for i in range(3)]
    segment = log._path(log.active)
    assert segment.stat().st_size == 0  # kept in memory until flushed
    log.flush()
    size = segment.stat().st_size
    assert size == log.sizes[log.active] == sum(12 + 2 + 1000 for _ in refs)
    more = log.append(b"k9", value(9), 9)
    assert log.read(more) == value(9)  # a read writes what is held first
    assert segment.stat().st_size > size
    held = log.append(b"k8", value(8), 8)
    log.close()  # closing writes it too
    again = ValueLog(tmp_path / "v", segment_bytes=1 << 20)
    assert [again.read(r) for r in [*refs, more, held]] == [
        *(value(i) for i in range(3)),
        value(9),
        value(8),
    ]
    again.close()


# ------------------------------------------------------ in the state machine


def test_large_values_live_in_the_log_and_read_back_everywhere(parts: tuple[Any, Any]) -> None:
    db, values = parts
    sm = KVStateMachine(db, None, values, BIG)
    w = Writer(sm)
    assert w.put(b"big", value(1)).status is Status.OK
    assert w.put(b"small", b"tiny").status is Status.OK
    assert type(stored_fields(sm, b"big")[0]) is msgpack.ExtType
    assert stored_fields(sm, b"small")[0] == b"tiny"
    assert sm.get(b"big") == (value(1), 1)
    rng = sm.read_range(Request(Op.RANGE, CID, 0, b"a", range_end=b"z"))
    assert [(kv.key, kv.value) for kv in rng.result.kvs] == [
        (b"big", value(1)),
        (b"small", b"tiny"),
    ]
    # A transaction compares the value and reads it.
    txn = Txn(
        (Compare(CompareTarget.VALUE, CompareOp.EQUAL, b"big", value(1)),),
        (TxnOp(TxnOpKind.RANGE, b"big"),),
    )
    reply = w.run(w.cmd(op=Op.TXN, txn=txn))[0]
    assert reply.status is Status.OK and reply.result.responses[0].kvs[0].value == value(1)
    # The watch event of a large PUT takes its value from the record.
    events, _ = sm.watch_events(1, b"big", None)
    assert [e.value for e in events] == [value(1)]


def test_the_state_is_the_same_with_and_without_the_log(parts: tuple[Any, Any]) -> None:
    db, values = parts
    with_log = KVStateMachine(db, None, values, BIG)
    without = KVStateMachine(MemoryDB())
    for sm in (with_log, without):
        w = Writer(sm)
        for i in range(30):
            w.put(b"k%d" % (i % 7), value(i, 100 + 37 * i))
            if i % 5 == 4:
                w.delete(b"k%d" % (i % 3))
    assert with_log.checksum() == without.checksum()
    # A snapshot carries the values inline: installed where no log is open.
    target = KVStateMachine(MemoryDB())
    with with_log.snapshot_reader() as reader:
        target.install_begin(b"s", reader.index, reader.revision)
        after = None
        while True:
            items, after = reader.chunk(after, 1500)
            target.install_chunk(items)
            if after is None:
                break
    target.install_finish()
    assert target.checksum() == with_log.checksum()
    assert target.get(b"k6") == with_log.get(b"k6")


def test_overwrites_and_deletes_make_garbage_that_is_collected(parts: tuple[Any, Any]) -> None:
    db, values = parts
    sm = KVStateMachine(db, None, values, BIG)
    w = Writer(sm)
    for i in range(40):
        w.put(b"k%d" % (i % 4), value(i))
    assert sm._live.count == 4
    assert values.disk_bytes() > 10 * sm._live.count * 1000
    collect(sm)
    # At most about twice the live values stay, plus the segment being written.
    assert values.disk_bytes() <= 2 * 4 * 1050 + values.segment_bytes + 1050
    assert [sm.get(b"k%d" % i)[0] for i in range(4)] == [value(36 + i) for i in range(4)]
    for i in range(4):
        w.delete(b"k%d" % i)
    assert sm._live.count == 0
    collect(sm)
    assert set(values.sizes) <= {values.active}
    assert list(db.iterator(prefix=sm._gen.values)) == []


def test_live_entries_are_moved_only_while_the_log_is_over_its_bound() -> None:
    values = MemoryValueLog(segment_bytes=4096)
    sm = KVStateMachine(MemoryDB(), None, values, BIG)
    w = Writer(sm)
    keys = [b"k%02d" % i for i in range(20)]
    for i, key in enumerate(keys):
        w.put(key, value(i))
    for i, key in enumerate(keys):
        if i % 5 < 3:  # three of every five: each old segment is less than half live
            w.put(key, value(100 + i))
    live = sum(sm._live.bytes.values())
    assert values.disk_bytes() <= 2 * live + values.segment_bytes
    appended = values.appends
    collect(sm)
    assert values.appends == appended  # within the bound: nothing is moved
    for i, key in enumerate(keys):
        if i % 5:  # four of every five deleted: the log is now far over the bound
            w.delete(key)
    live = sum(sm._live.bytes.values())
    assert values.disk_bytes() > 2 * live + values.segment_bytes
    collect(sm)
    assert values.appends > appended  # the survivors of mostly dead segments moved
    assert values.disk_bytes() <= 2 * live + values.segment_bytes + 1050
    assert [sm.get(key)[0] for key in keys[::5]] == [value(100 + i) for i in range(0, 20, 5)]


def test_a_reopened_state_machine_counts_what_is_live(parts: tuple[Any, Any]) -> None:
    db, values = parts
    sm = KVStateMachine(db, None, values, BIG)
    w = Writer(sm)
    for i in range(12):
        w.put(b"k%d" % (i % 3), value(i))
    reopened = KVStateMachine(db, None, values, BIG)
    assert reopened._live.count == 3
    assert reopened._live.bytes == {s: n for s, n in sm._live.bytes.items() if n}
    assert reopened.get(b"k2") == (value(11), 12)


def test_an_open_snapshot_keeps_its_segments(parts: tuple[Any, Any]) -> None:
    db, values = parts
    sm = KVStateMachine(db, None, values, BIG)
    w = Writer(sm)
    for i in range(6):
        w.put(b"k%d" % i, value(i))
    reader = sm.snapshot_reader()
    for i in range(6):
        w.delete(b"k%d" % i)
    collect(sm)
    items, _ = reader.chunk(None, 1 << 20)
    got = {k: msgpack.unpackb(r)[0] for k, r in items if k.startswith(b"d")}
    assert got == {b"dk%d" % i: value(i) for i in range(6)}
    reader.close()
    assert set(values.sizes) <= {values.active}  # released with the reader


def test_a_value_lost_in_a_crash_is_restored_from_the_log() -> None:
    """Applying does not sync the value log: a power failure can keep a
    record and lose its value, which `repair_values` writes again from the
    chosen value of its slot (a PUT's or a transaction's)."""
    db, values = MemoryDB(), MemoryValueLog()
    sm = KVStateMachine(db, None, values, BIG)
    w = Writer(sm)
    log = {}
    log[0] = (w.cmd(op=Op.PUT, key=b"k", value=value(1)),)
    txn = Txn(success=(TxnOp(TxnOpKind.PUT, b"t", value=value(2)),))
    log[1] = (w.cmd(op=Op.PUT, key=b"small", value=b"x"), w.cmd(op=Op.TXN, txn=txn))
    sm.apply([(0, log[0]), (1, log[1])])
    assert values.dirty and values.syncs == 0
    db.crash(keep=None)  # the records survive (unsynced LevelDB batches) ...
    values.crash()  # ... their values do not
    sm = KVStateMachine(db, None, values.restart(), BIG)
    with pytest.raises(CorruptValue):
        sm.get(b"k")
    assert sm.repair_values(log.get, 0) == 2
    assert sm.get(b"k") == (value(1), 1) and sm.get(b"t") == (value(2), 3)
    values.crash()  # the repair synced what it wrote
    sm = KVStateMachine(db, None, values.restart(), BIG)
    assert sm.repair_values(log.get, 0) == 0 and sm.get(b"t") == (value(2), 3)
    assert sm._live.count == 2


def test_synced_values_need_no_repair_and_below_the_compaction_point_none_is_done() -> None:
    db, values = MemoryDB(), MemoryValueLog()
    sm = KVStateMachine(db, None, values, BIG)
    w = Writer(sm)
    cmd = w.cmd(op=Op.PUT, key=b"k", value=value(1))
    sm.apply([(0, (cmd,))])
    sm.sync_values()  # what the driver does before it persists a compaction point
    db.crash(keep=None)
    values.crash()
    sm = KVStateMachine(db, None, values.restart(), BIG)
    assert sm.repair_values(lambda slot: None, 1) == 0 and sm.get(b"k") == (value(1), 1)
    # Unsynced and no longer in the log: the directory is damaged; said so.
    cmd = w.cmd(op=Op.PUT, key=b"k", value=value(2))
    sm.apply([(1, (cmd,))])
    db.crash(keep=None)
    values.crash()
    sm = KVStateMachine(db, None, values.restart(), BIG)
    with pytest.raises(CorruptValue, match="data directory is damaged"):
        sm.repair_values(lambda slot: None, 0)
    # A chosen value that is not the one the record names restores nothing.
    other = (w.cmd(op=Op.PUT, key=b"k", value=value(3)),)
    with pytest.raises(CorruptValue, match="lost the value of b'k' \\(slot 1\\)"):
        sm.repair_values(lambda slot: other, 0)
    assert sm.repair_values({1: (cmd,)}.get, 0) == 1 and sm.get(b"k") == (value(2), 2)


def test_effects_skip_externalized_values_and_followers_keep_their_index() -> None:
    """A leader's batch that put a value into its own log is not captured
    (its references mean nothing elsewhere); a small overwrite is, and a
    follower whose old record was in its value log drops it from its index."""
    leader = KVStateMachine(MemoryDB(), None, MemoryValueLog(), BIG)
    follower = KVStateMachine(MemoryDB(), None, MemoryValueLog(), BIG)
    lw, commands = Writer(leader), []
    commands.append(lw.cmd(op=Op.PUT, key=b"k", value=value(1)))
    leader.apply([(0, (commands[0],))], capture=True)
    assert leader.take_effects() is None
    follower.apply([(0, (commands[0],))])
    assert follower._live.count == 1
    commands.append(lw.cmd(op=Op.PUT, key=b"k", value=b"small now"))
    leader.apply([(1, (commands[1],))], capture=True)
    effects = leader.take_effects()
    assert effects is not None
    assert follower.apply_effects([(1, (commands[1],))], effects)
    assert follower._live.count == 0
    assert list(follower._db.iterator(prefix=follower._gen.values)) == []
    assert follower.get(b"k") == (b"small now", 2) and follower.checksum() == leader.checksum()


def test_a_snapshot_item_that_names_the_value_log_is_refused() -> None:
    sm = KVStateMachine(MemoryDB())
    record = msgpack.packb([msgpack.ExtType(1, b"\0" * 20), 1, 1])
    sm.install_begin(b"s", 1, 1)
    with pytest.raises(ValueError, match="malformed data record"):
        sm.install_chunk([(b"dk", record)])


def test_the_threshold_comes_from_the_storage_table(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text("[storage]\nvalue_log_min_bytes = 0\n")
    assert load_storage_settings(path).value_log_min_bytes == 0
    path.write_text("")
    assert load_storage_settings(path).value_log_min_bytes == VALUE_LOG_MIN_BYTES
    path.write_text("[storage]\nvalue_log_min_bytes = -1\n")
    with pytest.raises(ConfigError, match="value_log_min_bytes must be an integer >= 0"):
        load_storage_settings(path)


def test_the_vote_log_threshold_comes_from_the_storage_table(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text("")
    assert load_storage_settings(path).vote_log_min_bytes == VOTE_LOG_MIN_BYTES == 1
    path.write_text("[storage]\nvote_log_min_bytes = 0\nvalue_log_min_bytes = 0\n")
    assert load_storage_settings(path).vote_log_min_bytes == 0
    path.write_text("[storage]\nvote_log_min_bytes = 5000\n")
    assert load_storage_settings(path).vote_log_min_bytes == 5000
    assert load_storage_settings(path).value_log_min_bytes == VALUE_LOG_MIN_BYTES
    path.write_text("[storage]\nvote_log_min_bytes = true\n")
    with pytest.raises(ConfigError, match="vote_log_min_bytes must be an integer >= 0"):
        load_storage_settings(path)


def test_zero_keeps_every_value_in_leveldb(parts: tuple[Any, Any]) -> None:
    db, values = parts
    sm = KVStateMachine(db, None, values, 0)
    Writer(sm).put(b"k", value(1, 50_000))
    assert stored_fields(sm, b"k")[0] == value(1, 50_000)
    assert not values.sizes and sm.get(b"k") == (value(1, 50_000), 1)


def test_watch_events_keep_replaced_values_in_the_log(parts: tuple[Any, Any]) -> None:
    """An overwritten value whose PUT event is still kept stays in the value
    log for the event (PUT_IN_LOG) instead of being copied into LevelDB;
    trimming the event frees it, and garbage collection moves it."""
    db, values = parts
    sm = KVStateMachine(db, (4, 1 << 20), values, BIG)  # four events kept
    w = Writer(sm)
    for i in range(4):
        w.put(b"k", value(i, 2000))
    events, _ = sm.watch_events(1, b"k", None, prev_kv=True)
    assert [e.value for e in events] == [value(i, 2000) for i in range(4)]
    assert [e.prev_value for e in events] == [None] + [value(i, 2000) for i in range(3)]
    assert sm._live.count == 4  # the record's and three events'
    assert len(list(db.iterator(prefix=b"rw"))) == 3
    collect(sm)  # moves the events' values out of mostly dead segments
    events, _ = sm.watch_events(1, b"k", None)
    assert [e.value for e in events] == [value(i, 2000) for i in range(4)]
    for i in range(4, 8):
        w.put(b"k", value(i, 2000))
    assert sm._live.count == 4 and sm.events.floor == 5
    collect(sm)
    events, _ = sm.watch_events(5, b"k", None)
    assert [e.value for e in events] == [value(i, 2000) for i in range(4, 8)]
    assert values.disk_bytes() <= 2 * 4 * 2050 + values.segment_bytes + 2050
    reopened = KVStateMachine(db, (4, 1 << 20), values, BIG)
    assert reopened._live.count == 4


def test_a_segment_lost_whole_is_never_numbered_again() -> None:
    """A segment that was never synced may be gone after a power failure,
    file and all; the records naming it are restored into a segment with a
    higher number, so no new entry takes an old reference's place."""
    db, values = MemoryDB(), MemoryValueLog(segment_bytes=2000)  # two entries each
    sm = KVStateMachine(db, None, values, BIG)
    w = Writer(sm)
    log = {}
    for slot in range(3):
        log[slot] = (w.cmd(op=Op.PUT, key=b"k%d" % slot, value=value(slot)),)
        sm.apply([(slot, log[slot])])
        if slot == 0:
            sm.sync_values()
    assert sorted(values.sizes) == [1, 2]
    db.crash(keep=None)
    values.crash()  # segment 1 was synced when it was closed, segment 2 never
    assert sorted(values.sizes) == [1]
    sm = KVStateMachine(db, None, values.restart(), BIG)
    assert values.active == 3
    assert sm.repair_values(log.get, 0) == 1
    assert [sm.get(b"k%d" % i)[0] for i in range(3)] == [value(i) for i in range(3)]
    reopened = KVStateMachine(db, None, values.restart(), BIG)
    assert reopened._live.count == 3 and reopened.repair_values(log.get, 0) == 0


def _many_events_of_one_record(parts: tuple[Any, Any]) -> KVStateMachine:
    """Large values of six keys written in one apply (one event log record),
    replaced in one apply (six events of that record take their old values'
    references in one batch), then moved by garbage collection (six
    references in one record renamed in one batch); returns the machine
    after the values were read back."""
    db, values = parts
    sm = KVStateMachine(db, (100, 1 << 20), values, BIG)
    w = Writer(sm)
    keys = [b"k%d" % i for i in range(6)]
    w.run(*(w.cmd(op=Op.PUT, key=k, value=value(i, 2000)) for i, k in enumerate(keys)))
    assert len(list(db.iterator(prefix=EVENT_PREFIX))) == 1
    w.run(*(w.cmd(op=Op.PUT, key=k, value=value(10 + i, 2000)) for i, k in enumerate(keys)))
    for i in range(20):  # dead values, so that the first segments are collected
        w.put(b"other", value(100 + i, 2000))
    collect(sm)
    events, _ = sm.watch_events(1, b"k", b"l")
    assert [e.value for e in events] == [value(i, 2000) for i in (*range(6), *range(10, 16))]
    return sm


def test_several_events_of_one_record_change_in_one_batch(parts: tuple[Any, Any]) -> None:
    sm = _many_events_of_one_record(parts)
    assert len(list(sm._db.iterator(prefix=b"rw"))) == 6 + 19  # the events' ("other": 19)
    assert sm._live.count == 6 + 19 + 7  # the events', the records'


class _RewritesEachChange(EventLog):
    """A broken event log: each change of a record rereads it from LevelDB,
    which does not see the batch, so the batch keeps only the last."""

    def _edit(self, db_key: bytes, raw: bytes | None = None) -> Any:
        self._edits.pop(db_key, None)
        return super()._edit(db_key, raw)


def test_a_record_rewritten_per_change_loses_references(
    parts: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above fails for a log that rewrites a record per change."""
    monkeypatch.setattr("kvstore.statemachine.EventLog", _RewritesEachChange)
    with pytest.raises((AssertionError, CorruptValue)):
        _many_events_of_one_record(parts)


def test_events_in_the_layout_before_records_are_migrated(parts: tuple[Any, Any]) -> None:
    """A data directory of the release before records: one LevelDB record
    per event, value log references naming those (13-byte) keys. Opening it
    rewrites the events as records with their references renamed, and they
    read, trim and are collected as before."""
    db, values = parts
    sm = KVStateMachine(db, (100, 1 << 20), values, BIG)
    w = Writer(sm)
    for i in range(3):
        w.put(b"k", value(i, 2000))
    w.run(w.cmd(op=Op.PUT, key=b"a", value=b"1"), w.cmd(op=Op.DELETE, key=b"a"))
    before = sm.watch_events(1, b"\0", None, prev_kv=True)
    span, live = sm.events.span, sm._live.count
    old_ids = {}
    last, index = -1, 0
    for db_key, raw in list(db.iterator(prefix=EVENT_PREFIX)):
        db.delete(db_key)
        for n, event in enumerate(record_events(raw)):
            index = index + 1 if event[0] == last else 0
            last = event[0]
            old_key = b"w" + struct.pack(">QI", event[0], index)
            db.put(old_key, msgpack.packb(event[1:], use_bin_type=True))
            old_ids[db_key + struct.pack(">I", n)] = old_key
    for index_key, item in list(db.iterator(prefix=b"rw")):
        db.put(index_key, item[: len(item) - 13] + old_ids[item[len(item) - 13 :]])
    reopened = KVStateMachine(db, (100, 1 << 20), values, BIG)
    assert list(db.iterator(prefix=b"w")) == []
    assert reopened.watch_events(1, b"\0", None, prev_kv=True) == before
    assert reopened.events.floor == span[0] and reopened.events.count == span[1] == 5
    assert reopened._live.count == live == 3
    assert all(
        reopened.events.event_of(item[-13:]) == b"k" for _, item in db.iterator(prefix=b"rw")
    )
    w.sm = reopened
    for i in range(3, 30):
        w.put(b"other", value(i, 2000))
    collect(reopened)
    events, _ = reopened.watch_events(1, b"k", None)
    assert [e.value for e in events] == [value(i, 2000) for i in range(3)]
