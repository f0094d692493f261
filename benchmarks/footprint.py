"""Memory and disk footprint of a cluster over a long overwrite workload.

The `footprint` scenario (benchmarks/scenarios.py) overwrites a fixed set of
keys many times and asks: does each replica stay bounded by its live data?
This module is its measuring side, kept free of clusters and sockets so
that it can be unit-tested:

- `rss_bytes(pid)`: the resident set of a process, VmRSS in
  /proc/PID/status (`parse_vmrss`);
- `dir_bytes(path)`: the sum of the sizes (st_size) of the regular files
  under a directory; `dir_alloc_bytes` the blocks they occupy (a
  preallocated etcd WAL segment is 64 MB of size either way; sparse files
  would differ);
- `FootprintSampler`: a sample of every replica's RSS and data-directory
  size every `interval` seconds and at each `mark` writes, fed from the
  harness's progress callback; its series is columnar (one list per
  figure) so that the JSON keeps each on one line;
- `summarize`: the figures of the report (RSS at the first mark and at the
  end, the growth between them, the data directory's maximum and end, and
  their ratio to the live data);
- `mark_interval`, `live_bytes`: the arithmetic of the schedule and the
  live-data estimate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
KEY_BYTES = 11  # benchmarks.workload.key_name: b"k%010d"
DEFAULT_MARK = 100_000

_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}


class BudgetExceeded(Exception):
    """Raised from the progress callback when the write phase ran out of time
    (it stops the run; the scenario reports how far it got)."""


def parse_vmrss(text: str) -> int | None:
    """Bytes of `VmRSS:` in the text of /proc/PID/status (None if absent:
    a kernel thread, or a zombie)."""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                return None
            unit = parts[2].lower() if len(parts) > 2 else "kb"
            return int(parts[1]) * _UNITS.get(unit, 1024)
    return None


def rss_bytes(pid: int | None) -> int | None:
    """Resident set size of a live process, None if it is gone."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            return parse_vmrss(f.read())
    except OSError:
        return None


def _walk_files(path: Path) -> list[os.stat_result]:
    out = []
    stack = [str(path)]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:  # vanished meanwhile (LevelDB and etcd delete files)
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False):
                    out.append(e.stat(follow_symlinks=False))
            except OSError:
                continue
    return out


def dir_bytes(path: str | os.PathLike[str] | None) -> int | None:
    """Sum of the sizes of the regular files under `path` (recursively,
    symlinks not followed); None if the directory does not exist."""
    if path is None or not os.path.isdir(path):
        return None
    return sum(st.st_size for st in _walk_files(Path(path)))


def dir_alloc_bytes(path: str | os.PathLike[str] | None) -> int | None:
    """The disk blocks those files occupy (st_blocks x 512)."""
    if path is None or not os.path.isdir(path):
        return None
    return sum(st.st_blocks * 512 for st in _walk_files(Path(path)))


