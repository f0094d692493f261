"""The watch event log: what each revision changed, kept per replica in its
LevelDB for a bounded retention, so that a watcher can resume from a
revision (kvctl watch --rev N).

Theory of operation
-------------------
Applying a command that changes keys (kvstore/statemachine.py) records one
event per key it changed, at the command's revision, in the same batch as
the change itself: PUT (key, value, version = mod revision, create
revision) or DELETE (key), with the key's mod revision before the change
(0: it did not exist). The events of one apply are stored together, as
records of whole revisions (a record holds up to RECORD_EVENTS events or
RECORD_BYTES of keys and values, more only when one revision has more):

    W + the record's last revision (8 bytes BE) -> a header (flags: 1 if
        an event holds a value log reference; the event count, u32 BE)
        + msgpack [[revision, kind (0 put, 1 delete), key, value (None
        for a delete), version, create_revision, prev_revision], ...]
    m + b"watch" -> 24 bytes: floor, count, bytes (three big-endian u64)

Why records: one LevelDB key per event cost each replica ~3.5 us per
event to store and trim (a key, a msgpack call, a put, and a read and a
delete when trimmed), the largest part of a write's cost in the watch
log; a record of 25 events costs ~1.5 us per event (benchmarks/README.md,
"Session 22"). A record is found from a revision by one seek (the first
key at or above it: its key is its last revision), and no record holds
revisions on both sides of the floor. The span's bytes count each
record's bytes and its key's 8. An event migrated from the layout before
records (`w` + revision + index: `_migrate`, once, when the data
directory is opened) or written by the release before previous values
has prev_revision PREV_UNKNOWN.

`floor` is the oldest revision whose events are all here: every revision
from the floor up to the state machine's revision is complete, so a
watcher may start anywhere in [floor, revision + 1]; below it the answer
is "compacted, the oldest available is <floor>". Retention is bounded by
count and bytes (`retain_events`, `retain_bytes`): each apply that adds
events deletes the oldest whole records while the log is over either
bound (until it has deleted twice as many events as it added, plus a
few, so one apply stays cheap and the log converges), raising the floor
past them. Events are not part
of the replicated state: two replicas may keep different spans, but the
events of a revision are the same everywhere (they come from the same
command applied to the same state). They are independent of log
compaction (which deletes Paxos slots, not these), and a snapshot install,
which jumps the state forward without the revisions in between, raises
the floor to the snapshot's revision + 1 in its flip batch; the events
below it are deleted by the trimming that follows.

Reads scan from a revision in key order of the log (revision order),
filter by [key, range_end), and stop at a revision boundary once the
batch holds enough (a revision is never split: the watcher's cursor is a
revision), or once `MAX_WATCH_SCAN` events were looked at, so a watcher of
a rare key never makes one read long.

Previous values (a watcher's prev_kv) are found at read time, not kept
twice: the write path only adds the previous mod revision P to each event
(a few bytes; the apply already read the old record), and a read that asks
for them looks up the event of the same key at revision P, which holds the
value written then (a key has at most one event per revision): one seek
to the record that holds P. So an
overwrite costs no second copy of its value in the byte-bounded log, and
writers that nobody watches with prev_kv pay nothing more. The price: once
revision P is trimmed from this replica's log, the previous value is gone
(the event says `prev_revision` P with `prev_value` None, "no longer
kept"), even while the event itself is still kept; a key rewritten rarely
on a busy store loses it first. A read decodes the record of a revision P
once (the PUTs of all its revisions kept in a dict), and the events it
looks at for previous values count toward `MAX_WATCH_SCAN`, checked at
revision boundaries as the rest.

Large values
------------
A value over INLINE_VALUE_BYTES is not written a third time (after the
vote and the key's record): its PUT event is stored as PUT_IN_RECORD with
no value, and a read takes the value from the key's record, which is at
that revision. When the key changes again (overwritten, deleted, expired
with its lease), the apply that changes it copies the old value into the
old event (rewriting its record), in the same batch, if that revision is
still kept. So at any
time a PUT_IN_RECORD event of revision R has its key's record at R, and a
read that finds otherwise (only possible for revisions an install left
below the floor, which previous-value lookups may still touch) answers
"no longer kept". A value overwritten within the retention window is thus
still written twice, later; one overwritten after its event was trimmed
(large values fill the byte-bounded log fast) only once. Measured (PUT
p50, one client, 100 keys): 100 KiB 6.2-7.0 -> 5.1-5.3 ms, 1 MiB 43-46 ->
31-34 ms (benchmarks/README.md, "Speed"). Events are not replicated state:
this is each replica's own layout, and an older release cannot read it.

When the replaced value is in the replica's value log (kvstore/values.py:
the record held a reference), it is not copied either: the event becomes
PUT_IN_LOG and keeps the reference, with an index entry that keeps the
value live (`ValueRefs.keep`, kvstore/statemachine.py `_EventRefs`) until
trimming deletes the event (`ValueRefs.drop`); the value log's garbage
collection moves such a value like a record's (`repoint`). The span's
bytes count the value such an event keeps, so `retain_bytes` bounds the
history kept in the value log as it bounds the event log. A value is thus
written once however often it is overwritten while watched. The index
entry names the event by its record's key and its index there (13
bytes), so several events of one record may change in one batch (an
apply that replaces several values, a garbage collection step): the
record is decoded once, changed in memory (`_edit`) and put once at the
end (`_flush_edits`, `flush`), since LevelDB's reads do not see a batch
(tests/unit/test_values.py shows a log that rewrites a record per change
losing references).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgpack

from kvstore.protocol import PREV_UNKNOWN
from kvstore.values import ref_length

if TYPE_CHECKING:  # the driver imports this module and must not import plyvel
    import plyvel

EVENT_PREFIX = b"W"
OLD_EVENT_PREFIX = b"w"
"""One LevelDB record per event: the layout before records (migrated at open)."""
WATCH_META_KEY = b"mwatch"
_RECORD_KEY = struct.Struct(">Q")
_EVENT_ID = struct.Struct(">I")
_HEADER = struct.Struct(">BI")
_OLD_EVENT_KEY = struct.Struct(">QI")
_WATCH_META = struct.Struct(">QQQ")
_IN_LOG = 1  # header flag: some event of the record is PUT_IN_LOG

PUT, DELETE = 0, 1
PUT_IN_RECORD = 2
"""The stored kind of a PUT event whose value is not copied into the event
log: it is the key's data record while that record is at the event's
revision (see "Large values" in the module doc)."""
PUT_IN_LOG = 3
"""The stored kind of a PUT event whose value is in the replica's value
log (kvstore/values.py): field 3 holds the reference (see "Large values")."""
INLINE_VALUE_BYTES = 1024
"""A PUT event keeps a value up to this size itself; a larger one stays in
the key's record until the key changes again."""
_PACK = msgpack.Packer(use_bin_type=True).pack  # see kvstore/statemachine.py

