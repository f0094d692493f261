"""Watching keys: `KVClient.watch(...)`, an iterator of the changes to a
key or a range, in revision order, that survives leader changes and
replica crashes.

It is a sequence of long polls (replica/watch.py): each WATCH request asks
for the events from the next revision the iterator has not seen, and a
replica answers with a bounded batch of whole revisions once it has one
(or, after the hold time, with none). The iterator keeps only that
revision, so after a silence, an error or a crash it asks another replica
from the same revision (the client's lazy pirate, client/client.py): no
gap and no repeat, since the events of a revision are the same on every
replica. By default it starts just after the revision of a linearizable
read of the range, so it misses nothing written after it was created;
`start_revision` resumes from an earlier revision while the replicas keep
it (a bounded retention: `WatchCompacted` names the oldest one).

With `prev_kv` each event also carries the key's previous mod revision
and value (`WatchEvent.prev_revision`, `prev_value`), found by the replica
in its event log when it answers: `prev_value` is None for a key created
(`prev_revision` 0) and for one whose previous revision is no longer kept
(`prev_revision` > 0); `PREV_UNKNOWN` when the replica cannot tell (an
event, or a replica, of the release before previous values).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from client.errors import ClusterUnavailable, KVError
from client.txn import range_args
from kvstore.protocol import PREV_UNKNOWN, Op, Status, WatchEvent, WatchResult

if TYPE_CHECKING:
    from client.client import KVClient

__all__ = ["PUT", "DELETE", "PREV_UNKNOWN", "WatchCompacted", "WatchEvent", "watch"]

PUT, DELETE = 0, 1


class WatchCompacted(KVError):
    """The revision asked for is older than the replicas keep; `oldest` is
    the oldest they have."""

    def __init__(self, message: str, oldest: int) -> None:
        super().__init__(message)
        self.oldest = oldest


def watch(
    kv: KVClient,
    key: bytes | str,
    range_end: bytes | str | None = None,
    *,
    prefix: bool = False,
    from_key: bool = False,
    start_revision: int | None = None,
    prev_kv: bool = False,
    hold: float = 1.0,
    until: float | None = None,
    poller: KVClient | None = None,
) -> Iterator[WatchEvent]:
    """The changes to the range, forever (see the module doc), with
    previous values if `prev_kv`. `hold`: how long a replica may keep one
    request waiting for an event. `until`: a
    time.monotonic() deadline after which the iterator ends (checked after
    each poll, so it may end up to `hold` late; client/lock.py waits so).
    `poller`: the client that sends the polls (default `poller_for(kv,
    hold)`; closed at the end), given by kvctl watch to tell which replica
    answered (its -w json header)."""
    start, end = range_args(key, range_end, prefix=prefix, from_key=from_key)
    if start_revision is None:
        start_revision = kv.range(start, end, count_only=True).revision + 1
    if poller is None:
        poller = poller_for(kv, hold)
    hold_ms = int(hold * 1000)
    with poller:
        revision = start_revision
        while True:
            try:
                resp = poller._request(
                    Op.WATCH,
                    start,
                    range_end=end,
                    expected_version=revision,
                    limit=hold_ms,
                    stale=prev_kv,  # WATCH's prev_kv flag (kvstore/protocol.py Request)
                )
            except ClusterUnavailable:
                if until is not None and time.monotonic() >= until:
                    return
                continue  # a failover, a partition: ask again, from the same revision
            if resp.status is Status.COMPACTED:
                oldest = int((resp.info or {}).get("oldest", 0))
                raise WatchCompacted(resp.error or f"revision {revision} is compacted", oldest)
            result = resp.result
            if not isinstance(result, WatchResult):
                raise KVError(f"the replica answered a watch without events ({resp.status.name})")
            yield from result.events
            revision = max(revision, result.next_revision)
            if until is not None and time.monotonic() >= until:
                return


def poller_for(kv: KVClient, hold: float = 1.0) -> KVClient:
    """A client for the polls of a watch: a sibling of `kv` (its own
    socket) whose attempts wait `hold` longer than kv's."""
    return kv._sibling(kv.timeout, attempt_timeout=hold + kv.attempt_timeout)
