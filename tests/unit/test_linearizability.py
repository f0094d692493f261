"""The linearizability checker and the history recorder, on hand-made and
generated histories. Times are small integers: an operation [a, b] was
invoked at a and completed at b; None as completion means unknown."""

from __future__ import annotations

import random
import threading

import pytest

from tests.fault.history import History, Kind, Operation, Outcome
from tests.fault.linearizability import Verdict, check, check_key, main

K = b"k"


def op(
    kind: str,
    t0: int,
    t1: int | None,
    result: object = None,
    *,
    key: bytes = K,
    value: object = None,
    expected: object = None,
    outcome: str = "ok",
    process: int = 0,
    expected_version: int | None = None,
) -> Operation:
    return Operation(
        process=process,
        kind=Kind(kind),
        key=key,
        invoke_ns=t0,
        complete_ns=t1,
        outcome=Outcome(outcome),
        result=result,
        value=value,
        expected=expected,
        expected_version=expected_version,
    )


def put(t0: int, t1: int | None, v: bytes, **kw: object) -> Operation:
    return op("put", t0, t1, value=v, **kw)


def get(t0: int, t1: int | None, r: bytes | None, **kw: object) -> Operation:
    return op("get", t0, t1, r, **kw)


def cas(
    t0: int, t1: int | None, exp: bytes | None, new: bytes, r: bool | None, **kw: object
) -> Operation:
    return op("cas", t0, t1, r, value=new, expected=exp, **kw)


def verdict(*ops: Operation) -> Verdict:
    return check(History.from_operations(ops)).verdict


LIN, BAD = Verdict.LINEARIZABLE, Verdict.VIOLATION


# -- registers: put and get ----------------------------------------------------


def test_sequential_history_is_linearizable():
    assert (
        verdict(get(0, 1, None), put(2, 3, b"a"), get(4, 5, b"a"), put(6, 7, b"b"), get(8, 9, b"b"))
        is LIN
    )


@pytest.mark.parametrize("seen", [None, b"a"])
def test_read_overlapping_a_write_may_see_either_value(seen):
    assert verdict(put(0, 10, b"a", process=1), get(2, 5, seen, process=2)) is LIN


def test_stale_read_after_completed_write_is_a_violation():
    result = check(History.from_operations([put(0, 1, b"a"), put(2, 3, b"b"), get(4, 5, b"a")]))
    assert not result.ok and result.verdict is BAD
    diag = result.keys[K].diagnostic
    assert diag is not None and diag.blocked is not None
    assert diag.blocked.kind is Kind.GET and diag.state == b"b"
    assert len(diag.prefix) == 2
    assert "read b'a' but the register holds b'b'" in str(result)


def test_read_of_a_value_never_written_is_a_violation():
    assert verdict(put(0, 1, b"a"), get(2, 3, b"zzz")) is BAD


def test_read_of_absent_before_any_write_completes_is_fine_after_is_not():
    assert verdict(put(0, 5, b"a"), get(1, 2, None)) is LIN
    assert verdict(put(0, 1, b"a"), get(2, 3, None)) is BAD


def test_new_then_old_in_non_overlapping_reads_is_a_violation():
    assert (
        verdict(
            put(0, 1, b"a"),
            put(2, 10, b"b", process=1),
            get(3, 4, b"b", process=2),
            get(5, 6, b"a", process=3),
        )
        is BAD
    )


def test_new_then_old_in_overlapping_reads_is_linearizable():
    # get(a) may take effect before put(b), and get(b) after it.
    assert (
        verdict(
            put(0, 1, b"a"),
            put(2, 10, b"b", process=1),
            get(3, 6, b"b", process=2),
            get(4, 5, b"a", process=3),
        )
        is LIN
    )


# -- cas -------------------------------------------------------------------------


def test_cas_success_and_failure_follow_the_register():
    assert (
        verdict(
            put(0, 1, b"a"),
            cas(2, 3, b"a", b"b", True),
            cas(4, 5, b"a", b"c", False),
            get(6, 7, b"b"),
        )
        is LIN
    )


