"""KVStateMachine's leases, on LevelDB and on MemoryDB: grant, put with a
lease, keep-alive, revoke and the leader's expiry command, all decided by
log time; the keys of a lease deleted at ONE revision; detaching by a put
without the lease, a delete or a transaction; the bounds; snapshots that
carry leases and rebuild their indexes; the same outcome however the log is
split into apply calls."""

# ruff: noqa: F811 - the fixtures of test_statemachine are imported by name

from __future__ import annotations

from typing import Any

import pytest

from kvstore.protocol import (
    Op,
    Status,
    Txn,
    TxnOp,
    TxnOpKind,
    encode_lease_expiry,
)
from kvstore.statemachine import KVStateMachine
from tests.unit.test_statemachine import (  # noqa: F401 - fixtures
    T0,
    Client,
    NewDB,
    clk,
    db,
    live_state,
    new_db,
    run,
    run_one,
    sm,
    transfer,
)

LEASE = 7


class LeaseClient(Client):
    def grant(self, lease: int, ttl: int) -> bytes:
        return self._cmd(op=Op.LEASE_GRANT, lease=lease, ttl=ttl)

    def keep_alive(self, lease: int) -> bytes:
        return self._cmd(op=Op.LEASE_KEEPALIVE, lease=lease)

    def revoke(self, lease: int) -> bytes:
        return self._cmd(op=Op.LEASE_REVOKE, lease=lease)

    def put_leased(self, key: bytes, value: bytes, lease: int) -> bytes:
        return self._cmd(op=Op.PUT, key=key, value=value, lease=lease)

    def txn_put(self, key: bytes, value: bytes) -> bytes:
        return self._cmd(op=Op.TXN, txn=Txn((), (TxnOp(TxnOpKind.PUT, key, value=value),), ()))


def keys_of(sm: KVStateMachine, lease: int) -> list[bytes]:
    return [kv.key for kv in sm.lease_keys(lease).kvs]


def granted(sm: KVStateMachine, c: LeaseClient, ttl: int = 10, keys: int = 2) -> None:
    """At T0: lease LEASE with `keys` keys k0, k1, ..."""
    cmds = [clk(T0), c.grant(LEASE, ttl)]
    cmds += [c.put_leased(b"k%d" % i, b"v", LEASE) for i in range(keys)]
    assert all(r.status is Status.OK for r in run(sm, *cmds))


def test_a_lease_expires_by_log_time_with_its_keys_at_one_revision(sm: KVStateMachine) -> None:
    c = LeaseClient()
    granted(sm, c, ttl=10, keys=3)
    run_one(sm, c.put(b"other", b"x"))
    assert sm.lease(LEASE) == (10_000, T0 + 10_000, 3)
    assert keys_of(sm, LEASE) == [b"k0", b"k1", b"k2"]
    before = sm.revision
    run(sm, clk(T0 + 9_999), encode_lease_expiry([LEASE]))  # not yet due: nothing
    assert sm.lease(LEASE) is not None and sm.revision == before
    run(sm, clk(T0 + 10_000), encode_lease_expiry([LEASE, 99]))  # 99: no such lease
    assert sm.lease(LEASE) is None
    assert sm.revision == before + 1  # three keys, one revision
    assert [sm.get(b"k%d" % i) for i in range(3)] == [None] * 3
    assert sm.get(b"other") is not None
    assert keys_of(sm, LEASE) == [] and sm.lease_ids(0, 10) == ([], False)
    assert list(sm._db.iterator(prefix=sm._gen.expiry)) == []


def test_a_keep_alive_moves_the_deadline_and_saves_a_lease_past_it(sm: KVStateMachine) -> None:
    c = LeaseClient()
    granted(sm, c, ttl=10)
    # Past its deadline but before the leader's expiry command: still alive.
    (_, resp) = run(sm, clk(T0 + 12_000), c.keep_alive(LEASE))
    assert resp.status is Status.OK and resp.info == {"id": LEASE, "ttl": 10}
    run(sm, clk(T0 + 12_001), encode_lease_expiry([LEASE]))
    assert sm.lease(LEASE) == (10_000, T0 + 22_000, 2)
    assert [k for k, *_ in sm.leases_due(T0 + 21_999, 10)] == []
    assert [k for k, *_ in sm.leases_due(T0 + 22_000, 10)] == [LEASE]
    # One expiry index entry, at the new deadline.
    assert len(list(sm._db.iterator(prefix=sm._gen.expiry))) == 1


def test_revoke_deletes_the_keys_and_detached_keys_survive(sm: KVStateMachine) -> None:
    c = LeaseClient()
    granted(sm, c, keys=4)
    run(sm, c.put(b"k0", b"plain"), c.delete(b"k1"), c.txn_put(b"k2", b"t"))
    assert sm.lease(LEASE)[2] == 1 and keys_of(sm, LEASE) == [b"k3"]
    before = sm.revision
    resp = run_one(sm, c.revoke(LEASE))
    assert resp.status is Status.OK and resp.version == before + 1 == sm.revision
    assert sm.get(b"k0") == (b"plain", before - 2) and sm.get(b"k2") is not None
    assert sm.get(b"k3") is None
    assert run_one(sm, c.revoke(LEASE)).status is Status.NOT_FOUND
    assert run_one(sm, c.keep_alive(LEASE)).status is Status.NOT_FOUND


