"""The ZeroMQ sockets of one replica: peers (Paxos messages) and clients.

Peers. Every replica binds one ROUTER on its `peer_bind` address and, for
every other replica, connects one DEALER to that replica's `peer` address
with its own replica id (b"3") as routing id. So replica 3's messages arrive
at replica 1's ROUTER as [b"3", frame], and the ROUTER tells us who sent a
frame without trusting the frame. A frame is `replica.codec.encode(msg)`.

Sends never block: a DEALER has a bounded send queue (SNDHWM), IMMEDIATE set
(nothing is queued for a peer that is not connected) and linger 0; when the
queue is full the message is dropped. Paxos tolerates loss and the core
retransmits, so a slow or dead peer never stalls the event loop.

Connections are watched with ZMTP heartbeats on both ends
(`HEARTBEAT_IVL_MS`, `HEARTBEAT_TIMEOUT_MS`), so a half-open connection left
by a partition or a crashed host is closed and the DEALER reconnects. The
ROUTER sets ROUTER_HANDOVER: a peer that reconnects (restarted, or healed
from a partition) while its old connection still looks alive takes over its
routing id. Without handover libzmq silently ignores the newcomer's frames
for as long as the stale connection lives, which can be forever. The price:
without CURVE a stranger claiming a peer's id can displace that peer's link
until the heartbeat timeout closes the displaced connection and it
reconnects (seconds); routing ids identify, they do not authenticate.

Inbound frames are dropped, counted per kind and logged once per kind
(never raised) when the routing id is not a configured peer, the frame fails
`codec.decode`, or `msg.sender` differs from the routing id. Frames still
queued on a connection that handover displaced arrive under an id libzmq
made up for it (b"\x00" + 4 bytes): counted as `peer_displaced`, harmless
(Paxos retransmits), and so is a stranger's connection without an id.

Clients. One ROUTER bound on `client_bind`. A REQ client's request arrives as
[identity, b"", payload] (a DEALER client sends [b"", payload] and arrives the
same way); the reply goes back with the same envelope. Anything else is a
malformed envelope: counted and dropped.

Every socket refuses frames above `kvstore.limits.MAX_FRAME_BYTES`
(ZMQ_MAXMSGSIZE: the offending connection is dropped by libzmq).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping

import zmq

from kvstore.limits import MAX_FRAME_BYTES
from replica import codec
from replica.messages import Message

log = logging.getLogger("replica.transport")

PEER_SNDHWM = 10_000
"""Messages queued per peer before further sends to it are dropped."""
RECONNECT_IVL_MS = 50
"""How soon a DEALER retries a peer that went away (a restarted replica)."""
CONNECT_TIMEOUT_MS = 1000
"""A connection attempt unanswered this long (a partitioned peer) is retried."""
HEARTBEAT_IVL_MS = 500
HEARTBEAT_TIMEOUT_MS = 2000
"""ZMTP heartbeats on peer connections: silent this long means dead."""

Envelope = list[bytes]
"""The routing frames of a client request, up to and including the empty
delimiter; the reply is sent as envelope + [payload]."""


class BindError(Exception):
    """A socket could not bind its address (in use, invalid, not local)."""


def _base_options(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)


def _heartbeats(sock: zmq.Socket) -> None:
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)


def _bind(sock: zmq.Socket, address: str, what: str) -> None:
    try:
        sock.bind(address)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise BindError(f"cannot bind the {what} address {address}: {exc}") from None


class BadFrames:
    """Counts dropped input per kind; logs the first occurrence of each kind."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def note(self, kind: str, detail: str, level: int = logging.WARNING) -> None:
        self.counts[kind] += 1
        if self.counts[kind] == 1:
            log.log(level, "dropping input (%s): %s; further ones are only counted", kind, detail)

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)


