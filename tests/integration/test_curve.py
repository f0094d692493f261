"""CURVE on a real 3-replica cluster (README, Security; kvstore/security.py,
replica/curve.py): kvctl with the right keys is served; without an allowed
key, with a wrong server key or in plaintext it is refused with one line
(exit 4) well within its timeout, and each replica logs a refused key once;
a rogue with a key pair of its own sends well-formed Paxos messages to
every peer port and changes nothing. With CURVE off, the rest of the suite
is the proof that everything works as before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from client.client import KVClient
from client.errors import AuthenticationFailed
from kvstore.protocol import Op, Request, encode_request
from kvstore.security import read_key_file, write_keypair
from replica import codec
from replica.messages import Ballot, Heartbeat, Phase1a, Phase2a
from tests.harness import Cluster, wait_for

FORGED_ROUND = 10**6


@pytest.fixture
def curve_cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    return cluster_factory(3, curve=True)


def _kvctl(cluster: Cluster, *args: str, env: dict[str, str] | None = None, timeout: float = 3):
    """Runs kvctl against the cluster; (exit code, stdout, stderr lines, seconds)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KVSTORE_")}
    full_env.update(env or {})
    argv = [sys.executable, "-m", "client.kvctl", "--cluster", cluster.cluster_arg]
    argv += ["--timeout", str(timeout), *args]
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=30)
    took = time.monotonic() - start
    return done.returncode, done.stdout, done.stderr.splitlines(), took


def _log_lines(cluster: Cluster, rid: int, needle: str) -> list[str]:
    return [ln for ln in cluster.log_path(rid).read_text().splitlines() if needle in ln]


def _bad_frames(cluster: Cluster, kind: str) -> dict[int, int]:
    """Per replica id: how many inputs of `kind` it dropped (STATUS)."""
    return {row["id"]: row.get("bad_frames", {}).get(kind, 0) for row in cluster.status()}


