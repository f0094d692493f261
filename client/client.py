"""The Python client of the replicated key-value store.

`KVClient` holds the client addresses of all replicas and hides leader
discovery, retries and timeouts behind put/get/delete/cas/status, ranges
(range, iter_range, get_prefix, count, delete_range), txn and leases
(lease, lease_grant, lease_keep_alive, lease_revoke, lease_ttl, lease_list;
client/lease.py), watch (client/watch.py) and lock (client/lock.py).

Theory of operation:

- One request is outstanding at a time, on a ZeroMQ REQ socket per replica
  address (created lazily, cached while healthy). The steady state is one
  send and one receive to the last known leader.
- Exactly-once: the client has a random 16-byte `client_id` and numbers its
  writes 1, 2, ...; a retry resends the SAME encoded frame (same seq), so
  the state machine returns the recorded result instead of applying a write
  twice (kvstore/statemachine.py). Reads are not in the log and consume no
  number (they carry the next write's): a session's first write is seq 1,
  which is how the state machine tells a new session from a forgotten one.
- Sessions end: the replicas forget a session idle for an hour of log time
  (kvstore.limits.SESSION_TTL_MS). A write of a forgotten session is
  answered SESSION_EXPIRED, not applied; the client raises `SessionExpired`
  and starts a new session (new random client_id, seq 1) for its next
  request. `timeout` is capped at MAX_CLIENT_TIMEOUT_S, half the TTL, so a
  retry finds the session its first attempt opened.
- Lazy pirate: each attempt waits at most `attempt_timeout`; on silence the
  REQ socket is closed (linger 0) and forgotten (a REQ socket that missed
  its reply cannot send again) and the next replica is tried, until the
  overall `timeout` is spent -> `ClusterUnavailable`.
- REDIRECT names the leader by replica id, not by address, so that the
  client works behind docker port mappings: the client maps ids to the
  addresses it was given by asking STATUS (whose `info["id"]` is the
  replica's id), lazily, the first time it must follow a redirect to an id
  it does not know yet.
- UNAVAILABLE (no leader yet), an undecodable reply, or a redirect that
  cannot be followed usefully: a short backoff (5 ms doubling to 100 ms),
  then the next replica.
- Vouched reads (`vouch_reads`, on by default; replica/paxos.py "Vouched
  reads"): a linearizable GET carries a nonce (a per-client counter from a
  random start, never reused), and as it is sent, every other replica
  address gets a VOUCH for it on a DEALER socket of its own (never
  answered; dropped when the socket's queue is full). A follower tells
  the leader it knows what it promised, and the first such vouch confirms
  the read on the leader: three hops instead of a heartbeat round's four.
  When no vouch comes (followers down, an older release) the leader
  confirms the read by its next heartbeat round, within about two ticks.
  A leader that takes many reads at once asks (the answer's `info`
  {"vouch": False}) for GETs without VOUCH for VOUCH_PAUSE_S: its
  heartbeat rounds then confirm them in batches for less.
- CURVE (README, Security): with a server key (`server_key`, or the file
  named by KVSTORE_SERVER_KEY) every socket is a CURVE client presenting
  `client_key` (KVSTORE_CLIENT_KEY; else a throwaway pair). A socket
  monitor reports a failed handshake (key refused, wrong server key,
  plaintext against CURVE or the reverse) at once; once every replica
  failed it, `AuthenticationFailed` is raised, since no request reached one.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn, Self

import zmq
from zmq.utils.monitor import parse_monitor_message

from client.errors import (
    AuthenticationFailed,
    BadRequest,
    ClusterUnavailable,
    KVError,
    LeaseNotFound,
    RequestTooLarge,
    SessionExpired,
)
from client.lease import Lease, LeaseInfo
from client.lock import DEFAULT_TTL as DEFAULT_LOCK_TTL
from client.lock import Lock
from client.txn import range_args
from client.watch import WatchEvent, watch
from kvstore.config import ConfigError, display_address, normalize_address, parse_cluster_addresses
from kvstore.limits import MAX_CLIENT_TIMEOUT_S, MAX_FRAME_BYTES
from kvstore.protocol import (
    CLIENT_ID_BYTES,
    MAX_LEASE_ID,
    VOUCH_PAUSE_S,
    WRITE_OPS,
    Compare,
    DeleteResult,
    KeyValue,
    Op,
    ProtocolError,
    PutResult,
    RangeResult,
    Request,
    Response,
    Status,
    Txn,
    TxnOp,
    TxnResult,
    decode_response,
    encode_request,
    member_change,
    validate_request,
)
from kvstore.security import client_keys

__all__ = [
    "AuthenticationFailed",
    "BadRequest",
    "CasResult",
    "ClusterUnavailable",
    "KVClient",
    "KVError",
    "KeyValue",
    "RangePage",
    "RequestTooLarge",
    "SessionExpired",
    "TxnResponse",
]

_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def _handshake_problem(event: int, value: int, curve: bool) -> str | None:
    """What a failed handshake (a socket monitor event) tells the user."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"refused this client's CURVE key (ZAP {value}): it is not among the "
            "cluster's allowed client keys (--client-key, $KVSTORE_CLIENT_KEY)"
        )
    if not curve:
        return (
            "refused a plaintext connection: the cluster requires CURVE (give --server-key "
            "and --client-key, or $KVSTORE_SERVER_KEY and $KVSTORE_CLIENT_KEY)"
        )
    if (
        event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
    ):
        return "does not use CURVE: drop --server-key and $KVSTORE_SERVER_KEY"
    return "failed the CURVE handshake: wrong server key (--server-key, $KVSTORE_SERVER_KEY)?"


