"""The acceptor storage on plyvel and on its in-memory twin: what is synced
survives a crash, what is not may not, a compaction point deletes the log
below it in the same batch."""

import threading
from collections.abc import Iterator

import plyvel
import pytest

from kvstore.values import MemoryValueLog, ValueLog
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


def test_a_promise_implied_by_votes_outlives_their_compaction(db) -> None:
    """A replica may restart with votes of a ballot whose promise did not
    reach the disk (it sits in another batch, or another file: the vote
    log): it loads that ballot as its promise, and may reveal it (a Nack, a
    ReadVouch). The promise must then survive the compaction of those
    votes (the simulator found a replica reverting to its older promise)."""
    storage = LevelDBStorage(db)
    storage.persist(Ballot(3, 2), {}, {})
    storage.persist(None, {5: Vote(Ballot(4, 2), (b"cmd",))}, {})  # the vote alone
    assert LevelDBStorage(db).load().promised == Ballot(4, 2)  # a restart
    storage.persist(None, {}, {}, compacted=6)  # the vote is compacted away
    state = LevelDBStorage(db).load()
    assert state.votes == {} and state.promised == Ballot(4, 2)


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


# ------------------------------------------------------------- the vote log

BIG = 100  # the tests' vote_min_bytes: a vote with a command this long goes to the vote log


@pytest.fixture(params=["files", "memory"])
def logged(request, tmp_path) -> Iterator[tuple[object, object]]:
    """(db, vote log): plyvel and segment files, or their in-memory twins."""
    if request.param == "memory":
        yield MemoryDB(), MemoryValueLog(segment_bytes=1000)
        return
    handle = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    votes = ValueLog(tmp_path / "db" / "votes", segment_bytes=1000)
    yield handle, votes
    votes.close()
    handle.close()


def _reopen(votes):  # noqa: ANN001, ANN202
    """The vote log as a replica that starts again opens it."""
    if isinstance(votes, MemoryValueLog):
        return votes.restart()
    votes.close()
    return ValueLog(votes.directory, segment_bytes=votes.segment_bytes)


_B21 = Ballot(2, 1)


def _big(slot: int, ballot: Ballot = _B21) -> Vote:
    return Vote(ballot, (b"small", b"%d" % slot + b"v" * BIG))


def test_votes_with_a_large_command_live_in_the_vote_log(logged) -> None:
    db, votes = logged
    storage = LevelDBStorage(db, votes=votes, vote_min_bytes=BIG)
    small = _votes(range(3))
    big = {s: _big(s) for s in range(3, 6)}
    storage.persist(Ballot(2, 1), {**small, **big}, {})
    assert [k[1:] for k, _ in db.iterator(prefix=b"v")] == [
        b"\0" * 7 + bytes([s]) for s in range(3)
    ]
    assert votes.sizes and not votes.dirty  # written and synced before persist returned
    state = LevelDBStorage(db, votes=_reopen(votes), vote_min_bytes=BIG).load()
    assert state.votes == {**small, **big}


def test_with_a_threshold_of_one_every_vote_of_commands_is_in_the_vote_log(logged) -> None:
    """The default (`[storage] vote_log_min_bytes = 1`): an iteration of
    votes alone leaves LevelDB untouched; a vote of no command (a gap
    filled with a no-op) still goes to LevelDB."""
    db, votes = logged
    storage = LevelDBStorage(db, votes=votes, vote_min_bytes=1)
    small = _votes(range(3))
    storage.persist(None, small, {})
    assert list(db.iterator()) == []
    assert votes.sizes and not votes.dirty
    empty = Vote(_B21, ())
    storage.persist(None, {3: empty}, {})
    assert [k for k, _ in db.iterator(prefix=b"v")] == [b"v" + (3).to_bytes(8, "big")]
    state = LevelDBStorage(db, votes=_reopen(votes), vote_min_bytes=1).load()
    assert state.votes == {**small, 3: empty}


