"""Locks on top of leases, ranges and watch: `KVClient.lock(name)`; and
`Election`, leader election on the same line of contenders.

    with kv.lock("jobs/nightly", ttl=10, timeout=30) as token:
        storage.write(data, fencing_token=token)

Theory of operation (etcd's concurrency recipe, adapted to this store):

- Every contender has a lease (its own, granted and kept alive by a
  `Lease` for as long as it waits or holds; or one the caller gives) and
  puts ONE key under it, `PREFIX NAME / <lease id in 16 hex digits>`
  (PREFIX is `locks/` unless given). The key is unique to the lease, so
  the put creates it: this store's transactions cannot attach a lease to
  a put (a lease belongs to PUT alone, kvstore/protocol.py), and a plain
  PUT of a key no one else names is the create-if-absent step. A put
  over a key that already exists (the same lease locking the same name
  twice) keeps its create revision, as etcd's reused key does.
- The contenders form a queue ordered by create revision, which the log
  makes total. The holder is the key with the lowest create revision; its
  create revision is the FENCING TOKEN, strictly increasing from one
  holder to the next (a later holder's key was created after every key
  it waited for), so a resource that remembers the highest token it saw
  can refuse a late write from a holder that lost the lock.
- A waiter reads the queue (a linearizable range read of the directory,
  keys only), and watches the deletion of its IMMEDIATE predecessor only
  (the key with the highest create revision below its own), from the
  revision of that read + 1, so nothing is missed between the read and
  the watch, and a release wakes one waiter, not all of them (no
  thundering herd). On a deletion it reads the queue again: the
  predecessor may have left without holding (a timeout, a lost lease)
  while an earlier key still holds.
- A holder whose process dies stops keeping its lease alive: the lease
  expires after its TTL (expiry goes through the log, replica/driver.py)
  and its key with it, which wakes the next waiter. Its token is then
  stale; a holder that is only slow can learn that its lease is gone
  (`held`), but only fencing protects a resource from it.
- A waiter re-reads the queue at least every TTL/2 even without an event,
  so it notices when its own key has gone (its lease lost: `LockLost`)
  and when its wait is over (`LockTimeout`, within about a second).
- Release deletes the key (one write, which wakes the next waiter), then
  revokes the lease when the lock granted it. A release that finds no
  replica leaves the key to the lease's expiry: the keep-alives stopped.
- Waiting or timing out leaves nothing behind: the key is deleted and the
  lock's own lease revoked (best effort; else they expire).
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from client.errors import KVError
from client.lease import Lease
from client.txn import range_args
from client.watch import DELETE, WatchCompacted, watch
from kvstore.protocol import KeyValue

if TYPE_CHECKING:
    from client.client import KVClient

__all__ = ["ELECTION_PREFIX", "LOCK_PREFIX", "Election", "Lock", "LockLost", "LockTimeout"]

LOCK_PREFIX = b"locks/"
"""Where lock keys live unless a prefix is given: locks/NAME/<lease id>."""
ELECTION_PREFIX = b"elections/"
"""Where the candidates of an `Election` live: elections/NAME/<lease id>."""

DEFAULT_TTL = 10
"""The TTL (seconds) of the lease a lock grants itself: how long a dead
holder keeps the lock."""


class LockTimeout(KVError):
    """The lock was not acquired in time; nothing was left behind."""


class LockLost(KVError):
    """The contender's key vanished while it waited (its lease expired or
    was revoked, or someone deleted the key): it is not in the queue."""


def _to_bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _show(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


class Lock:
    """A distributed lock named `name` (see the module doc). `acquire()`
    (or `with`) returns the fencing token; `release()` gives the lock up.
    `ttl`: of the lease the lock grants itself (when no `lease` is given:
    a `Lease`, or the id of a lease the caller keeps alive and revokes).
    `timeout`: seconds `with` waits for the lock (None: forever). One
    acquisition at a time; not thread-safe (like its `KVClient`)."""

    def __init__(
        self,
        kv: KVClient,
        name: bytes | str,
        *,
        ttl: int = DEFAULT_TTL,
        timeout: float | None = None,
        lease: Lease | int | None = None,
        prefix: bytes | str = LOCK_PREFIX,
        value: bytes | str = b"",
    ) -> None:
        name = _to_bytes(name)
        if not name:
            raise ValueError("a lock needs a name")
        self.name = name
        self.directory = _to_bytes(prefix) + name + b"/"
        self.ttl = ttl
        self.timeout = timeout
        self.value = _to_bytes(value)
        self.key: bytes | None = None  # this contender's key while it waits or holds
        self.token: int | None = None  # the create revision of `key` while held
        self._kv = kv
        self._given = lease
        self._lease: Lease | None = None  # the lease the lock granted itself

    @property
    def lease_id(self) -> int | None:
        """The id of the lease the key is put under (the lock's own one
        only while it waits or holds)."""
        if self._lease is not None:
            return self._lease.id
        return self._given.id if isinstance(self._given, Lease) else self._given

    @property
    def held(self) -> bool:
        """Acquired, not released, and the lease not known to be lost."""
        lease = self._lease if self._lease is not None else self._given
        alive = lease.alive if isinstance(lease, Lease) else True
        return self.token is not None and alive

    def acquire(self, timeout: float | None = None) -> int:
        """Waits for the lock (at most `timeout` seconds, default the
        lock's own; None: forever) and returns the fencing token. Raises
        LockTimeout (nothing left behind), LockLost, or the client's
        errors (then the key is left to its lease, if it could not be
        deleted)."""
        if self.key is not None:
            raise KVError(f"lock {_show(self.name)} is already acquired or being acquired")
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if self._given is None:
                self._lease = Lease(self._kv, self.ttl)
            lease_id = self.lease_id
            assert lease_id is not None
            key = self.directory + b"%016x" % lease_id
            self.key = key
            self._kv.put(key, self.value, lease=lease_id)
            self.token = self._wait(key, deadline, timeout)
        except BaseException:
            self._abandon()
            raise
        return self.token

    def release(self) -> None:
        """Deletes the key (the next waiter takes the lock) and revokes the
        lease the lock granted itself. Nothing to do when not acquired."""
        key, lease = self.key, self._lease
        self.key = self.token = None
        self._lease = None
        try:
            if key is not None:
                self._kv.delete(key)
        finally:
            if lease is not None:
                lease.close()

    def _abandon(self) -> None:
        """Gives up a wait: the key and the own lease go, best effort."""
        with contextlib.suppress(KVError):  # else the lease expires, and the key with it
            self.release()

    def _wait(self, key: bytes, deadline: float | None, timeout: float | None) -> int:
        """Until `key` has no predecessor: returns its create revision."""
        recheck = max(1.0, self.ttl / 2)
        while True:
            mine, before, revision = self._queue(key)
            if mine is None:
                raise LockLost(
                    f"lock {_show(self.name)}: its key {_show(key)} is gone "
                    "(its lease expired or was revoked)"
                )
            if before is None:
                return mine.create_revision
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise LockTimeout(
                    f"lock {_show(self.name)} not acquired within {timeout:g}s "
                    f"(waiting behind {_show(before.key)})"
                )
            until = now + recheck if deadline is None else min(deadline, now + recheck)
            self._await_delete(before.key, revision + 1, until)

    def line(self, *, keys_only: bool = True) -> list[tuple[KeyValue, int]]:
        """Every contender's entry (and the revision of the page that read
        it), in key order: a linearizable read of the whole directory."""
        start, end = range_args(self.directory, None, prefix=True)
        entries: list[tuple[KeyValue, int]] = []
        while True:
            page = self._kv.range(start, end, keys_only=keys_only)
            entries += [(item, page.revision) for item in page.kvs]
            if not page.more or page.next_key is None:
                return entries
            start = page.next_key

    def _queue(self, key: bytes) -> tuple[KeyValue | None, KeyValue | None, int]:
        """(this contender's entry, its immediate predecessor, the revision
        of the read that saw it) from a read of the whole directory."""
        entries = self.line()
        mine = next((item for item, _ in entries if item.key == key), None)
        if mine is None:
            return None, None, 0
        earlier = [e for e in entries if e[0].create_revision < mine.create_revision]
        if not earlier:
            return mine, None, 0
        before, revision = max(earlier, key=lambda e: e[0].create_revision)
        return mine, before, revision

    def _await_delete(self, key: bytes, start: int, until: float) -> None:
        """Returns when `key` is deleted at `start` or later, or at `until`."""
        hold = max(0.05, min(1.0, until - time.monotonic()))
        try:
            for event in watch(self._kv, key, start_revision=start, hold=hold, until=until):
                if event.kind == DELETE:
                    return
        except WatchCompacted:
            return  # read the queue again

    def __enter__(self) -> int:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Lock({self.name!r}, key={self.key!r}, token={self.token})"


class Election:
    """Leader election on a `Lock` (etcd's election recipe, the same line):
    `campaign(value)` waits until this candidate is first in line and
    returns its token; `leader()` tells who leads (its value and token)
    to anyone; `proclaim(value)` changes the leader's value; `resign()`
    steps down (the next candidate leads). Keys: elections/NAME/<lease>."""

    def __init__(
        self,
        kv: KVClient,
        name: bytes | str,
        *,
        ttl: int = DEFAULT_TTL,
        lease: Lease | int | None = None,
        prefix: bytes | str = ELECTION_PREFIX,
    ) -> None:
        self._kv = kv
        self._lock = Lock(kv, name, ttl=ttl, lease=lease, prefix=prefix)

    @property
    def is_leader(self) -> bool:
        return self._lock.held

    def campaign(self, value: bytes | str, timeout: float | None = None) -> int:
        """Waits (at most `timeout` s: LockTimeout) to lead; returns the token."""
        self._lock.value = _to_bytes(value)
        return self._lock.acquire(timeout)

    def proclaim(self, value: bytes | str) -> None:
        """The leader's new value (its token stays)."""
        if not self.is_leader or self._lock.key is None:
            raise KVError("only the leader can proclaim")
        self._lock.value = _to_bytes(value)
        self._kv.put(self._lock.key, self._lock.value, lease=self._lock.lease_id or 0)

    def leader(self) -> tuple[bytes, int] | None:
        """(value, token) of the leader, or None when nobody campaigns."""
        entries = self._lock.line(keys_only=False)
        if not entries:
            return None
        first = min((item for item, _ in entries), key=lambda item: item.create_revision)
        return first.value or b"", first.create_revision

    def resign(self) -> None:
        """Steps down, or gives up a campaign."""
        self._lock.release()
