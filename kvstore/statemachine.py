"""The replicated key-value state machine on LevelDB.

Theory of operation
-------------------
Every replica feeds the same chosen log, slot by slot and in order, to a
`KVStateMachine`. A slot value is a tuple of commands: encoded write requests
(PUT, DELETE, CAS) exactly as the clients sent them, and the leader's clock
commands (`kvstore.protocol.encode_clock`); `()` is a no-op. Applying must be
deterministic: the same log gives the same bytes on every replica, so nothing
here looks at clocks, randomness or anything outside the log (time comes from
the clock commands in it), and a bad command is answered with an error
instead of raising.

Key layout. The state machine owns these prefixes of the replica's single
LevelDB (the others belong to replica/storage.py and are never touched here):

    d0|d1 + key                  -> msgpack [value, version,
                                             create_revision(, lease)] KV data
    l0|l1 + lease id (8 bytes)   -> msgpack [ttl_ms, deadline, keys]  leases
    x0|x1 + deadline + lease id  -> b""            leases by deadline
    k0|k1 + lease id + key       -> b""            the keys of a lease
    s0|s1 + client_id            -> msgpack [last_seq, digest, last_used,
                                             status, version]        sessions
    t0|t1 + last_used + client_id -> b""           sessions by last use
    m + b"state"                 -> 42 bytes: applied_index, revision,
                                    log_time (three big-endian u64), forgot,
                                    generation (one byte each),
                                    session_ttl_ms, expired_before (two
                                    big-endian u64)
    m + b"install"               -> msgpack: the progress of a snapshot
                                    being staged (absent when none is)

The digit is the generation: the state machine's state is the generation the
`m state` record names, plus that record. The other generation is empty,
being staged by a snapshot install, or garbage left by the last install and
deleted in bounded batches. `last_used` in a `t` key is 8 big-endian bytes,
so the `t` range lists sessions oldest first. Everything in `m state`
changes together, so it is one record.

Apply. `apply()` turns a run of slots into ONE `WriteBatch`: the data
changes, the session updates and the new metadata land together or not at
all. LevelDB applies batches atomically and in order, so after a crash the
state machine is exactly "the first N slots applied" for some N, and the
driver replays the rest from the durable log. That is why the batch may be
written without `sync`. Until the batch is written, later commands of the
same call read the earlier ones' effects from in-memory overlays.

Effects. Executing a command costs Python on every replica (parse, session,
record, event, msgpack: ~16 us per 100-byte PUT in a batch of 20 on the
test VM, against ~6 us to write its effects). The leader applies with
`capture=True`: the batch's puts and deletes are also listed, and
`take_effects()` packs them with the slots they stand for, the in-memory
state that goes with them (the session floor and count change) and, apart,
the new watch events. A follower that has the leader's effects for exactly
the slots it is about to apply writes them with `apply_effects` instead of
executing (replica/driver.py, "Followers write the leader's effects"). It
is the same batch: applying is deterministic, the chosen value of a slot
is unique, and the leader applied from the same state (the same slots and
the same generation, both checked; anything else is refused and the
follower executes as before). The event log is each replica's own (a
snapshot does not carry it, and what trimming deletes depends on what a
replica holds), so the follower stores the new events in its own log
(`EventLog.store`: its own trimming and retention), never the leader's
deletions. The session floor (a lower bound of the session index's times)
is the larger of the two, both bounds of the same index. A
batch over EFFECTS_MAX_BYTES (large values) is not captured.

Large values in the value log. A value of at least `value_min_bytes`
(`[storage] value_log_min_bytes`) that a command writes into a record is
appended to the replica's value log (kvstore/values.py) when the batch is
built, and the record holds a reference instead (msgpack ext type
VALUE_REF: segment, offset, length, CRC and the slot of the command),
with an index entry `r0|r1 + segment + offset -> reference + key` in the
same batch; overwriting or deleting the key drops the entry (a watch
event that still needs the old value takes it over: `_EventRefs`,
kvstore/events.py PUT_IN_LOG). Applying does not sync the value log, so a
power failure may keep a record and lose its entry: `repair_values`, run
by the driver at start, reads every entry named from a slot at or above
the acceptor log's compaction point and writes a lost one again from the
chosen value of that slot (the driver syncs the value log before it
persists a compaction point, so the entries of older slots are durable;
replica/driver.py, "Large values"). A write reads only the old record's
version, creation revision and lease (`_Pending.head`), not its value.
Every read takes the value from the log (GET, RANGE, a transaction's
comparisons, watch events); a checksum and a snapshot see the value
inline, so replicas that keep values differently (another threshold, an
install, a follower that wrote the leader's effects) compare equal and a
snapshot never carries a reference (an install refuses one). The leader
does not capture effects of a batch that put a value into its log or
handed one to a watch event (references mean nothing elsewhere); a
follower writing effects drops the index entries of the records they
overwrite. `_live` counts, per segment, the live entries and their bytes
(from the indexes at start). Garbage: `collect_garbage` deletes a closed
segment no record or event refers to, after a synced batch
(`_values_barrier`, with the value log synced first: the batches that
dropped its last references are then durable, so no crash brings back a
record naming it), and moves the live entries of a closed segment less
than VALUE_GC_LIVE_SHARE live to the end of the log, a bounded amount per
call, synced before the batch that names them, while the log is larger
than twice its live bytes plus a segment (`value_spare_bytes`; below
that, overwrites make segments die on their own: moving them as soon as
they were half dead wrote each 100 KiB value of a 100-key workload 1.7
times). An open snapshot reader
pins the segments. The simulator runs replicas with and without a value
log side by side, loses unsynced entries in its power failures, and
catches a log that never syncs, a replica that does not restore lost
values or compacts before syncing them, and a deletion without the
barrier (tests/sim).

Versions follow etcd's mod_revision: a global `revision` counts the successful
writes; a key's version is the revision of its last modification and an absent
key has version 0. DELETE of an absent key is NOT_FOUND and does not count.
A key's create_revision is the revision that created it (kept across
overwrites; a record of the release before it, [value, version], is read
with create_revision = version, the oldest revision it is known to have).

Ranges and transactions. A RANGE is read from a LevelDB iterator over the
current generation's `d` prefix, in key order, bounded by MAX_RANGE_KEYS
keys and about MAX_RANGE_REPLY_BYTES (kvstore/limits.py), with a
continuation (`RangeResult.more`, `next_key`). A DELETE_RANGE and a TXN are
one command each, applied at ONE revision (every key they write gets it as
its version; the revision counts them once, and not at all when they
change nothing). They run on a `_Layer` over the pending state, which
reaches the pending state only when the command completes: a transaction
refused halfway (a delete range over MAX_DELETE_RANGE_KEYS) leaves nothing
behind. Their reads see the writes of the operations before them in the
same transaction; everything depends on the state and the command only, so
every replica computes the same outcome. A TXN whose comparisons do not all
hold runs its failure operations and is answered CAS_FAILED; its session
record keeps that status and the revision, like any write's, and no value.

Leases. A lease is granted with a client-chosen id and a TTL; its
deadline is log time + TTL, moved on by each keep-alive (both are writes
in the log, with sessions). A PUT naming a lease attaches its key (the
data record's fourth field; the `k` index lists a lease's keys, bounded by
MAX_LEASE_KEYS), and a put without one, a delete or a transaction's put
detaches it. Expiry is decided by the leader, not here: it proposes an
expiry command (`encode_lease_expiry`) after its clock command, and
applying it deletes each named lease that still exists and whose deadline
is at or before log time, its keys at ONE revision, as a revoke does. A
keep-alive ordered before it saves the lease, so what is deleted depends
on the log alone. The leader's grace after an election (a full TTL) is the
driver's (replica/driver.py). Snapshots carry leases as `l` items; the
`x` and `k` indexes are derived on the receiving side.

Sessions (exactly once, bounded). Per client id the record keeps the last
applied seq, an 8-byte blake2b digest of that request's bytes (of a request
over 4 KiB: of its first 4 KiB, its length and its CRC-32, since blake2b of
a 1 MiB value costs ~2 ms here and the digest only tells a retry from a
reused client id; a record of an older release, which digested the whole
request, still matches its retry), the log time
of its last use, and the response's status and version: never a value (a
failed CAS is answered with the current value once; its record keeps only
CAS_FAILED and the version, so a retry gets the value None). A request from
a known session with seq equal to the last one is a retry if its digest
matches (the recorded response, nothing applied); if it does not, the client
id was reused by a new process for another request: BAD_REQUEST, nothing
applied, never someone else's answer. A lower seq is stale (BAD_REQUEST).
From an unknown client id, seq 1 opens a session (a client numbers its
writes, and its first write is seq 1; client/client.py). A higher seq is
answered SESSION_EXPIRED and not applied: its session may have been
forgotten, so whether an earlier attempt was applied cannot be told, and
applying it might apply it twice. "May": `forgot` in `m state` records
whether any session has ever expired; until one has, an unknown client id
cannot be a forgotten one, and a higher seq opens a session as before
(clients that number their reads too, like the simulator's, keep working
on a log without clock commands or before the first session expires).

Expiry is driven by the log alone. A clock command `(t, ttl)` (the
leader's wall clock in unix ms and the session TTL it is configured with)
sets `session_ttl_ms = ttl`, `log_time = max(log_time, t)` (monotone even
when a new leader's clock is behind) and `expired_before = max(
expired_before, log_time - session_ttl_ms)`, and is answered to nobody. The
TTL is thus replicated state, changed only by clock commands: every replica
expires the same sessions whatever its own configuration says, and the
leader's setting takes effect for the whole cluster (an old 9-byte clock
command carries no TTL and leaves it unchanged; before any clock command it
is `SESSION_TTL_MS`). A session is expired once `last_used <
expired_before`, i.e. once it has been idle for longer than the TTL in
force and at most one stamp step more: `last_used` is the log time of its
last use rounded up to the step (`_stamp`: the TTL / 16, at most 1 s), so
that a busy session's `t` key moves once per step and not with every
write. `expired_before` never goes back, so a session once expired stays
expired even if a later clock command raises the TTL (otherwise a session
already refused with SESSION_EXPIRED but not yet deleted could come back,
and a delayed copy of the refused request could then be applied after the
client was told it was not). An expired session counts as unknown, and
each clock command deletes up to `SESSION_EXPIRY_PER_CLOCK` expired
sessions, oldest first, from the `t` index (no scan). The bound is per
clock command, not per `apply()` call, because replicas split the log into
calls differently and the outcome must not depend on that. Without clock
commands log time stays 0 and nothing expires.

Old data directories: an `m state` record of 26 bytes (written before the
TTL travelled in the log) is read with `session_ttl_ms = SESSION_TTL_MS`
and `expired_before = log_time - SESSION_TTL_MS` (what expiry meant then);
the next apply writes the current form. The 16-byte record of the layout
before generations is refused.

Snapshots. `snapshot_reader()` is a LevelDB snapshot of the current
generation at the applied index, exported in bounded chunks of (key, record)
in key order, with keys that name no generation: `d` + key, `l` + lease
id, `m` (applied index, revision, log time, forgot, session TTL,
expired_before) and `s` + client_id; the `t`, `x` and `k` indexes are
derived from the session, lease and data records on the receiving side. `install_begin/chunk/finish`
stage a snapshot into the other generation as it arrives, the progress
record riding in each chunk's batch, and `install_finish` flips the
generation in one small synced batch. Nothing holds the whole state in
memory and nothing is copied at the switch. Crash safety: the state is
whatever `m state` names, and only `apply` and `install_finish` write it;
staging and garbage collection touch only the other generation and the
progress record; batches survive a crash as a prefix in order, so a crash
leaves the old state or (once the flip batch is durable) the complete new
one, and the progress record says where staging resumes.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import msgpack
import plyvel

from kvstore import values as vlog
from kvstore.events import DELETE, INLINE_VALUE_BYTES, PUT, Event, EventLog, valid_record
from kvstore.limits import (
    EFFECTS_MAX_BYTES,
    MAX_DELETE_RANGE_KEYS,
    MAX_LEASE_KEYS,
    MAX_RANGE_KEYS,
    MAX_RANGE_REPLY_BYTES,
    SESSION_EXPIRY_PER_CLOCK,
    SESSION_TTL_MS,
)
from kvstore.membership import (
    ALPHA,
    CONFIG_TAG,
    Membership,
    Schedule,
    apply_change,
    check,
    decode_change,
)
from kvstore.protocol import (
    CLIENT_ID_BYTES,
    FROM_KEY,
    WRITE_OPS,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteResult,
    KeyValue,
    Op,
    PutResult,
    RangeResult,
    Request,
    Response,
    Status,
    Txn,
    TxnOp,
    TxnOpKind,
    TxnResult,
    decode_clock,
    decode_lease_expiry,
    parse_request,
    prefix_end,
)

META_PREFIX = b"m"
_META_KEY = META_PREFIX + b"state"
_INSTALL_KEY = META_PREFIX + b"install"
# applied_index, revision, log_time, forgot, generation, session_ttl_ms, expired_before
_META = struct.Struct(">QQQBBQQ")
_META_NO_TTL = struct.Struct(">QQQBB")  # the record before the TTL was in the log
_OLD_META_BYTES = 16  # applied_index, revision: the layout before generations
_TIME = struct.Struct(">Q")
_LENGTHS = struct.Struct(">II")  # key and record length, for the checksum
_DIGEST_BYTES = 8
_DATA_RECORD_TYPES = ([bytes, int, int, int], [bytes, int, int], [bytes, int])
_REF_POSITION = 12  # a value reference's segment and offset: its index key
_SEGMENT = struct.Struct(">I")
EVENT_REFS = b"rw"  # the value log's entries that watch events keep (_EventRefs)
_VALUES_BARRIER_KEY = b"mvalues"  # a synced batch deletes it before segments go
VALUE_GC_LIVE_SHARE = 0.5
"""A closed value log segment may be rewritten once less than this share
of it is live, and is while the log holds more than twice the live values
plus one segment (`_collect_values`)."""
VALUE_GC_BYTES = 1024 * 1024
"""Value bytes one `collect_garbage` call moves, at most (and at least one
value): the loop stays responsive."""
# [value, version, create_revision, lease] for a key with a lease; without
# one, the lease is left out; [value, version]: the record of a release before
_LEASE_ID = struct.Struct(">Q")
GC_BATCH_KEYS = 1000
"""Keys deleted per batch when a generation is discarded or collected."""

SNAPSHOT_DATA = b"d"
SNAPSHOT_META = b"m"
SNAPSHOT_SESSION = b"s"
SNAPSHOT_LEASE = b"l"
# index, revision, log_time, forgot, session_ttl_ms, expired_before
_SNAPSHOT_META = struct.Struct(">QQQBQQ")
_SNAPSHOT_META_NO_TTL = struct.Struct(">QQQB")  # from a replica before the TTL was in the log

Result = tuple[bytes, int, Response]
"""(client_id, seq, response) for one applied command; client_id is b"" when
the command is a clock command or could not be decoded or validated (nobody
to answer)."""

_ABSENT: tuple[bytes | None, int] = (None, 0)
_Record = tuple[bytes, int, int, int]
"""A key's (value, version, create_revision, lease); lease 0: none."""
_STALE = Response(Status.BAD_REQUEST, error="stale sequence number")
_CLOCK_DONE = Response(Status.OK)


