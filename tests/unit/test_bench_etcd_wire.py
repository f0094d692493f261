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


def test_range_over_a_span_with_a_limit():
    f = pb.parse_fields(pb.encode_range(b"a", range_end=b"b", limit=5))
    assert f == {1: [b"a"], 2: [b"b"], 3: [5]}
    assert pb.parse_fields(pb.encode_range(b"a", range_end=b"b")) == {1: [b"a"], 2: [b"b"]}


def test_txn_compares_every_mod_revision_and_puts_every_key():
    txn = pb.parse_fields(pb.encode_txn_mod([b"a", b"b"], [7, 300], b"v"))
    compares = [pb.parse_fields(c) for c in txn[1]]
    # target MOD (2), result EQUAL (0, the default: not written), mod_revision in field 6
    assert compares == [{2: [2], 3: [b"a"], 6: [7]}, {2: [2], 3: [b"b"], 6: [300]}]
    puts = [pb.parse_fields(pb.parse_fields(op)[2][0]) for op in txn[2]]
    assert puts == [{1: [b"a"], 2: [b"v"]}, {1: [b"b"], 2: [b"v"]}]
    assert 3 not in txn  # no failure branch


def test_watch_create_request():
    req = pb.parse_fields(pb.encode_watch_create(b"p/", b"p0"))
    assert pb.parse_fields(req[1][0]) == {1: [b"p/"], 2: [b"p0"]}
    req = pb.parse_fields(pb.encode_watch_create(b"k", start_revision=42))
    assert pb.parse_fields(req[1][0]) == {1: [b"k"], 3: [42]}


def _kv(key: bytes, mod: int, value: bytes = b"x" * 100) -> bytes:
    return (
        pb._field_bytes(1, key)
        + pb._field_varint(2, 1)
        + pb._field_varint(3, mod)
        + pb._field_varint(4, 1)
        + pb._field_bytes(5, value)
    )


def test_watch_responses():
    header = pb._field_bytes(1, pb._field_varint(3, 9))
    created = pb.decode_watch_response(header + pb._field_varint(3, 1))
    assert created["created"] and not created["canceled"] and created["events"] == []
    put = pb._field_bytes(2, _kv(b"p/1", 10))  # type PUT is 0: not written
    delete = pb._field_varint(1, 1) + pb._field_bytes(2, _kv(b"p/2", 11, b""))
    resp = header + pb._field_bytes(11, put) + pb._field_bytes(11, delete)
    assert pb.decode_watch_response(resp)["events"] == [(0, b"p/1", 10), (1, b"p/2", 11)]
    gone = pb.decode_watch_response(
        header + pb._field_varint(4, 1) + pb._field_bytes(6, b"compacted")
    )
    assert gone["canceled"] and gone["cancel_reason"] == "compacted"


def test_a_range_reply_is_counted_without_decoding_its_keys():
    header = pb._field_bytes(1, pb._field_varint(3, 5) + pb._field_varint(4, 2))
    kvs = b"".join(pb._field_bytes(2, _kv(b"k%04d" % i, 3 + i)) for i in range(300))
    assert pb.scan_range_reply(header + kvs + pb._field_varint(4, 300)) == (300, False, 300)
    assert pb.scan_range_reply(header + kvs[:0] + pb._field_varint(3, 1)) == (0, True, 0)
    assert pb.decode_mod_revision(header + kvs) == 3
    assert pb.decode_mod_revision(header) is None
