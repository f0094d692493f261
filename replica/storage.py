"""Durable acceptor state: the narrow seam between the Paxos core and disk.

The core hands the driver, in each `Ready`, the acceptor writes it made (a new
promised ballot, new votes, chosen values learned by catch-up). The driver
must `persist` them in ONE atomic, synced batch before it sends any message of
that `Ready`: a promise or vote that reached the network must survive a crash.

`LevelDBStorage` shares the replica's single plyvel DB (the state machine
owns other prefixes). Key layout:

    b"a"                      -> msgpack [round, replica_id]  (promised ballot)
    b"v" + slot(8 bytes, BE)  -> msgpack [round, replica_id, [cmd, ...]]  (vote)
    b"c" + slot(8 bytes, BE)  -> msgpack [cmd, ...]  (chosen value learned by
                                 catch-up, where the local vote differs or is missing)
    b"p"                      -> 8 bytes BE: the compaction point (no v/c below it)

Big-endian slots keep LevelDB's key order equal to slot order. The
simulator runs this very class on `replica.inmem.MemoryDB`, whose crash
model loses what was not synced, exactly what a skipped fsync loses on
power failure.

The vote log: votes outside LevelDB
-----------------------------------
A vote whose value holds a command of at least `vote_min_bytes` (the
replica's `[storage] vote_log_min_bytes`: 1 by default, so every vote of
a write; until session 15 of issue 13 the value log's threshold, so large
PUTs only) is not put into LevelDB: it is appended to the vote log (`votes/` in the data directory,
segment files of kvstore/values.py, VOTE_SEGMENT_BYTES each), an entry
whose key is (slot, ballot) and whose value is the packed commands. The
vote log is synced before the batch's LevelDB part is written (and an
iteration whose batch holds nothing else writes no LevelDB batch at all),
so the batch is durable on return, as before; only where it lives
changed. In LevelDB a 100 KiB vote was written three times (its log,
the memtable's flush, a compaction) before log compaction deleted it;
in the vote log it is written once, and a segment is deleted whole once
every entry in it is below the compaction point (benchmarks/README.md,
"Session 14": each replica wrote ~400 KiB per 100 KiB PUT, ~230 after).
Small votes gain less, but the same: LevelDB's background thread no
longer flushes and compacts them, ~1-2 us per write per replica at 64
clients, and the 64-client p99 fell by 1-4 ms ("Session 15").

`load` reads the vote log's segments in order, up to a torn tail in each
(a tail that was never synced, so never revealed), and takes for every
slot at or above the compaction point the vote of the highest ballot
among LevelDB's and the vote log's; the promise loaded is at least the
highest ballot voted in (a vote implies its promise, and the two may sit
in different files), and is written back (synced) when a vote raised it,
so that it outlives the compaction of those votes. Chosen values learned
by catch-up stay in LevelDB.
The simulator gives two replicas of three a vote log, crashes them in
its sync, loses what was not synced, checks that no revealed vote is
forgotten, and catches a vote log that is not synced (tests/sim).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import msgpack

from kvstore.values import ref_segment
from replica.messages import Ballot, Value, Vote
from replica.paxos import DurableState


class AcceptorStorage(Protocol):
    def load(self) -> DurableState:
        """Reads everything that was durably written."""
        ...

    def persist(
        self,
        promised: Ballot | None,
        votes: dict[int, Vote],
        chosen: dict[int, Value],
        sync: bool = True,
        compacted: int | None = None,
    ) -> None:
        """Writes one atomic batch; with sync=True it is on disk on return.
        `compacted`, if given, is a new compaction point: the votes and chosen
        values below it are deleted in the same batch."""
        ...

    def persist_begin(
        self,
        promised: Ballot | None,
        votes: dict[int, Vote],
        chosen: dict[int, Value],
        compacted: int | None = None,
    ) -> PendingPersist:
        """`persist(..., sync=True)` that the caller waits for later."""
        ...


class VoteLog(Protocol):
    """kvstore/values.py `ValueLog` (`MemoryValueLog` in the simulator)."""

    active: int
    sizes: dict[int, int]

    def append(self, key: bytes, value: bytes, slot: int) -> bytes: ...
    def flush(self) -> None: ...
    def sync(self) -> None: ...
    def scan(self, segment: int) -> Iterator[tuple[int, bytes, bytes]]: ...
    def remove(self, segment: int) -> None: ...


class PendingPersist(Protocol):
    def wait(self) -> None:
        """Returns once the batch is on disk (raises what its write raised)."""
        ...


_PROMISED_KEY = b"a"
_VOTE_PREFIX = b"v"
_CHOSEN_PREFIX = b"c"
_COMPACTED_KEY = b"p"
_SLOT = struct.Struct(">Q")
_PACK = msgpack.Packer(use_bin_type=True).pack  # see kvstore/statemachine.py
_VOTE_ENTRY = struct.Struct(">QQQ")  # a vote log entry's key: slot, ballot
VOTE_LOG_DIR = "votes"
VOTE_SEGMENT_BYTES = 4 * 1024 * 1024
"""The vote log's segments: a segment is deleted once the compaction point
passed every slot in it, so smaller ones give the disk back sooner (the
log compacts every few MiB: `[compaction]` in README "Configuration")."""


LOG_PREFIXES = (_VOTE_PREFIX, _CHOSEN_PREFIX)
"""The prefixes a compaction deletes below its point."""


def slot_key(prefix: bytes, slot: int) -> bytes:
    return prefix + _SLOT.pack(slot)


class LevelDBStorage:
    """Acceptor state in the replica's plyvel DB (prefixes a, v, c, p)."""

    def __init__(
        self,
        db,  # noqa: ANN001
        on_compacted: Callable[[int], None] | None = None,
        writer: SyncWriter | None = None,
        votes: VoteLog | None = None,
        vote_min_bytes: int = 0,
    ) -> None:
        """`db` is a plyvel.DB (or the simulator's MemoryDB); `on_compacted`
        is called with each new compaction point once its batch is written
        (the server reclaims the disk then: replica/reclaim.py). `writer`:
        the thread that `persist_begin` hands synced batches to (without
        one, `persist_begin` writes at once). `votes`: the vote log, where
        votes holding a command of at least `vote_min_bytes` go (0: none;
        module docstring)."""
        self._db = db
        self._on_compacted = on_compacted
        self._writer = writer
        self._votes = votes if vote_min_bytes > 0 else None
        self._vote_min = vote_min_bytes
        self._vote_log = votes  # read at load even when no new vote goes there
        self._vote_segments: dict[int, int] = {}  # segment -> the highest slot in it
        raw = db.get(_COMPACTED_KEY)
        self._compacted = 0 if raw is None else _SLOT.unpack(raw)[0]

    def load(self) -> DurableState:
        state = DurableState()
        raw = self._db.get(_PROMISED_KEY)
        if raw is not None:
            r, rid = msgpack.unpackb(raw)
            state.promised = Ballot(r, rid)
        state.compacted = self._compacted
        for key, raw in self._db.iterator(prefix=_VOTE_PREFIX):
            r, rid, cmds = msgpack.unpackb(raw)
            state.votes[_SLOT.unpack(key[1:])[0]] = Vote(Ballot(r, rid), tuple(cmds))
        for key, raw in self._db.iterator(prefix=_CHOSEN_PREFIX):
            state.chosen[_SLOT.unpack(key[1:])[0]] = tuple(msgpack.unpackb(raw))
        if self._vote_log is not None:
            self._load_vote_log(state)
        if state.votes:
            voted = max(v.ballot for v in state.votes.values())
            if voted > state.promised:
                # A vote whose promise did not reach the disk (another batch,
                # or the vote log). The replica now holds that promise and may
                # reveal it (Nack, ReadVouch): made durable now, it outlives
                # the compaction of those votes (the simulator, seed 940).
                state.promised = voted
                self._db.put(_PROMISED_KEY, msgpack.packb(list(voted)), sync=True)
        return state

    def _load_vote_log(self, state: DurableState) -> None:
        """Adds the vote log's votes to `state` (module docstring) and
        deletes the segments that hold none at or above the compaction
        point."""
        votes, compacted = self._vote_log, state.compacted
        assert votes is not None
        for segment in sorted(votes.sizes):
            top = -1
            for _, key, raw in votes.scan(segment):
                if len(key) != _VOTE_ENTRY.size:
                    break  # not a vote log entry: a damaged segment
                slot, r, rid = _VOTE_ENTRY.unpack(key)
                top = max(top, slot)
                ballot = Ballot(r, rid)
                old = state.votes.get(slot)
                if slot >= compacted and (old is None or old.ballot < ballot):
                    state.votes[slot] = Vote(ballot, tuple(msgpack.unpackb(raw)))
            if top >= compacted:
                self._vote_segments[segment] = top
            elif segment != votes.active:
                votes.remove(segment)

    def persist(
        self,
        promised: Ballot | None,
        votes: dict[int, Vote],
        chosen: dict[int, Value],
        sync: bool = True,
        compacted: int | None = None,
    ) -> None:
        batch, new_point = self._batch(promised, votes, chosen, sync, compacted)
        batch.write()
        self._written(new_point, durable=sync)

    def persist_begin(
        self,
        promised: Ballot | None,
        votes: dict[int, Vote],
        chosen: dict[int, Value],
        compacted: int | None = None,
    ) -> PendingPersist:
        """`persist(..., sync=True)` in two halves: the batch is built here
        and handed to the writer thread, whose write (and fsync) runs while
        the caller goes on; `wait()` on the result returns once it is on
        disk. The caller must not write to the DB what must land after it
        before `wait()` returns (LevelDB queues writers: a write made
        meanwhile may reach the log before this batch or after it)."""
        batch, new_point = self._batch(promised, votes, chosen, True, compacted)
        if self._writer is None:
            batch.write()
            self._written(new_point)
            return _DONE
        return _Handed(self._writer.begin(batch), self, new_point)

    def _batch(
        self,
        promised: Ballot | None,
        votes: dict[int, Vote],
        chosen: dict[int, Value],
        sync: bool,
        compacted: int | None,
    ) -> tuple[_Batch, bool]:
        new_point = compacted is not None and compacted > self._compacted
        wb = self._db.write_batch(sync=sync)
        written = new_point or promised is not None or bool(chosen)
        if new_point:
            self._delete_below(wb, compacted)
        if promised is not None:
            wb.put(_PROMISED_KEY, msgpack.packb(list(promised)))
        logged = False
        vote_log, least = self._votes, self._vote_min
        for slot, (ballot, value) in votes.items():
            if vote_log is not None and any(len(cmd) >= least for cmd in value):
                ref = vote_log.append(_VOTE_ENTRY.pack(slot, *ballot), _PACK(value), slot)
                segment = ref_segment(ref)
                if self._vote_segments.get(segment, -1) < slot:
                    self._vote_segments[segment] = slot
                logged = True
                continue
            wb.put(
                slot_key(_VOTE_PREFIX, slot),
                _PACK([ballot[0], ballot[1], value]),
            )
            written = True
        for slot, value in chosen.items():
            wb.put(slot_key(_CHOSEN_PREFIX, slot), _PACK(value))
        return _Batch(self, wb if written else None, logged, sync), new_point

    def _sync_votes(self, sync: bool) -> None:
        """Writes the vote log's new entries, synced with `sync`."""
        assert self._votes is not None
        if sync:
            self._votes.sync()
        else:
            self._votes.flush()

    def _written(self, new_point: bool, durable: bool = True) -> None:
        """After a batch is written (`durable`: synced): a new compaction
        point lets the vote log's segments below it go, once it is durable
        (else a crash could bring back the point before it with their votes
        gone), and is reported to `on_compacted`."""
        if not new_point:
            return
        log = self._vote_log
        if log is not None and durable:
            for segment, top in list(self._vote_segments.items()):
                if top < self._compacted and segment != log.active:
                    del self._vote_segments[segment]
                    log.remove(segment)
        if self._on_compacted is not None:
            self._on_compacted(self._compacted)

    def _delete_below(self, wb, compacted: int) -> None:  # noqa: ANN001 - a WriteBatch
        """Adds the deletion of every vote and chosen value in [old point,
        compacted) to the batch, with the new point. Only keys that exist are
        deleted (one prefix scan from the old point), so the batch holds what
        the log held, not one tombstone per slot."""
        for prefix in LOG_PREFIXES:
            keys = self._db.iterator(
                start=slot_key(prefix, self._compacted),
                stop=slot_key(prefix, compacted),
                include_value=False,
            )
            for key in keys:
                wb.delete(key)
        wb.put(_COMPACTED_KEY, _SLOT.pack(compacted))
        self._compacted = compacted


