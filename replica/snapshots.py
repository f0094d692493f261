"""Snapshot install: moving a state machine snapshot from one replica to
another in bounded chunks. Pure (no sockets, no disk of its own): both sides
talk to the state machine's snapshot API (kvstore/statemachine.py) and hand
the driver the messages to send.

Theory of operation
-------------------
A replica needs a snapshot when the chosen values it lacks are below a peer's
compaction point (the core says so with `Ready.install_from`). The receiving
side, `Installer`, asks that peer for chunks one at a time with
`SnapshotRequest(snapshot_id, after)`; the serving side, `Exporter`, keeps one
LevelDB snapshot (`db.snapshot()`, a consistent view at one applied index)
open per asking peer and answers each request with the next chunk after key
`after`, at most `chunk_bytes` of (key, record) pairs, so neither side ever
holds the whole state in memory and a lost chunk is asked for again by key,
not restarted.

The receiver stages each chunk with `state_machine.install_chunk` (a key range
of its own, the progress in the same batch). When the last chunk is staged
the driver makes it current: first the acceptor storage's compaction point
moves to the snapshot's index (a synced batch: the votes below it are
deleted), then `state_machine.install_finish` switches to the staged state in
one small batch, then `core.installed(index)`. In that order a crash at any
point leaves a replica that restarts either with its old state, or with a
compaction point above its applied index and the snapshot completely
staged at that index, which the restarted driver flips at once
(replica/driver.py `_finish_interrupted_install`: installing another
snapshot instead, from a peer behind that point, would leave slots in no
log at all). A crash while staging leaves it to install again (resuming
what was staged: `install_progress`). The other
order could leave votes below the applied index that were never chosen
values, which a restarted core would take for the chosen ones.

A snapshot id names the sender and the applied index of the snapshot; a
request with an id the exporter no longer has (it restarted, or timed the
export out) starts a new snapshot from the beginning, and the receiver,
seeing a new id in the reply, discards what it staged.

Chunks are retransmitted: an installer that hears nothing for
`retry_ticks` asks again; after `give_up_ticks` it abandons the install (the
core asks again at its next catch-up round). An export idle for
`idle_ticks` is closed.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from replica.messages import SnapshotChunk, SnapshotRequest

log = logging.getLogger("replica.snapshots")

_ID = struct.Struct(">QQ")  # sender replica id, applied index


class SnapshotReader(Protocol):
    index: int
    revision: int

    def chunk(
        self, after: bytes | None, max_bytes: int
    ) -> tuple[list[tuple[bytes, bytes]], bytes | None]: ...

    def close(self) -> None: ...


class SnapshotSource(Protocol):
    def snapshot_reader(self) -> SnapshotReader: ...


class SnapshotTarget(Protocol):
    @property
    def applied_index(self) -> int: ...

    def install_begin(self, snapshot_id: bytes, index: int, revision: int) -> bytes | None: ...

    def install_chunk(self, items: list[tuple[bytes, bytes]], last: bytes) -> None: ...

    def install_finish(self) -> None: ...

    def install_progress(self) -> dict[str, Any] | None: ...


@dataclass
class _Export:
    snapshot_id: bytes
    reader: SnapshotReader
    idle: int = 0


class _Exports:
    """Open snapshot readers by key; one idle for `idle_ticks` is closed."""

    _exports: dict
    _idle_ticks: int

    def tick(self) -> None:
        for key in [k for k, e in self._exports.items() if e.idle >= self._idle_ticks]:
            self._exports.pop(key).reader.close()
        for export in self._exports.values():
            export.idle += 1

    def close(self) -> None:
        for export in self._exports.values():
            export.reader.close()
        self._exports.clear()


class Exporter(_Exports):
    """Serves this replica's snapshot to the peers that ask for it."""

    def __init__(
        self, replica_id: int, source: SnapshotSource, chunk_bytes: int, idle_ticks: int
    ) -> None:
        self.id = replica_id
        self._source = source
        self._chunk_bytes = chunk_bytes
        self._idle_ticks = idle_ticks
        self._exports: dict[int, _Export] = {}

    def on_request(self, msg: SnapshotRequest) -> SnapshotChunk:
        export = self._exports.get(msg.sender)
        after = msg.after
        if export is None or export.snapshot_id != msg.snapshot_id:
            if export is not None:
                export.reader.close()
            reader = self._source.snapshot_reader()
            export = _Export(_ID.pack(self.id, reader.index), reader)
            self._exports[msg.sender] = export
            after = None  # a new snapshot starts from its first key
            log.info(
                "replica %d: sending its snapshot at index %d to replica %d",
                self.id,
                reader.index,
                msg.sender,
            )
        export.idle = 0
        reader = export.reader
        items, last = reader.chunk(after, self._chunk_bytes)
        return SnapshotChunk(
            self.id, export.snapshot_id, reader.index, reader.revision, items, last, after
        )

    @property
    def serving(self) -> list[int]:
        return sorted(self._exports)