def test_a_put_moves_a_key_between_leases(sm: KVStateMachine) -> None:
    c = LeaseClient()
    granted(sm, c, keys=1)
    run(sm, c.grant(8, 5), c.put_leased(b"k0", b"w", 8))
    assert (sm.lease(LEASE)[2], sm.lease(8)[2]) == (0, 1)
    assert keys_of(sm, LEASE) == [] and keys_of(sm, 8) == [b"k0"]
    run_one(sm, c.revoke(LEASE))
    assert sm.get(b"k0") is not None
    assert sm.lease_ids(0, 10) == ([8], False)


def test_refusals_change_nothing(sm: KVStateMachine) -> None:
    c = LeaseClient()
    granted(sm, c, keys=0)
    revision = sm.revision
    resp = run_one(sm, c.put_leased(b"k", b"v", 12345))
    assert resp.status is Status.NOT_FOUND and "lease 12345 not found" in resp.error
    assert sm.get(b"k") is None
    resp = run_one(sm, c.grant(LEASE, 3))
    assert resp.status is Status.BAD_REQUEST and "in use" in resp.error
    assert sm.lease(LEASE)[0] == 10_000 and sm.revision == revision


def test_a_lease_holds_at_most_max_lease_keys(
    sm: KVStateMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kvstore.statemachine.MAX_LEASE_KEYS", 2)
    c = LeaseClient()
    granted(sm, c, keys=2)
    assert run_one(sm, c.put_leased(b"k0", b"again", LEASE)).status is Status.OK  # already its
    resp = run_one(sm, c.put_leased(b"k9", b"v", LEASE))
    assert resp.status is Status.TOO_LARGE and sm.get(b"k9") is None


def test_a_retried_grant_is_answered_from_the_session(sm: KVStateMachine) -> None:
    c = LeaseClient()
    cmd = c.grant(LEASE, 10)
    first = run(sm, clk(T0), cmd)[1]
    again = run_one(sm, cmd)
    assert first.status is again.status is Status.OK
    assert sm.lease_ids(0, 10) == ([LEASE], False)


def test_lease_ids_are_listed_in_pages(sm: KVStateMachine) -> None:
    c = LeaseClient()
    run(sm, clk(T0), *(c.grant(i, 5) for i in (3, 1, 2**63 - 1, 2)))
    assert sm.lease_ids(0, 2) == ([1, 2], True)
    assert sm.lease_ids(2, 2) == ([3, 2**63 - 1], False)


def _lease_log(c: LeaseClient) -> list[tuple[int, tuple[bytes, ...]]]:
    cmds: list[tuple[bytes, ...]] = [(clk(T0),)]
    for lease in range(1, 6):
        cmds.append((c.grant(lease, lease),))
        cmds += [(c.put_leased(b"l%d/%d" % (lease, i), b"v", lease),) for i in range(3)]
    cmds += [(c.put(b"l1/0", b"detached"),), (clk(T0 + 2_500), c.keep_alive(2))]
    cmds += [(clk(T0 + 3_000), encode_lease_expiry([1, 2, 3, 4, 5])), (c.revoke(5),)]
    return list(enumerate(cmds))


def test_every_split_of_the_log_gives_the_same_state(new_db: NewDB) -> None:
    whole, split = KVStateMachine(new_db()), KVStateMachine(new_db())
    log = _lease_log(LeaseClient())
    whole.apply(log)
    for slot in log:
        split.apply([slot])
    assert live_state(whole) == live_state(split)
    # 1 and 3 expired (2 was kept alive, 4 not yet due), 5 revoked.
    assert whole.lease_ids(0, 10) == ([2, 4], False)
    assert whole.get(b"l1/0") is not None and whole.get(b"l1/1") is None
    assert whole.get(b"l2/0") is not None and whole.get(b"l3/0") is None


def test_a_snapshot_carries_leases_and_rebuilds_their_indexes(new_db: NewDB) -> None:
    src, dst = KVStateMachine(new_db()), KVStateMachine(new_db())
    c = LeaseClient()
    src.apply(_lease_log(c)[:-2])  # no expiry, no revoke: five leases
    assert len(src.lease_ids(0, 10)[0]) == 5
    transfer(src, dst, max_bytes=64)  # many small chunks: resumes inside every section
    assert live_state(dst) == live_state(src)
    assert dst.lease(2) == src.lease(2)
    assert [k for k, *_ in dst.leases_due(T0 + 3_000, 10)] == [1, 3]
    follow = [(src.applied_index, (clk(T0 + 3_000), encode_lease_expiry([1, 3])))]
    src.apply(follow)
    dst.apply(follow)
    assert live_state(dst) == live_state(src)
    assert dst.checksum() == src.checksum()


def test_a_lease_expiry_command_is_answered_to_nobody(sm: KVStateMachine) -> None:
    results: Any = sm.apply([(0, (encode_lease_expiry([1]), encode_lease_expiry([])))])
    assert [(cid, seq, r.status) for cid, seq, r in results] == [(b"", 0, Status.OK)] * 2
