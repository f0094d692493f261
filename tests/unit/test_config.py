"""Cluster addresses: the TOML config file and `host:port` lists
(kvstore/config.py, shared by the client and the replica)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvstore.config import (
    MAX_SESSION_TTL_SECONDS,
    ConfigError,
    ReplicaAddress,
    SessionSettings,
    display_address,
    dump_cluster_config,
    load_cluster_config,
    load_session_settings,
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
