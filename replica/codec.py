"""The one codec for replica-to-replica messages.

A frame is a one-byte type tag followed by a msgpack array of the message's
fields in declaration order (the hashicorp/raft layout). The tag registry is
explicit: tags are part of the wire format and never reused. Decoding checks
every field's type and range, so a malformed, truncated or hostile frame
raises `CodecError` and nothing else; the transport counts and drops it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from replica.messages import (
    Ballot,
    CatchupReply,
    CatchupRequest,
    Effects,
    Heartbeat,
    HeartbeatAck,
    Message,
    Nack,
    Phase1a,
    Phase1b,
    Phase2a,
    Phase2b,
    PreVote,
    PreVoteReply,
    ReadVouch,
    SnapshotChunk,
    SnapshotRequest,
    TimeoutNow,
    Value,
    Vote,
)


class CodecError(ValueError):
    """A frame that is not a well-formed replica message."""


_MAX_INT = 2**63 - 1
VOUCH_TOKEN_BYTES = 24  # a client_id (16) and a read's nonce (8, big-endian)
MAX_VOUCH_TOKENS = 4096  # per ReadVouch: more than any iteration's requests
_PACK = msgpack.Packer(use_bin_type=True).pack  # see kvstore/statemachine.py


def _int(x: Any) -> int:
    if type(x) is not int or not 0 <= x <= _MAX_INT:
        raise CodecError("expected a non-negative integer")
    return x


def _bool(x: Any) -> bool:
    if type(x) is not bool:
        raise CodecError("expected a boolean")
    return x


def _ballot(x: Any) -> Ballot:
    if type(x) is not list or len(x) != 2:
        raise CodecError("expected a ballot [round, replica_id]")
    return Ballot(_int(x[0]), _int(x[1]))


def _value(x: Any) -> Value:
    if type(x) is not list or not all(type(c) is bytes for c in x):
        raise CodecError("expected a value (array of byte strings)")
    return tuple(x)


def _votes(x: Any) -> dict[int, Vote]:
    if type(x) is not list:
        raise CodecError("expected an array of votes")
    out = {}
    for item in x:
        if type(item) is not list or len(item) != 3:
            raise CodecError("expected a vote [slot, vballot, value]")
        out[_int(item[0])] = Vote(_ballot(item[1]), _value(item[2]))
    return out


def _entries(x: Any) -> dict[int, Value]:
    if type(x) is not list:
        raise CodecError("expected an array of entries")
    out = {}
    for item in x:
        if type(item) is not list or len(item) != 2:
            raise CodecError("expected an entry [slot, value]")
        out[_int(item[0])] = _value(item[1])
    return out


def _bytes(x: Any) -> bytes:
    if type(x) is not bytes:
        raise CodecError("expected a byte string")
    return x


def _opt_bytes(x: Any) -> bytes | None:
    return None if x is None else _bytes(x)


def _items(x: Any) -> list[tuple[bytes, bytes]]:
    if type(x) is not list:
        raise CodecError("expected an array of items")
    out = []
    for item in x:
        if type(item) is not list or len(item) != 2:
            raise CodecError("expected an item [key, record]")
        out.append((_bytes(item[0]), _bytes(item[1])))
    return out


def _tokens(x: Any) -> tuple[bytes, ...]:
    if type(x) is not list or len(x) > MAX_VOUCH_TOKENS:
        raise CodecError(f"expected an array of at most {MAX_VOUCH_TOKENS} tokens")
    for token in x:
        if type(token) is not bytes or len(token) != VOUCH_TOKEN_BYTES:
            raise CodecError(f"a token must be {VOUCH_TOKEN_BYTES} bytes")
    return tuple(x)


def _enc_items(items: list[tuple[bytes, bytes]]) -> list:
    return [[k, r] for k, r in items]


def _enc_votes(votes: dict[int, Vote]) -> list:
    return [[s, list(b), list(v)] for s, (b, v) in votes.items()]


def _enc_entries(entries: dict[int, Value]) -> list:
    return [[s, list(v)] for s, v in entries.items()]


_ident: Callable[[Any], Any] = lambda x: x  # noqa: E731
_as_list: Callable[[Any], Any] = list

# tag -> (class, [(field encoder, field decoder)] in field order)
_REGISTRY: dict[int, tuple[type, list[tuple[Callable, Callable]]]] = {
    1: (Phase1a, [(_ident, _int), (_as_list, _ballot), (_ident, _int)]),
    2: (
        Phase1b,
        [
            (_ident, _int),
            (_as_list, _ballot),
            (_ident, _int),
            (_enc_votes, _votes),
            (_ident, _int),
        ],
    ),
    3: (
        Phase2a,
        [(_ident, _int), (_as_list, _ballot), (_ident, _int), (_as_list, _value), (_ident, _int)],
    ),
    4: (Phase2b, [(_ident, _int), (_as_list, _ballot), (_ident, _int)]),
    5: (Nack, [(_ident, _int), (_as_list, _ballot), (_as_list, _ballot)]),
    6: (Heartbeat, [(_ident, _int), (_as_list, _ballot), (_ident, _int), (_ident, _int)]),
    7: (HeartbeatAck, [(_ident, _int), (_as_list, _ballot), (_ident, _int), (_ident, _int)]),
    8: (CatchupRequest, [(_ident, _int), (_as_list, _ballot), (_ident, _int)]),
    9: (
        CatchupReply,
        [
            (_ident, _int),
            (_as_list, _ballot),
            (_enc_entries, _entries),
            (_ident, _int),
            (_ident, _int),
        ],
    ),
    10: (PreVote, [(_ident, _int), (_ident, _int), (_ident, _int)]),
    11: (PreVoteReply, [(_ident, _int), (_ident, _int), (_ident, _bool), (_ident, _int)]),
    12: (SnapshotRequest, [(_ident, _int), (_ident, _bytes), (_ident, _opt_bytes)]),
    13: (
        SnapshotChunk,
        [
            (_ident, _int),
            (_ident, _bytes),
            (_ident, _int),
            (_ident, _int),
            (_enc_items, _items),
            (_ident, _opt_bytes),
            (_ident, _opt_bytes),
        ],
    ),
    14: (TimeoutNow, [(_ident, _int), (_as_list, _ballot)]),
    15: (Effects, [(_ident, _int), (_ident, _int), (_ident, _int), (_ident, _bytes)]),
    16: (ReadVouch, [(_ident, _int), (_as_list, _ballot), (_as_list, _tokens)]),
}
_TAG_OF: dict[type, int] = {cls: tag for tag, (cls, _) in _REGISTRY.items()}


def encode(msg: Message) -> bytes:
    """Encodes a message to one frame: tag byte + msgpack array of fields."""
    tag = _TAG_OF[type(msg)]
    _, fields = _REGISTRY[tag]
    body = [enc(getattr(msg, name)) for (enc, _), name in zip(fields, msg.__slots__, strict=False)]
    return bytes((tag,)) + _PACK(body)


def decode(frame: bytes) -> Message:
    """Decodes one frame; raises CodecError on anything malformed."""
    if not isinstance(frame, (bytes, bytearray, memoryview)) or len(frame) < 2:
        raise CodecError("frame too short")
    entry = _REGISTRY.get(frame[0])
    if entry is None:
        raise CodecError(f"unknown message tag {frame[0]}")
    cls, fields = entry
    try:
        body = msgpack.unpackb(memoryview(frame)[1:], raw=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise CodecError(f"undecodable {cls.__name__}: {type(exc).__name__}") from None
    if type(body) is not list or len(body) != len(fields):
        raise CodecError(f"{cls.__name__} must have {len(fields)} fields")
    try:
        return cls(*(dec(x) for (_, dec), x in zip(fields, body, strict=False)))
    except CodecError as exc:
        raise CodecError(f"malformed {cls.__name__}: {exc}") from None