WATCH_RETAIN_EVENTS = 20_000
"""Events kept by default (each replica for itself): a retained tail of
history, like the log's (`[compaction]` `retained_slots`), so a replica's
disk stays bounded by its live data plus these tails (issue 11)."""
WATCH_RETAIN_BYTES = 2 * 1024 * 1024
"""... and at most about this many bytes of them (keys, values, framing)."""
MAX_WATCH_EVENTS = 1_000
"""Events one watch reply carries, about (a revision is never split)."""
MAX_WATCH_BYTES = 1024 * 1024
"""... and about this many bytes of keys and values."""
MAX_WATCH_SCAN = 10_000
"""Events looked at for one reply (a filtered watcher moves on anyway)."""
RECORD_EVENTS = 128
"""A record holds about this many events at most (whole revisions: one
revision of more events is one record) ..."""
RECORD_BYTES = 32 * 1024
"""... and about this many bytes of keys and values, so that trimming,
which deletes whole records, stays fine-grained."""
_TRIM_SLACK = 64
_EVENT_END = b"X"  # EVENT_PREFIX + 1
_OLD_EVENT_END = b"x"


def event_key(revision: int) -> bytes:
    """The key of the first record that may hold events of `revision` (and
    the end of the records of earlier revisions only)."""
    return EVENT_PREFIX + _RECORD_KEY.pack(revision)


