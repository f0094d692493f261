"""kvstore/security.py (key files, the [curve] table, the client's keys,
kvstore-keys) and replica/curve.py's ZAP decisions, without a cluster."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import zmq
from zmq.utils import z85

from kvstore.config import ConfigError
from kvstore.security import (
    ZAP_DOMAIN_CLIENT,
    ZAP_DOMAIN_PEER,
    client_keys,
    cluster_keys,
    load_curve_config,
    main,
    parse_key,
    public_of,
    read_key_file,
    write_keypair,
)
from replica.badinput import BadFrames
from replica.curve import CurveGuard


def test_a_key_pair_is_two_z85_files_and_the_secret_one_is_private(tmp_path: Path) -> None:
    public_file = write_keypair(tmp_path, "alice")
    secret_file = tmp_path / "alice.key_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    public, secret = read_key_file(public_file), read_key_file(secret_file)
    assert len(public) == len(secret) == 40
    assert public_of(secret) == public
    with pytest.raises(ConfigError, match="exists"):
        write_keypair(tmp_path, "alice")
    secret_file.chmod(0o644)
    write_keypair(tmp_path, "alice", force=True)
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert read_key_file(public_file) != public


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "no key found"), ("# only a comment\n", "no key found"), ("abc", "40 characters"),
     ("~" * 40, "not a Z85 key")],
)  # fmt: skip
def test_a_bad_key_is_refused_naming_where(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"somewhere: .*{problem}"):
        parse_key(text, "somewhere")


def _config(tmp_path: Path, extra: str = "") -> Path:
    table = cluster_keys(tmp_path / "keys", [1, 2, 3])
    path = tmp_path / "cluster.toml"
    path.write_text(
        '[[replica]]\nid = 1\npeer = "tcp://127.0.0.1:1"\nclient = "tcp://127.0.0.1:2"\n\n'
        + table
        + extra
    )
    return path


def test_the_curve_table_names_every_key_and_checks_the_replicas_secret(tmp_path: Path) -> None:
    path = _config(tmp_path)
    curve = load_curve_config(path)
    assert curve is not None and sorted(curve.replica_keys) == [1, 2, 3]
    assert curve.client_keys_dir == tmp_path / "keys" / "clients"
    assert public_of(curve.replica_secret(2)) == curve.replica_keys[2]
    # Replica 2's secret under replica 1's name: refused in one line.
    (tmp_path / "keys" / "replica1.key_secret").write_bytes(
        (tmp_path / "keys" / "replica2.key_secret").read_bytes()
    )
    with pytest.raises(ConfigError, match="does not belong to replica 1"):
        curve.replica_secret(1)


def test_a_config_without_the_table_is_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text('[[replica]]\nid = 1\npeer = "tcp://h:1"\nclient = "tcp://h:2"\n')
    assert load_curve_config(path) is None


@pytest.mark.parametrize(
    ("extra", "problem"),
    [("client_keys = 3\n", "client_keys must be a list"),
     ("require_client_key = 1\n", "true or false"),
     ("colour = 1\n", "unknown field"),
     ('client_keys = ["short"]\n', "40 characters")],
)  # fmt: skip
def test_a_bad_curve_table_is_refused(tmp_path: Path, extra: str, problem: str) -> None:
    path = _config(tmp_path)
    text = path.read_text().replace("require_client_key = true\n", extra)
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_curve_config(path)


def test_the_client_takes_its_keys_from_files_or_the_environment(tmp_path: Path) -> None:
    server = write_keypair(tmp_path, "server")
    write_keypair(tmp_path, "me")
    mine = str(tmp_path / "me.key_secret")
    assert client_keys(env={}) is None  # plaintext
    keys = client_keys(mine, str(server), env={})
    assert keys is not None and keys.server_key == read_key_file(server)
    assert keys.public == read_key_file(tmp_path / "me.key")
    env = {"KVSTORE_CLIENT_KEY": mine, "KVSTORE_SERVER_KEY": str(server)}
    assert client_keys(env=env) == keys
    throwaway = client_keys(server_key=str(server), env={})
    assert throwaway is not None and throwaway.public != keys.public
    with pytest.raises(ConfigError, match="needs the cluster's server key"):
        client_keys(mine, env={})
    with pytest.raises(ConfigError, match="cannot read key file"):
        client_keys(str(tmp_path / "missing"), str(server), env={})


def test_kvstore_keys_cluster_prints_a_table_that_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cluster", "--dir", str(tmp_path / "keys"), "--replicas", "2"]) == 0
    table = capsys.readouterr().out
    assert "[curve.replica_keys]" in table
    path = tmp_path / "cluster.toml"
    path.write_text(table)
    curve = load_curve_config(path)
    assert curve is not None and sorted(curve.replica_keys) == [1, 2]
    assert main(["cluster", "--dir", str(tmp_path / "keys")]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


def _zap(domain: bytes, key: bytes) -> list[bytes]:
    return [b"1.0", b"7", domain, b"10.0.0.9", b"", b"CURVE", z85.decode(key)]


def test_zap_lets_in_the_replicas_on_the_peer_port_and_allowed_clients_on_the_client_port(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    curve = load_curve_config(_config(tmp_path))
    assert curve is not None
    ctx = zmq.Context()
    bad = BadFrames()
    guard = CurveGuard(ctx, curve, bad)
    try:
        client = read_key_file(tmp_path / "keys" / "clients" / "client.key")
        stranger = zmq.curve_keypair()[0]
        replica2 = curve.replica_keys[2]
        assert guard.answer(_zap(ZAP_DOMAIN_PEER, replica2))[2:5] == [b"200", b"OK", b"2"]
        assert guard.answer(_zap(ZAP_DOMAIN_PEER, client))[2] == b"400"
        assert guard.answer(_zap(ZAP_DOMAIN_CLIENT, client))[2] == b"200"
        assert guard.answer(_zap(ZAP_DOMAIN_CLIENT, replica2))[2] == b"200"
        for _ in range(3):
            assert guard.answer(_zap(ZAP_DOMAIN_CLIENT, stranger))[2] == b"400"
        assert bad.counts["client_key_refused"] == 3 and bad.counts["peer_key_refused"] == 1
        refusals = [r for r in caplog.records if stranger.decode() in r.getMessage()]
        assert len(refusals) == 1 and "from 10.0.0.9" in refusals[0].getMessage()
        # A key file put into client_keys_dir is allowed from then on.
        new = write_keypair(tmp_path / "keys" / "clients", "late")
        assert guard.answer(_zap(ZAP_DOMAIN_CLIENT, read_key_file(new)))[2] == b"200"
        plain = [b"1.0", b"8", ZAP_DOMAIN_CLIENT, b"10.0.0.9", b"", b"NULL"]
        assert guard.answer(plain)[2] == b"400"
    finally:
        guard.close()
        ctx.term()


def test_without_require_client_key_any_client_key_is_let_in(tmp_path: Path) -> None:
    path = _config(tmp_path)
    path.write_text(
        path.read_text().replace("require_client_key = true", "require_client_key = false")
    )
    curve = load_curve_config(path)
    assert curve is not None
    ctx = zmq.Context()
    guard = CurveGuard(ctx, curve, BadFrames())
    try:
        stranger = zmq.curve_keypair()[0]
        assert guard.answer(_zap(ZAP_DOMAIN_CLIENT, stranger))[2] == b"200"
        assert guard.answer(_zap(ZAP_DOMAIN_PEER, stranger))[2] == b"400"  # peers still checked
    finally:
        guard.close()
        ctx.term()
