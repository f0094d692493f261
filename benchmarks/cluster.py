"""Our cluster for the benchmarks: N replica processes on loopback.

Each replica runs as `python -m replica.server --config cluster.toml --id N
--data-dir DIR` (docs/CONTRACTS.md) with free ports, its data in a fresh
temporary directory (on disk: BENCH_DATA_DIR, else the system temp dir) and
its output in DIR/replica-N.log. The harness polls STATUS until one replica
reports role "leader" and a write through it commits, and stops the
replicas by pid (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.ports import free_ports
from benchmarks.procs import alive, signal_and_reap, spawn_logged, stop_all, tail, temp_root

SERVER_MODULE = "replica.server"
REPO_ROOT = Path(__file__).resolve().parent.parent


def server_available() -> str | None:
    """None when the replica server can be started, else why not."""
    if not (REPO_ROOT / "replica" / "server.py").exists():
        return "replica/server.py does not exist yet"
    return None


class StatusProbe:
    """STATUS and single requests to given replicas, with timeouts (one
    DEALER per call, so a lost reply never confuses the next call)."""

    def __init__(self) -> None:
        import zmq

        self._zmq = zmq
        self.ctx = zmq.Context()
        self.cid = os.urandom(16)
        self.seq = 0

    def request(self, address: str, req: Any, timeout: float = 0.5) -> Any | None:
        from kvstore.protocol import decode_response, encode_request

        zmq = self._zmq
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        try:
            s.connect(address)
            s.send_multipart([b"", encode_request(req)])
            if s.poll(int(timeout * 1000), zmq.POLLIN):
                return decode_response(s.recv_multipart()[-1])
            return None
        except Exception:  # noqa: BLE001 - down, undecodable: no answer
            return None
        finally:
            s.close(0)

    def status(self, address: str, timeout: float = 0.5) -> dict[str, Any] | None:
        from kvstore.protocol import Op, Request

        resp = self.request(address, Request(Op.STATUS), timeout)
        return resp.info if resp is not None and resp.info else None

    def put(self, address: str, key: bytes, value: bytes, timeout: float = 2.0) -> Any | None:
        from kvstore.protocol import Op, Request

        self.seq += 1
        return self.request(address, Request(Op.PUT, self.cid, self.seq, key, value), timeout)

    def close(self) -> None:
        self.ctx.destroy(linger=0)


@dataclass
class Replica:
    id: int
    client: str
    peer: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None


@dataclass
class KVCluster:
    """n replicas of our store on loopback. Use as a context manager."""

    n: int = 3
    base_dir: Path | None = None
    tick_ms: int | None = None
    extra_args: list[str] = field(default_factory=list)
    replicas: list[Replica] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None
    _probe: StatusProbe | None = None

    system = "paxoskv"

    def __enter__(self) -> KVCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def probe(self) -> StatusProbe:
        if self._probe is None:
            self._probe = StatusProbe()
        return self._probe

    def start(self, timeout: float = 30.0) -> None:
        from kvstore.config import ReplicaAddress, write_cluster_config

        why = server_available()
        if why:
            raise RuntimeError(why)
        if self.base_dir is None:
            self._tmp = temp_root("bench-kv-")
            self.base_dir = Path(self._tmp.name)
        ports = free_ports(2 * self.n)
        addrs = []
        self.replicas = []
        for i in range(self.n):
            client = f"tcp://127.0.0.1:{ports[2 * i]}"
            peer = f"tcp://127.0.0.1:{ports[2 * i + 1]}"
            addrs.append(ReplicaAddress(i + 1, peer, client, peer, client))
            self.replicas.append(
                Replica(
                    i + 1,
                    client,
                    peer,
                    self.base_dir / f"r{i + 1}",
                    self.base_dir / f"replica-{i + 1}.log",
                )
            )
        self.config_path = self.base_dir / "cluster.toml"
        write_cluster_config(self.config_path, addrs)
        for r in self.replicas:
            self._spawn(r)
        self.wait_leader(timeout)

    def _spawn(self, r: Replica) -> None:
        r.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable,
            "-m",
            SERVER_MODULE,
            "--config",
            str(self.config_path),
            "--id",
            str(r.id),
            "--data-dir",
            str(r.data_dir),
        ]
        if self.tick_ms is not None:
            args += ["--tick-ms", str(self.tick_ms)]
        args += ["--log-level", "warning", *self.extra_args]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        r.proc = spawn_logged(args, r.log_path, cwd=str(REPO_ROOT), env=env)

    def endpoints(self) -> dict[int, str]:
        return {r.id: r.client for r in self.replicas}

    def pids(self) -> dict[int, int]:
        return {r.id: r.proc.pid for r in self.replicas if r.proc and r.proc.poll() is None}

    def alive(self, rid: int) -> bool:
        return alive(self.replicas[rid - 1].proc)

    def status(self, rid: int, timeout: float = 0.5) -> dict[str, Any] | None:
        if not self.alive(rid):
            return None
        return self.probe.status(self.replicas[rid - 1].client, timeout)

    def leader(self, timeout: float = 0.5) -> int | None:
        for r in self.replicas:
            st = self.status(r.id, timeout)
            if st and st.get("role") == "leader":
                return r.id
        return None

    def wait_leader(self, timeout: float = 30.0) -> int:
        from kvstore.protocol import Status

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.replicas:
                if r.proc is not None and r.proc.poll() is not None:
                    raise RuntimeError(
                        f"replica {r.id} exited with {r.proc.returncode}; see {r.log_path}:\n"
                        + tail(r.log_path)
                    )
            lid = self.leader()
            if lid is not None:
                resp = self.probe.put(self.replicas[lid - 1].client, b"__bench_ready", b"1")
                if resp is not None and resp.status == Status.OK:
                    return lid
            time.sleep(0.05)
        raise TimeoutError(
            f"no leader among {self.n} replicas within {timeout}s; logs in {self.base_dir}:\n"
            + "\n".join(tail(r.log_path, 5) for r in self.replicas)
        )

    def kill(self, rid: int, sig: int = signal.SIGKILL) -> None:
        signal_and_reap(self.replicas[rid - 1].proc, sig)

    def restart(self, rid: int) -> None:
        self._spawn(self.replicas[rid - 1])

    def applied_index(self, rid: int) -> int | None:
        st = self.status(rid)
        return int(st["applied_index"]) if st and "applied_index" in st else None

    def commit_index(self, rid: int) -> int | None:
        st = self.status(rid)
        return int(st["commit_index"]) if st and "commit_index" in st else None

    def version(self) -> str | None:
        return _git_version()

    def stop(self) -> None:
        stop_all(r.proc for r in self.replicas)
        if self._probe is not None:
            self._probe.close()
            self._probe = None
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
