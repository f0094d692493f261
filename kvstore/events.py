"""The watch event log: what each revision changed, kept per replica in its
LevelDB for a bounded retention, so that a watcher can resume from a
revision (kvctl watch --rev N).

Theory of operation
-------------------
Applying a command that changes keys (kvstore/statemachine.py) records one
event per key it changed, at the command's revision, in the same batch as
the change itself: PUT (key, value, version = mod revision, create
revision) or DELETE (key), with the key's mod revision before the change
(0: it did not exist). Keys:

    w + revision (8 bytes BE) + index in the revision (4 bytes BE) -> msgpack
        [kind (0 put, 1 delete), key, value (None for a delete), version,
         create_revision, prev_revision]

(an event of a release before previous values has no prev_revision: it
reads as PREV_UNKNOWN).
    m + b"watch" -> 24 bytes: floor, count, bytes (three big-endian u64)

`floor` is the oldest revision whose events are all here: every revision
from the floor up to the state machine's revision is complete, so a
watcher may start anywhere in [floor, revision + 1]; below it the answer
is "compacted, the oldest available is <floor>". Retention is bounded by
count and bytes (`retain_events`, `retain_bytes`): each apply that adds
events deletes the oldest whole revisions while the log is over either
bound (at most twice as many events as it added, plus a few, so one apply
stays cheap and the log converges), raising the floor. Events are not part
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
value written then (a key has at most one event per revision): a point
read of P's first event, a scan of P only when it has several. So an
overwrite costs no second copy of its value in the byte-bounded log, and
writers that nobody watches with prev_kv pay nothing more. The price: once
revision P is trimmed from this replica's log, the previous value is gone
(the event says `prev_revision` P with `prev_value` None, "no longer
kept"), even while the event itself is still kept; a key rewritten rarely
on a busy store loses it first. A read scans a revision P of several
events once (its PUTs kept in a dict), and the events it looks at for
previous values count toward `MAX_WATCH_SCAN`, checked at revision
boundaries as the rest.

Large values
------------
A value over INLINE_VALUE_BYTES is not written a third time (after the
vote and the key's record): its PUT event is stored as PUT_IN_RECORD with
no value, and a read takes the value from the key's record, which is at
that revision. When the key changes again (overwritten, deleted, expired
with its lease), the apply that changes it copies the old value into the
old event, in the same batch, if that revision is still kept. So at any
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
written once however often it is overwritten while watched.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgpack

from kvstore.protocol import PREV_UNKNOWN
from kvstore.values import ref_length

if TYPE_CHECKING:  # the driver imports this module and must not import plyvel
    import plyvel

EVENT_PREFIX = b"w"
WATCH_META_KEY = b"mwatch"
_EVENT_KEY = struct.Struct(">QI")
_WATCH_META = struct.Struct(">QQQ")

PUT, DELETE = 0, 1
PUT_IN_RECORD = 2
"""The stored kind of a PUT event whose value is not copied into the event
log: it is the key's data record while that record is at the event's
revision (see "Large values" in the module doc)."""
PUT_IN_LOG = 3
"""The stored kind of a PUT event whose value is in the replica's value
log (kvstore/values.py): field 2 holds the reference (see "Large values")."""
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
_TRIM_SLACK = 64
_EVENT_END = b"x"  # EVENT_PREFIX + 1


def event_key(revision: int) -> bytes:
    """The key of the first event of `revision` (and the end of those before)."""
    return EVENT_PREFIX + _EVENT_KEY.pack(revision, 0)


class ValueRefs(Protocol):
    """The value log as the event log uses it (kvstore/statemachine.py)."""

    def read(self, ref: bytes) -> bytes: ...
    def keep(self, batch: Any, ref: bytes, event: bytes) -> None: ...
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
        raw = db.get(WATCH_META_KEY)
        # A data directory from before watch: events from the next revision on.
        self._span = _Span(revision + 1, 0, 0) if raw is None else _Span(*_WATCH_META.unpack(raw))
        # The oldest revision that may still have events here: trimming
        # seeks to it instead of walking the tombstones of every event it
        # deleted before (LevelDB keeps them until its compactions run).
        self._oldest = 0
        for db_key in db.iterator(start=EVENT_PREFIX, stop=_EVENT_END, include_value=False):
            self._oldest = _EVENT_KEY.unpack_from(db_key, 1)[0]
            break

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
        prev_revision), in order) to `batch`, then trims the oldest
        revisions over retention. `final`: each changed key's record after
        this batch (None: deleted); a large value stays in it when it is
        still at the event's revision. `replaced`: (key, value, revision)
        of each large value this batch replaced in a record; still-kept
        events of those revisions get their value copied in. `stored`, if
        given, gets each new event's key and record (for `store` on another
        replica: kvstore/statemachine.py, "Effects"). `replaced_refs`: (key,
        reference, revision) of each large value this batch replaced that
        is in the value log; still-kept events of those revisions take the
        reference (PUT_IN_LOG)."""
        entries = []
        last, index = -1, 0
        inline = final is None or self._value_at is None
        for revision, *fields in events:
            index = index + 1 if revision == last else 0
            last = revision
            if not inline and fields[0] == PUT and len(fields[2]) > INLINE_VALUE_BYTES:
                record = final.get(fields[1])  # type: ignore[union-attr]
                if record is not None and record[1] == revision:
                    fields = [PUT_IN_RECORD, fields[1], None, *fields[3:]]
            entries.append(EVENT_PREFIX + _EVENT_KEY.pack(revision, index))
            entries.append(_PACK(fields))
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
        """The second half of `append`: puts the new events `entries` (event
        key, record, event key, record, ...) into `batch`, trims, copies
        the `replaced` values and records the span."""
        floor, count, size = self._span
        added = len(entries) // 2
        put = batch.put
        records = entries[1::2]
        for key, raw in zip(entries[::2], records, strict=True):
            put(key, raw)
        count += added
        size += sum(map(len, records)) + added * _EVENT_KEY.size
        if added:
            span = self._trim(batch, _Span(floor, count, size), 2 * added + _TRIM_SLACK)
            floor, count, size = span
        for key, value, revision in replaced:
            if revision >= self._oldest:  # after the trim: its event may be kept
                size += self._copy_value(batch, key, value, revision)
        for key, ref, revision in replaced_refs:
            if revision >= self._oldest:
                size += self._copy_value(batch, key, ref, revision, in_log=True)
        self._span = _Span(floor, count, size)
        if added or replaced or replaced_refs:
            batch.put(WATCH_META_KEY, _WATCH_META.pack(*self._span))

    def _copy_value(
        self,
        batch: plyvel.WriteBatch,
        key: bytes,
        value: bytes,
        revision: int,
        in_log: bool = False,
    ) -> int:
        """Writes `value` (`in_log`: a value log reference) into the
        PUT_IN_RECORD event of `key` at `revision`, if there is one;
        returns the bytes it added to the span (a reference counts the
        value it keeps in the value log)."""
        start, stop = event_key(revision), event_key(revision + 1)
        for db_key, raw in self._db.iterator(start=start, stop=stop):
            fields = msgpack.unpackb(raw, raw=False)
            if fields[1] != key:
                continue
            if fields[0] != PUT_IN_RECORD:
                return 0
            fields[0], fields[2] = (PUT_IN_LOG if in_log else PUT), value
            new = _PACK(fields)
            batch.put(db_key, new)
            if not in_log:
                return len(new) - len(raw)
            self._refs.keep(batch, value, db_key)  # type: ignore[union-attr]
            return len(new) - len(raw) + ref_length(value)
        return 0

    def event_of(self, event: bytes) -> bytes | None:
        """The key of the stored event `event` (its db key), or None."""
        raw = self._db.get(event)
        return None if raw is None else msgpack.unpackb(raw, raw=False)[1]

    def repoint(self, batch: plyvel.WriteBatch, event: bytes, ref: bytes, new: bytes) -> bool:
        """The value log moved the value of PUT_IN_LOG event `event` from
        `ref` to `new`: the event takes the new reference. False if the
        event is gone or holds another value."""
        raw = self._db.get(event)
        if raw is None:
            return False
        fields = msgpack.unpackb(raw, raw=False)
        if fields[0] != PUT_IN_LOG or fields[2] != ref:
            return False
        fields[2] = new
        batch.put(event, _PACK(fields))
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
        """Deletes whole revisions, oldest first, while over retention (or
        below the floor), within `budget` events (a revision is finished)."""
        floor, count, size = span
        if self._oldest >= floor and count <= self.retain_events and size <= self.retain_bytes:
            return span  # nothing to delete: no iterator (a seek per apply)
        current = None
        oldest = None  # the oldest revision left, once the scan stops in one
        entries = self._db.iterator(start=event_key(self._oldest), stop=_EVENT_END)
        for db_key, raw in entries:
            revision = _EVENT_KEY.unpack_from(db_key, 1)[0]
            if revision != current:
                if current is not None:
                    floor = max(floor, current + 1)
                over = count > self.retain_events or size > self.retain_bytes
                if budget <= 0 or (revision >= floor and not over):
                    oldest = revision
                    break
                current = revision
            batch.delete(db_key)
            count -= 1
            size -= len(raw) + _EVENT_KEY.size
            if raw[1] == PUT_IN_LOG:  # [kind, ...]: a fixarray, then the kind
                ref = msgpack.unpackb(raw, raw=False)[2]
                self._refs.drop(batch, ref)  # type: ignore[union-attr]
                size -= ref_length(ref)
            budget -= 1
        else:
            if current is not None:
                floor = max(floor, current + 1)
                oldest = current + 1
        if oldest is not None:
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
        prev = _PrevValues(self._db, self._oldest, self._stored_value) if prev_kv else None
        entries = self._db.iterator(start=event_key(start), stop=_EVENT_END)
        for scanned, (db_key, raw) in enumerate(entries):
            rev = _EVENT_KEY.unpack_from(db_key, 1)[0]
            if rev != current:
                full = len(found) >= max_events or size >= max_bytes
                looked = scanned + (0 if prev is None else prev.scanned)
                if current is not None and (full or looked >= MAX_WATCH_SCAN):
                    return found, current + 1
                current = rev
            fields = msgpack.unpackb(raw, raw=False)
            k = fields[1]
            if _in_range(k, key, end):
                fields[0], fields[2] = self._stored_value(fields[0], k, fields[2], rev)
                if prev is None:
                    found.append(Event(rev, *fields[:5]))
                else:
                    before = prev.of(k, fields[5] if len(fields) > 5 else PREV_UNKNOWN)
                    found.append(Event(rev, *fields[:5], *before))
                    size += len(before[1] or b"")
                size += len(k) + len(fields[2] or b"")
        return found, revision + 1


