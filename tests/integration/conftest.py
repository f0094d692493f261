"""Fixtures for tests with real replica clusters (`tests.harness.Cluster`).

Fixtures:
    cluster          a started 3-replica cluster (leader elected)
    cluster_factory  make(replicas=3, start=True, tick_ms=10, metrics=False,
                     curve=False) -> Cluster

On teardown every process is stopped (SIGKILL after a grace period) by pid,
and the cluster directory is removed unless the test failed (then its path
and the log tails are printed, to read what the replicas said).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import SERVER_MISSING, Cluster

__all__ = ["Cluster"]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remembers whether each phase failed, for the fixture's teardown."""
    report = yield
    setattr(item, f"_cluster_rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "_cluster_rep_call", None)
    return rep is None or rep.failed


@pytest.fixture
def cluster_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Cluster]]:
    """make(replicas=3, *, start=True, tick_ms=10, metrics=False, curve=False,
    replica_args=()) -> Cluster; everything it made is stopped at teardown."""
    if SERVER_MISSING:
        pytest.skip("replica/server.py is not there yet")
    made: list[Cluster] = []

    def make(
        replicas: int = 3,
        *,
        start: bool = True,
        tick_ms: int = 10,
        metrics: bool = False,
        curve: bool = False,
        replica_args: tuple[str, ...] = (),
    ) -> Cluster:
        root = tmp_path / f"cluster{len(made)}"
        c = Cluster(
            root,
            replicas,
            tick_ms=tick_ms,
            metrics=metrics,
            curve=curve,
            replica_args=replica_args,
        )
        made.append(c)
        if start:
            c.start()
        return c

    yield make
    for c in made:
        c.stop()
    if _failed(request):
        for c in made:
            print(f"\ncluster files kept in {c.root}")
            for rid in c.ids:
                print(f"--- replica {rid} log tail:\n{c.log_tail(rid)}")
    else:
        for c in made:
            shutil.rmtree(c.root, ignore_errors=True)


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    """A running 3-replica cluster with an elected leader."""
    return cluster_factory(3)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Integration tests never hang the suite: a default timeout."""
    for item in items:
        in_here = "tests/integration" in str(item.fspath).replace(os.sep, "/")
        if in_here and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(120))
