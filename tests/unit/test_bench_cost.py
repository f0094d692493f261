"""benchmarks/cost.py: the STATUS counters of a run, the fit of the
cluster's CPU into a per-write and a per-slot cost on made-up sweeps whose
costs are known, its refusals, and the table row of the CPU per write."""

from __future__ import annotations

import pytest

from benchmarks import cost
from benchmarks.run import table_rows


def _run(
    clients: int,
    per_slot: float,
    wall: float = 10.0,
    a_us: float = 130.0,
    b_us: float = 1000.0,
    rate: float = 5000.0,
) -> dict:
    """A sweep point of `wall` seconds at `rate` writes/s, `per_slot` writes
    per slot, whose CPU is exactly a x writes + b x slots."""
    writes = int(rate * wall)
    slots = int(writes / per_slot)
    cpu = a_us * 1e-6 * writes + b_us * 1e-6 * slots
    return {
        "clients": clients,
        "wall_s": wall,
        "server_cpu_s": {1: cpu / 2, 2: cpu / 4, 3: cpu / 4},
        "commit": {"slots": slots, "writes": writes},
    }  # fmt: skip


def test_commit_counters_of_a_status_reply():
    assert cost.commit_counters({"commit_index": 12, "revision": 40, "role": "leader"}) == (12, 40)
    assert cost.commit_counters(None) is None
    assert cost.commit_counters({"commit_index": 12}) is None
    assert cost.commit_counters({"commit_index": "12", "revision": 40}) is None


def test_commit_delta_refuses_counters_that_went_back():
    assert cost.commit_delta((10, 100), (30, 500)) == {"slots": 20, "writes": 400}
    assert cost.commit_delta((10, 100), (5, 500)) is None  # another leader's index
    assert cost.commit_delta(None, (30, 500)) is None
    assert cost.commit_delta((10, 100), None) is None


def test_fit_recovers_the_costs_of_a_made_up_sweep():
    runs = [
        # below 4 writes per slot: wake-ups make a slot dearer; not in the fit
        _run(1, 1.0, rate=500, b_us=2500.0),
        _run(4, 2.0, rate=1000, b_us=2000.0),
        _run(16, 7.0, rate=3000),
        _run(64, 20.0, rate=6500),
        _run(128, 40.0, rate=8000),
    ]
    s = cost.summary(runs)
    assert s is not None
    f = s["fit"]
    assert f["us_per_write"] == pytest.approx(130.0, abs=0.5)
    assert f["us_per_slot"] == pytest.approx(1000.0, abs=2.0)
    assert f["runs"] == 3
    by = {r["clients"]: r for r in s["runs"]}
    assert by[64]["writes_per_slot"] == pytest.approx(20.0, abs=0.01)
    assert by[64]["us_per_write"] == pytest.approx(130 + 1000 / 20, abs=0.2)
    assert by[1]["us_per_slot"] == pytest.approx(by[1]["us_per_write"], abs=0.2)
    assert s["floor"]["clients"] == 128
    assert s["floor"]["us_per_write"] == pytest.approx(130 + 1000 / 40, abs=0.2)
    text = cost.render(s)
    assert "a = 130 us per write" in text and "b = 1,000 us per slot" in text
    assert "lowest: 155 us per write, at 128 clients" in text


def test_no_fit_without_three_usable_runs_at_different_batches():
    assert cost.summary([]) is None
    assert cost.summary([{"clients": 1}]) is None  # nothing to fit with
    one_busy = cost.summary([_run(1, 1.0), _run(4, 2.0), _run(64, 20.0)])
    assert one_busy is not None and one_busy["fit"] is None and len(one_busy["runs"]) == 3
    assert "needs 2 or more runs of >= 4 writes per slot" in cost.render(one_busy)
    same = cost.summary([_run(c, 5.0, wall=10.0, rate=1000.0 * c) for c in (1, 2, 3)])
    assert same is not None and same["fit"] is None  # one batch size: a and b not separable
    no_writes = _run(8, 2.0)
    no_writes["commit"] = {"slots": 0, "writes": 0}
    assert cost.points([no_writes, {**_run(8, 2.0), "commit": None}]) == []


def test_an_unphysical_fit_is_refused():
    # CPU per write that grows with the batch: no non-negative a and b explain it
    points = ((8, 4.0, 2000.0), (64, 20.0, 6000.0), (128, 40.0, 7000.0))
    runs = [_run(c, k, b_us=0.0, a_us=10.0 * k, rate=r) for c, k, r in points]
    assert cost.summary(runs)["fit"] is None


def _doc(cpu_cores: float, tput: float, clients: int = 64) -> dict:
    def system(cores: float, rate: float) -> dict:
        run = {
            "clients": clients,
            "throughput": rate,
            "latency_ms": {"p50": 1.0, "p99": 2.0, "p99.9": 3.0},
            "server_cpu_share": cores,
            "client_cpu_share": 0.3,
        }
        return {"status": "ok", "scenarios": {"steady": {"sweep": [run]}}}

    return {
        "config": {"replicas": 3, "value_size": 100, "clients": [clients], "mix": {"put": 1.0}},
        "systems": {"paxoskv": system(cpu_cores, tput), "etcd": system(1.0, 3000.0)},
    }


def test_the_cpu_per_write_row_and_its_target():
    rows = {r["key"]: r for r in table_rows(_doc(1.2, 6000.0))}
    row = rows["put64_cpu_per_write"]
    assert row["values"]["paxoskv"] == pytest.approx(200.0)
    assert row["values"]["etcd"] == pytest.approx(1.0 / 3000.0 * 1e6)
    assert row["ratio"] == pytest.approx((1e6 / 3000.0) / 200.0)
    assert row["target"] == ("<=", 100.0) and row["met"] is False
    assert len(row["label"]) <= 43
    met = {r["key"]: r for r in table_rows(_doc(0.5, 6000.0))}["put64_cpu_per_write"]
    assert met["met"] is True
    # the target is the 64 clients only
    other = {r["key"]: r for r in table_rows(_doc(1.2, 6000.0, clients=16))}
    assert other["put64_cpu_per_write"]["target"] is None


def test_report_of_a_saved_run_prints_the_cost_block(tmp_path, capsys):
    import json

    from benchmarks.run import main

    doc = _doc(1.2, 6000.0)
    doc.update(machine={"cores": 2, "cpu": "x", "memory_gib": 1, "data_fs": "ext4"}, table=[])
    doc["config"].update(distribution="uniform", keys=1000, name="standard")
    steady = doc["systems"]["paxoskv"]["scenarios"]["steady"]
    steady["cost"] = cost.summary([_run(16, 7.0, rate=3000), _run(64, 20.0, rate=6500)])
    path = tmp_path / "run.json"
    path.write_text(json.dumps(doc))
    assert main(["--report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cluster CPU per op" in out
    assert "CPU of the cluster across the PUT sweep" in out and "a = 130 us per write" in out
    assert main(["--report", str(path), "--markdown"]) == 0
    assert "across the PUT sweep" not in capsys.readouterr().out  # the table alone
