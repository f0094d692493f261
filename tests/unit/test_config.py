"""Cluster addresses: the TOML config file and `host:port` lists
(kvstore/config.py, shared by the client and the replica)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvstore.config import (
    MAX_SESSION_TTL_SECONDS,
    MAX_WRITE_BUFFER_BYTES,
    MIN_WRITE_BUFFER_BYTES,
    WRITE_BUFFER_BYTES,
    ConfigError,
    ReplicaAddress,
    SessionSettings,
    display_address,
    dump_cluster_config,
    load_cluster_config,
    load_session_settings,
    load_storage_settings,
    local_cluster_config,
    normalize_address,
    parse_cluster_addresses,
    write_cluster_config,
)
from kvstore.limits import SESSION_TTL_MS


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def test_load_with_default_and_explicit_binds(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[[replica]]
id = 1
peer = "tcp://10.0.0.1:7101"
client = "10.0.0.1:7001"

[[replica]]
id = 2
peer = "tcp://host-2:17101"
client = "tcp://host-2:17001"
peer_bind = "tcp://*:7101"
client_bind = "tcp://*:7001"
""",
    )
    first, second = load_cluster_config(path)
    assert first == ReplicaAddress(
        1,
        "tcp://10.0.0.1:7101",
        "tcp://10.0.0.1:7001",
        "tcp://10.0.0.1:7101",
        "tcp://10.0.0.1:7001",
    )
    assert (second.id, second.peer_bind, second.client_bind) == (2, "tcp://*:7101", "tcp://*:7001")
    assert second.client == "tcp://host-2:17001"


@pytest.mark.parametrize(
    "body, message",
    [
        ("", "no [[replica]]"),
        ("replica = 3", "no [[replica]]"),
        ("[[replica]]\nid = 0\npeer = 'a:1'\nclient = 'a:2'", "id must be an integer >= 1"),
        ("[[replica]]\nid = true\npeer = 'a:1'\nclient = 'a:2'", "id must be an integer"),
        ("[[replica]]\nid = '1'\npeer = 'a:1'\nclient = 'a:2'", "id must be an integer"),
        ("[[replica]]\nid = 1\nclient = 'a:2'", "peer must be a string"),
        ("[[replica]]\nid = 1\npeer = 'a:1'\nclient = 7", "client must be a string"),
        ("[[replica]]\nid = 1\npeer = 'a:1'\nclient = 'a'", "not host:port"),
        ("[[replica]]\nid = 1\npeer = 'a:1'\nclient = 'a:0'", "port must be"),
        ("[[replica]]\nid = 1\npeer = 'udp://a:1'\nclient = 'a:2'", "only tcp://"),
        ("[[replica]]\nid = 1\npeer = '*:1'\nclient = 'a:2'", "only valid in a bind"),
        ("[[replica]]\nid = 1\npeer = 'a:1'\nclient = 'a:2'\nport = 3", "unknown field"),
        (
            (
                "[[replica]]\nid = 1\npeer = 'a:1'\nclient = 'a:2'\n"
                "[[replica]]\nid = 1\npeer = 'b:1'\nclient = 'b:2'"
            ),
            "appears twice",
        ),
        ("[[replica]\nid = 1", "not valid TOML"),
    ],
)
def test_bad_config_files_name_the_problem(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("*", r"\*")):
        load_cluster_config(write(tmp_path, body))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read cluster config"):
        load_cluster_config(tmp_path / "nope.toml")


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    replicas = local_cluster_config(3, base_port=9001, peer_base_port=9101)
    replicas.append(ReplicaAddress(7, "tcp://h:1", "tcp://h:2", "tcp://*:1", "tcp://*:2"))
    path = tmp_path / "c.toml"
    write_cluster_config(path, replicas)
    assert load_cluster_config(path) == replicas
    assert not (tmp_path / "c.toml.tmp").exists()
    assert "peer_bind" not in dump_cluster_config(replicas[:3])


def test_local_cluster_config() -> None:
    replicas = local_cluster_config(2, host="127.0.0.2", base_port=100, peer_base_port=200)
    assert [r.id for r in replicas] == [1, 2]
    assert replicas[1].client == "tcp://127.0.0.2:101"
    assert replicas[1].peer == replicas[1].peer_bind == "tcp://127.0.0.2:201"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("localhost:7001", "tcp://localhost:7001"),
        (" tcp://10.1.2.3:80 ", "tcp://10.1.2.3:80"),
        ("[::1]:7001", "tcp://[::1]:7001"),
        ("h:007", "tcp://h:7"),
    ],
)
def test_normalize_address(text: str, expected: str) -> None:
    assert normalize_address(text) == expected
    assert display_address(expected) == expected.removeprefix("tcp://")