class _PrevValues:
    """The previous values of one read: the value of a key at revision P
    is the value of its event at P (a PUT: the key existed after P). The
    first event of P is read by a point lookup (most revisions are one
    command of one key); a revision of several events is scanned once and
    its PUTs kept for the rest of the read."""

    def __init__(self, db: plyvel.DB, oldest: int, stored: Callable[..., Any]) -> None:
        self._db = db
        self._oldest = oldest  # nothing below it is left
        self._stored = stored  # EventLog._stored_value
        self._puts: dict[int, dict[bytes, bytes]] = {}
        self.scanned = 0  # events looked at in the revisions resolved

    def of(self, key: bytes, prev_revision: int) -> tuple[int, bytes | None]:
        """(prev_revision, prev_value) of an event of `key` (see WatchEvent)."""
        if prev_revision <= 0:  # a create (0), or an event without it
            return prev_revision, None
        return prev_revision, self._value(prev_revision, key)

    def _value(self, revision: int, key: bytes) -> bytes | None:
        puts = self._puts.get(revision)
        if puts is not None:
            return puts.get(key)
        raw = self._db.get(event_key(revision)) if revision >= self._oldest else None
        if raw is None:  # trimmed (revisions go whole)
            self._puts[revision] = {}
            return None
        self.scanned += 1
        kind, k, value = msgpack.unpackb(raw, raw=False)[:3]
        if k == key:
            kind, value = self._stored(kind, k, value, revision)
            return value if kind == PUT else None
        puts = self._puts[revision] = {}
        start, stop = event_key(revision), event_key(revision + 1)
        for _, raw in self._db.iterator(start=start, stop=stop):
            self.scanned += 1
            kind, k, value = msgpack.unpackb(raw, raw=False)[:3]
            kind, value = self._stored(kind, k, value, revision)
            if kind == PUT:
                puts[k] = value
        return puts.get(key)
