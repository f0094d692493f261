"""The client-facing wire protocol: requests and responses as msgpack arrays.

A client sends one frame (a REQ socket) holding an encoded `Request`; the
replica answers with one frame holding an encoded `Response`. The same encoded
request bytes of a write (PUT, DELETE, CAS) are what the leader places in a
Paxos slot, so the state machine decodes exactly what the client sent.

Layout of a request frame (msgpack array):

    [PROTOCOL_VERSION, op, client_id, seq, key, value, expected_value,
     expected_version, stale]

followed, for RANGE, DELETE_RANGE and TXN, by a tenth field

    [range_end, limit, keys_only, count_only, txn]

(absent when all five are their defaults, so the frames of PUT, GET, DELETE
and CAS are byte for byte what they were before ranges existed: the logs
and session digests of older releases stay valid). `txn` is
[compares, success, failure]; a compare is [target, op, key, operand] and
an operation [kind, key, range_end, value, limit, keys_only, count_only]
(`CompareTarget`, `CompareOp`, `TxnOpKind`).

Layout of a response frame (msgpack array):

    [PROTOCOL_VERSION, status, value, version, leader, error, info]

followed, when there is one, by the typed `result` of a RANGE, DELETE_RANGE
or TXN: [1, kvs, count, more, next_key] (a range; each kv is [key, value,
version, create_revision], value nil when keys only), [2, deleted], [3,
version] (a put inside a transaction) or [4, [result, ...]] (a transaction,
one result per operation of the branch that ran).

Ranges follow etcd: [key, range_end) in key order; range_end None is the
single key, b"\0" means every key from `key` on, and `prefix_end(p)` is the
range_end of the keys that start with p. One reply covers a prefix of the
range, at most `limit` keys (0: no limit), MAX_RANGE_KEYS keys and about
MAX_RANGE_REPLY_BYTES of keys and values; `more` says keys remain, and
`next_key` is where to go on (the next key in the range: ask again from
there with the same range_end).

Every receiver of a request frame (the replica, the state machine applying a
slot, the benchmark driver checking its workload) goes through ONE function,
`parse_request`: size check (TOO_LARGE before anything is decoded), decode
with every field type-checked (BAD_REQUEST), then the per-op rules and limits
of `validate_request`. It returns the Request or the error Response to send
back, and never raises. STATUS is the one op that needs no other field. The
client runs `validate_request` on the Request it builds, which refuses
locally exactly what `parse_request` would refuse of its encoding (the
frame limit has room for the largest valid request; a test checks it).
Underneath, `decode_request` and `decode_response` type-check every field and
raise `ProtocolError` on anything malformed, never a bare msgpack or Python
exception.

Exactly-once: a client picks a random 16-byte `client_id` and numbers its
requests with `seq` (1, 2, ...). It retries a request with the same seq; the
state machine records the last seq and result per client and returns the
recorded result to a retry instead of applying it twice. Sessions idle for
longer than the session TTL (carried by the clock commands below; default
`kvstore.limits.SESSION_TTL_MS`) of log time are forgotten; a
request numbered above 1 from a client id without a session is answered
SESSION_EXPIRED and not applied (kvstore/statemachine.py).

Log time: besides client requests, a slot may hold the leader's clock
command, `encode_clock(unix_ms, session_ttl_ms)` = 0xc1 + the milliseconds
and then the session TTL in milliseconds, each as 8 big-endian bytes (17
bytes): the leader's wall clock and its configured session TTL, which the
state machine adopts from the log, so every replica expires the same
sessions. The older 9-byte form (0xc1 + the milliseconds, no TTL) is still
decoded, as "TTL unchanged", so that logs written before the TTL travelled
in the clock command apply the same everywhere. 0xc1 is the one byte
msgpack never uses, so `parse_request` refuses such a frame from a client
(BAD_REQUEST, undecodable) and no client frame, which must decode as a
msgpack array, can be mistaken for one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple, TypeVar

import msgpack

from kvstore.limits import (
    MAX_KEY_BYTES,
    MAX_LEASE_TTL_S,
    MAX_REQUEST_BYTES,
    MAX_TXN_BYTES,
    MAX_TXN_COMPARES,
    MAX_TXN_OPS,
    MAX_VALUE_BYTES,
    MIN_LEASE_TTL_S,
)

PROTOCOL_VERSION = 1
VOUCH_PAUSE_S = 1.0
"""How long a client sends GETs without VOUCH after a leader asked it to."""
CLIENT_ID_BYTES = 16
_UNPACKB = msgpack.unpackb
_PACK = msgpack.Packer(use_bin_type=True).pack  # see kvstore/statemachine.py
CLOCK_TAG = b"\xc1"
_CLOCK = struct.Struct(">QQ")  # unix_ms, session_ttl_ms
_OLD_CLOCK = struct.Struct(">Q")  # unix_ms only: TTL unchanged


class ProtocolError(ValueError):
    """A frame that is not a well-formed request or response."""


class Op(IntEnum):
    PUT = 1
    GET = 2
    DELETE = 3
    CAS = 4
    STATUS = 5
    RANGE = 6  # read [key, range_end): range_end, limit, keys_only, count_only, stale
    DELETE_RANGE = 7  # delete [key, range_end) at one revision
    TXN = 8  # comparisons, then the success or the failure operations
    LEASE_GRANT = 9  # lease (its id, chosen by the client), ttl (seconds)
    LEASE_REVOKE = 10  # lease: deletes its keys at one revision
    LEASE_KEEPALIVE = 11  # lease: its deadline becomes log time + its TTL
    LEASE_TTL = 12  # lease (a read); keys_only: with its keys
    LEASE_LIST = 13  # a read: the lease ids after `lease` (0: from the first)
    WATCH = 14  # key, range_end; expected_version: from revision; limit: hold (ms);
    # stale: with previous values (prev_kv; see Request)
    SNAPSHOT = 16  # a backup chunk: value = export id (None: start one), key = after
    MEMBER = 17  # membership: value None lists it, else a packed change (member_change)
    MOVE_LEADER = 18  # hand leadership to replica int(value) (kvctl move-leader)
    VOUCH = 19  # to a follower, never answered: vouch for the read (client_id, nonce =
    # seq) to replica expected_version (None: the leader it knows); see Request


WRITE_OPS = frozenset(
    {
        Op.PUT,
        Op.DELETE,
        Op.CAS,
        Op.DELETE_RANGE,
        Op.TXN,
        Op.LEASE_GRANT,
        Op.LEASE_REVOKE,
        Op.LEASE_KEEPALIVE,
    }
)
READ_OPS = frozenset({Op.GET, Op.RANGE, Op.LEASE_TTL, Op.LEASE_LIST})
LEASE_OPS = frozenset(
    {Op.LEASE_GRANT, Op.LEASE_REVOKE, Op.LEASE_KEEPALIVE, Op.LEASE_TTL, Op.LEASE_LIST}
)
MAX_LEASE_ID = 2**63 - 1
FROM_KEY = b"\0"
"""A range_end of b"\0" means "every key from `key` on" (etcd's convention)."""
_MAX_LIMIT = 2**63 - 1


class CompareTarget(IntEnum):
    """What a transaction's comparison looks at. VALUE: the value (bytes;
    false, whatever the operator, when the key is absent, as in etcd).
    VERSION: the key's version, i.e. its last modification revision (0 when
    absent). CREATE: the revision that created it (0 when absent). EXISTS:
    whether the key exists (operand a bool, operator = or !=)."""

    VALUE = 0
    VERSION = 1
    CREATE = 2
    EXISTS = 3


class CompareOp(IntEnum):
    EQUAL = 0
    NOT_EQUAL = 1
    LESS = 2
    GREATER = 3


class TxnOpKind(IntEnum):
    PUT = 0  # key, value
    DELETE = 1  # key, optional range_end
    RANGE = 2  # key, optional range_end, limit, keys_only, count_only


@dataclass(frozen=True, slots=True)
class Compare:
    """One comparison of a transaction (see CompareTarget)."""

    target: CompareTarget
    op: CompareOp
    key: bytes
    operand: bytes | int | bool


@dataclass(frozen=True, slots=True)
class TxnOp:
    """One operation of a transaction's branch: PUT key value, DELETE key
    (or [key, range_end)), RANGE over key (or [key, range_end))."""

    kind: TxnOpKind
    key: bytes
    range_end: bytes | None = None
    value: bytes | None = None
    limit: int = 0
    keys_only: bool = False
    count_only: bool = False


@dataclass(frozen=True, slots=True)
class Txn:
    """If every comparison holds, the success operations run, else the
    failure ones; in order, as one command at one revision."""

    compares: tuple[Compare, ...] = ()
    success: tuple[TxnOp, ...] = ()
    failure: tuple[TxnOp, ...] = ()


class KeyValue(NamedTuple):
    """One key of a range reply. `value` is None when keys only were asked
    for; `version` is the last modification revision."""

    key: bytes
    value: bytes | None
    version: int
    create_revision: int


@dataclass(frozen=True, slots=True)
class RangeResult:
    """One range reply: the keys of [key, next_key) (of [key, range_end)
    when `more` is False), `count` of them (also when count only, with
    `kvs` empty). `more`: keys remain from `next_key` on."""

    kvs: tuple[KeyValue, ...] = ()
    count: int = 0
    more: bool = False
    next_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    deleted: int


@dataclass(frozen=True, slots=True)
class PutResult:
    version: int


PREV_UNKNOWN = -1
"""A WatchEvent's `prev_revision` when previous values were not asked for,
or are not known: an event recorded by a release before they existed, or
a reply from a replica of such a release (it ignores the request flag)."""


class WatchEvent(NamedTuple):
    """One change a watcher is told: at `revision`, `key` was PUT (kind 0,
    with `value`, `version` = revision, `create_revision`) or DELETEd
    (kind 1, value None).

    With previous values asked for (WATCH's prev_kv flag): `prev_revision`
    is the key's mod revision before this change, 0 when it did not exist
    (a create), and `prev_value` its value then, or None when there is
    none (0) or the event at `prev_revision` is no longer kept by the
    replica's event log (`prev_revision` > 0: older than its retention).
    `PREV_UNKNOWN` otherwise (see there)."""

    revision: int
    kind: int
    key: bytes
    value: bytes | None
    version: int
    create_revision: int
    prev_revision: int = PREV_UNKNOWN
    prev_value: bytes | None = None


@dataclass(frozen=True, slots=True)
class WatchResult:
    """One WATCH reply: the events of whole revisions in order, and the
    revision to ask from next (the replica's revision + 1 when it has no
    more)."""

    events: tuple[WatchEvent, ...]
    next_revision: int


@dataclass(frozen=True, slots=True)
class TxnResult:
    """One result per operation of the branch that ran, in order."""

    responses: tuple[RangeResult | DeleteResult | PutResult, ...]


OpResult = RangeResult | DeleteResult | PutResult | TxnResult | WatchResult


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that covers exactly the keys starting with `prefix`:
    its last byte below 0xff incremented, the rest cut; FROM_KEY when there
    is none (b"", or only 0xff bytes)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return FROM_KEY
    return stripped[:-1] + bytes([stripped[-1] + 1])


class Status(IntEnum):
    OK = 0
    NOT_FOUND = 1  # GET or DELETE of an absent key; DELETE_RANGE that deleted nothing
    CAS_FAILED = 2  # CAS whose expectation did not hold; value/version = current
    # ... and a TXN whose comparisons did not all hold: its failure branch ran
    # (a retry, answered from the session record, still tells which branch)
    REDIRECT = 3  # not the leader; `leader` names the replica id to ask
    UNAVAILABLE = 4  # no leader known or the request could not be served now: retry
    BAD_REQUEST = 5  # malformed request; `error` says why; nothing changed
    TOO_LARGE = 6  # key or value over the documented limits; nothing changed
    SESSION_EXPIRED = 7  # seq > 1 from a client id without a session: nothing changed
    COMPACTED = 8  # WATCH from a revision this replica no longer keeps; info {"oldest": R}


@dataclass(slots=True)  # not frozen: a frozen __init__ cost ~5 us per request
class Request:
    """One client request.

    PUT: key, value. GET: key; `stale=True` reads the replica's local state
    without confirming leadership (may be stale). DELETE: key. CAS: key, value
    (the new value) and exactly one of `expected_version` (0 means "the key
    must be absent") or `expected_value`. STATUS: needs no other field (any
    replica answers it itself, for a health check as well as for a client);
    the others, if set, are type-checked by the decoder and otherwise ignored.
    RANGE: key, range_end (None: the key alone; FROM_KEY: no end), limit
    (0: none), keys_only or count_only, stale. DELETE_RANGE: key, range_end.
    TXN: txn, and an empty key. SNAPSHOT (backups, kvstore/backup.py): no
    session; `value` None starts an export on the leader (after a read-index
    round) and answers its first chunk, else `value` is the export id and
    `key` the last key of the previous chunk; the answer's `value` is a
    packed `kvstore.backup.Chunk` (NOT_FOUND: no such export here).
    MEMBER (kvctl member): no session; `value` None lists the membership
    (linearizable, on the leader), else `member_change(kind, id, peer,
    client)`, applied through the log once (asking again for a change that
    is in force answers OK); the answer's `info` is the membership.
    MOVE_LEADER: no session; `value` = the target replica id in ASCII; the
    leader starts handing over (OK) or says why not (BAD_REQUEST);
    followers REDIRECT. The caller watches STATUS for the new leader.
    WATCH (replica/watch.py): key, range_end, `expected_version` = the
    revision to start from, `limit` = the hold time (ms); `stale=True`
    asks for previous values (prev_kv, `WatchEvent`). A watch is always
    answered from what the answering replica applied, so the flag had no
    other meaning for WATCH, and a replica of an earlier release ignores
    it: its events then come without them (PREV_UNKNOWN), never refused.
    Vouched reads (replica/paxos.py, "Vouched reads"): a GET whose
    `expected_version` is set (a nonce >= 1, never reused by this
    client_id) waits on its leader for the vouches of followers instead of
    a heartbeat round; the client sends, as it sends the GET, VOUCH
    (client_id, seq = that nonce, `expected_version` = the id of the
    replica the GET went to, or None for the leader the follower knows) to
    the other replicas, which answer nothing and tell that replica what
    they promised. Without enough vouches within a tick the read goes by
    the next heartbeat round, as an ordinary GET; a replica of an earlier
    release ignores the nonce and answers VOUCH with BAD_REQUEST. A leader
    that takes many reads at once answers a vouched GET with `info`
    {"vouch": False}: its heartbeat rounds then serve reads in batches more
    cheaply, and the client sends its GETs without VOUCH for a while
    (VOUCH_PAUSE_S).
    """

    op: Op
    client_id: bytes = b""
    seq: int = 0
    key: bytes = b""
    value: bytes | None = None
    expected_value: bytes | None = None
    expected_version: int | None = None
    stale: bool = False
    range_end: bytes | None = None
    limit: int = 0
    keys_only: bool = False
    count_only: bool = False
    txn: Txn | None = None
    lease: int = 0
    ttl: int = 0


@dataclass(slots=True)  # not frozen, like Request: one per reply
class Response:
    """One reply. `version` is the key's modification revision (0 = absent);
    for RANGE the store's revision when it was read, for DELETE_RANGE the
    revision of the delete, for TXN the store's revision after it.
    `info` carries the STATUS report (a dict of str to str/int), `result`
    the outcome of a RANGE, DELETE_RANGE or TXN (None in a retry's answer,
    which comes from the session record: status and version only)."""

    status: Status
    value: bytes | None = None
    version: int = 0
    leader: int | None = None
    error: str = ""
    info: dict[str, Any] | None = field(default=None)
    result: OpResult | None = None


def validate_request(req: Request) -> tuple[Status, str] | None:
    """Checks the documented limits and per-op fields. Returns None when the
    request is acceptable, else (BAD_REQUEST or TOO_LARGE, message)."""
    if (
        req.op in _PLAIN_OPS
        and req.range_end is None
        and req.txn is None
        and not (req.lease or req.ttl or req.limit or req.keys_only or req.count_only)
    ):
        # The hot path (every write is validated on receipt and on apply):
        # the same checks in the same order as below, minus those that
        # cannot fail for a PUT, GET or DELETE without the optional fields.
        if len(req.client_id) != CLIENT_ID_BYTES:
            return Status.BAD_REQUEST, f"client_id must be {CLIENT_ID_BYTES} bytes"
        if req.seq < 1:
            return Status.BAD_REQUEST, "seq must be >= 1"
        return _check_values(req)
    if req.op in (Op.STATUS, Op.SNAPSHOT, Op.MEMBER, Op.MOVE_LEADER):
        # No session (client_id, seq) and no key: see Request and parse_request.
        return None
    if req.op is Op.VOUCH:
        return _check_vouch(req)
    if len(req.client_id) != CLIENT_ID_BYTES:
        return Status.BAD_REQUEST, f"client_id must be {CLIENT_ID_BYTES} bytes"
    if req.seq < 1:
        return Status.BAD_REQUEST, "seq must be >= 1"
    problem = _check_lease_fields(req)
    if problem is not None or req.op in LEASE_OPS:
        return problem
    if req.op is Op.WATCH:
        return _check_watch(req)
    problem = _check_range_fields(req)
    if problem is not None or req.op == Op.TXN:
        return problem or _check_txn(req)
    return _check_values(req)


def _check_vouch(req: Request) -> tuple[Status, str] | None:
    if len(req.client_id) != CLIENT_ID_BYTES:
        return Status.BAD_REQUEST, f"client_id must be {CLIENT_ID_BYTES} bytes"
    if req.seq < 1:
        return Status.BAD_REQUEST, "seq must be >= 1"
    if req.expected_version is not None and req.expected_version < 0:
        return Status.BAD_REQUEST, "a VOUCH's replica id (expected_version) must be >= 0"
    return None


def _check_values(req: Request) -> tuple[Status, str] | None:
    """The key, the values, and what PUT and CAS need."""
    problem = _check_key(req.key, "key")
    if problem is not None:
        return problem
    if req.op == Op.GET and req.expected_version is not None and req.expected_version < 1:
        return Status.BAD_REQUEST, "a GET's vouch nonce (expected_version) must be >= 1"
    for name in ("value", "expected_value"):
        v = getattr(req, name)
        if v is not None and len(v) > MAX_VALUE_BYTES:
            return Status.TOO_LARGE, (
                f"{name.replace('_', ' ')} is {len(v)} bytes; the limit is {MAX_VALUE_BYTES}"
            )
    if req.op == Op.PUT and req.value is None:
        return Status.BAD_REQUEST, "PUT needs a value"
    if req.op == Op.CAS:
        if req.value is None:
            return Status.BAD_REQUEST, "CAS needs a new value"
        if (req.expected_value is None) == (req.expected_version is None):
            return Status.BAD_REQUEST, "CAS needs exactly one of expected_value, expected_version"
        if req.expected_version is not None and req.expected_version < 0:
            return Status.BAD_REQUEST, "expected_version must be >= 0"
    return None


def _check_lease_fields(req: Request) -> tuple[Status, str] | None:
    """`lease` belongs to PUT (0: none) and the lease ops, `ttl` to
    LEASE_GRANT; the lease ops take no key, value or range field, except
    keys_only for LEASE_TTL (list the lease's keys too)."""
    op, lease, ttl = req.op, req.lease, req.ttl
    if not 0 <= lease <= MAX_LEASE_ID:
        return Status.BAD_REQUEST, f"a lease id is an integer in [1, {MAX_LEASE_ID}]"
    if (op is Op.LEASE_GRANT) != (ttl != 0):
        return Status.BAD_REQUEST, "a TTL is for LEASE_GRANT, and LEASE_GRANT needs one"
    if op not in LEASE_OPS:
        if lease and op is not Op.PUT:
            return Status.BAD_REQUEST, "a lease is for PUT and the lease ops only"
        return None
    if op is not Op.LEASE_LIST and lease == 0:
        return Status.BAD_REQUEST, f"{op.name} needs a lease id"
    if op is Op.LEASE_GRANT and not MIN_LEASE_TTL_S <= ttl <= MAX_LEASE_TTL_S:
        return Status.BAD_REQUEST, (
            f"a lease TTL is {MIN_LEASE_TTL_S} to {MAX_LEASE_TTL_S} seconds, not {ttl}"
        )
    if (
        req.key
        or req.value is not None
        or req.expected_value is not None
        or req.expected_version is not None
        or req.range_end is not None
        or req.limit
        or req.count_only
        or req.txn is not None
        or (req.keys_only and op is not Op.LEASE_TTL)
    ):
        return Status.BAD_REQUEST, f"{op.name} takes a lease id only"
    return None


MAX_WATCH_HOLD_MS = 10_000


def _check_watch(req: Request) -> tuple[Status, str] | None:
    """WATCH: a key (and a range_end), the revision to start from
    (`expected_version`, >= 1) and how long the replica may hold the
    request waiting for an event (`limit`, ms), and `stale` for previous
    values (see Request); nothing else."""
    if (
        req.value is not None
        or req.expected_value is not None
        or req.keys_only
        or req.count_only
        or req.txn is not None
    ):
        return Status.BAD_REQUEST, "WATCH takes a key, a range end, a revision and a hold time"
    if req.expected_version is None or req.expected_version < 1:
        return Status.BAD_REQUEST, "WATCH needs the revision to start from (>= 1)"
    if not 0 <= req.limit <= MAX_WATCH_HOLD_MS:
        return Status.BAD_REQUEST, f"a WATCH is held 0 to {MAX_WATCH_HOLD_MS} ms"
    return _check_key(req.key, "key") or _check_range(req.range_end, 0, False, False)


def _check_key(key: bytes, name: str) -> tuple[Status, str] | None:
    if not key:
        return Status.BAD_REQUEST, f"{name} must not be empty"
    if len(key) > MAX_KEY_BYTES:
        return Status.TOO_LARGE, f"{name} is {len(key)} bytes; the limit is {MAX_KEY_BYTES}"
    return None


def _check_range(
    range_end: bytes | None, limit: int, keys_only: bool, count_only: bool
) -> tuple[Status, str] | None:
    if range_end is not None and len(range_end) > MAX_KEY_BYTES:
        return Status.TOO_LARGE, (
            f"range_end is {len(range_end)} bytes; the limit is {MAX_KEY_BYTES}"
        )
    if not 0 <= limit <= _MAX_LIMIT:
        return Status.BAD_REQUEST, "limit must be >= 0 (0: no limit)"
    if keys_only and count_only:
        return Status.BAD_REQUEST, "keys_only and count_only exclude each other"
    return None


def _check_range_fields(req: Request) -> tuple[Status, str] | None:
    """The range fields belong to RANGE (all) and DELETE_RANGE (range_end),
    the txn to TXN, and the values to PUT and CAS: anything else is refused,
    so that a request means one thing."""
    op = req.op
    if op in (Op.RANGE, Op.DELETE_RANGE, Op.TXN) and (
        req.value is not None or req.expected_value is not None or req.expected_version is not None
    ):
        return Status.BAD_REQUEST, f"{op.name} takes no value or expectation"
    if op != Op.RANGE and (req.limit or req.keys_only or req.count_only):
        return Status.BAD_REQUEST, "limit, keys_only and count_only are for RANGE only"
    if op not in (Op.RANGE, Op.DELETE_RANGE) and req.range_end is not None:
        return Status.BAD_REQUEST, "range_end is for RANGE and DELETE_RANGE only"
    if (op == Op.TXN) != (req.txn is not None):
        return Status.BAD_REQUEST, "TXN needs a txn, and only TXN takes one"
    if op == Op.TXN and req.key:
        return Status.BAD_REQUEST, "TXN takes no key (its operations name theirs)"
    return _check_range(req.range_end, req.limit, req.keys_only, req.count_only)


def _check_txn(req: Request) -> tuple[Status, str] | None:
    """The transaction's bounds and each comparison and operation."""
    txn = req.txn
    assert txn is not None  # _check_range_fields
    if len(txn.compares) > MAX_TXN_COMPARES:
        return Status.TOO_LARGE, (
            f"{len(txn.compares)} comparisons; a transaction has at most {MAX_TXN_COMPARES}"
        )
    for name, ops in (("success", txn.success), ("failure", txn.failure)):
        if len(ops) > MAX_TXN_OPS:
            return Status.TOO_LARGE, (
                f"{len(ops)} {name} operations; a transaction has at most {MAX_TXN_OPS} per branch"
            )
    size = 0
    for i, cmp in enumerate(txn.compares):
        problem = _check_compare(cmp)
        if problem is not None:
            return problem[0], f"comparison {i + 1}: {problem[1]}"
        size += len(cmp.key) + (len(cmp.operand) if isinstance(cmp.operand, bytes) else 0)
    for name, ops in (("success", txn.success), ("failure", txn.failure)):
        for i, op in enumerate(ops):
            problem = _check_txn_op(op)
            if problem is not None:
                return problem[0], f"{name} operation {i + 1}: {problem[1]}"
            size += len(op.key) + len(op.range_end or b"") + len(op.value or b"")
    if size > MAX_TXN_BYTES:
        return Status.TOO_LARGE, (
            f"the transaction's keys and values are {size} bytes; the limit is {MAX_TXN_BYTES}"
        )
    return None


def _check_compare(cmp: Compare) -> tuple[Status, str] | None:
    problem = _check_key(cmp.key, "key")
    if problem is not None:
        return problem
    target, operand = cmp.target, cmp.operand
    if target == CompareTarget.EXISTS:
        if type(operand) is not bool:
            return Status.BAD_REQUEST, "an existence comparison takes true or false"
        if cmp.op not in (CompareOp.EQUAL, CompareOp.NOT_EQUAL):
            return Status.BAD_REQUEST, "an existence comparison takes = or !="
    elif target == CompareTarget.VALUE:
        if type(operand) is not bytes:
            return Status.BAD_REQUEST, "a value comparison takes bytes"
        if len(operand) > MAX_VALUE_BYTES:
            return Status.TOO_LARGE, (
                f"compared value is {len(operand)} bytes; the limit is {MAX_VALUE_BYTES}"
            )
    elif type(operand) is not int or not 0 <= operand <= _MAX_LIMIT:
        return Status.BAD_REQUEST, f"a {target.name.lower()} comparison takes an integer >= 0"
    return None


def _check_txn_op(op: TxnOp) -> tuple[Status, str] | None:
    problem = _check_key(op.key, "key")
    if problem is not None:
        return problem
    if op.kind == TxnOpKind.PUT:
        if op.value is None:
            return Status.BAD_REQUEST, "put needs a value"
        if len(op.value) > MAX_VALUE_BYTES:
            return Status.TOO_LARGE, (
                f"value is {len(op.value)} bytes; the limit is {MAX_VALUE_BYTES}"
            )
        if op.range_end is not None:
            return Status.BAD_REQUEST, "put takes no range_end"
    elif op.value is not None:
        return Status.BAD_REQUEST, f"{op.kind.name.lower()} takes no value"
    if op.kind != TxnOpKind.RANGE and (op.limit or op.keys_only or op.count_only):
        return Status.BAD_REQUEST, "limit, keys_only and count_only are for range only"
    return _check_range(op.range_end, op.limit, op.keys_only, op.count_only)


def _encode_txn(txn: Txn) -> list:
    return [
        [[int(c.target), int(c.op), c.key, c.operand] for c in txn.compares],
        *(
            [
                [int(o.kind), o.key, o.range_end, o.value, o.limit, o.keys_only, o.count_only]
                for o in ops
            ]
            for ops in (txn.success, txn.failure)
        ),
    ]


def encode_request(req: Request) -> bytes:
    fields = [
        PROTOCOL_VERSION,
        int(req.op),
        req.client_id,
        req.seq,
        req.key,
        req.value,
        req.expected_value,
        req.expected_version,
        req.stale,
    ]
    extra = (req.range_end, req.limit, req.keys_only, req.count_only, req.txn)
    if extra != (None, 0, False, False, None) or req.lease or req.ttl:
        txn = None if req.txn is None else _encode_txn(req.txn)
        more = [req.range_end, req.limit, req.keys_only, req.count_only, txn]
        if req.lease or req.ttl:  # absent otherwise: older frames unchanged
            more += [req.lease, req.ttl]
        fields.append(more)
    return msgpack.packb(fields, use_bin_type=True)


def _unpack_array(frame: bytes, length: int, what: str, optional: int = 0) -> list:
    """The frame's array of `length` fields, or of `length + 1` with
    `optional` (the trailing field, None when absent)."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"{what} frame must be bytes")
    try:
        obj = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types
        raise ProtocolError(f"undecodable {what}: {type(exc).__name__}") from None
    if not isinstance(obj, list) or not length <= len(obj) <= length + optional:
        fields = f"{length} or {length + 1}" if optional else f"{length}"
        raise ProtocolError(f"{what} must be an array of {fields} fields")
    if len(obj) == length and optional:
        obj.append(None)
    # `type(...) is int`: True and 1.0 compare equal to 1 but are not version 1.
    if type(obj[0]) is not int or obj[0] != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {obj[0]!r}")
    return obj


def _check(value: Any, types: type | tuple[type, ...], name: str) -> Any:
    # bool is an int subclass: refuse it where an int is meant.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ProtocolError(f"field {name} has the wrong type")
    if not isinstance(value, types):
        raise ProtocolError(f"field {name} has the wrong type")
    return value


def _oversize(frame: bytes | bytearray | memoryview) -> str | None:
    size = frame.nbytes if isinstance(frame, memoryview) else len(frame)
    if size > MAX_REQUEST_BYTES:
        return f"request of {size} bytes is over the limit of {MAX_REQUEST_BYTES} bytes"
    return None


def decode_request(frame: bytes) -> Request:
    """Decodes and type-checks a request frame. Receivers call
    `parse_request`, which also says TOO_LARGE and applies `validate_request`."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise ProtocolError("request frame must be bytes")
    too_large = _oversize(frame)
    if too_large is not None:
        raise ProtocolError(too_large)
    _, op, client_id, seq, key, value, exp_value, exp_version, stale, extra = _unpack_array(
        frame, 9, "request", optional=1
    )
    if (
        extra is None
        and type(op) is int
        and type(client_id) is bytes
        and type(seq) is int
        and type(key) is bytes
        and (value is None or type(value) is bytes)
        and (exp_value is None or type(exp_value) is bytes)
        and (exp_version is None or type(exp_version) is int)
        and type(stale) is bool
    ):  # the common frame, every field of the exact type: no per-field checks
        known = _OPS.get(op)
        if known is not None:
            return Request(known, client_id, seq, key, value, exp_value, exp_version, stale)
    range_end, limit, keys_only, count_only, txn, lease, ttl = _range_fields(extra, "request")
    return Request(
        op=_enum(Op, op, "op"),
        client_id=_check(client_id, bytes, "client_id"),
        seq=_check(seq, int, "seq"),
        key=_check(key, bytes, "key"),
        value=_check(value, (bytes, type(None)), "value"),
        expected_value=_check(exp_value, (bytes, type(None)), "expected_value"),
        expected_version=_check(exp_version, (int, type(None)), "expected_version"),
        stale=_check(stale, bool, "stale"),
        range_end=range_end,
        limit=limit,
        keys_only=keys_only,
        count_only=count_only,
        txn=None if txn is None else _decode_txn(txn),
        lease=lease,
        ttl=ttl,
    )


MAX_EXPORT_ID_BYTES = 64
_OPS = {int(op): op for op in Op}
_PLAIN_OPS = frozenset((Op.PUT, Op.GET, Op.DELETE))

_E = TypeVar("_E", bound=IntEnum)


def _enum(kind: type[_E], value: Any, name: str) -> _E:
    _check(value, int, name)  # outside the try: ProtocolError is a ValueError
    try:
        return kind(value)
    except ValueError:
        raise ProtocolError(f"unknown {name} {value!r}") from None


def _fields(value: Any, length: int, name: str) -> list:
    if not isinstance(value, list) or len(value) != length:
        raise ProtocolError(f"{name} must be an array of {length} fields")
    return value


def _range_fields(extra: Any, name: str) -> tuple[bytes | None, int, bool, bool, Any, int, int]:
    """(range_end, limit, keys_only, count_only, txn, lease, ttl) of a
    request's tenth field (5 fields, or 7 with a lease); the defaults when
    it is absent."""
    if extra is None:
        return None, 0, False, False, None, 0, 0
    lease = ttl = 0
    if isinstance(extra, list) and len(extra) == 7:
        lease, ttl = _check(extra[5], int, "lease"), _check(extra[6], int, "ttl")
        extra = extra[:5]
    range_end, limit, keys_only, count_only, txn = _fields(extra, 5, name + " range fields")
    return (
        _check(range_end, (bytes, type(None)), "range_end"),
        _check(limit, int, "limit"),
        _check(keys_only, bool, "keys_only"),
        _check(count_only, bool, "count_only"),
        _check(txn, (list, type(None)), "txn"),
        lease,
        ttl,
    )


def _decode_txn(txn: list) -> Txn:
    compares, success, failure = _fields(txn, 3, "txn")
    return Txn(
        tuple(_decode_compare(c) for c in _check(compares, list, "compares")),
        tuple(_decode_txn_op(o) for o in _check(success, list, "success")),
        tuple(_decode_txn_op(o) for o in _check(failure, list, "failure")),
    )


def _decode_compare(raw: Any) -> Compare:
    target, op, key, operand = _fields(raw, 4, "a comparison")
    return Compare(
        _enum(CompareTarget, target, "compare target"),
        _enum(CompareOp, op, "compare operator"),
        _check(key, bytes, "compare key"),
        _check(operand, (bytes, int, bool), "compare operand"),
    )


def _decode_txn_op(raw: Any) -> TxnOp:
    kind, key, range_end, value, limit, keys_only, count_only = _fields(raw, 7, "an operation")
    return TxnOp(
        _enum(TxnOpKind, kind, "operation kind"),
        _check(key, bytes, "operation key"),
        _check(range_end, (bytes, type(None)), "range_end"),
        _check(value, (bytes, type(None)), "operation value"),
        _check(limit, int, "limit"),
        _check(keys_only, bool, "keys_only"),
        _check(count_only, bool, "count_only"),
    )


_PUT_OP, _GET_OP, _DELETE_OP = int(Op.PUT), int(Op.GET), int(Op.DELETE)
_VOUCH_OP = int(Op.VOUCH)


def _parse_plain(frame: bytes) -> Request | None:
    """`parse_request`'s hot path: a PUT, GET or DELETE of the exact common
    shape (9 fields, every one of its exact type, within every limit) as
    the Request the full path would build; None for anything else, which
    the full path then decodes and judges. It decides nothing the full
    path would decide differently (tests/unit/test_protocol.py compares
    both over generated frames); it only skips the general checks: a
    request is parsed on receipt and again by every replica's apply."""
    if type(frame) is not bytes or len(frame) > MAX_REQUEST_BYTES:
        return None
    try:
        obj = _UNPACKB(frame, raw=False, use_list=True, strict_map_key=True)
    except Exception:  # noqa: BLE001 - the full path names the error
        return None
    if type(obj) is not list or len(obj) != 9:
        return None
    version, op, client_id, seq, key, value, exp_value, exp_version, stale = obj
    if op == _VOUCH_OP and key == b"":  # a follower takes one per vouched GET
        return _parse_vouch(version, op, client_id, seq, value, exp_value, exp_version, stale)
    if (
        type(version) is not int
        or version != PROTOCOL_VERSION
        or type(client_id) is not bytes
        or len(client_id) != CLIENT_ID_BYTES
        or type(seq) is not int
        or seq < 1
        or type(key) is not bytes
        or not 0 < len(key) <= MAX_KEY_BYTES
        or type(stale) is not bool
        or exp_value is not None
    ):
        return None
    if exp_version is not None:  # a GET's vouch nonce (see Request)
        if op != _GET_OP or type(op) is not int or type(exp_version) is not int:
            return None
        if value is not None or exp_version < 1:
            return None
        return Request(Op.GET, client_id, seq, key, None, None, exp_version, stale)
    if op == _PUT_OP and type(op) is int:
        if type(value) is not bytes or len(value) > MAX_VALUE_BYTES:
            return None
        return Request(Op.PUT, client_id, seq, key, value, None, None, stale)
    if value is not None or type(op) is not int:
        return None
    if op == _GET_OP:
        return Request(Op.GET, client_id, seq, key, None, None, None, stale)
    if op == _DELETE_OP:
        return Request(Op.DELETE, client_id, seq, key, None, None, None, stale)
    return None


def _parse_vouch(
    version: Any,
    op: Any,
    client_id: Any,
    seq: Any,
    value: Any,
    exp_value: Any,
    exp_version: Any,
    stale: Any,
) -> Request | None:
    """`_parse_plain` of a VOUCH in its usual shape (no key, value or
    expected value), as the full path would build it; None otherwise."""
    if (
        type(version) is not int
        or version != PROTOCOL_VERSION
        or type(op) is not int
        or type(client_id) is not bytes
        or len(client_id) != CLIENT_ID_BYTES
        or type(seq) is not int
        or seq < 1
        or value is not None
        or exp_value is not None
        or type(stale) is not bool
    ):
        return None
    if exp_version is not None and (type(exp_version) is not int or exp_version < 0):
        return None
    return Request(Op.VOUCH, client_id, seq, b"", None, None, exp_version, stale)


def parse_request(frame: bytes) -> Request | Response:
    """The one way to read a request frame: the decoded, valid Request, or the
    error Response to send back instead. In order:

    1. over MAX_REQUEST_BYTES: TOO_LARGE, naming the size and the limit,
       before a byte is decoded;
    2. not bytes, undecodable, or a field of the wrong type: BAD_REQUEST;
    3. STATUS: valid as it is, it needs no other field; SNAPSHOT: its id and
       cursor are bounded, it needs no session;
    4. otherwise `validate_request`: BAD_REQUEST or TOO_LARGE (a key or value
       over its limit).

    Never raises, whatever the bytes: a replica answers and carries on, and a
    bad command in a slot has the same outcome on every replica.
    """
    fast = _parse_plain(frame)
    return _parse_full(frame) if fast is None else fast


def _parse_full(frame: bytes) -> Request | Response:
    """`parse_request` without its hot path."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        return Response(Status.BAD_REQUEST, error="request frame must be bytes")
    too_large = _oversize(frame)
    if too_large is not None:
        return Response(Status.TOO_LARGE, error=too_large)
    try:
        req = decode_request(frame)
    except ProtocolError as exc:
        return Response(Status.BAD_REQUEST, error=str(exc))
    if req.op is Op.STATUS:
        return req  # no session, no key: nothing more to check
    if req.op is Op.SNAPSHOT:
        if req.value is not None and len(req.value) > MAX_EXPORT_ID_BYTES:
            return Response(Status.BAD_REQUEST, error="snapshot export id is too long")
        if len(req.key) > MAX_KEY_BYTES + 64:
            return Response(Status.TOO_LARGE, error="snapshot cursor is too long")
        return req  # no session: a backup changes nothing
    if req.op is Op.MEMBER:
        if req.value is not None and decode_member_change(req.value) is None:
            return Response(Status.BAD_REQUEST, error="malformed membership change")
        return req  # no session: a change is idempotent (see Request)
    if req.op is Op.MOVE_LEADER:
        if req.value is None or not req.value.isdigit() or len(req.value) > 9:
            return Response(Status.BAD_REQUEST, error="move-leader needs a replica id")
        return req  # no session: asking twice is harmless
    problem = validate_request(req)
    if problem is not None:
        return Response(problem[0], error=problem[1])
    return req


_RANGE_TAG, _DELETE_TAG, _PUT_TAG, _TXN_TAG, _WATCH_TAG = 1, 2, 3, 4, 5


def _encode_result(result: OpResult) -> list:
    if isinstance(result, RangeResult):
        kvs = [list(kv) for kv in result.kvs]
        return [_RANGE_TAG, kvs, result.count, result.more, result.next_key]
    if isinstance(result, DeleteResult):
        return [_DELETE_TAG, result.deleted]
    if isinstance(result, PutResult):
        return [_PUT_TAG, result.version]
    if isinstance(result, WatchResult):
        return [_WATCH_TAG, [_encode_event(e) for e in result.events], result.next_revision]
    return [_TXN_TAG, [_encode_result(r) for r in result.responses]]


def _decode_result(raw: Any, nested: bool = False) -> OpResult:
    if not isinstance(raw, list) or not raw:
        raise ProtocolError("result must be a tagged array")
    tag = _check(raw[0], int, "result tag")
    if tag == _RANGE_TAG:
        _, kvs, count, more, next_key = _fields(raw, 5, "a range result")
        return RangeResult(
            tuple(_decode_kv(kv) for kv in _check(kvs, list, "kvs")),
            _check(count, int, "count"),
            _check(more, bool, "more"),
            _check(next_key, (bytes, type(None)), "next_key"),
        )
    if tag == _DELETE_TAG:
        return DeleteResult(_check(_fields(raw, 2, "a delete result")[1], int, "deleted"))
    if tag == _PUT_TAG:
        return PutResult(_check(_fields(raw, 2, "a put result")[1], int, "version"))
    if tag == _WATCH_TAG and not nested:
        _, events, next_revision = _fields(raw, 3, "a watch result")
        return WatchResult(
            tuple(_decode_event(e) for e in _check(events, list, "events")),
            _check(next_revision, int, "next_revision"),
        )
    if tag == _TXN_TAG and not nested:
        responses = _check(_fields(raw, 2, "a txn result")[1], list, "responses")
        return TxnResult(tuple(_decode_result(r, nested=True) for r in responses))
    raise ProtocolError(f"unknown result tag {tag!r}")


def _encode_event(event: WatchEvent) -> list:
    """Six fields, as before previous values existed (what an older client
    decodes), unless the event carries a known previous revision: eight,
    with prev_revision and prev_value (only a watcher that asked gets those)."""
    if event.prev_revision == PREV_UNKNOWN:
        return list(event[:6])
    return list(event)


def _decode_event(raw: Any) -> WatchEvent:
    if isinstance(raw, list) and len(raw) == 8:
        prev_revision = _check(raw[6], int, "event prev_revision")
        prev_value = _check(raw[7], (bytes, type(None)), "event prev_value")
        raw = raw[:6]
    else:
        prev_revision, prev_value = PREV_UNKNOWN, None
    revision, kind, key, value, version, create = _fields(raw, 6, "an event")
    return WatchEvent(
        _check(revision, int, "event revision"),
        _check(kind, int, "event kind"),
        _check(key, bytes, "event key"),
        _check(value, (bytes, type(None)), "event value"),
        _check(version, int, "event version"),
        _check(create, int, "event create_revision"),
        prev_revision,
        prev_value,
    )


def _decode_kv(raw: Any) -> KeyValue:
    key, value, version, create = _fields(raw, 4, "a key-value")
    return KeyValue(
        _check(key, bytes, "kv key"),
        _check(value, (bytes, type(None)), "kv value"),
        _check(version, int, "kv version"),
        _check(create, int, "kv create_revision"),
    )


def encode_response(resp: Response) -> bytes:
    fields = [
        PROTOCOL_VERSION,
        int(resp.status),
        resp.value,
        resp.version,
        resp.leader,
        resp.error,
        resp.info,
    ]
    if resp.result is not None:
        fields.append(_encode_result(resp.result))
    return _PACK(fields)


def decode_response(frame: bytes) -> Response:
    _, status, value, version, leader, error, info, result = _unpack_array(
        frame, 7, "response", optional=1
    )
    return Response(
        status=_enum(Status, status, "status"),
        value=_check(value, (bytes, type(None)), "value"),
        version=_check(version, int, "version"),
        leader=_check(leader, (int, type(None)), "leader"),
        error=_check(error, str, "error"),
        info=_check(info, (dict, type(None)), "info"),
        result=None if result is None else _decode_result(result),
    )


def encode_clock(unix_ms: int, session_ttl_ms: int) -> bytes:
    """The leader's clock command: 0xc1 + `unix_ms`, then `session_ttl_ms`,
    each as 8 big-endian bytes (17 bytes). The state machine advances its
    log time to `unix_ms` (never backwards) and takes `session_ttl_ms` as the
    session TTL from then on. Raises ValueError if either is out of range
    (the TTL must be at least 1 ms)."""
    if not 0 <= unix_ms < 2**64:
        raise ValueError(f"unix_ms {unix_ms} is out of range")
    if not 1 <= session_ttl_ms < 2**64:
        raise ValueError(f"session_ttl_ms must be >= 1 ms, got {session_ttl_ms}")
    return CLOCK_TAG + _CLOCK.pack(unix_ms, session_ttl_ms)


def decode_clock(command: bytes) -> tuple[int, int | None] | None:
    """(unix_ms, session_ttl_ms) of a clock command, or None when `command` is
    not one. Exactly two forms are clock commands: 0xc1 + 16 bytes (the
    current form; a TTL of 0 is refused: None) and the older 0xc1 + 8 bytes,
    decoded as (unix_ms, None): "TTL unchanged". Anything else is None."""
    if type(command) is not bytes or command[:1] != CLOCK_TAG:
        return None
    if len(command) == 1 + _CLOCK.size:
        unix_ms, ttl_ms = _CLOCK.unpack_from(command, 1)
        return (unix_ms, ttl_ms) if ttl_ms >= 1 else None
    if len(command) == 1 + _OLD_CLOCK.size:
        return _OLD_CLOCK.unpack_from(command, 1)[0], None
    return None


LEASE_EXPIRY_TAG = b"\xc3"
_LEASE_ID = struct.Struct(">Q")


def encode_lease_expiry(lease_ids: list[int]) -> bytes:
    """The leader's lease expiry command: 0xc3 + each lease id as 8
    big-endian bytes. The state machine deletes each lease that still
    exists and whose deadline is at or before log time, with its keys at
    one revision (a keep-alive ordered before it saves the lease). 0xc3 is
    msgpack's `true`, never a request array, so no client frame is one."""
    return LEASE_EXPIRY_TAG + b"".join(_LEASE_ID.pack(i) for i in lease_ids)


def decode_lease_expiry(command: bytes) -> list[int] | None:
    """The lease ids of an expiry command, or None when `command` is not one."""
    if type(command) is not bytes or command[:1] != LEASE_EXPIRY_TAG:
        return None
    if (len(command) - 1) % _LEASE_ID.size:
        return None
    return [i for (i,) in _LEASE_ID.iter_unpack(command[1:])]


def member_change(kind: int, replica_id: int, peer: str = "", client: str = "") -> bytes:
    """The `value` of a MEMBER request that asks for a change (kind: 1 add a
    learner, 2 promote it, 3 remove a member; kvstore/membership.py)."""
    return msgpack.packb([kind, replica_id, peer, client], use_bin_type=True)


def decode_member_change(value: bytes) -> tuple[int, int, str, str] | None:
    try:
        kind, rid, peer, client = msgpack.unpackb(value, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if type(kind) is not int or kind not in (1, 2, 3) or type(rid) is not int or rid < 1:
        return None
    if not isinstance(peer, str) or not isinstance(client, str):
        return None
    if len(peer) > 256 or len(client) > 256:
        return None
    return kind, rid, peer, client
