"""The benchmark workload generator (benchmarks/workload.py)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from benchmarks.workload import (
    OpStream,
    WorkloadSpec,
    Zipfian,
    key_name,
    parse_mix,
    payload,
    zeta,
)


def test_zipfian_rank_frequencies_follow_the_power_law():
    n, theta, draws = 1000, 0.99, 200_000
    z = Zipfian(n, theta, random.Random(1))
    counts = Counter(z.next() for _ in range(draws))
    assert all(0 <= r < n for r in counts)
    zn = zeta(n, theta)
    for rank in (0, 1, 2, 9):
        expected = draws / (rank + 1) ** theta / zn
        assert counts[rank] == pytest.approx(expected, rel=0.1), rank
    # skew: the top 1% of the keys get far more than 1% of the requests
    top = sum(counts[r] for r in range(n // 100))
    assert top / draws > 0.35


def test_zipfian_is_skewed_and_uniform_is_not():
    def hottest_share(dist: str) -> float:
        spec = WorkloadSpec(keys=1000, distribution=dist, seed=3)
        s = OpStream(spec, 0)
        keys = Counter(s.next()[1] for _ in range(50_000))
        return keys.most_common(1)[0][1] / 50_000

    assert hottest_share("zipfian") > 0.1  # 1/zeta(1000, .99) is about 0.13
    assert hottest_share("uniform") < 0.005


def test_zipfian_small_n_and_scrambling_keeps_keys_in_range():
    for n in (1, 2, 3):
        z = Zipfian(n, 0.99, random.Random(2))
        assert {z.next() for _ in range(2000)} <= set(range(n))
    spec = WorkloadSpec(keys=50, distribution="zipfian", key_offset=100)
    s = OpStream(spec, 5)
    for _ in range(1000):
        _, key = s.next()
        assert key_name(100) <= key <= key_name(149)


def test_mix_weights_are_respected():
    spec = WorkloadSpec(mix={"put": 50, "get": 45, "cas": 5}, keys=10)
    s = OpStream(spec, 1)
    ops = Counter(s.next()[0] for _ in range(40_000))
    assert ops["put"] / 40_000 == pytest.approx(0.50, abs=0.02)
    assert ops["get"] / 40_000 == pytest.approx(0.45, abs=0.02)
    assert ops["cas"] / 40_000 == pytest.approx(0.05, abs=0.01)


def test_streams_are_deterministic_per_seed_and_client():
    spec = WorkloadSpec(mix={"put": 1, "get": 1}, keys=100, distribution="zipfian", seed=9)
    a = [OpStream(spec, 3).next() for _ in range(1)]
    s1, s2, s3 = OpStream(spec, 3), OpStream(spec, 3), OpStream(spec, 4)
    seq1 = [s1.next() for _ in range(100)]
    assert seq1 == [s2.next() for _ in range(100)]
    assert seq1 != [s3.next() for _ in range(100)]
    assert a[0] == seq1[0]


def test_sequential_preload_visits_every_key_once():
    spec = WorkloadSpec(keys=103, key_offset=1000, distribution="sequential")
    seen = []
    for i in range(4):
        s = OpStream(spec, 10 + i, index=i, clients=4)
        while (nxt := s.next()) is not None:
            assert nxt[0] == "put"
            seen.append(nxt[1])
    assert sorted(seen) == [key_name(i) for i in range(1000, 1103)]


def test_parse_mix_and_validation():
    assert parse_mix("put=50,get=45,cas=5") == {"put": 50, "get": 45, "cas": 5}
    assert parse_mix("get") == {"get": 1.0}
    assert parse_mix("put:1 get:3") == {"put": 1.0, "get": 3.0}
    with pytest.raises(ValueError):
        parse_mix("delete=1")
    with pytest.raises(ValueError):
        parse_mix("put=0")
    with pytest.raises(ValueError):
        WorkloadSpec(distribution="pareto")
    with pytest.raises(ValueError):
        WorkloadSpec(keys=0)
    assert WorkloadSpec(mix={"put": 3, "get": 1}).label == "put 75%, get 25%"


def test_payload_is_fixed_by_seed_and_sized():
    assert len(payload(100)) == 100 and payload(100, 1) == payload(100, 1)
    assert payload(100, 1) != payload(100, 2)
    assert len(payload(1024 * 1024)) == 1024 * 1024
