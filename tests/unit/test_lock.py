"""client/lock.py and `kvctl lock` against one fake replica
(tests/unit/test_client.py) whose answers come from a real KVStateMachine
on MemoryDB (the lease store of test_kvctl_leases, plus ranges and watch
polls answered at once): the uncontended path, waiters in line that each
watch their immediate predecessor only, a predecessor that leaves without
holding, a holder whose lease expires, a timeout that leaves nothing
behind, a waiter whose own lease is lost, an election on the same line,
and kvctl lock with a command and holding until SIGTERM."""

# ruff: noqa: F811 - the `run` fixture of test_kvctl is imported by name

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client import KVClient, KVError, LockLost, LockTimeout
from client.kvctl import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from client.lock import Election, Lock
from kvstore.protocol import Op, Request, Response, Status, WatchEvent, WatchResult
from tests.unit.test_client import FakeReplica
from tests.unit.test_kvctl import Run, one_error_line, run  # noqa: F401 - fixture
from tests.unit.test_kvctl_leases import LeaseStore

pytestmark = pytest.mark.timeout(60)


class LockStore(LeaseStore):
    """The lease store, also serving range reads and watch polls (an empty
    poll is answered after 10 ms, not held: the fake serves one request
    at a time)."""

    def __call__(self, req: Request) -> Response:
        if req.op is Op.RANGE:
            return self.sm.read_range(req)
        if req.op is Op.WATCH:
            assert req.expected_version is not None
            found = self.sm.watch_events(req.expected_version, req.key, req.range_end)
            if found is None:
                return Response(Status.COMPACTED, info={"oldest": 1})
            events, after = found
            if not events:
                time.sleep(0.01)
            return Response(
                Status.OK, result=WatchResult(tuple(WatchEvent(*e) for e in events), after)
            )
        return super().__call__(req)

    def queue(self, name: bytes = b"job") -> list[bytes]:
        page = self.sm.read_range(
            Request(Op.RANGE, key=b"locks/" + name + b"/", range_end=b"locks/" + name + b"0")
        )
        return [kv.key for kv in page.result.kvs]


@pytest.fixture
def store() -> LockStore:
    return LockStore()


@pytest.fixture
def leader(store: LockStore) -> Iterator[FakeReplica]:
    fake = FakeReplica(1, store)
    yield fake
    fake.close()


@pytest.fixture
def clients(leader: FakeReplica) -> Iterator[Callable[[], KVClient]]:
    made: list[KVClient] = []

    def make() -> KVClient:
        made.append(KVClient([leader.address], timeout=5))
        return made[-1]

    yield make
    for kv in made:
        kv.close()


