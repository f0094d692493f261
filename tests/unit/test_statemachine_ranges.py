"""KVStateMachine's ranges, range deletes and transactions, on LevelDB and
on MemoryDB: key order, limits and continuations against a dict model, the
reply bounds, create revisions, one revision per command, atomicity of a
refused transaction, comparisons, sessions (a retry applies nothing and a
session record never holds a value) and the same outcome on every replica."""

# ruff: noqa: F811 - the fixtures of test_statemachine are imported by name

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from kvstore.limits import (
    MAX_DELETE_RANGE_KEYS,
    MAX_RANGE_KEYS,
    MAX_RANGE_REPLY_BYTES,
    MAX_VALUE_BYTES,
)
from kvstore.protocol import (
    FROM_KEY,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteResult,
    KeyValue,
    Op,
    PutResult,
    RangeResult,
    Request,
    Response,
    Status,
    Txn,
    TxnOp,
    TxnOpKind,
    TxnResult,
    prefix_end,
)
from kvstore.statemachine import KVStateMachine
from tests.unit.test_statemachine import (  # noqa: F401 - fixtures
    ALICE,
    BOB,
    T0,
    Client,
    NewDB,
    clk,
    db,
    live_state,
    new_db,
    run,
    run_one,
    sm,
)


class TxClient(Client):
    """Client, plus range deletes and transactions."""

    def delete_range(self, key: bytes, range_end: bytes | None) -> bytes:
        return self._cmd(op=Op.DELETE_RANGE, key=key, range_end=range_end)

    def txn(self, compares: Any = (), success: Any = (), failure: Any = ()) -> bytes:
        return self._cmd(op=Op.TXN, txn=Txn(tuple(compares), tuple(success), tuple(failure)))


def rng_read(sm: KVStateMachine, key: bytes, range_end: bytes | None, **kw: Any) -> RangeResult:
    resp = sm.read_range(Request(Op.RANGE, ALICE, 1, key, range_end=range_end, **kw))
    assert resp.status is Status.OK and resp.version == sm.revision
    assert isinstance(resp.result, RangeResult)
    return resp.result


def put(key: bytes, value: bytes) -> TxnOp:
    return TxnOp(TxnOpKind.PUT, key, value=value)


def delete(key: bytes, range_end: bytes | None = None) -> TxnOp:
    return TxnOp(TxnOpKind.DELETE, key, range_end)


def get(key: bytes, range_end: bytes | None = None, **kw: Any) -> TxnOp:
    return TxnOp(TxnOpKind.RANGE, key, range_end, **kw)


def cmp(target: CompareTarget, key: bytes, op: str, operand: Any) -> Compare:
    ops = {"=": CompareOp.EQUAL, "!=": CompareOp.NOT_EQUAL, "<": CompareOp.LESS}
    return Compare(target, ops.get(op, CompareOp.GREATER), key, operand)


def data_records(sm: KVStateMachine) -> list[tuple[bytes, bytes]]:
    return [r for r in live_state(sm)[2] if r[0][:1] == b"d"]


def fill(sm: KVStateMachine, keys: dict[bytes, bytes], per_slot: int = 500) -> None:
    c = Client(b"f" * 16)
    items = list(keys.items())
    for i in range(0, len(items), per_slot):
        run(sm, *(c.put(k, v) for k, v in items[i : i + per_slot]))


def scan_all(sm: KVStateMachine, key: bytes, range_end: bytes, **kw: Any) -> list[KeyValue]:
    """Every page of a range, following the continuations."""
    kvs: list[KeyValue] = []
    while True:
        page = rng_read(sm, key, range_end, **kw)
        assert len(page.kvs) == page.count
        kvs += page.kvs
        if not page.more:
            assert page.next_key is None
            return kvs
        assert page.next_key is not None and page.next_key > key
        key = page.next_key


# --- ranges ----------------------------------------------------------------------