def test_cas_on_absent_key_with_expected_none():
    assert verdict(cas(0, 1, None, b"a", True), get(2, 3, b"a")) is LIN
    assert verdict(put(0, 1, b"x"), cas(2, 3, None, b"a", True)) is BAD


def test_cas_that_succeeded_against_the_wrong_value_is_a_violation():
    assert verdict(put(0, 1, b"a"), cas(2, 3, b"x", b"b", True)) is BAD


def test_cas_that_failed_although_value_matched_is_a_violation():
    assert verdict(put(0, 1, b"a"), cas(2, 3, b"a", b"b", False)) is BAD


def test_failed_cas_is_fine_when_a_concurrent_write_changed_the_value():
    assert (
        verdict(
            put(0, 1, b"a"),
            put(2, 6, b"z", process=1),
            cas(3, 5, b"a", b"b", False, process=2),
            get(7, 8, b"z"),
        )
        is LIN
    )


def test_two_concurrent_cas_from_the_same_value_cannot_both_succeed():
    assert (
        verdict(
            put(0, 1, b"a"),
            cas(2, 5, b"a", b"b", True, process=1),
            cas(3, 6, b"a", b"c", True, process=2),
        )
        is BAD
    )
    assert (
        verdict(
            put(0, 1, b"a"),
            cas(2, 5, b"a", b"b", True, process=1),
            cas(3, 6, b"a", b"c", False, process=2),
            get(7, 8, b"b"),
        )
        is LIN
    )


def test_version_cas_zero_means_absent_and_is_checked():
    assert verdict(put(0, 1, b"a"), op("cas", 2, 3, True, value=b"b", expected_version=0)) is BAD
    assert verdict(op("cas", 0, 1, True, value=b"b", expected_version=0), get(2, 3, b"b")) is LIN


def test_version_cas_is_treated_as_unchecked_write():
    # Precondition not modelled: a success is a put, a failure is dropped.
    assert (
        verdict(
            put(0, 1, b"a"),
            op("cas", 2, 3, True, value=b"b", expected_version=7),
            op("cas", 4, 5, False, value=b"c", expected_version=9),
            get(6, 7, b"b"),
        )
        is LIN
    )
    assert (
        verdict(
            put(0, 1, b"a"), op("cas", 2, 3, True, value=b"b", expected_version=7), get(4, 5, b"a")
        )
        is BAD
    )


# -- unknown and failed operations ------------------------------------------------


def test_unknown_write_that_took_effect():
    assert (
        verdict(put(0, 1, b"a"), put(2, None, b"b", outcome="unknown", process=1), get(5, 6, b"b"))
        is LIN
    )


def test_unknown_write_that_took_effect_long_after_its_timeout():
    assert (
        verdict(
            put(0, 1, b"a"),
            put(2, 3, b"b", outcome="unknown", process=1),
            get(5, 6, b"a"),
            get(7, 8, b"b"),
        )
        is LIN
    )


def test_unknown_write_that_never_took_effect():
    assert (
        verdict(
            put(0, 1, b"a"),
            put(2, None, b"b", outcome="unknown", process=1),
            get(5, 6, b"a"),
            get(7, 8, b"a"),
        )
        is LIN
    )


def test_unknown_write_seen_then_unseen_is_a_violation():
    assert (
        verdict(
            put(0, 1, b"a"),
            put(2, None, b"b", outcome="unknown", process=1),
            get(5, 6, b"b"),
            get(7, 8, b"a"),
        )
        is BAD
    )


def test_unknown_cas_takes_effect_only_if_expected_matches():
    assert (
        verdict(put(0, 1, b"a"), cas(2, None, b"a", b"b", None, outcome="unknown"), get(5, 6, b"b"))
        is LIN
    )
    assert (
        verdict(put(0, 1, b"x"), cas(2, None, b"a", b"b", None, outcome="unknown"), get(5, 6, b"b"))
        is BAD
    )


