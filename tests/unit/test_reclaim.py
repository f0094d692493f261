"""replica/reclaim.py: range compactions after a log compaction give the
disk back, off the loop's thread, and stop cleanly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import plyvel

from replica.messages import Ballot, Vote
from replica.reclaim import Reclaimer
from replica.storage import LOG_PREFIXES, LevelDBStorage, slot_key
from tests.harness import wait_for


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def test_compaction_point_triggers_a_range_compaction_that_frees_the_disk(tmp_path: Path) -> None:
    db = plyvel.DB(str(tmp_path), create_if_missing=True, write_buffer_size=256 << 10)
    reclaimer = Reclaimer(db, LOG_PREFIXES, slot_key)
    points: list[int] = []

    def on_compacted(point: int) -> None:
        points.append(point)
        reclaimer.request(point)

    storage = LevelDBStorage(db, on_compacted=on_compacted)
    try:
        for first in range(0, 4000, 100):
            # incompressible (snappy would fold a repeated payload)
            votes = {s: Vote(Ballot(1, 1), (os.urandom(2000),)) for s in range(first, first + 100)}
            storage.persist(Ballot(1, 1), votes, {}, sync=False)
        db.compact_range()  # everything in files: the worst case for deletes
        full = _dir_bytes(tmp_path)
        assert full > 4000 * 2000

        storage.persist(None, {}, {}, sync=True, compacted=3900)
        assert points == [3900]
        wait_for("the range compaction", lambda: reclaimer.runs >= 1, 30.0)
        after = _dir_bytes(tmp_path)
        assert after < full // 5, (full, after)
        # The tail above the point is intact, the log below it gone.
        left = [key for key in db.iterator(prefix=b"v", include_value=False)]
        assert left == [slot_key(b"v", s) for s in range(3900, 4000)]

        storage.persist(None, {}, {}, sync=True, compacted=3900)  # not a new point
        assert points == [3900]
    finally:
        reclaimer.close()
        db.close()


def test_requests_coalesce_and_close_returns(tmp_path: Path) -> None:
    db = plyvel.DB(str(tmp_path), create_if_missing=True)
    reclaimer = Reclaimer(db, LOG_PREFIXES, slot_key)
    try:
        for point in (10, 5, 20):
            reclaimer.request(point)
        wait_for("compaction to 20", lambda: reclaimer.runs >= 1 and reclaimer._done == 20, 30.0)
        assert reclaimer.runs <= 2  # 5 never ran on its own after 10
    finally:
        reclaimer.close()
        db.close()
    assert not reclaimer._thread.is_alive()


def test_range_compactions_are_spaced_and_requests_meanwhile_join_the_next(
    tmp_path: Path,
) -> None:
    """Two requests in quick succession: the first compacts at once, the
    second waits for the interval, together with any made meanwhile."""
    db = plyvel.DB(str(tmp_path), create_if_missing=True)
    reclaimer = Reclaimer(db, LOG_PREFIXES, slot_key, min_interval_s=0.5)
    try:
        began = time.monotonic()
        reclaimer.request(10)
        wait_for("the first compaction", lambda: reclaimer.runs >= 1, 30.0)
        for point in (20, 30, 40):
            reclaimer.request(point)
        wait_for("the second compaction", lambda: reclaimer._done == 40, 30.0)
        assert reclaimer.runs == 2
        assert time.monotonic() - began >= 0.5
    finally:
        reclaimer.close()
        db.close()


def test_close_does_not_wait_out_the_interval(tmp_path: Path) -> None:
    db = plyvel.DB(str(tmp_path), create_if_missing=True)
    reclaimer = Reclaimer(db, LOG_PREFIXES, slot_key, min_interval_s=60.0)
    try:
        reclaimer.request(10)
        wait_for("the first compaction", lambda: reclaimer.runs >= 1, 30.0)
        reclaimer.request(20)  # waits a minute
        began = time.monotonic()
    finally:
        reclaimer.close()
        db.close()
    assert time.monotonic() - began < 10.0
    assert not reclaimer._thread.is_alive()
