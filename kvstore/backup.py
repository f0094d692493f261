"""Backups: the snapshot file that `kvctl snapshot save` writes and
`kvstore-admin snapshot restore` reads, and the chunk a replica sends for it.

A backup is the state machine's snapshot at one applied index (the KV data,
the sessions and the metadata, as the records the state machine keeps in
LevelDB: the same items a snapshot install streams between replicas),
fetched from the leader in chunks of at most ~1 MiB after a read-index
round (so it holds every write acknowledged before the save began), and
written as a stream of msgpack objects:

    MAGIC (8 bytes)
    header   {"format": 1, "index": I, "revision": R, "created": "...", "source": id}
    chunk    [[key, record], ...]            (zero or more)
    trailer  {"end": true, "keys": N, "bytes": B, "sha256": "hex"}

`sha256` covers every byte before the trailer (magic, header and chunks),
so a truncated, damaged or edited file is refused. `save` writes FILE.part,
fsyncs it and renames it to FILE: a failed save leaves no FILE.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

MAGIC = b"KVSNAP\x00\x01"
FORMAT = 1


class BackupError(Exception):
    """A backup file that cannot be used: one line for the operator."""


@dataclass(frozen=True)
class Chunk:
    """One reply to a SNAPSHOT request: a piece of the snapshot `snapshot_id`
    (taken at `index`, `revision`), and the key to ask after for the next
    piece (None: this was the last)."""

    snapshot_id: bytes
    index: int
    revision: int
    items: list[tuple[bytes, bytes]]
    last: bytes | None

    def pack(self) -> bytes:
        return msgpack.packb(
            [self.snapshot_id, self.index, self.revision, [list(i) for i in self.items], self.last],
            use_bin_type=True,
        )

    @classmethod
    def unpack(cls, raw: bytes) -> Chunk:
        try:
            sid, index, revision, items, last = msgpack.unpackb(raw, raw=False)
            pairs = [(bytes(k), bytes(v)) for k, v in items]
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise BackupError(f"a snapshot chunk from the replica is malformed: {exc}") from None
        if (
            not isinstance(sid, bytes)
            or not isinstance(index, int)
            or not isinstance(revision, int)
        ):
            raise BackupError("a snapshot chunk from the replica is malformed")
        if last is not None and not isinstance(last, bytes):
            raise BackupError("a snapshot chunk from the replica is malformed")
        return cls(sid, index, revision, pairs, last)


@dataclass(frozen=True)
class Summary:
    """What `snapshot status` prints."""

    index: int
    revision: int
    keys: int
    size: int
    sha256: str
    created: str
    source: int

    def lines(self) -> list[str]:
        return [
            f"revision: {self.revision}",
            f"applied index: {self.index}",
            f"records: {self.keys}",
            f"size: {self.size} bytes",
            f"sha256: {self.sha256}",
            f"created: {self.created} (from replica {self.source})",
        ]


class Writer:
    """Writes one backup file: `begin`, `add` per chunk, `finish`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self._file: BinaryIO = open(self.part, "wb")  # noqa: SIM115 - closed in finish/abort
        self._hash = hashlib.sha256()
        self.keys = 0
        self.bytes = 0
        self._write(MAGIC)

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)

    def begin(self, index: int, revision: int, source: int) -> None:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        header = {"format": FORMAT, "index": index, "revision": revision,
                  "created": created, "source": source}  # fmt: skip
        self._write(msgpack.packb(header, use_bin_type=True))

    def add(self, items: list[tuple[bytes, bytes]]) -> None:
        if items:
            self._write(msgpack.packb([list(i) for i in items], use_bin_type=True))
            self.keys += len(items)
            self.bytes += sum(len(k) + len(v) for k, v in items)

    def finish(self) -> str:
        """Writes the trailer, syncs, renames into place; returns the checksum."""
        digest = self._hash.hexdigest()
        trailer = {"end": True, "keys": self.keys, "bytes": self.bytes, "sha256": digest}
        self._file.write(msgpack.packb(trailer, use_bin_type=True))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.part, self.path)
        return digest

    def abort(self) -> None:
        self._file.close()
        self.part.unlink(missing_ok=True)


def read(path: str | os.PathLike[str]) -> tuple[Summary, Iterator[list[tuple[bytes, bytes]]]]:
    """Checks a backup file completely (format, checksum, counts); returns its
    summary and an iterator over its chunks (which reads the file again)."""
    summary = _scan(path)
    return summary, _chunks(path)


def _open(path: str | os.PathLike[str]) -> BinaryIO:
    try:
        f = open(path, "rb")  # noqa: SIM115 - the callers close it
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    if f.read(len(MAGIC)) != MAGIC:
        f.close()
        raise BackupError(f"{path} is not a kvstore snapshot file")
    return f


def _objects(f: BinaryIO, path: object) -> Iterable[tuple[Any, int]]:
    """(object, offset in the file where it starts) for each msgpack object."""
    unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=64 << 20)
    try:
        while True:
            at = len(MAGIC) + unpacker.tell()
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                return
            yield obj, at
    except (ValueError, msgpack.UnpackException) as exc:
        raise BackupError(f"{path} is damaged: {exc}") from None


def _scan(path: str | os.PathLike[str]) -> Summary:
    size = os.path.getsize(path) if os.path.exists(path) else 0
    with _open(path) as f:
        objects = iter(_objects(f, path))
        header, _ = next(objects, (None, 0))
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise BackupError(f"{path} has no valid header (format {FORMAT} expected)")
        keys = nbytes = 0
        trailer, trailer_at = None, 0
        for obj, at in objects:
            if isinstance(obj, dict):
                trailer, trailer_at = obj, at
                break
            if not isinstance(obj, list):
                raise BackupError(f"{path} is damaged: unexpected object at byte {at}")
            keys += len(obj)
            nbytes += sum(len(k) + len(v) for k, v in obj)
        if trailer is None or not trailer.get("end"):
            raise BackupError(f"{path} is truncated: no trailer")
        f.seek(0)
        digest = hashlib.sha256()
        remaining = trailer_at
        while remaining:
            block = f.read(min(remaining, 1 << 20))
            if not block:
                break
            digest.update(block)
            remaining -= len(block)
        if trailer.get("sha256") != digest.hexdigest():
            raise BackupError(f"{path} is damaged: its checksum does not match")
        if trailer.get("keys") != keys or trailer.get("bytes") != nbytes:
            raise BackupError(f"{path} is damaged: its counts do not match")
    return Summary(
        index=int(header["index"]),
        revision=int(header["revision"]),
        keys=keys,
        size=size,
        sha256=digest.hexdigest(),
        created=str(header.get("created", "")),
        source=int(header.get("source", 0)),
    )


def _chunks(path: str | os.PathLike[str]) -> Iterator[list[tuple[bytes, bytes]]]:
    with _open(path) as f:
        for obj, _ in _objects(f, path):
            if isinstance(obj, dict) and obj.get("end"):
                return
            if isinstance(obj, list):
                yield [(bytes(k), bytes(v)) for k, v in obj]
