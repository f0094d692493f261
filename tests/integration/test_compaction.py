"""Log compaction and snapshot install with real replica processes.

A follower killed and restarted after 200,000 writes (far past the retained
tail) catches up by installing the leader's snapshot and then holds the
leader's data; the same with the follower killed by SIGKILL in the middle of
the install; compaction while clients write never fails a request. The
cluster config's `[compaction]` table makes every replica compact every few
hundred slots, so all of it happens within seconds.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from benchmarks.driver import RunSpec
from benchmarks.harness import run_workload
from benchmarks.workload import PUT, WorkloadSpec, key_name
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.timeout(600)


def _compacting_cluster(root: Path, chunk_bytes: int = 256 * 1024) -> Cluster:
    cluster = Cluster(root, 3)
    with open(cluster.config_path, "a", encoding="utf-8") as fh:
        fh.write(
            "\n[compaction]\nlog_slots = 500\nretained_slots = 100\n"
            f"snapshot_chunk_bytes = {chunk_bytes}\n"
        )
    return cluster


def _write(cluster: Cluster, ops: int, keys: int, clients: int = 32) -> dict[str, Any]:
    """`ops` PUTs over `keys` keys through the benchmark load generator."""
    leader = cluster.wait_for_leader()
    spec = RunSpec(
        system="paxoskv",
        endpoints={r.id: r.client for r in cluster.replicas if cluster.is_running(r.id)},
        leader=leader,
        clients=clients,
        workload=WorkloadSpec(mix={PUT: 1.0}, keys=keys, value_size=100, seed=7),
        duration=None,
        ops=ops,
        warmup=0.0,
        attempt_timeout=5.0,
    )
    return run_workload(spec, workers=2)


def _failed(result: dict[str, Any]) -> dict[str, int]:
    """Requests that ended in an error. An attempt that timed out on a busy
    machine is retried with the same sequence number (exactly once), so it
    fails nothing by itself."""
    return {kind: n for kind, n in result["errors"].items() if kind != "attempt timeout"}


def _status(cluster: Cluster, rid: int) -> dict[str, Any] | None:
    for row in cluster.status():
        if row.get("id") == rid:
            return row
    return None


def _caught_up(cluster: Cluster, rid: int) -> bool:
    rows = {row["id"]: row for row in cluster.status() if "id" in row}
    leader = next((r for r in rows.values() if r.get("role") == "leader"), None)
    me = rows.get(rid)
    return bool(leader and me and me["applied_index"] >= leader["commit_index"])


def _same_data_everywhere(cluster: Cluster) -> None:
    cluster.wait_applied_everywhere(30.0)
    cluster.stop()
    states = cluster.state_checksums()
    assert len({(s.applied_index, s.checksum, s.keys) for s in states}) == 1, states


def _kill_a_follower_and_write(cluster: Cluster, writes: int, keys: int) -> tuple[int, int]:
    leader = cluster.wait_for_leader()
    follower = next(rid for rid in cluster.ids if rid != leader)
    cluster.kill(follower, signal.SIGKILL)
    result = _write(cluster, writes, keys)
    assert _failed(result) == {}, result["errors"]
    assert result["ops"] >= writes
    status = _status(cluster, leader)
    assert status is not None
    return follower, status["compacted"]


def test_a_follower_far_behind_installs_a_snapshot(tmp_path: Path) -> None:
    with _compacting_cluster(tmp_path) as cluster:
        cluster.start()
        before = _status(cluster, cluster.wait_for_leader())
        follower, compacted = _kill_a_follower_and_write(cluster, 200_000, 20_000)
        assert compacted > 10_000, "the leader compacted far past the follower"
        cluster.start_replica(follower)
        wait_for("the follower to catch up", lambda: _caught_up(cluster, follower), timeout=240)
        status = _status(cluster, follower)
        assert status is not None and status["compacted"] >= compacted > before["applied_index"]
        assert "snapshot installed" in cluster.log_path(follower).read_text()
        # Stale reads on the follower alone equal the leader's data.
        with cluster.client(first=cluster.ids.index(follower)) as kv:
            for i in range(0, 20_000, 997):
                assert kv.get(key_name(i), stale=True) is not None, i
        _same_data_everywhere(cluster)


def test_a_follower_killed_during_the_install_installs_again(tmp_path: Path) -> None:
    with _compacting_cluster(tmp_path, chunk_bytes=4096) as cluster:
        cluster.start()
        follower, _ = _kill_a_follower_and_write(cluster, 60_000, 30_000)
        cluster.start_replica(follower)

        def installing() -> bool:
            status = _status(cluster, follower)
            return bool(status and status.get("install") and status["install"]["bytes"] > 0)

        wait_for("the install to start", installing, timeout=60)
        cluster.kill(follower, signal.SIGKILL)
        cluster.start_replica(follower)
        wait_for("the follower to catch up", lambda: _caught_up(cluster, follower), timeout=240)
        assert cluster.log_path(follower).read_text().count("snapshot installed") >= 1
        _same_data_everywhere(cluster)


def test_compaction_while_clients_write_fails_no_request(tmp_path: Path) -> None:
    with _compacting_cluster(tmp_path) as cluster:
        cluster.start()
        result = _write(cluster, 40_000, 500, clients=16)
        assert _failed(result) == {} and result["ops"] >= 40_000, result["errors"]
        for rid in cluster.ids:
            status = _status(cluster, rid)
            assert status is not None and status["compacted"] > 0, status
            assert status["log_size"] <= 500 + 100 + 200, status  # a bounded window
        _same_data_everywhere(cluster)
