"""Real replica clusters for integration tests (and fault tests, by import).

`Cluster` runs N replica processes on loopback, on free ports, in a
directory of its own, through the `kvstore-replica` contract
(`python -m replica.server --config F --id N --data-dir D`). It can stop,
kill (any signal), pause, resume and restart single replicas by id, find the
leader, and hand out clients.

Fixtures:
    cluster          a started 3-replica cluster (leader elected)
    cluster_factory  make(replicas=3, start=True, tick_ms=10) -> Cluster

Other test directories reuse them with, in their conftest.py:
    from tests.integration.conftest import Cluster, cluster, cluster_factory  # noqa: F401

On teardown every process is stopped (SIGKILL after a grace period) by pid,
and the cluster directory is removed unless the test failed (then its path
and the log tails are printed, to read what the replicas said).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from client.client import KVClient
from client.localcluster import find_leader, replica_command, replica_env
from kvstore.config import ReplicaAddress, display_address, write_cluster_config

SERVER_MISSING = importlib.util.find_spec("replica.server") is None


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports that were free a moment ago (bound to port 0
    all at once, so the kernel cannot hand out the same one twice)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """N replica processes on 127.0.0.1 with their files under `root`."""

    def __init__(self, root: Path, replicas: int = 3, *, tick_ms: int = 10) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tick_ms = tick_ms
        ports = free_ports(2 * replicas)
        self.replicas: list[ReplicaAddress] = []
        for i in range(replicas):
            peer, client = f"tcp://127.0.0.1:{ports[2 * i]}", f"tcp://127.0.0.1:{ports[2 * i + 1]}"
            self.replicas.append(ReplicaAddress(i + 1, peer, client, peer, client))
        self.config_path = self.root / "cluster.toml"
        write_cluster_config(self.config_path, self.replicas)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._clients: list[KVClient] = []

    # -- addresses and files --

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.replicas]

    @property
    def addresses(self) -> list[str]:
        """Client addresses "host:port", in id order."""
        return [display_address(r.client) for r in self.replicas]

    @property
    def cluster_arg(self) -> str:
        """For `kvctl --cluster` or KVSTORE_CLUSTER."""
        return ",".join(self.addresses)

    def address(self, rid: int) -> str:
        return display_address(self._replica(rid).client)

    def data_dir(self, rid: int) -> Path:
        return self.root / f"data{rid}"

    def log_path(self, rid: int) -> Path:
        return self.root / f"replica{rid}.log"

    def log_tail(self, rid: int, lines: int = 20) -> str:
        try:
            text = self.log_path(rid).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _replica(self, rid: int) -> ReplicaAddress:
        for r in self.replicas:
            if r.id == rid:
                return r
        raise KeyError(f"no replica {rid} in this cluster (ids {self.ids})")

    # -- processes --

    def start(self, *, wait: bool = True, timeout: float = 20.0) -> Cluster:
        """Starts every replica that is not running; waits for a leader."""
        for rid in self.ids:
            if not self.is_running(rid):
                self.start_replica(rid)
        if wait:
            self.wait_for_leader(timeout)
        return self

    def start_replica(self, rid: int) -> None:
        self._replica(rid)
        if self.is_running(rid):
            raise RuntimeError(f"replica {rid} is already running")
        cmd = replica_command(self.config_path, rid, self.data_dir(rid), self.tick_ms)
        with open(self.log_path(rid), "ab") as log:
            self.procs[rid] = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=replica_env(), cwd=self.root,
            )  # fmt: skip

    def is_running(self, rid: int) -> bool:
        proc = self.procs.get(rid)
        return proc is not None and proc.poll() is None

    def pid(self, rid: int) -> int:
        return self.procs[rid].pid

    def kill(self, rid: int, sig: int = signal.SIGKILL) -> None:
        """Sends `sig` (default: kill -9) to a replica; for SIGKILL waits
        until it is gone."""
        proc = self.procs[rid]
        if proc.poll() is None:
            proc.send_signal(sig)
            if sig == signal.SIGKILL:
                proc.wait(10)

    def stop_replica(self, rid: int, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`); returns the exit status."""
        proc = self.procs.get(rid)
        if proc is None:
            return None
        if proc.poll() is None:
            self.resume(rid)  # a stopped process cannot handle SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def restart(self, rid: int, *, hard: bool = True) -> None:
        """kill -9 (hard) or SIGTERM a replica, then start it again on the
        same data directory and ports."""
        if self.is_running(rid):
            if hard:
                self.kill(rid)
            else:
                self.stop_replica(rid)
        self.start_replica(rid)

    def pause(self, rid: int) -> None:
        self.kill(rid, signal.SIGSTOP)

    def resume(self, rid: int) -> None:
        self.kill(rid, signal.SIGCONT)

    def stop(self, grace: float = 3.0) -> None:
        """Stops every replica and closes the clients handed out."""
        for c in self._clients:
            c.close()
        self._clients.clear()
        for rid, proc in self.procs.items():
            if proc.poll() is None:
                self.resume(rid)
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    # -- talking to it --

    def client(self, **kwargs: Any) -> KVClient:
        """A client of the whole cluster (closed at teardown); kwargs go to
        KVClient (timeout, attempt_timeout, client_id, ...)."""
        kwargs.setdefault("timeout", 10.0)
        kwargs.setdefault("attempt_timeout", 0.5)
        c = KVClient(self.addresses, **kwargs)
        self._clients.append(c)
        return c

    def status(self, timeout: float = 0.5) -> list[dict[str, Any]]:
        """One STATUS round to every replica (see KVClient.status)."""
        with KVClient(self.addresses, timeout=timeout, attempt_timeout=timeout) as c:
            return c.status()

    def leader_id(self) -> int | None:
        """The replica that says it leads (highest ballot), or None."""
        return find_leader(self.status())

    def wait_for_leader(self, timeout: float = 20.0, *, exclude: tuple[int, ...] = ()) -> int:
        """Waits until a replica not in `exclude` leads; returns its id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rid, proc in self.procs.items():
                if proc.poll() is not None and rid not in exclude and self._unexpected_exit(proc):
                    raise RuntimeError(
                        f"replica {rid} exited with {proc.returncode}:\n{self.log_tail(rid)}"
                    )
            leader = self.leader_id()
            if leader is not None and leader not in exclude:
                return leader
            time.sleep(0.05)
        tails = "\n".join(f"--- replica {r}:\n{self.log_tail(r, 5)}" for r in self.ids)
        raise TimeoutError(f"no leader within {timeout}s\n{tails}")

    @staticmethod
    def _unexpected_exit(proc: subprocess.Popen[bytes]) -> bool:
        return proc.returncode not in (-signal.SIGKILL, -signal.SIGTERM, 0)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remembers whether each phase failed, for the fixture's teardown."""
    report = yield
    setattr(item, f"_cluster_rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "_cluster_rep_call", None)
    return rep is None or rep.failed


@pytest.fixture
def cluster_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Cluster]]:
    """make(replicas=3, *, start=True, tick_ms=10) -> Cluster; everything it
    made is stopped at teardown."""
    if SERVER_MISSING:
        pytest.skip("replica/server.py is not there yet")
    made: list[Cluster] = []

    def make(replicas: int = 3, *, start: bool = True, tick_ms: int = 10) -> Cluster:
        c = Cluster(tmp_path / f"cluster{len(made)}", replicas, tick_ms=tick_ms)
        made.append(c)
        if start:
            c.start()
        return c

    yield make
    for c in made:
        c.stop()
    if _failed(request):
        for c in made:
            print(f"\ncluster files kept in {c.root}")
            for rid in c.ids:
                print(f"--- replica {rid} log tail:\n{c.log_tail(rid)}")
    else:
        for c in made:
            shutil.rmtree(c.root, ignore_errors=True)


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    """A running 3-replica cluster with an elected leader."""
    return cluster_factory(3)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Integration tests never hang the suite: a default timeout."""
    for item in items:
        in_here = "tests/integration" in str(item.fspath).replace(os.sep, "/")
        if in_here and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(120))
