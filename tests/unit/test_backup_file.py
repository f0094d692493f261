"""kvstore/backup.py: the backup file's round trip and every way a file can
be refused (truncated, damaged, not a backup, a failed save)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore.backup import MAGIC, BackupError, Chunk, Writer, read

ITEMS = [[(b"d%03d" % i, b"record-%d" % i) for i in range(j, j + 10)] for j in (0, 10, 20)]


def _write(path: Path) -> str:
    w = Writer(path)
    w.begin(index=41, revision=37, source=2)
    for items in ITEMS:
        w.add(items)
    w.add([])  # an empty chunk writes nothing
    return w.finish()


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "b.snap"
    digest = _write(path)
    assert not (tmp_path / "b.snap.part").exists()
    summary, chunks = read(path)
    assert (summary.index, summary.revision, summary.keys, summary.source) == (41, 37, 30, 2)
    assert summary.sha256 == digest and summary.size == path.stat().st_size
    assert list(chunks) == ITEMS
    assert "revision: 37" in summary.lines()


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda raw: raw[:-5], "truncated|damaged"),
        (lambda raw: raw[: len(raw) // 2], "truncated|damaged"),
        (lambda raw: raw[:40] + bytes([raw[40] ^ 1]) + raw[41:], "damaged|header"),
        (lambda raw: b"NOTASNAP" + raw[8:], "not a kvstore snapshot"),
        (lambda raw: b"", "not a kvstore snapshot"),
    ],
)
def test_bad_files_are_refused(tmp_path: Path, mangle, message: str) -> None:  # noqa: ANN001
    good = tmp_path / "good.snap"
    _write(good)
    bad = tmp_path / "bad.snap"
    bad.write_bytes(mangle(good.read_bytes()))
    with pytest.raises(BackupError, match=message):
        read(bad)


def test_a_failed_save_leaves_no_file(tmp_path: Path) -> None:
    w = Writer(tmp_path / "x.snap")
    w.begin(1, 1, 1)
    w.add(ITEMS[0])
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BackupError, match="cannot read"):
        read(tmp_path / "x.snap")


def test_chunk_codec() -> None:
    chunk = Chunk(b"id", 5, 4, [(b"k", b"v")], b"k")
    assert Chunk.unpack(chunk.pack()) == chunk
    assert Chunk.unpack(Chunk(b"id", 5, 4, [], None).pack()).last is None
    with pytest.raises(BackupError):
        Chunk.unpack(b"\x93\x01\x02\x03")
    assert MAGIC.startswith(b"KVSNAP")
