"""benchmarks/sysinfo.py: the CPU steal share that says how contended the
host was during a run, and the table line that reports it."""

from __future__ import annotations

from benchmarks.run import render_table
from benchmarks.sysinfo import cpu_times, steal_percent
from tests.unit.test_bench_floor import table_doc

STAT = "cpu  100 5 50 900 20 3 2 40 0 0\ncpu0 50 2 25 450 10 1 1 20 0 0\nintr 1\n"


def test_cpu_times_reads_the_first_line_of_proc_stat() -> None:
    t = cpu_times(STAT)
    assert t == {
        "user": 100,
        "nice": 5,
        "system": 50,
        "idle": 900,
        "iowait": 20,
        "irq": 3,
        "softirq": 2,
        "steal": 40,
    }
    live = cpu_times()
    assert live is not None and all(v >= 0 for v in live.values())


def test_an_unreadable_stat_is_unknown() -> None:
    assert cpu_times("") is None
    assert cpu_times("intr 1 2 3 4 5 6 7 8 9\n") is None
    assert cpu_times("cpu 1 2 x 4 5 6 7 8\n") is None
    assert cpu_times("cpu 1 2 3\n") is None


def test_steal_is_a_share_of_the_time_the_cores_wanted() -> None:
    before = cpu_times(STAT)
    after = dict(before)
    after.update(user=160, system=80, idle=5000, iowait=500, steal=50)
    # wanted: 60 user + 30 system + 10 steal; idle and iowait do not count
    assert steal_percent(before, after) == 10.0
    assert steal_percent(before, before) is None  # nothing ran
    assert steal_percent(None, after) is None


def test_the_table_header_reports_steal_per_system() -> None:
    doc = table_doc(
        {},
        {
            "paxoskv": {"status": "ok", "scenarios": {}, "cpu_steal_pct": 6.25},
            "etcd": {"status": "ok", "scenarios": {}, "cpu_steal_pct": None},
        },
    )
    text = render_table(doc)
    assert "CPU steal" in text and "paxoskv 6.2 %" in text
    assert "etcd" not in text.split("CPU steal", 1)[1].splitlines()[0]  # unknown: not shown
    del doc["systems"]["paxoskv"]["cpu_steal_pct"]  # results from before the field
    assert "CPU steal" not in render_table(doc)
