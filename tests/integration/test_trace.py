"""The per-request trace (replica/trace.py) on a real 3-replica cluster:
`--trace-every 1` makes every replica write one record per slot; the
leader's records hold every stage in commit-path order, and the follower
named as the one whose Phase2b completed the quorum has a record of the
same slot whose marks fall between the leader's send and that Phase2b."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from replica.trace import TRACE_FILE
from tests.harness import Cluster, wait_for

LEADER_STAGES = (
    "start",
    "proposed",
    "sent",
    "persisted",
    "p2b",
    "chosen_persisted",
    "applied",
    "replied",
)
FOLLOWER_STAGES = ("start", "persisted", "sent")


class TracedCluster(Cluster):
    def launch_options(self, rid: int) -> dict[str, Any]:
        return {"extra": ["--trace-every", "1"]}


def _records(cluster: Cluster, rid: int) -> list[dict[str, Any]]:
    path = cluster.data_dir(rid) / TRACE_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_every_slot_is_traced_on_the_leader_and_the_follower_that_completed_it(
    tmp_path: Path,
) -> None:
    with TracedCluster(tmp_path) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader()
        client = cluster.client()
        for i in range(40):
            client.put(b"k%d" % i, b"v")
        wait_for(
            "the leader's trace",
            lambda: len([r for r in _records(cluster, leader) if r["role"] == "leader"]) >= 20,
        )
        cluster.stop()
        led = [r for r in _records(cluster, leader) if r["role"] == "leader"]
        followed: dict[tuple[int, int], dict] = {}
        for rid in cluster.ids:
            if rid != leader:
                for r in _records(cluster, rid):
                    # The first: a Phase2a retransmitted while the leader's
                    # sync stalled (a loaded machine) is traced again, later.
                    followed.setdefault((r["replica"], r["slot"]), r)
    joined = 0
    for record in led:
        marks = [record[stage] for stage in LEADER_STAGES]
        assert marks == sorted(marks), record
        assert record["commands"] >= 1
        other = followed.get((record["p2b_from"], record["slot"]))
        if other is None:
            continue
        assert [other[s] for s in FOLLOWER_STAGES] == sorted(other[s] for s in FOLLOWER_STAGES)
        in_order = record["sent"] <= other["start"] and other["sent"] <= record["p2b"]
        assert in_order, json.dumps([record, other], indent=1)
        joined += 1
    assert len(led) >= 20 and joined >= len(led) // 2, (len(led), joined)