def mark_interval(writes: int, mark: int = DEFAULT_MARK) -> int:
    """Writes between two mark samples: `mark` (the issue's 100,000) when the
    run has at least two of them, else a tenth of the run (so that a short
    run still has a first mark to compare the end with)."""
    if writes >= 2 * mark:
        return mark
    return max(1, writes // 10)


def live_bytes(keys: int, value_size: int, key_bytes: int = KEY_BYTES) -> int:
    """The live data of the store: every key once, with its value."""
    return keys * (key_bytes + value_size)


class FootprintSampler:
    """Samples every replica's RSS and data-directory size.

    `on_progress(elapsed_s, writes)` is the harness's progress callback
    (about every 20 ms): it samples when `writes` crosses the next multiple
    of `mark` (a "mark" sample, its index kept in `mark_samples`) and
    otherwise every `interval` seconds; past `deadline` (a clock() value)
    it raises BudgetExceeded. `sample()` takes one explicitly (the start,
    the end). Readers and clock are injectable for the tests."""

    def __init__(
        self,
        pids: Mapping[int, int],
        dirs: Mapping[int, str | os.PathLike[str]],
        *,
        interval: float = 1.0,
        mark: int = DEFAULT_MARK,
        deadline: float | None = None,
        read_rss: Callable[[int | None], int | None] = rss_bytes,
        read_dir: Callable[[Any], int | None] = dir_bytes,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pids = dict(pids)
        self.dirs = dict(dirs)
        self.ids = sorted(self.dirs)
        self.interval = interval
        self.mark = max(1, mark)
        self.deadline = deadline
        self.read_rss = read_rss
        self.read_dir = read_dir
        self.clock = clock
        self.t0 = clock()
        self.base = 0  # writes done before the current run (added to its count)
        self.next_mark = self.mark
        self.last_sample: float | None = None
        self.last_writes = 0
        self.t: list[float] = []
        self.writes: list[int] = []
        self.rss: dict[int, list[int | None]] = {i: [] for i in self.ids}
        self.dir: dict[int, list[int | None]] = {i: [] for i in self.ids}
        self.mark_samples: list[int] = []

    def sample(self, writes: int, is_mark: bool = False) -> int:
        """Takes a sample now; returns its index."""
        now = self.clock()
        self.t.append(round(now - self.t0, 3))
        self.writes.append(writes)
        for i in self.ids:
            self.rss[i].append(self.read_rss(self.pids.get(i)))
            self.dir[i].append(self.read_dir(self.dirs[i]))
        self.last_sample = now
        idx = len(self.t) - 1
        if is_mark:
            self.mark_samples.append(idx)
        return idx

    def on_progress(self, elapsed: float, done: int) -> None:
        writes = self.base + done
        self.last_writes = max(self.last_writes, writes)
        if writes >= self.next_mark:
            while self.next_mark <= writes:
                self.next_mark += self.mark
            self.sample(writes, is_mark=True)
        elif self.last_sample is None or self.clock() - self.last_sample >= self.interval:
            self.sample(writes)
        if self.deadline is not None and self.clock() > self.deadline:
            raise BudgetExceeded(f"stopped after {writes:,} writes (time budget)")

    def set_pid(self, rid: int, pid: int | None) -> None:
        if pid is None:
            self.pids.pop(rid, None)
        else:
            self.pids[rid] = pid

    def series(self) -> dict[str, Any]:
        return {
            "t_s": self.t,
            "writes": self.writes,
            "rss_bytes": {str(i): v for i, v in self.rss.items()},
            "dir_bytes": {str(i): v for i, v in self.dir.items()},
            "mark_samples": self.mark_samples,
            "mark": self.mark,
            "interval_s": self.interval,
        }


def _last(values: list[int | None]) -> int | None:
    for v in reversed(values):
        if v is not None:
            return v
    return None


def _max(values: list[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def summarize(series: Mapping[str, Any], live: int) -> dict[str, Any]:
    """The report's figures from a `FootprintSampler.series()`:

    per replica: RSS at the first mark sample, at the last sample (the end)
    and the growth between them; the data directory at the first mark, its
    maximum and its size at the end, and the maximum over the live data;
    over all replicas: the largest RSS growth, RSS at the end, data
    directory maximum and end, and the largest ratio."""
    marks = series.get("mark_samples") or []
    first = marks[0] if marks else None
    per: dict[str, dict[str, Any]] = {}
    for rid, rss in series["rss_bytes"].items():
        dirs = series["dir_bytes"][rid]
        rss_first = rss[first] if first is not None else None
        rss_end = _last(rss)
        dir_max = _max(dirs)
        per[rid] = {
            "rss_first_mark": rss_first,
            "rss_end": rss_end,
            "rss_max": _max(rss),
            "rss_growth": (
                rss_end - rss_first if rss_end is not None and rss_first is not None else None
            ),
            "dir_first_mark": dirs[first] if first is not None else None,
            "dir_max": dir_max,
            "dir_end": _last(dirs),
            "dir_max_over_live": round(dir_max / live, 2) if dir_max and live > 0 else None,
        }

    def top(key: str) -> int | float | None:
        vals = [p[key] for p in per.values() if p[key] is not None]
        return max(vals) if vals else None

    return {
        "first_mark_writes": series["writes"][first] if first is not None else None,
        "end_writes": series["writes"][-1] if series.get("writes") else None,
        "live_bytes": live,
        "replicas": per,
        "rss_growth_max": top("rss_growth"),
        "rss_first_mark_max": top("rss_first_mark"),
        "rss_end_max": top("rss_end"),
        "dir_max": top("dir_max"),
        "dir_end_max": top("dir_end"),
        "dir_max_over_live": top("dir_max_over_live"),
    }
