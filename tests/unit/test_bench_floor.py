"""The PUT x1 floor mock (benchmarks/floor.py): it answers through the four
processes, cleans up after itself, and its report line says what it is."""

from __future__ import annotations

import os

import pytest

from benchmarks import floor
from benchmarks.run import build_parser, render_table, wants_floor


def test_the_mock_answers_and_leaves_nothing_behind(tmp_path) -> None:
    before = set(os.listdir(tmp_path))
    for sync in (False, True):
        r = floor.measure(seconds=0.3, sync=sync, data_dir=str(tmp_path))
        assert r["n"] > 10
        assert 0 < r["p50_ms"] <= r["p99_ms"] < 1000
        cpu = r["cpu_us_per_op"]  # three processes that receive, send (and sync) per request
        assert cpu["user"] >= 0 and cpu["sys"] >= 0 and cpu["user"] + cpu["sys"] > 0
    assert set(os.listdir(tmp_path)) == before  # the vote files and their directory are gone


def test_a_mock_that_cannot_start_is_an_error_not_a_traceback(tmp_path) -> None:
    missing = tmp_path / "not-there"
    out = floor.put1_floor(seconds=0.1, data_dir=str(missing))
    assert set(out) == {"error"}
    assert "not-there" in out["error"]
    assert floor.describe(out).startswith("PUT x1 floor: not measured (")


def test_the_report_line_gives_both_medians() -> None:
    line = floor.describe(
        {
            "hops": {"p50_ms": 0.4, "p99_ms": 0.6, "n": 9},
            "hops_fsync": {"p50_ms": 0.61, "p99_ms": 0.9, "n": 9},
        }
    )
    assert "p50 0.61 ms" in line and "hops alone 0.40" in line
    assert "CPU" not in line  # not measured: not printed
    assert floor.describe(None) is None


def test_the_report_line_gives_the_mock_replicas_cpu_when_measured() -> None:
    line = floor.describe(
        {
            "hops": {"p50_ms": 0.4, "p99_ms": 0.6, "n": 9},
            "hops_fsync": {
                "p50_ms": 0.61,
                "p99_ms": 0.9,
                "n": 9,
                "cpu_us_per_op": {"user": 180.0, "sys": 505.4},
            },
        }
    )
    assert line.endswith("its replicas' CPU per write 685 us")


def test_cpu_of_a_process_that_is_gone_is_unknown() -> None:
    assert floor._cpu_seconds([os.getpid()]) is not None
    assert floor._cpu_seconds([2**22 + 12345]) is None  # above pid_max's default ceiling


def table_doc(machine: dict, systems: dict | None = None) -> dict:
    """The least result document `render_table` prints a header for."""
    return {
        "machine": {"cores": 2, **machine},
        "config": {
            "replicas": 3,
            "value_size": 100,
            "keys": 10,
            "distribution": "uniform",
            "name": "t",
        },
        "systems": systems or {},
    }


def test_the_table_header_carries_the_floor() -> None:
    doc = table_doc(
        {
            "put1_floor": {
                "hops": {"p50_ms": 0.4, "p99_ms": 0.6, "n": 9},
                "hops_fsync": {"p50_ms": 0.6, "p99_ms": 0.9, "n": 9},
            }
        }
    )
    assert "PUT x1 floor here" in render_table(doc)


@pytest.mark.parametrize(
    ("argv", "want"), [([], None), (["--floor"], True), (["--no-floor"], False)]
)
def test_the_floor_flag(argv: list[str], want: bool | None) -> None:
    assert build_parser().parse_args(argv).floor is want


