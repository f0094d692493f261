"""The docker-compose three-replica cluster, built and run for real.

One scenario, in order (each step depends on the one before; one test, so
that a machine without docker reports one skip line):
  0. the compose file is valid for the compose command in use (v1 or v2).
  1. `compose up -d` under a unique project name, with the client ports
     published on free 127.0.0.1 ports (the defaults 7001..7003 may be taken
     by a development cluster); wait until the three containers are healthy
     and agree on a leader.
  2. put/get through kvctl from the host; kvctl inside the network
     (`compose run --rm kvctl ...` and `compose exec replicaN kvctl ...`).
  3. stop the leader's container; writes still succeed; a new leader.
  4. start it again; it catches up (its applied index reaches the others',
     a stale read on it alone returns the value written while it was down).
  5. `compose down` (volumes kept) and `up -d` again: new containers, data
     still there.
  6. `compose down -v`: nothing of the project is left (containers, volumes,
     network); the image is kept for later runs.
Every wait polls and is bounded; nothing sleeps a fixed time.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replica.launch import free_ports
from tests.docker.conftest import PROJECT_PREFIX, ROOT, DockerEnv

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

COMPOSE_FILE = ROOT / "docker-compose.yml"
N = 3


def _kvctl_command() -> list[str]:
    exe = Path(sys.executable).parent / "kvctl"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "client.kvctl"]


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """Polls `check` until it returns something truthy; fails after `timeout`
    seconds with the last value or exception it saw."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except Exception as exc:  # noqa: BLE001 - reported below
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last: {last}")
        time.sleep(interval)


