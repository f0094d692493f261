"""The replica event loop in-process: `Replica` objects on loopback sockets,
driven by the test through `run_once` (no threads, no subprocesses).

Checks the request routing, the merged-Ready order (persist before the
messages that reveal it), exactly-once handling of a retried request in
flight, and that waiting clients are released when leadership is lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import zmq

from kvstore.config import ReplicaAddress
from kvstore.limits import MAX_KEY_BYTES
from kvstore.protocol import (
    FROM_KEY,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteResult,
    Op,
    RangeResult,
    Request,
    Response,
    Status,
    Txn,
    TxnOp,
    TxnOpKind,
    decode_response,
    encode_request,
    prefix_end,
)
from replica.driver import ReplicaDriver
from replica.launch import free_ports
from replica.messages import Ballot, Nack, Phase2a, Phase2b, Vote
from replica.paxos import Ready, Role
from replica.server import Replica
from replica.storage import PendingPersist

pytestmark = pytest.mark.timeout(60)

_CID = b"u" * 16


def _cluster_addresses(n: int) -> list[ReplicaAddress]:
    ports = free_ports(2 * n)
    out = []
    for i in range(n):
        peer, client = f"tcp://127.0.0.1:{ports[2 * i]}", f"tcp://127.0.0.1:{ports[2 * i + 1]}"
        out.append(ReplicaAddress(i + 1, peer, client, peer, client))
    return out


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Callable[[int], list[Replica]]]:
    made: list[Replica] = []

    def build(n: int) -> list[Replica]:
        addresses = _cluster_addresses(n)
        replicas = [
            Replica(a, addresses, tmp_path / f"r{len(made)}-{a.id}", tick_ms=2) for a in addresses
        ]
        made.extend(replicas)
        return replicas

    yield build
    for r in made:
        r.close()


def pump(replicas: list[Replica], until: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "condition not reached"
        for r in replicas:
            r.run_once(1)


def leader_of(replicas: list[Replica]) -> Replica:
    def agreed() -> bool:
        leaders = [r for r in replicas if r.driver.core.is_leader]
        return len(leaders) == 1 and all(r.driver.core.leader_id == leaders[0].id for r in replicas)

    pump(replicas, agreed)
    return next(r for r in replicas if r.driver.core.is_leader)


class Client:
    """A DEALER speaking the REQ envelope, so several requests can be in flight."""

    def __init__(self, replica: Replica) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(replica.me.client)

    def send(self, frame: bytes) -> None:
        self.sock.send_multipart([b"", frame])

    def recv(self, replicas: list[Replica], timeout: float = 10.0) -> Response:
        pump(replicas, lambda: self.sock.poll(0), timeout)
        _, payload = self.sock.recv_multipart()
        return decode_response(payload)

    def call(self, replicas: list[Replica], req: Request) -> Response:
        self.send(encode_request(req))
        return self.recv(replicas)

    def close(self) -> None:
        self.sock.close(linger=0)


def _put(seq: int, key: bytes = b"k", value: bytes = b"v") -> Request:
    return Request(Op.PUT, _CID, seq, key, value)


def test_merge_ready_keeps_contract_order() -> None:
    a = Ready(promised=Ballot(1, 1), votes={0: Vote(Ballot(1, 1), (b"a",))})
    a.messages.append((2, Phase2b(1, Ballot(1, 1), 0)))
    a.committed.append((0, (b"a",)))
    later_vote = Vote(Ballot(2, 2), (b"b",))
    b = Ready(promised=Ballot(2, 2), votes={0: later_vote, 1: later_vote}, reads=["r"])
    b.messages.append((3, Phase2b(1, Ballot(2, 2), 1)))
    b.committed.append((1, (b"b",)))
    a.merge(b)
    assert a.promised == Ballot(2, 2)
    assert a.votes == {0: later_vote, 1: later_vote}
    assert [dst for dst, _ in a.messages] == [2, 3]
    assert [slot for slot, _ in a.committed] == [0, 1]
    assert a.reads == ["r"]


def test_single_replica_serves_everything(make: Callable[[int], list[Replica]]) -> None:
    replicas = make(1)
    (r,) = replicas
    leader_of(replicas)
    client = Client(r)
    try:
        ok = client.call(replicas, _put(1, b"k", b"v1"))
        assert ok.status is Status.OK and ok.version == 1
        got = client.call(replicas, Request(Op.GET, _CID, 2, b"k"))
        assert (got.status, got.value, got.version) == (Status.OK, b"v1", 1)
        stale = client.call(replicas, Request(Op.GET, _CID, 3, b"k", stale=True))
        assert stale.value == b"v1"
        missing = client.call(replicas, Request(Op.GET, _CID, 4, b"nope"))
        assert missing.status is Status.NOT_FOUND
        info = client.call(replicas, Request(Op.STATUS)).info
        assert info["role"] == "leader" and info["applied_index"] == info["commit_index"]
        client.send(b"\x93garbage")
        assert client.recv(replicas).status is Status.BAD_REQUEST
        big = client.call(replicas, _put(5, b"k" * (MAX_KEY_BYTES + 1)))
        assert big.status is Status.TOO_LARGE and "limit" in big.error
        assert r.sm.revision == 1
    finally:
        client.close()


def test_follower_redirects_and_serves_stale_reads(make: Callable[[int], list[Replica]]) -> None:
    replicas = make(3)
    leader = leader_of(replicas)
    follower = next(r for r in replicas if r is not leader)
    to_leader, to_follower = Client(leader), Client(follower)
    try:
        assert to_leader.call(replicas, _put(1)).status is Status.OK
        for req in (_put(2), Request(Op.GET, _CID, 3, b"k")):
            resp = to_follower.call(replicas, req)
            assert resp.status is Status.REDIRECT and resp.leader == leader.id
        pump(replicas, lambda: follower.sm.revision == 1)
        stale = to_follower.call(replicas, Request(Op.GET, _CID, 4, b"k", stale=True))
        assert stale.value == b"v"
    finally:
        to_leader.close()
        to_follower.close()


def test_retry_in_flight_is_proposed_once(make: Callable[[int], list[Replica]]) -> None:
    """A lazy-pirate retry (same client_id and seq, new socket) while the
    first copy is in flight: one proposal, the answer goes to the retry."""
    replicas = make(3)
    leader = leader_of(replicas)
    first, retry = Client(leader), Client(leader)
    try:
        frame = encode_request(_put(1))
        first.send(frame)
        pump([leader], lambda: leader.driver.waiting_writes)
        retry.send(frame)
        pump([leader], lambda: not leader.clients.router.poll(0) and leader.driver.waiting_writes)
        assert retry.recv(replicas).status is Status.OK
        assert first.sock.poll(100) == 0
        votes = leader.driver.storage.load().votes.values()
        assert [c for vote in votes for c in vote.value].count(frame) == 1
    finally:
        first.close()
        retry.close()


def test_lost_leadership_releases_waiting_clients(make: Callable[[int], list[Replica]]) -> None:
    replicas = make(3)
    leader = leader_of(replicas)
    client, reader = Client(leader), Client(leader)
    try:
        client.send(encode_request(_put(1)))
        reader.send(encode_request(Request(Op.GET, _CID, 9, b"k")))
        driver = leader.driver
        pump([leader], lambda: driver.waiting_writes and driver.pending_reads)
        # A higher ballot appears (as a Nack would bring it): step down.
        status = driver.status()
        peer = status.peers[0]
        driver.iterate([Nack(peer, status.ballot, Ballot(status.ballot.round + 5, peer))], [])
        assert driver.status().role is not Role.LEADER
        for c in (client, reader):
            assert c.recv([leader], 2).status in (Status.UNAVAILABLE, Status.REDIRECT)
        assert not driver.waiting_writes and not driver.pending_reads
    finally:
        client.close()
        reader.close()


def test_persist_precedes_every_revealing_message(
    make: Callable[[int], list[Replica]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within an iteration nothing but the leader's Phase2a leaves before the
    synced batch (and with early_phase2a off, nothing at all)."""
    replicas = make(3)
    leader = leader_of(replicas)
    log: list[tuple[int, str, list[str]]] = []  # (replica, event, message types)
    original_persist, original_finish = ReplicaDriver._persist, ReplicaDriver._finish

    def persist(self: ReplicaDriver, acc: Ready) -> None:
        log.append((self.id, "persist", []))
        original_persist(self, acc)

    def finish(self: ReplicaDriver, acc: Ready) -> None:
        log.append((self.id, "finish", []))
        original_finish(self, acc)

    class Logged:  # a batch applied beside (driver docstring): on disk after wait()
        def __init__(self, rid: int, pending: PendingPersist) -> None:
            self.rid, self.pending = rid, pending

        def wait(self) -> None:
            self.pending.wait()
            log.append((self.rid, "persist", []))

    def persist_begin(self: ReplicaDriver, acc: Ready) -> Logged:
        return Logged(self.id, original_begin(self, acc))

    original_begin = ReplicaDriver._persist_begin
    monkeypatch.setattr(ReplicaDriver, "_persist", persist)
    monkeypatch.setattr(ReplicaDriver, "_persist_begin", persist_begin)
    monkeypatch.setattr(ReplicaDriver, "_finish", finish)
    for r in replicas:

        def send(messages: list, rid: int = r.id, inner: Callable = r.peers.send) -> None:
            log.append((rid, "send", [type(m).__name__ for _, m in messages]))
            inner(messages)

        monkeypatch.setattr(r.peers, "send", send)

    for seq, early in enumerate((True, False), start=1):
        for r in replicas:
            monkeypatch.setattr(r.driver, "early_phase2a", early)
        log.clear()
        client = Client(leader)
        try:
            assert client.call(replicas, _put(seq, b"k%d" % seq)).status is Status.OK
        finally:
            client.close()
        _check_order(log, early)


