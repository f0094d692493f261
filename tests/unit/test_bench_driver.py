"""The benchmark driver's shortcuts agree with kvstore.protocol, and it
refuses up front a workload the replicas would refuse."""

from __future__ import annotations

import pytest

from benchmarks.driver import check_workload, fast_encode, fast_status, fast_vouch
from benchmarks.workload import WorkloadSpec
from kvstore.limits import MAX_VALUE_BYTES
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
    vouched = Request(Op.GET, cid, 9, key, expected_version=9)
    assert fast_encode("get", cid, 9, key, value, vouched=True) == encode_request(vouched)
    assert fast_vouch(cid, 9, 2) == encode_request(Request(Op.VOUCH, cid, 9, expected_version=2))


def test_fast_status_reads_the_status():
    for st in Status:
        frame = encode_response(Response(st, value=b"x", leader=2))
        assert fast_status(frame) == st
    assert fast_status(b"\xc1garbage") == -1
    assert fast_status(b"\x93\x01\x02\x03") == -1


def test_check_workload_passes_the_largest_value():
    check_workload(WorkloadSpec(mix={"put": 1, "get": 1, "cas": 1}, value_size=MAX_VALUE_BYTES))


@pytest.mark.parametrize(
    "workload",
    [
        WorkloadSpec(mix={"put": 1}, value_size=MAX_VALUE_BYTES + 1),
        WorkloadSpec(mix={"get": 1, "cas": 1}, value_size=MAX_VALUE_BYTES + 1),
        WorkloadSpec(mix={"get": 1}, distribution="sequential", value_size=MAX_VALUE_BYTES + 1),
    ],
)
def test_check_workload_refuses_what_the_replicas_would(workload):
    with pytest.raises(ValueError, match=r"refuse every (put|cas).*TOO_LARGE.*value is"):
        check_workload(workload)


def test_check_workload_ignores_values_a_read_only_mix_never_sends():
    check_workload(WorkloadSpec(mix={"get": 1}, value_size=MAX_VALUE_BYTES + 1))
