"""The workload: which operation on which key, for every closed-loop client.

The same `WorkloadSpec` drives both systems, and with the same seed each
logical client draws the same sequence of (operation, key) pairs whichever
system it talks to.

Keys are `k` + a zero-padded decimal index in [0, keys). The distribution is
uniform or zipfian. Zipfian as in YCSB: rank r (0 = the hottest) has
probability proportional to 1 / (r+1)^theta, theta 0.99 by default, drawn
exactly by inverse CDF (YCSB's O(1) approximation of Gray et al. is off by
~20 % for ranks 2..10; a binary search in a cached table is exact and cheap
enough). With `scramble` the ranks are
spread over the key space by a fixed hash (YCSB's "scrambled zipfian"), so
the hot keys are not neighbours; the skew is the same.

Values: every write carries the same `value_size` bytes (random, generated
once from the seed, so that LevelDB's compression cannot shrink them), or
with `fresh_values` every PUT fresh random bytes (os.urandom): a log of many
writes of one value would still compress. A CAS
expects the value to be that payload and sets it to the same payload: on a
preloaded key it succeeds, exercising the read-compare-write path through
the log; the harness reports how many failed.
"""

from __future__ import annotations

import hashlib
import random
from array import array
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from itertools import accumulate
from typing import Any

PUT, GET, CAS = "put", "get", "cas"
OPS = (PUT, GET, CAS)
# "sequential" is the preload: client i of n puts keys i, i+n, i+2n, ... once,
# then its stream ends (next() returns None).
DISTRIBUTIONS = ("uniform", "zipfian", "sequential")


@dataclass(frozen=True)
class WorkloadSpec:
    """What the closed-loop clients do. `mix` maps op -> weight."""

    mix: dict[str, float] = field(default_factory=lambda: {PUT: 1.0})
    keys: int = 1000
    distribution: str = "uniform"  # "zipfian", or "sequential" (preload)
    theta: float = 0.99
    value_size: int = 100
    seed: int = 1
    key_offset: int = 0  # keys are k(offset) .. k(offset + keys - 1)
    # every PUT carries fresh random bytes instead of the one payload (the
    # footprint scenarios: otherwise LevelDB's compression squeezes a log of
    # identical values, and the disk figures would flatter a log-keeping store)
    fresh_values: bool = False

    def __post_init__(self) -> None:
        if self.keys < 1:
            raise ValueError("keys must be >= 1")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}")
        if not 0 < self.theta < 1:
            raise ValueError("theta must be in (0, 1)")
        if self.value_size < 0:
            raise ValueError("value_size must be >= 0")
        bad = set(self.mix) - set(OPS)
        if bad:
            raise ValueError(f"unknown op(s) in the mix: {', '.join(sorted(bad))}")
        if any(w < 0 for w in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError("the mix needs non-negative weights with a positive sum")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        total = sum(self.mix.values())
        parts = [f"{op} {w / total:.0%}" for op, w in self.mix.items() if w > 0]
        return ", ".join(parts)


def parse_mix(text: str) -> dict[str, float]:
    """`put=50,get=45,cas=5` (or `put:0.5 get:0.5`, or just `put`) -> weights."""
    mix: dict[str, float] = {}
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        name, sep, weight = part.replace(":", "=").partition("=")
        name = name.strip().lower()
        if name not in OPS:
            raise ValueError(f"unknown op {name!r} in mix {text!r} (use put, get, cas)")
        mix[name] = float(weight) if sep else 1.0
    if not mix or sum(mix.values()) <= 0:
        raise ValueError(f"mix {text!r} has no positive weight")
    return mix


def key_name(index: int) -> bytes:
    return b"k%010d" % index


@lru_cache(maxsize=16)
def zeta(n: int, theta: float) -> float:
    """sum_{i=1..n} 1/i^theta."""
    return float(sum((i + 1) ** -theta for i in range(n)))


@lru_cache(maxsize=4)
def _zipf_cdf(n: int, theta: float) -> array:
    """Cumulative probabilities of ranks 0..n-1 (8 bytes a key; one copy per
    (n, theta) per process)."""
    total = zeta(n, theta)
    cdf = array("d", accumulate((i + 1) ** -theta / total for i in range(n)))
    cdf[-1] = 1.0
    return cdf


class Zipfian:
    """Zipfian ranks 0..n-1 (0 is the most popular): P(r) is proportional to
    1/(r+1)^theta. Exact inverse-CDF sampling (a binary search in the
    cumulative table), O(log n) a draw after an O(n) set-up per process."""

    def __init__(self, n: int, theta: float = 0.99, rng: random.Random | None = None) -> None:
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self.theta = theta
        self.rng = rng or random.Random()
        self._cdf = _zipf_cdf(n, theta)

    def next(self) -> int:
        return min(bisect_right(self._cdf, self.rng.random()), self.n - 1)


def _scramble(rank: int, n: int) -> int:
    digest = hashlib.blake2b(rank.to_bytes(8, "little"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n


class KeyChooser:
    """Draws key indexes for one client."""

    def __init__(self, spec: WorkloadSpec, rng: random.Random, scramble: bool = True) -> None:
        self.n = spec.keys
        self.offset = spec.key_offset
        self.rng = rng
        self.zipf = Zipfian(spec.keys, spec.theta, rng) if spec.distribution == "zipfian" else None
        self.scramble = scramble and self.zipf is not None
        self._cache: dict[int, int] = {}

    def next_index(self) -> int:
        if self.zipf is None:
            return self.offset + self.rng.randrange(self.n)
        rank = self.zipf.next()
        if self.scramble:
            idx = self._cache.get(rank)
            if idx is None:
                idx = self._cache[rank] = _scramble(rank, self.n)
            rank = idx
        return self.offset + rank


class OpStream:
    """The (op, key) sequence of one logical client: deterministic given the
    spec's seed and the client's number. With the "sequential" distribution
    client `index` of `clients` visits its share of the keys once, then
    next() returns None."""

    def __init__(
        self, spec: WorkloadSpec, client_no: int, index: int = 0, clients: int = 1
    ) -> None:
        self.rng = random.Random(spec.seed * 1_000_003 + client_no)
        self.keys = KeyChooser(spec, self.rng) if spec.distribution != "sequential" else None
        self._next_seq = spec.key_offset + index
        self._stride = clients
        self._seq_end = spec.key_offset + spec.keys
        total = sum(spec.mix.values())
        self._ops: list[str] = []
        self._cum: list[float] = []
        acc = 0.0
        for op in OPS:
            w = spec.mix.get(op, 0.0)
            if w > 0:
                acc += w / total
                self._ops.append(op)
                self._cum.append(acc)
        self._cum[-1] = 1.0
        self._single = self._ops[0] if len(self._ops) == 1 else None

    def next(self) -> tuple[str, bytes] | None:
        if self.keys is None:
            if self._next_seq >= self._seq_end:
                return None
            idx = self._next_seq
            self._next_seq += self._stride
            return PUT, key_name(idx)
        if self._single is not None:
            op = self._single
        else:
            u = self.rng.random()
            for op, c in zip(self._ops, self._cum, strict=False):  # noqa: B007 - at most 3 entries
                if u < c:
                    break
        return op, key_name(self.keys.next_index())


def payload(value_size: int, seed: int = 1) -> bytes:
    """The value every write of a run carries (random bytes, fixed by seed)."""
    return random.Random(seed ^ 0x5EED).randbytes(value_size)