# One Packer for the hot paths (msgpack.packb makes a new one per call,
# ~0.6 us): its pack() runs in C under the GIL without calling back into
# Python for these types, so no other thread's pack interleaves with it.
_PACK = msgpack.Packer(use_bin_type=True).pack


def _pack(obj: object) -> bytes:
    return _PACK(obj)


def _unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, use_list=True)


VALUE_REF = 1
"""The msgpack ext type of a data record's value kept in the value log."""
_ExtType = msgpack.ExtType


class ValueLog(Protocol):
    """kvstore/values.py: `ValueLog`, or `MemoryValueLog` in the simulator."""

    active: int
    sizes: dict[int, int]
    segment_bytes: int

    @property
    def dirty(self) -> bool: ...
    def append(self, key: bytes, value: bytes, slot: int) -> bytes: ...
    def flush(self) -> None: ...
    def sync(self) -> None: ...
    def read(self, ref: bytes) -> bytes: ...
    def pin(self) -> None: ...
    def unpin(self) -> None: ...
    def remove(self, segment: int) -> None: ...
    def start_after(self, segment: int) -> None: ...


_range_end = prefix_end  # of the state machine's own prefixes (never 0xff)


def _record(raw: bytes, values: ValueLog | None = None) -> _Record:
    """A stored data record; the two-field form of the previous release has
    no create_revision: its version stands in. Without a lease: lease 0.
    A value in the value log is read from it (`values`)."""
    fields = _unpack(raw)
    if type(fields[0]) is _ExtType:
        fields[0] = _external(fields[0], values)
    return _from_fields(fields)


def _from_fields(fields: list[Any]) -> _Record:
    if len(fields) == 2:
        return fields[0], fields[1], fields[1], 0
    if len(fields) == 3:
        return fields[0], fields[1], fields[2], 0
    return fields[0], fields[1], fields[2], fields[3]


def _pack_record(record: _Record) -> bytes:
    """The stored form: a key without a lease keeps the three-field record."""
    return _pack(record if record[3] else record[:3])


def _length(value: Any) -> int:
    """The length of a record's value, read or not (a value log reference)."""
    return vlog.ref_length(value.data) if type(value) is _ExtType else len(value)


def _external(ref: Any, values: ValueLog | None) -> bytes:
    """The value a record's reference names (CorruptValue if it is lost)."""
    if ref.code != VALUE_REF or len(ref.data) != vlog.REF_BYTES:
        raise vlog.CorruptValue(f"unknown value reference (ext type {ref.code})")
    if values is None:
        raise vlog.CorruptValue("a record refers to the value log, which is not open")
    return values.read(ref.data)


def _stored_ref(raw: bytes) -> bytes | None:
    """The value log reference of a stored record (None: its value is inline)."""
    fields = _unpack(raw)
    value = fields[0]
    return value.data if type(value) is _ExtType else None


def _value_in(commands: Iterable[bytes] | None, key: bytes | None, ref: bytes) -> bytes | None:
    """The value that a PUT or CAS (or a transaction's put) of `key` among
    `commands` wrote, if it is the one `ref` names (length and CRC)."""
    if commands is None or key is None:
        return None
    length, crc = vlog.ref_length(ref), vlog.ref_crc(ref)
    for command in commands:
        req = parse_request(command)
        if type(req) is not Request:
            continue
        puts: list[tuple[bytes, bytes | None]] = []
        if req.op is Op.PUT or req.op is Op.CAS:
            puts.append((req.key, req.value))
        elif req.op is Op.TXN and req.txn is not None:
            ops = (*req.txn.success, *req.txn.failure)
            puts += [(op.key, op.value) for op in ops if op.kind is TxnOpKind.PUT]
        for k, value in puts:
            if (
                k == key
                and value is not None
                and len(value) == length
                and vlog.entry_crc(key, value) == crc
            ):
                return value
    return None


def _canonical(raw: bytes, values: ValueLog | None) -> bytes:
    """A stored record with its value inline: the same on every replica
    (where a value is kept is each replica's own layout)."""
    fields = _unpack(raw)
    if type(fields[0]) is not _ExtType:
        return raw
    fields[0] = _external(fields[0], values)
    return _pack(fields)


@dataclass(frozen=True, slots=True)
class _Gen:
    """The key prefixes of one generation of the state."""

    number: int
    data: bytes
    sessions: bytes
    index: bytes
    leases: bytes  # + lease id -> [ttl_ms, deadline, keys]
    expiry: bytes  # + deadline + lease id -> b"": leases by deadline
    attached: bytes  # + lease id + key -> b"": the keys of a lease
    values: bytes  # + segment + offset -> ref + key: the value log's live entries

    def value_key(self, ref: bytes) -> bytes:
        return self.values + ref[:_REF_POSITION]

    def index_key(self, last_used: int, client_id: bytes) -> bytes:
        return self.index + _TIME.pack(last_used) + client_id

    def lease_key(self, lease_id: int) -> bytes:
        return self.leases + _LEASE_ID.pack(lease_id)

    def expiry_key(self, deadline: int, lease_id: int) -> bytes:
        return self.expiry + _TIME.pack(deadline) + _LEASE_ID.pack(lease_id)

    def attached_key(self, lease_id: int, key: bytes) -> bytes:
        return self.attached + _LEASE_ID.pack(lease_id) + key

    def prefixes(self) -> tuple[bytes, ...]:
        """In key order (`_delete_other` walks them with one cursor)."""
        every = (
            self.data,
            self.sessions,
            self.index,
            self.leases,
            self.expiry,
            self.attached,
            self.values,
        )
        return tuple(sorted(every))


_GENS = (
    _Gen(0, b"d0", b"s0", b"t0", b"l0", b"x0", b"k0", b"r0"),
    _Gen(1, b"d1", b"s1", b"t1", b"l1", b"x1", b"k1", b"r1"),
)


class _Lease(NamedTuple):
    """One lease record: its TTL, its deadline in log time (both ms) and
    how many keys it holds. Small and of a fixed shape."""

    ttl_ms: int
    deadline: int
    keys: int

    def pack(self) -> bytes:
        return _pack(list(self))

    @classmethod
    def unpack(cls, raw: bytes) -> _Lease:
        """Decodes and type-checks a record (snapshots come from peers)."""
        fields = _unpack(raw)
        if (
            not isinstance(fields, list)
            or [type(f) for f in fields] != [int, int, int]
            or min(fields) < 0
            or fields[2] > MAX_LEASE_KEYS
        ):
            raise ValueError("malformed lease record")
        return cls(*fields)


class _Meta(NamedTuple):
    """The `m state` record: where the state machine stands."""

    applied_index: int = 0
    revision: int = 0
    log_time: int = 0
    forgot: bool = False  # some session has expired: an unknown client may be one
    generation: int = 0
    session_ttl_ms: int = SESSION_TTL_MS  # set by clock commands only
    expired_before: int = 0  # sessions last used before this log time are expired
    schedule: bytes = b""  # the memberships from applied_index on (kvstore/membership.py)

    def pack(self) -> bytes:
        return _META.pack(*self[:7]) + self.schedule

    @classmethod
    def unpack(cls, raw: bytes | None) -> _Meta:
        if raw is None:
            return cls()
        schedule = b""
        if len(raw) == _META_NO_TTL.size:  # written before the TTL was in the log
            index, revision, log_time, forgot, generation = _META_NO_TTL.unpack(raw)
            ttl, before = SESSION_TTL_MS, _cutoff(0, log_time, SESSION_TTL_MS)
        else:
            fixed, schedule = raw[: _META.size], raw[_META.size :]
            index, revision, log_time, forgot, generation, ttl, before = _META.unpack(fixed)
        return cls(index, revision, log_time, bool(forgot), generation, ttl, before, schedule)

    def snapshot_item(self) -> bytes:
        """The record of the snapshot's `m` item."""
        fixed = _SNAPSHOT_META.pack(
            self.applied_index,
            self.revision,
            self.log_time,
            self.forgot,
            self.session_ttl_ms,
            self.expired_before,
        )
        return fixed + self.schedule


def _cutoff(expired_before: int, log_time: int, ttl_ms: int) -> int:
    """The new `expired_before`: it never goes back."""
    return max(expired_before, log_time - ttl_ms)


