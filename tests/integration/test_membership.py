"""Membership changes with real processes (kvstore/membership.py, replica/paxos.py
"Membership changes" and "Joining"): a learner added with `kvctl member`,
started on an empty directory with --initial-cluster-state existing,
catching up by snapshot and promoted; the leader removed (it hands over);
a voter whose disk was wiped refused when it comes back under its old id and
replaced by a new id; all while a client writes, with no failed request and
the same data everywhere at the end."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from client import KVClient, kvctl
from kvstore.config import ReplicaAddress, display_address, normalize_address, write_cluster_config
from replica import launch
from tests.harness import Cluster, wait_for


class Writer(threading.Thread):
    """Writes k0, k1, ... until stopped; remembers what was acknowledged."""

    def __init__(self, addresses: list[str]) -> None:
        super().__init__(daemon=True)
        self.client = KVClient(addresses, timeout=30.0, attempt_timeout=0.5)
        self.acked: dict[bytes, bytes] = {}
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self._halt.is_set():
            key, value = b"k%d" % (i % 200), b"v%d" % i
            try:
                self.client.put(key, value)
                self.acked[key] = value
            except Exception as exc:  # noqa: BLE001 - recorded, asserted on
                self.errors.append(f"{type(exc).__name__}: {exc}")
            i += 1

    def stop(self) -> None:
        self._halt.set()
        self.join(60)
        self.client.close()


class Joiner:
    """A replica started outside the harness's config: its own TOML (the
    cluster's replicas and itself), an empty directory, `existing`."""

    def __init__(self, cluster: Cluster, rid: int) -> None:
        self.id = rid
        client_port, peer_port = launch.free_ports(2)
        peer = normalize_address(f"127.0.0.1:{peer_port}")
        client = normalize_address(f"127.0.0.1:{client_port}")
        self.address = ReplicaAddress(rid, peer, client, peer, client)
        self.config = cluster.root / f"cluster-with-{rid}.toml"
        write_cluster_config(self.config, [*cluster.replicas, self.address])
        self.data_dir = cluster.root / f"data{rid}"
        self.log = cluster.root / f"replica{rid}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = launch.start_replica(
            self.config, self.id, self.data_dir, self.log, cluster_state="existing"
        )

    def stop(self) -> None:
        if self.proc is not None:
            launch.stop([self.proc])


def _members(kv: KVClient) -> dict:
    return kv.member_list()


@pytest.fixture
def joiners() -> list[Joiner]:
    made: list[Joiner] = []
    yield made
    for j in made:
        j.stop()


def test_add_promote_remove_leader_and_replace_a_wiped_voter(
    cluster_factory: Callable[..., Cluster],
    joiners: list[Joiner],
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = cluster_factory(3)
    admin = KVClient(c.addresses, timeout=20.0)
    writer = Writer(c.addresses)
    writer.start()
    try:
        wait_for("some writes", lambda: len(writer.acked) >= 50, 30)
        # 1. Add replica 4 as a learner, start it joining: it installs a
        #    snapshot and the leader records it as started.
        four = Joiner(c, 4)
        joiners.append(four)
        info = admin.member_add(4, four.address.peer, four.address.client)
        assert 4 in info["learners"] and 4 not in info["started"]
        four.start()
        wait_for("replica 4 recorded as started", lambda: 4 in _members(admin)["started"], 60)
        # kvctl shows it, in one table
        cluster = ",".join(c.addresses)
        assert kvctl.main(["--cluster", cluster, "member", "list"]) == 0
        table = capsys.readouterr().out
        assert "learner" in table and display_address(four.address.client) in table
        # 2. Promote it.
        info = admin.member_promote(4)
        assert 4 in info["voters"]
        # 3. Remove the leader: it hands over to one of the others.
        leader = c.wait_for_leader()
        info = admin.member_remove(leader)
        assert leader in info["removed"] and leader not in info["voters"]
        everyone = [*c.addresses, display_address(four.address.client)]

        def other_leader() -> int | None:
            for s in launch.statuses(everyone):
                if s and s.get("role") == "leader" and s["id"] != leader:
                    return s["id"]
            return None

        new_leader = wait_for("a new leader among the members", other_leader, 30)
        assert new_leader != leader
        wait_for("writes after the hand-over", lambda: len(writer.acked) >= 200, 60)
        # 4. Wipe a voter's disk; it comes back under its old id, joining,
        #    and is refused once its snapshot shows it ran before.
        victim = next(r for r in c.ids if r not in (leader, new_leader))
        c.stop_replica(victim)
        shutil.rmtree(c.data_dir(victim))
        c.start_replica(victim, cluster_state="existing")
        proc = c.procs[victim]
        wait_for("the wiped replica to stop", lambda: proc.poll() is not None, 60)
        assert proc.returncode == 2
        assert "has run in this cluster before" in c.log_path(victim).read_text()
        # ... and is replaced by a new id.
        admin.member_remove(victim)
        five = Joiner(c, 5)
        joiners.append(five)
        admin.member_add(5, five.address.peer, five.address.client)
        five.start()
        wait_for("replica 5 recorded as started", lambda: 5 in _members(admin)["started"], 60)
        info = admin.member_promote(5)
        assert (
            sorted(info["voters"]) == sorted({new_leader, 4, 5} - {leader, victim})
            or 5 in info["voters"]
        )
    finally:
        writer.stop()
    assert writer.errors == []
    # Every member holds what the writer had acknowledged (stale reads, each replica).
    members = _members(admin)
    admin.close()
    addresses = {m["id"]: display_address(m["client"]) for m in members["members"]}
    for rid, address in addresses.items():
        with KVClient([address], timeout=10.0) as kv:

            def caught_up(kv: KVClient = kv) -> bool:
                return all(kv.get(k, stale=True) == v for k, v in writer.acked.items())

            wait_for(f"replica {rid} to hold every acknowledged write", caught_up, 30)


class Load:
    """`clients` writers, each its own KVClient; records every acknowledged
    (key, value, revision), errors, and the longest time one request took."""

    def __init__(self, addresses: list[str], clients: int) -> None:
        self.addresses = addresses
        self.acked: list[tuple[bytes, bytes, int]] = []
        self.errors: list[str] = []
        self.longest = 0.0
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)
        ]

    def _run(self, n: int) -> None:
        with KVClient(self.addresses, timeout=30.0, attempt_timeout=0.5) as kv:
            i = 0
            while not self._halt.is_set():
                key, value = b"c%02d/%d" % (n, i % 50), b"%d-%d" % (n, i)
                t0 = time.monotonic()
                try:
                    revision = kv.put(key, value)
                except Exception as exc:  # noqa: BLE001 - recorded, asserted on
                    with self._lock:
                        self.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                took = time.monotonic() - t0
                with self._lock:
                    self.acked.append((key, value, revision))
                    self.longest = max(self.longest, took)
                i += 1

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._halt.set()
        for t in self._threads:
            t.join(60)

    def latest(self) -> dict[bytes, bytes]:
        """Each key's value with the highest revision acknowledged."""
        best: dict[bytes, tuple[int, bytes]] = {}
        for key, value, rev in self.acked:
            if key not in best or rev > best[key][0]:
                best[key] = (rev, value)
        return {k: v for k, (_, v) in best.items()}


