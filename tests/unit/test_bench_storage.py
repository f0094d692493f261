"""The benchmark's storage options and figures (benchmarks/run.py,
benchmarks/cluster.py, benchmarks/scenarios.py): `--write-buffer` reaches our
replicas' `[storage]` table and the table's header, `--value-duration` the
value-size runs; the bytes written per PUT come from /proc and make a row for
the larger values. No cluster is started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.cluster import KVCluster
from benchmarks.run import build_parser, config_from_args, render_table, table_rows
from benchmarks.scenarios import make_cluster, proc_write_bytes, written_per_op
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


def test_proc_write_bytes_counts_what_a_process_writes(tmp_path: Path) -> None:
    before = proc_write_bytes(os.getpid())
    if before is None:
        pytest.skip("no /proc/PID/io here")
    with open(tmp_path / "f", "wb") as f:
        f.write(os.urandom(256 << 10))
        f.flush()
        os.fsync(f.fileno())
    after = proc_write_bytes(os.getpid())
    if after == before and Path("/proc/mounts").read_text().find(" tmpfs ") >= 0:
        pytest.skip("the temp dir may be a tmpfs, which writes nothing to a disk")
    assert after - before >= 256 << 10
    assert proc_write_bytes(2**22 + 12345) is None  # no such process


def _values_doc(written: dict[int, int], wall: float, rate: float) -> dict:
    def run(size: int) -> dict:
        return {
            "value_size": size,
            "throughput": rate,
            "wall_s": wall,
            "latency_ms": {"p50": 3.0},
            "server_write_bytes": written,
        }

    system = {"status": "ok", "scenarios": {"values": [run(100), run(100 * 1024)]}}
    etcd = {"status": "ok", "scenarios": {"values": [run(100), run(100 * 1024)]}}
    etcd["scenarios"]["values"][1]["server_write_bytes"] = {1: 100 * 1024 * 1000}
    cfg = _cfg("--value-sizes", "100,100KiB").to_dict()
    return {"config": cfg, "systems": {"paxoskv": system, "etcd": etcd}}


def test_written_per_put_row_for_large_values_only() -> None:
    # 4 s at 250 PUT/s = 1,000 PUTs; 3 x 300 MiB = 900 MiB written: 0.9 MiB per PUT
    written = {1: 300 << 20, 2: 300 << 20, 3: 300 << 20}
    run = {"server_write_bytes": written, "wall_s": 4.0, "throughput": 250.0}
    assert written_per_op(run) == pytest.approx((900 << 20) / 1000)
    assert written_per_op({**run, "server_write_bytes": {}}) is None
    assert written_per_op({**run, "throughput": 0}) is None
    rows = {r["key"]: r for r in table_rows(_values_doc(written, 4.0, 250.0))}
    assert "value_100_written" not in rows  # small values: no row
    row = rows[f"value_{100 * 1024}_written"]
    assert row["unit"] == "KiB" and len(row["label"]) <= 43
    assert row["values"]["paxoskv"] == pytest.approx(900 * 1024 / 1000)
    assert row["values"]["etcd"] == pytest.approx(100 * 1000 / 4.0 / 250.0)
    assert row["ratio"] == pytest.approx(row["values"]["etcd"] / row["values"]["paxoskv"])
