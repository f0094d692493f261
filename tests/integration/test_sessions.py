"""Client sessions expiring by log time, with real replica processes.

The cluster config's `[sessions]` table sets a TTL of one second; the leader
stamps it into every clock command, so the whole cluster expires sessions
idle for over a second of log time. Log time only moves when the leader
proposes writes, so a `Keeper` thread writes all along. Every wait polls
the replicas' STATUS (`sessions`: the session count) instead of sleeping:
once an idle client's session is gone from the count, log time has passed
its TTL. Shown: a raw request of an expired session gets SESSION_EXPIRED
with the documented error and changes nothing; `KVClient` raises
`SessionExpired` and its next request works in a fresh session; kvctl (one
session per run) just works run after run, and exits 4 when it is handed
an expired session; many one-off clients leave no sessions behind.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from client import kvctl
from client.client import KVClient
from client.errors import SessionExpired
from kvstore.config import normalize_address
from kvstore.protocol import Op, Request, Response, Status, decode_response, encode_request
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.timeout(180)

TTL_SECONDS = 1


def expired_error(seq: int) -> str:
    """The SESSION_EXPIRED error of docs/CONTRACTS.md for a 1 s TTL."""
    return (
        "session expired or unknown: this client id has no session (sessions idle for "
        f"over 1 s are forgotten), so request seq {seq} was not applied; start a new "
        "session (a new client id, seq 1)"
    )


def start_cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    cluster = cluster_factory(3, start=False)
    with open(cluster.config_path, "a", encoding="utf-8") as fh:
        fh.write(f"\n[sessions]\nttl_seconds = {TTL_SECONDS}\n")
    return cluster.start()


class Keeper:
    """Writes one key over and over, so that the leader keeps proposing clock
    commands and log time advances (its own session stays in use)."""

    def __init__(self, cluster: Cluster) -> None:
        self._kv = KVClient(cluster.addresses, timeout=20.0, attempt_timeout=0.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keeper", daemon=True)
        self.writes = 0
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._kv.put(b"keeper", b"%d" % self.writes)
                    self.writes += 1
                except SessionExpired:
                    pass  # stalled for over the TTL: it has a new session now
                self._stop.wait(0.005)
        except BaseException as exc:  # noqa: BLE001 -- reported by __exit__
            self.error = exc

    def __enter__(self) -> Keeper:
        self._thread.start()
        wait_for("the keeper's first write", lambda: self.writes > 0 or self.error, timeout=30)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self._kv.close()
        if self.error is not None and exc_info[0] is None:
            raise AssertionError(f"the keeper failed: {self.error!r}") from self.error


def session_counts(cluster: Cluster) -> dict[int, int]:
    """Replica id -> its STATUS `sessions`, for the replicas that answered."""
    return {row["id"]: row["sessions"] for row in cluster.status() if "id" in row}


def wait_sessions(cluster: Cluster, at_most: int, timeout: float = 30.0) -> dict[int, int]:
    """Waits until every replica holds at most `at_most` sessions."""

    def probe() -> dict[int, int] | None:
        counts = session_counts(cluster)
        ok = len(counts) == len(cluster.ids) and max(counts.values()) <= at_most
        return counts if ok else None

    return wait_for(f"at most {at_most} session(s) on every replica", probe, timeout)


def raw_write(cluster: Cluster, req: Request, timeout: float = 15.0) -> Response:
    """Sends one write frame to the leader on a plain REQ socket, resending
    the same bytes (same seq: a retry) until a final answer."""
    frame = encode_request(req)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = cluster.wait_for_leader()
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 2000)
        sock.connect(normalize_address(cluster.address(leader)))
        try:
            sock.send(frame)
            resp = decode_response(sock.recv())
        except zmq.Again:
            continue
        finally:
            sock.close(linger=0)
        if resp.status not in (Status.REDIRECT, Status.UNAVAILABLE):
            return resp
        time.sleep(0.05)
    pytest.fail(f"no final answer to {req} within {timeout:g}s")


def put(client_id: bytes, seq: int, key: bytes, value: bytes) -> Request:
    return Request(Op.PUT, client_id, seq, key, value)


# ------------------------------------------------------------------ tests


def test_a_write_of_an_expired_session_is_refused_and_changes_nothing(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = start_cluster(cluster_factory)
    cid = os.urandom(16)
    with Keeper(cluster):
        first = raw_write(cluster, put(cid, 1, b"a", b"first"))
        assert first.status is Status.OK
        wait_sessions(cluster, 1)  # the keeper's only: ours was forgotten
        late = put(cid, 2, b"a", b"second")
        resp = raw_write(cluster, late)
        assert resp == Response(Status.SESSION_EXPIRED, error=expired_error(2))
        assert raw_write(cluster, late) == resp  # sent again: still refused
        counts = session_counts(cluster)
        assert counts[cluster.wait_for_leader()] <= 1  # the refusal opened no session
        reader = cluster.client()
        assert reader.get_versioned(b"a") == (b"first", first.version)


def test_kvclient_raises_session_expired_then_works_in_a_fresh_session(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = start_cluster(cluster_factory)
    with Keeper(cluster):
        kv = cluster.client()
        version = kv.put(b"b", b"one")
        old_id = kv.client_id
        wait_sessions(cluster, 1)
        with pytest.raises(SessionExpired) as err:
            kv.put(b"b", b"two")
        assert str(err.value) == expired_error(2)
        assert kv.client_id != old_id  # a new session for the next request
        assert kv.get_versioned(b"b") == (b"one", version)  # not applied
        again = kv.put(b"b", b"two")
        assert again > version
        assert kv.get_versioned(b"b") == (b"two", again)
        assert kv.put(b"b", b"three") > again  # and the session goes on (seq 2)


def test_kvctl_after_and_through_an_expired_session(
    cluster_factory: Callable[..., Cluster],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """kvctl opens one session per run (seq 1), so a run after the TTL just
    works; a run handed an expired session exits 4 and changes nothing, and
    running the command again works (README, kvctl exit codes)."""
    cluster = start_cluster(cluster_factory)
    args = ["--cluster", cluster.cluster_arg, "--timeout", "10"]
    with Keeper(cluster):
        assert kvctl.main([*args, "put", "c", "one"]) == 0
        wait_sessions(cluster, 1)  # that run's session is forgotten
        assert kvctl.main([*args, "put", "c", "two"]) == 0  # a new run, a new session
        assert capsys.readouterr().out == "OK\nOK\n"

        kv = cluster.client()
        kv.put(b"other", b"x")  # opens a session, seq 1
        expired_id = kv.client_id
        wait_sessions(cluster, 1)

        def resumed(*a: Any, **kw: Any) -> KVClient:
            """A KVClient continuing the expired session (next write: seq 2)."""
            client = KVClient(*a, client_id=expired_id, **kw)
            client._seq = 1
            return client

        monkeypatch.setattr(kvctl, "KVClient", resumed)
        assert kvctl.main([*args, "put", "c", "three"]) == kvctl.EXIT_REJECTED == 4
        out, err = capsys.readouterr()
        assert out == "" and err == f"kvctl: error: rejected: {expired_error(2)}\n"
        monkeypatch.undo()
        assert kvctl.main([*args, "get", "c"]) == 0
        assert capsys.readouterr().out == "two\n"
        assert kvctl.main([*args, "put", "c", "three"]) == 0  # run again: applied once
        assert kvctl.main([*args, "get", "c"]) == 0
        assert capsys.readouterr().out == "OK\nthree\n"


def test_the_session_table_stays_bounded(cluster_factory: Callable[..., Cluster]) -> None:
    """Many one-off clients (one write each, then gone): the replicas' session
    count rises with them and falls back once they are idle past the TTL."""
    cluster = start_cluster(cluster_factory)
    clients, workers = 240, 8
    with Keeper(cluster):
        wait_sessions(cluster, 1)
        done = threading.Event()
        failures: list[Response] = []

        def one_offs(n: int) -> None:
            for i in range(n):
                resp = raw_write(cluster, put(os.urandom(16), 1, b"one-off", b"%d" % i))
                if resp.status is not Status.OK:
                    failures.append(resp)

        threads = [
            threading.Thread(target=one_offs, args=(clients // workers,)) for _ in range(workers)
        ]
        for t in threads:
            t.start()
        peak = 0
        while any(t.is_alive() for t in threads) or not done.is_set():
            if not any(t.is_alive() for t in threads):
                done.set()  # one more sample after the last write
            peak = max([peak, *session_counts(cluster).values()])
            time.sleep(0.02)
        for t in threads:
            t.join()
        assert failures == []
        # Sessions expire while the burst runs, so the peak depends on the
        # write rate; it is well above the keeper's one at any sane rate.
        assert 20 <= peak <= clients + 2, peak
        counts = wait_sessions(cluster, 1)  # every one-off session is gone again
        assert set(counts) == set(cluster.ids)
