"""Saving a backup from a running cluster (`kvctl snapshot save FILE`).

The first SNAPSHOT request goes to the leader, which starts an export after
a read-index round (the backup holds every write acknowledged before the
save began) and answers the first chunk; the next chunks come from that same
replica, one request each, so neither side holds the whole state. If that
replica loses the export (it restarted or timed the export out), the save
starts again from the leader, at most `attempts` times. The file format and
its checks are in kvstore/backup.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from client.client import KVClient
from client.errors import KVError
from kvstore.backup import BackupError, Chunk, Summary, Writer
from kvstore.protocol import Op, Request, Status, encode_request


def save(
    client: KVClient,
    path: str | os.PathLike[str],
    *,
    attempts: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> Summary:
    """Streams a consistent snapshot of the cluster into `path`; returns its
    summary. `progress(records, bytes)` is called after each chunk."""
    last_problem = ""
    for _ in range(attempts):
        writer = Writer(path)
        try:
            summary = _save_once(client, writer, progress)
        except _ExportLost as exc:
            writer.abort()
            last_problem = str(exc)
            continue
        except BaseException:
            writer.abort()
            raise
        return summary
    raise KVError(f"the snapshot export was lost {attempts} times: {last_problem}")


class _ExportLost(Exception):
    pass


def _save_once(
    client: KVClient, writer: Writer, progress: Callable[[int, int], None] | None
) -> Summary:
    resp = client._call(encode_request(Request(Op.SNAPSHOT)), write=False)
    if resp.status is not Status.OK or resp.value is None:
        raise KVError(resp.error or f"the leader answered {resp.status.name}")
    chunk = Chunk.unpack(resp.value)
    source = resp.leader or 0
    writer.begin(chunk.index, chunk.revision, source)
    while True:
        writer.add(chunk.items)
        if progress is not None:
            progress(writer.keys, writer.bytes)
        if chunk.last is None:
            break
        req = Request(Op.SNAPSHOT, key=chunk.last, value=chunk.snapshot_id)
        resp = client._call(encode_request(req), write=False)
        if resp.status is Status.NOT_FOUND:
            raise _ExportLost(resp.error or "no such snapshot export")
        if resp.status is not Status.OK or resp.value is None:
            raise KVError(resp.error or f"a replica answered {resp.status.name}")
        nxt = Chunk.unpack(resp.value)
        if nxt.snapshot_id != chunk.snapshot_id or nxt.index != chunk.index:
            raise _ExportLost("the export changed under the save")
        chunk = nxt
    digest = writer.finish()
    size = os.path.getsize(writer.path)
    return Summary(
        index=chunk.index,
        revision=chunk.revision,
        keys=writer.keys,
        size=size,
        sha256=digest,
        created="",
        source=source,
    )


__all__ = ["BackupError", "save"]