def test_ranges_by_prefix_from_key_and_single_key(sm: KVStateMachine) -> None:
    fill(sm, {b"a": b"0", b"p/1": b"1", b"p/2": b"2", b"p/\xff": b"3", b"q": b"4"})
    keys = lambda r: [kv.key for kv in r.kvs]  # noqa: E731
    assert keys(rng_read(sm, b"p/", prefix_end(b"p/"))) == [b"p/1", b"p/2", b"p/\xff"]
    assert keys(rng_read(sm, b"p/2", FROM_KEY)) == [b"p/2", b"p/\xff", b"q"]
    assert keys(rng_read(sm, b"\0", FROM_KEY)) == [b"a", b"p/1", b"p/2", b"p/\xff", b"q"]
    assert keys(rng_read(sm, b"a", b"p/2")) == [b"a", b"p/1"]
    assert rng_read(sm, b"p/1", None).kvs == (KeyValue(b"p/1", b"1", 2, 2),)
    assert rng_read(sm, b"p/", None) == RangeResult()  # the key alone: absent
    assert rng_read(sm, b"q", b"a") == RangeResult()  # end before start: empty
    assert rng_read(sm, b"q", b"q") == RangeResult()


def test_keys_only_and_count_only(sm: KVStateMachine) -> None:
    fill(sm, {b"k%d" % i: b"v%d" % i for i in range(10)})
    keys_only = rng_read(sm, b"k", prefix_end(b"k"), keys_only=True)
    assert keys_only.count == 10
    assert [kv.value for kv in keys_only.kvs] == [None] * 10
    assert [kv.version for kv in keys_only.kvs] == list(range(1, 11))
    assert rng_read(sm, b"k", prefix_end(b"k"), count_only=True) == RangeResult((), 10)
    assert rng_read(sm, b"k3", FROM_KEY, count_only=True, limit=4) == RangeResult(
        (), 4, True, b"k7"
    )


def test_the_limit_gives_a_continuation_at_the_next_key(sm: KVStateMachine) -> None:
    fill(sm, {b"k%02d" % i: b"v" for i in range(0, 20, 2)})  # k00, k02, ... k18
    page = rng_read(sm, b"k", prefix_end(b"k"), limit=3)
    assert [kv.key for kv in page.kvs] == [b"k00", b"k02", b"k04"]
    assert (page.count, page.more, page.next_key) == (3, True, b"k06")
    last = rng_read(sm, b"k16", prefix_end(b"k"), limit=2)  # exactly the rest
    assert (last.count, last.more, last.next_key) == (2, False, None)


def test_paged_ranges_match_a_dict_model(new_db: NewDB) -> None:
    """Random keys (binary, shared prefixes), puts and deletes; every range
    read page by page equals the model's sorted slice."""
    sm = KVStateMachine(new_db())
    rng = random.Random(7)
    model: dict[bytes, tuple[bytes, int]] = {}
    c = Client()
    alphabet = [b"a", b"b", b"\x00", b"\xff", b"/"]
    for _ in range(40):
        commands = []
        for _ in range(25):
            key = b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
            if rng.random() < 0.25:
                commands.append((key, None, c.delete(key)))
            else:
                value = rng.randbytes(rng.randint(0, 5))
                commands.append((key, value, c.put(key, value)))
        for (key, value, _), resp in zip(
            commands, run(sm, *(cmd for *_, cmd in commands)), strict=True
        ):
            if value is None:
                model.pop(key, None)
            else:
                model[key] = (value, resp.version)
    for _ in range(200):
        start = b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3)))
        end = rng.choice([prefix_end(start), FROM_KEY, start + b"\xff", b"b"])
        want = [
            KeyValue(k, v, ver, sm_create(sm, k))
            for k, (v, ver) in sorted(model.items())
            if k >= start and (end == FROM_KEY or k < end)
        ]
        assert scan_all(sm, start, end, limit=rng.randint(1, 7)) == want
        count = rng_read(sm, start, end, count_only=True)
        assert count == RangeResult((), len(want))


def sm_create(sm: KVStateMachine, key: bytes) -> int:
    (kv,) = rng_read(sm, key, None).kvs
    return kv.create_revision


def test_a_reply_stops_at_the_key_bound(sm: KVStateMachine) -> None:
    fill(sm, {b"k%06d" % i: b"" for i in range(MAX_RANGE_KEYS + 10)}, per_slot=2000)
    page = rng_read(sm, b"k", prefix_end(b"k"))
    assert (page.count, page.more, page.next_key) == (
        MAX_RANGE_KEYS,
        True,
        b"k%06d" % MAX_RANGE_KEYS,
    )
    counted = rng_read(sm, b"k", prefix_end(b"k"), count_only=True)
    assert (counted.count, counted.more) == (MAX_RANGE_KEYS, True)
    rest = rng_read(sm, page.next_key, prefix_end(b"k"))
    assert (rest.count, rest.more) == (10, False)


