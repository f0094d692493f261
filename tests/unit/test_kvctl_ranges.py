"""kvctl and KVClient over ranges, range deletes and transactions, against
one fake replica (tests/unit/test_client.py) whose answers come from a real
KVStateMachine on MemoryDB: argument parsing, paging, output, exit codes,
one-line errors."""

# ruff: noqa: F811 - the `run` fixture of test_kvctl is imported by name

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from client import KVClient, cmp, op
from client.kvctl import EXIT_FAILED, EXIT_OK, EXIT_REJECTED, EXIT_USAGE
from kvstore.limits import MAX_DELETE_RANGE_KEYS, MAX_RANGE_KEYS
from kvstore.protocol import (
    WRITE_OPS,
    DeleteResult,
    KeyValue,
    Op,
    PutResult,
    Request,
    Response,
    Status,
    encode_request,
)
from kvstore.statemachine import KVStateMachine
from replica.inmem import MemoryDB
from tests.unit.test_client import FakeReplica
from tests.unit.test_kvctl import Run, one_error_line, run  # noqa: F401 - fixture


class Store:
    """What a leader answers: reads from the state machine, writes applied
    as one slot each (the command's bytes as the client sent them)."""

    def __init__(self) -> None:
        self.sm = KVStateMachine(MemoryDB())
        self.ranges: list[Request] = []

    def __call__(self, req: Request) -> Response:
        if req.op is Op.RANGE:
            self.ranges.append(req)
            return self.sm.read_range(req)
        if req.op is Op.GET:
            found = self.sm.get(req.key)
            return Response(Status.OK, *found) if found else Response(Status.NOT_FOUND)
        assert req.op in WRITE_OPS
        ((_, _, resp),) = self.sm.apply([(self.sm.applied_index, (encode_request(req),))])
        return resp


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def leader(store: Store) -> Iterator[FakeReplica]:
    fake = FakeReplica(1, store)
    yield fake
    fake.close()


@pytest.fixture
def kv(leader: FakeReplica) -> Iterator[KVClient]:
    with KVClient([leader.address], timeout=5) as client:
        yield client


def fill(kv: KVClient, count: int, prefix: str = "k/") -> None:
    """Puts `count` keys in a few transactions (fast): k/00000 = v0, ..."""
    for start in range(0, count, 100):
        puts = [op.put(f"{prefix}{i:05d}", f"v{i}") for i in range(start, min(count, start + 100))]
        assert kv.txn((), puts).succeeded


# --- the client ------------------------------------------------------------------


def test_range_pages_and_get_prefix(kv: KVClient, store: Store) -> None:
    fill(kv, MAX_RANGE_KEYS + 3)
    kv.put("k0", "after the prefix")
    page = kv.range("k/", prefix=True, limit=2)
    assert [kv.key for kv in page.kvs] == [b"k/00000", b"k/00001"]
    assert (page.more, page.next_key, page.revision) == (True, b"k/00002", store.sm.revision)
    everything = kv.get_prefix("k/")
    assert len(everything) == MAX_RANGE_KEYS + 3  # two pages
    assert everything[-1] == KeyValue(b"k/05002", b"v5002", everything[-1].version, 51)
    assert kv.count("k/", prefix=True) == MAX_RANGE_KEYS + 3
    assert kv.count("", from_key=True) == MAX_RANGE_KEYS + 4
    assert len(kv.get_prefix("k/", limit=MAX_RANGE_KEYS + 1)) == MAX_RANGE_KEYS + 1
    assert [kv.key for kv in kv.iter_range("k/00005", "k/00008")] == [
        b"k/00005",
        b"k/00006",
        b"k/00007",
    ]
    assert kv.get_prefix("nothing/") == []


def test_delete_range_and_txn(kv: KVClient) -> None:
    fill(kv, 5, "tmp/")
    assert kv.delete_range("tmp/", prefix=True) == 5
    assert kv.delete_range("tmp/", prefix=True) == 0
    kv.put("a", "1")
    done = kv.txn([cmp.value("a") == "1"], [op.put("a", "2"), op.get("a")], [op.get("a")])
    revision = done.revision
    assert done.succeeded and done.responses[0] == PutResult(revision)
    assert done.responses[1].kvs == (KeyValue(b"a", b"2", revision, revision - 1),)
    failed = kv.txn([cmp.value("a") == "1"], [op.put("a", "3")], [op.delete("a")])
    assert (failed.succeeded, failed.responses) == (False, (DeleteResult(1),))


# --- kvctl -------------------------------------------------------------------------


def test_get_ranges(run: Run, kv: KVClient, leader: FakeReplica, store: Store) -> None:
    c = ["--cluster", leader.address]
    fill(kv, 3)
    kv.put("k0", "outside")
    assert run(*c, "get", "k/", "--prefix") == (0, "k/00000\nv0\nk/00001\nv1\nk/00002\nv2\n", "")
    assert run(*c, "get", "k/", "--prefix", "--keys-only") == (0, "k/00000\nk/00001\nk/00002\n", "")
    assert run(*c, "get", "k/", "--prefix", "--count-only") == (0, "3\n", "")
    assert run(*c, "get", "", "--from-key", "--count-only") == (0, "4\n", "")
    assert run(*c, "get", "k/00001", "k0", "--limit", "1") == (0, "k/00001\nv1\n", "")
    assert (
        run(*c, "get", "k/00002", "--from-key", "--version")[1]
        == "k/00002\n1\tv2\nk0\n2\toutside\n"
    )
    assert run(*c, "get", "nothing/", "--prefix") == (0, "", "")
    assert run(*c, "get", "k/", "--prefix", "--stale")[0] == 0
    assert store.ranges[-1].stale and not store.ranges[0].stale


