"""The acceptor storage on plyvel and on its in-memory twin: what is synced
survives a crash, what is not may not, a compaction point deletes the log
below it in the same batch."""

import threading
from collections.abc import Iterator

import plyvel
import pytest

from replica.inmem import MemoryDB
from replica.messages import Ballot, Vote
from replica.storage import LevelDBStorage, SyncWriter


@pytest.fixture(params=["plyvel", "memory"])
def db(request, tmp_path) -> Iterator[object]:
    if request.param == "memory":
        yield MemoryDB()
        return
    handle = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    yield handle
    handle.close()


def _votes(slots: range) -> dict[int, Vote]:
    return {s: Vote(Ballot(2, 1), (b"cmd%d" % s,)) for s in slots}


def test_round_trip(db) -> None:
    storage = LevelDBStorage(db)
    storage.persist(Ballot(3, 2), _votes(range(5)), {7: (b"learned",)})
    state = LevelDBStorage(db).load()
    assert state.promised == Ballot(3, 2)
    assert state.votes == _votes(range(5)) and state.chosen == {7: (b"learned",)}
    assert state.compacted == 0


def test_compaction_deletes_below_the_point_in_the_same_batch(db) -> None:
    storage = LevelDBStorage(db)
    storage.persist(None, _votes(range(10)), {3: (b"x",), 8: (b"y",)})
    storage.persist(None, {}, {}, compacted=6)
    state = LevelDBStorage(db).load()  # a restarted replica
    assert state.compacted == 6
    assert sorted(state.votes) == [6, 7, 8, 9] and sorted(state.chosen) == [8]
    storage.persist(None, {}, {}, compacted=4)  # never backwards
    assert LevelDBStorage(db).load().compacted == 6


def test_a_crash_keeps_what_was_synced_and_a_prefix_of_the_rest() -> None:
    db = MemoryDB()
    storage = LevelDBStorage(db)
    storage.persist(Ballot(1, 1), _votes(range(2)), {}, sync=True)
    storage.persist(Ballot(2, 1), _votes(range(2, 4)), {}, sync=False)
    storage.persist(None, {}, {}, sync=False, compacted=3)
    db.crash(keep=1)  # the first unsynced batch reached the disk, the second did not
    state = LevelDBStorage(db).load()
    assert state.promised == Ballot(2, 1) and sorted(state.votes) == [0, 1, 2, 3]
    assert state.compacted == 0
    db.crash(keep=0)
    assert sorted(LevelDBStorage(db).load().votes) == [0, 1, 2, 3]  # now durable


class _SlowBatch:
    """A batch whose write blocks until released, or fails."""

    def __init__(self, fail: bool = False) -> None:
        self.release = threading.Event()
        self.written = threading.Event()
        self.fail = fail

    def write(self) -> None:
        assert self.release.wait(10)
        if self.fail:
            raise OSError("disk full")
        self.written.set()


def test_the_sync_writer_writes_beside_the_caller_and_hands_back_failures() -> None:
    writer = SyncWriter()
    try:
        batch = _SlowBatch()
        job = writer.begin(batch)  # returns while the write is still going on
        assert not batch.written.is_set()
        with pytest.raises(RuntimeError, match="one synced batch at a time"):
            writer.begin(_SlowBatch())
        batch.release.set()
        job.wait()
        assert batch.written.is_set() and writer.writes == 1
        bad = _SlowBatch(fail=True)
        bad.release.set()
        with pytest.raises(OSError, match="disk full"):
            writer.begin(bad).wait()
    finally:
        writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.begin(_SlowBatch())


def test_persist_begin_is_persist_in_two_halves(tmp_path) -> None:  # noqa: ANN001
    db = plyvel.DB(str(tmp_path), create_if_missing=True)
    points: list[int] = []
    writer = SyncWriter()
    try:
        storage = LevelDBStorage(db, on_compacted=points.append, writer=writer)
        votes = {s: Vote(Ballot(1, 1), (b"v%d" % s,)) for s in range(10)}
        storage.persist_begin(Ballot(1, 1), votes, {3: (b"c",)}).wait()
        pending = storage.persist_begin(None, {}, {}, compacted=5)
        pending.wait()
        assert points == [5] and writer.writes == 2
        state = LevelDBStorage(db).load()
        assert state.promised == Ballot(1, 1) and state.compacted == 5
        assert sorted(state.votes) == list(range(5, 10)) and state.chosen == {}
        # Without a writer it writes at once (the simulator's MemoryDB too).
        mem = MemoryDB()
        LevelDBStorage(mem).persist_begin(Ballot(2, 1), votes, {}).wait()
        assert LevelDBStorage(mem).load().promised == Ballot(2, 1)
    finally:
        writer.close()
        db.close()
