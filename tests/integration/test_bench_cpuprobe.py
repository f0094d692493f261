"""`python -m benchmarks.cpuprobe`: the replicas load the probe, every step
it names exists (a renamed method is reported, and this test fails), and
the report adds up per request."""

from __future__ import annotations

import pytest

from benchmarks import cpuprobe
from tests.harness import SERVER_MISSING

pytestmark = [pytest.mark.timeout(120), pytest.mark.skipif(SERVER_MISSING, reason="no server")]


def test_every_step_is_probed_on_every_replica() -> None:
    result = cpuprobe.measure(op="get", seconds=0.5)
    assert result["requests"] > 0
    replicas = result["replicas"]
    assert sorted(rep["role"] for rep in replicas.values()) == ["follower", "follower", "leader"]
    for rid, rep in replicas.items():
        assert rep["missing"] == [], f"replica {rid}: {rep['missing']}"
        steps = rep["steps"]
        # every replica's loop iterated and polled in the window
        for step in ("ReplicaDriver.iterate", "Poller.poll", "PaxosCore.step"):
            assert steps[step]["calls_per_request"] > 0, (rid, step)
        assert (
            steps["ReplicaDriver._finish"]["us_per_request"]
            <= (steps["ReplicaDriver.iterate"]["us_per_request"])
        )  # nested: inside iterate
    leader = next(rep for rep in replicas.values() if rep["role"] == "leader")
    assert leader["steps"]["ClientTransport.recv"]["calls_per_request"] > 0  # it took the GETs
    assert "PUT" not in cpuprobe.render(result) and "GET x1" in cpuprobe.render(result)