def wait_for(what: str, check: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Contender(threading.Thread):
    """Acquires `lock` in a thread; `token` once it holds it."""

    def __init__(self, lock: Lock, timeout: float | None = None) -> None:
        super().__init__(daemon=True)
        self.lock, self.wait = lock, timeout
        self.token: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.token = self.lock.acquire(self.wait)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc


def watched_keys(fake: FakeReplica) -> set[tuple[bytes, bytes | None]]:
    return {(r.key, r.range_end) for r in fake.requests if r.op is Op.WATCH}


def test_uncontended_lock_returns_its_create_revision_and_releases(
    clients: Callable[[], KVClient], store: LockStore
) -> None:
    kv = clients()
    with kv.lock("job", ttl=5) as token:
        (key,) = store.queue()
        assert store.sm.get(key) is not None
        lease_id = int(key.rsplit(b"/", 1)[1], 16)
        assert key == b"locks/job/%016x" % lease_id
        assert token == kv.range(key).kvs[0].create_revision
        assert store.sm.lease(lease_id) is not None  # the key lives under the lock's lease
    assert store.queue() == [] and kv.lease_list() == []  # key deleted, lease revoked


def test_waiters_line_up_and_each_watches_its_predecessor_only(
    clients: Callable[[], KVClient], store: LockStore, leader: FakeReplica
) -> None:
    a = clients().lock("job", ttl=5)
    first = a.acquire()
    b, c = Contender(clients().lock("job", ttl=5)), Contender(clients().lock("job", ttl=5))
    b.start()
    wait_for("b in line", lambda: len(store.queue()) == 2)
    c.start()
    wait_for("c in line", lambda: len(store.queue()) == 3)
    wait_for("both watching", lambda: len(watched_keys(leader)) == 2)
    # b watches a's key, c watches b's key: one key each, never the directory.
    assert watched_keys(leader) == {(a.key, None), (b.lock.key, None)}
    time.sleep(0.2)
    assert b.token is None and c.token is None
    a.release()
    wait_for("b to hold", lambda: b.token is not None)
    assert b.token > first and c.token is None and b.lock.held
    b.lock.release()
    wait_for("c to hold", lambda: c.token is not None)
    assert c.token > b.token
    c.lock.release()
    assert store.queue() == []
    assert b.error is None and c.error is None


def test_a_predecessor_that_leaves_without_holding_passes_the_wait_on(
    clients: Callable[[], KVClient], store: LockStore
) -> None:
    a = clients().lock("job", ttl=5)
    a.acquire()
    b = Contender(clients().lock("job", ttl=5), timeout=1.0)
    b.start()
    wait_for("b in line", lambda: len(store.queue()) == 2)
    c = Contender(clients().lock("job", ttl=5))
    c.start()
    b.join(10)
    assert isinstance(b.error, LockTimeout) and "waiting behind" in str(b.error)
    # b left nothing behind; c now waits behind a, still the holder.
    wait_for("b gone", lambda: b.lock.key is None and len(store.queue()) == 2)
    time.sleep(0.3)
    assert c.token is None
    a.release()
    wait_for("c to hold", lambda: c.token is not None)
    c.lock.release()


def test_a_dead_holders_lease_expiry_hands_the_lock_on(
    clients: Callable[[], KVClient], store: LockStore
) -> None:
    kv = clients()
    dead = kv.lease_grant(5)  # nobody keeps it alive: a holder that died
    a = kv.lock("job", lease=dead)
    a.acquire()
    b = Contender(clients().lock("job", ttl=5))
    b.start()
    wait_for("b in line", lambda: len(store.queue()) == 2)
    store.now += 6_000
    store.expire(dead)
    wait_for("b to hold", lambda: b.token is not None)
    assert b.error is None and store.queue() == [b.lock.key]
    b.lock.release()


def test_a_timeout_leaves_nothing_behind(clients: Callable[[], KVClient], store: LockStore) -> None:
    kv = clients()
    a = kv.lock("job", ttl=5)
    a.acquire()
    other = clients()
    began = time.monotonic()
    with pytest.raises(LockTimeout):
        other.lock("job", ttl=5, timeout=0.5).__enter__()
    assert 0.5 <= time.monotonic() - began < 5
    assert store.queue() == [a.key]
    assert kv.lease_list() == [a.lease_id]  # the waiter's lease was revoked
    a.release()


def test_a_waiter_whose_lease_is_lost_raises_lock_lost(
    clients: Callable[[], KVClient], store: LockStore
) -> None:
    a = clients().lock("job", ttl=5)
    a.acquire()
    kv = clients()
    lost = kv.lease_grant(5)
    b = Contender(clients().lock("job", ttl=1, lease=lost))  # re-reads its line every second
    b.start()
    wait_for("b in line", lambda: len(store.queue()) == 2)
    store.now += 6_000
    store.expire(lost)
    b.join(10)
    assert isinstance(b.error, LockLost)
    a.release()


def test_kvctl_lock_runs_the_command_with_the_token(
    run: Run, leader: FakeReplica, store: LockStore, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    script = (
        "import os, sys; "
        f"open({str(seen)!r}, 'w').write(os.environ['KVCTL_LOCK_KEY'] + ' ' + "
        "os.environ['KVCTL_LOCK_TOKEN']); sys.exit(3)"
    )
    code, out, err = run(
        "--cluster", leader.address, "lock", "job", "--", sys.executable, "-c", script
    )
    assert code == 3, err  # the command's status
    key, token = seen.read_text().split()
    assert key.startswith("locks/job/") and int(token) > 0
    assert store.queue() == [] and store.sm.lease_ids(0, 10) == ([], False)  # released


def test_kvctl_lock_reports_a_command_that_cannot_run(
    run: Run, leader: FakeReplica, store: LockStore
) -> None:
    code, _, err = run("--cluster", leader.address, "lock", "job", "--", "/no/such/command")
    assert code == EXIT_FAILED and "cannot run /no/such/command" in one_error_line(err)
    assert store.queue() == []


@pytest.mark.parametrize(
    "argv", [("lock",), ("lock", "job", "--ttl", "0"), ("lock", "job", "--wait", "-1")]
)
def test_kvctl_lock_refuses_bad_arguments(run: Run, argv: tuple[str, ...]) -> None:
    code, out, err = run("--cluster", "127.0.0.1:1", *argv)
    assert code == EXIT_USAGE and out == ""
    one_error_line(err)


def test_kvctl_lock_holds_until_sigterm(leader: FakeReplica, store: LockStore) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.kvctl", "--cluster", leader.address, "lock", "job"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        key = proc.stdout.readline().rstrip(b"\n")
        token = int(proc.stdout.readline())
        assert store.queue() == [key] and token == store.sm.get(key)[1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == EXIT_OK
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert store.queue() == []


def test_an_election_follows_the_line(clients: Callable[[], KVClient], store: LockStore) -> None:
    a, b = Election(clients(), "primary", ttl=5), Election(clients(), "primary", ttl=5)
    observer = Election(clients(), "primary")
    assert observer.leader() is None
    first = a.campaign("host-a")
    assert a.is_leader and observer.leader() == (b"host-a", first)
    campaign = threading.Thread(target=b.campaign, args=("host-b",), daemon=True)
    campaign.start()
    wait_for("b in line", lambda: len(store.sm.read_range(elections_range()).result.kvs) == 2)
    a.proclaim("host-a:8080")
    assert observer.leader() == (b"host-a:8080", first) and not b.is_leader
    with pytest.raises(KVError):
        b.proclaim("usurper")
    a.resign()
    campaign.join(10)
    assert b.is_leader and not a.is_leader
    value, token = observer.leader() or (b"", 0)
    assert value == b"host-b" and token > first
    b.resign()
    assert observer.leader() is None


def elections_range() -> Request:
    return Request(Op.RANGE, key=b"elections/primary/", range_end=b"elections/primary0")


def test_kvctl_lock_stops_the_command_when_the_lease_is_lost(
    run: Run, leader: FakeReplica, store: LockStore, tmp_path: Path
) -> None:
    started = tmp_path / "started"

    def expire_the_holder() -> None:
        # Once the command runs (the lock is held): expired while waiting
        # for it, kvctl says the key is gone instead.
        wait_for("the command under the lock", started.exists)
        (key,) = store.queue()
        store.now += 2_000
        store.expire(int(key.rsplit(b"/", 1)[1], 16))

    expiry = threading.Thread(target=expire_the_holder, daemon=True)
    expiry.start()
    began = time.monotonic()
    script = f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); time.sleep(30)"
    argv = ("lock", "job", "--ttl", "1", "--", sys.executable, "-c", script)
    code, _, err = run("--cluster", leader.address, *argv)
    assert code == EXIT_FAILED and "lost the lock job" in one_error_line(err)
    assert time.monotonic() - began < 15  # the command was stopped, not waited for
    expiry.join(5)