class Cluster:
    """One compose project of docker-compose.yml, driven from the host."""

    def __init__(self, env: DockerEnv) -> None:
        self.env = env
        self.project = f"{PROJECT_PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
        self.ports = free_ports(N)
        self.cluster_arg = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        self.proc_env = dict(os.environ)
        self.proc_env.update(
            {f"PAXOSKV_CLIENT_PORT_{i + 1}": str(p) for i, p in enumerate(self.ports)}
        )
        self.proc_env["PAXOSKV_IMAGE"] = env.image
        self.proc_env.pop("KVSTORE_CLUSTER", None)
        self.kvctl_cmd = _kvctl_command()
        self.timings: dict[str, float] = {}
        self.extra_files: list[Path] = []  # compose override files (-f ... -f ...)

    # -- commands -------------------------------------------------------------

    def compose(
        self, *args: str, timeout: float = 180, check: bool = True
    ) -> subprocess.CompletedProcess:
        files = [arg for f in (COMPOSE_FILE, *self.extra_files) for arg in ("-f", str(f))]
        cmd = [*self.env.compose, *files, "-p", self.project, *args]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=self.proc_env,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)} exited {proc.returncode}:\n"
                f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
            )
        return proc

    def kvctl(
        self, *args: str, cluster: str | None = None, timeout: float = 5
    ) -> subprocess.CompletedProcess:
        cmd = [
            *self.kvctl_cmd,
            "--cluster",
            cluster or self.cluster_arg,
            "--timeout",
            str(timeout),
            *args,
        ]
        return subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            cwd=ROOT,
            env=self.proc_env,
            stdin=subprocess.DEVNULL,
        )

    def docker(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)

    # -- what the cluster says ---------------------------------------------------

    def status(self, cluster: str | None = None) -> dict[int, dict[str, str]]:
        """`kvctl status` parsed: {replica id: {column: cell}} for the replicas
        that answered."""
        proc = self.kvctl("status", cluster=cluster, timeout=3)
        lines = proc.stdout.splitlines()
        if not lines:
            return {}
        header = lines[0].split()
        rows: dict[int, dict[str, str]] = {}
        for line in lines[1:]:
            cells = line.split()
            if len(cells) == len(header) and cells[0].isdigit():
                rows[int(cells[0])] = dict(zip(header, cells, strict=True))
        return rows

    def agreed_leader(self, among: set[int] | None = None) -> int | None:
        """The leader every answering replica in `among` (default: all) names,
        with the leader itself answering as leader; else None."""
        rows = self.status()
        among = among or set(range(1, N + 1))
        if not among <= set(rows):
            return None
        leaders = {rows[i]["LEADER"] for i in among}
        if len(leaders) != 1:
            return None
        leader = leaders.pop()
        if not leader.isdigit() or int(leader) not in among:
            return None
        return int(leader) if rows[int(leader)]["ROLE"] == "leader" else None

    def container_id(self, service: str) -> str:
        """The id of the service's container ('' if none); asks the engine
        directly by compose's labels (quicker than `compose ps`, same for v1
        and v2)."""
        out = self.docker(
            "ps",
            "-a",
            "-q",
            "--no-trunc",
            "--filter",
            f"label=com.docker.compose.project={self.project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        )
        ids = out.stdout.split()
        assert len(ids) <= 1, f"several containers for {service}: {ids}"
        return ids[0] if ids else ""

    def health(self) -> dict[str, str]:
        """{service: health status} of the replica containers."""
        ids = {f"replica{i}": self.container_id(f"replica{i}") for i in range(1, N + 1)}
        result = {}
        for service, cid in ids.items():
            out = self.docker("inspect", "-f", "{{.State.Health.Status}}", cid) if cid else None
            result[service] = (
                "absent" if out is None else (out.stdout.strip() or out.stderr.strip())
            )
        return result

    def all_healthy(self) -> bool:
        return all(h == "healthy" for h in self.health().values())

    def put(self, key: str, value: str, *, deadline_s: float = 60) -> None:
        """kvctl put, retried (a new process each time) until it succeeds: a
        write during a leader change may time out once and succeed later."""

        def attempt() -> bool:
            proc = self.kvctl("put", key, value, timeout=5)
            if proc.returncode != 0:
                raise AssertionError(f"kvctl put exited {proc.returncode}: {proc.stderr.strip()}")
            return proc.stdout.strip() == "OK"

        wait_for(f"kvctl put {key} {value}", attempt, deadline_s)

    def get(self, key: str, *extra: str, cluster: str | None = None) -> str | None:
        proc = self.kvctl("get", key, *extra, cluster=cluster, timeout=5)
        if proc.returncode == 1 and "not found" in proc.stderr:
            return None
        assert proc.returncode == 0, (
            f"kvctl get {key} exited {proc.returncode}: {proc.stderr.strip()}"
        )
        return proc.stdout.rstrip("\n")

    def logs(self) -> str:
        proc = self.compose("logs", "--no-color", "--tail", "60", timeout=60, check=False)
        return proc.stdout[-8000:] + proc.stderr[-2000:]

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind, cmd in (
            ("container", ["ps", "-a", "-q", "--filter", label]),
            ("volume", ["volume", "ls", "-q", "--filter", label]),
            ("network", ["network", "ls", "-q", "--filter", label]),
        ):
            found += [f"{kind} {x}" for x in self.docker(*cmd).stdout.split()]
        return found


@pytest.fixture
def cluster(docker_env: DockerEnv):
    c = Cluster(docker_env)
    ok = False
    try:
        yield c
        ok = True
    finally:
        if not ok:
            print(f"--- compose logs of {c.project} ---\n{c.logs()}")
        c.compose("down", "-v", "--remove-orphans", "-t", "10", timeout=180, check=False)
        for name, seconds in {**docker_env.timings, **c.timings}.items():
            print(f"timing: {name}: {seconds:.1f} s")


def _timed(c: Cluster, name: str, fn: Callable[[], Any]) -> Any:
    t0 = time.monotonic()
    result = fn()
    c.timings[name] = time.monotonic() - t0
    return result


def test_cluster_survives_leader_loss_and_full_restart(cluster: Cluster) -> None:
    c = cluster
    t_start = time.monotonic()

    # 0. The compose file is valid for the compose command in use (v1 or v2).
    services = c.compose("--profile", "tools", "config", "--services", timeout=60).stdout.split()
    assert sorted(services) == ["kvctl", "replica1", "replica2", "replica3"]

    # 1. Up, healthy, one leader.
    _timed(c, "compose up -d", lambda: c.compose("up", "-d", timeout=300))
    _timed(
        c, "three containers healthy", lambda: wait_for("healthy containers", c.all_healthy, 120)
    )
    leader = _timed(c, "leader elected", lambda: wait_for("an agreed leader", c.agreed_leader, 60))

    # 2. Reads and writes from the host and from inside the network.
    c.put("greeting", "hello")
    assert c.get("greeting") == "hello"
    assert c.get("absent-key") is None
    t0 = time.monotonic()
    inside = c.compose("run", "--rm", "kvctl", "get", "greeting", timeout=120)
    assert inside.stdout.strip() == "hello", inside.stderr
    c.compose("run", "--rm", "kvctl", "put", "from-inside", "yes", timeout=120)
    assert c.get("from-inside") == "yes"
    exec_get = c.compose("exec", "-T", "replica2", "kvctl", "get", "greeting", timeout=60)
    assert exec_get.stdout.strip() == "hello"
    c.timings["kvctl inside the network (2x run --rm, 1x exec)"] = time.monotonic() - t0

    # 3. Stop the leader's container: writes still succeed, under a new leader.
    old = leader
    others = set(range(1, N + 1)) - {old}
    _timed(c, f"stop leader replica{old}", lambda: c.compose("stop", "-t", "10", f"replica{old}"))
    running = c.docker("inspect", "-f", "{{.State.Running}}", c.container_id(f"replica{old}"))
    assert running.stdout.strip() == "false"
    t0 = time.monotonic()
    c.put("after-failover", "still-writable", deadline_s=60)
    c.timings["first write after the leader stopped"] = time.monotonic() - t0
    new = wait_for("a new leader among the others", lambda: c.agreed_leader(others), 60)
    assert new != old
    for i in range(5):
        c.put(f"while-down-{i}", f"v{i}")
    assert c.get("after-failover") == "still-writable"

    # 4. Start it again: it catches up.
    c.compose("start", f"replica{old}")
    old_addr = f"127.0.0.1:{c.ports[old - 1]}"

    def caught_up() -> bool:
        rows = c.status()
        if set(rows) != set(range(1, N + 1)):
            return False
        target = max(int(rows[i]["APPLIED"]) for i in others)
        return int(rows[old]["APPLIED"]) >= target > 0

    _timed(
        c, f"replica{old} caught up", lambda: wait_for(f"replica{old} to catch up", caught_up, 90)
    )
    # A stale read on the restarted replica alone is served from its own state.
    assert c.get("while-down-4", "--stale", cluster=old_addr) == "v4"
    assert c.get("after-failover", "--stale", cluster=old_addr) == "still-writable"
    _timed(c, "all healthy again", lambda: wait_for("all healthy again", c.all_healthy, 60))

    # 5. The whole cluster down (volumes kept) and up again: data survives.
    before = {s: c.container_id(s) for s in ("replica1", "replica2", "replica3")}
    _timed(c, "compose down (keep volumes)", lambda: c.compose("down", "-t", "10", timeout=180))
    assert not c.container_id("replica1")
    _timed(c, "compose up -d again", lambda: c.compose("up", "-d", timeout=300))
    after = {s: c.container_id(s) for s in before}
    assert all(after[s] and after[s] != before[s] for s in before), (before, after)
    _timed(
        c,
        "leader after full restart",
        lambda: wait_for("a leader after restart", c.agreed_leader, 90),
    )
    assert c.get("greeting") == "hello"
    assert c.get("from-inside") == "yes"
    assert c.get("after-failover") == "still-writable"
    assert [c.get(f"while-down-{i}") for i in range(5)] == [f"v{i}" for i in range(5)]
    c.put("after-restart", "ok")
    assert c.get("after-restart") == "ok"
    _timed(
        c,
        "all healthy after restart",
        lambda: wait_for("all healthy after restart", c.all_healthy, 90),
    )

    # 6. down -v removes everything the project made.
    _timed(
        c,
        "compose down -v",
        lambda: c.compose("down", "-v", "--remove-orphans", "-t", "10", timeout=180),
    )
    assert c.leftovers() == []
    assert c.docker("image", "inspect", c.env.image).returncode == 0  # kept for later runs
    c.timings["scenario total"] = time.monotonic() - t_start


REPLACEMENT_REPLICA = """
[[replica]]
id = 4
peer = "tcp://replica4:7104"
client = "tcp://replica4:7004"
peer_bind = "tcp://*:7104"
client_bind = "tcp://*:7004"
"""

REPLACEMENT_SERVICE = """
services:
  replica4:
    image: ${{PAXOSKV_IMAGE:-paxoskv:latest}}
    hostname: replica4
    networks:
      - kvnet
    command: ["--config", "/etc/paxoskv/cluster4.toml", "--id", "4", "--data-dir", "/data",
              "--initial-cluster-state", "existing"]
    volumes:
      - replica4-data:/data
      - {config}:/etc/paxoskv/cluster4.toml:ro
    ports:
      - "127.0.0.1:{port}:7004"
volumes:
  replica4-data:
"""


def test_a_replica_whose_volume_was_deleted_is_refused_and_replaced(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Issue 12: a follower's volume is deleted; the compose file restarts it
    with `--initial-cluster-state new`, which it refuses (the others have
    history); the cluster stays available; the documented replacement
    (README, Operations: remove it, add a new id, start that one with
    `existing`, promote it once it caught up) brings the cluster back to
    three voters with every key."""
    c = cluster
    _timed(c, "compose up -d", lambda: c.compose("up", "-d", timeout=300))
    leader = wait_for("an agreed leader", c.agreed_leader, 120)
    for i in range(20):
        c.put(f"k{i}", f"v{i}")
    lost = next(i for i in range(1, N + 1) if i != leader)

    # The volume goes; compose starts the replica again, with `new`.
    c.compose("rm", "-s", "-f", f"replica{lost}", timeout=120)
    volume = f"{c.project}_replica{lost}-data"
    assert c.docker("volume", "rm", volume).returncode == 0
    c.compose("up", "-d", f"replica{lost}", timeout=120)

    def refused() -> bool:
        logs = c.compose("logs", "--no-color", f"replica{lost}", timeout=60, check=False)
        return "this is no new cluster" in logs.stdout + logs.stderr

    _timed(c, "the emptied replica refuses", lambda: wait_for("a refusal", refused, 60))
    c.put("while-refused", "yes")  # two replicas still serve
    assert c.get("while-refused") == "yes"
    c.compose("stop", "-t", "5", f"replica{lost}", timeout=60)

    # The documented replacement, with a new id.
    assert c.kvctl("member", "remove", str(lost), timeout=10).returncode == 0
    add = c.kvctl("member", "add", "4", "--peer-url", "replica4:7104",
                  "--client-url", "replica4:7004", timeout=10)  # fmt: skip
    assert add.returncode == 0, add.stderr
    config = tmp_path / "cluster4.toml"
    config.write_text((ROOT / "docker" / "cluster.toml").read_text() + REPLACEMENT_REPLICA)
    config.chmod(0o644)
    port = free_ports(1)[0]
    override = tmp_path / "replica4.yml"
    override.write_text(REPLACEMENT_SERVICE.format(config=config, port=port))
    c.extra_files.append(override)
    _timed(c, "compose up replica4", lambda: c.compose("up", "-d", "replica4", timeout=180))

    def started() -> bool:
        out = c.kvctl("member", "list", timeout=5).stdout
        return any(line.split()[:3] == ["4", "learner", "yes"] for line in out.splitlines())

    _timed(c, "replica4 caught up", lambda: wait_for("replica 4 started", started, 120))
    promote = c.kvctl("member", "promote", "4", timeout=10)
    assert promote.returncode == 0, promote.stderr
    members = c.kvctl("member", "list", timeout=5).stdout
    voters = {line.split()[0] for line in members.splitlines() if " voter " in line}
    assert voters == {str(i) for i in (1, 2, 3, 4) if i != lost}, members
    c.put("after-replace", "ok")
    four = f"127.0.0.1:{port}"
    for i in range(20):
        assert c.get(f"k{i}", "--stale", cluster=four) == f"v{i}"
    assert wait_for(
        "the write on replica 4",
        lambda: c.get("after-replace", "--stale", cluster=four) == "ok",
        30,
    )
