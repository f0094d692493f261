"""kvctl -w simple|json|table (--write-out) on every command family, against
one fake replica whose answers come from a real KVStateMachine (the lock
store of test_lock: leases, ranges, watch) and whose STATUS names itself
leader and reports the store's revision: json is one object per result
with the header {revision, leader_id, replica_id} first, table an aligned
table with a title row, simple what kvctl always printed; exit codes are
the same in every format."""

# ruff: noqa: F811 - the `run` fixture of test_kvctl is imported by name

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.kvctl import EXIT_FAILED, EXIT_OK
from client.kvctl_output import format_table, jsonable
from kvstore.backup import Writer
from kvstore.protocol import Op, Response, Status, decode_request, encode_response
from tests.unit.test_client import FakeReplica
from tests.unit.test_kvctl import Run, run  # noqa: F401 - fixture
from tests.unit.test_lock import LockStore

ID = 7


class Leader(FakeReplica):
    """A fake replica whose STATUS says it leads, at the store's revision."""

    def __init__(self, store: LockStore) -> None:
        super().__init__(ID, store)
        self.store = store

    def _answer(self, frame: bytes) -> bytes | None:
        req = decode_request(frame)
        if req.op is Op.STATUS:
            self.requests.append(req)
            info = {"id": ID, "role": "leader", "leader": ID, "revision": self.store.sm.revision}
            return encode_response(Response(Status.OK, info=info))
        if req.op is Op.MEMBER:
            member = {"id": ID, "role": "voter", "peer": "tcp://p:1", "client": "tcp://c:1"}
            info = {"epoch": 3, "members": [member], "started": [ID], "removed": []}
            return encode_response(Response(Status.OK, info=info))
        return super()._answer(frame)


@pytest.fixture
def store() -> LockStore:
    return LockStore()


@pytest.fixture
def leader(store: LockStore) -> Iterator[Leader]:
    fake = Leader(store)
    yield fake
    fake.close()


def kvctl(run: Run, leader: Leader, fmt: str, *argv: str, stdin: bytes = b"") -> tuple[int, str]:
    code, out, _ = run("--cluster", leader.address, "-w", fmt, *argv, stdin=stdin)
    return code, out


def one_json(out: str) -> dict[str, Any]:
    (line,) = out.splitlines()  # one object per result, on one line
    return json.loads(line)


def header(revision: int | None) -> dict[str, Any]:
    return {"revision": revision, "leader_id": ID, "replica_id": ID}


def table(out: str) -> list[list[str]]:
    """The cells of an aligned table, split at the title row's column starts."""
    lines = out.splitlines()
    titles = lines[0]
    starts = [i for i, c in enumerate(titles) if c != " " and (i == 0 or titles[i - 1] == " ")]
    for line in lines[1:]:  # every cell starts where its title starts
        for start in starts[1:]:
            assert line[start - 2 : start] == "  " or len(line) <= start, (titles, line)
    bounds = [*starts, None]
    return [[line[a:b].strip() for a, b in zip(bounds, bounds[1:], strict=False)] for line in lines]


# --- key-values -----------------------------------------------------------------


def test_put_get_delete_in_json(run: Run, leader: Leader, store: LockStore) -> None:
    code, out = kvctl(run, leader, "json", "put", "k", "v1")
    assert code == EXIT_OK and one_json(out) == {"header": header(1), "key": "k", "version": 1}
    kvctl(run, leader, "json", "put", "k", "v2")
    code, out = kvctl(run, leader, "json", "get", "k")
    assert code == EXIT_OK
    kv = {"key": "k", "value": "v2", "version": 2, "create_revision": 1}
    assert one_json(out) == {"header": header(2), "kvs": [kv], "count": 1}
    code, out = kvctl(run, leader, "json", "get", "nothing")
    assert code == EXIT_FAILED and one_json(out) == {"header": header(2), "kvs": [], "count": 0}
    code, out = kvctl(run, leader, "json", "del", "k")
    assert code == EXIT_OK and one_json(out) == {"header": header(3), "key": "k", "deleted": 1}
    code, out = kvctl(run, leader, "json", "del", "k")
    assert code == EXIT_FAILED and one_json(out)["deleted"] == 0


