"""Giving the disk back after a log compaction: LevelDB range compactions
in a background thread.

Deleting the votes and chosen values below a compaction point writes
tombstones; the bytes they shadow stay in LevelDB's files until LevelDB's
own compactions merge the two, which for a replica writing a few MB a
second is anywhere from seconds to a 10 MB level later (benchmarks/README.md,
footprint: peaks of 24 MiB of directory for 9 MiB at rest). After each log
compaction the `Reclaimer` asks LevelDB to compact the key ranges that were
just deleted, so the files holding them are rewritten without them and
removed.

Why a thread: `plyvel.DB.compact_range` releases the GIL and LevelDB allows
reads and writes during a manual compaction, so the replica's loop goes on
while the compaction runs on the other core. Requests are coalesced: while
one compaction runs, later requests only raise the point the next one
compacts to. Nothing here is needed for safety: the compaction point and the
deletions are already durable (one synced batch) before a request is made,
and a replica that crashes mid-compaction has a consistent LevelDB, which
compacts again on its own.

The simulator does not run this (its MemoryDB keeps no files).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger("replica.reclaim")


MIN_INTERVAL_S = 2.0
"""Least time from the start of one range compaction to the next. A manual
compaction holds back LevelDB's own and the writes that wait for them: with
large values the log compacts every few dozen slots, and a range compaction
after each one tripled the 100 KiB PUT latency (benchmarks/README.md,
"Speed"). Small values compact every few seconds anyway."""


class Reclaimer:
    """Compacts `[prefix, prefix + key_of(point))` of each prefix after a log
    compaction to `point`, in a daemon thread, at most once per
    `min_interval_s` (requests meanwhile are coalesced)."""

    def __init__(
        self,
        db,  # noqa: ANN001 - a plyvel.DB
        prefixes: Sequence[bytes],
        key_of: Callable[[bytes, int], bytes],
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self._db = db
        self._min_interval_s = min_interval_s
        self._prefixes = tuple(prefixes)
        self._key_of = key_of
        self._cond = threading.Condition()
        self._wanted = 0  # compact below this point
        self._done = 0  # compacted below this point
        self._closing = False
        self.runs = 0
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, name="leveldb-reclaim", daemon=True)
        self._thread.start()

    def request(self, point: int) -> None:
        """Compact below `point` soon (returns at once)."""
        with self._cond:
            if point > self._wanted:
                self._wanted = point
                self._cond.notify()

    def _run(self) -> None:
        last = -float("inf")
        while True:
            with self._cond:
                while self._wanted <= self._done and not self._closing:
                    self._cond.wait()
                rest = last + self._min_interval_s - time.monotonic()
                if rest > 0 and not self._closing:  # later requests join this one
                    self._cond.wait_for(lambda: self._closing, timeout=rest)
                if self._closing:
                    return
                start, point = self._done, self._wanted
            began = last = time.monotonic()
            try:
                for prefix in self._prefixes:
                    stop = self._key_of(prefix, point)
                    first = self._key_of(prefix, start) if start else prefix
                    self._db.compact_range(start=first, stop=stop)
            except Exception:  # a closed DB at shutdown; never fatal
                log.warning("LevelDB range compaction below slot %d failed", point, exc_info=True)
                return
            elapsed = time.monotonic() - began
            with self._cond:
                self._done = point
                self.runs += 1
                self.seconds += elapsed
            log.debug("LevelDB compacted below slot %d in %.3f s", point, elapsed)

    def close(self, timeout: float = 30.0) -> None:
        """Lets a running compaction finish (the DB must stay open until then)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
