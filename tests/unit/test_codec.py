"""The replica codec: every message round-trips; anything malformed raises
CodecError and nothing else."""

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.codec import CodecError, decode, encode
from replica.messages import (
    Ballot,
    CatchupReply,
    CatchupRequest,
    Effects,
    Heartbeat,
    HeartbeatAck,
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
    Vote,
)

B = Ballot(3, 2)
SAMPLES = [
    Phase1a(1, B, 7),
    Phase1b(2, B, 7, {7: Vote(Ballot(1, 1), (b"a", b"b")), 9: Vote(B, ())}, 5),
    Phase2a(1, B, 8, (b"x" * 100,), 5),
    Phase2b(3, B, 8),
    Nack(2, Ballot(1, 1), B),
    Heartbeat(1, B, 10, 42),
    HeartbeatAck(2, B, 42, 9),
    CatchupRequest(3, B, 0),
    CatchupReply(1, B, {0: (b"a",), 1: ()}, 2, 1),
    PreVote(2, 4, 11),
    PreVoteReply(3, 4, True),
    SnapshotRequest(2, b"", None),
    SnapshotRequest(2, b"\x00" * 8, b"dkey"),
    SnapshotChunk(1, b"\x00" * 8, 9, 4, [(b"dk", b"rec"), (b"s" * 17, b"")], b"s" * 17),
    SnapshotChunk(1, b"\x00" * 8, 9, 4, [], None),
    SnapshotChunk(1, b"\x00" * 8, 9, 4, [(b"dk", b"rec")], None, b"dj"),
    TimeoutNow(1, Ballot(4, 1)),
    Effects(1, 10, 12, b"\x9b\x01"),
    ReadVouch(2, Ballot(4, 1), (b"c" * 24, b"d" * 24)),
    ReadVouch(2, Ballot(4, 1), ()),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    assert decode(encode(msg)) == msg


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\x01",
        b"\xff" + msgpack.packb([1, [1, 1], 0]),  # unknown tag
        b"\x01" + b"\xc1",  # msgpack's never-used byte
        b"\x01" + msgpack.packb([1, [1, 1]]),  # too few fields
        b"\x01" + msgpack.packb([1, [1, 1], 0, 0]),  # too many
        b"\x01" + msgpack.packb({"a": 1}),  # not an array
        b"\x01" + msgpack.packb([1, [1], 0]),  # ballot of one element
        b"\x01" + msgpack.packb([1, [1, 1], -1]),  # negative slot
        b"\x01" + msgpack.packb([1, [1, 1], True]),  # bool is not an int
        b"\x01" + msgpack.packb([1, [1, 1], 1.5]),
        b"\x03" + msgpack.packb([1, [1, 1], 0, ["str"], 0]),  # value of str, not bytes
        b"\x03" + msgpack.packb([1, [1, 1], 0, b"x", 0]),  # value not an array
        b"\x02" + msgpack.packb([1, [1, 1], 0, [[0, [1, 1]]]]),  # vote of 2 fields
        b"\x0b" + msgpack.packb([1, 1, 1]),  # bool field given an int
        b"\x01" + msgpack.packb([1, [1, 1], 2**64 - 1]),  # out of range
        b"\x10" + msgpack.packb([1, [1, 1], [b"short"]]),  # a token not of 24 bytes
        b"\x10" + msgpack.packb([1, [1, 1], ["c" * 24]]),  # a token of str
        b"\x10" + msgpack.packb([1, [1, 1], b"c" * 24]),  # tokens not an array
        b"\x10" + msgpack.packb([1, [1, 1], [b"c" * 24] * 4097]),  # too many tokens
    ],
)
def test_malformed_frames_raise_codec_error(frame):
    with pytest.raises(CodecError):
        decode(frame)


def test_non_bytes_raises_codec_error():
    with pytest.raises(CodecError):
        decode(None)  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_raise_anything_but_codec_error(frame):
    with contextlib.suppress(CodecError):
        decode(frame)


_leaf = st.one_of(
    st.integers(-5, 2**64 - 1),
    st.binary(max_size=4),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=False),
)
_tree = st.recursive(_leaf, lambda kids: st.lists(kids, max_size=4), max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 12), st.lists(_tree, max_size=5))
def test_well_formed_msgpack_of_wrong_shape_is_rejected_cleanly(tag, body):
    try:
        msg = decode(bytes((tag,)) + msgpack.packb(body, use_bin_type=True))
    except CodecError:
        return
    assert decode(encode(msg)) == msg  # whatever decodes is a real message