def _snapshot_meta(record: bytes) -> tuple[int, int, int, bool, int, int, bytes]:
    """(index, revision, log_time, forgot, session_ttl_ms, expired_before,
    schedule) of a snapshot's `m` item; the older form without the TTL is
    read like an old `m state` record. Raises ValueError on anything
    malformed."""
    schedule = b""
    if len(record) >= _SNAPSHOT_META.size:
        fixed, schedule = record[: _SNAPSHOT_META.size], record[_SNAPSHOT_META.size :]
        index, revision, log_time, forgot, ttl, before = _SNAPSHOT_META.unpack(fixed)
        if schedule:
            try:
                Schedule.unpack(schedule)
            except Exception:  # noqa: BLE001 - msgpack raises several unrelated types
                raise ValueError("malformed membership in the snapshot meta item") from None
    elif len(record) == _SNAPSHOT_META_NO_TTL.size:
        index, revision, log_time, forgot = _SNAPSHOT_META_NO_TTL.unpack(record)
        ttl, before = SESSION_TTL_MS, _cutoff(0, log_time, SESSION_TTL_MS)
    else:
        raise ValueError(f"malformed snapshot meta item ({len(record)} bytes)")
    if forgot > 1 or ttl < 1 or before > log_time:
        raise ValueError("malformed snapshot meta item")
    return index, revision, log_time, bool(forgot), ttl, before, schedule


class _Session(NamedTuple):
    """One client's session record; it has no room for a value."""

    seq: int
    digest: bytes
    last_used: int
    status: int
    version: int

    def pack(self) -> bytes:
        return _PACK(self)  # a tuple packs as the array it is

    @classmethod
    def unpack(cls, raw: bytes) -> _Session:
        """Decodes and type-checks a record (snapshots come from peers)."""
        fields = _unpack(raw)
        if (
            not isinstance(fields, list)
            or len(fields) != 5
            or [type(f) for f in fields] != [int, bytes, int, int, int]
            or len(fields[1]) != _DIGEST_BYTES
        ):
            raise ValueError("malformed session record")
        return cls(*fields)

    def response(self) -> Response:
        return Response(Status(self.status), version=self.version)


_DIGEST_HEAD = 4096  # a longer request: its head, length and CRC-32 are digested
_LENGTH_CRC = struct.Struct(">QI")


def _digest(command: bytes) -> bytes:
    if len(command) <= _DIGEST_HEAD:
        return hashlib.blake2b(command, digest_size=_DIGEST_BYTES).digest()
    h = hashlib.blake2b(memoryview(command)[:_DIGEST_HEAD], digest_size=_DIGEST_BYTES)
    h.update(_LENGTH_CRC.pack(len(command), zlib.crc32(command)))
    return h.digest()


def _same_request(digest: bytes, command: bytes, recorded: bytes) -> bool:
    """Whether `recorded` (a session's digest) is that of `command`, whose
    `_digest` is `digest`: also as an older release digested it."""
    if digest == recorded:
        return True
    return (
        len(command) > _DIGEST_HEAD
        and hashlib.blake2b(command, digest_size=_DIGEST_BYTES).digest() == recorded
    )


class _Sessions:
    """The session table as seen during one `apply()` call: the stored
    records under an overlay of this call's changes, and log time.

    Expiry walks the stored `t` index and this call's own changes (a heap of
    (last_used, client_id)) merged in one order, so that it deletes exactly
    what it would delete had the earlier commands already been written: the
    outcome does not depend on where the driver split the log into calls.
    The stored index does not change during a call, so a cursor remembers
    how far it was consumed."""

    def __init__(self, db: plyvel.DB, gen: _Gen, meta: _Meta, floor: int = 0) -> None:
        """`floor`: no stored index key is older than this (`next_floor`)."""
        self._db = db
        self._gen = gen
        self._floor = floor
        self._low: int | None = None  # the oldest index key a scan saw and left
        self._scanned = False
        self.log_time = meta.log_time
        self.forgot = meta.forgot
        self.ttl_ms = meta.session_ttl_ms
        self.expired_before = meta.expired_before
        self.added = 0  # sessions created minus sessions deleted, set by flush
        self.changed: dict[bytes, _Session | None] = {}  # None: deleted
        self._stored_cache: dict[bytes, _Session | None] = {}
        self._heap: list[tuple[int, bytes]] = []
        self._cursor: bytes | None = None  # stored index keys up to here are consumed

    def _stored(self, client_id: bytes) -> _Session | None:
        if client_id not in self._stored_cache:
            raw = self._db.get(self._gen.sessions + client_id)
            # This replica's own record (a snapshot's were checked by
            # `_Session.unpack` when installed): no type checks here.
            self._stored_cache[client_id] = None if raw is None else _Session._make(_unpack(raw))
        return self._stored_cache[client_id]

    def get(self, client_id: bytes) -> _Session | None:
        """The client's live session, or None (never opened, or expired)."""
        changed = client_id in self.changed
        session = self.changed[client_id] if changed else self._stored(client_id)
        if session is None:
            return None
        if session.last_used < self.expired_before:
            self.forgot = True
            return None
        return session

    def advance(self, unix_ms: int, ttl_ms: int | None) -> None:
        """A clock command: the TTL (None: unchanged), then log time, then
        the expiry cutoff, which never goes back."""
        if ttl_ms is not None:
            self.ttl_ms = ttl_ms
        self.log_time = max(self.log_time, unix_ms)
        self.expired_before = _cutoff(self.expired_before, self.log_time, self.ttl_ms)

    def put(self, client_id: bytes, session: _Session) -> None:
        self._stored(client_id)  # flush needs its old index key
        self.changed[client_id] = session
        heapq.heappush(self._heap, (session.last_used, client_id))

    def expire(self, limit: int) -> None:
        """Deletes up to `limit` expired sessions, oldest first."""
        cutoff = self.expired_before  # expired: last_used < cutoff
        if cutoff <= 0:
            return
        if cutoff <= self._floor:
            # No stored session is that old (next_floor), and this call's own
            # are at least its start log time, which is at least the floor
            # (the check of the heap only restates that): nothing expires,
            # and the index is not read. Before, every clock command opened
            # and seeked a LevelDB iterator here (~10 us per PUT at 26 per slot).
            own = self._heap_top()
            if own is None or own[0] >= cutoff:
                return
        self._scanned = True
        stored = self._stored_candidates()
        head = next(stored, None)
        try:
            self._expire(limit, cutoff, stored, head)
        finally:
            stored.close()

    def _expire(
        self,
        limit: int,
        cutoff: int,
        stored: Iterator[tuple[int, bytes, bytes]],
        head: tuple[int, bytes, bytes] | None,
    ) -> None:
        for _ in range(limit):
            own = self._heap_top()
            if head is not None and (own is None or head[:2] < own):
                if head[0] >= cutoff:
                    break
                client_id, self._cursor = head[1:]
                self._stored(client_id)  # flush deletes its index key
                head = next(stored, None)
            elif own is not None and own[0] < cutoff:
                client_id = heapq.heappop(self._heap)[1]
            else:
                break
            self.changed[client_id] = None
            self.forgot = True
        if head is not None:  # stored and not expired: it stays
            self._note_low(head[0])

    def _note_low(self, last_used: int) -> None:
        if self._low is None or last_used < self._low:
            self._low = last_used

    def next_floor(self, start_log_time: int) -> int:
        """A time no stored index key is older than once this call's batch
        is written: expiry scans seek to it instead of walking the
        tombstones of every index key deleted before (each write moves its
        session's key; LevelDB keeps the tombstones until its compactions
        reach them, and a scan from the start of the index cost
        milliseconds per clock command under load). Keys older than the
        oldest one a scan left were deleted by it, and the keys this call
        adds are at least `start_log_time` (the log time it began with)."""
        if not self._scanned:
            return self._floor  # nothing deleted; new keys are newer than it
        low = start_log_time if self._low is None else min(self._low, start_log_time)
        return max(self._floor, low)

    def _stored_candidates(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(last_used, client_id, index key) of stored sessions this call has
        not changed, oldest first, from the cursor on."""
        start = self._cursor
        if start is None:
            start = self._gen.index + _TIME.pack(self._floor)
        keys = self._db.iterator(
            start=start,
            stop=_range_end(self._gen.index),
            include_start=self._cursor is None,
            include_value=False,
        )
        for db_key in keys:
            client_id = db_key[10:]
            if client_id in self.changed:
                self._cursor = db_key  # this call's overlay decides for it
                self._note_low(_TIME.unpack_from(db_key, 2)[0])  # it may stay
                continue
            yield _TIME.unpack_from(db_key, 2)[0], client_id, db_key

    def _heap_top(self) -> tuple[int, bytes] | None:
        """The oldest of this call's live sessions (stale heap entries dropped)."""
        while self._heap:
            last_used, client_id = self._heap[0]
            session = self.changed.get(client_id)
            if session is not None and session.last_used == last_used:
                return last_used, client_id
            heapq.heappop(self._heap)
        return None

    def flush(self, batch: plyvel.WriteBatch) -> None:
        gen = self._gen
        for client_id, session in self.changed.items():
            old = self._stored_cache.get(client_id)
            self.added += (session is not None) - (old is not None)
            if old is not None and (session is None or session.last_used != old.last_used):
                batch.delete(gen.index_key(old.last_used, client_id))
            if session is None:
                if old is not None:
                    batch.delete(gen.sessions + client_id)
            else:
                batch.put(gen.sessions + client_id, session.pack())
                if old is None or session.last_used != old.last_used:
                    batch.put(gen.index_key(session.last_used, client_id), b"")


_UNREAD = object()  # _Pending.assign: the caller did not read the old record


class _Live:
    """What the value log holds live (referred to by the current
    generation's records), per segment: entries and value bytes."""

    __slots__ = ("bytes", "count", "entries")

    def __init__(self) -> None:
        self.bytes: dict[int, int] = {}
        self.entries: dict[int, int] = {}
        self.count = 0

    def add(self, ref: bytes) -> None:
        segment, length = vlog.ref_segment(ref), vlog.ref_length(ref)
        self.bytes[segment] = self.bytes.get(segment, 0) + length
        self.entries[segment] = self.entries.get(segment, 0) + 1
        self.count += 1

    def drop(self, ref: bytes) -> None:
        segment, length = vlog.ref_segment(ref), vlog.ref_length(ref)
        self.bytes[segment] = self.bytes.get(segment, 0) - length
        self.entries[segment] = self.entries.get(segment, 0) - 1
        self.count -= 1


class _Pending:
    """The effects of one `apply()` call not yet written: reads check these
    overlays before LevelDB, so a command sees the commands before it."""

    __slots__ = (
        "_stored_leases",
        "attached",
        "data",
        "db",
        "events",
        "externalized",
        "gen",
        "leases",
        "live",
        "min_bytes",
        "refs",
        "replaced",
        "replaced_refs",
        "revision",
        "sessions",
        "slot",
        "slots",
        "values",
    )

    def __init__(
        self,
        db: plyvel.DB,
        meta: _Meta,
        session_floor: int = 0,
        values: ValueLog | None = None,
        min_bytes: int = 0,
        live: _Live | None = None,
    ) -> None:
        self.db = db
        # the value log ("Large values in the value log"): where values of
        # at least min_bytes go (min_bytes 0: none), the live bytes it keeps
        # per segment, and the references of the stored records read here
        self.values = values
        self.min_bytes = min_bytes if values is not None else 0
        self.live = live
        self.refs: dict[bytes, bytes] = {}
        self.externalized = 0
        self.slot = 0  # the slot of the command being applied
        self.slots: dict[bytes, int] = {}  # key -> the slot that last wrote it
        self.gen = _GENS[meta.generation]
        self.revision = meta.revision
        # key -> its record, or None once deleted in this call
        self.data: dict[bytes, _Record | None] = {}
        self.sessions = _Sessions(db, self.gen, meta, session_floor)
        self.leases: dict[int, _Lease | None] = {}  # None: deleted in this call
        self._stored_leases: dict[int, _Lease | None] = {}
        self.attached: dict[tuple[int, bytes], bool] = {}  # (lease, key) -> attached
        # for watchers: (revision, kind, key, value, version, create, prev revision)
        self.events: list[tuple[int, int, bytes, bytes | None, int, int, int]] = []
        # (key, value, revision) of the large values this call replaced in
        # the stored records (kvstore/events.py, "Large values")
        self.replaced: list[tuple[bytes, bytes, int]] = []
        # (key, reference, revision): the same, of values in the value log
        self.replaced_refs: list[tuple[bytes, bytes, int]] = []

    def lease(self, lease_id: int) -> _Lease | None:
        if lease_id in self.leases:
            return self.leases[lease_id]
        return self._stored_lease(lease_id)

    def _stored_lease(self, lease_id: int) -> _Lease | None:
        if lease_id not in self._stored_leases:
            raw = self.db.get(self.gen.lease_key(lease_id))
            self._stored_leases[lease_id] = None if raw is None else _Lease.unpack(raw)
        return self._stored_leases[lease_id]

    def set_lease(self, lease_id: int, lease: _Lease | None) -> None:
        self._stored_lease(lease_id)  # flush needs its old deadline
        self.leases[lease_id] = lease

    def lease_keys(self, lease_id: int) -> list[bytes]:
        """The keys attached to a lease, in key order, this call's changes included."""
        prefix = self.gen.attached_key(lease_id, b"")
        keys = {
            db_key[len(prefix) :] for db_key in self.db.iterator(prefix=prefix, include_value=False)
        }
        for (lid, key), on in self.attached.items():
            if lid == lease_id:
                (keys.add if on else keys.discard)(key)
        return sorted(keys)

    def assign(self, key: bytes, entry: _Record | None, old: Any = _UNREAD) -> None:
        """Sets a key's record (None: deleted), moving it between leases.
        `old`: its current record (None: absent) when the caller read it."""
        if old is _UNREAD:
            old = self.head(key)
        if old is not None and key not in self.data and _length(old[0]) > INLINE_VALUE_BYTES:
            ref = self.refs.get(key)
            if ref is None:
                self.replaced.append((key, old[0], old[1]))  # the stored record's value
            else:
                self.replaced_refs.append((key, ref, old[1]))
        if entry is not None:
            prev = 0 if old is None else old[1]
            self.events.append((self.revision, PUT, key, entry[0], entry[1], entry[2], prev))
            self.slots[key] = self.slot
        elif old is not None:
            self.events.append((self.revision, DELETE, key, None, self.revision, old[2], old[1]))
        before, after = (0 if old is None else old[3]), (0 if entry is None else entry[3])
        if before != after:
            if before:
                self._attach(before, key, False)
            if after:
                self._attach(after, key, True)
        self.data[key] = entry

    def _attach(self, lease_id: int, key: bytes, on: bool) -> None:
        self.attached[(lease_id, key)] = on
        lease = self.lease(lease_id)
        if lease is not None:
            self.leases[lease_id] = lease._replace(keys=lease.keys + (1 if on else -1))

    def read(self, key: bytes) -> tuple[bytes | None, int]:
        """(value, version) of `key`, or (None, 0) when absent."""
        record = self.record(key)
        return _ABSENT if record is None else record[:2]

    def record(self, key: bytes) -> _Record | None:
        if key in self.data:
            return self.data[key]
        raw = self.db.get(self.gen.data + key)
        return None if raw is None else self._stored(key, raw)

    def head(self, key: bytes) -> Any:
        """`record(key)` for a write that does not read the old value: a
        value in the value log is left unread (its reference, an ExtType)."""
        if key in self.data:
            return self.data[key]
        raw = self.db.get(self.gen.data + key)
        if raw is None:
            return None
        fields = _unpack(raw)
        if type(fields[0]) is _ExtType:
            self.refs[key] = fields[0].data
        return _from_fields(fields)

    def _stored(self, key: bytes, raw: bytes) -> _Record:
        """A stored record, its value read from the value log if it is
        there (the reference kept: `flush` drops it from the index)."""
        fields = _unpack(raw)
        if type(fields[0]) is _ExtType:
            self.refs[key] = fields[0].data
            fields[0] = _external(fields[0], self.values)
        return _from_fields(fields)

    def scan(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, _Record]]:
        """The keys in [start, end) (end None: no end) in key order, with
        their records, this call's changes included."""
        gen = self.gen
        stored = self.db.iterator(
            start=gen.data + start,
            stop=_range_end(gen.data) if end is None else gen.data + end,
        )
        skip = len(gen.data)
        below = ((db_key[skip:], self._stored(db_key[skip:], raw)) for db_key, raw in stored)
        return _merged(self.data, start, end, below)

    def write(self, key: bytes, value: bytes | None, lease: int = 0) -> int:
        """Sets (or with None deletes) `key` at the next revision, attached
        to `lease` (0: none; a put without a lease detaches the key)."""
        self.revision += 1
        if value is None:
            self.assign(key, None)
        else:
            old = self.head(key)
            create = self.revision if old is None else old[2]
            self.assign(key, (value, self.revision, create, lease), old)
        return self.revision

    def flush(self, batch: plyvel.WriteBatch, own: plyvel.WriteBatch | None = None) -> None:
        """Adds this call's changes to `batch`. `own`: where the value log's
        index goes when `batch` records effects (each replica keeps its own
        value log: its index is never part of the effects)."""
        gen = self.gen
        own = batch if own is None else own
        refs, min_bytes = self.refs, self.min_bytes
        for key, entry in self.data.items():
            if refs:
                old = refs.get(key)
                if old is not None:
                    own.delete(gen.value_key(old))
                    self.live.drop(old)  # type: ignore[union-attr]
            if entry is None:
                batch.delete(gen.data + key)
            elif min_bytes and len(entry[0]) >= min_bytes:
                ref = self.values.append(key, entry[0], self.slots[key])  # type: ignore[union-attr]
                batch.put(gen.data + key, _pack_record((_ExtType(VALUE_REF, ref), *entry[1:])))
                own.put(gen.value_key(ref), ref + key)
                self.live.add(ref)  # type: ignore[union-attr]
                self.externalized += 1
            else:
                batch.put(gen.data + key, _pack_record(entry))
        for (lease_id, key), on in self.attached.items():
            if on:
                batch.put(gen.attached_key(lease_id, key), b"")
            else:
                batch.delete(gen.attached_key(lease_id, key))
        for lease_id, lease in self.leases.items():
            old = self._stored_leases[lease_id]
            if old is not None and (lease is None or lease.deadline != old.deadline):
                batch.delete(gen.expiry_key(old.deadline, lease_id))
            if lease is None:
                batch.delete(gen.lease_key(lease_id))
            else:
                batch.put(gen.lease_key(lease_id), lease.pack())
                batch.put(gen.expiry_key(lease.deadline, lease_id), b"")
        self.sessions.flush(batch)


