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


def test_many_clients_run_in_the_benchmark_workers() -> None:
    """With --clients > 1 the load comes from the benchmark's worker processes:
    the window counts their completed requests, and at 8 clients the leader
    batches, so its loop iterates less than once per request."""
    result = cpuprobe.measure(op="put", seconds=1.0, clients=8)
    assert result["clients"] == 8 and result["requests"] > 0
    leader = next(rep for rep in result["replicas"].values() if rep["role"] == "leader")
    assert leader["missing"] == []
    assert leader["steps"]["ClientTransport.recv"]["calls_per_request"] > 0
    assert leader["steps"]["KVStateMachine.apply"]["calls_per_request"] < 1
    assert "PUT x8:" in cpuprobe.render(result)
