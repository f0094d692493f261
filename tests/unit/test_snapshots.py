"""replica/snapshots.py: the installer stages a chunk only where it continues
what it staged, so duplicated, late or out-of-order chunks (of the snapshot
it installs, or of one it switches to) never make it skip keys (the
simulator found a replica that installed an empty store that way)."""

from __future__ import annotations

from kvstore.statemachine import KVStateMachine
from replica.inmem import MemoryDB
from replica.messages import SnapshotChunk, SnapshotRequest
from replica.snapshots import Exporter, Installer


def _source(keys: int) -> KVStateMachine:
    from kvstore.protocol import Op, Request, encode_request

    sm = KVStateMachine(MemoryDB())
    cid = b"c" * 16
    cmds = [
        encode_request(Request(Op.PUT, cid, i + 1, b"k%03d" % i, b"v" * 50)) for i in range(keys)
    ]
    sm.apply([(0, tuple(cmds))])
    return sm


def _chunks(exporter: Exporter, asker: int) -> list[SnapshotChunk]:
    """Every chunk of one export, in order."""
    out = []
    after, sid = None, b""
    while True:
        chunk = exporter.on_request(SnapshotRequest(asker, sid, after))
        out.append(chunk)
        sid, after = chunk.snapshot_id, chunk.last
        if chunk.last is None:
            return out


def test_a_later_chunk_first_is_not_staged_and_the_install_is_complete() -> None:
    source = _source(60)
    chunks = _chunks(Exporter(1, source, chunk_bytes=600, idle_ticks=100), asker=2)
    assert len(chunks) >= 4
    target = KVStateMachine(MemoryDB())
    inst = Installer(2, target, peer=1, retry_ticks=3, give_up_ticks=50)
    # A duplicate of the third chunk arrives before anything else.
    reply = inst.on_chunk(chunks[2], commit_index=0)
    assert isinstance(reply, SnapshotRequest) and reply.after is None
    assert inst.keys == 0
    # Then everything, with duplicates and the third chunk again out of order.
    for chunk in [chunks[0], chunks[0], chunks[2], chunks[1], chunks[1], *chunks[2:]]:
        result = inst.on_chunk(chunk, commit_index=0)
    assert result == source.applied_index
    target.install_finish()
    assert target.checksum() == source.checksum() and target.key_count() == 60