def test_get_pages_until_the_limit(run: Run, kv: KVClient, leader: FakeReplica) -> None:
    fill(kv, MAX_RANGE_KEYS + 10)
    code, out, _ = run("--cluster", leader.address, "get", "k/", "--prefix", "--keys-only")
    assert code == 0 and out.splitlines() == [f"k/{i:05d}" for i in range(MAX_RANGE_KEYS + 10)]
    limit = MAX_RANGE_KEYS + 2
    code, out, _ = run("--cluster", leader.address, "get", "", "--prefix", "--limit", str(limit))
    assert code == 0 and len(out.splitlines()) == 2 * limit


def test_delete_ranges(run: Run, kv: KVClient, leader: FakeReplica) -> None:
    c = ["--cluster", leader.address]
    fill(kv, 3, "tmp/")
    kv.put("tmp0", "stays")
    assert run(*c, "del", "tmp/", "--prefix") == (0, "3\n", "")
    assert run(*c, "delete", "tmp/", "--prefix") == (0, "0\n", "")
    assert run(*c, "del", "tmp", "tmp1") == (0, "1\n", "")
    assert kv.count("", from_key=True) == 0


def test_a_delete_range_over_the_bound_is_rejected(
    run: Run, kv: KVClient, leader: FakeReplica
) -> None:
    fill(kv, MAX_DELETE_RANGE_KEYS + 1)
    code, out, err = run("--cluster", leader.address, "del", "k/", "--prefix")
    assert (code, out) == (EXIT_REJECTED, "")
    assert "nothing was deleted" in one_error_line(err)
    assert kv.count("k/", prefix=True) == MAX_DELETE_RANGE_KEYS + 1


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["get", "a", "b", "--prefix"], "not two of them"),
        (["get", "a", "--prefix", "--from-key"], "not allowed with"),
        (["get", "a", "--keys-only", "--count-only"], "not allowed with"),
        (["get", "a", "--prefix", "--raw"], "--raw is for one key"),
        (["get", "a", "--limit", "-1"], "a version is an integer"),
        (["get", "", "--limit", "3"], "an empty KEY needs --prefix"),
        (["del", "a", "--limit", "3"], "unrecognized arguments"),
        (["del", "", "z"], "an empty KEY needs"),
    ],
)
def test_range_usage_errors(run: Run, leader: FakeReplica, argv: list[str], words: str) -> None:
    code, out, err = run("--cluster", leader.address, *argv)
    assert (code, out) == (EXIT_USAGE, "")
    assert words in one_error_line(err)


ETCDCTL_TXN = b"""\
val("acct/a") = "10"

put acct/a 7
put acct/b 3
get acct/ --prefix

get acct/a
"""


def test_txn_in_etcdctl_format(run: Run, kv: KVClient, leader: FakeReplica) -> None:
    c = ["--cluster", leader.address]
    kv.put("acct/a", "10")
    code, out, err = run(*c, "txn", stdin=ETCDCTL_TXN)
    assert (code, err) == (EXIT_OK, "")
    assert out == "SUCCESS\nOK\nOK\nacct/a\n7\nacct/b\n3\n"
    code, out, err = run(*c, "-v", "txn", stdin=ETCDCTL_TXN)  # a=7 now: the failure branch
    assert (code, err) == (EXIT_FAILED, "")
    assert out == f"FAILURE\nacct/a\n2\t7\nrevision {kv.range('acct/a').revision}\n"


def test_txn_in_json(run: Run, kv: KVClient, leader: FakeReplica) -> None:
    txn = {
        "compare": [{"key": "n", "target": "exists", "value": False}],
        "success": [
            {"put": {"key": "n", "value_base64": "AAE="}},
            {"get": {"key": "n", "count_only": True}},
            {"delete": {"key": "n"}},
        ],
    }
    code, out, err = run("--cluster", leader.address, "txn", stdin=json.dumps(txn).encode())
    assert (code, out, err) == (EXIT_OK, "SUCCESS\nOK\n1\n1\n", "")


@pytest.mark.parametrize(
    ("stdin", "code", "words"),
    [
        (b'val("a") = ', EXIT_USAGE, "bad transaction: line 1"),
        (b'{"compare": 1}', EXIT_USAGE, "bad transaction: compare must be a list"),
        (b"\n" + b"put k v\n" * 129, EXIT_REJECTED, "129 success operations"),
        (b"\x00\xff", EXIT_USAGE, "bad transaction"),
    ],
)
def test_txn_errors_are_one_line(
    run: Run, leader: FakeReplica, stdin: bytes, code: int, words: str
) -> None:
    got, out, err = run("--cluster", leader.address, "txn", stdin=stdin)
    assert (got, out) == (code, "")
    assert words in one_error_line(err)
    assert not leader.data_requests()  # nothing was sent


@pytest.mark.parametrize("command", ["get", "delete", "txn"])
def test_help_documents_ranges_and_transactions(run: Run, command: str) -> None:
    code, out, _ = run(command, "--help")
    assert code == 0 and "exit codes" in out
    wanted = {"get": "--prefix", "delete": "atomically", "txn": '"compare"'}
    assert wanted[command] in out
