"""The ZeroMQ sockets of one replica: peers (Paxos messages) and clients.

Peers. Every replica binds one PULL socket on its `peer_bind` address and,
for every other replica, connects one PUSH socket to that replica's `peer`
address. A frame is `replica.codec.encode(msg)`; the message names its
sender, and a message whose sender is not a configured peer is dropped.
Without CURVE nothing on a peer port is authenticated: anything that reaches
it can claim to be a replica (keep peer ports on a private network). With
CURVE (`PeerKeys`, replica/curve.py) the PULL is a CURVE server with this
replica's key, each PUSH a CURVE client that knows its peer's public key,
the ZAP handler lets in only the replicas' keys, and a message is dropped
(`peer_impostor`) unless its sender is the replica whose key connected.

Why not ROUTER/DEALER, which would tag every frame with the connection's
routing id: a routing id is chosen by whoever connects, so it authenticates
nothing either, and keeping it unique needs ROUTER_HANDOVER (a reconnecting
peer takes over its id from a stale connection). In libzmq 4.3.5 a handover
stops input on the displaced connection while its peer's close is being
read, which can leave that connection in an I/O-error state in which the
next ZMTP heartbeat trips `Assertion failed: !_io_error
(stream_engine_base.cpp:310)` and aborts the process (zeromq/libzmq#4364,
#4841; seen after a replica was paused past the heartbeat timeout,
docs/FAULTS.md). A PULL socket never stops a connection's input: it has no
identities to hand over, and its receive queue is unbounded (RCVHWM 0;
libzmq's input-stopped path on a full queue is the same abort,
zeromq/libzmq#3937), so a stale connection and its replacement simply
coexist until heartbeats close the stale one.

Sends never block: a PUSH socket has a bounded send queue (SNDHWM),
IMMEDIATE set (nothing is queued for a peer that is not connected) and
linger 0; when the queue is full the message is dropped. Paxos tolerates
loss and the core retransmits, so a slow or dead peer never stalls the
event loop.

Connections are watched with ZMTP heartbeats on both ends
(`HEARTBEAT_IVL_MS`, `HEARTBEAT_TIMEOUT_MS`), so a half-open connection left
by a partition or a crashed host is closed and the PUSH reconnects.

Inbound frames are dropped, counted per kind and logged once per kind
(never raised) when a message has more than one frame, fails
`codec.decode`, or names a sender that is not a configured peer (a
stranger, or this replica's own id).

Clients. One ROUTER bound on `client_bind`. A REQ client's request arrives as
[identity, b"", payload] (a DEALER client sends [b"", payload] and arrives the
same way); the reply goes back with the same envelope. Anything else is a
malformed envelope: counted and dropped. With CURVE the ROUTER is a CURVE
server with the cluster's client-port key (kvstore/security.py). Its receive queue is unbounded too:
with a limit, a client that sends ZMTP heartbeats, floods requests and
vanishes can make libzmq 4.3.5 abort the replica the same way. The price: a
client that sends faster than the replica serves is buffered in memory
rather than slowed down by TCP.

Watch streams (kvctl watch) ride on the same client ROUTER as long polls:
the client's REQ asks for the events after the last revision it has, and
the replica answers with one bounded batch when it has applied a matching
change, or with none after the hold time the client gave (replica/watch.py).
Why not PUB/SUB: a publisher drops silently for a slow subscriber at its
high-water mark and knows nothing of where each one is, so there is no
resuming without a gap and no telling a watcher it fell behind. Why not a
DEALER stream with credits: it pipelines more, but every stream is state
the replica must keep and time out, and a ROUTER that sends unasked drops
at its HWM too. With a long poll the request is the flow control (a slow
watcher is never sent a batch it did not ask for, and the replica holds
nothing for it but its one request), the lazy-pirate retries and the
resumption from a revision come with REQ, and CURVE covers it unchanged.

Every socket refuses frames above `kvstore.limits.MAX_FRAME_BYTES`
(ZMQ_MAXMSGSIZE: the offending connection is dropped by libzmq).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import zmq

from kvstore.limits import MAX_FRAME_BYTES
from kvstore.security import ZAP_DOMAIN_CLIENT, ZAP_DOMAIN_PEER
from replica import codec
from replica.badinput import BadFrames
from replica.curve import PeerKeys
from replica.driver import Envelope
from replica.messages import Message

log = logging.getLogger("replica.transport")

# The backend's send, without pyzmq's Python wrapper (routing_id, group,
# part type checks): the hot path sends bytes only.
_SEND = zmq.backend.Socket.send
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
# And its `recv` and `get`, for the drains: a drain takes frames one by one
# and stops when the socket's EVENTS say nothing is left, instead of
# `recv_multipart` until `zmq.Again`. Right after the loop wakes, with cold
# caches, raising and catching that exception is what a drain of one
# message mostly cost: 25 us at p50 against 10 this way (a PULL socket, one
# 60-byte message after a 0.3 ms sleep; hot, 5 against 3). Frames are taken
# as `zmq.Frame`s (`copy=False`), whose `more` libzmq's receive already
# filled in: asking the socket for RCVMORE goes through pyzmq's `get`,
# which looks the option up in an Enum first (~0.7 us a call, one per
# frame; a client request has three): 4.3 us per request drained against
# 5.5 (64 DEALERs, 2,000 queued requests).
_RECV = zmq.backend.Socket.recv
_GET = zmq.backend.Socket.get
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)

PEER_SNDHWM = 10_000
"""Messages queued per peer before further sends to it are dropped."""
RECONNECT_IVL_MS = 50
"""How soon a PUSH retries a peer that went away (a restarted replica)."""
CONNECT_TIMEOUT_MS = 1000
"""A connection attempt unanswered this long (a partitioned peer) is retried."""
HEARTBEAT_IVL_MS = 500
HEARTBEAT_TIMEOUT_MS = 2000
"""ZMTP heartbeats on peer connections: silent this long means dead."""


class BindError(Exception):
    """A socket could not bind its address (in use, invalid, not local)."""


def _base_options(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)


def _heartbeats(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)


def _curve_server(sock: zmq.Socket, secret: bytes, domain: bytes) -> None:
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain)


def _bind(sock: zmq.Socket, address: str, what: str) -> None:
    try:
        sock.bind(address)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise BindError(f"cannot bind the {what} address {address}: {exc}") from None


class PeerTransport:
    """The PULL socket that receives from peers and one PUSH per peer to send."""

    def __init__(
        self,
        ctx: zmq.Context,
        bind: str,
        peers: Mapping[int, str],
        bad: BadFrames,
        curve: PeerKeys | None = None,
    ) -> None:
        """`curve`: this replica's key pair and the key book (CURVE on)."""
        self.bad = bad
        self.curve = curve
        self.inbox = ctx.socket(zmq.PULL)
        _base_options(self.inbox)
        if curve is not None:
            _curve_server(self.inbox, curve.secret, ZAP_DOMAIN_PEER)
        # Unbounded: a full receive queue stops a connection's input, which
        # with heartbeats on can abort libzmq 4.3.5 (see the module
        # docstring). What peers may have in flight is bounded by their
        # SNDHWM and by the core's pipeline window.
        self.inbox.setsockopt(zmq.RCVHWM, 0)
        _heartbeats(self.inbox)
        _bind(self.inbox, bind, "peer")
        self._peer_ids = frozenset(peers)
        # Per peer, plain ints for replica/metrics.py (read by the loop's
        # snapshot, never by another thread).
        self.sent_messages = dict.fromkeys(peers, 0)
        self.sent_bytes = dict.fromkeys(peers, 0)
        self.send_dropped = dict.fromkeys(peers, 0)
        self.received_messages = dict.fromkeys(peers, 0)
        self.received_bytes = dict.fromkeys(peers, 0)
        self._ctx = ctx
        self._outboxes: dict[int, zmq.Socket] = {}
        self._addresses: dict[int, str] = {}
        for pid, address in peers.items():
            self._connect(pid, address)

    def _connect(self, pid: int, address: str) -> None:
        for counts in (self.sent_messages, self.sent_bytes, self.send_dropped,
                       self.received_messages, self.received_bytes):  # fmt: skip
            counts.setdefault(pid, 0)
        curve = self.curve
        if curve is not None and pid not in curve.book:
            log.error(
                "no CURVE public key for replica %d in [curve.replica_keys]: not connecting "
                "to it (add its key to every replica's config file)",
                pid,
            )
            return
        sock = self._ctx.socket(zmq.PUSH)
        _base_options(sock)
        if curve is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, curve.book[pid])
            sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
        sock.setsockopt(zmq.SNDHWM, PEER_SNDHWM)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
        _heartbeats(sock)
        sock.connect(address)
        self._outboxes[pid] = sock
        self._addresses[pid] = address

    def set_peers(self, peers: Mapping[int, str]) -> None:
        """The membership changed (kvstore/membership.py): connect to the new
        peers, drop the removed ones; messages from others stay refused."""
        for pid in [p for p in self._outboxes if p not in peers]:
            self._outboxes.pop(pid).close(linger=0)
            self._addresses.pop(pid, None)
        for pid, address in peers.items():
            if self._addresses.get(pid) != address or pid not in self._outboxes:
                old = self._outboxes.pop(pid, None)
                if old is not None:
                    old.close(linger=0)
                self._connect(pid, address)
        self._peer_ids = frozenset(peers)

    def send(self, messages: Iterable[tuple[int, Message]]) -> None:
        """Sends (destination, message) pairs without blocking; drops what
        cannot be queued. A broadcast lists the same message object once per
        peer, consecutively: it is encoded once."""
        last: Message | None = None
        frame = b""
        outboxes = self._outboxes
        sent, sent_bytes = self.sent_messages, self.sent_bytes
        for dst, msg in messages:
            if msg is not last:
                frame = codec.encode(msg)
                last = msg
            sock = outboxes.get(dst)
            if sock is None:
                continue
            try:
                _SEND(sock, frame, _NOBLOCK)
            except zmq.Again:
                self.send_dropped[dst] += 1  # unreachable or too slow: Paxos retransmits
                continue
            sent[dst] += 1
            sent_bytes[dst] += len(frame)

    def recv(self, limit: int, out: list[Message]) -> bool:
        """Appends up to `limit` well-formed messages from peers to `out`;
        returns True if the limit was reached (more may be waiting)."""
        if self.curve is not None:
            return self._recv_curve(limit, out)
        inbox = self.inbox
        peer_ids = self._peer_ids
        bad = self.bad
        received, received_bytes = self.received_messages, self.received_bytes
        for _ in range(limit):
            try:
                part = _RECV(inbox, _NOBLOCK, False)
            except zmq.Again:  # the poll's event was stale
                return False
            if part.more:
                count = 1
                while part.more:
                    part = _RECV(inbox, _NOBLOCK, False)  # the rest, dropped with it
                    count += 1
                bad.note("peer_envelope", f"{count} frames instead of 1")
            else:
                frame = part.bytes
                try:
                    msg = codec.decode(frame)
                except codec.CodecError as exc:
                    bad.note("peer_undecodable", str(exc))
                    msg = None
                if msg is None:
                    pass
                elif msg.sender not in peer_ids:
                    bad.note("peer_unknown", f"a message from replica {msg.sender}, not a peer")
                else:
                    received[msg.sender] += 1
                    received_bytes[msg.sender] += len(frame)
                    out.append(msg)
            if not _GET(inbox, _EVENTS) & _POLLIN:
                return False
        return True

    def _recv_curve(self, limit: int, out: list[Message]) -> bool:
        """`recv` with CURVE: also drops a message whose sender is not the
        replica whose key the connection presented (the ZAP user id)."""
        inbox = self.inbox
        peer_ids = self._peer_ids
        for _ in range(limit):
            try:
                frames = inbox.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return False
            if len(frames) != 1:
                self.bad.note("peer_envelope", f"{len(frames)} frames instead of 1")
                continue
            data = frames[0].bytes
            try:
                msg = codec.decode(data)
            except codec.CodecError as exc:
                self.bad.note("peer_undecodable", str(exc))
                continue
            if msg.sender not in peer_ids:
                self.bad.note("peer_unknown", f"a message from replica {msg.sender}, not a peer")
                continue
            key_of = frames[0].get("User-Id")
            if key_of != str(msg.sender):
                detail = f"a message from replica {msg.sender} over replica {key_of}'s key"
                self.bad.note("peer_impostor", detail)
                continue
            self.received_messages[msg.sender] += 1
            self.received_bytes[msg.sender] += len(data)
            out.append(msg)
        return True

    def close(self) -> None:
        self.inbox.close(linger=0)
        for sock in self._outboxes.values():
            sock.close(linger=0)