def record_count(raw: bytes) -> int:
    """The number of events of a stored record."""
    return _HEADER.unpack_from(raw)[1]


def record_events(raw: bytes) -> list[list[Any]]:
    """The events of a stored record: [revision, kind, key, value, version,
    create_revision, prev_revision] each (see the module doc)."""
    return msgpack.unpackb(memoryview(raw)[_HEADER.size :], raw=False)


def valid_record(key: Any, raw: Any) -> bool:
    """Whether (`key`, `raw`) looks like a stored record: the shape a
    follower checks in a leader's effects before it stores them."""
    return (
        type(key) is bytes
        and type(raw) is bytes
        and len(key) == 1 + _RECORD_KEY.size
        and key[:1] == EVENT_PREFIX
        and len(raw) > _HEADER.size
        and raw[0] in (0, _IN_LOG)
    )


class ValueRefs(Protocol):
    """The value log as the event log uses it (kvstore/statemachine.py)."""

    def read(self, ref: bytes) -> bytes: ...
    def keep(self, batch: Any, ref: bytes, event: bytes) -> None: ...
    def rename(self, batch: Any, ref: bytes, event: bytes) -> None: ...
    def drop(self, batch: Any, ref: bytes) -> None: ...


class Event(NamedTuple):
    """One change: at `revision`, `key` was PUT (with `value`, `version`
    = the revision, and `create_revision`) or DELETEd. `prev_revision` and
    `prev_value` are filled when a read asks for previous values, as
    `kvstore.protocol.WatchEvent` says; else PREV_UNKNOWN and None."""

    revision: int
    kind: int
    key: bytes
    value: bytes | None
    version: int
    create_revision: int
    prev_revision: int = PREV_UNKNOWN
    prev_value: bytes | None = None


class _Span(NamedTuple):
    floor: int
    count: int
    bytes: int


def _in_range(key: bytes, start: bytes, end: bytes | None) -> bool:
    return start <= key and (end is None or key < end)


def _pack_record(events: list[Any], flags: int = 0) -> bytes:
    return _HEADER.pack(flags, len(events)) + _PACK(events)


