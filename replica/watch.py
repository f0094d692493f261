"""WATCH requests on one replica: long polls over the client port.

A watcher asks, again and again, for the events after the last revision it
has (kvstore/events.py keeps them for a bounded retention); each request is
answered with one bounded batch of whole revisions as soon as this replica
has applied one that matches, or, after the hold time the client gave,
with none (a heartbeat that also carries how far the replica looked). So
a replica keeps nothing for a watcher between its requests but the one
request it is holding, and never sends a watcher more than one batch it
asked for: a slow watcher only slows itself, and one that falls behind
the retention is answered COMPACTED, naming the oldest revision this
replica still has. Any replica serves watches from what it has applied
(the events of a revision are the same everywhere), so the client resumes
anywhere, from its last revision, without a gap or a repeat (client/watch.py).
A request with the prev_kv flag (the request's `stale` field: see
kvstore/protocol.py Request) gets each event's previous value too, looked
up in the same event log when the reply is built (kvstore/events.py).
No I/O here: the driver calls it after each apply and each tick.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from kvstore.events import Event, EventLog
from kvstore.protocol import Request, Response, Status, WatchEvent, WatchResult

MAX_HELD_WATCHES = 4096
"""Watch requests one replica holds at once; more are answered UNAVAILABLE."""


class EventSource(Protocol):
    events: EventLog  # its floor: the oldest revision kept

    @property
    def revision(self) -> int: ...

    def watch_events(
        self, start: int, key: bytes, range_end: bytes | None, prev_kv: bool = False
    ) -> tuple[list[Event], int] | None: ...


class Watches:
    """The WATCH requests one replica holds: envelope -> (request, start,
    deadline). `reply(envelope, response)` answers one."""

    def __init__(self, source: EventSource, reply: Callable[[Any, Response], None]) -> None:
        self._source = source
        self._reply = reply
        self._held: dict[int, tuple[Any, Request, int, float]] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._held)

    def on_request(self, envelope: Any, req: Request, now: float) -> None:
        """Answers at once (events, compacted, no hold) or holds the request."""
        start = req.expected_version or 1
        if self._answer(envelope, req, start, final=req.limit == 0):
            return
        if len(self._held) >= MAX_HELD_WATCHES:
            self._reply(envelope, Response(Status.UNAVAILABLE, error="too many watchers here"))
            return
        self._next += 1
        self._held[self._next] = (envelope, req, start, now + req.limit / 1000)

    def poll(self, now: float) -> None:
        """After an apply or a tick: answers the held requests that have
        events now, and those whose hold time is over (with none)."""
        if not self._held:
            return
        revision = self._source.revision
        for wid, (envelope, req, start, deadline) in list(self._held.items()):
            due = now >= deadline
            if start > revision and not due:
                continue
            done = self._answer(envelope, req, start, final=due, wid=wid)
            if done:
                del self._held[wid]

    def _answer(
        self, envelope: Any, req: Request, start: int, final: bool, wid: int | None = None
    ) -> bool:
        """Replies when there are events (or `final`); else moves the held
        request's start past what it looked at. Returns whether it replied."""
        found = self._source.watch_events(start, req.key, req.range_end, prev_kv=req.stale)
        revision = self._source.revision
        if found is None:
            oldest = self._source.events.floor
            error = (
                f"revision {start} is compacted here: the oldest available is {oldest} "
                "(watch from there, or read the current state and watch from its revision + 1)"
            )
            self._reply(envelope, Response(Status.COMPACTED, error=error, info={"oldest": oldest}))
            return True
        events, after = found
        if not events and not final:
            if wid is not None:
                entry = self._held[wid]
                self._held[wid] = (entry[0], entry[1], after, entry[3])
            return False
        result = WatchResult(tuple(WatchEvent(*e) for e in events), after)
        self._reply(envelope, Response(Status.OK, version=revision, result=result))
        return True

    def clear(self) -> None:
        self._held.clear()
