"""A per-request trace of the commit path, opt-in, for a sample of slots.

Theory of operation
-------------------
A write's latency is spent on two or three replicas, in loop iterations
that also serve everything else. A sampling profile says where a loop's
time goes, not where one request's time goes; this trace does the latter.

Every replica traces the same slots without coordination: those whose
number is a multiple of `every` (`kvstore-replica --trace-every N`; off by
default). For such a slot each replica notes the moment of each stage it
takes part in, on the host's monotonic clock (CLOCK_MONOTONIC is one clock
for every process of a Linux host, so the leader's and a follower's marks
can be subtracted when the cluster runs on one machine, as the benchmarks
do). The stages, in the order a write meets them:

  leader    `start`      the loop iteration that took the request began
                         (right after the poll returned)
            `proposed`   the slot was assigned (its batch formed)
            `sent`       its Phase2a was handed to ZeroMQ
            `persisted`  the leader's own vote was synced
            `p2b`        the iteration that processed the first Phase2b of
                         the slot began (`p2b_from`: that follower, the one
                         whose vote completed a quorum of three)
            `chosen_persisted` that iteration's sync returned
            `applied`    the slot was applied
            `replied`    its clients were answered
  follower  `start`      the iteration that took the Phase2a began
            `persisted`  its vote was synced
            `sent`       its Phase2b was handed to ZeroMQ

A record is written as one JSON line to `trace.jsonl` in the replica's data
directory once its last stage is noted: {"replica", "slot", "role",
"commands", and a mark per stage in seconds}. The benchmark harness joins
the leader's record of a slot with the record of the follower named in
`p2b_from` and reports the stage-by-stage breakdown (benchmarks/trace.py).
Cost when off: a None check per stage; when on, a dict per traced slot.
Records that never complete (a leader change) are dropped, at most
`MAX_OPEN` are kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TRACE_FILE = "trace.jsonl"
MAX_OPEN = 1_000
"""Traced slots awaiting their last stage; the oldest are dropped beyond."""


class Tracer:
    """The marks of the traced slots of one replica (see the module doc)."""

    def __init__(
        self, replica_id: int, every: int, clock: Callable[[], float], sink: IO[str]
    ) -> None:
        if every < 1:
            raise ValueError("a trace samples every N-th slot, N >= 1")
        self.replica_id = replica_id
        self.every = every
        self._clock = clock
        self._sink = sink
        self._open: dict[int, dict[str, Any]] = {}
        self.written = 0

    @classmethod
    def to_dir(
        cls, replica_id: int, every: int, clock: Callable[[], float], data_dir: Path
    ) -> Tracer:
        """A tracer appending to `data_dir`/trace.jsonl (line-buffered)."""
        sink = (data_dir / TRACE_FILE).open("a", buffering=1, encoding="utf-8")
        return cls(replica_id, every, clock, sink)

    def wants(self, slot: int) -> bool:
        return slot % self.every == 0

    def now(self) -> float:
        return self._clock()

    def begin(self, slot: int, role: str, start: float, **fields: Any) -> None:
        """Opens the record of `slot` (if not open), its first mark `start`."""
        if slot in self._open:
            return
        if len(self._open) >= MAX_OPEN:
            self._open.pop(next(iter(self._open)))
        self._open[slot] = {"replica": self.replica_id, "slot": slot, "role": role, "start": start}
        self._open[slot].update(fields)

    def mark(self, slot: int, stage: str, at: float | None = None, **fields: Any) -> None:
        """Notes `stage` of an open record (the first time only)."""
        record = self._open.get(slot)
        if record is not None and stage not in record:
            record[stage] = self._clock() if at is None else at
            record.update(fields)

    def role_of(self, slot: int) -> str | None:
        record = self._open.get(slot)
        return None if record is None else record["role"]

    def finish(self, slot: int, stage: str, at: float | None = None) -> None:
        """Notes the last stage of a record and writes it out."""
        record = self._open.pop(slot, None)
        if record is None:
            return
        record.setdefault(stage, self._clock() if at is None else at)
        self._sink.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.written += 1

    def close(self) -> None:
        self._sink.close()