class _Batch:
    """One persist: the vote log's new entries, then the LevelDB batch
    (None: nothing for LevelDB)."""

    __slots__ = ("_logged", "_storage", "_sync", "_wb")

    def __init__(self, storage: LevelDBStorage, wb: Any, logged: bool, sync: bool) -> None:
        self._storage, self._wb, self._logged, self._sync = storage, wb, logged, sync

    def write(self) -> None:
        if self._logged:
            self._storage._sync_votes(self._sync)
        if self._wb is not None:
            self._wb.write()


class _Done:
    def wait(self) -> None:
        return None


_DONE = _Done()


class _Handed:
    """A batch handed to the writer thread (`LevelDBStorage.persist_begin`)."""

    def __init__(self, job: _Job, storage: LevelDBStorage, new_point: bool) -> None:
        self._job = job
        self._storage = storage
        self._new_point = new_point

    def wait(self) -> None:
        self._job.wait()
        self._storage._written(self._new_point)


class _Job:
    __slots__ = ("batch", "done", "error")

    def __init__(self, batch: Any) -> None:
        self.batch = batch
        self.done = threading.Event()
        self.error: BaseException | None = None

    def wait(self) -> None:
        self.done.wait()
        if self.error is not None:
            raise self.error


class SyncWriter:
    """One thread that writes the synced batches handed to it, one at a time,
    so that the replica's loop does Python work (applying, answering) while
    LevelDB writes and fsyncs (plyvel releases the GIL inside the write).

    `begin` returns only once the thread has taken the batch, just before
    it calls the write: the caller waits for that on an Event (which
    releases the GIL), so the thread is not left waiting for the GIL behind
    a busy caller for a switch interval (5 ms) before its write can start.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._job: _Job | None = None
        self._taken = threading.Event()
        self._closing = False
        self.writes = 0
        self._thread = threading.Thread(target=self._run, name="leveldb-sync", daemon=True)
        self._thread.start()

    def begin(self, batch: Any) -> _Job:
        job = _Job(batch)
        with self._cond:
            if self._closing:
                raise RuntimeError("the sync writer is closed")
            if self._job is not None:
                raise RuntimeError("one synced batch at a time: wait() for the last one first")
            self._taken.clear()
            self._job = job
            self._cond.notify()
        self._taken.wait()
        return job

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._closing:
                    self._cond.wait()
                if self._job is None:
                    return
                job = self._job
            self._taken.set()
            try:
                job.batch.write()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting loop
                job.error = exc
            self.writes += 1
            with self._cond:
                self._job = None
            job.done.set()

    def close(self, timeout: float = 10.0) -> None:
        """Lets the batch in hand finish; no more are taken."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
