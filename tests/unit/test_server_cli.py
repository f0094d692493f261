"""kvstore-replica's start-up, in-process: [timing] reaches the core, the
rule between the timers, the metrics options and a bad [storage] table fail
in one line (exit 2); [storage] sets the LevelDB write buffer."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.config import local_cluster_config, write_cluster_config
from replica import server
from replica.launch import free_ports


@pytest.fixture(autouse=True)
def _root_logger() -> Iterator[None]:
    """main() configures the root logger: restore it afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _config(tmp_path: Path, extra: str = "") -> Path:
    ports = free_ports(6)
    path = tmp_path / "cluster.toml"
    write_cluster_config(path, local_cluster_config(3, base_port=ports[0], peer_base_port=ports[3]))
    path.write_text(path.read_text() + extra)
    return path


def _args(config: Path, tmp_path: Path, *more: str) -> list[str]:
    data = str(tmp_path / "d1")
    return ["--config", str(config), "--id", "1", "--data-dir", data,
            "--initial-cluster-state", "new", *more]  # fmt: skip


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_timing_table_reaches_the_core(tmp_path: Path) -> None:
    config = _config(tmp_path, "\n[timing]\ntick_ms = 5\nheartbeat_ms = 25\nelection_ms = 500\n")
    replica = server._build(server._parse_args(_args(config, tmp_path)))
    try:
        core = replica.driver.core.config
        assert (core.heartbeat_ticks, core.election_ticks) == (5, 100)
        assert replica.driver._tick_s == pytest.approx(0.005)
        assert replica.metrics_server is None  # off unless set
    finally:
        replica.close()
    # --tick-ms wins over tick_ms; the milliseconds keep their meaning.
    replica = server._build(server._parse_args(_args(config, tmp_path, "--tick-ms", "25")))
    try:
        assert (
            replica.driver.core.config.heartbeat_ticks,
            replica.driver.core.config.election_ticks,
        ) == (1, 20)
    finally:
        replica.close()


def test_timing_rule_is_checked_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, "\n[timing]\nheartbeat_ms = 50\nelection_ms = 200\n")
    assert server.main(_args(config, tmp_path)) == 2
    line = _one_error(capsys)
    assert line.startswith(f"kvstore-replica: error: cluster config {config}, [timing]: ")
    assert "election_ms (200) must be at least 5 x heartbeat_ms (50) = 250" in line
    assert not (tmp_path / "d1").exists()  # refused before touching the data directory


def test_metrics_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    with pytest.raises(SystemExit) as exited:
        server._parse_args(_args(config, tmp_path, "--metrics-port", "1", "--metrics-addr", "a:1"))
    assert exited.value.code == 2
    assert "not both" in capsys.readouterr().err
    assert server._parse_args(_args(config, tmp_path, "--metrics-port", "9")).metrics_addr == (
        "0.0.0.0:9"
    )
    assert server.main(_args(config, tmp_path, "--metrics-addr", "nowhere")) == 2
    assert "metrics address" in _one_error(capsys)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert server.main(_args(config, tmp_path, "--metrics-addr", f"127.0.0.1:{port}")) == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in _one_error(capsys)


def _tables(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir() if p.suffix == ".ldb")


def _write_until_flushed(replica: server.Replica, data_dir: Path, total: int) -> list[str]:
    """Writes `total` bytes of 8 KiB values straight into the replica's
    LevelDB (keys outside every prefix the replica uses), then polls briefly
    for the tables LevelDB's background flush writes."""
    for i in range(total // 8192):
        replica.db.put(b"zz-test-%06d" % i, bytes(8192))
    deadline = time.monotonic() + 5.0
    while not _tables(data_dir) and time.monotonic() < deadline:
        time.sleep(0.02)
    return _tables(data_dir)


def test_storage_table_sets_the_write_buffer(tmp_path: Path) -> None:
    """A 64 KiB write buffer flushes 512 KiB of writes into tables; the
    default (4 MiB) keeps them in the memtable and its log."""
    small = tmp_path / "small"
    small.mkdir()
    config = _config(small, "\n[storage]\nwrite_buffer_bytes = 65536\n")
    replica = server._build(server._parse_args(_args(config, small)))
    try:
        assert _write_until_flushed(replica, small / "d1", 512 << 10)
    finally:
        replica.close()
    default = tmp_path / "default"
    default.mkdir()
    replica = server._build(server._parse_args(_args(_config(default), default)))
    try:
        assert _write_until_flushed(replica, default / "d1", 512 << 10) == []
    finally:
        replica.close()


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("write_buffer_bytes = 1000", "write_buffer_bytes must be an integer >= 65536, got 1000"),
        ("write_buffer_bytes = 2147483648", "write_buffer_bytes must be at most 1073741824"),
        ('write_buffer_bytes = "16MiB"', "write_buffer_bytes must be an integer >= 65536"),
        ("write_buffer = 65536", "unknown field(s) write_buffer"),
    ],
)
def test_storage_table_is_checked_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, expected: str
) -> None:
    config = _config(tmp_path, f"\n[storage]\n{table}\n")
    assert server.main(_args(config, tmp_path)) == 2
    line = _one_error(capsys)
    assert line.startswith(f"kvstore-replica: error: cluster config {config}, [storage]: ")
    assert expected in line
    assert not (tmp_path / "d1").exists()
