"""The client library against fake replicas (no real servers).

A `FakeReplica` is a ZeroMQ ROUTER in a thread that speaks kvstore/protocol.py:
it answers STATUS with its id, and every other request with whatever its
`behaviour` says (a leader with an in-memory store, a follower that
redirects, silence, garbage, ...). It records the requests it received so
that the tests can check seq numbers and where the client sent what.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from client.client import (
    BadRequest,
    CasResult,
    ClusterUnavailable,
    KVClient,
    RequestTooLarge,
    SessionExpired,
)
from kvstore.config import ConfigError
from kvstore.limits import MAX_CLIENT_TIMEOUT_S, MAX_KEY_BYTES, MAX_VALUE_BYTES
from kvstore.protocol import (
    Op,
    ProtocolError,
    Request,
    Response,
    Status,
    decode_request,
    encode_response,
)
from replica.launch import free_ports

Behaviour = Callable[[Request], "Response | bytes | None"]


class FakeReplica:
    """A replica stand-in: answers per `behaviour` (None = stay silent)."""

    def __init__(self, replica_id: int, behaviour: Behaviour, *, answer_status: bool = True):
        self.id = replica_id
        self.behaviour = behaviour
        self.answer_status = answer_status
        self.requests: list[Request] = []
        self._sock = zmq.Context.instance().socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"127.0.0.1:{port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def ops(self) -> list[Op]:
        return [r.op for r in self.requests]

    def data_requests(self) -> list[Request]:
        return [r for r in self.requests if r.op is not Op.STATUS]

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(20):
                continue
            ident, empty, frame = self._sock.recv_multipart()
            reply = self._answer(frame)
            if reply is not None:
                self._sock.send_multipart([ident, empty, reply])
        self._sock.close(linger=0)

    def _answer(self, frame: bytes) -> bytes | None:
        try:
            req = decode_request(frame)
        except ProtocolError:
            return encode_response(Response(Status.BAD_REQUEST, error="undecodable"))
        self.requests.append(req)
        if req.op is Op.STATUS:
            if not self.answer_status:
                return None
            info = {"id": self.id, "role": "fake", "leader": None, "ballot": [1, 1]}
            return encode_response(Response(Status.OK, info=info))
        reply = self.behaviour(req)
        return encode_response(reply) if isinstance(reply, Response) else reply

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


class FakeStore:
    """A leader's state machine: versions from one revision counter, and a
    per-client session that replays the recorded answer to a retried seq
    (without a value, as kvstore/statemachine.py records it)."""

    def __init__(self) -> None:
        self.data: dict[bytes, tuple[bytes, int]] = {}
        self.revision = 0
        self.sessions: dict[bytes, tuple[int, Response]] = {}
        self.applied = 0

    def __call__(self, req: Request) -> Response:
        if req.op is Op.GET:
            found = self.data.get(req.key)
            return Response(Status.OK, *found) if found else Response(Status.NOT_FOUND)
        last = self.sessions.get(req.client_id)
        if last is not None and last[0] == req.seq:
            return last[1]
        resp = self._apply(req)
        self.applied += 1
        self.sessions[req.client_id] = (req.seq, Response(resp.status, None, resp.version))
        return resp

    def _apply(self, req: Request) -> Response:
        current = self.data.get(req.key)
        if req.op is Op.DELETE:
            if current is None:
                return Response(Status.NOT_FOUND)
            del self.data[req.key]
            return Response(Status.OK)
        if req.op is Op.CAS:
            cur_value, cur_version = current if current else (None, 0)
            if req.expected_version is not None:
                ok = req.expected_version == cur_version
            else:
                ok = req.expected_value == cur_value
            if not ok:
                return Response(Status.CAS_FAILED, cur_value, cur_version)
        self.revision += 1
        self.data[req.key] = (req.value, self.revision)
        return Response(Status.OK, None, self.revision)


def redirect_to(leader: int | None) -> Behaviour:
    return lambda req: Response(Status.REDIRECT, leader=leader)


def silent(req: Request) -> None:
    return None


def garbage(req: Request) -> bytes:
    return b"\xc1 this is not msgpack"


def first_n(n: int, first: Behaviour, then: Behaviour) -> Behaviour:
    """`first` for the first n data requests, then `then`."""
    count = [0]

    def behaviour(req: Request) -> Response | bytes | None:
        count[0] += 1
        return first(req) if count[0] <= n else then(req)

    return behaviour


@pytest.fixture
def make() -> Iterator[Callable[..., FakeReplica]]:
    created: list[FakeReplica] = []

    def factory(replica_id: int, behaviour: Behaviour, **kw: bool) -> FakeReplica:
        created.append(FakeReplica(replica_id, behaviour, **kw))
        return created[-1]

    yield factory
    for fake in created:
        fake.close()


def client_for(*fakes: FakeReplica | str, start: int = 0, **kw: float) -> KVClient:
    """A fast-timing client; `start` is the index it tries first (the real
    client starts at a random one)."""
    kw.setdefault("timeout", 2.0)
    kw.setdefault("attempt_timeout", 0.2)
    addrs = [f if isinstance(f, str) else f.address for f in fakes]
    return KVClient(addrs, first=start, **kw)


def test_put_get_delete_cas_against_a_leader(make: Callable[..., FakeReplica]) -> None:
    leader = make(1, FakeStore())
    with client_for(leader) as c:
        assert c.get("k") is None
        assert c.put("k", "v1") == 1
        assert c.get("k") == b"v1"
        assert c.get_versioned(b"k") == (b"v1", 1)
        assert c.cas("k", "v2", expected_version=1) == CasResult(True, b"v2", 2)
        assert c.cas("k", "v3", expected_value="nope") == CasResult(False, b"v2", 2)
        assert c.cas("new", "x", expected_version=0).succeeded
        assert c.delete("k") is True
        assert c.delete("k") is False
        assert c.get("k") is None


def test_requests_carry_client_id_and_increasing_seq(make: Callable[..., FakeReplica]) -> None:
    leader = make(1, FakeStore())
    with client_for(leader) as c:
        c.put("a", "1")
        c.get("a")
        c.delete("a")
        c.cas("a", "2", expected_version=0)
        assert len(c.client_id) == 16
    reqs = leader.data_requests()
    # Writes are numbered; a read carries the next write's number, unused.
    assert [(r.op, r.seq) for r in reqs] == [(Op.PUT, 1), (Op.GET, 2), (Op.DELETE, 2), (Op.CAS, 3)]
    assert {r.client_id for r in reqs} == {c.client_id}


def test_a_session_s_first_write_is_seq_1(make: Callable[..., FakeReplica]) -> None:
    """However many reads and locally refused writes come first: seq 1 is how
    the replicas tell a new session from a forgotten one."""
    leader = make(1, FakeStore())
    with client_for(leader) as c:
        c.get("a")
        c.get("b", stale=True)
        with pytest.raises(RequestTooLarge):
            c.put("a", b"x" * (MAX_VALUE_BYTES + 1))
        c.put("a", "1")
    assert [r.seq for r in leader.data_requests()] == [1, 1, 1]


def _expire_first_write(req: Request) -> Response | None:
    return Response(Status.SESSION_EXPIRED, error="session expired or unknown: seq 2")


def test_session_expired_raises_and_the_next_request_starts_a_new_session(
    make: Callable[..., FakeReplica],
) -> None:
    store = FakeStore()
    leader = make(1, first_n(2, store, first_n(1, _expire_first_write, store)))
    with client_for(leader) as c:
        c.put("a", "1")
        c.put("b", "2")
        old_id = c.client_id
        with pytest.raises(SessionExpired, match="session expired or unknown"):
            c.put("c", "3")
        assert c.client_id != old_id and len(c.client_id) == 16
        assert c.put("c", "3") == 3
    reqs = leader.data_requests()
    assert [(r.client_id == old_id, r.seq) for r in reqs] == [
        (True, 1),
        (True, 2),
        (True, 3),  # refused: not applied
        (False, 1),
    ]
    assert store.applied == 3


def test_a_retried_failed_cas_has_no_value(make: Callable[..., FakeReplica]) -> None:
    store = FakeStore()
    store.data[b"k"] = (b"v", 1)

    def applied_but_lost(req: Request) -> None:
        store(req)  # applied and recorded; the answer never arrives

    leader = make(1, first_n(1, applied_but_lost, store))
    with client_for(leader, attempt_timeout=0.3) as c:
        # The retry is answered from the session record, which keeps no value.
        assert c.cas("k", "w", expected_version=5) == CasResult(False, None, 1)
    assert store.data[b"k"] == (b"v", 1)


def test_timeout_is_capped_below_the_session_ttl() -> None:
    with pytest.raises(ValueError, match="at most"):
        KVClient("127.0.0.1:1", timeout=MAX_CLIENT_TIMEOUT_S + 1)
    KVClient("127.0.0.1:1", timeout=MAX_CLIENT_TIMEOUT_S).close()


def test_str_is_utf8(make: Callable[..., FakeReplica]) -> None:
    leader = make(1, FakeStore())
    with client_for(leader) as c:
        c.put("clé", "värde")
        assert leader.data_requests()[0].key == "clé".encode()
        assert c.get("clé") == "värde".encode()


def test_follows_redirect_by_replica_id(make: Callable[..., FakeReplica]) -> None:
    # Ids deliberately unrelated to positions: the client must learn them.
    follower_a = make(1, redirect_to(9))
    leader = make(9, FakeStore())
    follower_b = make(5, redirect_to(9))
    with client_for(follower_a, follower_b, leader, start=0) as c:
        assert c.put("k", "v") == 1
        assert follower_a.data_requests() and not follower_b.data_requests()
        before = (len(follower_a.requests), len(follower_b.requests))
        for i in range(10):  # steady state: straight to the leader
            c.put("k", str(i))
        assert (len(follower_a.requests), len(follower_b.requests)) == before
        assert len(leader.data_requests()) == 11


def test_redirect_to_an_unknown_id_ends_in_cluster_unavailable(
    make: Callable[..., FakeReplica],
) -> None:
    follower = make(1, redirect_to(42))
    with client_for(follower, timeout=0.5) as c, pytest.raises(ClusterUnavailable) as err:
        c.put("k", "v")
    assert "replica 42" in str(err.value)


def test_timeout_retries_with_the_same_seq(make: Callable[..., FakeReplica]) -> None:
    store = FakeStore()
    leader = make(1, first_n(1, silent, store))
    with client_for(leader, attempt_timeout=0.2) as c:
        t0 = time.monotonic()
        assert c.put("k", "v") == 1
        assert 0.2 <= time.monotonic() - t0 < 1.5
    reqs = leader.data_requests()
    assert len(reqs) == 2
    assert reqs[0].seq == reqs[1].seq == 1
    assert reqs[0].client_id == reqs[1].client_id
    assert store.applied == 1


def test_a_silent_replica_is_skipped(make: Callable[..., FakeReplica]) -> None:
    dead = make(1, silent, answer_status=False)
    leader = make(2, FakeStore())
    with client_for(dead, leader, start=0) as c:
        assert c.put("k", "v") == 1
        assert c.put("k", "w") == 2
    assert len(dead.requests) == 1  # remembered the leader afterwards


def test_no_answer_raises_cluster_unavailable_within_bounds(
    make: Callable[..., FakeReplica],
) -> None:
    fakes = [make(i, silent, answer_status=False) for i in (1, 2)]
    with client_for(*fakes, timeout=0.6, attempt_timeout=0.2) as c:
        t0 = time.monotonic()
        with pytest.raises(ClusterUnavailable, match="may or may not"):
            c.put("k", "v")
        assert 0.55 <= time.monotonic() - t0 < 1.0
    assert all(r.seq == 1 for f in fakes for r in f.requests)


def test_nobody_listening_raises_cluster_unavailable() -> None:
    with client_for(f"127.0.0.1:{free_ports(1)[0]}", timeout=0.3, attempt_timeout=0.1) as c:
        t0 = time.monotonic()
        with pytest.raises(ClusterUnavailable, match="did not answer"):
            c.get("k")
        assert time.monotonic() - t0 < 0.8


def test_garbage_reply_counts_as_a_failed_attempt(make: Callable[..., FakeReplica]) -> None:
    bad = make(1, garbage)
    leader = make(2, FakeStore())
    with client_for(bad, leader, start=0) as c:
        assert c.put("k", "v") == 1
    with client_for(bad, timeout=0.3) as c, pytest.raises(ClusterUnavailable, match="bad reply"):
        c.put("k", "v")


def test_unavailable_backs_off_then_retries(make: Callable[..., FakeReplica]) -> None:
    store = FakeStore()
    leader = make(1, first_n(3, lambda r: Response(Status.UNAVAILABLE, error="electing"), store))
    with client_for(leader) as c:
        assert c.put("k", "v") == 1
    assert [r.seq for r in leader.data_requests()] == [1, 1, 1, 1]


def test_unavailable_until_the_deadline(make: Callable[..., FakeReplica]) -> None:
    fake = make(1, lambda r: Response(Status.UNAVAILABLE, error="no leader"))
    with client_for(fake, timeout=0.4) as c:
        t0 = time.monotonic()
        with pytest.raises(ClusterUnavailable, match="no leader"):
            c.put("k", "v")
        assert 0.35 <= time.monotonic() - t0 < 0.8
    # backoff grows and is bounded: a handful of requests, not thousands
    assert 3 <= len(fake.requests) <= 20


@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda c: c.put("k", b"x" * (MAX_VALUE_BYTES + 1)), RequestTooLarge),
        (lambda c: c.put(b"k" * (MAX_KEY_BYTES + 1), "v"), RequestTooLarge),
        (lambda c: c.cas("k", "v", expected_value=b"x" * (MAX_VALUE_BYTES + 1)), RequestTooLarge),
        (lambda c: c.put("", "v"), BadRequest),
        (lambda c: c.cas("k", "v"), BadRequest),
        (lambda c: c.cas("k", "v", expected_value="a", expected_version=1), BadRequest),
    ],
)
def test_limits_are_checked_before_sending(
    make: Callable[..., FakeReplica], call: Callable[[KVClient], object], exc: type
) -> None:
    leader = make(1, FakeStore())
    with client_for(leader) as c, pytest.raises(exc):
        call(c)
    assert leader.requests == []


def test_max_size_value_passes(make: Callable[..., FakeReplica]) -> None:
    leader = make(1, FakeStore())
    with client_for(leader) as c:
        c.put("k", b"x" * MAX_VALUE_BYTES)
        assert c.get("k") == b"x" * MAX_VALUE_BYTES


@pytest.mark.parametrize(
    "status, exc", [(Status.TOO_LARGE, RequestTooLarge), (Status.BAD_REQUEST, BadRequest)]
)
def test_server_rejections_raise(
    make: Callable[..., FakeReplica], status: Status, exc: type
) -> None:
    fake = make(1, lambda r: Response(status, error="refused by server"))
    with client_for(fake) as c, pytest.raises(exc, match="refused by server"):
        c.put("k", "v")


def test_status_reports_each_replica(make: Callable[..., FakeReplica]) -> None:
    leader = make(3, FakeStore())
    nobody = f"127.0.0.1:{free_ports(1)[0]}"
    with client_for(leader, nobody, attempt_timeout=0.3) as c:
        t0 = time.monotonic()
        report = c.status()
        assert time.monotonic() - t0 < 1.0
    assert report[0]["id"] == 3 and report[0]["address"] == leader.address
    assert report[1] == {"address": nobody, "error": "unreachable"}


def test_client_recovers_after_status_timeout(make: Callable[..., FakeReplica]) -> None:
    late = make(1, FakeStore(), answer_status=False)
    with client_for(late, attempt_timeout=0.2) as c:
        assert c.status()[0]["error"] == "unreachable"
        assert c.put("k", "v") == 1  # the stuck REQ socket was replaced


def test_addresses_default_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVSTORE_CLUSTER", "10.0.0.1:1,tcp://10.0.0.2:2")
    with KVClient() as c:
        assert c.addresses == ["tcp://10.0.0.1:1", "tcp://10.0.0.2:2"]
    monkeypatch.delenv("KVSTORE_CLUSTER")
    with KVClient() as c:
        assert c.addresses == [f"tcp://127.0.0.1:{p}" for p in (7001, 7002, 7003)]


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        KVClient("nonsense")
    with pytest.raises(ValueError):
        KVClient("127.0.0.1:1", client_id=b"short")
    with pytest.raises(ValueError):
        KVClient("127.0.0.1:1", timeout=0)
    c = KVClient("127.0.0.1:1")
    c.close()
    with pytest.raises(Exception, match="closed"):
        c.get("k")


def test_interrupted_request_leaves_the_client_usable(make: Callable[..., FakeReplica]) -> None:
    leader = make(1, first_n(1, silent, FakeStore()))

    def interrupt(signum: int, frame: object) -> None:
        raise RuntimeError("interrupted")

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with client_for(leader, attempt_timeout=2.0) as c:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            with pytest.raises(RuntimeError, match="interrupted"):
                c.put("k", "v")  # stuck waiting for the silent first reply
            t0 = time.monotonic()
            assert c.put("k", "w") >= 1  # a fresh REQ socket, no EFSM
            assert time.monotonic() - t0 < 1.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_first_picks_the_replica_asked_first(make: Callable[..., FakeReplica]) -> None:
    follower = make(2, lambda req: Response(Status.OK, value=b"from-2"))
    leader = make(1, FakeStore())
    with KVClient([leader.address, follower.address], first=1, timeout=2.0) as c:
        assert c.get("k", stale=True) == b"from-2"
    with pytest.raises(ValueError, match="first must be an index"):
        KVClient(["127.0.0.1:1", "127.0.0.1:2"], first=2)