def test_a_reply_stops_at_the_byte_bound(sm: KVStateMachine) -> None:
    big = b"v" * MAX_VALUE_BYTES
    per_reply = MAX_RANGE_REPLY_BYTES // (MAX_VALUE_BYTES + 2)
    fill(sm, {b"b%d" % i: big for i in range(per_reply + 2)}, per_slot=1)
    page = rng_read(sm, b"b", prefix_end(b"b"))
    assert (page.count, page.more) == (per_reply, True)
    assert sum(len(kv.key) + len(kv.value) for kv in page.kvs) <= MAX_RANGE_REPLY_BYTES
    keys_only = rng_read(sm, b"b", prefix_end(b"b"), keys_only=True)
    assert (keys_only.count, keys_only.more) == (per_reply + 2, False)


# --- create revisions and old records ------------------------------------------


def test_create_revision_survives_overwrites_not_deletes(sm: KVStateMachine) -> None:
    c = Client()
    run(sm, c.put(b"k", b"1"), c.put(b"other", b"x"), c.put(b"k", b"2"))
    assert rng_read(sm, b"k", None).kvs == (KeyValue(b"k", b"2", 3, 1),)
    run(sm, c.delete(b"k"), c.put(b"k", b"3"))
    assert rng_read(sm, b"k", None).kvs == (KeyValue(b"k", b"3", 5, 5),)
    assert sm.get(b"k") == (b"3", 5)


def test_a_record_of_the_previous_release_reads_with_its_version(sm: KVStateMachine) -> None:
    sm._db.put(sm._gen.data + b"old", msgpack.packb([b"v", 7]))
    assert sm.get(b"old") == (b"v", 7)
    assert rng_read(sm, b"old", None).kvs == (KeyValue(b"old", b"v", 7, 7),)
    run_one(sm, Client().put(b"old", b"w"))
    assert rng_read(sm, b"old", None).kvs == (KeyValue(b"old", b"w", 1, 7),)


# --- range deletes ----------------------------------------------------------------


def test_a_range_delete_is_one_revision(sm: KVStateMachine) -> None:
    fill(sm, {b"p/%d" % i: b"v" for i in range(5)} | {b"p0": b"stays", b"a": b"stays"})
    c = TxClient()
    resp = run_one(sm, c.delete_range(b"p/", prefix_end(b"p/")))
    assert resp == Response(Status.OK, version=8, result=DeleteResult(5))
    assert sm.revision == 8
    assert [kv.key for kv in rng_read(sm, b"\0", FROM_KEY).kvs] == [b"a", b"p0"]
    again = run_one(sm, c.delete_range(b"p/", prefix_end(b"p/")))
    assert again == Response(Status.NOT_FOUND, result=DeleteResult(0))
    assert sm.revision == 8


def test_a_range_delete_over_the_bound_deletes_nothing(sm: KVStateMachine) -> None:
    keys = {b"k%06d" % i: b"" for i in range(MAX_DELETE_RANGE_KEYS + 1)}
    fill(sm, keys, per_slot=2000)
    before = data_records(sm)
    c = TxClient()
    resp = run_one(sm, c.delete_range(b"k", prefix_end(b"k")))
    assert resp.status is Status.TOO_LARGE and str(MAX_DELETE_RANGE_KEYS) in resp.error
    assert data_records(sm) == before
    ok = run_one(sm, c.delete_range(b"k000001", FROM_KEY))  # exactly the bound
    assert ok.result == DeleteResult(MAX_DELETE_RANGE_KEYS)


# --- transactions -------------------------------------------------------------------


