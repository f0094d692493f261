"""Locks on a real 3-replica cluster (issue 14): three loops of
`kvctl lock mutex -- python WORKER` never hold the lock at the same time,
while the leader is killed with SIGKILL (and later restarted).

The worker appends "TOKEN start" to a shared file, sleeps a little, then
appends "TOKEN end" (each line one O_APPEND write). Mutual exclusion and
fencing are checked on that file alone: the lines come in pairs of one
token (no other holder wrote between a start and its end), and the tokens
strictly increase from one holder to the next (each new holder's key was
created after the previous holder's). A kvctl run may fail while there is
no leader (exit 3); that is allowed, an overlap is not.

Every wait polls with a deadline (tests/harness.py wait_for).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.timeout(300)

WORKER = """\
import os, sys, time
path, token = sys.argv[1], os.environ["KVCTL_LOCK_TOKEN"]
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, f"{token} start {os.environ['KVCTL_LOCK_KEY']}\\n".encode())
time.sleep(0.05)
os.write(fd, f"{token} end\\n".encode())
os.close(fd)
"""


class Loop(threading.Thread):
    """Runs `kvctl lock mutex -- python WORKER FILE` until stopped."""

    def __init__(self, cluster: Cluster, worker: Path, out: Path) -> None:
        super().__init__(daemon=True)
        self.argv = [
            sys.executable, "-m", "client.kvctl", "--cluster", cluster.cluster_arg,
            "--timeout", "10", "lock", "mutex", "--ttl", "3", "--",
            sys.executable, str(worker), str(out),
        ]  # fmt: skip
        self.stop = threading.Event()
        self.codes: list[int] = []
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            done = subprocess.run(self.argv, capture_output=True, timeout=120)
            self.codes.append(done.returncode)
            if done.returncode != 0:
                self.errors.append(done.stderr.decode(errors="replace").strip())

    def held(self) -> int:
        return self.codes.count(0)


def _check_no_overlap(lines: list[str]) -> list[int]:
    """The tokens of the holders, in order; asserts pairs and increase."""
    assert len(lines) % 2 == 0, f"a holder's start without its end: {lines[-3:]}"
    tokens: list[int] = []
    for i in range(0, len(lines), 2):
        start, end = lines[i].split(), lines[i + 1].split()
        assert start[1] == "start" and end[1] == "end", f"overlap at line {i}: {lines[i : i + 3]}"
        assert start[0] == end[0], f"two holders at once: {lines[i]!r} then {lines[i + 1]!r}"
        tokens.append(int(start[0]))
    assert tokens == sorted(set(tokens)), "fencing tokens must strictly increase"
    return tokens


def test_kvctl_lock_holders_never_overlap_across_a_leader_kill(
    cluster: Cluster, tmp_path: Path
) -> None:
    worker, out = tmp_path / "worker.py", tmp_path / "held.log"
    worker.write_text(WORKER)
    loops = [Loop(cluster, worker, out) for _ in range(3)]
    for loop in loops:
        loop.start()
    try:
        wait_for(
            "every loop to hold the lock twice",
            lambda: all(lp.held() >= 2 for lp in loops) or None,
            timeout=90,
        )
        old = cluster.wait_for_leader()
        cluster.kill(old)
        before = [lp.held() for lp in loops]
        cluster.wait_for_leader(exclude=(old,))
        wait_for(
            "every loop to hold it twice more under the new leader",
            lambda: all(lp.held() >= n + 2 for lp, n in zip(loops, before, strict=True)) or None,
            timeout=120,
        )
        cluster.start_replica(old, cluster_state=None)
        cluster.wait_ready(old)
    finally:
        for loop in loops:
            loop.stop.set()
        for loop in loops:
            loop.join(150)
    for loop in loops:
        # Only "no leader in time" (3) may fail a run; never a usage or other error.
        assert set(loop.codes) <= {0, 3}, loop.errors
    tokens = _check_no_overlap(out.read_text().splitlines())
    assert len(tokens) == sum(lp.held() for lp in loops)
    # Every holder released: the lock's directory is empty, no lease is left.
    kv = cluster.client()
    assert kv.count("locks/mutex/", prefix=True) == 0
    assert kv.lease_list() == []
