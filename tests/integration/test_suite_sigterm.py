"""A test run stopped with SIGTERM stops the replicas its fixtures started
(tests/conftest.py), as Ctrl-C does, instead of dying with them running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replica import launch
from tests.harness import SERVER_MISSING

ROOT = Path(__file__).resolve().parents[2]
TARGET_ENV = "KV_SIGTERM_TARGET"

pytestmark = pytest.mark.timeout(120)


@pytest.mark.skipif(not os.environ.get(TARGET_ENV), reason="run by the test below only")
def test_target_holds_a_cluster(cluster) -> None:  # type: ignore[no-untyped-def]
    """Writes its replicas' pids, pauses one (a stopped process ignores
    SIGTERM until it is killed), then waits to be interrupted."""
    out = Path(os.environ[TARGET_ENV])
    cluster.pause(cluster.ids[0])
    out.write_text(" ".join(str(cluster.pid(rid)) for rid in cluster.ids))
    time.sleep(60)
    pytest.fail("not interrupted")


@pytest.mark.skipif(SERVER_MISSING, reason="replica/server.py does not exist yet")
def test_sigterm_stops_the_replicas_of_the_running_test(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    env = launch.replica_env()
    env[TARGET_ENV] = str(pids_file)
    run = subprocess.Popen(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:xdist",
            "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'inner'}",
            "tests/integration/test_suite_sigterm.py::test_target_holds_a_cluster",
        ],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not pids_file.exists() or not pids_file.read_text():
            assert run.poll() is None, run.communicate()[0].decode(errors="replace")
            assert time.monotonic() < deadline, "the inner test never started its cluster"
            time.sleep(0.05)
        pids = [int(p) for p in pids_file.read_text().split()]
        assert all(launch.is_replica_process(p) for p in pids)
        run.send_signal(signal.SIGTERM)
        out = run.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    alive = [p for p in pids if launch.is_replica_process(p)]
    for pid in alive:  # what a failure here left behind
        os.kill(pid, signal.SIGKILL)
    assert run.returncode != 0, out  # interrupted, not passed
    assert alive == [], f"replicas left running: {alive}\n{out}"