def test_a_transaction_runs_one_branch_at_one_revision(sm: KVStateMachine) -> None:
    fill(sm, {b"a": b"1", b"b": b"2"})
    c = TxClient()
    success = [put(b"a", b"10"), put(b"c", b"30"), delete(b"b"), get(b"\0", FROM_KEY)]
    resp = run_one(sm, c.txn([cmp(CompareTarget.VALUE, b"a", "=", b"1")], success, [get(b"a")]))
    kvs = (KeyValue(b"a", b"10", 3, 1), KeyValue(b"c", b"30", 3, 3))
    assert resp == Response(
        Status.OK,
        version=3,
        result=TxnResult((PutResult(3), PutResult(3), DeleteResult(1), RangeResult(kvs, 2))),
    )
    failed = run_one(sm, c.txn([cmp(CompareTarget.VALUE, b"a", "=", b"1")], success, [get(b"a")]))
    assert failed == Response(
        Status.CAS_FAILED, version=3, result=TxnResult((RangeResult(kvs[:1], 1),))
    )
    assert sm.revision == 3  # a read-only branch writes no revision


@pytest.mark.parametrize(
    ("compare", "holds"),
    [
        (cmp(CompareTarget.VALUE, b"k", "=", b"v"), True),
        (cmp(CompareTarget.VALUE, b"k", "!=", b"v"), False),
        (cmp(CompareTarget.VALUE, b"k", "<", b"w"), True),
        (cmp(CompareTarget.VALUE, b"k", ">", b"v"), False),
        (cmp(CompareTarget.VALUE, b"absent", "!=", b"v"), False),  # etcd: needs the key
        (cmp(CompareTarget.VERSION, b"k", "=", 3), True),
        (cmp(CompareTarget.VERSION, b"k", ">", 2), True),
        (cmp(CompareTarget.VERSION, b"k", "<", 3), False),
        (cmp(CompareTarget.VERSION, b"absent", "=", 0), True),
        (cmp(CompareTarget.CREATE, b"k", "=", 1), True),
        (cmp(CompareTarget.CREATE, b"k", "!=", 1), False),
        (cmp(CompareTarget.CREATE, b"absent", "<", 1), True),
        (cmp(CompareTarget.EXISTS, b"k", "=", True), True),
        (cmp(CompareTarget.EXISTS, b"k", "!=", True), False),
        (cmp(CompareTarget.EXISTS, b"absent", "=", False), True),
        (cmp(CompareTarget.EXISTS, b"absent", "=", True), False),
    ],
)
def test_comparisons(sm: KVStateMachine, compare: Compare, holds: bool) -> None:
    c = Client()
    run(sm, c.put(b"k", b"u"), c.put(b"other", b"x"), c.put(b"k", b"v"))  # k: version 3, created 1
    resp = run_one(sm, TxClient(BOB).txn([compare]))
    assert resp.status is (Status.OK if holds else Status.CAS_FAILED)


def test_all_comparisons_must_hold(sm: KVStateMachine) -> None:
    run_one(sm, Client().put(b"k", b"v"))
    yes = cmp(CompareTarget.EXISTS, b"k", "=", True)
    no = cmp(CompareTarget.EXISTS, b"j", "=", True)
    c = TxClient(BOB)
    assert run_one(sm, c.txn([yes, yes])).status is Status.OK
    assert run_one(sm, c.txn([yes, no])).status is Status.CAS_FAILED


def test_operations_see_the_ones_before_them(sm: KVStateMachine) -> None:
    fill(sm, {b"p/1": b"old", b"p/2": b"x"})
    c = TxClient()
    ops = [put(b"p/0", b"new"), delete(b"p/2"), put(b"p/1", b"mid"), get(b"p/", prefix_end(b"p/"))]
    # in one slot after a put of the same call: the pending state counts too
    _, resp = run(sm, Client(BOB).put(b"p/3", b"pending"), c.txn((), ops))
    (*_, seen) = resp.result.responses
    assert [(kv.key, kv.value) for kv in seen.kvs] == [
        (b"p/0", b"new"),
        (b"p/1", b"mid"),
        (b"p/3", b"pending"),
    ]


def test_a_refused_transaction_changes_nothing(sm: KVStateMachine) -> None:
    fill(sm, {b"k%06d" % i: b"" for i in range(MAX_DELETE_RANGE_KEYS)}, per_slot=2000)
    before = data_records(sm), sm.revision
    c = TxClient()
    # The two deletes together are one more key than one command may delete.
    ops = [put(b"a", b"1"), delete(b"k", prefix_end(b"k")), put(b"k1", b""), delete(b"k1")]
    resp = run_one(sm, c.txn((), ops))
    assert resp.status is Status.TOO_LARGE
    assert (data_records(sm), sm.revision) == before
    assert sm.get(b"a") is None and sm.get(b"k000000") == (b"", 1)


