"""The loop thread's scheduling policy, by load (Linux; `--sched-batch`).

A busy replica wakes and is woken tens of thousands of times a second: its
loop thread by ZeroMQ's I/O thread (a message arrived), the I/O thread by
the loop (a message to send), the loop by its sync writer. Under Linux's
default policy (SCHED_OTHER) a woken thread usually preempts the one that
woke it, so on a loaded machine a loop is switched out in the middle of a
drain or a run of replies, and every switch costs the cold caches of both.
Under SCHED_BATCH a woken thread does not preempt: it runs when a core is
free or the running thread blocks. On the project's 2-core machine, with
every thread of the three replicas at SCHED_BATCH during a 64-client PUT
run, the cluster's CPU per write fell by ~13 % and throughput rose by ~10 %
(the I/O threads' CPU by a third: fewer, fuller wake-ups; the loop thread
alone, or the I/O thread alone, at SCHED_BATCH changed nothing measurable);
benchmarks/README.md, "Session 16". But a woken SCHED_BATCH thread also
waits for a core that another thread holds, which added 5-10 % to a lone
client's latency with every thread at SCHED_BATCH all the time.

So the loop switches the process: to SCHED_BATCH once it was busy (not
waiting in `poll`) for at least BATCH_BUSY of a window of WINDOW_S, back to
SCHED_OTHER once it was busy for at most OTHER_BUSY of one (every thread:
`/proc/self/task`). Both policies are unprivileged, so nothing is needed in
a container. Where the call is missing or refused, the hint turns itself
off and the replica runs as before.

"Busy" is wall-clock time outside `poll`, so a loop's own fsync counts:
with one client writing, each loop is busy 40-60 % of the time on the
project's VM (the leader most), and the replicas spend most windows under
SCHED_BATCH there too. Measured in place (one cluster, 1 client, 16
alternating 2-second rounds of every thread under SCHED_BATCH and under
SCHED_OTHER, benchmarks/README.md "Session 17"): PUT p50 +33 us and GET
p50 -6 us under SCHED_BATCH, against a spread of +-100 us between rounds;
so this was left as it is rather than judged on another measure.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

log = logging.getLogger("replica.schedhint")

WINDOW_S = 0.2
"""How long the loop's busy share is measured before it is judged."""
BATCH_BUSY = 0.5
"""Busy for at least this share of a window: SCHED_BATCH."""
OTHER_BUSY = 0.3
"""Busy for at most this share of a window: back to SCHED_OTHER."""


def _set_policy(batch: bool) -> None:
    """Every thread of the process: the loop, ZeroMQ's I/O thread, the
    sync writer (the loop alone at SCHED_BATCH, or the I/O thread alone,
    changed nothing measurable)."""
    policy = os.SCHED_BATCH if batch else os.SCHED_OTHER
    param = os.sched_param(0)
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setscheduler(int(tid), policy, param)


def available() -> bool:
    """Whether this platform has SCHED_BATCH (Linux)."""
    return hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_BATCH")


class SchedulingHint:
    """Measures how much of the loop's time is spent outside `poll` and
    switches the calling thread's policy (module docstring). The loop calls
    `idle(seconds)` after each poll and `check(now)` once per iteration."""

    def __init__(
        self,
        now: float,
        enabled: bool = True,
        set_policy: Callable[[bool], None] = _set_policy,
    ) -> None:
        self.enabled = enabled
        self.batch = False
        self.switches = 0
        self._set_policy = set_policy
        self._start = now
        self._idle = 0.0

    def idle(self, seconds: float) -> None:
        self._idle += seconds

    def check(self, now: float) -> None:
        span = now - self._start
        if not self.enabled or span < WINDOW_S:
            return
        busy = 1.0 - self._idle / span
        self._start, self._idle = now, 0.0
        want = busy > OTHER_BUSY if self.batch else busy >= BATCH_BUSY
        if want == self.batch:
            return
        try:
            self._set_policy(want)
        except (OSError, AttributeError) as exc:
            log.warning("scheduling hint off: cannot set the loop's policy (%s)", exc)
            self.enabled = False
            return
        self.batch = want
        self.switches += 1
        log.debug("loop busy %.0f %% of the last %.2f s: %s", busy * 100, span,
                  "SCHED_BATCH" if want else "SCHED_OTHER")  # fmt: skip
