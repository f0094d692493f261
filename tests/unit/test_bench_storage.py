"""The benchmark's storage options (benchmarks/run.py, benchmarks/cluster.py):
`--write-buffer` reaches our replicas' `[storage]` table and the table's
header, `--value-duration` the value-size runs. No cluster is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.cluster import KVCluster
from benchmarks.run import build_parser, config_from_args, render_table
from benchmarks.scenarios import make_cluster
from kvstore.config import WRITE_BUFFER_BYTES, load_storage_settings, local_cluster_config


def _cfg(*argv: str):
    return config_from_args(build_parser().parse_args(list(argv)))


def test_write_buffer_reaches_the_replicas_config(tmp_path: Path) -> None:
    cfg = _cfg("--write-buffer", "16MiB")
    assert cfg.write_buffer_bytes == 16 << 20
    cluster = make_cluster("paxoskv", 3, cfg)
    assert cluster.write_buffer_bytes == 16 << 20
    cluster.base_dir = tmp_path
    cluster.write_config(local_cluster_config(3, base_port=20000, peer_base_port=20100))
    assert load_storage_settings(cluster.config_path).write_buffer_bytes == 16 << 20


def test_default_leaves_the_replicas_default(tmp_path: Path) -> None:
    cfg = _cfg()
    assert cfg.write_buffer_bytes is None
    cluster = KVCluster(3, base_dir=tmp_path)
    cluster.write_config(local_cluster_config(3, base_port=20000, peer_base_port=20100))
    assert "[storage]" not in cluster.config_path.read_text()
    assert load_storage_settings(cluster.config_path).write_buffer_bytes == WRITE_BUFFER_BYTES


@pytest.mark.parametrize("size", ["1KiB", "2048MiB"])
def test_write_buffer_out_of_leveldbs_range_is_refused(size: str) -> None:
    with pytest.raises(SystemExit, match="--write-buffer: from 65536"):
        _cfg("--write-buffer", size)


def test_value_duration() -> None:
    assert _cfg("--value-duration", "20").value_duration == 20.0
    assert _cfg().value_duration == 2.0  # the standard suite's


def test_table_header_names_the_write_buffer() -> None:
    doc = {
        "systems": {},
        "machine": {},
        "config": _cfg("--write-buffer", "8MiB").to_dict(),
    }
    assert "paxoskv replicas with write_buffer_bytes = 8,388,608" in render_table(doc)
    doc["config"] = _cfg().to_dict()
    assert "write_buffer_bytes" not in render_table(doc)