def test_reads_of_a_transaction_share_one_budget(sm: KVStateMachine) -> None:
    fill(sm, {b"k%06d" % i: b"" for i in range(MAX_RANGE_KEYS - 5)}, per_slot=2000)
    reads = [get(b"k", prefix_end(b"k")), get(b"k", prefix_end(b"k")), get(b"k000001")]
    resp = run_one(sm, TxClient().txn((), reads))
    first, second, third = resp.result.responses
    assert (first.count, first.more) == (MAX_RANGE_KEYS - 5, False)
    assert (second.count, second.more, second.next_key) == (5, True, b"k000005")
    assert third == RangeResult((), 0, True, b"k000001")  # nothing left: no progress


def test_a_retried_transaction_gets_the_record_and_applies_once(sm: KVStateMachine) -> None:
    c = TxClient()
    secret = b"a value no session record may hold"
    command = c.txn(
        [cmp(CompareTarget.EXISTS, b"k", "=", False)], [put(b"k", secret), get(b"k")], [get(b"k")]
    )
    first = run_one(sm, command)
    assert first.status is Status.OK and first.result.responses[1].kvs[0].value == secret
    assert run_one(sm, command) == Response(Status.OK, version=1)  # no result: a retry
    assert sm.revision == 1
    failing = c.txn([cmp(CompareTarget.EXISTS, b"k", "=", False)], (), [get(b"k")])
    assert run_one(sm, failing).status is Status.CAS_FAILED
    assert run_one(sm, failing) == Response(Status.CAS_FAILED, version=1)
    deleting = c.delete_range(b"k", FROM_KEY)
    assert run_one(sm, deleting).result == DeleteResult(1)
    assert run_one(sm, deleting) == Response(Status.OK, version=2)
    for _, raw in sm._db.iterator(prefix=sm._gen.sessions):
        assert secret not in raw and len(msgpack.unpackb(raw)) == 5


def _txn_log(rng: random.Random, slots: int) -> list[tuple[int, tuple[bytes, ...]]]:
    clients = [TxClient(bytes([i]) * 16) for i in range(4)]
    keys = [b"k%d" % i for i in range(6)]
    log = []
    for slot in range(slots):
        commands = [clk(T0 + slot)]
        for _ in range(rng.randint(1, 4)):
            c, k = rng.choice(clients), rng.choice(keys)
            commands.append(
                rng.choice(
                    [
                        c.put(k, rng.randbytes(3)),
                        c.delete_range(k, FROM_KEY),
                        c.txn(
                            [cmp(CompareTarget.VERSION, k, rng.choice("=<>"), rng.randint(0, 9))],
                            [put(k, b"s"), get(b"k", prefix_end(b"k"), limit=2)],
                            [delete(rng.choice(keys)), put(rng.choice(keys), b"f")],
                        ),
                    ]
                )
            )
            if rng.random() < 0.2:
                commands.append(commands[-1])  # a retry in the same slot
        log.append((slot, tuple(commands)))
    return log


def test_replicas_agree_however_the_log_is_split(new_db: NewDB) -> None:
    log = _txn_log(random.Random(3), 60)
    one, other = KVStateMachine(new_db()), KVStateMachine(new_db())
    answers = one.apply(log)
    split = []
    for i in range(0, len(log), 7):
        split += other.apply(log[i : i + 7])
    assert answers == split
    assert live_state(one) == live_state(other)
    assert one.checksum() == other.checksum()


def test_a_snapshot_carries_create_revisions(new_db: NewDB) -> None:
    from tests.unit.test_statemachine import transfer

    src, dst = KVStateMachine(new_db()), KVStateMachine(new_db())
    src.apply(_txn_log(random.Random(5), 30))
    src._db.put(src._gen.data + b"old", msgpack.packb([b"v", 1]))  # the previous release's
    transfer(src, dst)
    assert rng_read(dst, b"\0", FROM_KEY) == rng_read(src, b"\0", FROM_KEY)
    assert dst.checksum() == src.checksum()
