"""The benchmark driver's shortcuts agree with kvstore.protocol."""

from __future__ import annotations

import pytest

from benchmarks.driver import fast_encode, fast_status
from kvstore.protocol import Op, Request, Response, Status, encode_request, encode_response


@pytest.mark.parametrize("value", [b"", b"v" * 100, bytes(range(256)) * 4096])
def test_fast_encode_is_encode_request(value):
    cid, key = b"c" * 16, b"k0000000042"
    assert fast_encode("put", cid, 7, key, value) == encode_request(
        Request(Op.PUT, cid, 7, key, value)
    )
    assert fast_encode("get", cid, 8, key, value) == encode_request(Request(Op.GET, cid, 8, key))
    assert fast_encode("cas", cid, 2**40, key, value) == encode_request(
        Request(Op.CAS, cid, 2**40, key, value, expected_value=value)
    )


def test_fast_status_reads_the_status():
    for st in Status:
        frame = encode_response(Response(st, value=b"x", leader=2))
        assert fast_status(frame) == st
    assert fast_status(b"\xc1garbage") == -1
    assert fast_status(b"\x93\x01\x02\x03") == -1