class Installer:
    """Receives one snapshot from one peer into the state machine's staging."""

    def __init__(
        self,
        replica_id: int,
        target: SnapshotTarget,
        peer: int,
        *,
        retry_ticks: int,
        give_up_ticks: int,
    ) -> None:
        self.id = replica_id
        self.peer = peer
        self._target = target
        self._retry_ticks = retry_ticks
        self._give_up_ticks = give_up_ticks
        self._idle = 0
        self.snapshot_id = b""
        self.index = 0
        self.after: bytes | None = None
        self.bytes = 0
        self.keys = 0
        progress = target.install_progress()
        if progress is not None:  # staged before a restart: try to resume it
            self.snapshot_id = progress["snapshot_id"]
            self.index = progress["index"]
            self.after = progress["last"]
            self.bytes, self.keys = progress["bytes"], progress["keys"]

    def request(self) -> SnapshotRequest:
        return SnapshotRequest(self.id, self.snapshot_id, self.after)

    def on_chunk(self, msg: SnapshotChunk, commit_index: int) -> SnapshotRequest | int | None:
        """Stages a chunk. Returns the next request, or the snapshot's index
        when it is complete (the driver then makes it current), or None to
        ignore the chunk (stale, or a snapshot we do not need)."""
        if msg.sender != self.peer:
            return None
        if msg.snapshot_id != self.snapshot_id:
            if msg.index <= commit_index:
                return None  # we know at least as much already
            resume = self._target.install_begin(msg.snapshot_id, msg.index, msg.revision)
            self.snapshot_id, self.index = msg.snapshot_id, msg.index
            self.bytes = self.keys = 0
            self.after = resume
            self._idle = 0
            if resume is not None:  # resumed after a restart: ask on from there
                return self.request()
            log.info(
                "replica %d: installing the snapshot at index %d from replica %d",
                self.id,
                msg.index,
                msg.sender,
            )
        if msg.after != self.after:
            # Not the continuation of what we staged (a duplicate, a late
            # chunk, or a later chunk of a snapshot we just switched to):
            # staging it would skip keys. Ask for what follows ours.
            return self.request() if self.after is None else None
        self._idle = 0
        if msg.items:
            last = msg.items[-1][0]
            self._target.install_chunk(msg.items, last)
            self.after = last
            self.keys += len(msg.items)
            self.bytes += sum(len(k) + len(r) for k, r in msg.items)
        if msg.last is None:
            return self.index
        return self.request()

    def tick(self) -> SnapshotRequest | bool:
        """A request to send again, True to give up, False to keep waiting."""
        self._idle += 1
        if self._idle >= self._give_up_ticks:
            return True
        if self._idle % self._retry_ticks == 0:
            return self.request()
        return False

    def progress(self) -> dict[str, Any]:
        return {
            "from": self.peer,
            "index": self.index,
            "bytes": self.bytes,
            "keys": self.keys,
        }


class ClientExports(_Exports):
    """Snapshots streamed to clients for backups (`kvctl snapshot save`):
    the same LevelDB-snapshot readers as `Exporter`, keyed by an id handed
    to the client with the first chunk. At most `limit` at once; one idle
    for `idle_ticks` is closed (the client then starts again)."""

    def __init__(
        self, replica_id: int, source: SnapshotSource, chunk_bytes: int, idle_ticks: int, limit: int
    ) -> None:
        self.id = replica_id
        self._source = source
        self._chunk_bytes = chunk_bytes
        self._idle_ticks = idle_ticks
        self._limit = limit
        self._exports: dict[bytes, _Export] = {}
        self._next = 0

    def begin(self) -> tuple[bytes, SnapshotReader, list[tuple[bytes, bytes]], bytes | None] | None:
        """A new export at the current applied index and its first chunk
        (export id, reader, items, last key), or None when `limit` exports
        are open."""
        if len(self._exports) >= self._limit:
            return None
        reader = self._source.snapshot_reader()
        self._next += 1
        export_id = _ID.pack(self.id, self._next)
        log.info(
            "replica %d: backup export %d started at index %d", self.id, self._next, reader.index
        )
        items, last = reader.chunk(None, self._chunk_bytes)
        if last is None:
            reader.close()  # it all fit in one chunk (the reader's figures stay)
        else:
            self._exports[export_id] = _Export(export_id, reader)
        return export_id, reader, items, last

    def chunk(
        self, export_id: bytes, after: bytes | None
    ) -> tuple[SnapshotReader, list[tuple[bytes, bytes]], bytes | None] | None:
        """The next chunk of export `export_id` after key `after` (None: from
        the start), or None if this replica has no such export."""
        export = self._exports.get(export_id)
        if export is None:
            return None
        export.idle = 0
        items, last = export.reader.chunk(after, self._chunk_bytes)
        if last is None:  # the client has it all
            self._exports.pop(export_id).reader.close()
        return export.reader, items, last

    def __len__(self) -> int:
        return len(self._exports)
