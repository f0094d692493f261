"""Linearizable reads on the leader's read lease (`kvstore-replica
--lease-reads`, replica/paxos.py "Leader leases"), on real replica
processes: reads are answered on the lease, and stay right across a
SIGKILL of the leader and a restart of the killed replica. The safety
argument is checked by the simulator (tests/sim: lease runs and the
directed scenario with LeaseTooLong); here, that the flag does what it says."""

from __future__ import annotations

from collections.abc import Callable

from tests.harness import Cluster, wait_for
from tests.integration.test_replica import wait_agreed_leader


def lease_reads(cluster: Cluster, rid: int) -> float:
    return cluster.counter(rid, "paxoskv_lease_reads_total")


def test_reads_are_answered_on_the_lease_and_stay_right_across_a_leader_kill(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory(3, metrics=True, replica_args=("--lease-reads",))
    client = cluster.client()
    leader = wait_agreed_leader(cluster)
    cluster.write_and_read(client, "v")
    assert lease_reads(cluster, leader) >= 1, "the leader answered reads on its lease"
    assert all(lease_reads(cluster, rid) == 0 for rid in cluster.ids if rid != leader)

    cluster.kill(leader)
    new = wait_agreed_leader(cluster, timeout=15.0)
    assert new != leader
    for i in range(20):
        client.put(f"k{i}", f"w{i}")
        assert client.get(f"k{i}") == f"w{i}".encode()
    wait_for("the new leader's lease reads", lambda: lease_reads(cluster, new) >= 1, 10.0)

    cluster.start_replica(leader)  # it waits an election timeout before backing a new leader
    cluster.wait_ready(leader)
    assert client.get("k7") == b"w7"
    assert wait_agreed_leader(cluster) == new
