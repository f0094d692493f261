"""The value log: large values kept once, beside LevelDB (WiscKey-style).

Theory of operation
-------------------
A value of at least `min_bytes` (`[storage] value_log_min_bytes`,
VALUE_LOG_MIN_BYTES by default) that a PUT writes is not put into its
key's LevelDB record: it is appended to the value log, and the record
holds a reference to it (kvstore/statemachine.py, "Large values in the
value log"). LevelDB then keeps ~40 bytes for the key instead of the
value, so its compactions no longer rewrite the value again and again
(a 100 KiB PUT made each replica write ~9 times its size: the vote, and
the record in LevelDB's log, its flush and its compactions;
benchmarks/README.md, "Session 12"). The vote still carries the value
(the acceptor state is unchanged); it leaves LevelDB with log compaction.

Files: `values/` in the data directory, segments `<number>.vlog` of about
`segment_bytes` each, appended to in order. An entry is

    crc32 (4 bytes BE) + key length (4 bytes BE) + value length (4 bytes BE)
    + key + value

with the CRC over everything after it. A reference is `_REF`: segment
number, offset, value length, the entry's CRC and the log slot whose
command wrote the value (28 bytes), so a read checks that it found the
very entry it was given, and a lost entry can be written again from
that slot's command.

Appending does not even write: `append` computes the entry's reference
and keeps its bytes, and `flush` writes every kept entry with one
`writev` (the state machine flushes just before it writes the batch of
records that names them, which the driver does after it answered the
writers: a 100 KiB write into fresh page-cache pages took 0.1-0.3 ms of
the commit path on the test VM). `read`, `sync` and closing a segment
flush first, so a reader never misses an entry.

Durability: appending does not sync. A record that names an entry may
thus survive a power failure that the entry does not; the entry is then
restored from the chosen value of its slot, which the acceptor log still
holds, when the replica starts (`KVStateMachine.repair_values`). For that
the value log is synced before the acceptor log is compacted (the driver
calls `sync_values` before persisting a compaction point), so every entry
of a slot below the compaction point is durable; and an entry written
for another reason (the garbage collection's moves) is synced before any
batch names it. A segment is deleted only once no durable record refers
to it: the state machine's garbage collection moves the live entries of
a mostly dead segment to the end of the log, writes the records' new
references, and deletes the segment after a synced batch
(`KVStateMachine.collect_garbage`). Open snapshot readers keep segments
from being deleted (`pin`).

`MemoryValueLog` is the simulator's twin, with the crash model of a disk:
what was not synced is lost (tests/sim).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

VALUE_LOG_MIN_BYTES = 4 * 1024
"""Values at least this large go to the value log by default (0: none)."""
SEGMENT_BYTES = 16 * 1024 * 1024
"""A segment is closed once it holds about this much; the next one starts."""
VALUE_LOG_DIR = "values"
_HEADER = struct.Struct(">III")  # crc32, key length, value length
_REF = struct.Struct(">IQIIQ")  # segment, offset, value length, crc32, slot
REF_BYTES = _REF.size
_SUFFIX = ".vlog"
_OPEN_FILES = 64
_IOV_MAX = 512  # buffers per writev (Linux takes up to 1,024)


class CorruptValue(Exception):
    """A reference that does not lead to its entry: the value is lost."""


def ref_segment(ref: bytes) -> int:
    return _REF.unpack(ref)[0]


def ref_length(ref: bytes) -> int:
    """The value's length, as the reference records it."""
    return _REF.unpack(ref)[2]


def ref_slot(ref: bytes) -> int:
    """The log slot whose command wrote the value."""
    return _REF.unpack(ref)[4]


def entry_crc(key: bytes, value: bytes) -> int:
    """The CRC an entry of `key` and `value` has (and its reference)."""
    return _entry(key, value)[1]


def ref_crc(ref: bytes) -> int:
    return _REF.unpack(ref)[3]


def _entry(key: bytes, value: bytes) -> tuple[bytes, int]:
    """(header, crc) of the entry of `key` and `value`."""
    lengths = struct.pack(">II", len(key), len(value))
    crc = zlib.crc32(value, zlib.crc32(key, zlib.crc32(lengths)))
    return struct.pack(">I", crc) + lengths, crc


def _check(ref: bytes, raw: bytes) -> bytes:
    """The value of the entry `raw` read at `ref`, checked, or CorruptValue."""
    segment, offset, length, crc, _ = _REF.unpack(ref)
    if len(raw) >= _HEADER.size:
        got, key_len, value_len = _HEADER.unpack_from(raw)
        if (
            got == crc
            and value_len == length
            and len(raw) == _HEADER.size + key_len + value_len
            and zlib.crc32(memoryview(raw)[4:]) == crc
        ):
            return raw[_HEADER.size + key_len :]
    raise CorruptValue(f"value log entry {segment}:{offset} is missing or damaged")