def _merged(
    overlay: dict[bytes, _Record | None],
    start: bytes,
    end: bytes | None,
    below: Iterator[tuple[bytes, _Record]],
) -> Iterator[tuple[bytes, _Record]]:
    """`below` (key, record) pairs in key order with the changes in
    `overlay` (None: deleted) in [start, end) laid over them."""
    mine = sorted(k for k in overlay if start <= k and (end is None or k < end))
    i = 0
    for key, record in below:
        while i < len(mine) and mine[i] < key:
            entry = overlay[mine[i]]
            if entry is not None:
                yield mine[i], entry
            i += 1
        if i < len(mine) and mine[i] == key:
            entry = overlay[key]
            i += 1
            if entry is not None:
                yield key, entry
            continue
        yield key, record
    for key in mine[i:]:
        entry = overlay[key]
        if entry is not None:
            yield key, entry


def _bounds(key: bytes, range_end: bytes | None) -> tuple[bytes, bytes | None] | None:
    """[start, end) of a range request (end None: no end), or None if empty."""
    if range_end is None:
        return key, key + b"\0"  # the key alone
    if range_end == FROM_KEY:
        return key, None
    return (key, range_end) if key < range_end else None


@dataclass(slots=True)
class _Budget:
    """What a range reply may still carry: one RANGE's, or a TXN's reads together."""

    keys: int = MAX_RANGE_KEYS
    bytes: int = MAX_RANGE_REPLY_BYTES


def _gather(
    entries: Iterable[tuple[bytes, _Record | None]],
    op: Request | TxnOp,
    budget: _Budget,
    progress: bool,
) -> RangeResult:
    """The range reply over `entries` for `op`'s limit, keys_only and
    count_only, within `budget`; `progress`: at least one key, whatever its
    size (a RANGE; a transaction's reads stop where its budget ends)."""
    kvs: list[KeyValue] = []
    count = 0
    limit, keys_only, count_only = op.limit, op.keys_only, op.count_only
    for key, record in entries:
        size = 0 if count_only else len(key) + (0 if keys_only else len(record[0]))
        if (
            count == limit > 0
            or budget.keys <= 0
            or (size > budget.bytes and (count > 0 or not progress))
        ):
            return RangeResult(tuple(kvs), count, True, key)
        count += 1
        budget.keys -= 1
        budget.bytes -= size
        if not count_only:
            kvs.append(KeyValue(key, None if keys_only else record[0], record[1], record[2]))
    return RangeResult(tuple(kvs), count, False, None)


class _Layer:
    """The writes of one DELETE_RANGE or TXN over the pending state, all at
    the revision after it, kept apart until `commit`: a command refused
    halfway leaves nothing behind."""

    __slots__ = ("data", "deletes_left", "pending", "revision", "wrote")

    def __init__(self, pending: _Pending) -> None:
        self.pending = pending
        self.data: dict[bytes, _Record | None] = {}
        self.revision = pending.revision + 1
        self.wrote = False
        self.deletes_left = MAX_DELETE_RANGE_KEYS

    def record(self, key: bytes) -> _Record | None:
        if key in self.data:
            return self.data[key]
        return self.pending.record(key)

    def scan(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, _Record]]:
        return _merged(self.data, start, end, self.pending.scan(start, end))

    def put(self, key: bytes, value: bytes) -> None:
        """A transaction's put (no lease: it detaches the key from one)."""
        old = self.record(key)
        self.data[key] = (value, self.revision, self.revision if old is None else old[2], 0)
        self.wrote = True

    def delete_range(self, key: bytes, range_end: bytes | None) -> int | Response:
        """Deletes the keys of the range; their number, or the TOO_LARGE
        response when there are more than this command may still delete."""
        bounds = _bounds(key, range_end)
        if bounds is None:
            return 0
        doomed = [k for k, _ in itertools.islice(self.scan(*bounds), self.deletes_left + 1)]
        if len(doomed) > self.deletes_left:
            return Response(
                Status.TOO_LARGE,
                error=f"the range holds more keys than one command may delete "
                f"({MAX_DELETE_RANGE_KEYS}); nothing was deleted: delete narrower ranges",
            )
        self.deletes_left -= len(doomed)
        for k in doomed:
            self.data[k] = None
        self.wrote = self.wrote or bool(doomed)
        return len(doomed)

    def commit(self) -> int:
        """Lays the writes onto the pending state; returns the revision after."""
        if self.wrote:
            pending = self.pending
            pending.revision = self.revision
            for key, entry in self.data.items():
                pending.assign(key, entry)
        return self.pending.revision


def _holds(cmp: Compare, record: _Record | None) -> bool:
    """Whether one comparison of a transaction holds (CompareTarget says how)."""
    target = cmp.target
    if target is CompareTarget.EXISTS:
        actual: bytes | int | bool = record is not None
    elif target is CompareTarget.VALUE:
        if record is None:
            return False  # as etcd: a value comparison needs the key
        actual = record[0]
    else:
        actual = 0 if record is None else record[1 if target is CompareTarget.VERSION else 2]
    operand = cmp.operand
    if cmp.op is CompareOp.EQUAL:
        return actual == operand
    if cmp.op is CompareOp.NOT_EQUAL:
        return actual != operand
    if cmp.op is CompareOp.LESS:
        return actual < operand
    return actual > operand