def test_the_cli_refuses_a_nonsense_duration(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        floor.main(["--seconds", "0"])
    assert exc.value.code == 2
    assert "--seconds must be positive" in capsys.readouterr().err


def test_when_the_floor_is_measured() -> None:
    both = ["paxoskv", "etcd"]
    assert wants_floor(None, "standard", ["steady", "values"], both)
    assert not wants_floor(None, "smoke", ["steady"], both)  # the test suite's runs stay short
    assert not wants_floor(None, "standard", ["values"], both)  # no PUT x1 to read it against
    assert not wants_floor(True, "standard", ["steady"], ["etcd"])  # it is a floor for ours
    assert wants_floor(True, "smoke", ["values"], both)
    assert not wants_floor(False, "standard", ["steady"], both)


def test_cpuprobe_arithmetic_and_report() -> None:
    from benchmarks import cpuprobe

    before = {"totals": {"A.x": [1_000_000, 10], "A.y": [0, 0]}, "missing": []}
    after = {"totals": {"A.x": [5_000_000, 30], "A.y": [0, 0]}, "missing": ["m.B.z"]}
    steps = cpuprobe.per_request(before, after, requests=10)
    assert steps == {
        "A.x": {"us_per_request": 400.0, "calls_per_request": 2.0, "us_per_call": 200.0}
    }
    report = cpuprobe.render(
        {
            "op": "put",
            "requests": 10,
            "replicas": {
                1: {
                    "role": "leader",
                    "loop_cpu_us_per_request": 512.0,
                    "steps": steps,
                    "missing": ["m.B.z"],
                }
            },
        }
    )
    assert "replica 1 (leader): loop thread 512 us per request" in report
    assert "A.x" in report and "not probed (not found): m.B.z" in report


def test_cpuprobe_cli_refuses_a_nonsense_window(capsys) -> None:
    from benchmarks import cpuprobe

    with pytest.raises(SystemExit) as exc:
        cpuprobe.main(["--seconds", "-1"])
    assert exc.value.code == 2
    assert "--seconds must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("clients", ["0", "-3", "2000"])
def test_cpuprobe_cli_refuses_a_nonsense_client_count(capsys, clients: str) -> None:
    from benchmarks import cpuprobe

    with pytest.raises(SystemExit) as exc:
        cpuprobe.main(["--clients", clients])
    assert exc.value.code == 2
    assert "--clients must be between 1 and 1024" in capsys.readouterr().err


class _Clock:
    """A fake monotonic clock that a fake sleep (and each reading) advance."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        assert s > 0
        self.t += s


def _readings(clock: _Clock, values: list[float | None]):
    it = iter(values)

    def read() -> float | None:
        clock.t += 3.0  # a reading takes time too
        return next(it)

    return read


def test_waiting_for_a_quiet_machine_stops_at_the_first_quiet_reading() -> None:
    clock = _Clock()
    notes: list[str] = []
    out = floor.wait_until_quiet(
        0.64,
        600,
        interval_s=60,
        note=notes.append,
        reading=_readings(clock, [0.9, None, 0.65, 0.61, 0.5]),
        sleep=clock.sleep,
        clock=clock,
    )
    assert out["met"] is True
    assert out["readings_ms"] == [0.9, None, 0.65, 0.61]  # the 0.5 never read
    assert out["waited_s"] == 3 * 63 + 3
    assert "not measured" in notes[1] and notes[-1].startswith("machine quiet: ")


def test_waiting_gives_up_after_the_maximum_without_oversleeping() -> None:
    clock = _Clock()
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock.sleep(s)

    out = floor.wait_until_quiet(
        0.6,
        100,
        interval_s=60,
        reading=_readings(clock, [0.8] * 10),
        sleep=sleep,
        clock=clock,
    )
    assert out["met"] is False
    assert slept == [60, 100 - 63 - 3]  # the last sleep ends at the deadline
    assert out["readings_ms"] == [0.8, 0.8, 0.8]
    assert out["waited_s"] == 103


def test_a_zero_wait_reads_once() -> None:
    clock = _Clock()
    out = floor.wait_until_quiet(
        0.6, 0, reading=_readings(clock, [0.7, 0.1]), sleep=clock.sleep, clock=clock
    )
    assert (out["met"], out["readings_ms"]) == (False, [0.7])


def test_run_gives_up_on_a_busy_machine_with_status_3_and_writes_nothing(
    tmp_path, monkeypatch, capsys
) -> None:
    from benchmarks import run

    calls: list[tuple] = []

    def never_quiet(threshold_ms, max_seconds, **kw):
        calls.append((threshold_ms, max_seconds))
        return {"threshold_ms": threshold_ms, "met": False, "waited_s": 5.0, "readings_ms": [0.9]}

    monkeypatch.setattr(run, "wait_until_quiet", never_quiet)
    argv = ["--suite", "smoke", "--out", str(tmp_path), "--wait-quiet", "0.6", "--wait-max", "5"]
    assert run.main(argv) == 3
    assert calls == [(0.6, 5.0)]
    err = capsys.readouterr().err
    assert "did not get quiet" in err and "lowest 0.90 ms" in err and "nothing was run" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "flags", [["--wait-quiet", "0"], ["--wait-quiet", "1", "--wait-max", "-1"]]
)
def test_run_refuses_a_nonsense_wait(flags, tmp_path, capsys) -> None:
    from benchmarks import run

    with pytest.raises(SystemExit) as e:
        run.main(["--suite", "smoke", "--out", str(tmp_path), *flags])
    assert e.value.code == 2
    assert "--wait-" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_table_header_says_how_long_the_run_waited() -> None:
    doc = table_doc(
        {
            "quiet_wait": {
                "threshold_ms": 0.62,
                "met": True,
                "waited_s": 312.4,
                "readings_ms": [0.8, None, 0.6],
            }
        }
    )
    text = render_table(doc)
    assert "started after 312 s waiting for a quiet machine" in text
    assert "--wait-quiet 0.62: floor p50 0.60 ms at the last of 3 readings" in text


def test_waiting_measures_the_real_mock(tmp_path) -> None:
    out = floor.wait_until_quiet(1000, 0, seconds=0.2, data_dir=str(tmp_path))
    assert out["met"] is True and len(out["readings_ms"]) == 1
    assert 0 < out["readings_ms"][0] < 1000
    missing = floor.wait_until_quiet(1000, 0, seconds=0.2, data_dir=str(tmp_path / "gone"))
    assert missing["met"] is False and missing["readings_ms"] == [None]  # a failure is not quiet
