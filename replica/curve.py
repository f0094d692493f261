"""CURVE on a replica: who may connect (ZAP), and refusals logged once.

kvstore/security.py has the keys and the `[curve]` table; this module is
the replica's side of the handshake. libzmq runs the CurveZMQ handshake on
its I/O thread and, before it accepts a client key, asks the context's ZAP
handler (RFC 27, `inproc://zeromq.zap.01`) whether that key may connect.
`CurveGuard` is that handler, served in the replica's own poll loop (one
thread, no locks; a handshake waits at most one loop iteration):

- on the peer port (ZAP domain `paxoskv-peer`) it accepts the public keys
  of the key book `[curve.replica_keys]` and names the connection after
  the replica id of its key (the ZAP user id): `PeerTransport.recv` drops a
  message whose sender is another replica than the key's (`peer_impostor`);
- on the client port (`paxoskv-client`) it accepts the allowed client keys
  (`client_keys`, and the `*.key` files of `client_keys_dir`, re-read when
  the directory changes) and the replicas' keys (a joining replica asks
  the others' client ports for STATUS), or any key with
  `require_client_key = false`.

A refused key is logged once (one line: which port, the address, the key)
and every refusal is counted in `BadFrames` (`peer_key_refused`,
`client_key_refused`: `paxoskv_dropped_frames_total`). A handshake that
fails before ZAP is asked (a plaintext peer or client, or one that uses a
wrong server key for this replica) is seen through a socket monitor and
logged once per kind (`peer_not_curve`, `client_bad_handshake`, ...).

The ZAP socket is bound before the CURVE sockets: libzmq lets every key
through while no handler is bound.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from kvstore.security import ZAP_DOMAIN_CLIENT, ZAP_DOMAIN_PEER, CurveConfig, read_key_dir
from replica.badinput import BadFrames
from replica.logfmt import event

log = logging.getLogger("replica.curve")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_LIMIT = 256
"""Most ZAP requests answered per loop iteration."""
MAX_LOGGED_KEYS = 1000
"""Refused keys remembered so that each is logged once (then only counted)."""
_PORT = {ZAP_DOMAIN_PEER: "peer", ZAP_DOMAIN_CLIENT: "client"}
_HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


@dataclass
class PeerKeys:
    """The keys PeerTransport needs: this replica's pair, and the key book
    (replica id -> Z85 public key) to connect to each peer as a CURVE client."""

    secret: bytes = field(repr=False)
    public: bytes
    book: dict[int, bytes]


class CurveGuard:
    """The in-loop ZAP handler and the handshake monitors of one replica."""

    def __init__(self, ctx: zmq.Context, config: CurveConfig, bad: BadFrames) -> None:
        self.config = config
        self.bad = bad
        self.zap = ctx.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        self.zap.bind(ZAP_ENDPOINT)
        self._replicas: dict[bytes, int] = {}
        self.set_replica_keys(config.replica_keys)
        self._dir_stamp: int | None = None
        self._dir_keys: frozenset[bytes] = frozenset()
        self._logged: set[tuple[bytes, bytes]] = set()
        self._monitors: dict[zmq.Socket, tuple[zmq.Socket, str]] = {}

    def set_replica_keys(self, book: Mapping[int, bytes]) -> None:
        """The key book changed (re-read for a new member)."""
        self._replicas = {key: rid for rid, key in book.items()}

    def sockets(self) -> list[zmq.Socket]:
        """What the loop polls for this guard."""
        return [self.zap, *self._monitors]

    def watch(self, sock: zmq.Socket, port: str) -> None:
        """Logs failed handshakes on `sock` (a CURVE server socket)."""
        self._monitors[sock.get_monitor_socket(_HANDSHAKE_FAILED)] = (sock, port)

    def handle(self, ready: Iterable[zmq.Socket]) -> None:
        """Serves what the poll found ready among `sockets()`."""
        for sock in ready:
            if sock is self.zap:
                self._serve_zap()
            elif sock in self._monitors:
                self._read_monitor(sock)

    # -- ZAP --------------------------------------------------------------------

    def _serve_zap(self) -> None:
        for _ in range(ZAP_LIMIT):
            try:
                frames = self.zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.zap.send_multipart(self.answer(frames))

    def answer(self, frames: list[bytes]) -> list[bytes]:
        """The ZAP reply to one request: [version, request id, domain,
        address, routing id, mechanism, credentials...]."""
        if len(frames) < 6 or frames[0] != b"1.0":
            return [b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"bad request", b"", b""]
        request_id, domain, address, mechanism = frames[1], frames[2], frames[3], frames[5]
        if mechanism != b"CURVE" or len(frames) != 7 or len(frames[6]) != 32:
            return [b"1.0", request_id, b"400", b"CURVE only", b"", b""]
        key = z85.encode(frames[6])
        user = self._user(domain, key)
        if user is None:
            self._refused(domain, address, key)
            return [b"1.0", request_id, b"400", b"key not allowed", b"", b""]
        return [b"1.0", request_id, b"200", b"OK", user, b""]

    def _user(self, domain: bytes, key: bytes) -> bytes | None:
        """The ZAP user id of an allowed key (a peer: its replica id), else None."""
        rid = self._replicas.get(key)
        if domain == ZAP_DOMAIN_PEER:
            return None if rid is None else str(rid).encode()
        if domain != ZAP_DOMAIN_CLIENT:
            return None
        if rid is not None:
            return b"replica-" + str(rid).encode()
        if not self.config.require_client_key or key in self.config.client_keys:
            return b"client"
        return b"client" if key in self._client_dir_keys() else None

    def _client_dir_keys(self) -> frozenset[bytes]:
        """The keys of `client_keys_dir`, re-read when its mtime changes (a
        key file added, removed or renamed into it)."""
        folder: Path | None = self.config.client_keys_dir
        if folder is None:
            return frozenset()
        try:
            stamp = os.stat(folder).st_mtime_ns
        except OSError:
            stamp = -1
        if stamp != self._dir_stamp:
            self._dir_stamp = stamp
            self._dir_keys = read_key_dir(folder)
            log.info("client keys: %d allowed in %s", len(self._dir_keys), folder)
        return self._dir_keys

    def _refused(self, domain: bytes, address: bytes, key: bytes) -> None:
        port = _PORT.get(domain, domain.decode(errors="replace"))
        self.bad.counts[f"{port}_key_refused"] += 1
        if (domain, key) in self._logged or len(self._logged) >= MAX_LOGGED_KEYS:
            return
        self._logged.add((domain, key))
        why = (
            "not a replica's key in [curve.replica_keys]"
            if domain == ZAP_DOMAIN_PEER
            else "not an allowed client key (client_keys, client_keys_dir)"
        )
        shown = address.decode(errors="replace")
        log.warning(
            "refused a CURVE connection on the %s port from %s: key %s is %s",
            port,
            shown,
            key.decode(),
            why,
            extra=event("connection_refused", port=port, address=shown, key=key.decode()),
        )

    # -- handshakes that fail before ZAP -------------------------------------------

    def _read_monitor(self, monitor: zmq.Socket) -> None:
        port = self._monitors[monitor][1]
        while True:
            try:
                message = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            if message["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                if message["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                    kind = f"{port}_not_curve"
                    detail = f"a plaintext connection to the {port} port, which requires CURVE"
                else:
                    kind = f"{port}_bad_handshake"
                    detail = (
                        f"a CURVE handshake on the {port} port failed (protocol error "
                        f"{message['value']:#x}: the other side uses a wrong server key?)"
                    )
            else:
                kind = f"{port}_bad_handshake"
                detail = f"a handshake on the {port} port failed (a plaintext connection?)"
            self.bad.note(kind, detail)

    def close(self) -> None:
        """Closes the ZAP socket and the monitors (before the context ends)."""
        for monitor, (sock, _) in self._monitors.items():
            if not sock.closed:
                sock.disable_monitor()
            monitor.close(linger=0)
        self._monitors.clear()
        self.zap.close(linger=0)