def test_kvctl_is_served_with_the_right_keys_and_refused_without(
    curve_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = curve_cluster
    client_key, server_key = cluster.client_key_files()
    keys = ["--client-key", client_key, "--server-key", server_key]
    assert _kvctl(cluster, *keys, "put", "greeting", "hello")[0] == 0
    code, out, err, _ = _kvctl(cluster, *keys, "get", "greeting")
    assert (code, out, err) == (0, "hello\n", [])
    env = {"KVSTORE_CLIENT_KEY": client_key, "KVSTORE_SERVER_KEY": server_key}
    assert _kvctl(cluster, "get", "greeting", env=env)[:2] == (0, "hello\n")

    rogue_pub = write_keypair(tmp_path / "rogue", "rogue")
    rogue_secret = str(rogue_pub.with_suffix(".key_secret"))
    other_server = write_keypair(tmp_path / "rogue", "other-server")
    refusals = {
        "plaintext": ((), "the cluster requires CURVE"),
        "no allowed key": (
            ("--client-key", rogue_secret, "--server-key", server_key),
            "not among the cluster's allowed client keys",
        ),
        "wrong server key": (
            ("--client-key", client_key, "--server-key", str(other_server)),
            "wrong server key",
        ),
    }
    for what, (args, reason) in refusals.items():
        code, out, err, took = _kvctl(cluster, *args, "put", "greeting", "forged", timeout=3)
        assert code == 4, (what, code, err)
        assert out == "" and len(err) == 1, (what, err)
        assert err[0].startswith("kvctl: error: refused: ") and reason in err[0], (what, err)
        assert took < 3 + 2, (what, took)  # within the timeout, never a hang

    # The same refused key, tried again, is still logged once per replica.
    assert _kvctl(cluster, "--client-key", rogue_secret, "--server-key", server_key, "status")[0]
    rogue_key = read_key_file(rogue_pub).decode()
    logged = {rid: _log_lines(cluster, rid, rogue_key) for rid in cluster.ids}
    assert all(len(lines) <= 1 for lines in logged.values()), logged
    assert any(logged.values()), logged
    line = next(lines[0] for lines in logged.values() if lines)
    assert "refused a CURVE connection on the client port from 127.0.0.1" in line

    # KVClient says the same; the value was never changed.
    refused = KVClient(cluster.addresses, timeout=3, client_key=rogue_secret, server_key=server_key)
    with pytest.raises(AuthenticationFailed, match="allowed client keys"):
        refused.get("greeting")
    refused.close()
    assert cluster.client().get("greeting") == b"hello"

    # Allowing a client is adding its public key to client_keys_dir: no restart.
    shutil.copy(rogue_pub, cluster.keys_dir / "clients" / "rogue.key")
    code, out, err, _ = _kvctl(cluster, "--client-key", rogue_secret, "--server-key", server_key,
                               "get", "greeting")  # fmt: skip
    assert (code, out, err) == (0, "hello\n", [])


def _forged_messages(sender: int) -> list[bytes]:
    """Well-formed Paxos messages in the name of replica `sender` with a ballot
    no replica has reached: a Phase 1, a heartbeat and a vote request for a
    PUT that no client sent."""
    ballot = Ballot(FORGED_ROUND, sender)
    put = encode_request(Request(Op.PUT, b"r" * 16, 1, b"forged", b"by a rogue"))
    return [
        codec.encode(Phase1a(sender, ballot, 0)),
        codec.encode(Heartbeat(sender, ballot, FORGED_ROUND, 1)),
        *(codec.encode(Phase2a(sender, ballot, slot, (put,), slot + 1)) for slot in range(40)),
    ]


def _push(peer: str, server_key: bytes | None, pair: tuple[bytes, bytes] | None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    if server_key is not None and pair is not None:
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, pair[0])
        sock.setsockopt(zmq.CURVE_SECRETKEY, pair[1])
    sock.connect(peer)
    return sock


_PLAINTEXT_KINDS = ("peer_not_curve", "peer_bad_handshake")


def _plaintext_refused(cluster: Cluster) -> Callable[[], bool]:
    def probe() -> bool:
        counts = [_bad_frames(cluster, kind) for kind in _PLAINTEXT_KINDS]
        return all(sum(c[rid] for c in counts) >= 1 for rid in cluster.ids)

    return probe


def test_a_rogue_with_its_own_keys_at_every_peer_port_changes_nothing(
    curve_cluster: Cluster,
) -> None:
    cluster = curve_cluster
    kv = cluster.client()
    for n in range(20):
        kv.put(f"k{n}", f"v{n}")
    book = {rid: read_key_file(cluster.keys_dir / f"replica{rid}.key") for rid in cluster.ids}
    rogue = zmq.curve_keypair()
    socks = []
    try:
        for r in cluster.replicas:
            other = next(rid for rid in cluster.ids if rid != r.id)
            # A rogue that knows every public key and has a key pair of its
            # own, connecting twice; and a plaintext one.
            socks.append(_push(r.peer, book[r.id], rogue))
            socks.append(_push(r.peer, book[r.id], rogue))
            socks.append(_push(r.peer, None, None))
            for sock in socks[-3:]:
                for frame in _forged_messages(other):
                    # Queued until a handshake succeeds: never. Without a live
                    # connection (between two refused handshakes) a PUSH send
                    # would block: the rogue gives up on that frame instead.
                    with contextlib.suppress(zmq.Again):
                        sock.send(frame, zmq.NOBLOCK)
        wait_for(
            "every replica to refuse the rogue's key twice",
            lambda: all(n == 2 for n in _bad_frames(cluster, "peer_key_refused").values()),
        )
        # libzmq reports a plaintext handshake as a mechanism mismatch or
        # without detail, depending on which side notices first.
        wait_for("every replica to refuse the plaintext connection", _plaintext_refused(cluster))
    finally:
        for sock in socks:
            sock.close(linger=0)

    # A replica's own key lets its holder speak only as that replica: replica
    # 3's key claiming to be replica 2 is dropped as an impostor.
    impostor = (book[3], read_key_file(cluster.keys_dir / "replica3.key_secret"))
    sock = _push(cluster.replicas[0].peer, book[1], impostor)
    try:
        for frame in _forged_messages(2):
            sock.send(frame)
        wait_for(
            "replica 1 to drop messages sent in replica 2's name over replica 3's key",
            lambda: _bad_frames(cluster, "peer_impostor")[1] >= 40,
        )
    finally:
        sock.close(linger=0)

    kv.put("after", "the rogue")  # the cluster still serves
    rows = cluster.status()
    assert all(row["promised"][0] < FORGED_ROUND for row in rows), rows
    rogue_key = zmq.curve_public(rogue[1]).decode()
    for rid in cluster.ids:
        lines = _log_lines(cluster, rid, rogue_key)
        assert len(lines) == 1, (rid, lines)  # logged once, counted always
        assert "refused a CURVE connection on the peer port" in lines[0]
        for kind in _PLAINTEXT_KINDS:
            assert len(_log_lines(cluster, rid, kind)) <= 1
    assert len(_log_lines(cluster, 1, "peer_impostor")) == 1

    cluster.wait_applied_everywhere()
    cluster.stop()
    states = cluster.state_checksums()
    assert len({(s.applied_index, s.revision, s.checksum) for s in states}) == 1, states
    assert {(s.revision, s.keys) for s in states} == {(21, 21)}
