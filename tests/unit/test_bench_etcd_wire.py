"""The hand-written protobuf encoding of the etcd client (benchmarks/etcd.py)."""

from __future__ import annotations

from benchmarks import etcd as pb


def test_varints_round_trip():
    for n in (0, 1, 127, 128, 300, 2**31, 2**63 - 1):
        enc = pb._varint(n)
        assert pb._read_varint(enc, 0) == (n, len(enc))
    # negative int64s are ten bytes, two's complement
    assert len(pb._varint(-1)) == 10


def test_put_and_range_requests():
    assert pb.encode_put(b"k", b"v") == b"\x0a\x01k\x12\x01v"
    f = pb.parse_fields(pb.encode_put(b"key", b"x" * 300))
    assert f[1] == [b"key"] and f[2] == [b"x" * 300]
    assert pb.parse_fields(pb.encode_range(b"k")) == {1: [b"k"]}
    assert pb.parse_fields(pb.encode_range(b"k", serializable=True)) == {1: [b"k"], 7: [1]}


def test_cas_is_a_txn_comparing_the_value():
    txn = pb.parse_fields(pb.encode_cas(b"k", b"old", b"new"))
    compare = pb.parse_fields(txn[1][0])
    assert compare == {1: [0], 2: [3], 3: [b"k"], 7: [b"old"]}
    (op,) = txn[2]
    put = pb.parse_fields(pb.parse_fields(op)[2][0])
    assert put == {1: [b"k"], 2: [b"new"]}


def test_decoding_responses():
    header = pb._field_varint(1, 7) + pb._field_varint(2, 9) + pb._field_varint(3, 42)
    kv = pb._field_bytes(1, b"k") + pb._field_varint(3, 42) + pb._field_bytes(5, b"val")
    rng = pb._field_bytes(1, header) + pb._field_bytes(2, kv) + pb._field_varint(4, 1)
    assert pb.decode_range_value(rng) == b"val"
    assert pb.decode_range_value(pb._field_bytes(1, header)) is None
    assert pb.decode_header(header)["revision"] == 42
    assert pb.decode_txn_succeeded(pb._field_bytes(1, header) + pb._field_varint(2, 1))
    assert not pb.decode_txn_succeeded(pb._field_bytes(1, header))
    status = (
        pb._field_bytes(1, header)
        + pb._field_bytes(2, b"3.4.23")
        + pb._field_varint(4, 9)
        + pb._field_varint(5, 100)
        + pb._field_varint(7, 99)
    )
    st = pb.decode_status(status)
    assert st["version"] == "3.4.23" and st["leader"] == 9 and st["member_id"] == 9
    assert st["raft_index"] == 100 and st["raft_applied_index"] == 99
