"""Vouched reads (replica/paxos.py "Vouched reads", KVClient's default) on
real replica processes: KVClient's GETs are confirmed by the followers'
vouches, stay right across a SIGKILL of a follower (the other one vouches)
and of the leader, and a client that does not vouch is answered by a
heartbeat round as before. The safety argument is checked by the simulator
(tests/sim: vouched GETs in every random run, and the directed scenario with
CountsAnyVouch); here, that the pieces meet over the wire."""

from __future__ import annotations

from collections.abc import Callable

from client import KVClient
from tests.harness import Cluster
from tests.integration.test_replica import wait_agreed_leader


def vouched_reads(cluster: Cluster, rid: int) -> float:
    return cluster.counter(rid, "paxoskv_vouched_reads_total")


def test_gets_are_confirmed_by_vouches_and_stay_right_across_kills(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory(3, metrics=True)
    client = cluster.client()
    leader = wait_agreed_leader(cluster)
    cluster.write_and_read(client, "v")
    assert vouched_reads(cluster, leader) >= 10, "the leader confirmed reads by vouches"

    plain = KVClient(client.addresses, timeout=10.0, vouch_reads=False)
    try:
        before = vouched_reads(cluster, leader)
        for i in range(20):
            assert plain.get(f"k{i}") == f"v{i}".encode()
        assert vouched_reads(cluster, leader) == before  # a heartbeat round each
    finally:
        plain.close()

    follower = next(rid for rid in cluster.ids if rid != leader)
    cluster.kill(follower)
    before = vouched_reads(cluster, leader)
    for i in range(20):
        client.put(f"k{i}", f"w{i}")
        assert client.get(f"k{i}") == f"w{i}".encode()
    assert vouched_reads(cluster, leader) >= before + 10, "the other follower vouched"

    cluster.start_replica(follower)
    cluster.wait_ready(follower)
    cluster.kill(leader)
    new = wait_agreed_leader(cluster, timeout=15.0)
    for i in range(20):
        client.put(f"k{i}", f"x{i}")
        assert client.get(f"k{i}") == f"x{i}".encode()
    assert vouched_reads(cluster, new) >= 10
