"""A benchmark run stopped with SIGTERM (`timeout`, `kill`, the end of a CI
job) stops the clusters it started and removes their directories, as
Ctrl-C does, instead of leaving replicas running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replica.launch import replica_env
from tests.harness import SERVER_MISSING

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


def _replicas_under(directory: Path) -> list[int]:
    """Pids of replica processes whose command line names `directory`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"replica.server" in cmd and str(directory).encode() in cmd:
            found.append(int(entry))
    return found


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.skipif(SERVER_MISSING, reason="replica/server.py does not exist yet")
def test_sigterm_stops_the_replicas_and_removes_their_data(tmp_path: Path) -> None:
    env = dict(replica_env(), BENCH_DATA_DIR=str(tmp_path))
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "benchmarks.run", "--system", "paxoskv",
            "--scenarios", "steady", "--clients", "4", "--duration", "60",
            "--no-plot", "--no-floor", "--no-progress", "--out", str(tmp_path / "results"),
        ],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert _wait(lambda: len(_replicas_under(tmp_path)) == 3, 60), "no cluster came up"
        pids = _replicas_under(tmp_path)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, out
        assert "Traceback" not in out, out
        assert _wait(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 10), pids
        assert not [p for p in tmp_path.iterdir() if p.name.startswith("bench-kv-")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in _replicas_under(tmp_path):
            os.kill(pid, signal.SIGKILL)
