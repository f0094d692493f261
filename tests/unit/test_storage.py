"""The acceptor storage on plyvel and on its in-memory twin: what is synced
survives a crash, what is not may not, a compaction point deletes the log
below it in the same batch."""

from collections.abc import Iterator

import plyvel
import pytest

from replica.inmem import MemoryDB
from replica.messages import Ballot, Vote
from replica.storage import LevelDBStorage


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