def test_ranges_in_json_and_table(run: Run, leader: Leader) -> None:
    for i in range(3):
        kvctl(run, leader, "simple", "put", f"app/{i}", f"value {i}")
    code, out = kvctl(run, leader, "json", "get", "app/", "--prefix", "--keys-only")
    assert code == EXIT_OK
    found = one_json(out)
    assert found["header"] == header(3) and found["count"] == 3
    assert found["kvs"][0] == {"key": "app/0", "version": 1, "create_revision": 1}
    code, out = kvctl(run, leader, "json", "get", "app/", "--prefix", "--count-only")
    assert one_json(out) == {"header": header(3), "count": 3}
    code, out = kvctl(run, leader, "table", "get", "app/", "--prefix")
    assert table(out) == [
        ["KEY", "VALUE", "VERSION", "CREATE_REVISION"],
        ["app/0", "value 0", "1", "1"],
        ["app/1", "value 1", "2", "2"],
        ["app/2", "value 2", "3", "3"],
    ]
    code, out = kvctl(run, leader, "table", "get", "app/", "--prefix", "--count-only")
    assert table(out) == [["COUNT"], ["3"]]
    code, out = kvctl(run, leader, "json", "del", "app/", "--prefix")
    assert code == EXIT_OK and one_json(out)["deleted"] == 3
    assert one_json(out)["header"] == header(4)


def test_bytes_that_are_not_utf8_are_base64_in_json(run: Run, leader: Leader) -> None:
    code, out, _ = run("--cluster", leader.address, "put", "bin", "-", stdin=b"\xff\x00")
    code, out = kvctl(run, leader, "json", "get", "bin")
    (kv,) = one_json(out)["kvs"]
    assert kv["key"] == "bin" and base64.b64decode(kv["value_base64"]) == b"\xff\x00"
    assert "value" not in kv
    assert jsonable({"k": b"\xfe"}) == ("", {"k_base64": "/g=="})


def test_cas_in_every_format(run: Run, leader: Leader) -> None:
    kvctl(run, leader, "simple", "put", "c", "old")
    code, out = kvctl(run, leader, "json", "cas", "c", "new", "--expect", "old")
    assert code == EXIT_OK
    assert one_json(out) == {"header": header(2), "key": "c", "succeeded": True,
                             "value": "new", "version": 2}  # fmt: skip
    code, out = kvctl(run, leader, "json", "cas", "c", "x", "--expect", "old")
    assert code == EXIT_FAILED  # the same exit code as in simple
    assert one_json(out) | {"header": None} == {"header": None, "key": "c", "succeeded": False,
                                                "value": "new", "version": 2}  # fmt: skip
    code, out = kvctl(run, leader, "table", "cas", "c", "y", "--expect", "new")
    assert table(out) == [["KEY", "SUCCEEDED", "VALUE", "VERSION"], ["c", "true", "y", "3"]]
    code, out = kvctl(run, leader, "simple", "cas", "c", "z", "--expect", "y")
    assert (code, out) == (EXIT_OK, "OK\n")


def test_txn_in_json_and_table(run: Run, leader: Leader) -> None:
    kvctl(run, leader, "simple", "put", "a", "1")
    text = b'val("a") = "1"\n\nput a 2\nget a\n\nget a\n'
    code, out = kvctl(run, leader, "json", "txn", stdin=text)
    assert code == EXIT_OK
    got = one_json(out)
    assert got["header"] == header(2) and got["succeeded"] is True and got["revision"] == 2
    assert got["responses"][0] == {"put": {"key": "a", "version": 2}}
    assert got["responses"][1]["range"]["kvs"][0]["value"] == "2"
    code, out = kvctl(run, leader, "table", "txn", stdin=text)
    assert code == EXIT_FAILED  # the comparison failed now: exit 1 in every format
    assert table(out) == [["OP", "KEY", "RESULT"], ["txn", "", "FAILURE"], ["get", "a", "2"]]


# --- leases, locks, cluster commands ------------------------------------------------


def test_lease_commands_in_json_and_table(run: Run, leader: Leader, store: LockStore) -> None:
    code, out = kvctl(run, leader, "json", "lease", "grant", "60")
    granted = one_json(out)
    lid = granted["id"]
    # A grant, a keep-alive and a TTL change no key: the revision stays (STATUS's).
    assert code == EXIT_OK and granted == {"header": header(0), "id": lid, "ttl": 60}
    kvctl(run, leader, "simple", "put", "svc", "up", "--lease", lid)
    code, out = kvctl(run, leader, "json", "lease", "ttl", lid, "--keys")
    assert one_json(out) == {"header": header(1), "id": lid, "granted_ttl": 60, "ttl": 60,
                             "key_count": 1, "keys": ["svc"]}  # fmt: skip
    code, out = kvctl(run, leader, "table", "lease", "ttl", lid)
    assert table(out) == [["ID", "GRANTED_TTL", "TTL", "KEYS"], [lid, "60", "60", "1"]]
    code, out = kvctl(run, leader, "json", "lease", "keep-alive", lid)
    assert one_json(out) == {"header": header(1), "id": lid, "ttl": 60}
    code, out = kvctl(run, leader, "json", "lease", "list")
    assert one_json(out) == {"header": header(1), "leases": [lid], "count": 1}
    code, out = kvctl(run, leader, "table", "lease", "list")
    assert table(out) == [["ID"], [lid]]
    code, out = kvctl(run, leader, "json", "lease", "revoke", lid)
    assert one_json(out) == {"header": header(2), "id": lid, "revoked": True}  # its key went
    code, out = kvctl(run, leader, "json", "lease", "revoke", lid)
    assert (code, out) == (EXIT_FAILED, "")  # not found: the error line only, as in simple


