"""An in-memory twin of the part of plyvel's `DB` that the replica uses, with
the crash behaviour of a real disk: `MemoryDB`.

The replica's storage (replica/storage.py) and state machine
(kvstore/statemachine.py) run unchanged on it, so the simulator (tests/sim)
exercises the real acceptor codec, the real apply path and the real
sessions, only without a disk. What it models of LevelDB:

* A write batch is atomic. Writes are visible to reads at once, in order.
* A write with `sync=True` makes itself and every earlier write durable
  (LevelDB appends every batch to one log file; fsync of that file covers
  all that came before).
* `crash(keep)` is a power loss: the durable state survives, plus the first
  `keep` unsynced batches (the file system may have written back some of the
  log's tail before the power went: always a prefix, never a later batch
  without an earlier one). `keep=None` keeps them all (kill -9: the page
  cache survives a killed process).
* `sync_hook(stage)`, if set, is called with "before" and "after" around
  every synced write, so a simulator can crash the replica right there by
  raising: before, the batch and everything unsynced are in doubt; after,
  they are durable but nothing that was to follow happened.

Only what the replica uses is implemented: get, put, delete, write_batch,
iterator (prefix or start/stop with include_start/include_stop,
include_value), snapshot (get, iterator, close), close.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

_Op = tuple[bytes, bytes | None]  # (key, value), None deletes


class MemoryDB:
    """A dict with LevelDB's atomic batches, ordered iteration and crash model."""

    def __init__(self) -> None:
        self._live: dict[bytes, bytes] = {}
        self._durable: dict[bytes, bytes] = {}
        self._unsynced: list[list[_Op]] = []
        self.sync_hook: Callable[[str], None] | None = None
        self.syncs = 0

    # -- writes --

    def put(self, key: bytes, value: bytes, sync: bool = False) -> None:
        self._write([(key, value)], sync)

    def delete(self, key: bytes, sync: bool = False) -> None:
        self._write([(key, None)], sync)

    def write_batch(self, sync: bool = False, transaction: bool = False) -> MemoryWriteBatch:
        return MemoryWriteBatch(self, sync, transaction)

    def _write(self, ops: list[_Op], sync: bool) -> None:
        if sync and self.sync_hook is not None:
            self.sync_hook("before")
        _apply(self._live, ops)
        self._unsynced.append(ops)
        if sync:
            for batch in self._unsynced:
                _apply(self._durable, batch)
            self._unsynced.clear()
            self.syncs += 1
            if self.sync_hook is not None:
                self.sync_hook("after")

    # -- reads --

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        return self._live.get(key, default)

    def iterator(self, **kw: Any) -> Iterator[Any]:
        return _iterate(self._live, **kw)

    def snapshot(self) -> MemorySnapshot:
        return MemorySnapshot(dict(self._live))

    # -- lifecycle --

    @property
    def unsynced_batches(self) -> int:
        return len(self._unsynced)

    def crash(self, keep: int | None = 0) -> None:
        """Power loss (or, with keep=None, a killed process): what survives is
        the durable state plus the first `keep` unsynced batches."""
        kept = self._unsynced if keep is None else self._unsynced[:keep]
        for batch in kept:
            _apply(self._durable, batch)
        self._unsynced = []
        self._live = dict(self._durable)

    def close(self) -> None:
        pass


class MemoryWriteBatch:
    """plyvel's WriteBatch: collects puts and deletes, writes them atomically
    on `write()` or at the end of a `with` block (not after an exception in a
    transaction batch)."""

    def __init__(self, db: MemoryDB, sync: bool, transaction: bool) -> None:
        self._db = db
        self._sync = sync
        self._transaction = transaction
        self._ops: list[_Op] = []

    def put(self, key: bytes, value: bytes) -> None:
        self._ops.append((key, value))

    def delete(self, key: bytes) -> None:
        self._ops.append((key, None))

    def write(self) -> None:
        ops, self._ops = self._ops, []
        self._db._write(ops, self._sync)

    def __enter__(self) -> MemoryWriteBatch:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None or not self._transaction:
            self.write()


class MemorySnapshot:
    """A frozen copy: reads of it do not see later writes."""

    def __init__(self, data: dict[bytes, bytes]) -> None:
        self._data = data

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        return self._data.get(key, default)

    def iterator(self, **kw: Any) -> Iterator[Any]:
        return _iterate(self._data, **kw)

    def close(self) -> None:
        self._data = {}


def _apply(target: dict[bytes, bytes], ops: list[_Op]) -> None:
    for key, value in ops:
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value


def _iterate(
    data: dict[bytes, bytes],
    *,
    prefix: bytes | None = None,
    start: bytes | None = None,
    stop: bytes | None = None,
    include_start: bool = True,
    include_stop: bool = False,
    include_value: bool = True,
) -> Iterator[Any]:
    """plyvel's iterator: keys in order, within `prefix` or [start, stop)
    (plyvel refuses prefix together with start/stop, and so does this)."""
    if prefix is not None and (start is not None or stop is not None):
        raise TypeError("'prefix' cannot be used together with 'start' or 'stop'")

    def wanted(k: bytes) -> bool:
        if prefix is not None:
            return k.startswith(prefix)
        if start is not None and (k < start or (k == start and not include_start)):
            return False
        return stop is None or k < stop or (k == stop and include_stop)

    keys = sorted(k for k in data if wanted(k))
    if include_value:
        return iter([(k, data[k]) for k in keys])
    return iter(keys)