def _check_order(log: list[tuple[int, str, list[str]]], early: bool) -> None:
    """Per replica and iteration (`finish` marks its start): every send
    before that iteration's persist carries only Phase2a, and only early."""
    persisted = sum(1 for _, event, _ in log if event == "persist")
    assert persisted >= 3  # the leader and both followers synced votes
    pending: dict[int, list[list[str]]] = {}
    for rid, event, names in log:
        if event == "finish":
            pending[rid] = []
        elif event == "send":
            pending.setdefault(rid, []).append(names)
        elif event == "persist":
            for names_sent in pending.get(rid, []):
                assert early, f"replica {rid} sent {names_sent} before persisting"
                assert set(names_sent) == {Phase2a.__name__}, names_sent
            pending[rid] = []


def test_ranges_and_transactions_are_routed(make: Callable[[int], list[Replica]]) -> None:
    """RANGE is a read (the read index on the leader, REDIRECT on a
    follower, local when stale); DELETE_RANGE and TXN go through the log."""
    replicas = make(3)
    leader = leader_of(replicas)
    follower = next(r for r in replicas if r is not leader)
    to_leader, to_follower = Client(leader), Client(follower)
    scan = Request(Op.RANGE, _CID, 9, b"p/", range_end=prefix_end(b"p/"), limit=2)
    try:
        for seq, key in enumerate([b"p/1", b"p/2", b"p/3", b"q"], start=1):
            assert to_leader.call(replicas, _put(seq, key)).status is Status.OK
        page = to_leader.call(replicas, scan)
        assert (page.status, page.version) == (Status.OK, 4)
        assert [kv.key for kv in page.result.kvs] == [b"p/1", b"p/2"]
        assert (page.result.more, page.result.next_key) == (True, b"p/3")
        assert to_follower.call(replicas, scan).status is Status.REDIRECT
        txn = Txn(
            (Compare(CompareTarget.VERSION, CompareOp.EQUAL, b"q", 4),),
            (TxnOp(TxnOpKind.PUT, b"p/0", value=b"new"), TxnOp(TxnOpKind.DELETE, b"q")),
        )
        done = to_leader.call(replicas, Request(Op.TXN, _CID, 5, txn=txn))
        assert (done.status, done.version) == (Status.OK, 5)
        gone = to_leader.call(
            replicas, Request(Op.DELETE_RANGE, _CID, 6, b"p/", range_end=prefix_end(b"p/"))
        )
        assert (gone.status, gone.version, gone.result) == (Status.OK, 6, DeleteResult(4))
        pump(replicas, lambda: follower.sm.revision == 6)
        stale = to_follower.call(replicas, replace(scan, key=b"\0", range_end=FROM_KEY, stale=True))
        assert stale.result == RangeResult()
    finally:
        to_leader.close()
        to_follower.close()