class EventLog:
    """The event log of one replica's state machine (see the module doc)."""

    def __init__(
        self,
        db: plyvel.DB,
        revision: int,
        retain_events: int = WATCH_RETAIN_EVENTS,
        retain_bytes: int = WATCH_RETAIN_BYTES,
        value_at: Callable[[bytes, int], bytes | None] | None = None,
        refs: ValueRefs | None = None,
    ) -> None:
        """`value_at(key, revision)`: the value of the key's record if that
        record is at `revision`, else None (PUT_IN_RECORD events); without
        it every value is kept in the log. `refs`: the value log, where
        PUT_IN_LOG events keep their values."""
        if retain_events < 1 or retain_bytes < 1:
            raise ValueError("the watch retention must keep at least one event and byte")
        self._db = db
        self._value_at = value_at
        self._refs = refs
        self.retain_events = retain_events
        self.retain_bytes = retain_bytes
        # Records rewritten in a batch not yet written: db key -> [flags,
        # events, stored length] (`_edit`, written by `_flush_edits`).
        self._edits: dict[bytes, list[Any]] = {}
        raw = db.get(WATCH_META_KEY)
        # A data directory from before watch: events from the next revision on.
        self._span = _Span(revision + 1, 0, 0) if raw is None else _Span(*_WATCH_META.unpack(raw))
        self._migrate()
        # The oldest revision that may still have events here: trimming
        # seeks to it instead of walking the tombstones of every record it
        # deleted before (LevelDB keeps them until its compactions run).
        self._oldest = 0
        for _, raw in db.iterator(start=EVENT_PREFIX, stop=_EVENT_END):
            self._oldest = record_events(raw)[0][0]
            break

    def _migrate(self) -> None:
        """Rewrites the events of the layout before records (one LevelDB
        record per event, under OLD_EVENT_PREFIX) as records, in one synced
        batch; the value log's index entries of PUT_IN_LOG events are
        renamed to the new events. The span is recounted."""
        old = self._db.iterator(start=OLD_EVENT_PREFIX, stop=_OLD_EVENT_END)
        first = next(old, None)
        if first is None:
            return
        batch = self._db.write_batch(sync=True)
        floor = self._span.floor
        count = size = 0
        chunk: list[Any] = []
        chunk_bytes = 0
        last = -1

        def finish() -> None:
            nonlocal count, size
            key = event_key(last)
            flags = _IN_LOG if any(e[1] == PUT_IN_LOG for e in chunk) else 0
            raw = _pack_record(chunk, flags)
            batch.put(key, raw)
            count += len(chunk)
            size += len(raw) + _RECORD_KEY.size
            for index, event in enumerate(chunk):
                if event[1] == PUT_IN_LOG:
                    self._refs.rename(batch, event[3], key + _EVENT_ID.pack(index))  # type: ignore[union-attr]
                    size += ref_length(event[3])

        for db_key, raw in itertools.chain((first,), old):
            batch.delete(db_key)
            revision = _OLD_EVENT_KEY.unpack_from(db_key, 1)[0]
            if (
                revision != last
                and chunk
                and (
                    len(chunk) >= RECORD_EVENTS
                    or chunk_bytes >= RECORD_BYTES
                    or last < floor <= revision  # no record on both sides of the floor
                )
            ):
                finish()
                chunk, chunk_bytes = [], 0
            last = revision
            fields = msgpack.unpackb(raw, raw=False)
            if len(fields) < 6:  # a release before previous values
                fields.append(PREV_UNKNOWN)
            chunk.append([revision, *fields])
            chunk_bytes += len(raw)
        if chunk:
            finish()
        self._span = _Span(floor, count, size)
        batch.put(WATCH_META_KEY, _WATCH_META.pack(*self._span))
        batch.write()  # LevelDB's own compactions drop the old records' tombstones

    @property
    def floor(self) -> int:
        """The oldest revision a watcher can start from."""
        return self._span.floor

    @property
    def oldest(self) -> int:
        """No event below this revision is left (they may still hold disk
        until LevelDB compacts their range: replica/server.py)."""
        return self._oldest

    @property
    def count(self) -> int:
        return self._span.count

    def append(
        self,
        batch: plyvel.WriteBatch,
        events: Iterable[tuple[Any, ...]],
        final: dict[bytes, Any] | None = None,
        replaced: Iterable[tuple[bytes, bytes, int]] = (),
        stored: list[bytes] | None = None,
        replaced_refs: Iterable[tuple[bytes, bytes, int]] = (),
    ) -> None:
        """Adds `events` ((revision, kind, key, value, version, create,
        prev_revision), in order) to `batch` as records, then trims the
        oldest records over retention. `final`: each changed key's record
        after this batch (None: deleted); a large value stays in it when it
        is still at the event's revision. `replaced`: (key, value, revision)
        of each large value this batch replaced in a record; still-kept
        events of those revisions get their value copied in. `stored`, if
        given, gets each new record's key and bytes (for `store` on another
        replica: kvstore/statemachine.py, "Effects"). `replaced_refs`: (key,
        reference, revision) of each large value this batch replaced that
        is in the value log; still-kept events of those revisions take the
        reference (PUT_IN_LOG)."""
        entries: list[bytes] = []
        chunk: list[Any] = []
        chunk_bytes = 0
        last = -1
        inline = final is None or self._value_at is None
        for event in events:
            revision = event[0]
            if revision != last:
                if len(chunk) >= RECORD_EVENTS or chunk_bytes >= RECORD_BYTES:
                    entries.append(event_key(last))
                    entries.append(_pack_record(chunk))
                    chunk, chunk_bytes = [], 0
                last = revision
            value = event[3]
            if value is not None:
                if not inline and event[1] == PUT and len(value) > INLINE_VALUE_BYTES:
                    record = final.get(event[2])  # type: ignore[union-attr]
                    if record is not None and record[1] == revision:
                        event = (revision, PUT_IN_RECORD, event[2], None, *event[4:])
                        value = b""
                chunk_bytes += len(value)
            chunk.append(event)
        if chunk:
            entries.append(event_key(last))
            entries.append(_pack_record(chunk))
        if stored is not None:
            stored += entries
        self.store(batch, entries, replaced, replaced_refs)

    def store(
        self,
        batch: plyvel.WriteBatch,
        entries: list[bytes],
        replaced: Iterable[tuple[bytes, bytes, int]] = (),
        replaced_refs: Iterable[tuple[bytes, bytes, int]] = (),
    ) -> None:
        """The second half of `append`: puts the new records `entries`
        (record key, record, record key, record, ...) into `batch`, trims,
        copies the `replaced` values and records the span."""
        floor, count, size = self._span
        added = 0
        put = batch.put
        records = entries[1::2]
        for key, raw in zip(entries[::2], records, strict=True):
            put(key, raw)
            added += _HEADER.unpack_from(raw)[1]
        count += added
        size += sum(map(len, records)) + len(records) * _RECORD_KEY.size
        if added:
            span = self._trim(batch, _Span(floor, count, size), 2 * added + _TRIM_SLACK)
            floor, count, size = span
        for key, value, revision in replaced:
            if revision >= self._oldest:  # after the trim: its event may be kept
                size += self._copy_value(batch, key, value, revision)
        for key, ref, revision in replaced_refs:
            if revision >= self._oldest:
                size += self._copy_value(batch, key, ref, revision, in_log=True)
        size += self._flush_edits(batch)
        self._span = _Span(floor, count, size)
        if added or replaced or replaced_refs:
            batch.put(WATCH_META_KEY, _WATCH_META.pack(*self._span))

    def _record_at(self, revision: int) -> tuple[bytes, bytes] | None:
        """(db key, stored bytes) of the record that holds `revision`'s
        events if it has any (else the next record, or None)."""
        for item in self._db.iterator(start=event_key(revision), stop=_EVENT_END):
            return item
        return None

    def _edit(self, db_key: bytes, raw: bytes | None = None) -> list[Any] | None:
        """The record `db_key` to change in the current batch: [flags,
        events, stored length], the same list for every change until
        `_flush_edits` (several events of one record may change in one
        batch, which LevelDB's reads do not see). None if there is none."""
        edit = self._edits.get(db_key)
        if edit is None:
            if raw is None:
                raw = self._db.get(db_key)
                if raw is None:
                    return None
            edit = self._edits[db_key] = [raw[0], record_events(raw), len(raw)]
        return edit

    def _flush_edits(self, batch: plyvel.WriteBatch) -> int:
        """Puts the records changed since the last call into `batch`; returns
        the bytes they added."""
        added = 0
        for db_key, (flags, events, length) in self._edits.items():
            raw = _pack_record(events, flags)
            batch.put(db_key, raw)
            added += len(raw) - length
        self._edits.clear()
        return added

    def flush(self, batch: plyvel.WriteBatch) -> None:
        """Puts the records `repoint` changed into `batch`: the caller's last
        step before it writes the batch."""
        self._flush_edits(batch)

    def _copy_value(
        self,
        batch: plyvel.WriteBatch,
        key: bytes,
        value: bytes,
        revision: int,
        in_log: bool = False,
    ) -> int:
        """Writes `value` (`in_log`: a value log reference) into the
        PUT_IN_RECORD event of `key` at `revision`, if there is one (the
        record is put by `_flush_edits`); returns the bytes it added to the
        span beside the record's growth (a reference counts the value it
        keeps in the value log)."""
        found = self._record_at(revision)
        if found is None:
            return 0
        edit = self._edit(*found)
        assert edit is not None
        for index, event in enumerate(edit[1]):
            if event[0] != revision or event[2] != key:
                continue
            if event[1] != PUT_IN_RECORD:
                return 0
            event[1], event[3] = (PUT_IN_LOG if in_log else PUT), value
            if not in_log:
                return 0
            edit[0] |= _IN_LOG
            self._refs.keep(batch, value, found[0] + _EVENT_ID.pack(index))  # type: ignore[union-attr]
            return ref_length(value)
        return 0

    def _event(self, event: bytes) -> tuple[list[Any], list[Any]] | None:
        """(record edit, the event's fields) of the event id `event` (record
        key + index), or None."""
        edit = self._edit(event[: 1 + _RECORD_KEY.size])
        if edit is None:
            return None
        index = _EVENT_ID.unpack_from(event, 1 + _RECORD_KEY.size)[0]
        return (edit, edit[1][index]) if index < len(edit[1]) else None

    def event_of(self, event: bytes) -> bytes | None:
        """The key of the stored event `event` (its id: record key + index),
        or None."""
        found = self._event(event)
        return None if found is None else found[1][2]

    def repoint(self, batch: plyvel.WriteBatch, event: bytes, ref: bytes, new: bytes) -> bool:
        """The value log moved the value of PUT_IN_LOG event `event` from
        `ref` to `new`: the event takes the new reference (in the record
        that `flush` puts). False if the event is gone or holds another
        value."""
        found = self._event(event)
        if found is None:
            return False
        fields = found[1]
        if fields[1] != PUT_IN_LOG or fields[3] != ref:
            return False
        fields[3] = new
        return True

    def _stored_value(self, kind: int, key: bytes, value: bytes | None, revision: int):  # noqa: ANN202
        """(kind, value) of a stored event as the reader sees it."""
        if kind == PUT_IN_LOG:
            return PUT, self._refs.read(value)  # type: ignore[union-attr, arg-type]
        if kind != PUT_IN_RECORD:
            return kind, value
        found = None if self._value_at is None else self._value_at(key, revision)
        return PUT, found

    def _trim(self, batch: plyvel.WriteBatch, span: _Span, budget: int) -> _Span:
        """Deletes whole records, oldest first, while over retention (or
        below the floor), within `budget` events (a record is finished)."""
        floor, count, size = span
        if self._oldest >= floor and count <= self.retain_events and size <= self.retain_bytes:
            return span  # nothing to delete: no iterator (a seek per apply)
        oldest = self._oldest
        for db_key, raw in self._db.iterator(start=event_key(oldest), stop=_EVENT_END):
            last = _RECORD_KEY.unpack_from(db_key, 1)[0]
            over = count > self.retain_events or size > self.retain_bytes
            if last >= floor and not over:
                # No record holds revisions on both sides of the floor
                # (an install's and trimming's floors are record bounds).
                oldest = max(oldest, floor)
                break
            if budget <= 0:
                break
            flags, events = _HEADER.unpack_from(raw)
            batch.delete(db_key)
            count -= events
            size -= len(raw) + _RECORD_KEY.size
            if flags & _IN_LOG:
                for event in record_events(raw):
                    if event[1] == PUT_IN_LOG:
                        self._refs.drop(batch, event[3])  # type: ignore[union-attr]
                        size -= ref_length(event[3])
            budget -= events
            floor = max(floor, last + 1)
            oldest = last + 1
        self._oldest = oldest
        return _Span(floor, count, size)

    @property
    def span(self) -> tuple[int, int, int]:
        """(floor, count, size): what the `mwatch` record holds."""
        return tuple(self._span)  # type: ignore[return-value]

    def raise_floor(self, batch: plyvel.WriteBatch, revision: int) -> None:
        """A snapshot install jumps to `revision` with `batch`: events start after it."""
        self._span = self._span._replace(floor=max(self._span.floor, revision + 1))
        batch.put(WATCH_META_KEY, _WATCH_META.pack(*self._span))

    def read(
        self,
        start: int,
        key: bytes,
        end: bytes | None,
        revision: int,
        max_events: int = MAX_WATCH_EVENTS,
        max_bytes: int = MAX_WATCH_BYTES,
        prev_kv: bool = False,
    ) -> tuple[list[Event], int] | None:
        """The events in [key, end) (end None: no end) from revision
        `start` on, and the revision to ask from next; None when `start`
        is below the floor (compacted). `revision`: the state machine's.
        `prev_kv`: with previous values (see the module doc)."""
        if start < self.floor:
            return None
        found: list[Event] = []
        size = 0
        current = None
        scanned = 0
        prev = _PrevValues(self, self._oldest) if prev_kv else None
        for _, raw in self._db.iterator(start=event_key(start), stop=_EVENT_END):
            for fields in record_events(raw):
                rev = fields[0]
                if rev < start:
                    continue
                if rev != current:
                    full = len(found) >= max_events or size >= max_bytes
                    looked = scanned + (0 if prev is None else prev.scanned)
                    if current is not None and (full or looked >= MAX_WATCH_SCAN):
                        return found, current + 1
                    current = rev
                scanned += 1
                k = fields[2]
                if _in_range(k, key, end):
                    kind, value = self._stored_value(fields[1], k, fields[3], rev)
                    if prev is None:
                        found.append(Event(rev, kind, k, value, fields[4], fields[5]))
                    else:
                        before = prev.of(k, fields[6] if len(fields) > 6 else PREV_UNKNOWN)
                        found.append(Event(rev, kind, k, value, fields[4], fields[5], *before))
                        size += len(before[1] or b"")
                    size += len(k) + len(value or b"")
        return found, revision + 1


