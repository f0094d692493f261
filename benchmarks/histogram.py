"""A small mergeable HDR-style latency histogram.

Values are non-negative integers (the harness records nanoseconds). Buckets
are log-linear, as in HdrHistogram with 3 significant decimal digits:

- values below 2048 are counted exactly (one bucket per value);
- above that, each power-of-two range [2^k, 2^(k+1)) is split into 1024
  equal sub-buckets, so a bucket is never wider than 1/1024 of its values
  (a relative error under 0.1 %).

A percentile is reported as the highest value equivalent to its bucket
(never below the exact answer, at most 0.1 % above it), capped at the
largest value recorded. Counts are kept sparse (a dict), so a histogram of a
run is a few KiB of JSON and two histograms merge by adding counts: the
worker processes of a run each keep one and the harness adds them up.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

SUB_BUCKET_BITS = 11
SUB_BUCKET_COUNT = 1 << SUB_BUCKET_BITS  # 2048: values below are exact
SUB_BUCKET_HALF = SUB_BUCKET_COUNT >> 1  # 1024 sub-buckets per power of two


def bucket_index(value: int) -> int:
    """The bucket of a value (>= 0)."""
    if value < SUB_BUCKET_COUNT:
        return value
    shift = value.bit_length() - SUB_BUCKET_BITS
    return SUB_BUCKET_COUNT + (shift - 1) * SUB_BUCKET_HALF + (value >> shift) - SUB_BUCKET_HALF


def bucket_range(index: int) -> tuple[int, int]:
    """The lowest and highest values that fall into bucket `index`."""
    if index < SUB_BUCKET_COUNT:
        return index, index
    shift, rest = divmod(index - SUB_BUCKET_COUNT, SUB_BUCKET_HALF)
    shift += 1
    low = (rest + SUB_BUCKET_HALF) << shift
    return low, low + (1 << shift) - 1


class Histogram:
    """Counts of integer values in log-linear buckets. Not thread-safe."""

    __slots__ = ("counts", "total", "min", "max", "sum")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0
        self.min: int | None = None
        self.max: int | None = None
        self.sum = 0

    # -- recording ---------------------------------------------------------
    def record(self, value: int, count: int = 1) -> None:
        if value < 0:
            raise ValueError("a histogram value must be >= 0")
        if value < SUB_BUCKET_COUNT:
            idx = value
        else:
            shift = value.bit_length() - SUB_BUCKET_BITS
            idx = (
                SUB_BUCKET_COUNT
                + (shift - 1) * SUB_BUCKET_HALF
                + (value >> shift)
                - SUB_BUCKET_HALF
            )
        counts = self.counts
        counts[idx] = counts.get(idx, 0) + count
        self.total += count
        self.sum += value * count
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def record_many(self, values: Iterable[int]) -> None:
        for v in values:
            self.record(v)

    def merge(self, other: Histogram) -> Histogram:
        """Adds `other`'s counts into this histogram; returns self."""
        counts = self.counts
        for idx, n in other.counts.items():
            counts[idx] = counts.get(idx, 0) + n
        self.total += other.total
        self.sum += other.sum
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min
        if other.max is not None and (self.max is None or other.max > self.max):
            self.max = other.max
        return self

    # -- queries -----------------------------------------------------------
    def __len__(self) -> int:
        return self.total

    @property
    def mean(self) -> float:
        return self.sum / self.total if self.total else 0.0

    def percentile(self, q: float) -> int:
        """The value at percentile q (0..100): the smallest bucket whose
        cumulative count reaches ceil(q/100 * total), reported as that
        bucket's highest equivalent value, capped at the recorded max.
        q=0 gives the min, q=100 the max. 0 for an empty histogram."""
        if not self.total:
            return 0
        if q <= 0:
            return self.min or 0
        if q >= 100:
            return self.max or 0
        rank = max(1, math.ceil(q / 100.0 * self.total))
        seen = 0
        for idx in sorted(self.counts):
            seen += self.counts[idx]
            if seen >= rank:
                high = bucket_range(idx)[1]
                return min(high, self.max if self.max is not None else high)
        return self.max or 0

    def percentiles(self, qs: Iterable[float]) -> dict[float, int]:
        """Several percentiles in one pass over the buckets."""
        qs = sorted(qs)
        out: dict[float, int] = {}
        if not self.total:
            return {q: 0 for q in qs}
        ranks = [(q, max(1, math.ceil(q / 100.0 * self.total))) for q in qs]
        it = iter(ranks)
        pending = next(it, None)
        seen = 0
        for idx in sorted(self.counts):
            seen += self.counts[idx]
            while pending is not None and (seen >= pending[1] or pending[0] >= 100):
                q = pending[0]
                if q <= 0:
                    out[q] = self.min or 0
                elif q >= 100:
                    out[q] = self.max or 0
                else:
                    out[q] = min(bucket_range(idx)[1], self.max or 0)
                pending = next(it, None)
            if pending is None:
                break
        while pending is not None:  # only q >= 100 can be left
            out[pending[0]] = self.max or 0
            pending = next(it, None)
        return out

    def cdf(self) -> Iterator[tuple[int, float]]:
        """(value, fraction of values <= value) for every non-empty bucket,
        in increasing order; the value is the bucket's highest equivalent
        value (capped at max)."""
        seen = 0
        for idx in sorted(self.counts):
            seen += self.counts[idx]
            yield min(bucket_range(idx)[1], self.max or 0), seen / self.total

    def summary(self, scale: float = 1e-6) -> dict[str, float]:
        """count, mean, min, p50, p90, p99, p99.9, max; values multiplied by
        `scale` (default: nanoseconds -> milliseconds)."""
        p = self.percentiles((50, 90, 99, 99.9))
        return {
            "count": self.total,
            "mean": self.mean * scale,
            "min": (self.min or 0) * scale,
            "p50": p[50] * scale,
            "p90": p[90] * scale,
            "p99": p[99] * scale,
            "p99.9": p[99.9] * scale,
            "max": (self.max or 0) * scale,
        }

    # -- serialization -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "min": self.min,
            "max": self.max,
            "sum": self.sum,
            "buckets": [[idx, n] for idx, n in sorted(self.counts.items())],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        h = cls()
        h.counts = {int(idx): int(n) for idx, n in data["buckets"]}
        h.total = int(data["total"])
        h.min = data["min"]
        h.max = data["max"]
        h.sum = int(data["sum"])
        return h

    @classmethod
    def merged(cls, hists: Iterable[Histogram]) -> Histogram:
        out = cls()
        for h in hists:
            out.merge(h)
        return out
