"""Leases on the client side: what `KVClient.lease_ttl` answers, and the
`Lease` that `KVClient.lease(ttl)` returns, a context manager that keeps
its lease alive from a background thread.

A lease lives in the replicated state machine (kvstore/statemachine.py):
granted with a TTL in seconds, kept alive by keep-alives (each a write in
the log, which moves its deadline to log time + TTL), and expired by the
leader through the log when no keep-alive came for a TTL, with every key
put under it. The keep-alive thread sends one every third of the TTL on a
client of its own (a `KVClient` is not thread-safe); a keep-alive that
finds no replica (a failover in progress) is retried at once, and
the new leader gives every lease a full TTL after it takes over, so a
failover shorter than about two thirds of the TTL loses nothing. Once a
keep-alive answers that the lease is gone (it expired or was revoked),
the thread stops and `alive` is False. Leaving the `with` block revokes
the lease, deleting its keys. Each keep-alive may spend two thirds of the
TTL (at least 2 s) finding the leader, retrying across the replicas.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, NamedTuple, Self

from client.errors import KVError

if TYPE_CHECKING:
    from client.client import KVClient

__all__ = ["Lease", "LeaseInfo"]

RETRY_S = 0.2
"""A keep-alive that failed (no replica answered) is tried again this soon."""


class LeaseInfo(NamedTuple):
    """A lease as `lease_ttl` reads it: the TTL it was granted and the
    seconds left (on the leader: counting the full TTL a new leader gives
    every lease), how many keys it holds, and the keys when asked for
    (the first page of them: at most kvstore.limits.MAX_RANGE_KEYS)."""

    id: int
    granted_ttl: int
    ttl: int
    key_count: int
    keys: tuple[bytes, ...] | None


class Lease:
    """A lease kept alive by a background thread while the `with` block
    runs (`KVClient.lease(ttl)` grants it); revoked at the end. `id` is
    what `KVClient.put(..., lease=...)` takes."""

    def __init__(self, owner: KVClient, ttl: int) -> None:
        self.ttl = ttl
        self.id = owner.lease_grant(ttl)
        self._owner = owner
        self._stop = threading.Event()
        self._gone = threading.Event()
        self.error: BaseException | None = None  # the last keep-alive failure
        self.keep_alives = 0  # answered keep-alives (for tests and monitoring)
        # Each keep-alive may take two thirds of the TTL to find the leader (a
        # failover: silent replicas, redirects, a STATUS round to learn ids).
        patience = max(2.0, 2 * ttl / 3)
        self._thread = threading.Thread(target=self._run, args=(owner._sibling(patience),))
        self._thread.daemon = True
        self._thread.start()

    @property
    def alive(self) -> bool:
        """False once a keep-alive was told the lease is gone."""
        return not self._gone.is_set()

    def _run(self, kv: KVClient) -> None:
        wait = self.ttl / 3
        with kv:
            while not self._stop.wait(wait):
                try:
                    left = kv.lease_keep_alive(self.id)
                except KVError as exc:
                    self.error = exc
                    wait = min(RETRY_S, self.ttl / 3)
                    continue
                if left is None:
                    self._gone.set()
                    return
                self.keep_alives += 1
                wait = self.ttl / 3

    def close(self, revoke: bool = True) -> None:
        """Stops the keep-alives; with `revoke`, revokes the lease (its keys go)."""
        self._stop.set()
        self._thread.join()
        if revoke and self.alive:
            self._owner.lease_revoke(self.id)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lease(id={self.id}, ttl={self.ttl}, alive={self.alive})"