class PeerTransport:
    """The ROUTER that receives from peers and one DEALER per peer to send."""

    def __init__(
        self,
        ctx: zmq.Context,
        replica_id: int,
        bind: str,
        peers: Mapping[int, str],
        bad: BadFrames,
    ) -> None:
        self.bad = bad
        self.router = ctx.socket(zmq.ROUTER)
        _base_options(self.router)
        # A reconnecting peer takes over its routing id from a stale
        # connection (see the module docstring).
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # No receive limit: with the default (1000) a replica resumed after a
        # long stall overflows its queue and libzmq 4.3.5 aborts on the
        # heartbeat timer (zeromq/libzmq#3937). Each peer's SNDHWM bounds it.
        self.router.setsockopt(zmq.RCVHWM, 0)
        _heartbeats(self.router)
        _bind(self.router, bind, "peer")
        self._routing: dict[bytes, int] = {b"%d" % pid: pid for pid in peers}
        self._dealers: dict[int, zmq.Socket] = {}
        own = b"%d" % replica_id
        for pid, address in peers.items():
            sock = ctx.socket(zmq.DEALER)
            _base_options(sock)
            sock.setsockopt(zmq.ROUTING_ID, own)
            sock.setsockopt(zmq.SNDHWM, PEER_SNDHWM)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sock.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
            _heartbeats(sock)
            sock.connect(address)
            self._dealers[pid] = sock

    def send(self, messages: Iterable[tuple[int, Message]]) -> None:
        """Sends (destination, message) pairs without blocking; drops what
        cannot be queued. A broadcast lists the same message object once per
        peer, consecutively: it is encoded once."""
        last: Message | None = None
        frame = b""
        dealers = self._dealers
        for dst, msg in messages:
            if msg is not last:
                frame = codec.encode(msg)
                last = msg
            sock = dealers.get(dst)
            if sock is None:
                continue
            try:  # noqa: SIM105 - hot path: try is cheaper than suppress()
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                pass  # peer unreachable or too slow: Paxos retransmits

    def recv(self, limit: int, out: list[Message]) -> bool:
        """Appends up to `limit` well-formed messages waiting on the ROUTER to
        `out`; returns True if the limit was reached (more may be waiting)."""
        router = self.router
        routing = self._routing
        for _ in range(limit):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return False
            if len(frames) != 2:
                self.bad.note("peer_envelope", f"{len(frames)} frames instead of 2")
                continue
            rid, frame = frames
            sender = routing.get(rid)
            if sender is None:
                self._unknown_peer(rid)
                continue
            try:
                msg = codec.decode(frame)
            except codec.CodecError as exc:
                self.bad.note("peer_undecodable", f"from replica {sender}: {exc}")
                continue
            if msg.sender != sender:
                self.bad.note(
                    "peer_sender_mismatch",
                    f"replica {sender} sent a message claiming sender {msg.sender}",
                )
                continue
            out.append(msg)
        return True

    def _unknown_peer(self, rid: bytes) -> None:
        if len(rid) == 5 and rid[0] == 0:  # an id libzmq made up
            self.bad.note(
                "peer_displaced",
                "frames from a connection without a peer's routing id: one that a "
                "reconnecting peer took over (ROUTER_HANDOVER), or a stranger",
                logging.INFO,  # expected after every reconnect: not a warning
            )
        else:
            self.bad.note("peer_unknown", f"routing id {rid[:32]!r} is not a peer")

    def close(self) -> None:
        self.router.close(linger=0)
        for sock in self._dealers.values():
            sock.close(linger=0)


class ClientTransport:
    """The ROUTER clients (REQ or DEALER with an empty delimiter) talk to."""

    def __init__(self, ctx: zmq.Context, bind: str, bad: BadFrames) -> None:
        self.bad = bad
        self.router = ctx.socket(zmq.ROUTER)
        _base_options(self.router)
        self.router.setsockopt(zmq.SNDHWM, 100_000)
        _bind(self.router, bind, "client")

    def recv(self, limit: int, out: list[tuple[Envelope, bytes]]) -> bool:
        """Appends up to `limit` (envelope, payload) requests to `out`;
        returns True if the limit was reached (more may be waiting)."""
        router = self.router
        for _ in range(limit):
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return False
            if len(frames) < 3 or frames[-2] != b"":
                self.bad.note("client_envelope", f"{len(frames)} frames without a delimiter")
                continue
            payload = frames.pop()
            out.append((frames, payload))
        return True

    def reply(self, envelope: Envelope, payload: bytes) -> None:
        """Sends one reply; dropped if the client is gone or not reading."""
        try:  # noqa: SIM105 - hot path: try is cheaper than suppress()
            self.router.send_multipart([*envelope, payload], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # EAGAIN: the client is not reading; dropped like a lost reply

    def close(self) -> None:
        self.router.close(linger=0)
