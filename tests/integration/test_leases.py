"""Leases on a real 3-replica cluster (issue 14).

- A lease that nobody keeps alive expires: the leader proposes its expiry
  through the log, and every replica deletes all its keys at ONE revision
  (stale reads from each replica, and each replica's revision), leaving the
  other keys alone.
- A lease kept alive by the client's context manager survives a SIGKILL of
  the leader: the new leader gives it a full TTL, the keep-alive thread
  finds the new leader, and the key is still there two TTLs later; leaving
  the block revokes it.

Every wait polls with a deadline (tests/harness.py wait_for).
"""

from __future__ import annotations

import time

import pytest

from client import KVClient
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.timeout(180)


def _stale(cluster: Cluster, rid: int) -> KVClient:
    """A client that reads replica `rid` only (stale reads answer locally)."""
    return cluster.client(first=cluster.ids.index(rid), timeout=2.0)


def _replica_view(client: KVClient) -> tuple[list[bytes], int]:
    """(every key, revision) as one replica has applied them (one page)."""
    page = client.range("", from_key=True, keys_only=True, stale=True)
    assert not page.more
    return [kv.key for kv in page.kvs], page.revision


def test_an_expired_lease_deletes_its_keys_everywhere_at_one_revision(cluster: Cluster) -> None:
    kv = cluster.client()
    kv.put("keep/me", "plain")
    lid = kv.lease_grant(2)
    leased = [b"svc/%d" % i for i in range(5)]
    for key in leased:
        kv.put(key, "up", lease=lid)
    info = kv.lease_ttl(lid, keys=True)
    assert info is not None and info.keys == tuple(leased) and info.granted_ttl == 2
    assert kv.lease_list() == [lid]
    revision = kv.range("", from_key=True, count_only=True).revision
    readers = {rid: _stale(cluster, rid) for rid in cluster.ids}
    for rid, reader in readers.items():
        wait_for(
            f"replica {rid} to hold the leased keys",
            lambda r=reader: _replica_view(r) == ([b"keep/me", *leased], revision) or None,
        )
    for rid, reader in readers.items():
        wait_for(
            f"replica {rid} to expire the lease",
            lambda r=reader: _replica_view(r)[0] == [b"keep/me"] or None,
            timeout=20,
        )
        # All five keys went in one command: one revision more, on every replica.
        assert _replica_view(reader) == ([b"keep/me"], revision + 1)
    assert kv.lease_ttl(lid) is None and kv.lease_list() == []
    assert {s["revision"] for s in cluster.status()} == {revision + 1}


def test_a_lease_kept_alive_survives_a_leader_kill(cluster: Cluster) -> None:
    kv = cluster.client()
    ttl = 3
    with kv.lease(ttl) as lease:
        kv.put("svc/primary", "me", lease=lease.id)
        wait_for("a keep-alive", lambda: lease.keep_alives >= 1 or None)
        old = cluster.wait_for_leader()
        cluster.kill(old)
        cluster.wait_for_leader(exclude=(old,))
        killed_at = time.monotonic()
        before = lease.keep_alives
        # Keep-alives go on under the new leader, past two TTLs after the kill
        # (without them the lease would have expired by then).
        wait_for(
            "keep-alives under the new leader for two TTLs",
            lambda: (
                (lease.keep_alives >= before + 3 and time.monotonic() > killed_at + 2 * ttl) or None
            ),
            timeout=30,
        )
        assert lease.alive
        assert kv.get("svc/primary") == b"me"
        info = kv.lease_ttl(lease.id)
        assert info is not None and 0 < info.ttl <= ttl
    assert kv.get("svc/primary") is None  # revoked at the end of the block
    assert kv.lease_list() == []