@pytest.mark.parametrize("text", ["", ":1", "host", "host:", "host:x", "host:65536", "ipc://x:1"])
def test_normalize_address_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        normalize_address(text)


def test_wildcard_only_when_binding() -> None:
    assert normalize_address("*:1", allow_wildcard=True) == "tcp://*:1"
    with pytest.raises(ConfigError):
        normalize_address("*:1")


def test_parse_cluster_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_cluster_addresses("a:1,b:2 , c:3") == ["tcp://a:1", "tcp://b:2", "tcp://c:3"]
    assert parse_cluster_addresses(["a:1", "tcp://b:2"]) == ["tcp://a:1", "tcp://b:2"]
    monkeypatch.setenv("KVSTORE_CLUSTER", "x:9")
    assert parse_cluster_addresses(None) == ["tcp://x:9"]
    monkeypatch.setenv("KVSTORE_CLUSTER", "")
    assert parse_cluster_addresses(None)[0] == "tcp://127.0.0.1:7001"
    with pytest.raises(ConfigError, match="empty"):
        parse_cluster_addresses(" , ")
    with pytest.raises(ConfigError, match="repeats"):
        parse_cluster_addresses("a:1,tcp://a:1")


# --- [sessions] -----------------------------------------------------------------------

REPLICA = "[[replica]]\nid = 1\npeer = 'a:1'\nclient = 'a:2'\n"


def test_sessions_table_is_optional(tmp_path: Path) -> None:
    assert load_session_settings(write(tmp_path, REPLICA)) == SessionSettings()
    assert SessionSettings().ttl_ms == SESSION_TTL_MS  # one hour
    assert load_session_settings(write(tmp_path, REPLICA + "[sessions]\n")) == SessionSettings()


@pytest.mark.parametrize("seconds", [1, 90, 3600, MAX_SESSION_TTL_SECONDS])
def test_sessions_ttl_seconds(tmp_path: Path, seconds: int) -> None:
    path = write(tmp_path, f"[sessions]\nttl_seconds = {seconds}\n" + REPLICA)
    settings = load_session_settings(path)
    assert settings.ttl_seconds == seconds and settings.ttl_ms == seconds * 1000
    assert len(load_cluster_config(path)) == 1  # the other tables do not mind it


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[sessions]\nttl_seconds = 0", "ttl_seconds must be an integer from 1 to"),
        ("[sessions]\nttl_seconds = -5", "got -5"),
        ("[sessions]\nttl_seconds = 1.5", "ttl_seconds must be an integer"),
        ("[sessions]\nttl_seconds = '60'", "ttl_seconds must be an integer"),
        ("[sessions]\nttl_seconds = true", "ttl_seconds must be an integer"),
        (f"[sessions]\nttl_seconds = {MAX_SESSION_TTL_SECONDS + 1}", "from 1 to"),
        ("[sessions]\nttl_second = 60", "unknown field(s) ttl_second"),
        ("sessions = 60", "[sessions] must be a table"),
        ("[sessions\nttl_seconds = 60", "not valid TOML"),
    ],
)
def test_bad_sessions_table_names_the_problem(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, body + "\n" + (REPLICA if body.startswith("[") else ""))
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_session_settings(path)
    assert str(path) in str(err.value)


def test_sessions_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read cluster config"):
        load_session_settings(tmp_path / "nope.toml")


# -- metrics address, [metrics], [timing] --