def test_rolling_onto_three_new_replicas_under_load(
    cluster_factory: Callable[..., Cluster], joiners: list[Joiner]
) -> None:
    """Issue 12: a 3-replica cluster under a 16-client write load is moved
    onto three new replicas one at a time (add, wait until it caught up,
    promote, remove an old one: the leader first), with no request failing
    and none taking longer than a few elections; all data intact."""
    c = cluster_factory(3)
    admin = KVClient(c.addresses, timeout=30.0)
    load = Load(c.addresses, 16).start()
    old = list(c.ids)
    try:
        wait_for("some writes", lambda: len(load.acked) >= 100, 30)
        for new_id in (4, 5, 6):
            j = Joiner(c, new_id)
            joiners.append(j)
            admin.member_add(new_id, j.address.peer, j.address.client)
            j.start()
            wait_for(
                f"replica {new_id} started",
                lambda n=new_id: n in admin.member_list()["started"],
                60,
            )
            admin.member_promote(new_id)
            leader = c.wait_for_leader() if new_id == 4 else None
            victim = leader if leader in old else old[0]
            old.remove(victim)
            info = admin.member_remove(victim)
            assert victim in info["removed"]
            count = len(load.acked)
            wait_for("writes after the change", lambda n=count: len(load.acked) >= n + 50, 60)
    finally:
        load.stop()
    assert load.errors == []
    assert load.longest < 5.0, f"a request took {load.longest:.1f} s"
    info = admin.member_list()
    admin.close()
    assert set(info["voters"]) == {4, 5, 6} and set(info["removed"]) == {1, 2, 3}
    expected = load.latest()
    for j in joiners:
        with KVClient([display_address(j.address.client)], timeout=10.0) as kv:

            def holds_all(kv: KVClient = kv) -> bool:
                return all(kv.get(k, stale=True) == v for k, v in expected.items())

            wait_for(f"replica {j.id} to hold every acknowledged write", holds_all, 30)


def test_move_leader_under_load_fails_no_request(
    cluster_factory: Callable[..., Cluster], capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: `kvctl move-leader` during a 16-client write load moves
    leadership with no failed request (writes wait for the new leader and
    are retried by their clients)."""
    c = cluster_factory(3)
    load = Load(c.addresses, 16).start()
    try:
        wait_for("some writes", lambda: len(load.acked) >= 200, 30)
        for _ in range(2):
            leader = c.wait_for_leader()
            target = next(r for r in c.ids if r != leader)
            before = len(load.acked)
            code = kvctl.main(["--cluster", ",".join(c.addresses), "--timeout", "10",
                               "move-leader", str(target)])  # fmt: skip
            assert code == 0
            assert f"replica {target} leads" in capsys.readouterr().out
            assert c.wait_for_leader() == target
            wait_for("writes under the new leader", lambda n=before: len(load.acked) >= n + 200, 30)
    finally:
        load.stop()
    assert load.errors == []
    assert load.longest < 5.0, f"a request took {load.longest:.1f} s"
