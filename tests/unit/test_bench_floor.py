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


def test_the_table_header_carries_the_floor() -> None:
    doc = {
        "machine": {
            "cores": 2,
            "put1_floor": {
                "hops": {"p50_ms": 0.4, "p99_ms": 0.6, "n": 9},
                "hops_fsync": {"p50_ms": 0.6, "p99_ms": 0.9, "n": 9},
            },
        },
        "config": {
            "replicas": 3,
            "value_size": 100,
            "keys": 10,
            "distribution": "uniform",
            "name": "t",
        },
        "systems": {},
    }
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
