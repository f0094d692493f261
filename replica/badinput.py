"""Counting dropped input: bad frames from peers or clients are counted per
kind and logged once per kind, never raised (the STATUS report shows the
counts). Shared by the transport, which drops malformed frames, and the
driver, which answers malformed requests."""

from __future__ import annotations

import logging
from collections import Counter

from replica.logfmt import event

log = logging.getLogger("replica.transport")


class BadFrames:
    """Counts dropped input per kind; logs the first occurrence of each kind."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def note(self, kind: str, detail: str, level: int = logging.WARNING) -> None:
        self.counts[kind] += 1
        if self.counts[kind] == 1:
            ev = event("input_dropped", kind=kind, detail=detail)
            msg = "dropping input (%s): %s; further ones are only counted"
            log.log(level, msg, kind, detail, extra=ev)

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)