def _entries(data: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """(offset, key, value) of the entries of a segment's bytes, in order,
    up to the first that is incomplete or damaged (a torn, unsynced tail)."""
    offset, end = 0, len(data)
    view = memoryview(data)
    while offset + _HEADER.size <= end:
        crc, key_len, value_len = _HEADER.unpack_from(data, offset)
        stop = offset + _HEADER.size + key_len + value_len
        if stop > end or zlib.crc32(view[offset + 4 : stop]) != crc:
            return
        start = offset + _HEADER.size
        yield offset, bytes(view[start : start + key_len]), bytes(view[start + key_len : stop])
        offset = stop


class _Segments:
    """What both value logs share: the segments' sizes, and deleting them
    while no snapshot reader pins them."""

    active: int
    sizes: dict[int, int]
    _pins: int
    _doomed: set[int]
    _dirty: bool

    @property
    def dirty(self) -> bool:
        """Whether entries were appended since the last `sync`."""
        return self._dirty

    def flush(self) -> None:
        """Writes the appended entries still held in memory (not synced)."""
        raise NotImplementedError

    def pin(self) -> None:
        """No segment is deleted until `unpin` (a snapshot reader is open)."""
        self._pins += 1

    def unpin(self) -> None:
        self._pins -= 1
        if self._pins == 0:
            for segment in sorted(self._doomed):
                self._unlink(segment)
            self._doomed.clear()

    def remove(self, segment: int) -> None:
        """Deletes a segment no durable record refers to (now, or once the
        last pin is released). The active segment is never removed."""
        if segment == self.active:
            raise ValueError("the active segment of the value log cannot be removed")
        self.sizes.pop(segment, None)
        if self._pins:
            self._doomed.add(segment)
        else:
            self._unlink(segment)

    def _unlink(self, segment: int) -> None:
        raise NotImplementedError

    def start_after(self, segment: int) -> None:
        """Appends go to a segment numbered above `segment` (the highest a
        record names: a segment that a power failure took whole is never
        numbered again while records still name its lost entries). Called
        at start, before any append (a log already appended to is kept)."""
        if segment >= self.active and not self.sizes.get(self.active):
            self.sizes.pop(self.active, None)
            self.active = segment + 1

    def disk_bytes(self) -> int:
        return sum(self.sizes.values())


class ValueLog(_Segments):
    """The value log of one replica: segment files in `directory`."""

    def __init__(self, directory: str | os.PathLike[str], segment_bytes: int = SEGMENT_BYTES):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.sizes: dict[int, int] = {}
        for path in self.directory.iterdir():
            if path.suffix == _SUFFIX and path.stem.isdigit():
                self.sizes[int(path.stem)] = path.stat().st_size
        # A new segment at every start: nothing is appended after a tail
        # that a crash may have torn.
        self.active = max(self.sizes, default=0) + 1
        self._fd: int | None = None
        self._size = 0  # with the entries not written yet
        self._unwritten: list[bytes] = []  # their buffers, in order
        self._dirty = False
        self._new = True  # the directory entry of the active segment is not synced
        self._readers: OrderedDict[int, int] = OrderedDict()
        self._pins = 0
        self._doomed: set[int] = set()

    def append(self, key: bytes, value: bytes, slot: int) -> bytes:
        """Appends an entry for the value `key` got from the command of log
        slot `slot` (not written until `flush`, not synced) and returns its
        reference."""
        if self._fd is not None and self._size >= self.segment_bytes:
            self._roll()
        if self._fd is None:
            path = self._path(self.active)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._size = os.fstat(self._fd).st_size
            self._new = True
        header, crc = _entry(key, value)
        offset = self._size
        self._unwritten += (header + key, value)
        self._size += _HEADER.size + len(key) + len(value)
        self.sizes[self.active] = self._size
        self._dirty = True
        return _REF.pack(self.active, offset, len(value), crc, slot)

    def flush(self) -> None:
        buffers = self._unwritten
        if not buffers:
            return
        assert self._fd is not None
        self._unwritten = []
        for start in range(0, len(buffers), _IOV_MAX):
            part = buffers[start : start + _IOV_MAX]
            if os.writev(self._fd, part) != sum(map(len, part)):
                raise OSError(f"short write to the value log segment {self.active}")

    def sync(self) -> None:
        """Makes every appended entry durable."""
        if not self._dirty:
            return
        assert self._fd is not None
        self.flush()
        os.fdatasync(self._fd)
        if self._new:
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            self._new = False
        self._dirty = False

    def _roll(self) -> None:
        self.sync()
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        self.active += 1

    def read(self, ref: bytes) -> bytes:
        """The value `ref` refers to; CorruptValue if it is not there."""
        if self._unwritten:
            self.flush()
        segment, offset, length, _, _ = _REF.unpack(ref)
        fd = self._reader(segment)
        if fd is None:
            raise CorruptValue(f"value log segment {segment} is missing")
        size = _HEADER.size + length
        head = os.pread(fd, _HEADER.size, offset)
        if len(head) == _HEADER.size:
            size += _HEADER.unpack(head)[1]
        return _check(ref, os.pread(fd, size, offset))

    def scan(self, segment: int) -> Iterator[tuple[int, bytes, bytes]]:
        """(offset, key, value) of every intact entry of `segment`, in order,
        up to a torn tail (the vote log's recovery: replica/storage.py)."""
        self.flush()
        try:
            data = self._path(segment).read_bytes()
        except FileNotFoundError:
            return iter(())
        return _entries(data)

    def _reader(self, segment: int) -> int | None:
        fd = self._readers.get(segment)
        if fd is not None:
            self._readers.move_to_end(segment)
            return fd
        try:
            fd = os.open(self._path(segment), os.O_RDONLY)
        except FileNotFoundError:
            return None
        self._readers[segment] = fd
        if len(self._readers) > _OPEN_FILES:
            os.close(self._readers.popitem(last=False)[1])
        return fd

    def _unlink(self, segment: int) -> None:
        fd = self._readers.pop(segment, None)
        if fd is not None:
            os.close(fd)
        self._path(segment).unlink(missing_ok=True)
        self.sizes.pop(segment, None)

    def close(self) -> None:
        if self._fd is not None:
            self.flush()
            os.close(self._fd)
            self._fd = None
        for fd in self._readers.values():
            os.close(fd)
        self._readers.clear()

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:08d}{_SUFFIX}"


