"""kvctl lease and KVClient's lease calls against one fake replica
(tests/unit/test_client.py) whose answers come from a real KVStateMachine
on MemoryDB, with a log time the test sets: ids in hex, output as
etcdctl's, exit codes, the `lease(ttl)` context manager's keep-alive
thread and its revoke at the end."""

# ruff: noqa: F811 - the `run` fixture of test_kvctl is imported by name

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from client import KVClient, LeaseInfo, LeaseNotFound
from client.kvctl import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from kvstore.protocol import (
    WRITE_OPS,
    Op,
    Request,
    Response,
    Status,
    encode_clock,
    encode_lease_expiry,
    encode_request,
)
from kvstore.statemachine import KVStateMachine
from replica.inmem import MemoryDB
from tests.unit.test_client import FakeReplica
from tests.unit.test_kvctl import Run, one_error_line, run  # noqa: F401 - fixture

T0 = 1_800_000_000_000


class LeaseStore:
    """A leader's answers: every write applied as one slot after a clock
    command at `now` (ms); lease reads as the driver serves them."""

    def __init__(self) -> None:
        self.sm = KVStateMachine(MemoryDB())
        self.now = T0
        self.keep_alives = 0

    def apply(self, command: bytes) -> Response:
        clock = encode_clock(self.now, 3_600_000)
        results = self.sm.apply([(self.sm.applied_index, (clock, command))])
        return results[1][2]

    def expire(self, *ids: int) -> None:
        self.apply(encode_lease_expiry(list(ids)))

    def __call__(self, req: Request) -> Response:
        if req.op is Op.LEASE_LIST:
            ids, more = self.sm.lease_ids(req.lease, 2)  # small pages: the client follows them
            return Response(Status.OK, info={"leases": ids, "more": more})
        if req.op is Op.LEASE_TTL:
            found = self.sm.lease(req.lease)
            if found is None:
                return Response(Status.NOT_FOUND)
            info = {
                "granted_ttl": found[0] // 1000,
                "ttl": (found[1] - self.now) // 1000,
                "keys": found[2],
            }
            keys = self.sm.lease_keys(req.lease) if req.keys_only else None
            return Response(Status.OK, info=info, result=keys)
        if req.op is Op.GET:
            found = self.sm.get(req.key)
            return Response(Status.OK, *found) if found else Response(Status.NOT_FOUND)
        assert req.op in WRITE_OPS
        self.keep_alives += req.op is Op.LEASE_KEEPALIVE
        return self.apply(encode_request(req))


@pytest.fixture
def store() -> LeaseStore:
    return LeaseStore()


@pytest.fixture
def leader(store: LeaseStore) -> Iterator[FakeReplica]:
    fake = FakeReplica(1, store)
    yield fake
    fake.close()


@pytest.fixture
def kv(leader: FakeReplica) -> Iterator[KVClient]:
    with KVClient([leader.address], timeout=5) as client:
        yield client


def test_grant_put_ttl_keep_alive_revoke(kv: KVClient, store: LeaseStore) -> None:
    lid = kv.lease_grant(30)
    assert kv.lease_grant(10, lease_id=5) == 5
    kv.put("svc/a", "up", lease=lid)
    kv.put("svc/b", "up", lease=lid)
    store.now += 10_000
    assert kv.lease_ttl(lid) == LeaseInfo(lid, 30, 20, 2, None)
    assert kv.lease_ttl(lid, keys=True).keys == (b"svc/a", b"svc/b")
    assert kv.lease_keep_alive(lid) == 30
    assert kv.lease_ttl(lid).ttl == 30
    assert kv.lease_list() == sorted([lid, 5])
    assert kv.lease_revoke(lid) is True
    assert kv.get("svc/a") is None and kv.get("svc/b") is None
    assert kv.lease_revoke(lid) is False
    assert kv.lease_keep_alive(lid) is None and kv.lease_ttl(lid) is None
    with pytest.raises(LeaseNotFound):
        kv.put("svc/c", "up", lease=lid)
    assert kv.get("svc/c") is None


def test_the_context_manager_keeps_the_lease_alive_then_revokes_it(
    kv: KVClient, store: LeaseStore
) -> None:
    with kv.lease(1) as lease:
        kv.put("held", "x", lease=lease.id)
        deadline = time.monotonic() + 10
        # One every third of a second; the client counts its own once the
        # answer is back (the store counts a keep-alive when it handles it).
        while store.keep_alives < 2 or lease.keep_alives < 2:
            assert time.monotonic() < deadline, "no keep-alives"
            time.sleep(0.02)
        assert lease.alive and lease.keep_alives >= 2
    assert kv.get("held") is None and kv.lease_list() == []


def test_the_keep_alive_thread_stops_when_the_lease_is_gone(
    kv: KVClient, store: LeaseStore
) -> None:
    lease = kv.lease(1)
    store.now += 1_000
    store.expire(lease.id)
    deadline = time.monotonic() + 10
    while lease.alive:
        assert time.monotonic() < deadline, "the thread did not notice"
        time.sleep(0.02)
    lease.close()  # nothing to revoke
    assert not lease.alive


def test_kvctl_lease_lines(run: Run, leader: FakeReplica, store: LeaseStore) -> None:
    cluster = ("--cluster", leader.address)
    code, out, _ = run(*cluster, "lease", "grant", "60")
    assert code == EXIT_OK
    lid = int(out.strip(), 16)
    assert store.sm.lease(lid) == (60_000, T0 + 60_000, 0)
    assert run(*cluster, "put", "k", "v", "--lease", f"{lid:x}")[:2] == (EXIT_OK, "OK\n")
    store.now += 20_000
    code, out, _ = run(*cluster, "lease", "ttl", f"{lid:x}", "--keys")
    assert out == f"lease {lid:x} granted with TTL(60s), remaining(40s), attached keys([k])\n"
    code, out, _ = run(*cluster, "lease", "keep-alive", f"{lid:x}")
    assert (code, out) == (EXIT_OK, f"lease {lid:x} keepalived with TTL(60)\n")
    code, out, _ = run(*cluster, "lease", "list")
    assert (code, out) == (EXIT_OK, f"found 1 leases\n{lid:x}\n")
    code, out, _ = run(*cluster, "lease", "revoke", f"{lid:x}")
    assert (code, out) == (EXIT_OK, f"lease {lid:x} revoked\n")
    assert store.sm.get(b"k") is None
    for argv in (("revoke", f"{lid:x}"), ("ttl", f"{lid:x}"), ("keep-alive", f"{lid:x}")):
        code, out, err = run(*cluster, "lease", *argv)
        assert code == EXIT_FAILED and out == ""
        assert "not found" in one_error_line(err)
    code, _, err = run(*cluster, "put", "k", "v", "--lease", f"{lid:x}")
    assert code == EXIT_FAILED and "not found" in one_error_line(err)


@pytest.mark.parametrize(
    "argv",
    [
        ("lease", "grant", "0"),
        ("lease", "grant", "ten"),
        ("lease", "revoke", "xyz"),
        ("lease", "ttl", "0"),
        ("put", "k", "v", "--lease", "-1"),
    ],
)
def test_kvctl_refuses_bad_lease_arguments(run: Run, argv: tuple[str, ...]) -> None:
    code, out, err = run("--cluster", "127.0.0.1:1", *argv)
    assert code == EXIT_USAGE and out == ""
    assert "lease" in one_error_line(err)