def test_metrics_address_round_trips_and_is_checked(tmp_path: Path) -> None:
    import dataclasses

    from kvstore.config import parse_http_address

    replicas = local_cluster_config(2)
    replicas[1] = dataclasses.replace(replicas[1], metrics="*:9102")
    path = tmp_path / "cluster.toml"
    write_cluster_config(path, replicas)
    assert 'metrics = "*:9102"' in path.read_text()
    loaded = load_cluster_config(path)
    assert [r.metrics for r in loaded] == [None, "*:9102"]
    assert parse_http_address("*:9102") == ("", 9102)
    assert parse_http_address("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert parse_http_address("[::1]:9101") == ("::1", 9101)
    bad = write(tmp_path, '[[replica]]\nid = 1\npeer = "a:1"\nclient = "a:2"\nmetrics = "a:0"\n')
    with pytest.raises(ConfigError, match=r"replica #1: metrics: .*port must be"):
        load_cluster_config(bad)
    for text in ("nohost", "tcp://a:1", "a:http"):
        with pytest.raises(ConfigError):
            parse_http_address(text)


def test_metrics_settings(tmp_path: Path) -> None:
    from kvstore.config import MetricsSettings, load_metrics_settings

    assert load_metrics_settings(write(tmp_path, "")) == MetricsSettings(1000)
    five = load_metrics_settings(write(tmp_path, "[metrics]\nready_max_lag = 5\n"))
    assert five.ready_max_lag == 5
    for text in ("[metrics]\nready_max_lag = -1\n", "[metrics]\nlag = 5\n", "metrics = 3\n"):
        with pytest.raises(ConfigError, match=r"\[metrics\]"):
            load_metrics_settings(write(tmp_path, text))


def test_timing_settings_and_the_rule_between_them(tmp_path: Path) -> None:
    from kvstore.config import TimingSettings, load_timing_settings

    assert load_timing_settings(write(tmp_path, "")) == TimingSettings()
    assert TimingSettings().ticks(10, 2, 20) == (2, 20)  # defaults kept in ticks
    assert TimingSettings().ticks(5, 2, 20) == (2, 20)
    text = "[timing]\ntick_ms = 5\nheartbeat_ms = 50\nelection_ms = 1000\n"
    timing = load_timing_settings(write(tmp_path, text))
    assert timing == TimingSettings(5, 50, 1000)
    assert timing.ticks(5, 2, 20) == (10, 200)
    assert timing.ticks(10, 2, 20) == (5, 100)  # --tick-ms 10 overrides tick_ms
    with pytest.raises(ConfigError, match=r"heartbeat_ms \(50\) must be a whole multiple"):
        timing.ticks(20, 2, 20)
    with pytest.raises(ConfigError) as err:
        TimingSettings(heartbeat_ms=100, election_ms=400).ticks(10, 2, 20)
    message = str(err.value)
    assert "\n" not in message
    assert "election_ms (400) must be at least 5 x heartbeat_ms (100) = 500" in message
    # Only one of them set: checked against the default of the other.
    with pytest.raises(ConfigError, match=r"election_ms \(100\) .* heartbeat_ms \(40\)"):
        TimingSettings(heartbeat_ms=40, election_ms=100).ticks(10, 2, 20)
    with pytest.raises(ConfigError, match="election_ms"):
        TimingSettings(election_ms=50).ticks(10, 2, 20)
    with pytest.raises(ConfigError, match=r"\[timing\]: unknown field"):
        load_timing_settings(write(tmp_path, "[timing]\nheartbeat = 5\n"))
    with pytest.raises(ConfigError, match=r"tick_ms must be an integer >= 1"):
        load_timing_settings(write(tmp_path, "[timing]\ntick_ms = 0\n"))


def test_storage_settings(tmp_path: Path) -> None:
    assert load_storage_settings(write(tmp_path, "")).write_buffer_bytes == WRITE_BUFFER_BYTES
    assert WRITE_BUFFER_BYTES == 4 << 20  # LevelDB's default, and the figures' setting
    for size in (MIN_WRITE_BUFFER_BYTES, 16 << 20, MAX_WRITE_BUFFER_BYTES):
        path = write(tmp_path, f"[storage]\nwrite_buffer_bytes = {size}\n")
        assert load_storage_settings(path).write_buffer_bytes == size
    for body, message in [
        ("[storage]\nwrite_buffer_bytes = 65535\n", "must be an integer >= 65536, got 65535"),
        (f"[storage]\nwrite_buffer_bytes = {MAX_WRITE_BUFFER_BYTES + 1}\n", "at most"),
        ("[storage]\nwrite_buffer_bytes = true\n", "must be an integer >= 65536, got True"),
        ("[storage]\nwrite_buffer_bytes = 4.5\n", "must be an integer"),
        ("[storage]\nmemtable = 1\n", "unknown field(s) memtable"),
        ("storage = 3\n", "[storage] must be a table"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_storage_settings(write(tmp_path, body))
