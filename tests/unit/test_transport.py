"""The peer transport in one process: PUSH/PULL on loopback, what is
delivered, what is dropped and counted, and a peer that comes back on the
same address (what ROUTER_HANDOVER used to be needed for)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import zmq

from replica import codec
from replica.launch import free_ports
from replica.messages import Ballot, Heartbeat, Message
from replica.transport import BadFrames, BindError, PeerTransport


def _hb(sender: int, round_: int = 1) -> Heartbeat:
    return Heartbeat(sender, Ballot(1, sender), 0, round_)


def _recv_until(
    t: PeerTransport, done: Callable[[list[Message]], bool], timeout: float = 10.0
) -> list[Message]:
    """Messages `t` receives until `done(received)` holds (polls, no sleeps)."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        assert time.monotonic() < deadline, f"only received {got}"
        if t.inbox.poll(50):
            t.recv(100, got)
    return got


@pytest.fixture
def pair():
    """Replicas 1 and 2, each with its transport; closed at the end."""
    ctx = zmq.Context()
    port1, port2 = free_ports(2)
    addr = {1: f"tcp://127.0.0.1:{port1}", 2: f"tcp://127.0.0.1:{port2}"}
    made: list[PeerTransport] = []

    def make(rid: int) -> PeerTransport:
        other = 2 if rid == 1 else 1
        t = PeerTransport(ctx, addr[rid], {other: addr[other]}, BadFrames())
        made.append(t)
        return t

    yield make, addr
    for t in made:
        t.close()
    ctx.term()


def test_messages_flow_both_ways(pair) -> None:
    make, _ = pair
    one, two = make(1), make(2)
    # Sends to an unconnected peer are dropped (IMMEDIATE): resend until one lands.
    got = []
    deadline = time.monotonic() + 10
    while not got:
        assert time.monotonic() < deadline
        one.send([(2, _hb(1))])
        if two.inbox.poll(20):
            two.recv(10, got)
    assert got[0] == _hb(1)
    two.send([(1, _hb(2, r)) for r in range(1, 4)])
    got = _recv_until(one, lambda g: len(g) >= 3)
    assert got == [_hb(2, 1), _hb(2, 2), _hb(2, 3)]  # one connection keeps order
    one.send([(3, _hb(1))])  # no such peer: ignored, not raised


def test_unknown_senders_multipart_and_garbage_are_dropped_and_counted(pair) -> None:
    make, addr = pair
    two = make(2)
    stranger = zmq.Context.instance().socket(zmq.PUSH)
    stranger.setsockopt(zmq.LINGER, 1000)
    stranger.connect(addr[2])
    try:
        stranger.send(codec.encode(_hb(99)))  # no such replica
        stranger.send(codec.encode(_hb(2)))  # the receiver's own id
        stranger.send_multipart([codec.encode(_hb(1)), b"x"])
        stranger.send(b"\x00garbage")
        stranger.send(codec.encode(_hb(1, 7)))  # claims replica 1: accepted (no CURVE)
        got = _recv_until(two, lambda g: len(g) >= 1)
    finally:
        stranger.close()
    assert got == [_hb(1, 7)]
    assert two.bad.as_dict() == {"peer_unknown": 2, "peer_envelope": 1, "peer_undecodable": 1}


def test_a_drain_takes_at_most_its_limit_and_says_when_it_stopped_there(pair) -> None:
    """`recv` takes frames one by one and ends on the socket's EVENTS: a
    message of three frames is dropped whole (the next one is intact), and
    True (call again at once) comes only with `limit` messages read (taken
    or dropped)."""
    make, addr = pair
    two = make(2)
    stranger = zmq.Context.instance().socket(zmq.PUSH)
    stranger.setsockopt(zmq.LINGER, 1000)
    stranger.connect(addr[2])
    got: list[Message] = []
    calls: list[tuple[int, bool]] = []
    try:
        stranger.send(codec.encode(_hb(1, 1)))
        stranger.send_multipart([codec.encode(_hb(1, 2)), b"x", b"y"])
        for r in range(3, 7):
            stranger.send(codec.encode(_hb(1, r)))
        deadline = time.monotonic() + 10
        while len(got) < 5:
            assert time.monotonic() < deadline, f"only received {got}"
            if two.inbox.poll(50):
                before, dropped = len(got), sum(two.bad.as_dict().values())
                more = two.recv(2, got)
                read = len(got) - before + sum(two.bad.as_dict().values()) - dropped
                calls.append((read, more))
        assert two.recv(2, got) is False  # nothing left: no exception, nothing taken
    finally:
        stranger.close()
    assert got == [_hb(1, r) for r in (1, 3, 4, 5, 6)]
    assert two.bad.as_dict() == {"peer_envelope": 1}
    assert all(read == 2 for read, more in calls if more)
    assert all(1 <= read <= 2 for read, _ in calls)


def test_a_peer_back_on_the_same_address_is_heard_again(pair) -> None:
    """Replica 1 goes away and a new incarnation binds the same address: the
    stale connection and the new one need no handover; 2's PUSH reconnects."""
    make, _ = pair
    one, two = make(1), make(2)

    def deliver(src: PeerTransport, dst: PeerTransport, msg: Heartbeat) -> None:
        got: list[Message] = []
        deadline = time.monotonic() + 10
        while msg not in got:
            assert time.monotonic() < deadline, f"{msg} never arrived"
            src.send([(2 if msg.sender == 1 else 1, msg)])
            if dst.inbox.poll(20):
                dst.recv(100, got)

    deliver(one, two, _hb(1, 1))
    deliver(two, one, _hb(2, 1))
    one.close()
    deadline = time.monotonic() + 10
    while True:  # the closed socket's listener is released asynchronously
        try:
            again = make(1)
            break
        except BindError:
            assert time.monotonic() < deadline, "the address was never free again"
            time.sleep(0.01)
    deliver(again, two, _hb(1, 2))
    deliver(two, again, _hb(2, 2))