class MemoryValueLog(_Segments):
    """`ValueLog` in memory, for the simulator: `crash()` loses every byte
    that was not synced; a synced entry survives."""

    def __init__(self, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.segment_bytes = segment_bytes
        self._data: dict[int, bytearray] = {}
        self._durable: dict[int, int] = {}  # segment -> bytes synced
        self._unwritten: list[tuple[int, bytes]] = []  # (segment, entry), not flushed
        self.sizes: dict[int, int] = {}
        self.active = 1
        self._dirty = False
        self._pins = 0
        self._doomed: set[int] = set()
        self.skip_sync = False  # the broken variant: sync() does nothing
        self.syncs = 0
        self.appends = 0
        self.removed = 0

    def restart(self) -> MemoryValueLog:
        """The log as a replica that starts again finds it (a new segment)."""
        self.active = max(self._data, default=0) + 1
        self._dirty = False
        self._pins = 0
        self._doomed.clear()
        return self

    def append(self, key: bytes, value: bytes, slot: int) -> bytes:
        data = self._data.get(self.active)
        if data is not None and self.sizes[self.active] >= self.segment_bytes:
            self.sync()
            self.active += 1
            data = None
        if data is None:
            data = self._data[self.active] = bytearray()
            self._durable.setdefault(self.active, 0)
            self.sizes[self.active] = 0
        header, crc = _entry(key, value)
        offset = self.sizes[self.active]
        entry = header + key + value
        self._unwritten.append((self.active, entry))
        self.appends += 1
        self.sizes[self.active] = offset + len(entry)
        self._dirty = True
        return _REF.pack(self.active, offset, len(value), crc, slot)

    def flush(self) -> None:
        for segment, entry in self._unwritten:
            self._data[segment] += entry
        self._unwritten.clear()

    def sync(self) -> None:
        if not self._dirty or self.skip_sync:
            return
        self.flush()
        for segment, data in self._data.items():
            self._durable[segment] = len(data)
        self._dirty = False
        self.syncs += 1

    def read(self, ref: bytes) -> bytes:
        self.flush()
        segment, offset, length, _, _ = _REF.unpack(ref)
        data = self._data.get(segment)
        if data is None:
            raise CorruptValue(f"value log segment {segment} is missing")
        head = bytes(data[offset : offset + _HEADER.size])
        size = _HEADER.size + length
        if len(head) == _HEADER.size:
            size += _HEADER.unpack(head)[1]
        return _check(ref, bytes(data[offset : offset + size]))

    def scan(self, segment: int) -> Iterator[tuple[int, bytes, bytes]]:
        self.flush()
        return _entries(bytes(self._data.get(segment, b"")))

    def _unlink(self, segment: int) -> None:
        self.removed += 1
        self._data.pop(segment, None)
        self._durable.pop(segment, None)
        self.sizes.pop(segment, None)

    def crash(self, power_loss: bool = True) -> None:
        """Power loss: every segment keeps what was synced of it, and one
        never synced is gone, its directory entry with it. A killed
        process (power_loss False) loses only the entries not flushed
        (they were in its memory): the page cache keeps the rest."""
        self._unwritten.clear()
        for segment, data in self._data.items():
            self.sizes[segment] = len(data)
        if not power_loss:
            for segment, data in self._data.items():
                self._durable[segment] = len(data)
        for segment, data in list(self._data.items()):
            durable = self._durable.get(segment, 0)
            if not durable:
                self._unlink(segment)
                self.removed -= 1  # not garbage collected
                continue
            del data[durable:]
            self.sizes[segment] = len(data)
        self._dirty = False

    def close(self) -> None:
        pass
