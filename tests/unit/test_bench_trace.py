"""The per-request trace: replica/trace.py's records (begin, marks once,
finish writes a line, open records bounded) and benchmarks/trace.py's
join and breakdown arithmetic on hand-made records."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from benchmarks import trace as bench_trace
from replica import trace


def _tracer(every: int = 1) -> tuple[trace.Tracer, io.StringIO, list[float]]:
    now = [0.0]
    sink = io.StringIO()
    return trace.Tracer(7, every, lambda: now[0], sink), sink, now


def test_a_record_is_written_once_its_last_stage_is_noted() -> None:
    tracer, sink, now = _tracer(every=10)
    assert tracer.wants(20) and not tracer.wants(21)
    tracer.begin(20, "leader", 1.0, commands=3, proposed=1.5)
    now[0] = 2.0
    tracer.mark(20, "sent")
    now[0] = 3.0
    tracer.mark(20, "sent")  # a resend: the first mark stays
    tracer.mark(99, "sent")  # not open: ignored
    assert sink.getvalue() == "" and tracer.role_of(20) == "leader"
    tracer.finish(20, "replied", 4.0)
    (line,) = sink.getvalue().splitlines()
    assert json.loads(line) == {
        "replica": 7,
        "slot": 20,
        "role": "leader",
        "start": 1.0,
        "commands": 3,
        "proposed": 1.5,
        "sent": 2.0,
        "replied": 4.0,
    }
    assert tracer.role_of(20) is None and tracer.written == 1
    tracer.finish(20, "replied")  # closed: nothing more
    assert len(sink.getvalue().splitlines()) == 1
    with pytest.raises(ValueError):
        trace.Tracer(1, 0, lambda: 0.0, io.StringIO())


def test_open_records_are_bounded() -> None:
    tracer, _, _ = _tracer()
    for slot in range(trace.MAX_OPEN + 5):
        tracer.begin(slot, "follower", 0.0)
    assert tracer.role_of(0) is None and tracer.role_of(4) is None  # the oldest dropped
    assert tracer.role_of(5) == "follower" and tracer.role_of(trace.MAX_OPEN + 4) == "follower"


def _pair(slot: int, scale: float) -> list[dict]:
    leader = {"replica": 1, "slot": slot, "role": "leader", "commands": 4, "p2b_from": 2}
    marks = dict(
        start=0, proposed=10, sent=15, persisted=300, p2b=400, chosen_persisted=420,
        applied=470, replied=500,
    )  # fmt: skip
    leader.update({k: slot + v * scale * 1e-6 for k, v in marks.items()})
    follower = {"replica": 2, "slot": slot, "role": "follower", "commands": 4}
    follower.update(
        {k: slot + v * scale * 1e-6 for k, v in dict(start=60, persisted=330, sent=340).items()}
    )
    return [leader, follower]


def test_the_breakdown_joins_the_leader_with_the_follower_that_completed_the_quorum(
    tmp_path: Path,
) -> None:
    records = _pair(10, 1.0) + _pair(20, 1.0) + _pair(30, 3.0)
    # A third replica's record of the same slot is not the one named.
    records.append({"replica": 3, "slot": 10, "role": "follower", "start": 0, "sent": 99})
    # A leader record without its follower is left out.
    records.append({**_pair(40, 1.0)[0]})
    for rid in (1, 2, 3):
        d = tmp_path / str(rid)
        d.mkdir()
        lines = [json.dumps(r) for r in records if r["replica"] == rid]
        (d / trace.TRACE_FILE).write_text("\n".join(lines) + "\n{cut")
    found = bench_trace.collect([tmp_path / "1", tmp_path / "2", tmp_path / "3", tmp_path / "x"])
    assert len(found) == len(records)
    result = bench_trace.breakdown(found, latency_p50_ms=0.8)
    assert result["slots"] == 3 and result["commands_per_slot"] == 4
    stages = {row["stage"]: (row["p50_us"], row["p90_us"]) for row in result["stages"]}
    assert stages["to the follower (ZeroMQ, its loop)"] == (45.0, 135.0)
    assert stages["follower: fsync of its vote"] == (270.0, 810.0)
    assert stages["back to the leader (ZeroMQ, its loop)"] == (60.0, 180.0)
    assert stages["leader: own fsync (beside the path above)"] == (285.0, 855.0)
    assert stages["leader residence (request batch -> reply)"] == (500.0, 1500.0)
    assert result["outside_leader_p50_us"] == 300.0
    path = [row["p50_us"] for row in result["stages"][: len(bench_trace.STAGES)]]
    assert sum(path) == pytest.approx(500.0)  # the stages of one slot add up
    text = bench_trace.render(result, "PUT, 1 client")
    assert "follower: fsync of its vote" in text and "300.0" in text


def test_marks_read_only_what_a_run_appended_and_the_report_finds_traced_runs(
    tmp_path: Path,
) -> None:
    from benchmarks.run import traced_runs

    d = tmp_path / "r1"
    d.mkdir()
    file = d / trace.TRACE_FILE
    file.write_text(json.dumps({"slot": 1}) + "\n")
    marks = bench_trace.Marks([d, tmp_path / "absent"])
    with file.open("a") as fh:
        fh.write(json.dumps({"slot": 2}) + "\n" + '{"slot": 3, "cut')
    assert marks.since() == [{"slot": 2}]
    result = bench_trace.breakdown(_pair(10, 1.0))
    doc = {
        "systems": {
            "paxoskv": {
                "scenarios": {"steady": {"sweep": [{"label": "put x64", "trace": result}]}}
            },
            "etcd": {"scenarios": {"steady": {"sweep": [{"label": "x", "trace": result}]}}},
        }
    }
    assert traced_runs(doc) == [("paxoskv put x64", result)]