def test_member_list_in_json_and_table(run: Run, leader: Leader) -> None:
    code, out = kvctl(run, leader, "json", "member", "list")
    got = one_json(out)
    assert code == EXIT_OK and got["epoch"] == 3 and got["members"][0]["role"] == "voter"
    assert got["header"] == header(0)
    code, simple = kvctl(run, leader, "simple", "member", "list")
    assert kvctl(run, leader, "table", "member", "list") == (EXIT_OK, simple)
    assert table(simple.splitlines()[0] + "\n" + simple.splitlines()[1])[1][:2] == [
        str(ID),
        "voter",
    ]


def test_status_takes_the_global_flag_and_keeps_its_own(run: Run, leader: Leader) -> None:
    argv = ("--cluster", leader.address, "--timeout", "0.5")
    code, default, _ = run(*argv, "status")
    assert run(*argv, "-w", "table", "status")[1] == default
    assert run(*argv, "-w", "simple", "status")[1] == default  # its simple is the table
    code, out, _ = run(*argv, "-w", "json", "status")
    assert out == run(*argv, "status", "-w", "json")[1]
    assert json.loads(out)[0]["id"] == ID  # the array of STATUS reports, as before
    assert run(*argv, "-w", "json", "status", "-w", "table")[1] == default


def test_snapshot_status_offline_in_json(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "b.snap"
    w = Writer(path)
    w.begin(index=41, revision=37, source=2)
    w.add([(b"d1", b"x")])
    w.finish()
    code, out, _ = run("-w", "json", "snapshot", "status", str(path))
    got = one_json(out)
    assert code == EXIT_OK and got["revision"] == 37 and got["file"] == str(path)
    assert got["header"] == {"revision": 37, "leader_id": None, "replica_id": None}
    code, out, _ = run("-w", "table", "snapshot", "status", str(path))
    assert table(out)[0] == ["FIELD", "VALUE"] and ["revision", "37"] in table(out)


def test_format_table_aligns_columns() -> None:
    assert format_table(["A", "LONG"], [[b"xyz", None], [1, True]]) == (
        "A    LONG\nxyz  -\n1    true"
    )


def test_lock_held_in_json(leader: Leader, store: LockStore) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    argv = [sys.executable, "-m", "client.kvctl", "--cluster", leader.address, "-w", "json"]
    proc = subprocess.Popen([*argv, "lock", "job"], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        got = json.loads(proc.stdout.readline())
        key = store.queue()[0]
        assert got["key"] == key.decode() and got["name"] == "job"
        assert got["token"] == store.sm.get(key)[1] and key.endswith(got["lease"].encode())
        assert got["header"] == header(store.sm.revision)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == EXIT_OK
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert store.queue() == []


def watch_lines(leader: Leader, fmt: str, count: int) -> list[str]:
    """The first `count` lines of `kvctl -w FMT watch w/ --prefix --rev 1`."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    argv = [sys.executable, "-m", "client.kvctl", "--cluster", leader.address, "-w", fmt]
    argv += ["watch", "w/", "--prefix", "--rev", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        return [proc.stdout.readline().decode().rstrip("\n") for _ in range(count)]
    finally:
        proc.kill()
        proc.wait()


def test_watch_in_json_and_table(run: Run, leader: Leader) -> None:
    kvctl(run, leader, "simple", "put", "w/a", "1")
    kvctl(run, leader, "simple", "del", "w/a")
    first, second = (json.loads(line) for line in watch_lines(leader, "json", 2))
    assert first == {"header": header(1), "type": "PUT", "key": "w/a", "value": "1",
                     "version": 1, "create_revision": 1}  # fmt: skip
    assert second["header"] == header(2) and second["type"] == "DELETE"
    assert second["key"] == "w/a" and "value" not in second
    assert table("\n".join(watch_lines(leader, "table", 3))) == [
        ["TYPE", "REVISION", "KEY", "VALUE"],
        ["PUT", "1", "w/a", "1"],
        ["DELETE", "2", "w/a", "-"],
    ]