def test_the_highest_ballot_wins_and_the_promise_covers_it(logged) -> None:
    db, votes = logged
    storage = LevelDBStorage(db, votes=votes, vote_min_bytes=BIG)
    storage.persist(Ballot(2, 1), {1: _big(1), 2: _votes(range(2, 3))[2]}, {})
    later = Vote(Ballot(5, 3), (b"smaller now",))
    storage.persist(None, {1: later, 2: _big(2, Ballot(4, 2))}, {})
    state = LevelDBStorage(db, votes=_reopen(votes), vote_min_bytes=BIG).load()
    assert state.votes == {1: later, 2: _big(2, Ballot(4, 2))}
    # The promise was last written at (2, 1): a durable vote implies its own.
    assert state.promised == Ballot(5, 3)


def test_a_compaction_deletes_the_vote_log_segments_below_it(logged) -> None:
    db, votes = logged
    storage = LevelDBStorage(db, votes=votes, vote_min_bytes=BIG)
    for slot in range(40):  # about eight votes per segment
        storage.persist(None, {slot: _big(slot)}, {})
    before = set(votes.sizes)
    assert len(before) > 4
    storage.persist(None, {}, {}, compacted=30)
    after = set(votes.sizes)
    assert after < before and len(after) <= 3
    state = LevelDBStorage(db, votes=_reopen(votes), vote_min_bytes=BIG).load()
    assert sorted(state.votes) == list(range(30, 40)) and state.compacted == 30


def test_a_torn_tail_of_the_vote_log_is_not_a_vote(tmp_path) -> None:
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    votes = ValueLog(tmp_path / "votes", segment_bytes=1 << 20)
    storage = LevelDBStorage(db, votes=votes, vote_min_bytes=BIG)
    storage.persist(None, {1: _big(1), 2: _big(2)}, {})
    votes.close()
    segment = max(votes.sizes)
    path = votes._path(segment)
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # the last entry, cut short (never synced whole)
    state = LevelDBStorage(db, votes=ValueLog(tmp_path / "votes"), vote_min_bytes=BIG).load()
    assert state.votes == {1: _big(1)}
    db.close()


def test_the_vote_log_is_read_when_no_new_vote_goes_there(logged) -> None:
    """A replica restarted with `value_log_min_bytes = 0` still loads the
    votes its vote log holds, and keeps new ones in LevelDB."""
    db, votes = logged
    LevelDBStorage(db, votes=votes, vote_min_bytes=BIG).persist(None, {1: _big(1)}, {})
    storage = LevelDBStorage(db, votes=_reopen(votes), vote_min_bytes=0)
    assert storage.load().votes == {1: _big(1)}
    storage.persist(None, {2: _big(2)}, {})
    assert db.get(b"v" + (2).to_bytes(8, "big")) is not None


def test_persist_begin_syncs_the_vote_log_in_the_writer(tmp_path) -> None:  # noqa: ANN001
    db = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    votes = ValueLog(tmp_path / "votes", segment_bytes=1 << 20)
    writer = SyncWriter()
    storage = LevelDBStorage(db, writer=writer, votes=votes, vote_min_bytes=BIG)
    pending = storage.persist_begin(None, {1: _big(1)}, {})
    pending.wait()
    assert not votes.dirty and writer.writes == 1
    votes.close()
    assert LevelDBStorage(db, votes=ValueLog(tmp_path / "votes")).load().votes == {1: _big(1)}
    writer.close()
    db.close()


def test_an_unsynced_compaction_point_keeps_the_vote_log_segments(logged) -> None:
    db, votes = logged
    storage = LevelDBStorage(db, votes=votes, vote_min_bytes=BIG)
    for slot in range(20):
        storage.persist(None, {slot: _big(slot)}, {})
    before = set(votes.sizes)
    storage.persist(None, {}, {}, sync=False, compacted=15)
    assert set(votes.sizes) == before  # a crash may still lose that point
    storage.persist(None, {}, {}, compacted=16)
    assert set(votes.sizes) < before
