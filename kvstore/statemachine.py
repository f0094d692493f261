"""The replicated key-value state machine on LevelDB.

Theory of operation
-------------------
Every replica feeds the same chosen log, slot by slot and in order, to a
`KVStateMachine`. A slot value is a tuple of encoded write requests (PUT,
DELETE, CAS) exactly as the clients sent them; `()` is a no-op. Applying must
be deterministic: the same log gives the same bytes on every replica, so
nothing here looks at clocks, randomness or anything outside the log, and a
bad command is answered with an error instead of raising.

The state machine owns three prefixes of the replica's single LevelDB (the
other prefixes belong to replica/storage.py and are never touched here):

    d + key        -> msgpack [value, version]    the KV data
    s + client_id  -> msgpack [last_seq, encoded Response]   client sessions
    m + b"state"   -> 16 bytes: applied_index, revision (two big-endian u64)

One-letter prefixes keep every key short and let each kind be scanned in key
order on its own (checksum, snapshot). Applied index and revision share one
record because they always change together.

`apply()` turns a run of slots into ONE `WriteBatch`: the data changes, the
session updates and the new metadata land together or not at all. LevelDB
applies batches atomically and in order, so after a crash the state machine
is exactly "the first N slots applied" for some N, and the driver replays the
rest from the durable log. That is why the batch may be written without
`sync`. Until the batch is written, later commands of the same call read the
earlier ones' effects from in-memory overlays (`_Pending`).

Versions follow etcd's mod_revision: a global `revision` counts the successful
writes; a key's version is the revision of its last modification and an absent
key has version 0. DELETE of an absent key is NOT_FOUND and does not count.

Exactly-once: per client the last applied seq and its encoded response are
kept. A retry of that seq gets the recorded response and applies nothing; an
older seq gets BAD_REQUEST; a newer one is applied and recorded. Sessions are
never expired (expiry would have to be driven by the log to stay
deterministic); each costs one small record per client id.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator

import msgpack
import plyvel

from kvstore.protocol import (
    WRITE_OPS,
    Op,
    Request,
    Response,
    Status,
    decode_response,
    encode_response,
    parse_request,
)

DATA_PREFIX = b"d"
SESSION_PREFIX = b"s"
META_PREFIX = b"m"
_META_KEY = META_PREFIX + b"state"
_META = struct.Struct(">QQ")  # applied_index, revision
_LENGTHS = struct.Struct(">II")  # key and record length, for the checksum

SNAPSHOT_KINDS = (DATA_PREFIX, SESSION_PREFIX)
"""The `kind` of a snapshot item: the prefix its key was stored under."""

Result = tuple[bytes, int, Response]
"""(client_id, seq, response) for one applied command; client_id is b"" when
the command could not be decoded or validated (nobody to answer)."""

_ABSENT: tuple[bytes | None, int] = (None, 0)
_STALE = Response(Status.BAD_REQUEST, error="stale sequence number")


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(raw: bytes) -> list:
    return msgpack.unpackb(raw, raw=False, use_list=True)


class _Pending:
    """The effects of one `apply()` call not yet written: reads check these
    overlays before LevelDB, so a command sees the commands before it."""

    __slots__ = ("data", "db", "revision", "sessions")

    def __init__(self, db: plyvel.DB, revision: int) -> None:
        self.db = db
        self.revision = revision
        # key -> (value, version), or None once deleted in this call
        self.data: dict[bytes, tuple[bytes, int] | None] = {}
        # client_id -> (last_seq, encoded Response)
        self.sessions: dict[bytes, tuple[int, bytes]] = {}

    def read(self, key: bytes) -> tuple[bytes | None, int]:
        """(value, version) of `key`, or (None, 0) when absent."""
        if key in self.data:
            entry = self.data[key]
            return _ABSENT if entry is None else entry
        raw = self.db.get(DATA_PREFIX + key)
        if raw is None:
            return _ABSENT
        value, version = _unpack(raw)
        return value, version

    def write(self, key: bytes, value: bytes | None) -> int:
        """Sets (or with None deletes) `key` at the next revision."""
        self.revision += 1
        self.data[key] = None if value is None else (value, self.revision)
        return self.revision

    def session(self, client_id: bytes) -> tuple[int, bytes | None]:
        """(last_seq, encoded last response) of a client; (0, None) if new."""
        if client_id in self.sessions:
            return self.sessions[client_id]
        raw = self.db.get(SESSION_PREFIX + client_id)
        if raw is None:
            return 0, None
        seq, resp = _unpack(raw)
        return seq, resp

    def flush(self, batch: plyvel.WriteBatch) -> None:
        for key, entry in self.data.items():
            if entry is None:
                batch.delete(DATA_PREFIX + key)
            else:
                batch.put(DATA_PREFIX + key, _pack(entry))
        for client_id, record in self.sessions.items():
            batch.put(SESSION_PREFIX + client_id, _pack(record))


def _parse(command: bytes) -> Request | Response:
    """The write request in `command`, or the error response that rejects it.
    Never raises: a bad command must have the same outcome on every replica."""
    parsed = parse_request(command)
    if isinstance(parsed, Request) and parsed.op not in WRITE_OPS:
        return Response(Status.BAD_REQUEST, error=f"{parsed.op.name} is not a write")
    return parsed


def _execute(req: Request, pending: _Pending) -> Response:
    """Runs one validated write against the pending state."""
    key = req.key
    if req.op == Op.PUT:
        return Response(Status.OK, version=pending.write(key, req.value))
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


class KVStateMachine:
    """The KV data, client sessions and applied index of one replica, kept in
    the `d`, `s` and `m` prefixes of the replica's LevelDB."""

    def __init__(self, db: plyvel.DB) -> None:
        self._db = db
        raw = db.get(_META_KEY)
        self._applied_index, self._revision = (0, 0) if raw is None else _META.unpack(raw)

    @property
    def applied_index(self) -> int:
        """Number of slots applied, which is the next slot to apply."""
        return self._applied_index

    @property
    def revision(self) -> int:
        """Number of successful writes so far (the latest version handed out)."""
        return self._revision

    def apply(self, entries: Iterable[tuple[int, tuple[bytes, ...]]]) -> list[Result]:
        """Applies chosen slots `(slot, value)` in order, starting exactly at
        `applied_index`, in one atomic LevelDB batch. Returns the outcome of
        every command, in log order. Raises ValueError (writing nothing) if
        the slots are not consecutive from `applied_index`: a driver bug."""
        pending = _Pending(self._db, self._revision)
        results: list[Result] = []
        next_slot = self._applied_index
        for slot, value in entries:
            if slot != next_slot:
                raise ValueError(f"slot {slot} applied out of order; expected {next_slot}")
            for command in value:
                results.append(self._apply_command(command, pending))
            next_slot += 1
        if next_slot == self._applied_index:
            return results
        batch = self._db.write_batch()
        pending.flush(batch)
        batch.put(_META_KEY, _META.pack(next_slot, pending.revision))
        batch.write()
        self._applied_index, self._revision = next_slot, pending.revision
        return results

    @staticmethod
    def _apply_command(command: bytes, pending: _Pending) -> Result:
        """One command, with the exactly-once session check around it."""
        parsed = _parse(command)
        if isinstance(parsed, Response):
            return b"", 0, parsed
        client_id, seq = parsed.client_id, parsed.seq
        last_seq, last_resp = pending.session(client_id)
        if seq == last_seq and last_resp is not None:  # a retry
            return client_id, seq, decode_response(last_resp)
        if seq < last_seq:
            return client_id, seq, _STALE
        resp = _execute(parsed, pending)
        pending.sessions[client_id] = (seq, encode_response(resp))
        return client_id, seq, resp

    def get(self, key: bytes) -> tuple[bytes, int] | None:
        """(value, version) of `key` as of `applied_index`, or None."""
        raw = self._db.get(DATA_PREFIX + key)
        if raw is None:
            return None
        value, version = _unpack(raw)
        return value, version

    def key_count(self) -> int:
        return sum(1 for _ in self._db.iterator(prefix=DATA_PREFIX, include_value=False))

    def checksum(self) -> str:
        """sha256 (hex) over every (key, value, version) in key order: equal on
        two replicas exactly when their data is equal."""
        digest = hashlib.sha256()
        for db_key, raw in self._db.iterator(prefix=DATA_PREFIX):
            # Length prefixes keep (key, record) boundaries unambiguous.
            digest.update(_LENGTHS.pack(len(db_key) - 1, len(raw)))
            digest.update(db_key[1:])
            digest.update(raw)
        return digest.hexdigest()

    def snapshot_items(self) -> tuple[int, int, Iterator[tuple[bytes, bytes, bytes]]]:
        """A consistent snapshot: `(applied_index, revision, items)`, where
        items yields `(kind, key, record)` with kind `b"d"` (data) or `b"s"`
        (session), key without its prefix and record as stored. The items are
        read from a LevelDB snapshot, so later applies do not leak in."""
        snap = self._db.snapshot()
        raw = snap.get(_META_KEY)
        applied_index, revision = (0, 0) if raw is None else _META.unpack(raw)
        return applied_index, revision, _snapshot_iter(snap)

    def restore(
        self, items: Iterable[tuple[bytes, bytes, bytes]], applied_index: int, revision: int
    ) -> None:
        """Replaces all state machine state with a snapshot from
        `snapshot_items`, in one synced batch. Raises ValueError, changing
        nothing, on an item of unknown kind."""
        batch = self._db.write_batch(sync=True)
        for prefix in (DATA_PREFIX, SESSION_PREFIX, META_PREFIX):
            for db_key in self._db.iterator(prefix=prefix, include_value=False):
                batch.delete(db_key)
        for kind, key, record in items:
            if kind not in SNAPSHOT_KINDS:
                raise ValueError(f"unknown snapshot item kind {kind!r}")
            batch.put(kind + key, record)
        batch.put(_META_KEY, _META.pack(applied_index, revision))
        batch.write()
        self._applied_index, self._revision = applied_index, revision


def _snapshot_iter(snap: plyvel.Snapshot) -> Iterator[tuple[bytes, bytes, bytes]]:
    for kind in SNAPSHOT_KINDS:
        for db_key, record in snap.iterator(prefix=kind):
            yield kind, db_key[1:], record
