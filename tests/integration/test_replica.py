"""Integration tests of the replica process: real `kvstore-replica` processes
on loopback with LevelDB in tmp_path and ZeroMQ between them.

Covers: reads and writes through any replica (REDIRECT), kill -9 of the
leader and fail-over with every acknowledged write kept, restart and catch-up
of a killed replica, a full cluster restart, exactly-once retries on the raw
protocol, clean SIGTERM shutdown and one-line startup errors (exit 2).

Every wait polls with a deadline; no fixed sleeps decide an outcome.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq

from client.client import KVClient
from kvstore.config import ReplicaAddress, write_cluster_config
from kvstore.protocol import (
    Op,
    Request,
    Response,
    Status,
    decode_response,
    encode_request,
)

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")
_ROOT = Path(__file__).resolve().parents[2]


def free_ports(n: int) -> list[int]:
    """n distinct ports that were free a moment ago (bound to port 0)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15.0) -> T:
    """Polls `probe` until it returns something truthy; fails after timeout."""
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


def raw_request(address: str, frame: bytes, timeout: float = 3.0) -> bytes | None:
    """One REQ round trip on a fresh socket; None on timeout."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    sock.connect(address)
    try:
        sock.send(frame)
        return sock.recv()
    except zmq.Again:
        return None
    finally:
        sock.close(linger=0)


class LocalCluster:
    """N replica processes on free loopback ports (a private launcher; the
    shared `Cluster` fixture of tests/integration/conftest.py replaces it
    once it exists)."""

    def __init__(self, base: Path, n: int = 3, tick_ms: int = 10) -> None:
        self.base = base
        self.tick_ms = tick_ms
        ports = free_ports(2 * n)
        self.replicas = [
            ReplicaAddress(
                i + 1,
                f"tcp://127.0.0.1:{ports[2 * i]}",
                f"tcp://127.0.0.1:{ports[2 * i + 1]}",
                f"tcp://127.0.0.1:{ports[2 * i]}",
                f"tcp://127.0.0.1:{ports[2 * i + 1]}",
            )
            for i in range(n)
        ]
        self.config = base / "cluster.toml"
        write_cluster_config(self.config, self.replicas)
        self.procs: dict[int, subprocess.Popen] = {}
        self._clients: list[KVClient] = []

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.replicas]

    def address(self, rid: int) -> str:
        return self.replicas[rid - 1].client

    def data_dir(self, rid: int) -> Path:
        return self.base / f"data{rid}"

    def log_path(self, rid: int) -> Path:
        return self.base / f"replica{rid}.log"

    def start(self, rid: int) -> None:
        cmd = [
            sys.executable, "-m", "replica.server", "--config", str(self.config),
            "--id", str(rid), "--data-dir", str(self.data_dir(rid)),
            "--tick-ms", str(self.tick_ms),
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(_ROOT))
        with open(self.log_path(rid), "ab") as log:
            self.procs[rid] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=_ROOT
            )

    def start_all(self) -> None:
        for rid in self.ids:
            self.start(rid)

    def kill(self, rid: int, sig: int = signal.SIGKILL) -> int:
        """Signals replica rid and waits for it; returns its exit code."""
        proc = self.procs.pop(rid)
        proc.send_signal(sig)
        return proc.wait(timeout=15)

    def alive(self, rid: int) -> bool:
        proc = self.procs.get(rid)
        return proc is not None and proc.poll() is None

    def close(self) -> None:
        for client in self._clients:
            client.close()
        for rid in list(self.procs):
            proc = self.procs.pop(rid)
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=15)

    def client(self, timeout: float = 10.0, **kwargs: Any) -> KVClient:
        addresses = [r.client for r in self.replicas]
        client = KVClient(addresses, timeout=timeout, attempt_timeout=0.5, **kwargs)
        self._clients.append(client)
        return client

    def status(self, rid: int, timeout: float = 1.0) -> dict[str, Any] | None:
        """The STATUS info of replica rid, or None if it does not answer."""
        frame = encode_request(Request(Op.STATUS))
        reply = raw_request(self.address(rid), frame, timeout)
        if reply is None:
            return None
        resp = decode_response(reply)
        assert resp.status is Status.OK, resp
        return resp.info

    def leader(self, among: list[int] | None = None) -> int | None:
        """The id of the replica that every live replica asked (or those in
        `among`) names as leader and that reports itself leader, else None."""
        infos = {rid: self.status(rid, 0.5) for rid in (among or list(self.procs))}
        if None in infos.values():
            return None
        leaders = {info["leader"] for info in infos.values()}
        if len(leaders) != 1:
            return None
        (lid,) = leaders
        if lid not in infos or infos[lid]["role"] != "leader":
            return None
        return lid

    def wait_leader(self, timeout: float = 15.0, among: list[int] | None = None) -> int:
        return wait_for("a leader all live replicas agree on", lambda: self.leader(among), timeout)

    def log_text(self, rid: int) -> str:
        return self.log_path(rid).read_text(errors="replace")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path)
    c.start_all()
    try:
        c.wait_leader()
        yield c
    finally:
        c.close()


def _req(op: Op, client_id: bytes = b"c" * 16, seq: int = 1, **kw: Any) -> bytes:
    return encode_request(Request(op, client_id, seq, **kw))


def _call(address: str, frame: bytes) -> Response:
    reply = raw_request(address, frame)
    assert reply is not None, f"no reply from {address}"
    return decode_response(reply)


# ------------------------------------------------------------------ tests


def test_writes_and_reads_through_every_replica(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    for rid in cluster.ids:
        client = cluster.client()
        # Start at this replica: a follower must redirect to the leader.
        client._leader = rid - 1  # steer the first attempt
        version = client.put(f"key-{rid}", f"value-{rid}")
        assert version > 0
        for other in cluster.ids:
            reader = cluster.client()
            reader._leader = other - 1
            assert reader.get(f"key-{rid}") == f"value-{rid}".encode()
    follower = next(r for r in cluster.ids if r != leader)
    resp = _call(cluster.address(follower), _req(Op.PUT, key=b"k", value=b"v"))
    assert resp.status is Status.REDIRECT and resp.leader == leader
    resp = _call(cluster.address(follower), _req(Op.GET, key=b"key-1"))
    assert resp.status is Status.REDIRECT and resp.leader == leader


def test_delete_cas_and_stale_reads(cluster: LocalCluster) -> None:
    client = cluster.client()
    v1 = client.put("k", "one")
    assert client.cas("k", "two", expected_version=v1).succeeded
    failed = client.cas("k", "three", expected_value="one")
    assert not failed.succeeded and failed.value == b"two"
    assert client.delete("k") is True
    assert client.delete("k") is False
    assert client.get("k") is None
    client.put("s", "fresh")
    for rid in cluster.ids:  # a stale read is served by the replica itself

        def probe(rid: int = rid) -> bool:
            resp = _call(cluster.address(rid), _req(Op.GET, key=b"s", stale=True))
            return resp.status is Status.OK and resp.value == b"fresh"

        wait_for(f"replica {rid} to apply the write", probe)


def test_status_report(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    cluster.client().put("x", "y")
    info = cluster.status(leader)
    assert info is not None
    for field in ("id", "role", "leader", "ballot", "commit_index", "applied_index", "log_size"):
        assert field in info
    assert info["id"] == leader and info["role"] == "leader" and info["leader"] == leader
    assert info["ballot"][1] == leader and info["commit_index"] >= 1
    assert sorted(info["peers"] + [leader]) == cluster.ids


def test_leader_kill9_failover_keeps_acknowledged_writes(cluster: LocalCluster) -> None:
    client = cluster.client()
    acked = {f"k{i}": client.put(f"k{i}", f"v{i}") for i in range(50)}
    old = cluster.wait_leader()
    cluster.kill(old)
    start = time.monotonic()
    survivors = [r for r in cluster.ids if r != old]
    new = cluster.wait_leader(timeout=10.0, among=survivors)
    assert new != old
    client.put("after", "failover")
    assert time.monotonic() - start < 10.0
    for key, version in acked.items():
        assert client.get_versioned(key) == (f"v{key[1:]}".encode(), version)
    assert client.get("after") == b"failover"


def test_restarted_replica_catches_up(cluster: LocalCluster) -> None:
    client = cluster.client()
    client.put("early", "1")
    victim = cluster.wait_leader()
    cluster.kill(victim)
    survivors = [r for r in cluster.ids if r != victim]
    cluster.wait_leader(among=survivors)
    for i in range(100):
        client.put("latest", str(i))
    cluster.start(victim)
    leader = cluster.wait_leader()
    target = cluster.status(leader)["commit_index"]

    def caught_up() -> bool:
        info = cluster.status(victim, 0.5)
        return info is not None and info["applied_index"] >= target

    wait_for(f"replica {victim} to reach applied index {target}", caught_up)
    resp = _call(cluster.address(victim), _req(Op.GET, key=b"latest", stale=True))
    assert resp.status is Status.OK and resp.value == b"99"


def test_full_cluster_restart_keeps_data(cluster: LocalCluster) -> None:
    client = cluster.client()
    acked = {f"k{i}": client.put(f"k{i}", f"v{i}") for i in range(30)}
    client.delete("k0")
    for rid in cluster.ids:
        assert cluster.kill(rid, signal.SIGTERM) == 0  # clean shutdown
        assert "shutting down" in cluster.log_text(rid)
    cluster.start_all()
    cluster.wait_leader()
    client = cluster.client()
    assert client.get("k0") is None
    for key, version in list(acked.items())[1:]:
        assert client.get_versioned(key) == (f"v{key[1:]}".encode(), version)
    assert client.put("new", "write") > max(acked.values())


def test_kill9_of_every_replica_keeps_acknowledged_writes(cluster: LocalCluster) -> None:
    client = cluster.client()
    acked = {f"k{i}": client.put(f"k{i}", f"v{i}") for i in range(30)}
    for rid in cluster.ids:
        cluster.kill(rid)
    cluster.start_all()
    cluster.wait_leader()
    client = cluster.client()
    for key, version in acked.items():
        assert client.get_versioned(key) == (f"v{key[1:]}".encode(), version)


def test_retried_request_is_applied_once(cluster: LocalCluster) -> None:
    leader = cluster.wait_leader()
    address = cluster.address(leader)
    client_id = os.urandom(16)
    frame = _req(Op.PUT, client_id, 1, key=b"once", value=b"first")
    first = raw_request(address, frame)
    assert first is not None and decode_response(first).status is Status.OK
    revision = cluster.status(leader)["revision"]
    second = raw_request(address, frame)  # a fresh socket, as a lazy pirate
    assert second == first
    # Same seq, other contents: still the recorded result, nothing applied.
    third = raw_request(address, _req(Op.PUT, client_id, 1, key=b"once", value=b"other"))
    assert third == first
    assert cluster.status(leader)["revision"] == revision
    resp = _call(address, _req(Op.GET, key=b"once"))
    assert resp.value == b"first" and resp.version == decode_response(first).version


def test_concurrent_clients(cluster: LocalCluster) -> None:
    """Many DEALER clients at once: every write answered once and applied."""
    leader = cluster.wait_leader()
    ctx = zmq.Context.instance()
    socks = []
    for _ in range(32):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(cluster.address(leader))
        socks.append(sock)
    try:
        for i, sock in enumerate(socks):
            for seq in range(1, 6):
                payload = _req(Op.PUT, b"%016d" % i, seq, key=b"c%d-%d" % (i, seq), value=b"x")
                sock.send_multipart([b"", payload])
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        replies = 0
        deadline = time.monotonic() + 20
        while replies < 32 * 5 and time.monotonic() < deadline:
            for sock, _ in poller.poll(500):
                _, payload = sock.recv_multipart()
                assert decode_response(payload).status is Status.OK
                replies += 1
        assert replies == 32 * 5
    finally:
        for sock in socks:
            sock.close(linger=0)
    assert cluster.status(leader)["revision"] == 32 * 5


# ------------------------------------------------------------ startup errors


def _run_replica(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(_ROOT))
    return subprocess.run(
        [sys.executable, "-m", "replica.server", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=_ROOT,
    )


def _assert_one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors and needle in errors[-1], result.stderr


def test_startup_errors_exit_2(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, n=3)
    bad = tmp_path / "bad.toml"
    bad.write_text("[[replica]]\nid = 'x'\n")
    common = ["--data-dir", str(tmp_path / "d")]
    _assert_one_line_error(_run_replica("--config", str(bad), "--id", "1", *common), "id")
    missing = _run_replica("--config", str(tmp_path / "nope.toml"), "--id", "1", *common)
    _assert_one_line_error(missing, "nope.toml")
    _assert_one_line_error(
        _run_replica("--config", str(c.config), "--id", "9", *common), "replica id 9"
    )
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _run_replica("--config", str(c.config), "--id", "1", "--data-dir", str(blocker))
    _assert_one_line_error(result, "data directory")
    host, port = c.replicas[0].peer.removeprefix("tcp://").split(":")
    with socket.socket() as s:
        s.bind((host, int(port)))
        s.listen()
        result = _run_replica("--config", str(c.config), "--id", "1", *common)
    _assert_one_line_error(result, "peer address")


def test_sigterm_exits_cleanly_while_alone(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, n=3)
    try:
        c.start(1)
        wait_for("replica 1 to answer STATUS", lambda: c.status(1, 0.5))
        assert c.kill(1, signal.SIGTERM) == 0
        log = c.log_text(1)
        assert "replica 1 up" in log and "stopped" in log
    finally:
        c.close()