def _run_op(
    op: TxnOp, layer: _Layer, budget: _Budget
) -> RangeResult | DeleteResult | PutResult | Response:
    """One operation of a transaction's branch; a Response refuses it all."""
    if op.kind is TxnOpKind.PUT:
        assert op.value is not None  # validate_request
        layer.put(op.key, op.value)
        return PutResult(layer.revision)
    if op.kind is TxnOpKind.DELETE:
        deleted = layer.delete_range(op.key, op.range_end)
        return deleted if isinstance(deleted, Response) else DeleteResult(deleted)
    bounds = _bounds(op.key, op.range_end)
    return _gather(() if bounds is None else layer.scan(*bounds), op, budget, progress=False)


def _execute_txn(txn: Txn, pending: _Pending) -> Response:
    layer = _Layer(pending)
    holds = all(_holds(cmp, layer.record(cmp.key)) for cmp in txn.compares)
    budget = _Budget()
    results = []
    for op in txn.success if holds else txn.failure:
        result = _run_op(op, layer, budget)
        if isinstance(result, Response):
            return result
        results.append(result)
    revision = layer.commit()
    status = Status.OK if holds else Status.CAS_FAILED
    return Response(status, version=revision, result=TxnResult(tuple(results)))


def _execute_delete_range(req: Request, pending: _Pending) -> Response:
    layer = _Layer(pending)
    deleted = layer.delete_range(req.key, req.range_end)
    if isinstance(deleted, Response):
        return deleted
    if deleted == 0:
        return Response(Status.NOT_FOUND, result=DeleteResult(0))
    return Response(Status.OK, version=layer.commit(), result=DeleteResult(deleted))


def _parse(command: bytes) -> Request | Response:
    """The write request in `command`, or the error response that rejects it.
    Never raises: a bad command must have the same outcome on every replica."""
    parsed = parse_request(command)
    if isinstance(parsed, Request) and parsed.op not in WRITE_OPS:
        return Response(Status.BAD_REQUEST, error=f"{parsed.op.name} is not a write")
    return parsed


def _lease_not_found(lease_id: int) -> Response:
    return Response(
        Status.NOT_FOUND, error=f"lease {lease_id} not found (it expired, was revoked or never was)"
    )


def _put(req: Request, pending: _Pending) -> Response:
    """A PUT, attached to its lease if it names one (which must exist and
    have room for one more key)."""
    if req.lease:
        lease = pending.lease(req.lease)
        if lease is None:
            return _lease_not_found(req.lease)
        old = pending.head(req.key)  # its lease only
        if lease.keys >= MAX_LEASE_KEYS and (old is None or old[3] != req.lease):
            return Response(
                Status.TOO_LARGE,
                error=f"lease {req.lease} holds {MAX_LEASE_KEYS} keys, the most one lease may hold",
            )
    return Response(Status.OK, version=pending.write(req.key, req.value, req.lease))


def _drop_lease(lease_id: int, pending: _Pending) -> int:
    """Deletes a lease and its keys, the keys at ONE revision (none when it
    holds none); returns the revision after."""
    layer = _Layer(pending)
    for key in pending.lease_keys(lease_id):
        layer.data[key] = None
        layer.wrote = True
    revision = layer.commit()
    pending.set_lease(lease_id, None)
    return revision


