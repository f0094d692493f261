"""The one test harness for real replica clusters: integration, fault and
any other tier that runs replica processes uses `Cluster`.

`Cluster` runs N replica processes on loopback, on free ports, in a
directory of its own. Starting, the liveness check and stopping go through
replica/launch.py (the `kvstore-replica` contract). It can stop, kill (any
signal), pause, resume and restart single replicas by id, find the leader,
and hand out clients. tests/fault/cluster.py extends it through
`launch_options` (another module, a network namespace, a group id).

The pytest fixtures (`cluster`, `cluster_factory`) are in
tests/integration/conftest.py.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import plyvel
import pytest

from client.client import KVClient
from kvstore.config import (
    ReplicaAddress,
    display_address,
    local_cluster_config,
    write_cluster_config,
)
from kvstore.security import ClientKeys, client_keys, cluster_keys
from kvstore.statemachine import KVStateMachine
from kvstore.values import VALUE_LOG_DIR, ValueLog
from replica import launch

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15.0) -> T:
    """Polls `probe` until it returns something truthy (and returns that);
    fails the test after `timeout` seconds. The one polling helper of the
    tests that run real processes: no fixed sleep decides an outcome."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


SERVER_MISSING = importlib.util.find_spec(launch.REPLICA_MODULE) is None

_STOPPED_BY_US = (0, -signal.SIGTERM, -signal.SIGKILL)
"""Exit statuses of a replica we stopped (SIGTERM: a clean exit) or killed."""


@dataclass(frozen=True)
class ReplicaState:
    """One replica's state machine as found on disk after a clean stop."""

    rid: int
    applied_index: int
    revision: int
    checksum: str
    keys: int


