"""The loop's scheduling hint (replica/schedhint.py): SCHED_BATCH while the
loop is busy, the default policy otherwise, judged once per window."""

from __future__ import annotations

import subprocess
import sys

import pytest

from replica import schedhint
from replica.schedhint import BATCH_BUSY, OTHER_BUSY, WINDOW_S, SchedulingHint


class Policy:
    """A fake `set_policy` that records what it was asked."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[bool] = []
        self.fail = fail

    def __call__(self, batch: bool) -> None:
        if self.fail:
            raise PermissionError("not allowed here")
        self.calls.append(batch)


def _window(hint: SchedulingHint, start: float, busy: float) -> float:
    """One window (a little longer than WINDOW_S) in which the loop was busy
    for `busy` of the time."""
    span = WINDOW_S + 0.01
    hint.idle(span * (1.0 - busy))
    end = start + span
    hint.check(end)
    return end


def test_a_busy_loop_switches_to_batch_and_back_when_it_calms_down() -> None:
    policy = Policy()
    hint = SchedulingHint(0.0, set_policy=policy)
    now = _window(hint, 0.0, BATCH_BUSY - 0.05)
    assert policy.calls == [] and not hint.batch  # not busy enough
    now = _window(hint, now, BATCH_BUSY + 0.05)
    assert policy.calls == [True] and hint.batch
    # Between the two thresholds it stays where it is (no flapping).
    now = _window(hint, now, (BATCH_BUSY + OTHER_BUSY) / 2)
    assert policy.calls == [True]
    now = _window(hint, now, OTHER_BUSY - 0.05)
    assert policy.calls == [True, False] and not hint.batch
    now = _window(hint, now, (BATCH_BUSY + OTHER_BUSY) / 2)
    assert policy.calls == [True, False] and hint.switches == 2


def test_nothing_is_judged_before_a_window_has_passed() -> None:
    policy = Policy()
    hint = SchedulingHint(0.0, set_policy=policy)
    for i in range(1, 10):  # busy all the time, but only WINDOW_S * 0.9 so far
        hint.check(WINDOW_S * 0.1 * i)
    assert policy.calls == []
    hint.check(WINDOW_S + 0.01)
    assert policy.calls == [True]


def test_a_refused_policy_turns_the_hint_off() -> None:
    hint = SchedulingHint(0.0, set_policy=Policy(fail=True))
    _window(hint, 0.0, 1.0)
    assert not hint.enabled and not hint.batch
    _window(hint, WINDOW_S, 1.0)  # and it does not try again
    assert hint.switches == 0


def test_a_disabled_hint_never_switches() -> None:
    policy = Policy()
    hint = SchedulingHint(0.0, enabled=False, set_policy=policy)
    _window(hint, 0.0, 1.0)
    assert policy.calls == []


_CHILD = """
import os, threading
from replica import schedhint
stop = threading.Event()
worker = threading.Thread(target=stop.wait)
worker.start()
tid = worker.native_id
schedhint._set_policy(True)
batch = (os.sched_getscheduler(0), os.sched_getscheduler(tid))
schedhint._set_policy(False)
other = (os.sched_getscheduler(0), os.sched_getscheduler(tid))
stop.set()
worker.join()
print(batch == (os.SCHED_BATCH,) * 2, other == (os.SCHED_OTHER,) * 2)
"""


@pytest.mark.skipif(not schedhint.available(), reason="SCHED_BATCH is Linux's")
def test_the_real_policy_switch_covers_every_thread_of_the_process() -> None:
    """In a child process (the test runner's threads stay as they are): a
    thread started before the switch is switched too, and back."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["True", "True"], done.stdout + done.stderr
