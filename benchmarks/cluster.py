"""Our cluster for the benchmarks: N replica processes on loopback.

The replicas are started, checked and stopped through replica/launch.py
(the `kvstore-replica` contract, docs/CONTRACTS.md) on free ports, with
their data in a fresh directory (`temp_root`) and their output in
DIR/replica-N.log. The cluster is ready when a replica reports itself
leader and a write through the cluster commits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.client import KVClient
from client.errors import ClusterUnavailable
from kvstore.config import ReplicaAddress, local_cluster_config, write_cluster_config
from kvstore.security import ClientKeys, client_keys, cluster_keys
from replica.launch import (
    alive,
    find_leader,
    free_ports,
    start_replica,
    statuses,
    stop,
    wait_for_leader,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def temp_root(prefix: str) -> tempfile.TemporaryDirectory:
    """A fresh directory for a cluster's data (ours or etcd's): under
    BENCH_DATA_DIR, else the system temp dir (on this machine an ext4 disk,
    so fsync is real; a tmpfs would make durable writes free and the figures
    meaningless)."""
    return tempfile.TemporaryDirectory(prefix=prefix, dir=os.environ.get("BENCH_DATA_DIR") or None)


def server_available() -> str | None:
    """None when the replica server can be started, else why not."""
    if not (REPO_ROOT / "replica" / "server.py").exists():
        return "replica/server.py does not exist yet"
    return None


@dataclass
class Replica:
    id: int
    client: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class KVCluster:
    """n replicas of our store on loopback. Use as a context manager."""

    n: int = 3
    base_dir: Path | None = None
    tick_ms: int | None = None
    curve: bool = False  # CURVE on (README, Security): keys made in base_dir/keys
    trace_every: int = 0  # --trace-every of each replica (benchmarks/trace.py); 0: off
    lease_reads: bool = False  # --lease-reads on every replica
    write_buffer_bytes: int | None = None  # [storage] write_buffer_bytes (None: the default)
    client_keys: ClientKeys | None = None
    client_key_args: dict[str, str] = field(default_factory=dict)  # for KVClient
    replicas: list[Replica] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None
    _marker: KVClient | None = None
    _marker_leader: int | None = None

    system = "paxoskv"

    def __enter__(self) -> KVCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        why = server_available()
        if why:
            raise RuntimeError(why)
        if self.base_dir is None:
            self._tmp = temp_root("bench-kv-")
            self.base_dir = Path(self._tmp.name)
        ports = free_ports(2 * self.n, consecutive=True)
        addrs = local_cluster_config(self.n, base_port=ports[0], peer_base_port=ports[self.n])
        self.write_config(addrs)
        if self.curve:
            self._make_keys([a.id for a in addrs])
        base = self.base_dir
        self.replicas = [
            Replica(a.id, a.client, base / f"r{a.id}", base / f"replica-{a.id}.log") for a in addrs
        ]
        for r in self.replicas:
            self._spawn(r)
        self.wait_leader(timeout)

    def write_config(self, addrs: list[ReplicaAddress]) -> None:
        """The cluster config file in base_dir, with `[storage]` if set."""
        assert self.base_dir is not None
        self.config_path = self.base_dir / "cluster.toml"
        write_cluster_config(self.config_path, addrs)
        if self.write_buffer_bytes is not None:
            with open(self.config_path, "a", encoding="utf-8") as fh:
                fh.write(f"\n[storage]\nwrite_buffer_bytes = {self.write_buffer_bytes}\n")

    def _make_keys(self, ids: list[int]) -> None:
        keys = self.base_dir / "keys"
        with open(self.config_path, "a", encoding="utf-8") as fh:
            fh.write("\n" + cluster_keys(keys, ids))
        self.client_key_args = {
            "client_key": str(keys / "clients" / "client.key_secret"),
            "server_key": str(keys / "server.key"),
        }
        self.client_keys = client_keys(**self.client_key_args, env={})

    def _spawn(self, r: Replica) -> None:
        extra = ["--trace-every", str(self.trace_every)] if self.trace_every else []
        if self.lease_reads:
            extra.append("--lease-reads")
        r.proc = start_replica(
            self.config_path, r.id, r.data_dir, r.log_path,
            tick_ms=self.tick_ms, log_level="warning", cwd=REPO_ROOT, extra=extra,
        )  # fmt: skip

    def endpoints(self) -> dict[int, str]:
        return {r.id: r.client for r in self.replicas}

    def pids(self) -> dict[int, int]:
        return {r.id: r.proc.pid for r in self.replicas if r.proc and alive(r.proc)}

    def alive(self, rid: int) -> bool:
        return alive(self.replicas[rid - 1].proc)

    def status(self, rid: int, timeout: float = 0.5) -> dict[str, Any] | None:
        if not self.alive(rid):
            return None
        return statuses([self.replicas[rid - 1].client], timeout, curve=self.client_keys)[0]

    def leader(self, timeout: float = 0.5) -> int | None:
        up = [r.client for r in self.replicas if alive(r.proc)]
        return find_leader(statuses(up, timeout, curve=self.client_keys))

    def wait_leader(self, timeout: float = 30.0) -> int:
        """Waits until a replica leads and a write through the cluster
        commits; returns the leader. Fails early if a running replica exits."""
        deadline = time.monotonic() + timeout
        addresses = [r.client for r in self.replicas]
        leader = wait_for_leader(
            addresses, timeout,
            watch={r.id: r.proc for r in self.replicas if r.proc and alive(r.proc)},
            logs={r.id: r.log_path for r in self.replicas}, curve=self.client_keys,
        )  # fmt: skip
        try:
            wait = max(1.0, deadline - time.monotonic())
            with KVClient(addresses, timeout=wait, **self.client_key_args) as kv:
                kv.put(b"__bench_ready", b"1")
        except ClusterUnavailable as exc:
            raise TimeoutError(
                f"no write committed in {timeout}s; logs in {self.base_dir}"
            ) from exc
        return self.leader() or leader

    def kill(self, rid: int, sig: int = signal.SIGKILL) -> None:
        stop([self.replicas[rid - 1].proc], sig=sig)

    def restart(self, rid: int) -> None:
        self._spawn(self.replicas[rid - 1])

    def data_dirs(self) -> dict[int, Path]:
        return {r.id: r.data_dir for r in self.replicas}

    def write_marker(self, leader: int, key: bytes, value: bytes) -> int:
        """One write through `leader` (the restart measurement); returns a
        token for `marker_applied`: the leader's commit index after it."""
        if self._marker is None or self._marker_leader != leader:
            if self._marker is not None:
                self._marker.close()
            addrs = [r.client for r in self.replicas]
            self._marker = KVClient(
                addrs, timeout=2.0, attempt_timeout=0.25, first=leader - 1, **self.client_key_args
            )
            self._marker_leader = leader
        self._marker.put(key, value)
        index = self.commit_index(leader)
        if index is None:
            raise RuntimeError(f"leader {leader} does not answer STATUS")
        return index

    def marker_applied(self, rid: int, key: bytes, token: int) -> bool | None:
        """Whether replica `rid` has applied the write `token` stands for
        (its applied index reached it); None while it does not answer STATUS."""
        st = self.status(rid, timeout=0.2)
        if st is None or "applied_index" not in st:
            return None
        return int(st["applied_index"]) >= token

    def applied_index(self, rid: int) -> int | None:
        st = self.status(rid)
        return int(st["applied_index"]) if st and "applied_index" in st else None

    def commit_index(self, rid: int) -> int | None:
        st = self.status(rid)
        return int(st["commit_index"]) if st and "commit_index" in st else None

    def version(self) -> str | None:
        return _git_version()

    def stop(self) -> None:
        if self._marker is not None:
            self._marker.close()
            self._marker = None
        stop(r.proc for r in self.replicas)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _git_version() -> str | None:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return rev or None
