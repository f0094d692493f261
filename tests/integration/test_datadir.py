"""Data directory identity with real processes (replica/datadir.py): a
replica refuses another replica's or cluster's directory, and a replica
whose directory was wiped is not let back in under its old id (it joins,
installs a snapshot, finds it ran before and stops), while the rest of the
cluster goes on serving."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from client import KVClient
from replica.launch import replica_command, replica_env
from tests.harness import Cluster, wait_for


def _run(config: Path, rid: int, data_dir: Path, state: str | None) -> subprocess.CompletedProcess:
    return subprocess.run(
        replica_command(config, rid, data_dir, cluster_state=state),
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
        env=replica_env(),
    )


def _one_line_error(result: subprocess.CompletedProcess, needle: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    return errors[0]


def test_wiped_replica_is_refused_and_the_cluster_serves_on(
    cluster_factory: Callable[..., Cluster],
) -> None:
    c = cluster_factory(3)
    with KVClient(c.addresses, timeout=5.0) as kv:
        kv.put(b"k", b"before")
        victim = next(r for r in c.ids if r != c.wait_for_leader())
        c.stop_replica(victim)
        shutil.rmtree(c.data_dir(victim))
        # Without the flag: told what the choices are, nothing written.
        _one_line_error(
            _run(c.config_path, victim, c.data_dir(victim), None), "--initial-cluster-state"
        )
        assert not c.data_dir(victim).exists()
        # Back on an empty directory under its old id, joining: it installs a
        # snapshot (no promise, no vote meanwhile), sees that its id ran
        # before, and stops with one line.
        result = _run(c.config_path, victim, c.data_dir(victim), "existing")
        line = _one_line_error(result, "has run in this cluster before")
        assert f"replica {victim} " in line and "add a new id" in line
        # The two others still make a majority.
        kv.put(b"k", b"after")
        assert kv.get(b"k") == b"after"
        # Restarted by a script that always says `new` (a compose file, say):
        # the others have history, so this is no new cluster; refused, and
        # the directory stays empty.
        shutil.rmtree(c.data_dir(victim))
        line = _one_line_error(
            _run(c.config_path, victim, c.data_dir(victim), "new"), "this is no new cluster"
        )
        assert "replace it" in line
        assert not (c.data_dir(victim) / "IDENTITY").exists()


def test_another_replicas_directory_is_refused(cluster_factory: Callable[..., Cluster]) -> None:
    c = cluster_factory(3)
    wait_for("replica 1 to write its data", lambda: any(c.data_dir(1).glob("*.log")))
    c.stop_replica(1)
    line = _one_line_error(_run(c.config_path, 2, c.data_dir(1), "new"), "belongs to replica 1")
    assert "not 2" in line
    other = c.root / "other.toml"
    other.write_text(c.config_path.read_text() + '\n[cluster]\nname = "other"\n')
    _one_line_error(_run(other, 1, c.data_dir(1), "new"), "belongs to cluster")
    # Its own directory still starts (the flag is ignored once it has an identity).
    c.start_replica(1, cluster_state="existing")
    c.wait_ready(1)


def test_the_votes_of_small_writes_are_in_the_vote_log(cluster: Cluster) -> None:
    """`[storage] vote_log_min_bytes` is 1 by default: the vote of a
    100-byte PUT is synced in `votes/` on every replica, not in LevelDB."""
    client = cluster.client()
    try:
        for i in range(20):
            client.put(b"k%d" % i, b"v" * 100)
    finally:
        client.close()

    def logged() -> bool:
        return all(
            sum(p.stat().st_size for p in (cluster.data_dir(rid) / "votes").glob("*.vlog")) > 2000
            for rid in cluster.ids
        )

    wait_for("every replica's vote log to hold the votes", logged)