class ClientTransport:
    """The ROUTER clients (REQ or DEALER with an empty delimiter) talk to."""

    def __init__(
        self, ctx: zmq.Context, bind: str, bad: BadFrames, server_secret: bytes | None = None
    ) -> None:
        """`server_secret`: the cluster's client-port secret key (CURVE on)."""
        self.bad = bad
        self.router = ctx.socket(zmq.ROUTER)
        _base_options(self.router)
        if server_secret is not None:
            _curve_server(self.router, server_secret, ZAP_DOMAIN_CLIENT)
        self.router.setsockopt(zmq.SNDHWM, 100_000)
        # Unbounded, as on the peer socket (see the module docstring).
        self.router.setsockopt(zmq.RCVHWM, 0)
        _bind(self.router, bind, "client")

    def recv(self, limit: int, out: list[tuple[Envelope, bytes]]) -> bool:
        """Appends up to `limit` (envelope, payload) requests to `out`;
        returns True if the limit was reached (more may be waiting)."""
        router = self.router
        for _ in range(limit):
            try:
                part = _RECV(router, _NOBLOCK, False)
            except zmq.Again:  # the poll's event was stale
                return False
            frames = [part.bytes]
            while part.more:
                part = _RECV(router, _NOBLOCK, False)
                frames.append(part.bytes)
            if len(frames) < 3 or frames[-2] != b"":
                self.bad.note("client_envelope", f"{len(frames)} frames without a delimiter")
            else:
                payload = frames.pop()
                out.append((frames, payload))
            if not _GET(router, _EVENTS) & _POLLIN:
                return False
        return True

    def reply(self, envelope: Envelope, payload: bytes) -> None:
        """Sends one reply; dropped if the client is gone or not reading.

        Frame by frame through the backend's `send`: pyzmq's
        `send_multipart` type-checks every part in Python first, which cost
        ~10 us of the loop's CPU per reply against ~1.5 us this way (a
        ROUTER without ROUTER_MANDATORY never refuses a frame: an unknown
        or full peer's message is dropped whole by libzmq)."""
        router = self.router
        try:
            for part in envelope:
                _SEND(router, part, _MORE_NOBLOCK)
            _SEND(router, payload, _NOBLOCK)
        except zmq.ZMQError:
            pass  # EAGAIN: the client is not reading; dropped like a lost reply

    def close(self) -> None:
        self.router.close(linger=0)
