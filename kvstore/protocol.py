"""The client-facing wire protocol: requests and responses as msgpack arrays.

A client sends one frame (a REQ socket) holding an encoded `Request`; the
replica answers with one frame holding an encoded `Response`. The same encoded
request bytes of a write (PUT, DELETE, CAS) are what the leader places in a
Paxos slot, so the state machine decodes exactly what the client sent.

Layout of a request frame (msgpack array):

    [PROTOCOL_VERSION, op, client_id, seq, key, value, expected_value,
     expected_version, stale]

Layout of a response frame (msgpack array):

    [PROTOCOL_VERSION, status, value, version, leader, error, info]

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
from typing import Any

import msgpack

from kvstore.limits import MAX_KEY_BYTES, MAX_REQUEST_BYTES, MAX_VALUE_BYTES

PROTOCOL_VERSION = 1
CLIENT_ID_BYTES = 16
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


WRITE_OPS = frozenset({Op.PUT, Op.DELETE, Op.CAS})


class Status(IntEnum):
    OK = 0
    NOT_FOUND = 1  # GET or DELETE of an absent key
    CAS_FAILED = 2  # CAS whose expectation did not hold; value/version = current
    REDIRECT = 3  # not the leader; `leader` names the replica id to ask
    UNAVAILABLE = 4  # no leader known or the request could not be served now: retry
    BAD_REQUEST = 5  # malformed request; `error` says why; nothing changed
    TOO_LARGE = 6  # key or value over the documented limits; nothing changed
    SESSION_EXPIRED = 7  # seq > 1 from a client id without a session: nothing changed


@dataclass(frozen=True, slots=True)
class Request:
    """One client request.

    PUT: key, value. GET: key; `stale=True` reads the replica's local state
    without confirming leadership (may be stale). DELETE: key. CAS: key, value
    (the new value) and exactly one of `expected_version` (0 means "the key
    must be absent") or `expected_value`. STATUS: needs no other field (any
    replica answers it itself, for a health check as well as for a client);
    the others, if set, are type-checked by the decoder and otherwise ignored.
    """

    op: Op
    client_id: bytes = b""
    seq: int = 0
    key: bytes = b""
    value: bytes | None = None
    expected_value: bytes | None = None
    expected_version: int | None = None
    stale: bool = False


@dataclass(frozen=True, slots=True)
class Response:
    """One reply. `version` is the key's modification revision (0 = absent).
    `info` carries the STATUS report (a dict of str to str/int)."""

    status: Status
    value: bytes | None = None
    version: int = 0
    leader: int | None = None
    error: str = ""
    info: dict[str, Any] | None = field(default=None)


def validate_request(req: Request) -> tuple[Status, str] | None:
    """Checks the documented limits and per-op fields. Returns None when the
    request is acceptable, else (BAD_REQUEST or TOO_LARGE, message)."""
    if req.op == Op.STATUS:
        # No session (client_id, seq) and no key: see Request and parse_request.
        return None
    if len(req.client_id) != CLIENT_ID_BYTES:
        return Status.BAD_REQUEST, f"client_id must be {CLIENT_ID_BYTES} bytes"
    if req.seq < 1:
        return Status.BAD_REQUEST, "seq must be >= 1"
    if not req.key:
        return Status.BAD_REQUEST, "key must not be empty"
    if len(req.key) > MAX_KEY_BYTES:
        return Status.TOO_LARGE, f"key is {len(req.key)} bytes; the limit is {MAX_KEY_BYTES}"
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


def encode_request(req: Request) -> bytes:
    return msgpack.packb(
        [
            PROTOCOL_VERSION,
            int(req.op),
            req.client_id,
            req.seq,
            req.key,
            req.value,
            req.expected_value,
            req.expected_version,
            req.stale,
        ],
        use_bin_type=True,
    )


def _unpack_array(frame: bytes, length: int, what: str) -> list:
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"{what} frame must be bytes")
    try:
        obj = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types
        raise ProtocolError(f"undecodable {what}: {type(exc).__name__}") from None
    if not isinstance(obj, list) or len(obj) != length:
        raise ProtocolError(f"{what} must be an array of {length} fields")
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
    _, op, client_id, seq, key, value, exp_value, exp_version, stale = _unpack_array(
        frame, 9, "request"
    )
    _check(op, int, "op")  # outside the try: ProtocolError is a ValueError
    try:
        op = Op(op)
    except ValueError:
        raise ProtocolError(f"unknown op {op!r}") from None
    return Request(
        op=op,
        client_id=_check(client_id, bytes, "client_id"),
        seq=_check(seq, int, "seq"),
        key=_check(key, bytes, "key"),
        value=_check(value, (bytes, type(None)), "value"),
        expected_value=_check(exp_value, (bytes, type(None)), "expected_value"),
        expected_version=_check(exp_version, (int, type(None)), "expected_version"),
        stale=_check(stale, bool, "stale"),
    )


def parse_request(frame: bytes) -> Request | Response:
    """The one way to read a request frame: the decoded, valid Request, or the
    error Response to send back instead. In order:

    1. over MAX_REQUEST_BYTES: TOO_LARGE, naming the size and the limit,
       before a byte is decoded;
    2. not bytes, undecodable, or a field of the wrong type: BAD_REQUEST;
    3. STATUS: valid as it is, it needs no other field;
    4. otherwise `validate_request`: BAD_REQUEST or TOO_LARGE (a key or value
       over its limit).

    Never raises, whatever the bytes: a replica answers and carries on, and a
    bad command in a slot has the same outcome on every replica.
    """
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
    problem = validate_request(req)
    if problem is not None:
        return Response(problem[0], error=problem[1])
    return req


def encode_response(resp: Response) -> bytes:
    return msgpack.packb(
        [
            PROTOCOL_VERSION,
            int(resp.status),
            resp.value,
            resp.version,
            resp.leader,
            resp.error,
            resp.info,
        ],
        use_bin_type=True,
    )


def decode_response(frame: bytes) -> Response:
    _, status, value, version, leader, error, info = _unpack_array(frame, 7, "response")
    _check(status, int, "status")  # outside the try: ProtocolError is a ValueError
    try:
        status = Status(status)
    except ValueError:
        raise ProtocolError(f"unknown status {status!r}") from None
    return Response(
        status=status,
        value=_check(value, (bytes, type(None)), "value"),
        version=_check(version, int, "version"),
        leader=_check(leader, (int, type(None)), "leader"),
        error=_check(error, str, "error"),
        info=_check(info, (dict, type(None)), "info"),
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
