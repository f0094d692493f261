"""The local development cluster (`kvstore-cluster`) and kvctl, end to end,
with real replica processes; plus the `Cluster` test fixture itself."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from replica.launch import free_ports, is_replica_process
from tests.harness import SERVER_MISSING, Cluster

pytestmark = pytest.mark.skipif(SERVER_MISSING, reason="replica/server.py is not there yet")

BIN = Path(sys.executable).parent


def tool(name: str) -> list[str]:
    """The console script next to this Python, else `python -m`."""
    script = BIN / name
    if script.exists():
        return [str(script)]
    module = {"kvctl": "client.kvctl", "kvstore-cluster": "client.localcluster"}[name]
    return [sys.executable, "-m", module]


def run(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*tool(name), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def free_port_ranges(n: int) -> tuple[int, int]:
    """(client base, peer base) for `kvstore-cluster start`: n free ports each."""
    ports = free_ports(2 * n, consecutive=True)
    return ports[0], ports[n]


@pytest.fixture
def cluster_dir(tmp_path: Path) -> Iterator[Path]:
    """A cluster directory; whatever runs from it is stopped afterwards."""
    root = tmp_path / "dev-cluster"
    yield root
    run("kvstore-cluster", "stop", "--dir", str(root), "--grace", "3")


def pids_of(root: Path) -> dict[int, int]:
    return {
        int(p.stem.removeprefix("replica")): int(p.read_text())
        for p in (root / "pids").glob("replica*.pid")
    }


def test_start_put_get_stop(cluster_dir: Path) -> None:
    base, peer_base = free_port_ranges(3)
    ports = ["--base-port", str(base), "--peer-base-port", str(peer_base)]
    started = run("kvstore-cluster", "start", "--dir", str(cluster_dir), *ports)
    assert started.returncode == 0, started.stderr + started.stdout
    assert "leader is replica" in started.stdout
    assert (cluster_dir / "cluster.toml").exists()
    pids = pids_of(cluster_dir)
    assert sorted(pids) == [1, 2, 3] and all(is_replica_process(p) for p in pids.values())

    again = run("kvstore-cluster", "start", "--dir", str(cluster_dir), *ports)
    assert again.returncode == 0 and "already running" in again.stdout
    assert pids_of(cluster_dir) == pids

    addrs = ",".join(f"127.0.0.1:{base + i}" for i in range(3))
    env = dict(os.environ, KVSTORE_CLUSTER=addrs)
    assert run("kvctl", "put", "greeting", "hello", env=env).stdout == "OK\n"
    assert run("kvctl", "get", "greeting", env=env).stdout == "hello\n"
    missing = run("kvctl", "get", "nope", env=env)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    status = run("kvstore-cluster", "status", "--dir", str(cluster_dir))
    assert status.returncode == 0 and status.stdout.count("leader") >= 1

    os.kill(pids[2], 9)  # start is idempotent: it brings back only replica 2
    deadline = time.monotonic() + 5
    while is_replica_process(pids[2]) and time.monotonic() < deadline:
        time.sleep(0.05)
    restarted = run("kvstore-cluster", "start", "--dir", str(cluster_dir), *ports)
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.count("started replica") == 1
    assert "started replica 2" in restarted.stdout
    assert run("kvctl", "get", "greeting", env=env).stdout == "hello\n"

    pids = pids_of(cluster_dir)
    stopped = run("kvstore-cluster", "stop", "--dir", str(cluster_dir))
    assert stopped.returncode == 0 and stopped.stdout.count("stopped replica") == 3
    assert not any(is_replica_process(p) for p in pids.values())
    assert pids_of(cluster_dir) == {}
    assert "no cluster running" in run("kvstore-cluster", "stop", "--dir", str(cluster_dir)).stdout


def test_start_refuses_busy_ports(cluster_dir: Path) -> None:
    base, peer_base = free_port_ranges(3)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 1))
        squatter.listen()
        result = run(
            "kvstore-cluster", "start", "--dir", str(cluster_dir),
            "--base-port", str(base), "--peer-base-port", str(peer_base),
        )  # fmt: skip
    assert result.returncode == 1
    assert f"{base + 1} (client port of replica 2)" in result.stderr
    assert "Traceback" not in result.stderr
    assert pids_of(cluster_dir) == {}


def test_start_with_metrics_ports(cluster_dir: Path) -> None:
    import json
    import urllib.request

    ports = free_ports(9, consecutive=True)
    base, peer_base, metrics_base = ports[0], ports[3], ports[6]
    argv = ["--base-port", str(base), "--peer-base-port", str(peer_base)]
    with socket.socket() as squatter:  # a taken metrics port is refused like the others
        squatter.bind(("127.0.0.1", metrics_base + 2))
        squatter.listen()
        busy = run("kvstore-cluster", "start", "--dir", str(cluster_dir), *argv,
                   "--metrics-base-port", str(metrics_base))  # fmt: skip
    assert busy.returncode == 1
    assert f"{metrics_base + 2} (metrics port of replica 3)" in busy.stderr
    started = run("kvstore-cluster", "start", "--dir", str(cluster_dir), *argv,
                  "--metrics-base-port", str(metrics_base))  # fmt: skip
    assert started.returncode == 0, started.stderr + started.stdout
    urls = [f"http://127.0.0.1:{metrics_base + i}/metrics" for i in range(3)]
    assert f"metrics: {' '.join(urls)}" in started.stdout
    for i in range(3):
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_base + i}/health", timeout=5) as r:
            assert r.status == 200 and json.load(r)["replica"] == i + 1


def test_fixture_kill_leader_elects_another_and_keeps_data(cluster: Cluster) -> None:
    c = cluster.client()
    for i in range(20):
        c.put(f"k{i}", f"v{i}")
    old = cluster.leader_id()
    assert old is not None
    cluster.kill(old)
    new = cluster.wait_for_leader(exclude=(old,))
    assert new != old
    assert [c.get(f"k{i}") for i in range(20)] == [f"v{i}".encode() for i in range(20)]
    c.put("after", "failover")

    cluster.restart(old)  # same data dir and ports: it rejoins and catches up
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = {row.get("id"): row for row in cluster.status()}
        applied = [row.get("applied_index") for row in rows.values()]
        if len(rows) == 3 and None not in applied and len(set(applied)) == 1:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"replica {old} did not catch up: {cluster.status()}")
    with cluster.client(first=cluster.ids.index(old)) as stale_reader:  # the restarted one
        assert stale_reader.get("after", stale=True) == b"failover"


def test_fixture_full_restart_keeps_data(cluster_factory: Callable[..., Cluster]) -> None:
    cluster = cluster_factory(3)
    c = cluster.client()
    assert c.put("durable", "yes") >= 1
    for rid in cluster.ids:
        cluster.kill(rid)
    cluster.start()
    assert cluster.client().get("durable") == b"yes"