_BACKOFF_MIN = 0.005
_VOUCH_HWM = 16  # VOUCH frames queued per replica before they are dropped
_BACKOFF_MAX = 0.1
# Statuses that end a request with an answer (the replica that gave it leads).
_FINAL = (Status.OK, Status.NOT_FOUND, Status.CAS_FAILED, Status.COMPACTED)


class CasResult(NamedTuple):
    """Outcome of a compare-and-set. On success `value`/`version` are the new
    ones; on failure they are the key's current ones (None/0 when absent).
    `value` may be None on a failure with a version > 0: the answer came from
    the session record of a retried request, which keeps no value (read the
    key to see it)."""

    succeeded: bool
    value: bytes | None
    version: int


class RangePage(NamedTuple):
    """One reply of a range read: the keys of a prefix of the range, in key
    order (`KeyValue`: key, value (None when keys only), version,
    create_revision), how many (also for count only, with `kvs` empty),
    whether `more` keys remain from `next_key` on, and the store's
    `revision` when the page was read."""

    kvs: tuple[KeyValue, ...]
    count: int
    more: bool
    next_key: bytes | None
    revision: int


class TxnResponse(NamedTuple):
    """Outcome of a transaction: whether the comparisons held (the success
    operations ran, else the failure ones), the store's revision after it,
    and one result per operation that ran (`PutResult`, `DeleteResult`,
    `RangeResult`). `responses` is None when the answer came from the
    session record of a retried request, which keeps no results."""

    succeeded: bool
    revision: int
    responses: tuple[PutResult | DeleteResult | RangeResult, ...] | None


@dataclass(slots=True)
class _Call:
    """Book-keeping of one request across its attempts."""

    deadline: float
    write: bool
    backoff: float = _BACKOFF_MIN
    free_hops: int = 0  # redirects followed since the last backoff
    silent: set[int] = field(default_factory=set)  # indexes that timed out
    refused: set[int] = field(default_factory=set)  # indexes that failed the handshake
    tried: int = 0  # replicas tried without a final answer
    last_problem: str = "no replica answered"
    vouch: bytes | None = None  # a vouched GET: the VOUCH frame sent with each attempt


def _to_bytes(data: bytes | str | bytearray | memoryview, what: str) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")


