"""The leader profile's summary (benchmarks/profile.py): the loop thread's
samples only, and where its wall-clock time went."""

from __future__ import annotations

from benchmarks.profile import SPLIT, render, summarize

_ROOT = (
    "_run_module_as_main (<frozen runpy>:198);main (replica/server.py:603);"
    "run (replica/server.py:283);run_once (replica/server.py:302)"
)
_FINISH = f"{_ROOT};iterate (replica/driver.py:580);_finish (replica/driver.py:721)"

RAW = "\n".join(
    [
        f"{_ROOT};poll (zmq/sugar/poll.py:106) 10",
        f"{_FINISH};_persist (replica/driver.py:768);persist (replica/storage.py:210);"
        "write (replica/storage.py:321) 20",
        f"{_FINISH};_persist (replica/driver.py:768);persist (replica/storage.py:210);"
        "_batch (replica/storage.py:250) 5",
        f"{_FINISH};_finish_overlapped (replica/driver.py:742);wait (replica/storage.py:354);"
        "wait (threading.py:327) 6",
        f"{_FINISH};_finish_overlapped (replica/driver.py:741);"
        "persist_begin (replica/storage.py:231);begin (replica/storage.py:389);"
        "wait (threading.py:327) 4",
        f"{_FINISH};_answer (replica/driver.py:887);reply (replica/transport.py:373) 15",
        f"{_FINISH};_apply (replica/driver.py:805);apply (kvstore/statemachine.py:1580) 40",
        # the writer thread, idle: not the loop's
        "_bootstrap (threading.py:1002);_run (replica/storage.py:400);wait (threading.py:327) 500",
        "garbage line",
    ]
)


def test_only_the_loop_thread_counts_and_its_time_is_split() -> None:
    s = summarize(RAW)
    assert s["samples"] == 100
    assert s["loop_split"] == {
        "idle in poll": 10.0,
        "own synced batch": 20.0,
        "waiting for the writer": 10.0,
        "ZeroMQ sends": 15.0,
        "Python": 45.0,  # building the batch counts as Python, not as the sync
    }
    assert list(s["loop_split"]) == list(SPLIT)
    assert s["self_top"][0] == ["apply (statemachine.py:1580)", 40.0]
    assert ["_finish (driver.py)", 90.0] in s["inclusive_top"]
    text = render(s)
    assert "10% idle in poll, 20% own synced batch, 10% waiting for the writer" in text


def test_no_loop_samples_gives_an_empty_split() -> None:
    s = summarize("_bootstrap (threading.py:1002);wait (threading.py:327) 7\n")
    assert s["samples"] == 0 and s["loop_split"] == {} and s["self_top"] == []
    assert "wall-clock" not in render(s)
