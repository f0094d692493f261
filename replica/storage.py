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
from collections.abc import Callable
from typing import Protocol

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


_PROMISED_KEY = b"a"
_VOTE_PREFIX = b"v"
_CHOSEN_PREFIX = b"c"
_COMPACTED_KEY = b"p"
_SLOT = struct.Struct(">Q")


LOG_PREFIXES = (_VOTE_PREFIX, _CHOSEN_PREFIX)
"""The prefixes a compaction deletes below its point."""


def slot_key(prefix: bytes, slot: int) -> bytes:
    return prefix + _SLOT.pack(slot)


class LevelDBStorage:
    """Acceptor state in the replica's plyvel DB (prefixes a, v, c, p)."""

    def __init__(self, db, on_compacted: Callable[[int], None] | None = None) -> None:  # noqa: ANN001
        """`db` is a plyvel.DB (or the simulator's MemoryDB); `on_compacted`
        is called with each new compaction point once its batch is written
        (the server reclaims the disk then: replica/reclaim.py)."""
        self._db = db
        self._on_compacted = on_compacted
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
        new_point = compacted is not None and compacted > self._compacted
        with self._db.write_batch(sync=sync) as wb:
            if new_point:
                self._delete_below(wb, compacted)
            if promised is not None:
                wb.put(_PROMISED_KEY, msgpack.packb(list(promised)))
            for slot, (ballot, value) in votes.items():
                wb.put(
                    slot_key(_VOTE_PREFIX, slot),
                    msgpack.packb([ballot[0], ballot[1], value], use_bin_type=True),
                )
            for slot, value in chosen.items():
                wb.put(slot_key(_CHOSEN_PREFIX, slot), msgpack.packb(value, use_bin_type=True))
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