def _execute_lease(req: Request, pending: _Pending) -> Response:
    """LEASE_GRANT, LEASE_KEEPALIVE, LEASE_REVOKE; the deadline is log time
    + TTL (log time: the clock command the leader put before it)."""
    lease_id = req.lease
    lease = pending.lease(lease_id)
    now = pending.sessions.log_time
    if req.op == Op.LEASE_GRANT:
        if lease is not None:
            return Response(Status.BAD_REQUEST, error=f"lease id {lease_id} is in use")
        pending.set_lease(lease_id, _Lease(req.ttl * 1000, now + req.ttl * 1000, 0))
        return Response(Status.OK, info={"id": lease_id, "ttl": req.ttl})
    if lease is None:
        return _lease_not_found(lease_id)
    if req.op == Op.LEASE_KEEPALIVE:
        pending.set_lease(lease_id, lease._replace(deadline=now + lease.ttl_ms))
        return Response(Status.OK, info={"id": lease_id, "ttl": lease.ttl_ms // 1000})
    return Response(Status.OK, version=_drop_lease(lease_id, pending))


def _expire_leases(lease_ids: list[int], pending: _Pending) -> None:
    """The leader's expiry command: each named lease that still exists and
    whose deadline is at or before log time goes, with its keys (a
    keep-alive applied before this command moved its deadline on)."""
    now = pending.sessions.log_time
    for lease_id in lease_ids:
        lease = pending.lease(lease_id)
        if lease is not None and lease.deadline <= now:
            _drop_lease(lease_id, pending)


def _execute(req: Request, pending: _Pending) -> Response:
    """Runs one validated write against the pending state."""
    key = req.key
    if req.op == Op.PUT:
        return _put(req, pending)
    if req.op in (Op.LEASE_GRANT, Op.LEASE_KEEPALIVE, Op.LEASE_REVOKE):
        return _execute_lease(req, pending)
    if req.op == Op.TXN:
        assert req.txn is not None  # validate_request
        return _execute_txn(req.txn, pending)
    if req.op == Op.DELETE_RANGE:
        return _execute_delete_range(req, pending)
    current, version = pending.read(key)
    if req.op == Op.DELETE:
        if current is None:
            return Response(Status.NOT_FOUND)
        pending.write(key, None)
        return Response(Status.OK)
    # CAS: validate_request guarantees exactly one expectation.
    if req.expected_version is not None:
        holds = req.expected_version == version
    else:
        holds = current is not None and current == req.expected_value
    if not holds:
        return Response(Status.CAS_FAILED, value=current, version=version)
    return Response(Status.OK, version=pending.write(key, req.value))


def _duration(ms: int) -> str:
    """`ms` for people: "1 h", "90 min", "1 s", "2.5 s"."""
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000} h"
    if ms % 60_000 == 0:
        return f"{ms // 60_000} min"
    return f"{ms / 1000:g} s"


def _session_expired(seq: int, ttl_ms: int) -> Response:
    return Response(
        Status.SESSION_EXPIRED,
        error=f"session expired or unknown: this client id has no session (sessions idle "
        f"for over {_duration(ttl_ms)} are forgotten), so request seq {seq} was not "
        "applied; start a new session (a new client id, seq 1)",
    )


SESSION_STAMP_MAX_MS = 1_000
"""The most a session's `last_used` is rounded up by (`_stamp`)."""


def _stamp(log_time: int, ttl_ms: int) -> int:
    """A session's `last_used` when it is used at `log_time`: log time
    rounded UP to a multiple of the stamp step, the TTL in force / 16 and at
    most SESSION_STAMP_MAX_MS (62 ms for a 1 s TTL, 1 s for the default
    hour). Its `t` index key, which holds `last_used`, then moves at most
    once per step instead of on every write: a busy client's writes carry
    a new log time in almost every slot (the leader's clock command), and
    moving the key was two of a PUT's six LevelDB operations, on every
    replica, plus the tombstones LevelDB compacts later. A session still
    expires only after it was idle for longer than the TTL (`last_used` is
    never before its last use), and at most one step later than that."""
    step = min(SESSION_STAMP_MAX_MS, ttl_ms // 16) or 1
    return -(-log_time // step) * step


def _answer(req: Request, command: bytes, pending: _Pending) -> Response:
    """One write with the exactly-once session rules around it."""
    sessions = pending.sessions
    session = sessions.get(req.client_id)
    digest = _digest(command)
    if session is None:
        if req.seq != 1 and sessions.forgot:
            return _session_expired(req.seq, sessions.ttl_ms)
    elif req.seq == session.seq:
        if not _same_request(digest, command, session.digest):
            return Response(
                Status.BAD_REQUEST,
                error=f"client id reused: seq {req.seq} already answered for a different request",
            )
        stamp = _stamp(sessions.log_time, sessions.ttl_ms)
        if stamp > session.last_used:
            sessions.put(req.client_id, session._replace(last_used=stamp))
        return session.response()  # a retry
    elif req.seq < session.seq:
        return _STALE
    resp = _execute(req, pending)
    stamp = _stamp(sessions.log_time, sessions.ttl_ms)
    if session is not None and session.last_used > stamp:  # the TTL, and the step, shrank
        stamp = session.last_used
    record = _Session(req.seq, digest, stamp, int(resp.status), resp.version)
    sessions.put(req.client_id, record)
    return resp


class _Install(NamedTuple):
    """The progress of a snapshot being staged (the `m install` record)."""

    snapshot_id: bytes
    index: int
    revision: int
    meta: bytes | None  # the snapshot's `m` item, once staged
    bytes: int
    keys: int
    last: bytes | None  # the last key staged: resume after it

    def pack(self) -> bytes:
        return _pack(list(self))

    @classmethod
    def unpack(cls, raw: bytes) -> _Install:
        return cls(*_unpack(raw))


_EFFECTS_FORMAT = 2  # 2: the event log's records (kvstore/events.py); 1 before
_MAX_REVISION = 2**63  # a revision in effects beyond it is malformed (event keys are u64)
_BYTES = frozenset((bytes,))
_OPTIONAL = frozenset((bytes, type(None)))


class _Recorder:
    """A WriteBatch that also lists what is put into it (for `Effects`):
    key, value (None: a delete), ... The values are the batch's own objects
    (no copy); the packed effects are bounded by EFFECTS_MAX_BYTES."""

    __slots__ = ("_put", "_delete", "_add", "ops")

    def __init__(self, batch: plyvel.WriteBatch) -> None:
        self._put = batch.put
        self._delete = batch.delete
        self.ops: list[bytes | None] = []
        self._add = self.ops.extend

    def put(self, key: bytes, value: bytes) -> None:
        self._put(key, value)
        self._add((key, value))

    def delete(self, key: bytes) -> None:
        self._delete(key)
        self._add((key, None))


class _EventRefs:
    """The value log as the watch event log uses it (kvstore/events.py,
    PUT_IN_LOG): an event that keeps a replaced value's reference has an
    index entry `rw + segment + offset -> reference + event id` (its
    record's key and its index there), and the value stays live until the
    event is trimmed."""

    __slots__ = ("_sm",)

    def __init__(self, sm: KVStateMachine) -> None:
        self._sm = sm

    def read(self, ref: bytes) -> bytes:
        return self._sm._values.read(ref)  # type: ignore[union-attr]

    def keep(self, batch: plyvel.WriteBatch, ref: bytes, event: bytes) -> None:
        batch.put(EVENT_REFS + ref[:_REF_POSITION], ref + event)
        self._sm._live.add(ref)

    def rename(self, batch: plyvel.WriteBatch, ref: bytes, event: bytes) -> None:
        """The event that keeps `ref` is now `event` (a migration of the
        event log's layout: the entry stays live)."""
        batch.put(EVENT_REFS + ref[:_REF_POSITION], ref + event)

    def drop(self, batch: plyvel.WriteBatch, ref: bytes) -> None:
        batch.delete(EVENT_REFS + ref[:_REF_POSITION])
        self._sm._live.drop(ref)


class KVStateMachine:
    """The KV data, client sessions, applied index and log time of one
    replica, kept in the `d`, `s`, `t` and `m` prefixes of its LevelDB."""

    def __init__(
        self,
        db: plyvel.DB,
        watch_retention: tuple[int, int] | None = None,
        values: ValueLog | None = None,
        value_min_bytes: int = vlog.VALUE_LOG_MIN_BYTES,
        value_spare_bytes: int | None = None,
    ) -> None:
        """`watch_retention`: (events, bytes) the event log keeps
        (kvstore/events.py; defaults there). `values`: the value log
        (kvstore/values.py), where PUTs put values of at least
        `value_min_bytes` (0: none; without a value log, none). Its garbage
        collection moves live entries only while it holds more than twice
        the live bytes plus `value_spare_bytes` (None: one segment)."""
        self._db = db
        self._values = values
        self._value_spare = (
            value_spare_bytes
            if value_spare_bytes is not None or values is None
            else values.segment_bytes
        )
        self._value_min = value_min_bytes if values is not None else 0
        raw = db.get(_META_KEY)
        if raw is not None and len(raw) == _OLD_META_BYTES:
            raise ValueError(
                "this data directory holds a state machine in the layout before "
                "generations (issue 11); start the replica on an empty data directory"
            )
        self._meta = _Meta.unpack(raw)
        self._gen = _GENS[self._meta.generation]
        self._session_floor = 0  # see _Sessions.next_floor
        raw = db.get(_INSTALL_KEY)
        self._install = None if raw is None else _Install.unpack(raw)
        self._garbage_clean = False  # True once the other generation is known empty
        self._gc_cursor: bytes | None = None  # other-generation keys up to here deleted
        self._session_count: int | None = None  # counted on first use, then kept
        schedule = self._meta.schedule
        self._schedule: Schedule | None = Schedule.unpack(schedule) if schedule else None
        self._schedule_changed = False
        self._unwritten: Any = None  # apply(defer_write=True)'s batch, not yet written
        self._effects: bytes | None = None  # apply(capture=True)'s, for take_effects
        self.events = EventLog(
            db,
            self._meta.revision,
            *(watch_retention or ()),
            value_at=self._value_at,
            refs=_EventRefs(self) if values is not None else None,
        )
        self._live = self._count_live()
        if values is not None and self._live.entries:
            values.start_after(max(self._live.entries))

    def _count_live(self) -> _Live:
        """The value log's live entries: the current generation's records'
        and the watch events' (which belong to no generation)."""
        live = _Live()
        for prefix in (self._gen.values, EVENT_REFS):
            for _, item in self._db.iterator(prefix=prefix):
                live.add(item[: vlog.REF_BYTES])
        return live

    @property
    def applied_index(self) -> int:
        """Number of slots applied, which is the next slot to apply."""
        return self._meta.applied_index

    @property
    def revision(self) -> int:
        """Number of successful writes so far (the latest version handed out)."""
        return self._meta.revision

    @property
    def log_time(self) -> int:
        """The latest leader time (unix ms) applied from the log; 0 before any."""
        return self._meta.log_time

    @property
    def session_ttl_ms(self) -> int:
        """The session TTL in force: the last one a clock command of the log
        carried, else SESSION_TTL_MS."""
        return self._meta.session_ttl_ms

    # -- apply ----------------------------------------------------------------

    def apply(
        self,
        entries: Iterable[tuple[int, tuple[bytes, ...]]],
        defer_write: bool = False,
        capture: bool = False,
    ) -> list[Result]:
        """Applies chosen slots `(slot, value)` in order, starting exactly at
        `applied_index`, in one atomic LevelDB batch. Returns the outcome of
        every command, in log order. Raises ValueError (writing nothing) if
        the slots are not consecutive from `applied_index`: a driver bug.

        `defer_write=True` leaves the batch unwritten until `write_applied()`
        (or the next `apply`): the replica answers the writers first, since
        the answers do not depend on the batch (an unsynced write, which a
        crash may lose either way: the log it came from is durable). Until
        then the in-memory state is ahead of the DB: nothing may be read.

        `capture=True` also records the batch as effects (`take_effects`;
        "Effects" in the module doc)."""
        if self._unwritten is not None:
            self.write_applied()
        self._effects = None
        start = self._meta.applied_index
        pending = _Pending(
            self._db, self._meta, self._session_floor, self._values, self._value_min, self._live
        )
        results: list[Result] = []
        next_slot = self._meta.applied_index
        schedule_bytes = self._meta.schedule
        for slot, value in entries:
            if slot != next_slot:
                raise ValueError(f"slot {slot} applied out of order; expected {next_slot}")
            pending.slot = slot
            for command in value:
                if command[:1] == CONFIG_TAG:
                    results.append(self._apply_change(slot, command))
                else:
                    results.append(self._apply_command(command, pending))
            next_slot += 1
        if next_slot == self._meta.applied_index:
            return results
        if self._schedule is not None:
            before = len(self._schedule.entries)
            self._schedule.prune(next_slot)
            if (
                self._schedule_changed
                or len(self._schedule.entries) != before
                or not schedule_bytes
            ):
                schedule_bytes = self._schedule.pack()
            self._schedule_changed = False
        sessions = pending.sessions
        meta = _Meta(
            next_slot,
            pending.revision,
            sessions.log_time,
            sessions.forgot,
            self._gen.number,
            sessions.ttl_ms,
            sessions.expired_before,
            schedule_bytes,
        )
        batch = self._db.write_batch()
        sink = _Recorder(batch) if capture else batch
        pending.flush(sink, batch)
        stored: list[bytes] | None = [] if capture else None
        self.events.append(
            batch, pending.events, pending.data, pending.replaced, stored, pending.replaced_refs
        )
        sink.put(_META_KEY, meta.pack())
        if defer_write:
            self._unwritten = batch
        else:
            self._write(batch)
        self._session_floor = sessions.next_floor(self._meta.log_time)
        self._meta = meta
        if self._session_count is not None:
            self._session_count += sessions.added
        if capture:
            effects = _pack(
                [
                    _EFFECTS_FORMAT,
                    start,
                    next_slot,
                    meta.generation,
                    self._session_floor,
                    sessions.added,
                    sink.ops,  # type: ignore[union-attr]
                    stored,
                    pending.replaced,
                ]
            )
            fits = (
                len(effects) <= EFFECTS_MAX_BYTES
                and not pending.externalized
                and not pending.replaced_refs
            )
            self._effects = effects if fits else None
        return results

    def take_effects(self) -> bytes | None:
        """The effects of the last `apply(capture=True)`, once (None: too
        large, or nothing was applied)."""
        effects, self._effects = self._effects, None
        return effects

    def apply_effects(
        self,
        entries: list[tuple[int, tuple[bytes, ...]]],
        effects: bytes,
        defer_write: bool = False,
    ) -> bool:
        """Applies the chosen slots `entries` by writing the batch another
        replica's `apply(capture=True)` made of the same slots, instead of
        executing them ("Effects" in the module doc). Returns False, having
        changed nothing, if those effects do not fit this state machine
        (other slots or a different starting point, another generation, or
        malformed): the caller then calls `apply`."""
        try:
            header = _unpack(effects)
            problem = self._effects_refusal(entries, header)
        except Exception:  # msgpack raises several unrelated types
            problem = "malformed"
        if problem is not None:
            return False
        ops = header[6]
        meta = _Meta.unpack(ops[-1])
        if self._unwritten is not None:
            self.write_applied()
        self._effects = None
        batch = self._db.write_batch()
        put, delete = batch.put, batch.delete
        if self._live.count:  # records here that refer to this replica's value log
            self._drop_refs(batch, ops[::2])
        for key, value in zip(ops[::2], ops[1::2], strict=True):
            if value is None:
                delete(key)
            else:
                put(key, value)
        self.events.store(batch, header[7], header[8])
        if defer_write:
            self._unwritten = batch
        else:
            self._write(batch)
        if meta.schedule != self._meta.schedule or self._schedule_changed:
            self._schedule = Schedule.unpack(meta.schedule) if meta.schedule else None
        elif self._schedule is not None:
            self._schedule.prune(meta.applied_index)
        self._schedule_changed = False
        self._session_floor = max(self._session_floor, header[4])
        self._meta = meta
        if self._session_count is not None:
            self._session_count += header[5]
        return True

    def _effects_refusal(
        self, entries: list[tuple[int, tuple[bytes, ...]]], header: Any
    ) -> str | None:
        """Why `header` (unpacked effects) cannot stand for applying `entries`
        here, or None."""
        if type(header) is not list or len(header) != 9 or header[0] != _EFFECTS_FORMAT:
            return "malformed"
        start, end = header[1], header[2]
        if not entries or start != self._meta.applied_index or entries[0][0] != start:
            return "another starting point"
        if end != start + len(entries) or entries[-1][0] != end - 1:
            return "other slots"
        if header[3] != self._meta.generation:
            return "another generation"  # a snapshot install flipped one of us
        ops, events, replaced = header[6], header[7], header[8]
        if (
            type(ops) is not list
            or len(ops) < 2
            or len(ops) % 2
            or ops[-2] != _META_KEY
            or type(events) is not list
            or len(events) % 2
            or type(replaced) is not list
            or type(header[4]) is not int
            or type(header[5]) is not int
        ):
            return "malformed"
        meta = _Meta.unpack(ops[-1])
        if meta.applied_index != end or meta.generation != self._meta.generation:
            return "malformed"
        if meta.schedule and meta.schedule != self._meta.schedule:
            Schedule.unpack(meta.schedule)  # raises if malformed
        if not set(map(type, ops[::2])) <= _BYTES or not set(map(type, ops[1::2])) <= _OPTIONAL:
            return "malformed"
        if not all(map(valid_record, events[::2], events[1::2])):
            return "malformed"
        for item in replaced:
            if (
                type(item) is not list
                or len(item) != 3
                or type(item[0]) is not bytes
                or type(item[1]) is not bytes
                or type(item[2]) is not int
                or not 0 <= item[2] < _MAX_REVISION
            ):
                return "malformed"
        return None

    def write_applied(self) -> None:
        """Writes the batch `apply(..., defer_write=True)` left (none: no-op)."""
        batch, self._unwritten = self._unwritten, None
        if batch is not None:
            self._write(batch)

    def _write(self, batch: plyvel.WriteBatch) -> None:
        """Writes an apply's batch, after the value log entries it names
        (`flush`; the apply only appended them). These are not synced: a
        crash that loses them is repaired from the log ("Large values in
        the value log" in the module doc)."""
        if self._values is not None:
            self._values.flush()
        batch.write()

    def sync_values(self) -> None:
        """Makes every value log entry durable: the driver calls it before
        it persists a compaction point (the votes below it, from which a
        lost entry would be restored, are deleted then)."""
        if self._values is not None and self._values.dirty:
            self._values.sync()

    def repair_values(self, chosen: Callable[[int], Iterable[bytes] | None], compacted: int) -> int:
        """Restores, when the replica starts, the value log entries that a
        power failure lost while records or watch events that name them
        survived: every named entry of a slot at or above `compacted` (the
        acceptor log's compaction point; below it every entry was synced)
        is read, and one that is missing or damaged is written again from
        the chosen value of its slot (`chosen(slot)`: its commands, from
        the durable acceptor state). Returns how many were restored;
        raises CorruptValue if one cannot be (a damaged data directory)."""
        values = self._values
        if values is None:
            return 0
        gen, db = self._gen, self._db
        batch = db.write_batch(sync=True)
        restored = 0
        for prefix in (gen.values, EVENT_REFS):
            for index_key, item in db.iterator(prefix=prefix):
                ref, name = item[: vlog.REF_BYTES], item[vlog.REF_BYTES :]
                slot = vlog.ref_slot(ref)
                if slot < compacted:
                    continue
                try:
                    values.read(ref)
                    continue
                except vlog.CorruptValue:
                    pass
                key = name if prefix != EVENT_REFS else self.events.event_of(name)
                value = _value_in(chosen(slot), key, ref)
                if key is None or value is None:
                    raise vlog.CorruptValue(
                        f"the value log lost the value of {name[:64]!r} (slot {slot}) and the "
                        "log no longer holds it: the data directory is damaged"
                    )
                new = values.append(key, value, slot)
                self._rename(batch, prefix, index_key, name, ref, new)
                restored += 1
        if restored:
            self.events.flush(batch)
            values.sync()
            batch.write()
        return restored

    def _rename(
        self,
        batch: plyvel.WriteBatch,
        prefix: bytes,
        index_key: bytes,
        name: bytes,
        ref: bytes,
        new: bytes,
    ) -> bool:
        """Points the record (or watch event) `name` that holds `ref` at
        `new` instead, with the index; False if it holds something else."""
        if prefix == EVENT_REFS:
            if not self.events.repoint(batch, name, ref, new):
                return False
        else:
            raw = self._db.get(self._gen.data + name)
            if raw is None or _stored_ref(raw) != ref:
                return False
            fields = _unpack(raw)
            fields[0] = _ExtType(VALUE_REF, new)
            batch.put(self._gen.data + name, _pack(fields))
        batch.delete(index_key)
        batch.put(prefix + new[:_REF_POSITION], new + name)
        self._live.drop(ref)
        self._live.add(new)
        return True

    def _drop_refs(self, batch: plyvel.WriteBatch, keys: Iterable[bytes]) -> None:
        """Drops from the value log's index the references of the stored
        records of `keys` (db keys) that effects are about to overwrite."""
        data, gen = self._gen.data, self._gen
        for key in keys:
            if key.startswith(data):
                raw = self._db.get(key)
                ref = None if raw is None else _stored_ref(raw)
                if ref is not None:
                    batch.delete(gen.value_key(ref))
                    self._live.drop(ref)

    def _apply_change(self, slot: int, command: bytes) -> Result:
        """A membership change (kvstore/membership.py): the answer goes to the
        request it names; the new membership is in force from slot + ALPHA."""
        change = decode_change(command)
        if change is None:
            return b"", 0, Response(Status.BAD_REQUEST, error="malformed membership change")
        waiter = CONFIG_TAG + change.request_id
        if self._schedule is None:
            return waiter, 0, Response(Status.BAD_REQUEST, error="no membership known")
        problem = check(self._schedule.latest, change)
        if problem is not None:
            return waiter, 0, Response(Status.BAD_REQUEST, error=problem)
        new = apply_change(self._schedule.latest, change)
        assert new is not None
        self._schedule.entries.append((slot + ALPHA, new))
        self._schedule_changed = True
        info = {**new.report(), "in_force_from": slot + ALPHA}
        return waiter, 0, Response(Status.OK, info=info)

    def membership_schedule(self, bootstrap: Membership) -> Schedule:
        """The memberships from `applied_index` on: the recorded ones, or
        `bootstrap` (a new cluster's) when none was ever recorded."""
        if self._schedule is None:
            self._schedule = Schedule([(0, bootstrap)])
            self._schedule_changed = True
        return self._schedule.copy()

    def reset_membership(self, membership: Membership) -> None:
        """Makes `membership` the one in force from the applied index on (a
        restored backup becomes a NEW cluster: replica/admin.py). Synced."""
        self._schedule = Schedule([(self._meta.applied_index, membership)])
        self._meta = self._meta._replace(schedule=self._schedule.pack())
        batch = self._db.write_batch(sync=True)
        batch.put(_META_KEY, self._meta.pack())
        batch.write()
        self._schedule_changed = False

    @property
    def membership(self) -> Membership | None:
        """The latest membership (changes chosen but not in force included)."""
        return None if self._schedule is None else self._schedule.latest

    @staticmethod
    def _apply_command(command: bytes, pending: _Pending) -> Result:
        """One command: a clock command sets the TTL, advances log time and
        expires sessions; a write goes through the session rules."""
        clock = decode_clock(command)
        if clock is not None:
            sessions = pending.sessions
            sessions.advance(*clock)
            sessions.expire(SESSION_EXPIRY_PER_CLOCK)
            return b"", 0, _CLOCK_DONE
        expired = decode_lease_expiry(command)
        if expired is not None:
            _expire_leases(expired, pending)
            return b"", 0, _CLOCK_DONE
        parsed = _parse(command)
        if isinstance(parsed, Response):
            return b"", 0, parsed
        return parsed.client_id, parsed.seq, _answer(parsed, command, pending)

    # -- reads ----------------------------------------------------------------

    def _value_at(self, key: bytes, revision: int) -> bytes | None:
        """The value of `key`'s record if it is at `revision` (the watch
        event log's PUT_IN_RECORD events), else None."""
        raw = self._db.get(self._gen.data + key)
        if raw is None:
            return None
        value, version, _, _ = _record(raw, self._values)
        return value if version == revision else None

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        """(value, version) of `key` as of `applied_index`, or None."""
        raw = self._db.get(self._gen.data + key)
        if raw is None:
            return None
        value, version, _, _ = _record(raw, self._values)
        return value, version

    def read_range(self, req: Request) -> Response:
        """The reply to a RANGE request as of `applied_index`: OK, the
        revision, and a RangeResult within MAX_RANGE_KEYS keys and about
        MAX_RANGE_REPLY_BYTES (at least one key), with a continuation."""
        bounds = _bounds(req.key, req.range_end)
        entries: Iterable[tuple[bytes, _Record | None]] = ()
        if bounds is not None:
            entries = self._scan(*bounds, values=not req.count_only)
        result = _gather(entries, req, _Budget(), progress=True)
        return Response(Status.OK, version=self.revision, result=result)

    def _scan(
        self, start: bytes, end: bytes | None, values: bool
    ) -> Iterator[tuple[bytes, _Record | None]]:
        data = self._gen.data
        stop = _range_end(data) if end is None else data + end
        skip = len(data)
        if not values:  # count only: no record is decoded
            for db_key in self._db.iterator(start=data + start, stop=stop, include_value=False):
                yield db_key[skip:], None
            return
        for db_key, raw in self._db.iterator(start=data + start, stop=stop):
            yield db_key[skip:], _record(raw, self._values)

    # -- watch (kvstore/events.py) ------------------------------------------------

    def watch_events(
        self, start: int, key: bytes, range_end: bytes | None, prev_kv: bool = False
    ) -> tuple[list[Event], int] | None:
        """The changes to the range from revision `start` on (a bounded
        batch of whole revisions) and the revision to go on from; None when
        `start` is below `events.floor` (compacted here). `prev_kv`: with
        previous values."""
        bounds = _bounds(key, range_end)
        if bounds is None:
            return ([], self.revision + 1) if start >= self.events.floor else None
        return self.events.read(start, *bounds, self.revision, prev_kv=prev_kv)

    # -- leases -------------------------------------------------------------------

    def lease(self, lease_id: int) -> tuple[int, int, int] | None:
        """(ttl_ms, deadline in log time, keys) of a lease, or None."""
        raw = self._db.get(self._gen.lease_key(lease_id))
        return None if raw is None else tuple(_Lease.unpack(raw))

    def lease_keys(self, lease_id: int, budget: int = MAX_RANGE_KEYS) -> RangeResult:
        """The keys of a lease in key order, keys only: at most `budget`
        (then `more`, and `next_key` the next one)."""
        prefix = self._gen.attached_key(lease_id, b"")
        keys = self._db.iterator(prefix=prefix, include_value=False)
        found = [k[len(prefix) :] for k in itertools.islice(keys, budget + 1)]
        kvs = tuple(KeyValue(k, None, 0, 0) for k in found[:budget])
        more = len(found) > budget
        return RangeResult(kvs, len(kvs), more, found[-1] if more else None)

    def lease_ids(self, after: int, limit: int) -> tuple[list[int], bool]:
        """Up to `limit` lease ids above `after` in order, and whether more remain."""
        prefix = self._gen.leases
        found = self._db.iterator(
            start=self._gen.lease_key(after),
            stop=_range_end(prefix),
            include_start=False,
            include_value=False,
        )
        ids = [_LEASE_ID.unpack_from(k, len(prefix))[0] for k in itertools.islice(found, limit + 1)]
        return ids[:limit], len(ids) > limit

    def leases_due(self, now_ms: int, limit: int) -> Iterator[tuple[int, int, int]]:
        """(lease id, ttl_ms, keys) of the leases whose deadline is at or
        before `now_ms`, earliest deadline first, at most `limit` looked at."""
        gen = self._gen
        stop = gen.expiry + _TIME.pack(min(now_ms + 1, 2**64 - 1))
        entries = self._db.iterator(start=gen.expiry, stop=stop, include_value=False)
        skip = len(gen.expiry) + _TIME.size
        for db_key in itertools.islice(entries, limit):
            lease_id = _LEASE_ID.unpack_from(db_key, skip)[0]
            found = self.lease(lease_id)
            if found is not None:
                yield lease_id, found[0], found[2]

    def key_count(self) -> int:
        return sum(1 for _ in self._db.iterator(prefix=self._gen.data, include_value=False))

    def session_count(self) -> int:
        """Number of stored sessions (expired ones not yet deleted included).
        Counted once, then kept up to date by `apply` (cheap for STATUS)."""
        if self._session_count is None:
            keys = self._db.iterator(prefix=self._gen.sessions, include_value=False)
            self._session_count = sum(1 for _ in keys)
        return self._session_count

    def checksum(self) -> str:
        """sha256 (hex) over every (key, value, version) in key order: equal on
        two replicas exactly when their data is equal."""
        digest = hashlib.sha256()
        skip = len(self._gen.data)
        for db_key, raw in self._db.iterator(prefix=self._gen.data):
            raw = _canonical(raw, self._values)
            # Length prefixes keep (key, record) boundaries unambiguous.
            digest.update(_LENGTHS.pack(len(db_key) - skip, len(raw)))
            digest.update(db_key[skip:])
            digest.update(raw)
        return digest.hexdigest()

    # -- snapshots: export ------------------------------------------------------

    def snapshot_reader(self) -> SnapshotReader:
        """A consistent view of the state machine at its applied index, read
        from a LevelDB snapshot (later applies do not leak in); close it."""
        snap = self._db.snapshot()
        return SnapshotReader(snap, _Meta.unpack(snap.get(_META_KEY)), self._values)

    # -- snapshots: staged install ----------------------------------------------

    def install_begin(self, snapshot_id: bytes, index: int, revision: int) -> bytes | None:
        """Starts staging snapshot `snapshot_id` (of a state machine at applied
        index `index` and `revision`), or resumes it after a crash: returns
        the key to continue after (None: from the start). Staging another
        snapshot first discards what was staged, in batches of GC_BATCH_KEYS
        (the progress record goes first, so a crash never resumes a half
        discarded snapshot); the new progress record rides in the last one."""
        staged = self._install
        if staged is not None and staged[:3] == (snapshot_id, index, revision):
            return staged.last
        fresh = _Install(snapshot_id, index, revision, None, 0, 0, None)
        drop = staged is not None
        self._install = None
        more = True
        while more:
            batch = self._db.write_batch()
            if drop:
                batch.delete(_INSTALL_KEY)
                drop = False
            more = self._delete_other(batch, GC_BATCH_KEYS)
            if not more:
                batch.put(_INSTALL_KEY, fresh.pack())
            batch.write()
        self._install = fresh
        self._garbage_clean, self._gc_cursor = False, None
        return None

    def install_chunk(self, items: list[tuple[bytes, bytes]], last: bytes | None = None) -> None:
        """Stages the items of one chunk from `SnapshotReader.chunk` into the
        other generation (never the live data), with the progress in the same
        batch, unsynced (the flip's synced batch makes it durable). `last`,
        if given, must be the last item's key. Items at or before the
        progress's last key are skipped (a chunk sent again). Raises
        ValueError, staging nothing, on a malformed or out-of-order item, or
        when nothing is being staged."""
        staged = self._install
        if staged is None:
            raise ValueError("no snapshot is being staged: call install_begin first")
        if last is not None and (not items or items[-1][0] != last):
            raise ValueError("a chunk's last key must be its last item's key")
        target = _GENS[1 - self._gen.number]
        batch = self._db.write_batch()
        progress = staged
        for key, record in items:
            if staged.last is not None and key <= staged.last:
                continue  # staged before
            if progress.last is not None and key <= progress.last:
                raise ValueError("snapshot items out of key order")
            meta = _stage_item(batch, target, staged, key, record)
            progress = progress._replace(
                bytes=progress.bytes + len(key) + len(record),
                keys=progress.keys + 1,
                last=key,
                meta=progress.meta if meta is None else meta,
            )
        batch.put(_INSTALL_KEY, progress.pack())
        batch.write()
        self._install = progress

    def install_finish(self) -> None:
        """Makes the staged snapshot the state machine, atomically, with one
        small synced batch: the generation flips, and applied index, revision
        and log time become the snapshot's. Call it once every chunk up to
        the one `SnapshotReader.chunk` returned with `last` None is staged.
        The session TTL and expiry cutoff come with the snapshot too.
        The previous generation is then garbage for `collect_garbage`.
        Raises ValueError, changing nothing, if nothing or too little (no
        `m` item yet) is staged, or if the snapshot is behind the state:
        then `install_abort()` it."""
        staged = self._install
        if staged is None or staged.meta is None:
            raise ValueError("the snapshot is not completely staged")
        if staged.index < self._meta.applied_index:
            raise ValueError(
                f"snapshot at index {staged.index} is behind the applied index "
                f"{self._meta.applied_index}; install_abort() it"
            )
        new = _GENS[1 - self._gen.number]
        index, revision, log_time, forgot, ttl, before, schedule = _snapshot_meta(staged.meta)
        if not schedule and self._schedule is not None:
            schedule = self._schedule.pack()  # a snapshot from before memberships were recorded
        meta = _Meta(index, revision, log_time, forgot, new.number, ttl, before, schedule)
        batch = self._db.write_batch(sync=True)
        batch.put(_META_KEY, meta.pack())
        batch.delete(_INSTALL_KEY)
        self.events.raise_floor(batch, revision)
        batch.write()
        self._meta, self._gen, self._install = meta, new, None
        self._session_floor = 0  # the new generation's index: scan it from the start
        if schedule:
            self._schedule = Schedule.unpack(schedule)
            self._schedule_changed = False
        self._session_count = None
        self._garbage_clean, self._gc_cursor = False, None
        self._live = self._count_live()  # none: a snapshot's values are inline

    def install_abort(self) -> None:
        """Forgets the snapshot being staged (one small batch); what it staged
        is then garbage for `collect_garbage`."""
        if self._install is not None:
            self._db.delete(_INSTALL_KEY)
            self._install = None
            self._garbage_clean, self._gc_cursor = False, None

    def install_progress(self) -> dict[str, Any] | None:
        """{"snapshot_id", "index", "bytes", "keys", "last"} of the snapshot
        being staged (`last`: the key to resume after), else None."""
        staged = self._install
        if staged is None:
            return None
        return {
            "snapshot_id": staged.snapshot_id,
            "index": staged.index,
            "bytes": staged.bytes,
            "keys": staged.keys,
            "last": staged.last,
        }

    def collect_garbage(self, max_keys: int = GC_BATCH_KEYS) -> bool:
        """Deletes up to `max_keys` keys of the previous generation (left by an
        install, or an abandoned staging) in one unsynced batch, and then
        collects a bounded part of the value log's garbage (`_collect_values`).
        Returns True while garbage remains: the driver calls it again on a
        later iteration. Does nothing while a snapshot is being staged."""
        if self._install is not None:
            return False
        self.write_applied()
        more = False
        if not self._garbage_clean:
            batch = self._db.write_batch()
            more = self._delete_other(batch, max_keys)
            batch.write()
            self._garbage_clean = not more
        if self._values is not None:
            more = self._collect_values() or more
        return more

    def _values_barrier(self) -> None:
        """The value log synced, then a synced batch: every entry and every
        batch written before it is durable."""
        if self._values is not None and self._values.dirty:
            self._values.sync()
        barrier = self._db.write_batch(sync=True)
        barrier.delete(_VALUES_BARRIER_KEY)
        barrier.write()

    def _collect_values(self) -> bool:
        """One step of the value log's garbage collection ("Large values in
        the value log" in the module doc): deletes the closed segments no
        record refers to any more, once a synced batch has made the batches
        that dropped their last references durable; or else, while the log
        holds more than twice the live bytes plus a segment, moves up to
        VALUE_GC_BYTES of the live entries of the closed segment with the
        smallest live share under VALUE_GC_LIVE_SHARE to the end of the
        log (the entries synced before the records that name them). True
        while there is more to do."""
        values, live = self._values, self._live
        assert values is not None
        dead = [s for s in values.sizes if s != values.active and not live.entries.get(s)]
        if dead:
            self._values_barrier()
            for segment in dead:
                values.remove(segment)
                live.bytes.pop(segment, None)
                live.entries.pop(segment, None)
            return True
        if values.disk_bytes() <= 2 * sum(live.bytes.values()) + self._value_spare:
            return False
        victim, share = None, VALUE_GC_LIVE_SHARE
        for segment, size in values.sizes.items():
            if segment != values.active and size and live.bytes.get(segment, 0) / size < share:
                victim, share = segment, live.bytes.get(segment, 0) / size
        if victim is None:
            return False
        gen, db = self._gen, self._db
        batch = db.write_batch()
        moved = 0
        for prefix in (gen.values, EVENT_REFS):
            for index_key, item in db.iterator(prefix=prefix + _SEGMENT.pack(victim)):
                if moved >= VALUE_GC_BYTES:
                    break
                ref, name = item[: vlog.REF_BYTES], item[vlog.REF_BYTES :]
                value = values.read(ref)
                key = name if prefix != EVENT_REFS else self.events.event_of(name)
                new = values.append(key or b"", value, vlog.ref_slot(ref))
                if not self._rename(batch, prefix, index_key, name, ref, new):
                    batch.delete(index_key)  # names nothing (cannot happen: same batches)
                    live.drop(ref)
                moved += len(value)
        self.events.flush(batch)
        values.sync()  # the moved entries may be below the compaction point
        batch.write()
        return True

    def _delete_other(self, batch: plyvel.WriteBatch, max_keys: int) -> bool:
        """Adds deletes of up to `max_keys` keys of the other generation to
        `batch`, in key order from `_gc_cursor`; True if more remain. The
        cursor saves rescanning deleted keys; only this object deletes there."""
        left = max_keys
        cursor = self._gc_cursor
        for prefix in _GENS[1 - self._gen.number].prefixes():
            end = _range_end(prefix)
            if cursor is not None and cursor >= end:
                continue
            resume = cursor is not None and cursor >= prefix
            keys = self._db.iterator(
                start=cursor if resume else prefix,
                stop=end,
                include_start=not resume,
                include_value=False,
            )
            for db_key in keys:
                if left == 0:
                    return True
                batch.delete(db_key)
                self._gc_cursor = db_key
                left -= 1
        return False


def _stage_item(
    batch: plyvel.WriteBatch, target: _Gen, staged: _Install, key: bytes, record: bytes
) -> bytes | None:
    """Adds one snapshot item to `batch` in generation `target`, after
    checking it; returns the record if it is the snapshot's `m` item (kept
    in the progress record until the flip)."""
    kind, rest = key[:1], key[1:]
    if kind == SNAPSHOT_DATA and rest:
        fields = _unpack(record)
        if not isinstance(fields, list) or [type(f) for f in fields] not in _DATA_RECORD_TYPES:
            raise ValueError("malformed data record in snapshot")
        batch.put(target.data + rest, record)
        if len(fields) == 4:  # the lease's index of its keys is derived here
            if fields[3] < 1:
                raise ValueError("malformed data record in snapshot")
            batch.put(target.attached_key(fields[3], rest), b"")
        return None
    if kind == SNAPSHOT_LEASE and len(rest) == _LEASE_ID.size:
        lease = _Lease.unpack(record)
        batch.put(target.leases + rest, record)
        batch.put(target.expiry + _TIME.pack(lease.deadline) + rest, b"")
        return None
    if kind == SNAPSHOT_SESSION and len(rest) == CLIENT_ID_BYTES:
        session = _Session.unpack(record)
        batch.put(target.sessions + rest, record)
        batch.put(target.index_key(session.last_used, rest), b"")
        return None
    if key == SNAPSHOT_META:
        index, revision, *_ = _snapshot_meta(record)
        if (index, revision) != (staged.index, staged.revision):
            raise ValueError("snapshot meta item does not match install_begin's index/revision")
        return record
    raise ValueError(f"unknown snapshot item {key[:24]!r}")


class SnapshotReader:
    """A consistent export of one state machine at `index` (its applied
    index), `revision` and `log_time`, read from a LevelDB snapshot in
    bounded chunks. Keys name no generation: `d` + key (record as stored:
    [value, version]), `m` (index, revision, log_time as three big-endian
    u64, a byte: whether a session was ever forgotten, then session_ttl_ms
    and expired_before as two big-endian u64) and `s` + client_id (session
    record as stored), in key order."""

    def __init__(self, snap: plyvel.Snapshot, meta: _Meta, values: ValueLog | None = None) -> None:
        self._snap = snap
        self._values = values
        if values is not None:
            values.pin()  # the segments this snapshot refers to stay
        self._gen = _GENS[meta.generation]
        self._meta = meta
        self.index = meta.applied_index
        self.revision = meta.revision
        self.log_time = meta.log_time
        self.session_ttl_ms = meta.session_ttl_ms

    def chunk(
        self, after: bytes | None, max_bytes: int
    ) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """(items, last): the (key, record) items after key `after` (None or
        b"": from the start), in key order, at least one and otherwise at
        most `max_bytes` of keys and records together; `last` is the last
        item's key, or None when these items complete the snapshot (items
        may then be [])."""
        items: list[tuple[bytes, bytes]] = []
        size = 0
        for key, record in self._items_after(after or None):
            if items and size + len(key) + len(record) > max_bytes:
                return items, items[-1][0]
            items.append((key, record))
            size += len(key) + len(record)
        return items, None

    def _items_after(self, after: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """The sections in key order (d, l, m, s), from the one `after` is in."""
        kind = b"" if after is None else after[:1]
        if kind not in (b"", SNAPSHOT_DATA, SNAPSHOT_LEASE, SNAPSHOT_SESSION) and (
            after != SNAPSHOT_META
        ):
            raise ValueError(f"not a snapshot key: {after[:24]!r}")
        gen = self._gen
        for section, prefix in (
            (SNAPSHOT_DATA, gen.data),
            (SNAPSHOT_LEASE, gen.leases),
            (SNAPSHOT_META, None),
            (SNAPSHOT_SESSION, gen.sessions),
        ):
            if section < kind:
                continue  # wholly before `after`
            if prefix is not None:
                yield from self._range(section, prefix, after)
            elif after != SNAPSHOT_META:
                yield SNAPSHOT_META, self._meta.snapshot_item()

    def _range(
        self, kind: bytes, prefix: bytes, after: bytes | None
    ) -> Iterator[tuple[bytes, bytes]]:
        """The items of one kind, after `after` if it is one of them."""
        resume = after is not None and after[:1] == kind
        entries = self._snap.iterator(
            start=prefix + after[1:] if resume else prefix,
            stop=_range_end(prefix),
            include_start=not resume,
        )
        skip = len(prefix)
        if kind != SNAPSHOT_DATA:
            for db_key, record in entries:
                yield kind + db_key[skip:], record
            return
        values = self._values
        for db_key, record in entries:  # values inline: layouts differ
            yield kind + db_key[skip:], _canonical(record, values)

    def close(self) -> None:
        self._snap.close()
        values, self._values = self._values, None
        if values is not None:
            values.unpin()

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