def test_pending_operation_counts_as_unknown():
    assert verdict(put(0, 1, b"a"), put(2, None, b"b", outcome="pending"), get(5, 6, b"b")) is LIN


def test_invoked_after_the_read_cannot_explain_it():
    assert verdict(put(0, 1, b"a"), get(2, 3, b"b"), put(4, None, b"b", outcome="unknown")) is BAD


def test_failed_operation_is_dropped():
    assert verdict(put(0, 1, b"a"), put(2, 3, b"b", outcome="fail"), get(4, 5, b"a")) is LIN
    assert verdict(put(0, 1, b"a"), put(2, 3, b"b", outcome="fail"), get(4, 5, b"b")) is BAD


# -- delete ----------------------------------------------------------------------


def test_delete_makes_the_key_absent():
    assert verdict(put(0, 1, b"a"), op("delete", 2, 3), get(4, 5, None)) is LIN
    assert verdict(put(0, 1, b"a"), op("delete", 2, 3), get(4, 5, b"a")) is BAD


def test_delete_result_says_whether_the_key_existed():
    assert verdict(put(0, 1, b"a"), op("delete", 2, 3, True), op("delete", 4, 5, False)) is LIN
    assert verdict(put(0, 1, b"a"), op("delete", 2, 3, False)) is BAD
    assert verdict(op("delete", 0, 1, True)) is BAD


# -- several keys ------------------------------------------------------------------


def test_one_broken_key_among_several():
    ops = [
        put(0, 1, b"a", key=b"x"),
        get(2, 3, b"a", key=b"x"),
        put(0, 1, b"a", key=b"y"),
        put(2, 3, b"b", key=b"y"),
        get(4, 5, b"a", key=b"y"),
        put(0, 9, b"c", key=b"z"),
        get(1, 2, None, key=b"z"),
    ]
    result = check(History.from_operations(ops))
    assert not result.ok and result.verdict is BAD
    assert {k: r.verdict for k, r in result.keys.items()} == {b"x": LIN, b"y": BAD, b"z": LIN}
    assert [r.key for r in result.violations()] == [b"y"]
    assert "key b'y': violation" in result.report()


def test_empty_history_is_linearizable():
    result = check(History())
    assert result.ok and result.verdict is LIN


# -- generated histories ------------------------------------------------------------


def simulate(
    rng: random.Random, n: int, keys: list[bytes], spread: int, unknown_rate: float = 0.0
) -> list[Operation]:
    """A real sequential execution: ops are applied to a dict at distinct
    points, then given random intervals around those points."""
    store: dict[bytes, bytes] = {}
    ops = []
    for i in range(n):
        t, key = i * 10, rng.choice(keys)
        t0, t1 = t - rng.randrange(spread), t + rng.randrange(spread)
        kind = rng.choice(["put", "get", "get", "delete", "cas"])
        cur, v = store.get(key), f"v{i}".encode()
        outcome = "unknown" if kind != "get" and rng.random() < unknown_rate else "ok"
        applied = outcome == "ok" or rng.random() < 0.5
        if kind == "put":
            o = op("put", t0, t1, value=v, key=key)
            new = v
        elif kind == "get":
            o, new = op("get", t0, t1, cur, key=key), cur
        elif kind == "delete":
            o, new = op("delete", t0, t1, cur is not None, key=key), None
        else:
            exp = cur if rng.random() < 0.5 else rng.choice([None, b"v1", b"v2"])
            o = op("cas", t0, t1, cur == exp, value=v, expected=exp, key=key)
            new = v if cur == exp else cur
        if outcome == "unknown":
            o = op(
                o.kind,
                t0,
                None,
                None,
                key=key,
                value=o.value,
                expected=o.expected,
                outcome="unknown",
            )
        if applied:
            store[key] = new
            if new is None:
                del store[key]
        ops.append(o)
    return ops


