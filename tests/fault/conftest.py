"""Fault tests: marked `fault`, skipped (one line) where they cannot run.

Every test in tests/fault/test_fault.py needs real replica processes; the
runs on namespace networks need root, iproute2 and iptables (`netns_ok`),
the loopback partitions root and iptables (`firewall_ok`); without them the
test is skipped with the reason, or fails with it when
PAXOSKV_FAULT_REQUIRED=1 (set by .ci/run when it runs as root, so a CI run
cannot pass with the fault tier silently skipped). Each test gets a default timeout so a
wedged cluster never hangs the suite, and keeps its run's files (logs,
history.jsonl, summary.txt) when it fails.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import SERVER_MISSING


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Remembers each phase's report, for `run_dir`'s teardown."""
    report = yield
    setattr(item, f"_fault_rep_{report.when}", report)
    return report


@functools.cache
def _firewall_problem() -> str | None:
    from tests.fault.nemesis import firewall_problem

    return firewall_problem()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/fault/test_fault" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.fault)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(150))


@pytest.fixture
def cluster_ok() -> None:
    """Skips the test unless real replica processes can run."""
    if SERVER_MISSING:
        pytest.skip("replica/server.py is not there yet")


@pytest.fixture
def firewall_ok(cluster_ok: None) -> None:
    """Skips the test unless iptables partitions work too (root, iptables)."""
    problem = _firewall_problem()
    if problem:
        _skip(f"fault tests need root and iptables: {problem}")


@functools.cache
def _netns_problem() -> str | None:
    from tests.fault.netns import netns_problem

    return netns_problem()


@pytest.fixture
def netns_ok(cluster_ok: None) -> None:
    """Skips the test unless namespace networks work (root, iproute2, iptables)."""
    problem = _netns_problem()
    if problem:
        _skip(f"fault tests need root, iproute2 and iptables: {problem}")


def _skip(line: str) -> None:
    if os.environ.get("PAXOSKV_FAULT_REQUIRED") == "1":
        pytest.fail(line + " (PAXOSKV_FAULT_REQUIRED=1)", pytrace=False)
    pytest.skip(line)


@pytest.fixture
def run_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A directory for one run; removed if the test passed, else kept (its
    path is printed)."""
    root = tmp_path / "run"
    yield root
    rep = getattr(request.node, "_fault_rep_call", None)
    if rep is not None and rep.passed:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"\nfault run files kept in {root}")
