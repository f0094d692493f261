"""Backup and restore with real processes: `kvctl snapshot save` from a
running cluster (several chunks), `kvctl snapshot status`, and
`kvstore-admin snapshot restore` into the data directories of a new
cluster, which starts with exactly the saved data and takes writes."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from client import KVClient, kvctl
from kvstore.backup import read as read_backup
from kvstore.config import display_address
from replica import admin
from tests.harness import Cluster, wait_for

VALUE_BYTES = 10_000
KEYS = 300  # ~3 MB of values: several 1 MiB chunks


def _fill(kv: KVClient) -> dict[bytes, bytes]:
    model = {}
    for i in range(KEYS):
        key = b"backup/%04d" % i
        model[key] = os.urandom(VALUE_BYTES // 2).hex().encode()
        kv.put(key, model[key])
    return model


def test_save_status_restore_into_a_new_cluster(
    cluster_factory: Callable[..., Cluster], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = cluster_factory(3)
    with KVClient(source.addresses, timeout=10.0) as kv:
        model = _fill(kv)
        kv.delete(b"backup/0000")
        del model[b"backup/0000"]
    file = tmp_path / "cluster.snap"
    cluster = ",".join(source.addresses)
    assert kvctl.main(["--cluster", cluster, "snapshot", "save", str(file)]) == 0
    out = capsys.readouterr().out
    assert f"saved {file}" in out and "revision: " in out
    assert not file.with_name(file.name + ".part").exists()

    assert kvctl.main(["snapshot", "status", str(file)]) == 0
    status = capsys.readouterr().out
    assert f"revision: {KEYS + 1}" in status, status  # 300 puts and a delete
    assert "sha256: " in status

    source.wait_applied_everywhere()
    for rid in source.ids:
        source.stop_replica(rid)
    saved = {s.checksum for s in source.state_checksums()}
    assert len(saved) == 1

    target = cluster_factory(3, start=False)
    for rid in target.ids:
        report = admin.restore(str(file), str(target.config_path), rid, str(target.data_dir(rid)))
        assert f"revision {KEYS + 1}" in report
    restored = target.state_checksums()
    assert {s.checksum for s in restored} == saved
    assert {s.keys for s in restored} == {len(model)}

    target.start()
    with KVClient(target.addresses, timeout=10.0) as kv:
        for key in (b"backup/0000", b"backup/0001", b"backup/0299"):
            assert kv.get(key) == model.get(key)
        version = kv.put(b"after-restore", b"1")
        assert version == KEYS + 2  # revisions go on from the backup's
        # The new cluster's membership is its own config's, not the source's.
        members = kv.member_list()["members"]
        assert sorted(display_address(m["client"]) for m in members) == sorted(target.addresses)


def test_bad_files_and_directories_are_refused(
    cluster_factory: Callable[..., Cluster], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = cluster_factory(3)
    with KVClient(source.addresses, timeout=10.0) as kv:
        kv.put(b"k", b"v")
    file = tmp_path / "small.snap"
    assert kvctl.main(["--cluster", ",".join(source.addresses), "snapshot", "save", str(file)]) == 0
    capsys.readouterr()
    damaged = tmp_path / "damaged.snap"
    raw = bytearray(file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    truncated = tmp_path / "truncated.snap"
    truncated.write_bytes(file.read_bytes()[:-20])
    for bad in (damaged, truncated, tmp_path / "missing.snap", source.config_path):
        assert kvctl.main(["snapshot", "status", str(bad)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("kvctl: error: ") and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    # restore refuses a directory that has data, and a damaged file
    busy = source.data_dir(1)
    code = admin.main(["snapshot", "restore", str(file), "--config", str(source.config_path),
                       "--id", "1", "--data-dir", str(busy)])  # fmt: skip
    assert code == 2 and "not an empty directory" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    code = admin.main(["snapshot", "restore", str(damaged), "--config", str(source.config_path),
                       "--id", "1", "--data-dir", str(fresh)])  # fmt: skip
    assert code == 2 and "damaged" in capsys.readouterr().err
    assert not fresh.exists()


def test_a_backup_taken_under_load_holds_exactly_the_state_at_its_revision(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    """Issue 12: writers keep writing while the backup streams; restored into
    a fresh cluster, every key holds the value of the last acknowledged
    write at or before the backup's revision, and no other key exists."""
    source = cluster_factory(3)
    acked: list[tuple[bytes, bytes, int]] = []
    errors: list[str] = []
    lock = threading.Lock()
    halt = threading.Event()

    def write(n: int) -> None:
        with KVClient(source.addresses, timeout=20.0) as kv:
            i = 0
            while not halt.is_set():
                key, value = b"load/%d/%d" % (n, i % 40), os.urandom(200).hex().encode()
                try:
                    rev = kv.put(key, value)
                except Exception as exc:  # noqa: BLE001 - recorded, asserted on
                    errors.append(repr(exc))
                    continue
                with lock:
                    acked.append((key, value, rev))
                i += 1

    threads = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(8)]
    for t in threads:
        t.start()
    try:
        wait_for("writes before the backup", lambda: len(acked) >= 300, 30)
        file = tmp_path / "under-load.snap"
        assert (
            kvctl.main(["--cluster", ",".join(source.addresses), "snapshot", "save", str(file)])
            == 0
        )
        wait_for("writes after the backup", lambda: len(acked) >= 600, 30)
    finally:
        halt.set()
        for t in threads:
            t.join(30)
    assert errors == []
    revision = read_backup(file)[0].revision
    assert any(rev > revision for _, _, rev in acked), "the load went on past the backup"
    expected: dict[bytes, tuple[int, bytes]] = {}
    for key, value, rev in acked:
        if rev <= revision and (key not in expected or rev > expected[key][0]):
            expected[key] = (rev, value)
    target = cluster_factory(3, start=False)
    for rid in target.ids:
        admin.restore(str(file), str(target.config_path), rid, str(target.data_dir(rid)))
    target.start()
    with KVClient(target.addresses, timeout=10.0) as kv:
        restored = {kv_.key: (kv_.version, kv_.value) for kv_ in kv.get_prefix(b"load/")}
    assert restored == {k: (rev, v) for k, (rev, v) in expected.items()}