class Cluster:
    """N replica processes on 127.0.0.1 with their files under `root`."""

    def __init__(
        self,
        root: Path,
        replicas: int = 3,
        *,
        tick_ms: int = 10,
        metrics: bool = False,
        curve: bool = False,
        replica_args: Sequence[str] = (),
    ) -> None:
        """`curve`: CURVE on (kvstore/security.py), keys made in root/keys:
        replicaN, server and clients/client (allowed). `replica_args`: more
        kvstore-replica options for every replica (e.g. --lease-reads)."""
        self.root = Path(root)
        self.replica_args = list(replica_args)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tick_ms = tick_ms
        ports = launch.free_ports((3 if metrics else 2) * replicas, consecutive=True)
        self.replicas: list[ReplicaAddress] = local_cluster_config(
            replicas, base_port=ports[0], peer_base_port=ports[replicas]
        )
        if metrics:  # HTTP metrics and health checks on 127.0.0.1 (replica/metrics.py)
            self.replicas = [
                replace(r, metrics=f"127.0.0.1:{port}")
                for r, port in zip(self.replicas, ports[2 * replicas :], strict=True)
            ]
        self.config_path = self.root / "cluster.toml"
        write_cluster_config(self.config_path, self.replicas)
        self.keys_dir = self.root / "keys"
        self.curve: ClientKeys | None = None
        if curve:
            table = cluster_keys(self.keys_dir, self.ids)
            with open(self.config_path, "a", encoding="utf-8") as fh:
                fh.write("\n" + table)
            self.curve = client_keys(*self.client_key_files(), env={})
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

    def metrics_address(self, rid: int) -> str:
        """host:port of replica `rid`'s metrics and health checks (metrics=True)."""
        address = self._replica(rid).metrics
        if address is None:
            raise ValueError("this cluster was made without metrics=True")
        return address

    def counter(self, rid: int, name: str) -> float:
        """The value of replica `rid`'s unlabelled metric `name` (e.g.
        "paxoskv_lease_reads_total"), read from its /metrics (metrics=True)."""
        url = f"http://{self.metrics_address(rid)}/metrics"
        with urllib.request.urlopen(url, timeout=3) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            metric, _, value = line.partition(" ")
            if metric == name or metric.startswith(name + "{"):
                return float(value)
        raise AssertionError(f"{name} is not exported")

    def write_and_read(self, client: KVClient, tag: str, keys: int = 20) -> None:
        """Puts k0.. = tag0.., then reads each back (asserting the value)."""
        for i in range(keys):
            client.put(f"k{i}", f"{tag}{i}")
        for i in range(keys):
            assert client.get(f"k{i}") == f"{tag}{i}".encode()

    def client_key_files(self) -> tuple[str, str]:
        """(client secret key file, server public key file) with curve=True,
        for KVClient(client_key=, server_key=) and kvctl."""
        return (
            str(self.keys_dir / "clients" / "client.key_secret"),
            str(self.keys_dir / "server.key"),
        )

    def data_dir(self, rid: int) -> Path:
        return self.root / f"data{rid}"

    def log_path(self, rid: int) -> Path:
        return self.root / f"replica{rid}.log"

    def log_tail(self, rid: int, lines: int = 20) -> str:
        return launch.log_tail(self.log_path(rid), lines)

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

    def launch_options(self, rid: int) -> dict[str, Any]:
        """Keywords for `launch.start_replica` beyond the config, id, data
        directory and tick (module, prefix, group, extra): `replica_args`."""
        return {"extra": self.replica_args} if self.replica_args else {}

    def start_replica(self, rid: int, *, cluster_state: str | None = "new") -> None:
        """Starts replica `rid`; `cluster_state` is its --initial-cluster-state
        (only an empty data directory looks at it: replica/datadir.py)."""
        self._replica(rid)
        if self.is_running(rid):
            raise RuntimeError(f"replica {rid} is already running")
        self.procs[rid] = launch.start_replica(
            self.config_path, rid, self.data_dir(rid), self.log_path(rid),
            tick_ms=self.tick_ms, cwd=self.root, cluster_state=cluster_state,
            **self.launch_options(rid),
        )  # fmt: skip

    def wait_ready(self, rid: int, timeout: float = 20.0) -> dict[str, Any]:
        """Waits until replica `rid` runs and answers STATUS; returns its report."""
        return launch.wait_ready(
            rid, self.procs[rid], self.address(rid), timeout, self.log_path(rid), self.curve
        )

    def is_running(self, rid: int) -> bool:
        return launch.alive(self.procs.get(rid))

    def pid(self, rid: int) -> int:
        return self.procs[rid].pid

    def kill(self, rid: int, sig: int = signal.SIGKILL) -> None:
        """Sends `sig` (default: kill -9) to a replica; for SIGKILL waits
        until it is gone."""
        if sig == signal.SIGKILL:
            launch.stop([self.procs[rid]], sig=sig)
        else:
            launch.send_signal(self.procs[rid], sig)

    def stop_replica(self, rid: int, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (SIGKILL after `timeout`); returns the exit status."""
        proc = self.procs.get(rid)
        if proc is None:
            return None
        launch.stop([proc], timeout)
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
        launch.stop(self.procs.values(), grace)

    # -- talking to it --

    def client(self, **kwargs: Any) -> KVClient:
        """A client of the whole cluster (closed at teardown); kwargs go to
        KVClient (timeout, attempt_timeout, client_id, ...)."""
        kwargs.setdefault("timeout", 10.0)
        kwargs.setdefault("attempt_timeout", 0.5)
        if self.curve is not None:
            kwargs.setdefault("client_key", self.client_key_files()[0])
            kwargs.setdefault("server_key", self.client_key_files()[1])
        c = KVClient(self.addresses, **kwargs)
        self._clients.append(c)
        return c

    def status(self, timeout: float = 0.5) -> list[dict[str, Any]]:
        """One STATUS round to every replica (see KVClient.status)."""
        keys = dict(zip(("client_key", "server_key"), self.client_key_files(), strict=True))
        extra = keys if self.curve is not None else {}
        with KVClient(self.addresses, timeout=timeout, attempt_timeout=timeout, **extra) as c:
            return c.status()

    def wait_applied_everywhere(self, timeout: float = 10.0) -> int:
        """Waits until every running replica reports the same applied index
        (a follower learns the last commit with the leader's next message);
        returns it. Before comparing stopped replicas' states."""
        running = [rid for rid in self.ids if self.is_running(rid)]

        def same() -> int | None:
            answered = [row for row in self.status() if "applied_index" in row]
            indexes = {row["applied_index"] for row in answered}
            if len(answered) == len(running) and len(indexes) == 1:
                return indexes.pop()
            return None

        return wait_for("every replica to apply the same log", same, timeout)

    def leader_id(self) -> int | None:
        """The replica that says it leads (highest ballot), or None."""
        return launch.find_leader(self.status())

    def wait_for_leader(self, timeout: float = 20.0, *, exclude: tuple[int, ...] = ()) -> int:
        """Waits until a replica not in `exclude` leads; returns its id. Fails
        early if a replica not in `exclude` crashed (exited other than by a
        stop or kill of ours)."""
        watch = {
            rid: proc
            for rid, proc in self.procs.items()
            if rid not in exclude and proc.poll() not in _STOPPED_BY_US
        }
        logs = {rid: self.log_path(rid) for rid in self.ids}
        return launch.wait_for_leader(
            self.addresses, timeout, exclude=exclude, watch=watch, logs=logs, curve=self.curve
        )

    @staticmethod
    def _unexpected_exit(proc: subprocess.Popen[bytes]) -> bool:
        return proc.returncode not in _STOPPED_BY_US

    def state_checksums(self) -> list[ReplicaState]:
        """Opens every replica's LevelDB (the replicas must be stopped) and
        returns its applied index, revision and data checksum."""
        states = []
        for rid in self.ids:
            if self.is_running(rid):
                raise RuntimeError(f"replica {rid} is running; stop it first")
            db = plyvel.DB(str(self.data_dir(rid)))
            values_dir = self.data_dir(rid) / VALUE_LOG_DIR  # large values (kvstore/values.py)
            values = ValueLog(values_dir) if values_dir.is_dir() else None
            try:
                sm = KVStateMachine(db, None, values)
                states.append(
                    ReplicaState(rid, sm.applied_index, sm.revision, sm.checksum(), sm.key_count())
                )
            finally:
                if values is not None:
                    values.close()
                db.close()
        return states

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