class _PrevValues:
    """The previous values of one read: the value of a key at revision P
    is the value of its event at P (a PUT: the key existed after P). The
    record that holds P is read once, and the PUTs of every revision in it
    kept for the rest of the read."""

    def __init__(self, log: EventLog, oldest: int) -> None:
        self._log = log
        self._oldest = oldest  # nothing below it is left
        self._puts: dict[int, dict[bytes, tuple[int, Any]]] = {}
        self.scanned = 0  # events looked at in the records read

    def of(self, key: bytes, prev_revision: int) -> tuple[int, bytes | None]:
        """(prev_revision, prev_value) of an event of `key` (see WatchEvent)."""
        if prev_revision <= 0:  # a create (0), or an event without it
            return prev_revision, None
        return prev_revision, self._value(prev_revision, key)

    def _value(self, revision: int, key: bytes) -> bytes | None:
        if revision not in self._puts:
            self._puts[revision] = {}
            found = self._log._record_at(revision) if revision >= self._oldest else None
            if found is not None:  # every revision of a record is in it whole
                events = record_events(found[1])
                self.scanned += len(events)
                for rev, kind, k, value, *_ in events:
                    puts = self._puts.setdefault(rev, {})
                    if kind != DELETE:
                        puts[k] = (kind, value)
        stored = self._puts[revision].get(key)
        if stored is None:
            return None
        kind, value = self._log._stored_value(stored[0], key, stored[1], revision)
        return value if kind == PUT else None
