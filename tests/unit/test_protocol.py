"""The client wire protocol: round trips, limits, malformed input always
raising ProtocolError (never any other exception), and `parse_request`, the
one path from a request frame to a Request or the error Response."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.limits import (
    MAX_KEY_BYTES,
    MAX_REQUEST_BYTES,
    MAX_TXN_BYTES,
    MAX_TXN_COMPARES,
    MAX_TXN_OPS,
    MAX_VALUE_BYTES,
)
from kvstore.protocol import (
    CLIENT_ID_BYTES,
    FROM_KEY,
    PROTOCOL_VERSION,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteResult,
    KeyValue,
    Op,
    ProtocolError,
    PutResult,
    RangeResult,
    Request,
    Response,
    Status,
    Txn,
    TxnOp,
    TxnOpKind,
    TxnResult,
    WatchEvent,
    WatchResult,
    decode_clock,
    decode_request,
    decode_response,
    encode_clock,
    encode_request,
    encode_response,
    member_change,
    parse_request,
    prefix_end,
    validate_request,
)

CID = b"c" * CLIENT_ID_BYTES
TXN = Txn(
    (
        Compare(CompareTarget.VALUE, CompareOp.EQUAL, b"a", b"1"),
        Compare(CompareTarget.VERSION, CompareOp.LESS, b"b", 7),
        Compare(CompareTarget.CREATE, CompareOp.GREATER, b"c", 0),
        Compare(CompareTarget.EXISTS, CompareOp.NOT_EQUAL, b"d", True),
    ),
    (
        TxnOp(TxnOpKind.PUT, b"a", value=b"2"),
        TxnOp(TxnOpKind.DELETE, b"b"),
        TxnOp(TxnOpKind.DELETE, b"p/", b"p0"),
        TxnOp(TxnOpKind.RANGE, b"q/", b"q0", limit=3, keys_only=True),
    ),
    (TxnOp(TxnOpKind.RANGE, b"a", count_only=True),),
)

# --- round trips ------------------------------------------------------------------

REQUESTS = [
    Request(Op.SNAPSHOT),  # a backup export starts
    Request(Op.SNAPSHOT, key=b"dk", value=b"\x00" * 16),  # its next chunk
    Request(Op.MEMBER),  # list the membership
    Request(Op.MOVE_LEADER, value=b"2"),  # hand leadership to replica 2
    Request(Op.MEMBER, value=member_change(1, 4, "tcp://h:7004", "tcp://h:7104")),
    Request(Op.PUT, CID, 1, b"k", b"v"),
    Request(Op.PUT, CID, 2**63, b"\x00\xff", b""),
    Request(Op.GET, CID, 3, b"k"),
    Request(Op.GET, CID, 4, b"k", stale=True),
    Request(Op.GET, CID, 4, b"k", expected_version=7),  # vouched, nonce 7
    Request(Op.VOUCH, CID, 7, expected_version=2),  # vouch to replica 2 for that read
    Request(Op.VOUCH, CID, 7),  # ... to the leader the follower knows
    Request(Op.DELETE, CID, 5, b"k"),
    Request(Op.CAS, CID, 6, b"k", b"new", expected_value=b"old"),
    Request(Op.CAS, CID, 7, b"k", b"new", expected_version=0),
    Request(Op.CAS, CID, 8, b"k", b"new", expected_version=12345),
    Request(Op.STATUS),
    Request(Op.RANGE, CID, 9, b"p/", range_end=b"p0"),
    Request(Op.RANGE, CID, 9, b"p/", range_end=FROM_KEY, limit=10, keys_only=True, stale=True),
    Request(Op.RANGE, CID, 9, b"k", count_only=True),
    Request(Op.DELETE_RANGE, CID, 10, b"p/", range_end=b"p0"),
    Request(Op.TXN, CID, 11, txn=TXN),
    Request(Op.TXN, CID, 12, txn=Txn()),
    Request(Op.PUT, CID, 13, b"k", b"v", lease=2**63 - 1),
    Request(Op.LEASE_GRANT, CID, 14, lease=7, ttl=10),
    Request(Op.LEASE_KEEPALIVE, CID, 15, lease=7),
    Request(Op.LEASE_REVOKE, CID, 16, lease=7),
    Request(Op.LEASE_TTL, CID, 17, lease=7, keys_only=True),
    Request(Op.LEASE_LIST, CID, 17, lease=3, stale=True),
    Request(Op.WATCH, CID, 1, b"p/", range_end=b"p0", expected_version=5, limit=1000),
]

RANGE_RESULT = RangeResult(
    (KeyValue(b"p/1", b"one", 4, 2), KeyValue(b"p/2", None, 5, 5)), 2, True, b"p/3"
)
RESPONSES = [
    Response(Status.OK, version=3),
    Response(Status.OK, value=b"v", version=7),
    Response(Status.NOT_FOUND),
    Response(Status.CAS_FAILED, value=b"current", version=9),
    Response(Status.CAS_FAILED, value=None, version=0),
    Response(Status.REDIRECT, leader=2),
    Response(Status.UNAVAILABLE, error="no leader"),
    Response(Status.BAD_REQUEST, error="seq must be >= 1"),
    Response(Status.TOO_LARGE, error="key is 5000 bytes"),
    Response(Status.SESSION_EXPIRED, error="session expired or unknown: start a new session"),
    Response(Status.OK, info={"id": 1, "role": "leader", "leader": 1, "commit_index": 10}),
    Response(Status.OK, version=9, result=RANGE_RESULT),
    Response(Status.OK, version=9, result=RangeResult()),
    Response(Status.OK, version=9, result=DeleteResult(3)),
    Response(Status.COMPACTED, error="revision 3 is compacted", info={"oldest": 9}),
    Response(
        Status.OK,
        version=9,
        result=WatchResult(
            (WatchEvent(8, 0, b"k", b"v", 8, 2), WatchEvent(9, 1, b"k", None, 9, 2)), 10
        ),
    ),
    Response(
        Status.CAS_FAILED,
        version=9,
        result=TxnResult((PutResult(9), DeleteResult(0), RANGE_RESULT)),
    ),
]


def test_every_op_and_status_is_covered() -> None:
    assert {r.op for r in REQUESTS} == set(Op)
    assert {r.status for r in RESPONSES} == set(Status)


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: r.op.name)
def test_request_round_trip(req: Request) -> None:
    decoded = decode_request(encode_request(req))
    assert decoded == req
    assert type(decoded.op) is Op


@pytest.mark.parametrize("resp", RESPONSES, ids=lambda r: r.status.name)
def test_response_round_trip(resp: Response) -> None:
    decoded = decode_response(encode_response(resp))
    assert decoded == resp
    assert type(decoded.status) is Status


@pytest.mark.parametrize("frame_type", [bytearray, memoryview])
def test_decode_accepts_bytes_like_frames(frame_type: type) -> None:
    req = REQUESTS[0]
    assert decode_request(frame_type(encode_request(req))) == req


@settings(max_examples=200)
@given(
    op=st.sampled_from(list(Op)),
    client_id=st.binary(max_size=20),
    seq=st.integers(0, 2**64 - 1),
    key=st.binary(max_size=64),
    value=st.none() | st.binary(max_size=64),
    expected_value=st.none() | st.binary(max_size=64),
    expected_version=st.none() | st.integers(-(2**63), 2**64 - 1),
    stale=st.booleans(),
)
def test_any_request_round_trips(**fields: Any) -> None:
    req = Request(**fields)
    assert decode_request(encode_request(req)) == req


# --- validate_request ---------------------------------------------------------------


def _req(op: Op = Op.PUT, **fields: Any) -> Request:
    base: dict[str, Any] = {"client_id": CID, "seq": 1, "key": b"k", "value": b"v"}
    return Request(op, **{**base, **fields})


def _range(op: Op = Op.RANGE, **fields: Any) -> Request:
    return Request(op, CID, 1, fields.pop("key", b"p/"), **fields)


def _txn(*compares: Compare, success: Any = (), failure: Any = ()) -> Request:
    return Request(Op.TXN, CID, 1, txn=Txn(compares, tuple(success), tuple(failure)))


def _cmp(target: CompareTarget, operand: Any, op: CompareOp = CompareOp.EQUAL) -> Compare:
    return Compare(target, op, b"k", operand)


_PUT = TxnOp(TxnOpKind.PUT, b"k", value=b"v")
_BIG = b"v" * MAX_VALUE_BYTES
INVALID_RANGES_AND_TXNS = [
    (_range(key=b""), Status.BAD_REQUEST, "key must not be empty"),
    (_range(range_end=b"z" * (MAX_KEY_BYTES + 1)), Status.TOO_LARGE, "range_end"),
    (_range(limit=-1), Status.BAD_REQUEST, "limit"),
    (_range(limit=2**63), Status.BAD_REQUEST, "limit"),
    (_range(keys_only=True, count_only=True), Status.BAD_REQUEST, "exclude"),
    (_range(value=b"v"), Status.BAD_REQUEST, "RANGE takes no value"),
    (_range(Op.DELETE_RANGE, limit=1), Status.BAD_REQUEST, "RANGE only"),
    (_range(Op.DELETE_RANGE, expected_version=1), Status.BAD_REQUEST, "no value"),
    (_req(Op.GET, value=None, range_end=b"z"), Status.BAD_REQUEST, "range_end is for"),
    (_req(Op.PUT, keys_only=True), Status.BAD_REQUEST, "RANGE only"),
    (_req(Op.PUT, txn=Txn()), Status.BAD_REQUEST, "only TXN"),
    (Request(Op.TXN, CID, 1), Status.BAD_REQUEST, "TXN needs a txn"),
    (Request(Op.TXN, CID, 1, b"k", txn=Txn()), Status.BAD_REQUEST, "no key"),
    (Request(Op.TXN, CID, 0, txn=Txn()), Status.BAD_REQUEST, "seq"),
    (
        _txn(*[_cmp(CompareTarget.VERSION, 1)] * (MAX_TXN_COMPARES + 1)),
        Status.TOO_LARGE,
        "at most 128",
    ),
    (_txn(success=[_PUT] * (MAX_TXN_OPS + 1)), Status.TOO_LARGE, "129 success operations"),
    (_txn(failure=[_PUT] * (MAX_TXN_OPS + 1)), Status.TOO_LARGE, "129 failure operations"),
    (
        _txn(success=[TxnOp(TxnOpKind.PUT, b"k", value=_BIG)] * 2),
        Status.TOO_LARGE,
        f"the limit is {MAX_TXN_BYTES}",
    ),
    (_txn(_cmp(CompareTarget.VALUE, 1)), Status.BAD_REQUEST, "comparison 1: a value"),
    (_txn(_cmp(CompareTarget.VALUE, _BIG + b"!")), Status.TOO_LARGE, "compared value"),
    (_txn(_cmp(CompareTarget.VERSION, b"1")), Status.BAD_REQUEST, "version comparison"),
    (_txn(_cmp(CompareTarget.CREATE, -1)), Status.BAD_REQUEST, "create comparison"),
    (_txn(_cmp(CompareTarget.VERSION, True)), Status.BAD_REQUEST, "integer"),
    (_txn(_cmp(CompareTarget.EXISTS, 1)), Status.BAD_REQUEST, "true or false"),
    (
        _txn(_cmp(CompareTarget.EXISTS, True, CompareOp.LESS)),
        Status.BAD_REQUEST,
        "takes = or !=",
    ),
    (
        _txn(
            _cmp(CompareTarget.VERSION, 1), Compare(CompareTarget.VERSION, CompareOp.EQUAL, b"", 1)
        ),
        Status.BAD_REQUEST,
        "comparison 2: key must not be empty",
    ),
    (_txn(success=[TxnOp(TxnOpKind.PUT, b"k")]), Status.BAD_REQUEST, "success operation 1: put"),
    (
        _txn(success=[TxnOp(TxnOpKind.PUT, b"k", value=_BIG + b"!")]),
        Status.TOO_LARGE,
        "value is",
    ),
    (
        _txn(success=[TxnOp(TxnOpKind.PUT, b"k", b"z", value=b"v")]),
        Status.BAD_REQUEST,
        "put takes no range_end",
    ),
    (
        _txn(failure=[_PUT, TxnOp(TxnOpKind.DELETE, b"k", value=b"v")]),
        Status.BAD_REQUEST,
        "failure operation 2: delete takes no value",
    ),
    (
        _txn(success=[TxnOp(TxnOpKind.DELETE, b"k", limit=3)]),
        Status.BAD_REQUEST,
        "range only",
    ),
    (
        _txn(success=[TxnOp(TxnOpKind.RANGE, b"k", keys_only=True, count_only=True)]),
        Status.BAD_REQUEST,
        "exclude",
    ),
    (
        _txn(success=[TxnOp(TxnOpKind.RANGE, b"k" * (MAX_KEY_BYTES + 1))]),
        Status.TOO_LARGE,
        "key is",
    ),
]


@pytest.mark.parametrize(
    "req",
    [
        _req(),
        _req(Op.PUT, value=b""),
        _req(Op.PUT, key=b"k" * MAX_KEY_BYTES, value=b"v" * MAX_VALUE_BYTES),
        _req(Op.GET, value=None),
        _req(Op.DELETE, value=None),
        _req(Op.CAS, expected_version=0),
        _req(Op.CAS, expected_value=b""),
        Request(Op.STATUS),
        _range(range_end=b"a"),  # an empty range is not an error (etcd)
        _range(key=b"\xff" * MAX_KEY_BYTES, range_end=FROM_KEY, limit=2**63 - 1),
        _range(Op.DELETE_RANGE),
        _txn(),
        _txn(_cmp(CompareTarget.EXISTS, False), _cmp(CompareTarget.VALUE, _BIG)),
    ],
)
def test_valid_requests_pass(req: Request) -> None:
    assert validate_request(req) is None


@pytest.mark.parametrize(
    ("req", "status", "words"),
    [
        (_req(key=b"k" * (MAX_KEY_BYTES + 1)), Status.TOO_LARGE, "key"),
        (_req(value=b"v" * (MAX_VALUE_BYTES + 1)), Status.TOO_LARGE, "value"),
        (
            _req(Op.CAS, expected_value=b"e" * (MAX_VALUE_BYTES + 1)),
            Status.TOO_LARGE,
            "expected value",
        ),
        (_req(key=b""), Status.BAD_REQUEST, "key"),
        (_req(client_id=b""), Status.BAD_REQUEST, "client_id"),
        (_req(client_id=CID + b"x"), Status.BAD_REQUEST, "client_id"),
        (_req(seq=0), Status.BAD_REQUEST, "seq"),
        (_req(seq=-1), Status.BAD_REQUEST, "seq"),
        (_req(value=None), Status.BAD_REQUEST, "PUT needs a value"),
        (_req(Op.CAS), Status.BAD_REQUEST, "exactly one"),
        (
            _req(Op.CAS, expected_value=b"a", expected_version=1),
            Status.BAD_REQUEST,
            "exactly one",
        ),
        (_req(Op.CAS, value=None, expected_version=1), Status.BAD_REQUEST, "new value"),
        (_req(Op.CAS, expected_version=-1), Status.BAD_REQUEST, "expected_version"),
        (_req(Op.GET, value=None, expected_version=0), Status.BAD_REQUEST, "vouch nonce"),
        (Request(Op.VOUCH, CID, 1, expected_version=-2), Status.BAD_REQUEST, "replica id"),
        (Request(Op.VOUCH, CID, 0, expected_version=1), Status.BAD_REQUEST, "seq"),
        (Request(Op.VOUCH, b"short", 1, expected_version=1), Status.BAD_REQUEST, "client_id"),
        *INVALID_RANGES_AND_TXNS,
    ],
)
def test_invalid_requests_are_rejected(req: Request, status: Status, words: str) -> None:
    problem = validate_request(req)
    assert problem is not None
    assert problem[0] == status
    assert words in problem[1]


# --- malformed frames ----------------------------------------------------------------


def _raw_request(**overrides: Any) -> bytes:
    fields = [PROTOCOL_VERSION, int(Op.PUT), CID, 1, b"k", b"v", None, None, False, None]
    names = ["version", "op", "client_id", "seq", "key", "value", "exp_value", "exp_version"]
    names += ["stale", "extra"]
    for name, value in overrides.items():
        fields[names.index(name)] = value
    if fields[-1] is None:
        fields.pop()
    return msgpack.packb(fields, use_bin_type=True)


def _raw_txn(compares: Any = (), success: Any = (), failure: Any = ()) -> bytes:
    txn = [list(compares), list(success), list(failure)]
    return _raw_request(op=8, key=b"", value=None, extra=[None, 0, False, False, txn])


def _raw_response(**overrides: Any) -> bytes:
    fields: list[Any] = [PROTOCOL_VERSION, int(Status.OK), None, 0, None, "", None]
    names = ["version", "status", "value", "version_", "leader", "error", "info"]
    for name, value in overrides.items():
        fields[names.index(name)] = value
    return msgpack.packb(fields, use_bin_type=True)


def test_raw_helpers_build_valid_frames() -> None:
    assert decode_request(_raw_request()) == _req()
    assert decode_request(_raw_txn()) == Request(Op.TXN, CID, 1, txn=Txn())
    assert decode_response(_raw_response()) == Response(Status.OK)


BAD_REQUEST_FRAMES = {
    "empty": b"",
    "garbage": b"\xc1\xc1\xc1",
    "truncated": _raw_request()[:-3],
    "trailing data": _raw_request() + b"\x00",
    "not an array": msgpack.packb({"op": 1}),
    "scalar": msgpack.packb(7),
    "too short": msgpack.packb([PROTOCOL_VERSION, 1, CID, 1]),
    "too long": msgpack.packb(
        [PROTOCOL_VERSION, 1, CID, 1, b"k", b"v", None, None, False, None, None]
    ),
    "range fields as int": msgpack.packb(
        [PROTOCOL_VERSION, 6, CID, 1, b"k", None, None, None, False, 0]
    ),
    "range fields too short": msgpack.packb(
        [PROTOCOL_VERSION, 6, CID, 1, b"k", None, None, None, False, [None, 0]]
    ),
    "limit as bool": _raw_request(op=6, value=None, extra=[None, True, False, False, None]),
    "range_end as str": _raw_request(op=6, value=None, extra=["z", 0, False, False, None]),
    "keys_only as int": _raw_request(op=6, value=None, extra=[None, 0, 1, False, None]),
    "txn as map": _raw_request(op=8, key=b"", value=None, extra=[None, 0, False, False, {}]),
    "txn of 2": _raw_request(op=8, key=b"", value=None, extra=[None, 0, False, False, [[], []]]),
    "compare target 9": _raw_txn(compares=[[9, 0, b"k", b"v"]]),
    "compare op as str": _raw_txn(compares=[[0, "=", b"k", b"v"]]),
    "compare key as str": _raw_txn(compares=[[0, 0, "k", b"v"]]),
    "compare operand as float": _raw_txn(compares=[[1, 0, b"k", 1.5]]),
    "compare of 3": _raw_txn(compares=[[0, 0, b"k"]]),
    "operation kind 7": _raw_txn(success=[[7, b"k", None, None, 0, False, False]]),
    "operation value as str": _raw_txn(success=[[0, b"k", None, "v", 0, False, False]]),
    "operation of 2": _raw_txn(failure=[[0, b"k"]]),
    "deep nesting": b"\x91" * 100_000,
    "unknown op": _raw_request(op=99),
    "negative op": _raw_request(op=-1),
    "op as str": _raw_request(op="PUT"),
    "op as bool": _raw_request(op=True),
    "op as float": _raw_request(op=1.0),
    "version 2": _raw_request(version=2),
    "version as bool": _raw_request(version=True),
    "version as float": _raw_request(version=1.0),
    "version as str": _raw_request(version="1"),
    "seq as bool": _raw_request(seq=True),
    "seq as float": _raw_request(seq=1.5),
    "seq as None": _raw_request(seq=None),
    "key as str": _raw_request(key="k"),
    "key as None": _raw_request(key=None),
    "client_id as str": _raw_request(client_id="c" * 16),
    "value as int": _raw_request(value=5),
    "value as list": _raw_request(value=[b"v"]),
    "expected_value as str": _raw_request(exp_value="old"),
    "expected_version as bool": _raw_request(exp_version=False),
    "expected_version as bytes": _raw_request(exp_version=b"\x01"),
    "stale as int": _raw_request(stale=1),
    "stale as None": _raw_request(stale=None),
    "invalid utf-8 str": _raw_request().replace(b"\xc4\x01k", b"\xa1\xff"),
    "ext type": _raw_request(value=msgpack.ExtType(5, b"x")),
    "oversized": b"\x00" * (MAX_REQUEST_BYTES + 1),
}


@pytest.mark.parametrize("frame", BAD_REQUEST_FRAMES.values(), ids=BAD_REQUEST_FRAMES.keys())
def test_malformed_request_raises_protocol_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_request(frame)


def test_oversized_request_is_refused_before_decoding() -> None:
    frame = encode_request(_req(value=b"v" * (MAX_REQUEST_BYTES + 1)))
    with pytest.raises(ProtocolError, match="over"):
        decode_request(frame)


@pytest.mark.parametrize("frame", [None, 7, 1.5, "text", [1, 2], object()])
def test_non_bytes_frames_raise_protocol_error(frame: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_request(frame)
    with pytest.raises(ProtocolError):
        decode_response(frame)


BAD_RESPONSE_FRAMES = {
    "empty": b"",
    "garbage": b"\xc1",
    "too short": msgpack.packb([PROTOCOL_VERSION, 0]),
    "request frame": _raw_request(),
    "unknown status": _raw_response(status=42),
    "status as bool": _raw_response(status=False),
    "status as str": _raw_response(status="OK"),
    "version 0": _raw_response(version=0),
    "version as bool": _raw_response(version=True),
    "value as str": _raw_response(value="v"),
    "key version as bool": _raw_response(version_=True),
    "key version as None": _raw_response(version_=None),
    "leader as bool": _raw_response(leader=True),
    "leader as str": _raw_response(leader="1"),
    "error as bytes": _raw_response(error=b"oops"),
    "error as None": _raw_response(error=None),
    "info as list": _raw_response(info=[1, 2]),
    "info with int keys": msgpack.packb([PROTOCOL_VERSION, 0, None, 0, None, "", {1: 2}]),
    "too long": msgpack.packb([PROTOCOL_VERSION, 0, None, 0, None, "", None, None, None]),
    **{
        f"result {name}": msgpack.packb([PROTOCOL_VERSION, 0, None, 0, None, "", None, result])
        for name, result in {
            "as int": 1,
            "empty": [],
            "tag 9": [9, 1],
            "range of 4": [1, [], 0, False],
            "kv of 3": [1, [[b"k", b"v", 1]], 1, False, None],
            "kv key as str": [1, [["k", b"v", 1, 1]], 1, False, None],
            "more as int": [1, [], 0, 1, None],
            "deleted as None": [2, None],
            "put version as bytes": [3, b"1"],
            "txn in txn": [4, [[4, []]]],
            "txn responses as map": [4, {}],
        }.items()
    },
}


@pytest.mark.parametrize("frame", BAD_RESPONSE_FRAMES.values(), ids=BAD_RESPONSE_FRAMES.keys())
def test_malformed_response_raises_protocol_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_response(frame)


def test_protocol_error_names_the_field() -> None:
    with pytest.raises(ProtocolError, match="seq"):
        decode_request(_raw_request(seq="1"))
    with pytest.raises(ProtocolError, match="field op"):
        decode_request(_raw_request(op=True))


# --- parse_request ----------------------------------------------------------------------


def _parsed_or_error_response(frame: Any) -> Request | Response:
    """parse_request's contract for any input: a valid Request, or a
    BAD_REQUEST/TOO_LARGE Response that says why."""
    parsed = parse_request(frame)
    if isinstance(parsed, Request):
        assert validate_request(parsed) is None
    else:
        assert isinstance(parsed, Response)
        assert parsed.status in (Status.BAD_REQUEST, Status.TOO_LARGE)
        assert parsed.error
    return parsed


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: r.op.name)
def test_parse_request_returns_valid_requests(req: Request) -> None:
    assert parse_request(encode_request(req)) == req


@pytest.mark.parametrize("frame_type", [bytes, bytearray, memoryview])
def test_parse_request_accepts_bytes_like_frames(frame_type: type) -> None:
    assert parse_request(frame_type(encode_request(REQUESTS[0]))) == REQUESTS[0]


@pytest.mark.parametrize(
    "req",
    [
        Request(Op.STATUS),
        Request(Op.STATUS, CID),  # what the client sends
        Request(Op.STATUS, b"x", 0, b"", b"v" * (MAX_VALUE_BYTES + 1)),  # ignored fields
    ],
    ids=["bare", "with client_id", "other fields ignored"],
)
def test_parse_request_status_needs_no_other_field(req: Request) -> None:
    assert parse_request(encode_request(req)) == req


def test_parse_request_status_fields_are_still_type_checked() -> None:
    frame = _raw_request(op=int(Op.STATUS), key="not bytes")
    assert parse_request(frame) == Response(
        Status.BAD_REQUEST, error="field key has the wrong type"
    )


@pytest.mark.parametrize("frame_type", [bytes, bytearray, memoryview])
def test_parse_request_oversize_is_too_large_before_decoding(frame_type: type) -> None:
    size = MAX_REQUEST_BYTES + 1
    resp = parse_request(frame_type(b"\xc1" * size))  # undecodable, but too large first
    assert isinstance(resp, Response)
    assert resp.status is Status.TOO_LARGE
    assert str(size) in resp.error and str(MAX_REQUEST_BYTES) in resp.error


def test_parse_request_measures_a_memoryview_in_bytes() -> None:
    frame = memoryview(b"\x00" * (MAX_REQUEST_BYTES + 4 - MAX_REQUEST_BYTES % 4)).cast("I")
    assert len(frame) <= MAX_REQUEST_BYTES
    resp = parse_request(frame)
    assert isinstance(resp, Response) and resp.status is Status.TOO_LARGE


def test_parse_request_at_the_limit_is_decoded() -> None:
    resp = parse_request(b"\xc1" * MAX_REQUEST_BYTES)
    assert isinstance(resp, Response) and resp.status is Status.BAD_REQUEST


def test_largest_valid_requests_fit_the_frame_limit() -> None:
    """The client checks only validate_request: that is enough, because every
    request it accepts encodes within MAX_REQUEST_BYTES."""
    key, value = b"k" * MAX_KEY_BYTES, b"v" * MAX_VALUE_BYTES
    largest = [
        Request(Op.PUT, CID, 2**64 - 1, key, value),
        Request(Op.CAS, CID, 2**64 - 1, key, value, expected_value=value),
    ]
    for req in largest:
        frame = encode_request(req)
        assert len(frame) <= MAX_REQUEST_BYTES
        assert parse_request(frame) == req


def test_the_largest_transaction_fits_the_frame_limit() -> None:
    """Every field at its widest encoding: bin32 values, bin16 keys and
    range ends, 9-byte integers, the most comparisons and operations, and
    MAX_TXN_BYTES of keys and values in all."""
    key, end = b"k" * 256, b"z" * 256  # the shortest keys with a bin16 header
    compares = [Compare(CompareTarget.VERSION, CompareOp.GREATER, key, 2**63 - 1)]
    compares *= MAX_TXN_COMPARES
    ranges = [TxnOp(TxnOpKind.RANGE, key, end, None, 2**63 - 1, True)] * (MAX_TXN_OPS - 1)
    spent = sum(len(c.key) for c in compares) + len(ranges) * 2 * (len(key) + len(end))
    left = (MAX_TXN_BYTES - spent) // 2 - len(key)
    assert left > 65536  # the puts' values are bin32 (widest header)
    put = TxnOp(TxnOpKind.PUT, key, value=b"v" * left)
    req = Request(Op.TXN, CID, 2**64 - 1, txn=Txn(tuple(compares), (put, *ranges), (put, *ranges)))
    assert validate_request(req) is None
    frame = encode_request(req)
    assert len(frame) <= MAX_REQUEST_BYTES
    assert parse_request(frame) == req


def test_frames_of_the_older_ops_are_unchanged() -> None:
    """PUT, GET, DELETE and CAS encode as the 9 fields they always had, so
    logs and session digests of the previous release stay valid."""
    for req in REQUESTS:
        if req.op in (Op.PUT, Op.GET, Op.DELETE, Op.CAS, Op.STATUS) and not req.lease:
            assert len(msgpack.unpackb(encode_request(req))) == 9
    assert len(msgpack.unpackb(encode_response(RESPONSES[0]))) == 7


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"a", b"b"),
        (b"foo/", b"foo0"),
        (b"a\xff", b"b"),
        (b"a\xfe\xff\xff", b"a\xff"),
        (b"\xff\xff", FROM_KEY),
        (b"", FROM_KEY),
    ],
)
def test_prefix_end(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end
    if end != FROM_KEY:  # every key with the prefix is below end, and end has not it
        assert prefix + b"\xff" * 8 < end and not end.startswith(prefix)


_NOT_TOO_LARGE = {k: v for k, v in BAD_REQUEST_FRAMES.items() if k != "oversized"}


@pytest.mark.parametrize("frame", _NOT_TOO_LARGE.values(), ids=_NOT_TOO_LARGE.keys())
def test_parse_request_malformed_is_bad_request(frame: bytes) -> None:
    resp = parse_request(frame)
    assert isinstance(resp, Response)
    assert resp.status is Status.BAD_REQUEST
    with pytest.raises(ProtocolError) as exc:
        decode_request(frame)
    assert resp.error == str(exc.value)


@pytest.mark.parametrize("frame", [None, 7, 1.5, "text", [1, 2], object()])
def test_parse_request_non_bytes_is_bad_request(frame: Any) -> None:
    resp = parse_request(frame)
    assert resp == Response(Status.BAD_REQUEST, error="request frame must be bytes")


@pytest.mark.parametrize(
    "req",
    [
        _req(key=b"k" * (MAX_KEY_BYTES + 1)),
        _req(value=b"v" * (MAX_VALUE_BYTES + 1)),
        _req(Op.CAS, expected_value=b"e" * (MAX_VALUE_BYTES + 1)),
        _req(key=b""),
        _req(client_id=b""),
        _req(seq=0),
        _req(value=None),
        _req(Op.CAS),
        _req(Op.CAS, expected_value=b"a", expected_version=1),
        _req(Op.CAS, value=None, expected_version=1),
        _req(Op.CAS, expected_version=-1),
        _req(Op.GET, client_id=CID + b"x"),
        _req(Op.DELETE, seq=-5),
    ],
)
def test_parse_request_answers_each_validation_problem(req: Request) -> None:
    problem = validate_request(req)
    assert problem is not None
    assert parse_request(encode_request(req)) == Response(problem[0], error=problem[1])


# --- fuzzing ----------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.sampled_from([PROTOCOL_VERSION, CID, b"k"])
)
_msgpack_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=10) | st.dictionaries(st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=30,
)


def _decode_or_protocol_error(frame: bytes) -> None:
    """Decoding either succeeds with well-typed fields or raises ProtocolError;
    any other exception fails the test. parse_request never raises."""
    _parsed_or_error_response(frame)
    try:
        req = decode_request(frame)
    except ProtocolError:
        pass
    else:
        assert isinstance(req.op, Op)
        assert type(req.seq) is int
        assert type(req.key) is bytes and type(req.client_id) is bytes
        assert type(req.stale) is bool
        validate_request(req)  # must not raise either
    try:
        resp = decode_response(frame)
    except ProtocolError:
        pass
    else:
        assert isinstance(resp.status, Status)
        assert type(resp.version) is int


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(frame: bytes) -> None:
    _decode_or_protocol_error(frame)


@settings(max_examples=500)
@given(st.lists(_msgpack_values, min_size=7, max_size=9))
def test_fuzz_well_formed_msgpack_arrays(fields: list[Any]) -> None:
    _decode_or_protocol_error(msgpack.packb(fields, use_bin_type=True))


_NEAR_LIMIT = encode_request(
    Request(Op.CAS, CID, 1, b"k" * MAX_KEY_BYTES, b"v" * MAX_VALUE_BYTES, b"e" * MAX_VALUE_BYTES)
)


@settings(max_examples=100)
@given(st.integers(-300, 300), st.binary(max_size=50), st.integers(0, MAX_REQUEST_BYTES))
def test_fuzz_parse_request_around_the_size_limit(grow: int, noise: bytes, at: int) -> None:
    """A large CAS cut or padded to about MAX_REQUEST_BYTES, with noise
    written over it somewhere (often over the header)."""
    frame = (_NEAR_LIMIT + b"\x00" * 600)[: MAX_REQUEST_BYTES + grow]
    at = at % 64 if at % 2 else at % len(frame)
    _parsed_or_error_response(frame[:at] + noise + frame[at + len(noise) :])


@settings(max_examples=300)
@given(st.binary(max_size=100), st.integers(0, 99), st.data())
def test_fuzz_mutated_valid_frames(noise: bytes, cut: int, data: st.DataObject) -> None:
    base = data.draw(st.sampled_from([encode_request(r) for r in REQUESTS]))
    cut = min(cut, len(base))
    _decode_or_protocol_error(base[:cut] + noise + base[cut + len(noise) :])


# --- the leader's clock command -------------------------------------------------------


@pytest.mark.parametrize("unix_ms", [0, 1, 1_700_000_000_123, 2**64 - 1])
@pytest.mark.parametrize("ttl_ms", [1, 1000, 3_600_000, 2**64 - 1])
def test_clock_command_round_trip(unix_ms: int, ttl_ms: int) -> None:
    command = encode_clock(unix_ms, ttl_ms)
    assert len(command) == 17 and command[:1] == b"\xc1"
    assert command[1:9] == unix_ms.to_bytes(8, "big")  # big-endian ms, then the TTL
    assert command[9:] == ttl_ms.to_bytes(8, "big")
    assert decode_clock(command) == (unix_ms, ttl_ms)


def test_the_old_clock_command_leaves_the_ttl_unchanged() -> None:
    """0xc1 + 8 bytes (logs written before the TTL was in the clock command)."""
    assert decode_clock(b"\xc1" + (1_700_000_000_123).to_bytes(8, "big")) == (
        1_700_000_000_123,
        None,
    )


@pytest.mark.parametrize(
    ("unix_ms", "ttl_ms"), [(0, 0), (1, -1), (-1, 1000), (2**64, 1000), (0, 2**64)]
)
def test_encode_clock_refuses_out_of_range(unix_ms: int, ttl_ms: int) -> None:
    with pytest.raises(ValueError):
        encode_clock(unix_ms, ttl_ms)


@pytest.mark.parametrize(
    "command",
    [
        b"",
        b"\xc1",
        b"\xc1" + bytes(7),
        b"\xc1" + bytes(9),
        b"\xc1" + bytes(15),
        b"\xc1" + bytes(17),
        b"\xc1" + bytes(16),  # a TTL of 0 ms
        b"\xc1" + bytes(8) + bytes(7) + b"\x00",  # the same, spelled out
        b"\xc0" + bytes(8),
        b"\xc0" + bytes(7) + b"\x01" + bytes(8),
        bytearray(9),
        bytearray(b"\xc1" + bytes(15) + b"\x01"),
    ],
)
def test_anything_else_is_not_a_clock_command(command: bytes) -> None:
    assert decode_clock(command) is None
    assert decode_clock(encode_request(REQUESTS[0])) is None


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(1, 2**64 - 1))
def test_a_client_cannot_send_a_clock_command(unix_ms: int, ttl_ms: int) -> None:
    for frame in (encode_clock(unix_ms, ttl_ms), encode_clock(unix_ms, ttl_ms)[:9]):
        resp = parse_request(frame)
        assert isinstance(resp, Response) and resp.status is Status.BAD_REQUEST
        assert "undecodable" in resp.error


@given(st.binary(min_size=1, max_size=64))
def test_no_decodable_frame_is_a_clock_command(frame: bytes) -> None:
    if isinstance(parse_request(frame), Request):
        assert decode_clock(frame) is None


def test_snapshot_requests_need_no_session_and_are_bounded() -> None:
    assert parse_request(encode_request(Request(Op.SNAPSHOT))) == Request(Op.SNAPSHOT)
    long_id = encode_request(Request(Op.SNAPSHOT, value=b"x" * 65))
    assert parse_request(long_id).status is Status.BAD_REQUEST
    long_cursor = encode_request(Request(Op.SNAPSHOT, key=b"k" * 5000, value=b"x"))
    assert parse_request(long_cursor).status is Status.TOO_LARGE


# --- parse_request's hot path -----------------------------------------------------------

_EDGE_FIELDS = (
    [None, True, False, -1, 0, 1, 2, 3, 4, 5, 6, 17, 1.0, 2**63, "s", [1], {}]
    + [b"", b"k", CID, CID[:15], CID + b"x", b"k" * MAX_KEY_BYTES]
    + [b"k" * (MAX_KEY_BYTES + 1), b"v" * MAX_VALUE_BYTES, b"v" * (MAX_VALUE_BYTES + 1)]
)
_FIELD_CHOICES = st.one_of(
    st.sampled_from(_EDGE_FIELDS),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.binary(max_size=20),
)


def _plain_fields(op: Op) -> list[Any]:
    value = b"value" if op in (Op.PUT, Op.CAS) else None
    key = b"" if op is Op.VOUCH else b"key"
    return [PROTOCOL_VERSION, int(op), CID, 2, key, value, None, None, False]


def _assert_hot_path_agrees(frame: bytes) -> bool:
    """True if the hot path took the frame."""
    from kvstore.protocol import _parse_full, _parse_plain

    fast = _parse_plain(frame)
    full = _parse_full(frame)
    if fast is not None:
        assert isinstance(full, Request)
        assert fast == full
    assert parse_request(frame) == full
    return fast is not None


@pytest.mark.parametrize("op", [Op.PUT, Op.GET, Op.DELETE, Op.CAS, Op.STATUS, Op.VOUCH])
def test_the_hot_path_agrees_on_every_edge_in_every_field(op: Op) -> None:
    """Each field of the common frame in turn replaced by each edge value
    (types, bounds, limits), and the frame cut and grown by one field."""
    taken = 0
    for index in range(9):
        for edge in _EDGE_FIELDS:
            fields = _plain_fields(op)
            fields[index] = edge
            taken += _assert_hot_path_agrees(msgpack.packb(fields, use_bin_type=True))
    for fields in (_plain_fields(op)[:8], [*_plain_fields(op), None]):
        assert not _assert_hot_path_agrees(msgpack.packb(fields, use_bin_type=True))
    plain = msgpack.packb(_plain_fields(op), use_bin_type=True)
    assert _assert_hot_path_agrees(plain) == (op in (Op.PUT, Op.GET, Op.DELETE, Op.VOUCH))
    assert taken > 0  # e.g. an edge value that is the op's own


@st.composite
def _near_plain_frames(draw: st.DrawFn) -> bytes:
    """Frames of PUT, GET, DELETE (and others) in the common 9-field shape,
    with any field possibly swapped for something else, or cut or grown."""
    op = draw(st.sampled_from([Op.PUT, Op.GET, Op.DELETE, Op.CAS, Op.STATUS, Op.VOUCH]))
    fields: list[Any] = [
        PROTOCOL_VERSION,
        int(op),
        CID,
        draw(st.integers(1, 5)),
        b"" if op is Op.VOUCH else b"key",
        b"value" if op in (Op.PUT, Op.CAS) else None,
        None,
        None,
        draw(st.booleans()),
    ]
    for _ in range(draw(st.integers(0, 2))):
        fields[draw(st.integers(0, 8))] = draw(_FIELD_CHOICES)
    shape = draw(st.sampled_from(["same", "same", "same", "short", "long"]))
    if shape == "short":
        fields.pop()
    elif shape == "long":
        fields.append(draw(_FIELD_CHOICES))
    return msgpack.packb(fields, use_bin_type=True)


@given(_near_plain_frames())
@settings(max_examples=3000, deadline=None)
def test_the_hot_path_decides_as_the_full_path(frame: bytes) -> None:
    """`parse_request` skips the general checks for the common PUT, GET and
    DELETE frame; whatever it accepts, the full path builds the same
    Request from (and it accepts the usual frames)."""
    _assert_hot_path_agrees(frame)


def test_the_hot_path_takes_the_usual_frames() -> None:
    from kvstore.protocol import _parse_plain

    for op, value in ((Op.PUT, b"v"), (Op.GET, None), (Op.DELETE, None)):
        req = Request(op, CID, 3, b"key", value)
        assert _parse_plain(encode_request(req)) == req
    vouched = Request(Op.GET, CID, 3, b"key", expected_version=2)
    assert _parse_plain(encode_request(vouched)) == vouched
    cas = Request(Op.CAS, CID, 3, b"key", b"v", expected_version=1)
    assert _parse_plain(encode_request(cas)) is None
    for target in (1, None):
        vouch = Request(Op.VOUCH, CID, 3, expected_version=target)
        assert _parse_plain(encode_request(vouch)) == vouch