class KVClient:
    """A client of the key-value cluster; not thread-safe (one per thread).

    `addresses`: client ports as "host:port" or "tcp://host:port", a list or
    a comma-separated string; default env KVSTORE_CLUSTER, else
    127.0.0.1:7001..7003. `timeout` bounds every call (seconds);
    `attempt_timeout` bounds the wait for one replica's reply (at most
    MAX_CLIENT_TIMEOUT_S, 30 minutes: see sessions above). `first`: the
    replica to ask first, as an index into the addresses (default: a random
    one, so that many clients spread their probes); useful for `stale`
    reads from a replica of your choice, since a stale read is answered by
    whichever replica the client is talking to. `client_key` (a secret key
    file) and `server_key` (the cluster's public key file), default env
    KVSTORE_CLIENT_KEY and KVSTORE_SERVER_KEY, reach a CURVE cluster;
    without a server key the client speaks plaintext.
    """

    def __init__(
        self,
        addresses: str | list[str] | None = None,
        *,
        timeout: float = 5.0,
        attempt_timeout: float = 1.0,
        client_id: bytes | None = None,
        context: zmq.Context | None = None,
        first: int | None = None,
        client_key: str | os.PathLike[str] | None = None,
        server_key: str | os.PathLike[str] | None = None,
        vouch_reads: bool = True,
    ) -> None:
        if timeout <= 0 or attempt_timeout <= 0:
            raise ValueError("timeout and attempt_timeout must be > 0")
        if timeout > MAX_CLIENT_TIMEOUT_S:
            raise ValueError(f"timeout must be at most {MAX_CLIENT_TIMEOUT_S:g} seconds")
        if client_id is not None and len(client_id) != CLIENT_ID_BYTES:
            raise ValueError(f"client_id must be {CLIENT_ID_BYTES} bytes")
        self.addresses: list[str] = parse_cluster_addresses(addresses)
        self._curve = client_keys(client_key, server_key)
        self._monitors: dict[int, zmq.Socket] = {}
        self.timeout = float(timeout)
        self.attempt_timeout = float(attempt_timeout)
        self.client_id: bytes = client_id if client_id is not None else os.urandom(16)
        self._ctx = context if context is not None else zmq.Context.instance()
        self._seq = 0  # the last write's number
        self._sockets: dict[int, zmq.Socket] = {}
        self._vouch_sockets: dict[int, zmq.Socket] = {}  # DEALERs for VOUCH (never read)
        self.vouch_reads = vouch_reads
        self._vouch_nonce = random.getrandbits(62)  # a GET's nonce: the next one is +1
        self._vouch_paused_until = 0.0  # a busy leader asked for GETs without VOUCH
        self._rcvtimeo: dict[int, int] = {}
        self._attempt_ms = max(1, int(self.attempt_timeout * 1000))
        self._ids: dict[int, int] = {}  # replica id -> index in addresses
        if first is not None and not 0 <= first < len(self.addresses):
            raise ValueError(f"first must be an index into the {len(self.addresses)} addresses")
        # Start at a random replica so that many clients spread their probes.
        self._leader = random.randrange(len(self.addresses)) if first is None else first
        self._answered: int | None = None  # the address index of the last final answer
        self._closed = False

    # -- public API ---------------------------------------------------------

    def put(self, key: bytes | str, value: bytes | str, *, lease: int = 0) -> int:
        """Sets key to value; returns the key's new version. With a `lease`
        (an id from `lease_grant` or `lease`), the key is deleted when the
        lease expires or is revoked (a put without one detaches it)."""
        resp = self._request(Op.PUT, key, value=_to_bytes(value, "value"), lease=lease)
        if resp.status is Status.NOT_FOUND:
            raise LeaseNotFound(resp.error or f"lease {lease} not found")
        return resp.version

    def get(self, key: bytes | str, *, stale: bool = False) -> bytes | None:
        """The value of key, or None if absent. `stale=True` reads whichever
        replica answers, without confirming leadership (may be out of date)."""
        found = self.get_versioned(key, stale=stale)
        return None if found is None else found[0]

    def get_versioned(self, key: bytes | str, *, stale: bool = False) -> tuple[bytes, int] | None:
        """(value, version) of key, or None if absent."""
        nonce = None
        if (
            not stale
            and self.vouch_reads
            and len(self.addresses) > 1
            and time.monotonic() >= self._vouch_paused_until
        ):
            self._vouch_nonce += 1
            nonce = self._vouch_nonce
        resp = self._request(Op.GET, key, stale=stale, expected_version=nonce)
        if nonce is not None and resp.info is not None and resp.info.get("vouch") is False:
            self._vouch_paused_until = time.monotonic() + VOUCH_PAUSE_S
        if resp.status is Status.NOT_FOUND or resp.value is None:
            return None
        return resp.value, resp.version

    def delete(self, key: bytes | str) -> bool:
        """Deletes key; returns whether it existed."""
        return self._request(Op.DELETE, key).status is Status.OK

    def cas(
        self,
        key: bytes | str,
        new_value: bytes | str,
        *,
        expected_value: bytes | str | None = None,
        expected_version: int | None = None,
    ) -> CasResult:
        """Sets key to new_value if its current value is `expected_value`, or
        its current version is `expected_version` (0: the key is absent).
        Give exactly one of the two."""
        new = _to_bytes(new_value, "new_value")
        exp = None if expected_value is None else _to_bytes(expected_value, "expected_value")
        resp = self._request(
            Op.CAS, key, value=new, expected_value=exp, expected_version=expected_version
        )
        if resp.status is Status.OK:
            return CasResult(True, new, resp.version)
        return CasResult(False, resp.value, resp.version)

    def range(
        self,
        key: bytes | str,
        range_end: bytes | str | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        stale: bool = False,
    ) -> RangePage:
        """ONE page of the keys in [key, range_end), or with a `prefix`, or
        `from_key` on (an empty key: every key), in key order: at most
        `limit` keys (0: no limit) and the replicas' bound per reply
        (kvstore.limits.MAX_RANGE_KEYS, MAX_RANGE_REPLY_BYTES). When `more`,
        ask again from `next_key` (`iter_range` does). Linearizable unless
        `stale`; pages read one after the other are not one snapshot."""
        start, end = range_args(key, range_end, prefix=prefix, from_key=from_key)
        resp = self._request(
            Op.RANGE,
            start,
            stale=stale,
            range_end=end,
            limit=limit,
            keys_only=keys_only,
            count_only=count_only,
        )
        result = resp.result
        if not isinstance(result, RangeResult):
            raise KVError(f"the replica answered a range without its result ({resp.status.name})")
        return RangePage(result.kvs, result.count, result.more, result.next_key, resp.version)

    def iter_range(
        self,
        key: bytes | str,
        range_end: bytes | str | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
        limit: int = 0,
        keys_only: bool = False,
        stale: bool = False,
    ) -> Iterator[KeyValue]:
        """Every key of the range (at most `limit`), page after page."""
        start, end = range_args(key, range_end, prefix=prefix, from_key=from_key)
        left = limit
        while True:
            page = self.range(start, end, limit=left, keys_only=keys_only, stale=stale)
            yield from page.kvs
            left -= len(page.kvs) if limit else 0
            if not page.more or (limit and left <= 0) or page.next_key is None:
                return
            start = page.next_key

    def get_prefix(
        self,
        prefix: bytes | str,
        *,
        limit: int = 0,
        keys_only: bool = False,
        stale: bool = False,
    ) -> list[KeyValue]:
        """Every key starting with `prefix` (at most `limit`), in key order."""
        return list(
            self.iter_range(prefix, prefix=True, limit=limit, keys_only=keys_only, stale=stale)
        )

    def count(
        self,
        key: bytes | str,
        range_end: bytes | str | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
        stale: bool = False,
    ) -> int:
        """How many keys the range holds (counted page by page)."""
        start, end = range_args(key, range_end, prefix=prefix, from_key=from_key)
        total = 0
        while True:
            page = self.range(start, end, count_only=True, stale=stale)
            total += page.count
            if not page.more or page.next_key is None:
                return total
            start = page.next_key

    def delete_range(
        self,
        key: bytes | str,
        range_end: bytes | str | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
    ) -> int | None:
        """Deletes every key of the range atomically, as one command at one
        revision; returns how many were deleted (None when the answer came
        from the session record of a retry: at least one). A range of more
        than kvstore.limits.MAX_DELETE_RANGE_KEYS keys is refused
        (RequestTooLarge) and nothing is deleted."""
        start, end = range_args(key, range_end, prefix=prefix, from_key=from_key)
        resp = self._request(Op.DELETE_RANGE, start, range_end=end)
        if resp.status is Status.NOT_FOUND:
            return 0
        return resp.result.deleted if isinstance(resp.result, DeleteResult) else None

    def txn(
        self,
        compare: Sequence[Compare] = (),
        success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
    ) -> TxnResponse:
        """One atomic transaction: if every comparison holds, the `success`
        operations run, else the `failure` ones, as one command at one
        revision (client/txn.py: `cmp` and `op` build them). Retried like
        any write: applied once."""
        txn = Txn(tuple(compare), tuple(success), tuple(failure))
        resp = self._request(Op.TXN, b"", txn=txn)
        result = resp.result
        responses = result.responses if isinstance(result, TxnResult) else None
        return TxnResponse(resp.status is Status.OK, resp.version, responses)

    # -- leases (client/lease.py) ----------------------------------------------

    def lease(self, ttl: int) -> Lease:
        """A lease of `ttl` seconds, kept alive from a background thread
        while the `with` block runs, then revoked: `with kv.lease(10) as
        lease: kv.put(key, value, lease=lease.id)`."""
        return Lease(self, ttl)

    def lease_grant(self, ttl: int, lease_id: int | None = None) -> int:
        """Grants a lease of `ttl` seconds (a random id unless given); returns its id."""
        lease_id = random.randrange(1, MAX_LEASE_ID + 1) if lease_id is None else lease_id
        self._request(Op.LEASE_GRANT, b"", lease=lease_id, ttl=ttl)
        return lease_id

    def lease_keep_alive(self, lease_id: int) -> int | None:
        """One keep-alive: the lease's deadline becomes now + its TTL.
        Returns the TTL (seconds; 0 when answered from the session of a
        retry), or None when the lease is gone (expired or revoked)."""
        resp = self._request(Op.LEASE_KEEPALIVE, b"", lease=lease_id)
        if resp.status is Status.NOT_FOUND:
            return None
        return int((resp.info or {}).get("ttl", 0))

    def lease_revoke(self, lease_id: int) -> bool:
        """Revokes a lease: its keys are deleted at one revision. Returns
        whether it existed."""
        return self._request(Op.LEASE_REVOKE, b"", lease=lease_id).status is Status.OK

    def lease_ttl(self, lease_id: int, *, keys: bool = False) -> LeaseInfo | None:
        """The lease's TTL and time left (and its keys), or None when it is gone."""
        resp = self._request(Op.LEASE_TTL, b"", lease=lease_id, keys_only=keys)
        if resp.status is Status.NOT_FOUND:
            return None
        info = resp.info or {}
        found = resp.result if isinstance(resp.result, RangeResult) else None
        return LeaseInfo(
            lease_id,
            int(info.get("granted_ttl", 0)),
            int(info.get("ttl", 0)),
            int(info.get("keys", 0)),
            None if found is None else tuple(kv.key for kv in found.kvs),
        )

    def lease_list(self) -> list[int]:
        """Every lease id, in order (page after page)."""
        ids: list[int] = []
        while True:
            info = self._request(Op.LEASE_LIST, b"", lease=ids[-1] if ids else 0).info or {}
            ids += [int(i) for i in info.get("leases", ())]
            if not info.get("more") or not info.get("leases"):
                return ids

    def lock(
        self,
        name: bytes | str,
        *,
        ttl: int = DEFAULT_LOCK_TTL,
        timeout: float | None = None,
        lease: Lease | int | None = None,
    ) -> Lock:
        """A distributed lock (client/lock.py): `with kv.lock("name") as
        token:` waits for it (at most `timeout` seconds: LockTimeout) and
        holds it in the block; `token` is the fencing token. Its key lives
        under a lease of `ttl` seconds kept alive meanwhile (or `lease`)."""
        return Lock(self, name, ttl=ttl, timeout=timeout, lease=lease)

    def watch(
        self,
        key: bytes | str,
        range_end: bytes | str | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
        start_revision: int | None = None,
        prev_kv: bool = False,
    ) -> Iterator[WatchEvent]:
        """The changes (WatchEvent: revision, kind PUT 0 / DELETE 1, key,
        value, version, create_revision) to a key or range, in revision
        order, forever; resumes across leader changes from the last
        revision seen (client/watch.py). From `start_revision`, or from
        just after now. `prev_kv`: each with the key's previous revision
        and value (prev_revision, prev_value; see client/watch.py)."""
        return watch(
            self,
            key,
            range_end,
            prefix=prefix,
            from_key=from_key,
            start_revision=start_revision,
            prev_kv=prev_kv,
        )

    def _sibling(self, timeout: float, attempt_timeout: float | None = None) -> KVClient:
        """Another client of the same cluster with the same keys (its own
        session and sockets): for a background thread or a watch."""
        other = KVClient(
            self.addresses,
            timeout=timeout,
            attempt_timeout=attempt_timeout or min(self.attempt_timeout, timeout),
            context=self._ctx,
        )
        other._curve = self._curve
        return other

    # -- membership (kvctl member; kvstore/membership.py) ---------------------

    def member_list(self) -> dict[str, Any]:
        """The cluster's membership, read on the leader: epoch, voters,
        learners, removed and started ids, and `members` (id, peer, client,
        role)."""
        return self._member(None)

    def member_add(self, replica_id: int, peer: str, client: str) -> dict[str, Any]:
        """Adds replica `replica_id` as a learner (start it with
        --initial-cluster-state existing); returns the new membership."""
        return self._member(member_change(1, replica_id, peer, client))

    def member_promote(self, replica_id: int) -> dict[str, Any]:
        """Makes a learner that has caught up a voter."""
        return self._member(member_change(2, replica_id))

    def member_remove(self, replica_id: int) -> dict[str, Any]:
        """Removes a member for good (its id is never reused)."""
        return self._member(member_change(3, replica_id))

    def move_leader(self, replica_id: int, wait: float | None = None) -> int:
        """Hands leadership to voter `replica_id` (the leader stops taking
        new slots, waits until it has caught up, then lets it start an
        election at once; writes meanwhile wait and are retried, not lost).
        Waits until a replica reports `replica_id` leading, at most `wait`
        seconds (default: the client's timeout); returns the leader then."""
        if self._closed:
            self._check_open()
        frame = encode_request(Request(Op.MOVE_LEADER, value=str(replica_id).encode()))
        self._call(frame, False)
        deadline = time.monotonic() + (self.timeout if wait is None else wait)
        leader: int | None = None
        while time.monotonic() < deadline:
            rows = self.status()
            leaders = {r.get("leader") for r in rows if "error" not in r}
            if leaders == {replica_id}:
                return replica_id
            leader = next(iter(leaders)) if len(leaders) == 1 else None
            time.sleep(0.05)
        raise ClusterUnavailable(
            f"replica {replica_id} did not take over within the timeout (leader: {leader})"
        )

    def _member(self, change: bytes | None) -> dict[str, Any]:
        if self._closed:
            self._check_open()
        resp = self._call(encode_request(Request(Op.MEMBER, value=change)), change is not None)
        return dict(resp.info or {})

    def answered_status(self) -> dict[str, Any]:
        """The STATUS report (id, leader, revision, ...) of the replica that
        gave this client's last answer (the leader, unless the request was a
        stale read or a watch): one round trip to that replica, for kvctl's
        -w json header, since answers carry neither replica ids nor the
        store's revision. {} when there was no answer yet or it is silent."""
        self._check_open()
        index = self._answered
        if index is None:
            return {}
        end = time.monotonic() + min(self.timeout, self.attempt_timeout)
        info = self._broadcast_status([index], end).get(index)
        return info if isinstance(info, dict) else {}

    def status(self) -> list[dict[str, Any]]:
        """One dict per address, in order: the replica's STATUS info plus
        "address", or {"address", "error"} when it did not answer in time."""
        self._check_open()
        wait = min(self.timeout, self.attempt_timeout)
        replies = self._broadcast_status(range(len(self.addresses)), time.monotonic() + wait)
        result: list[dict[str, Any]] = []
        for index, address in enumerate(self.addresses):
            reply = replies.get(index, "unreachable")
            if isinstance(reply, str):
                result.append({"address": display_address(address), "error": reply})
            else:
                result.append({**reply, "address": display_address(address)})
        return result

    def close(self) -> None:
        """Closes the sockets (the context is shared and left alone)."""
        for index in list(self._sockets):
            self._drop_socket(index)
        for sock in self._vouch_sockets.values():
            sock.close(linger=0)
        self._vouch_sockets.clear()
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        shown = ",".join(display_address(a) for a in self.addresses)
        return f"KVClient({shown!r}, timeout={self.timeout})"

    # -- one request --------------------------------------------------------

    def _request(
        self,
        op: Op,
        key: bytes | str,
        *,
        value: bytes | None = None,
        expected_value: bytes | None = None,
        expected_version: int | None = None,
        stale: bool = False,
        **extra: Any,
    ) -> Response:
        """Builds, validates and sends one request; returns its final
        response. A write takes the next number (only once it passed
        validation); a read carries that number without taking it.
        `validate_request` is what the replica's `parse_request` applies to
        the decoded frame (whose size limit a valid request always fits), so
        what it would refuse is refused here before anything is sent."""
        if self._closed:
            self._check_open()
        write = op in WRITE_OPS
        req = Request(
            op,
            self.client_id,
            self._seq + 1,
            _to_bytes(key, "key"),
            value,
            expected_value,
            expected_version,
            stale,
            **extra,  # range_end, limit, keys_only, count_only, txn, lease, ttl
        )
        problem = validate_request(req)
        if problem is not None:
            status, message = problem
            raise (RequestTooLarge if status is Status.TOO_LARGE else BadRequest)(message)
        if write:
            self._seq = req.seq
        vouch = None
        if op is Op.GET and expected_version is not None:
            vouch = encode_request(Request(Op.VOUCH, self.client_id, expected_version))
        return self._call(encode_request(req), write, vouch)

    def _call(self, frame: bytes, write: bool, vouch: bytes | None = None) -> Response:
        """Sends frame until a final answer or the deadline (lazy pirate);
        `vouch`: a VOUCH frame for the other replicas with each attempt."""
        call = _Call(time.monotonic() + self.timeout, write, vouch=vouch)
        target = self._leader
        while True:
            resp = self._attempt(target, frame, call)
            if resp is not None:
                status = resp.status
                if status in _FINAL:
                    self._leader = self._answered = target
                    return resp
                if status is Status.REDIRECT:
                    nxt = self._follow(resp.leader, target, call)
                    if nxt is not None:
                        target = nxt
                        continue
                elif status is Status.TOO_LARGE:
                    raise RequestTooLarge(resp.error or "request too large")
                elif status is Status.BAD_REQUEST:
                    raise BadRequest(resp.error or "bad request")
                elif status is Status.SESSION_EXPIRED:
                    self._leader = target
                    self._new_session()
                    raise SessionExpired(
                        resp.error or "session expired or unknown: the request was not applied"
                    )
                else:
                    call.last_problem = f"{display_address(self.addresses[target])} " + (
                        f"answered UNAVAILABLE: {resp.error}" if resp.error else "is unavailable"
                    )
                self._sleep_backoff(call)
            target = (target + 1) % len(self.addresses)
            call.tried += 1
            if call.tried % len(self.addresses) == 0 and len(call.silent) < len(self.addresses):
                # Each replica answered without serving: were we given old members?
                self._refresh_members(call.deadline)

    def _refresh_members(self, deadline: float) -> None:
        """Adds the client address of every member that the replicas we know
        report (the highest membership epoch among their STATUS), so a client
        given the old replicas follows a cluster that was moved to new ones."""
        end = min(deadline, time.monotonic() + self.attempt_timeout)
        best: dict | None = None
        for info in self._broadcast_status(range(len(self.addresses)), end).values():
            membership = info.get("membership") if isinstance(info, dict) else None
            if isinstance(membership, dict) and (
                best is None or membership.get("epoch", -1) > best.get("epoch", -1)
            ):
                best = membership
        for row in (best or {}).get("addresses", []):
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], int)):
                continue
            try:
                address = normalize_address(str(row[2]))
            except ConfigError:
                continue
            if address not in self.addresses:
                self.addresses.append(address)
                self._ids[row[0]] = len(self.addresses) - 1

    def _attempt(self, index: int, frame: bytes, call: _Call) -> Response | None:
        """One send/receive to replica `index`. None when it stayed silent
        (its socket is then discarded) or sent an undecodable reply (after a
        backoff): either way the caller moves on to the next replica."""
        remaining = call.deadline - time.monotonic()
        if remaining <= 0:
            self._give_up(call)
        sock = self._sockets.get(index) or self._open_socket(index)
        wait_ms = min(self._attempt_ms, max(1, int(remaining * 1000)))
        if self._rcvtimeo[index] != wait_ms:
            sock.setsockopt(zmq.RCVTIMEO, wait_ms)
            self._rcvtimeo[index] = wait_ms
        try:
            if call.vouch is not None:
                self._send_vouches(index, call.vouch)
            sock.send(frame, copy=len(frame) < 65536)
            if self._curve is not None:
                self._await_reply(index, sock, wait_ms)
            reply = sock.recv(copy=True)
        except zmq.Again:
            call.last_problem = f"{display_address(self.addresses[index])} did not answer"
            self._check_handshake(index, call)
            self._drop_socket(index)
            call.silent.add(index)
            return None
        except BaseException:  # e.g. Ctrl-C between send and recv: REQ is stuck
            self._drop_socket(index)
            raise
        call.silent.discard(index)
        try:
            return decode_response(reply)
        except ProtocolError as exc:
            call.last_problem = f"{display_address(self.addresses[index])} sent a bad reply: {exc}"
            self._sleep_backoff(call)
            return None

    def _follow(self, leader: int | None, current: int, call: _Call) -> int | None:
        """The address index to follow a REDIRECT to, or None to back off and
        try the next replica (leader unknown, or redirects going round)."""
        here = display_address(self.addresses[current])
        if leader is None:
            call.last_problem = f"{here} redirected without naming a leader"
            return None
        index = self._ids.get(leader)
        if index is None:
            self._learn_ids(call.deadline)
            index = self._ids.get(leader)
        if index is None:
            index = self._learn_member(current, leader, call.deadline)
        if index is None:
            call.last_problem = f"{here} redirected to replica {leader}, not among our addresses"
            return None
        call.last_problem = f"{here} redirected to replica {leader}"
        if index in call.silent:
            call.last_problem += ", which did not answer"
            return None
        if index == current or call.free_hops >= len(self.addresses):
            return None
        call.free_hops += 1
        return index

    def _sleep_backoff(self, call: _Call) -> None:
        remaining = call.deadline - time.monotonic()
        if remaining <= 0:
            self._give_up(call)
        time.sleep(min(call.backoff, remaining))
        call.backoff = min(call.backoff * 2, _BACKOFF_MAX)
        call.free_hops = 0

    def _await_reply(self, index: int, sock: zmq.Socket, wait_ms: int) -> None:
        """Waits for a reply on `sock` or a failed handshake (zmq.Again: the
        caller then reads the monitor), whichever comes first."""
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._monitors[index], zmq.POLLIN)
        ready = dict(poller.poll(wait_ms))
        if sock not in ready:
            raise zmq.Again()

    def _check_handshake(self, index: int, call: _Call) -> None:
        """After silence: did the replica refuse our handshake? Raises
        AuthenticationFailed once every replica did (nothing was sent)."""
        monitor = self._monitors.get(index)
        if monitor is None or not monitor.poll(0):
            return
        problem = ""
        while monitor.poll(0):
            message = parse_monitor_message(monitor.recv_multipart())
            curve = self._curve is not None
            problem = _handshake_problem(message["event"], message["value"], curve) or problem
        if not problem:
            return
        call.refused.add(index)
        call.last_problem = f"{display_address(self.addresses[index])} {problem}"
        if len(call.refused) == len(self.addresses):
            raise AuthenticationFailed(f"every replica refused the handshake: {call.last_problem}")

    def _give_up(self, call: _Call) -> NoReturn:
        shown = ",".join(display_address(a) for a in self.addresses)
        unknown = "; the write may or may not have been applied" if call.write else ""
        raise ClusterUnavailable(
            f"no answer from the cluster ({shown}) within {self.timeout:g}s "
            f"(last: {call.last_problem}){unknown}"
        )

    def _new_session(self) -> None:
        """A fresh session: a new random client id, writes numbered from 1."""
        self.client_id = os.urandom(CLIENT_ID_BYTES)
        self._seq = 0

    def _check_open(self) -> None:
        if self._closed:
            raise KVError("the client is closed")

    # -- sockets and STATUS -------------------------------------------------

    def _open_socket(self, index: int) -> zmq.Socket:
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        sock.setsockopt(zmq.RCVTIMEO, self._attempt_ms)
        if self._curve is not None:
            self._curve.apply(sock)
        self._monitors[index] = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        sock.connect(self.addresses[index])
        self._sockets[index] = sock
        self._rcvtimeo[index] = self._attempt_ms
        return sock

    def _send_vouches(self, target: int, frame: bytes) -> None:
        """The VOUCH of a GET sent to address `target`, to every other one."""
        for index in range(len(self.addresses)):
            if index == target:
                continue
            sock = self._vouch_sockets.get(index)
            if sock is None:
                sock = self._ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, _VOUCH_HWM)
                sock.setsockopt(zmq.RCVHWM, _VOUCH_HWM)  # an older release answers; unread
                if self._curve is not None:
                    self._curve.apply(sock)
                sock.connect(self.addresses[index])
                self._vouch_sockets[index] = sock
            try:
                sock.send(b"", zmq.SNDMORE | zmq.NOBLOCK)
                sock.send(frame, zmq.NOBLOCK)
            except zmq.Again:
                pass  # that replica is not reading: the leader's heartbeat round decides

    def _drop_socket(self, index: int) -> None:
        sock = self._sockets.pop(index, None)
        self._rcvtimeo.pop(index, None)
        monitor = self._monitors.pop(index, None)
        if sock is not None:
            if monitor is not None:
                sock.disable_monitor()
            sock.close(linger=0)
        if monitor is not None:
            monitor.close(linger=0)

    def _learn_member(self, current: int, leader: int, deadline: float) -> int | None:
        """Asks the replica that redirected us where replica `leader` is (the
        membership in its STATUS): a member added after we were given our
        addresses. Returns its new address index, or None."""
        end = min(deadline, time.monotonic() + self.attempt_timeout)
        info = self._broadcast_status([current], end).get(current)
        membership = info.get("membership") if isinstance(info, dict) else None
        rows = membership.get("addresses", []) if isinstance(membership, dict) else []
        for row in rows:
            if isinstance(row, list) and len(row) == 3 and row[0] == leader:
                try:
                    address = normalize_address(str(row[2]))
                except ConfigError:
                    return None
                if address not in self.addresses:
                    self.addresses.append(address)
                index = self.addresses.index(address)
                self._ids[leader] = index
                return index
        return None

    def _learn_ids(self, deadline: float) -> None:
        """Asks STATUS of every address whose replica id is still unknown."""
        known = set(self._ids.values())
        unknown = [i for i in range(len(self.addresses)) if i not in known]
        if unknown:
            end = min(deadline, time.monotonic() + self.attempt_timeout)
            self._broadcast_status(unknown, end)

    def _broadcast_status(self, indexes: Any, deadline: float) -> dict[int, dict | str]:
        """Sends STATUS to the given addresses at once and collects replies
        until all answered or the deadline. Learns replica ids on the way.
        Returns index -> info dict, or an error string for a bad reply."""
        frame = encode_request(Request(Op.STATUS, self.client_id))
        poller = zmq.Poller()
        waiting: dict[zmq.Socket, int] = {}
        for index in indexes:
            sock = self._sockets.get(index) or self._open_socket(index)
            sock.send(frame)
            poller.register(sock, zmq.POLLIN)
            waiting[sock] = index
        replies: dict[int, dict | str] = {}
        try:
            while waiting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                for sock, _ in poller.poll(max(1, int(remaining * 1000))):
                    index = waiting.pop(sock)
                    poller.unregister(sock)
                    replies[index] = self._status_reply(index, sock.recv())
        finally:
            for index in waiting.values():
                self._drop_socket(index)  # no reply: its REQ socket is stuck
        return replies

    def _status_reply(self, index: int, frame: bytes) -> dict | str:
        try:
            resp = decode_response(frame)
        except ProtocolError as exc:
            return f"bad reply: {exc}"
        if resp.status is not Status.OK or not isinstance(resp.info, dict):
            detail = f": {resp.error}" if resp.error else ""
            return f"no status report (answered {resp.status.name}{detail})"
        rid = resp.info.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool):
            for other, idx in list(self._ids.items()):
                if idx == index and other != rid:
                    del self._ids[other]  # the address now serves another id
            self._ids[rid] = index
        return resp.info