def corrupt_a_read(rng: random.Random, ops: list[Operation], new: object) -> list[Operation]:
    reads = [i for i, o in enumerate(ops) if o.kind is Kind.GET and o.outcome is Outcome.OK]
    i = rng.choice(reads[len(reads) // 2 :])
    ops = list(ops)
    ops[i] = op("get", ops[i].invoke_ns, ops[i].complete_ns, new, key=ops[i].key)
    return ops


def test_generated_history_is_linearizable_and_fast():
    rng = random.Random(1)
    ops = simulate(rng, 3000, [b"a", b"b"], spread=40, unknown_rate=0.02)
    result = check(History.from_operations(ops), max_seconds_per_key=30)
    assert result.ok, result.report()
    assert sum(r.operations for r in result.keys.values()) > 2500


def test_generated_history_with_a_corrupted_read_is_not():
    rng = random.Random(2)
    ops = simulate(rng, 2000, [b"a"], spread=20, unknown_rate=0.01)
    assert verdict(*ops) is LIN
    assert verdict(*corrupt_a_read(rng, ops, b"never written")) is BAD


def test_sequential_generated_history_with_a_stale_read_is_not():
    rng = random.Random(3)
    ops = simulate(rng, 500, [b"a"], spread=1)
    i = max(i for i, o in enumerate(ops) if o.kind is Kind.GET and o.result is not None)
    writes = [o.value for o in ops[:i] if o.kind is Kind.PUT and o.value != ops[i].result]
    assert writes
    ops[i] = op("get", ops[i].invoke_ns, ops[i].complete_ns, writes[0], key=b"a")
    result = check(History.from_operations(ops))
    assert result.verdict is BAD
    assert result.keys[b"a"].diagnostic.blocked.invoke_ns == ops[i].invoke_ns


def test_budget_exhausted_gives_unknown_not_a_pass():
    rng = random.Random(4)
    ops = simulate(rng, 400, [b"a"], spread=200, unknown_rate=0.2)
    ops = corrupt_a_read(rng, ops, b"never written")
    result = check_key(b"a", ops, max_steps=50)
    assert result.verdict is Verdict.UNKNOWN and "NOT a pass" in result.reason
    assert not check(History.from_operations(ops), max_steps_per_key=50).ok


# -- the recorder -------------------------------------------------------------------


def test_history_json_round_trip(tmp_path):
    clock = iter(range(100, 10_000, 7))
    h = History(clock=lambda: next(clock))
    a = h.invoke(1, "put", b"k\xff", b"\x00\x01binary")
    h.ok(a)
    b = h.invoke("p2", Kind.GET, "str-key")
    h.ok(b, None)
    c = h.invoke(3, "cas", b"k", b"new", expected=b"old")
    h.ok(c, False)
    d = h.invoke(3, "cas", b"k", b"new", expected_version=4)
    h.unknown(d)
    e = h.invoke(4, "delete", b"k")
    h.fail(e)
    h.invoke(5, "get", b"k")  # pending
    path = tmp_path / "h.jsonl"
    h.save(path)
    loaded = History.load(path)
    assert loaded.operations() == h.operations()
    assert len(path.read_text().splitlines()) == 6
    assert loaded.summary()["cas"] == {"pending": 0, "ok": 1, "fail": 0, "unknown": 1}
    assert loaded.summary()["get"]["pending"] == 1
    assert "delete" in loaded.summary_text()


def test_completing_twice_or_unknown_handle_is_an_error():
    h = History()
    a = h.invoke(0, "put", b"k", b"v")
    h.ok(a)
    with pytest.raises(ValueError):
        h.fail(a)
    with pytest.raises(KeyError):
        h.ok(99)


def test_events_and_merge_keep_one_timeline():
    h1 = History.from_operations([put(0, 5, b"a", process=1)])
    h2 = History.from_operations([get(2, 3, b"a", process=2)])
    merged = History.merge([h1, h2])
    assert [o.id for o in merged] == [0, 1]
    kinds = [(e.time_ns, e.is_invoke) for e in merged.events()]
    assert kinds == [(0, True), (2, True), (3, False), (5, False)]
    assert check(merged).ok


def test_threads_on_a_locked_dict_record_a_linearizable_history():
    h, store, lock = History(), {}, threading.Lock()

    def client(p: int) -> None:
        rng = random.Random(p)
        for i in range(300):
            key = rng.choice([b"x", b"y"])
            kind = rng.choice(["put", "get", "cas"])
            v = f"{p}-{i}".encode()
            exp = rng.choice([None, b"0-1", f"{p}-{i - 1}".encode()])
            handle = h.invoke(
                p, kind, key, None if kind == "get" else v, expected=exp if kind == "cas" else None
            )
            with lock:
                cur = store.get(key)
                if kind == "put" or (kind == "cas" and cur == exp):
                    store[key] = v
            h.ok(handle, {"put": None, "get": cur, "cas": cur == exp}[kind])

    threads = [threading.Thread(target=client, args=(p,)) for p in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ops = h.operations()
    assert len(ops) == 8 * 300 and len({o.id for o in ops}) == len(ops)
    assert all(o.outcome is Outcome.OK for o in ops)
    result = check(h)
    assert result.ok, result.report()


def test_command_line_exit_codes(tmp_path, capsys):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    History.from_operations([put(0, 1, b"a"), get(2, 3, b"a")]).save(good)
    History.from_operations([put(0, 1, b"a"), get(2, 3, b"b")]).save(bad)
    assert main([str(good)]) == 0
    assert main([str(good), str(bad)]) == 1
    assert "violation" in capsys.readouterr().out


# -- cross-check against brute force ------------------------------------------------


def brute_force(ops: list[Operation]) -> bool:
    """Tries every order of every subset of the unknown operations: the
    definition of linearizability, written independently of the checker."""
    ops = [o for o in ops if o.outcome is not Outcome.FAIL]

    def apply(o: Operation, state: object) -> tuple[bool, object]:
        known = o.outcome is Outcome.OK
        if o.kind is Kind.PUT:
            return True, o.value
        if o.kind is Kind.GET:
            return (not known or o.result == state), state
        if o.kind is Kind.DELETE:
            if known and o.result is not None and o.result != (state is not None):
                return False, state
            return True, None
        hit = state == o.expected
        if known and o.result != hit:
            return False, state
        return True, o.value if hit else state

    def go(rest: frozenset[int], state: object) -> bool:
        due = [ops[i].complete_ns for i in rest if ops[i].outcome is Outcome.OK]
        if not due:
            return True
        for i in rest:
            if ops[i].invoke_ns <= min(due):
                fine, new = apply(ops[i], state)
                if fine and go(rest - {i}, new):
                    return True
        return False

    return go(frozenset(range(len(ops))), None)


def random_small_history(rng: random.Random) -> list[Operation]:
    ops = []
    for p in range(rng.randrange(1, 8)):
        t0 = rng.randrange(20)
        t1 = t0 + rng.randrange(12)
        outcome = rng.choices(["ok", "unknown", "fail"], [7, 2, 1])[0]
        kind = rng.choice(["put", "get", "get", "delete", "cas"])
        val = rng.choice([b"a", b"b", b"c"])
        result = (
            {
                "put": None,
                "get": rng.choice([None, b"a", b"b"]),
                "delete": rng.choice([None, True, False]),
                "cas": rng.choice([True, False]),
            }[kind]
            if outcome == "ok"
            else None
        )
        ops.append(
            op(
                kind,
                t0,
                t1 if outcome != "unknown" else None,
                result,
                value=val if kind in ("put", "cas") else None,
                expected=rng.choice([None, b"a", b"b"]) if kind == "cas" else None,
                outcome=outcome,
                process=p,
            )
        )
    return ops


def test_agrees_with_brute_force_on_random_small_histories():
    rng = random.Random(7)
    seen = set()
    for _ in range(3000):
        ops = random_small_history(rng)
        expected = LIN if brute_force(ops) else BAD
        assert verdict(*ops) is expected, "\n".join(o.describe() for o in ops)
        seen.add(expected)
    assert seen == {LIN, BAD}
