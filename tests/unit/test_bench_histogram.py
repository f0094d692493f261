"""The benchmark harness's HDR-style histogram (benchmarks/histogram.py)."""

from __future__ import annotations

import math
import random

import pytest

from benchmarks.histogram import (
    SUB_BUCKET_COUNT,
    Histogram,
    bucket_index,
    bucket_range,
)


def exact_percentile(values: list[int], q: float) -> int:
    """The nearest-rank percentile: the smallest value with at least q% of
    the values at or below it."""
    s = sorted(values)
    if q <= 0:
        return s[0]
    rank = max(1, math.ceil(q / 100 * len(s)))
    return s[rank - 1]


def test_buckets_tile_the_integers_without_gaps():
    prev_high = -1
    for idx in range(0, 30 * 1024):
        low, high = bucket_range(idx)
        assert low == prev_high + 1
        assert bucket_index(low) == idx and bucket_index(high) == idx
        prev_high = high


@pytest.mark.parametrize("value", [0, 1, 2047, 2048, 2049, 4095, 4096, 10**6, 10**9, 2**40 + 12345])
def test_a_value_lies_in_its_bucket_and_the_bucket_is_narrow(value):
    low, high = bucket_range(bucket_index(value))
    assert low <= value <= high
    assert high - low <= max(0, value) / 1024  # 3 significant digits


def test_small_values_are_exact():
    h = Histogram()
    h.record_many(range(SUB_BUCKET_COUNT))
    for q in (1, 25, 50, 90, 99):
        assert h.percentile(q) == exact_percentile(list(range(SUB_BUCKET_COUNT)), q)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_match_the_exact_ones_within_a_tenth_of_a_percent(seed):
    rng = random.Random(seed)
    # latency-like data in nanoseconds: a lognormal body and a long tail
    values = [int(rng.lognormvariate(13.5, 0.6)) for _ in range(20_000)]
    values += [rng.randrange(10**7, 10**9) for _ in range(50)]
    h = Histogram()
    h.record_many(values)
    assert h.total == len(values)
    assert h.min == min(values) and h.max == max(values)
    assert h.mean == pytest.approx(sum(values) / len(values))
    for q in (0, 1, 10, 50, 90, 99, 99.9, 99.99, 100):
        exact = exact_percentile(values, q)
        got = h.percentile(q)
        assert exact <= got <= exact * 1.001 + 1, (q, exact, got)
    many = h.percentiles([50, 90, 99, 99.9, 100])
    for q, v in many.items():
        assert v == h.percentile(q)


def test_known_small_data():
    h = Histogram()
    h.record_many([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert h.percentile(50) == 5
    assert h.percentile(90) == 9
    assert h.percentile(99) == 10
    assert h.percentile(100) == 10
    s = h.summary(scale=1)
    assert s["count"] == 10 and s["p50"] == 5 and s["max"] == 10 and s["min"] == 1


def test_merge_equals_recording_everything_in_one():
    rng = random.Random(7)
    a_vals = [rng.randrange(1, 10**8) for _ in range(5000)]
    b_vals = [rng.randrange(10**5, 10**9) for _ in range(3000)]
    a, b, both = Histogram(), Histogram(), Histogram()
    a.record_many(a_vals)
    b.record_many(b_vals)
    both.record_many(a_vals + b_vals)
    merged = Histogram().merge(a).merge(b)
    assert merged.counts == both.counts
    assert (merged.total, merged.min, merged.max, merged.sum) == (
        both.total,
        both.min,
        both.max,
        both.sum,
    )
    for q in (50, 99, 99.9):
        assert merged.percentile(q) == both.percentile(q)
    assert Histogram.merged([a, b]).counts == both.counts


def test_serialization_round_trip_and_empty_histogram():
    h = Histogram()
    assert h.percentile(50) == 0 and h.summary()["count"] == 0 and list(h.cdf()) == []
    h.record_many([5, 50_000, 5_000_000, 5_000_000])
    h2 = Histogram.from_dict(h.to_dict())
    assert h2.counts == h.counts and h2.max == h.max and h2.percentile(75) == h.percentile(75)
    Histogram().merge(Histogram())  # empty merge is fine


def test_cdf_is_monotonic_and_ends_at_one():
    h = Histogram()
    h.record_many(random.Random(3).randrange(10**4, 10**7) for _ in range(1000))
    pts = list(h.cdf())
    assert pts[-1][1] == 1.0 and pts[-1][0] == h.max
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in zip(pts, pts[1:], strict=False))


def test_negative_values_are_refused():
    with pytest.raises(ValueError):
        Histogram().record(-1)
