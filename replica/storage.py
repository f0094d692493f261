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
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from typing import Any, Protocol

import msgpack

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
    ) -> None:
        """`db` is a plyvel.DB (or the simulator's MemoryDB); `on_compacted`
        is called with each new compaction point once its batch is written
        (the server reclaims the disk then: replica/reclaim.py). `writer`:
        the thread that `persist_begin` hands synced batches to (without
        one, `persist_begin` writes at once)."""
        self._db = db
        self._on_compacted = on_compacted
        self._writer = writer
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
        return state

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
        self._written(new_point)

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
    ) -> tuple[Any, bool]:
        new_point = compacted is not None and compacted > self._compacted
        wb = self._db.write_batch(sync=sync)
        if new_point:
            self._delete_below(wb, compacted)
        if promised is not None:
            wb.put(_PROMISED_KEY, msgpack.packb(list(promised)))
        for slot, (ballot, value) in votes.items():
            wb.put(
                slot_key(_VOTE_PREFIX, slot),
                _PACK([ballot[0], ballot[1], value]),
            )
        for slot, value in chosen.items():
            wb.put(slot_key(_CHOSEN_PREFIX, slot), _PACK(value))
        return wb, new_point

    def _written(self, new_point: bool) -> None:
        if new_point and self._on_compacted is not None:
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
