"""replica/datadir.py: a data directory's identity, and the refusals that
keep a replica off a directory that is not its own or not safe to use."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore.config import ConfigError
from replica import datadir
from replica.datadir import DataDirError, prepare, read_identity


def _prepare(path: Path, rid: int = 1, state: str | None = "new", **kw):  # noqa: ANN202
    args = {"name": "kvstore", "replica_id": rid, "state": state}
    args.update(kw)
    return prepare(path, **args)


def test_new_creates_an_identity_that_later_starts_find(tmp_path: Path) -> None:
    d = tmp_path / "data1"
    ident = _prepare(d)
    assert read_identity(d) == ident
    assert ident.replica_id == 1 and ident.cluster_id == datadir.cluster_id("kvstore")
    # A restart, with any flag or none, finds it.
    for state in (None, "existing", "new"):
        assert _prepare(d, state=state) == ident


def test_an_empty_directory_needs_an_explicit_state(tmp_path: Path) -> None:
    d = tmp_path / "data1"
    with pytest.raises(DataDirError, match="--initial-cluster-state new"):
        _prepare(d, state=None)
    assert not (d / datadir.IDENTITY_FILE).exists()


def test_an_empty_directory_joins_an_existing_cluster(tmp_path: Path) -> None:
    d = tmp_path / "data4"
    ident = _prepare(d, rid=4, state="existing")
    assert ident.joining and read_identity(d).joining  # the core starts joining
    assert not _prepare(tmp_path / "data1", state="new").joining


def test_another_replicas_or_clusters_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "data1"
    _prepare(d)
    with pytest.raises(DataDirError, match="belongs to replica 1, not 2"):
        _prepare(d, rid=2)
    with pytest.raises(DataDirError, match="belongs to cluster"):
        _prepare(d, name="other")


def test_a_directory_from_before_identities_is_adopted(tmp_path: Path) -> None:
    d = tmp_path / "old"
    d.mkdir()
    (d / "CURRENT").write_text("MANIFEST-000002\n")
    ident = _prepare(d, rid=3, state=None)
    assert read_identity(d) == ident and ident.replica_id == 3


def test_a_damaged_identity_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "data1"
    d.mkdir()
    (d / datadir.IDENTITY_FILE).write_text("{not json")
    with pytest.raises(DataDirError, match="not a valid identity"):
        _prepare(d)


def test_cluster_name_from_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[replica]]\nid = 1\npeer = "tcp://127.0.0.1:1"\nclient = "tcp://127.0.0.1:2"\n'
    )
    assert datadir.load_cluster_name(cfg) == "kvstore"
    cfg.write_text(cfg.read_text() + '[cluster]\nname = "prod-eu"\n')
    assert datadir.load_cluster_name(cfg) == "prod-eu"
    cfg.write_text(cfg.read_text().replace('name = "prod-eu"', "name = 3"))
    with pytest.raises(ConfigError, match="name must be a string"):
        datadir.load_cluster_name(cfg)
    assert datadir.cluster_id("a") != datadir.cluster_id("b")
