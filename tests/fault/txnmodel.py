"""The sequential specification of multi-key operations (ranges and
transactions) over a small set of registers, for the linearizability checker
(tests/fault/linearizability.py).

Theory of operation
-------------------
The checker splits a history per key (locality): a history of single-key
operations is linearizable iff each key's subhistory is. A transaction that
touches two keys, or a range read that returns several, ties their keys
together: each key's projection may be linearizable while the keys did not
move together (a range read that sees half of a transfer). So the keys are
split into GROUPS instead (`groups`): two keys are in one group when some
operation touches both, and each group is checked on its own against a
JOINT state, a tuple with one register value per key of the group (None:
absent). Locality still holds between groups, since no operation spans two
of them; a key no multi-key operation touches is a group of its own and
keeps the register check. A range that spans many keys makes one big group:
keep the keys that ranges and transactions use few (3-5) and the clients'
other keys outside their ranges.

Which keys a range reads. The store answers a range over [key, range_end)
with every key in it, so what it read is every key of the history in that
interval (`universe`: every key an operation names or a read returned), the
absent ones included, whose state must be None. A range start that no
operation writes is not a key of its own.

Programs. Every operation of a group becomes one `Program`, a conditional
atomic step on the joint state:

    (conds, then, other, expect)

If every condition in `conds` holds, the actions of `then` run, else those
of `other`, in order. `expect` is the branch the client saw: True (success),
False (failure), or None when the outcome is unknown (then the step is
optional for the search and its reads are not checked: it may take effect
once at any point after its invocation, or never). A condition is
`(index, "value", op, operand)` (the value compared with =, !=, < or >;
false when the key is absent, as the store does) or `(index, "present", "=",
bool)`. An action is `("put", index, value)`, `("del", indexes)` or
`("get", indexes, values)` (the state must hold exactly these values there:
a read of one key, a range, or a transaction's get).

The single-key operations are programs too (`program`): put is an
unconditional put; get a get; delete a delete (with a "present" condition
when its result says whether the key existed); a value-CAS a condition and
a put. Version comparisons are modelled where the version says only whether
the key exists (`version = 0`, `!= 0`, `> 0`; likewise create revisions);
other version comparisons cannot be decided on values: a transaction with
one is checked as the branch it reported (conditions trusted, as the
register model treats version-CAS), and if its outcome is unknown it is
refused (`Unmodelable`, an undecided verdict) unless its failure branch
writes nothing, in which case it is an optional unconditional success.

`anonymise` merges written values that nothing reads or compares with into
one marker, as the register model does, so the search's cache can merge
configurations that differ only in them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from tests.fault.history import (
    SINGLE_KEY,
    Kind,
    Operation,
    Outcome,
    Pairs,
    TxnCompare,
    TxnOutcome,
    TxnStep,
    Value,
    in_range,
)

Cond = tuple[int, str, str, Any]
Action = tuple[Any, ...]
Program = tuple[tuple[Cond, ...], tuple[Action, ...], tuple[Action, ...], bool | None]


class Unmodelable(ValueError):
    """An operation the model cannot decide (see the module docstring)."""


INVALID: Any = object()
"""What `apply` returns when a step is not allowed in a state."""


class _Unread:
    """The register value standing for every written value that no operation
    reads or compares against: such values are indistinguishable to the
    model, and merging them lets the cache merge configurations."""

    def __repr__(self) -> str:
        return "<a value nothing reads>"


UNREAD = _Unread()


class _Outside:
    """What a get expects of a key that a range read returned although it
    lies outside the range: no state holds it."""

    def __repr__(self) -> str:
        return "<a key returned from outside the range>"


OUTSIDE = _Outside()


# -- keys and groups ------------------------------------------------------------


def sort_key(key: Value) -> tuple[bool, Value]:
    """The order of keys in `universe`: bytes, then str (tests mix them)."""
    return (isinstance(key, str), key)


def universe(ops: Iterable[Operation]) -> list[Value]:
    """Every key an operation names as a key, or a read returned, sorted."""
    keys: set[Value] = set()
    for op in ops:
        if op.kind in SINGLE_KEY:
            keys.add(op.key)
        elif op.kind is Kind.RANGE:
            keys.update(k for k, _ in _pairs(op.result) if op.outcome is Outcome.OK)
        elif op.txn is not None:
            keys.update(c.key for c in op.txn.compares)
            keys.update(s.key for s in op.txn.success + op.txn.failure if s.range_end is None)
            if op.outcome is Outcome.OK and op.result.reads is not None:
                keys.update(k for pairs in op.result.reads for k, _ in pairs)
    return sorted(keys, key=sort_key)


def _pairs(result: Any) -> Pairs:
    return result if isinstance(result, tuple) else ()


def domain(start: Value, end: Value | None, keys: Sequence[Value]) -> list[Value]:
    """The keys of `keys` (sorted as `universe` sorts them) in [start, end)
    (the one key `start` when end is None)."""
    if end is None:
        return [start]
    found = []
    for i in range(bisect_left(keys, sort_key(start), key=sort_key), len(keys)):
        k = keys[i]
        if type(k) is not type(start) or not in_range(k, start, end):
            break
        found.append(k)
    return found


def touched(op: Operation, keys: Sequence[Value]) -> list[Value]:
    """The keys `op` reads or writes, given the history's `universe`."""
    if op.kind in SINGLE_KEY:
        return [op.key]
    found: list[Value] = []
    if op.kind is Kind.RANGE:
        found += domain(op.key, op.range_end, keys)
        found += [k for k, _ in _pairs(op.result)]
    elif op.txn is not None:
        found += [c.key for c in op.txn.compares]
        for s in op.txn.success + op.txn.failure:
            found += domain(s.key, s.range_end, keys)
        if isinstance(op.result, TxnOutcome) and op.result.reads is not None:
            found += [k for pairs in op.result.reads for k, _ in pairs]
    return list(dict.fromkeys(found))


def groups(ops: Sequence[Operation]) -> list[tuple[tuple[Value, ...], list[Operation], bool]]:
    """Splits a history into groups of keys no operation spans: (the
    group's keys, sorted; its operations; whether it holds a multi-key
    operation, i.e. needs the joint model). Groups come in the order of
    their first operation. Operations that touch no key are left out when
    they are ranges (over no key of the history, returning nothing: they
    observe nothing); transactions that touch none (a get or delete of an
    empty range) still report a branch, so they make a group `()` of their
    own, whose only state is the empty tuple."""
    keys = universe(ops)
    parent: dict[Value, Value] = {}

    def find(k: Value) -> Value:
        root = parent.setdefault(k, k)
        while root != parent[root]:
            root = parent[root]
        while parent[k] != root:
            parent[k], k = root, parent[k]
        return root

    spans = []
    for op in ops:
        t = touched(op, keys)
        spans.append(t)
        for k in t[1:]:
            parent[find(k)] = find(t[0])
        if t:
            find(t[0])
    members: dict[Value, list[Value]] = {}
    for k in parent:
        members.setdefault(find(k), []).append(k)
    out: dict[Value, tuple[list[Operation], list[bool]]] = {}
    members[()] = []
    for op, t in zip(ops, spans, strict=True):
        if not t and op.kind is not Kind.TXN:
            continue
        ops_of, multi = out.setdefault(find(t[0]) if t else (), ([], [False]))
        ops_of.append(op)
        multi[0] = multi[0] or op.kind not in SINGLE_KEY
    return [
        (tuple(sorted(members[root], key=sort_key)), ops_of, multi[0])
        for root, (ops_of, multi) in out.items()
    ]


# -- programs -------------------------------------------------------------------


def _cond(c: TxnCompare, ix: dict[Value, int]) -> Cond | None:
    """A condition, or None when values cannot decide it."""
    i = ix[c.key]
    if c.target == "value":
        return (i, "value", c.op, c.operand)
    if c.target == "exists" and c.op in ("=", "!="):
        return (i, "present", "=", bool(c.operand) == (c.op == "="))
    if c.target in ("version", "create") and c.operand == 0 and not isinstance(c.operand, bool):
        if c.op == "=":
            return (i, "present", "=", False)
        if c.op in ("!=", ">"):
            return (i, "present", "=", True)
    return None


def _read(
    start: Value, end: Value | None, pairs: Pairs, ix: dict[Value, int], keys: Sequence[Value]
) -> Action:
    got = dict(pairs)
    inside = {k for k in got if type(k) is type(start) and in_range(k, start, end)}
    names = list(dict.fromkeys([*domain(start, end, keys), *got]))
    values = tuple(OUTSIDE if k in got and k not in inside else got.get(k) for k in names)
    return ("get", tuple(ix[k] for k in names), values)


def _actions(
    steps: tuple[TxnStep, ...],
    reads: tuple[Pairs, ...] | None,
    ix: dict[Value, int],
    keys: Sequence[Value],
) -> tuple[Action, ...]:
    """A branch's actions; its gets are checked against `reads` if known."""
    out: list[Action] = []
    gets = [s for s in steps if s.kind == "get"]
    if reads is not None and len(reads) != len(gets):
        raise ValueError(f"{len(reads)} reads recorded for a branch with {len(gets)} gets")
    it = iter(reads or ())
    for s in steps:
        if s.kind == "put":
            out.append(("put", ix[s.key], s.value))
        elif s.kind == "delete":
            out.append(("del", tuple(ix[k] for k in domain(s.key, s.range_end, keys))))
        elif reads is not None:
            out.append(_read(s.key, s.range_end, next(it), ix, keys))
    return tuple(out)


def program(op: Operation, ix: dict[Value, int], keys: Sequence[Value]) -> Program | None:
    """`op` as a step on the joint state of the keys `ix` indexes (`keys`:
    the history's `universe`); None drops it (failed, an unknown read, a
    failed version-CAS). Raises Unmodelable (see the module docstring)."""
    if op.outcome is Outcome.FAIL:
        return None
    known = op.outcome is Outcome.OK
    expect = True if known else None
    if op.kind is Kind.PUT:
        return ((), (("put", ix[op.key], op.value),), (), expect)
    if op.kind is Kind.GET:
        return ((), (("get", (ix[op.key],), (op.result,)),), (), True) if known else None
    if op.kind is Kind.DELETE:
        delete = (("del", (ix[op.key],)),)
        if not known or op.result is None:
            return ((), delete, (), expect)
        return (((ix[op.key], "present", "=", True),), delete, (), bool(op.result))
    if op.kind is Kind.CAS:
        put = (("put", ix[op.key], op.value),)
        if op.by_version:  # conservative, as in the register model
            return None if known and not op.result else ((), put, (), expect)
        cond: Cond = (
            (ix[op.key], "present", "=", False)
            if op.expected is None
            else (ix[op.key], "value", "=", op.expected)
        )
        return ((cond,), put, (), bool(op.result) if known else None)
    if op.kind is Kind.RANGE:
        if not known or op.result is None:
            return None
        return ((), (_read(op.key, op.range_end, op.result, ix, keys),), (), True)
    return _txn_program(op, ix, keys)


def _txn_program(op: Operation, ix: dict[Value, int], keys: Sequence[Value]) -> Program:
    spec = op.txn
    assert spec is not None
    conds = [_cond(c, ix) for c in spec.compares]
    if op.outcome is Outcome.OK:
        outcome: TxnOutcome = op.result
        ok, reads = outcome.succeeded, outcome.reads
        then = _actions(spec.success, reads if ok else None, ix, keys)
        other = _actions(spec.failure, None if ok else reads, ix, keys)
        if None in conds:  # trust the branch it reported
            return ((), then if ok else other, (), True)
        return (tuple(c for c in conds if c is not None), then, other, ok)
    then = _actions(spec.success, None, ix, keys)
    other = _actions(spec.failure, None, ix, keys)
    if None not in conds:
        return (tuple(c for c in conds if c is not None), then, other, None)
    if any(a[0] != "get" for a in other):
        raise Unmodelable(
            f"{op.describe()}: a transaction with an unknown outcome, comparisons the "
            "model cannot decide (versions) and writes in its failure branch"
        )
    return ((), then, (), None)


def anonymise(programs: list[Program]) -> list[Program]:
    """Replaces written values that no program reads or compares with (per
    key) by UNREAD. Keys compared with < or > keep every value."""
    seen: dict[int, set[Any]] = {}
    exact: set[int] = set()
    for conds, then, other, _ in programs:
        for i, kind, cmp, operand in conds:
            if kind == "value":
                seen.setdefault(i, set()).add(operand)
                if cmp in ("<", ">"):
                    exact.add(i)
        for a in then + other:
            if a[0] == "get":
                for i, v in zip(a[1], a[2], strict=True):
                    seen.setdefault(i, set()).add(v)

    def anon(a: Action) -> Action:
        if a[0] != "put" or a[1] in exact or a[2] in seen.get(a[1], ()):
            return a
        return ("put", a[1], UNREAD)

    return [
        (conds, tuple(map(anon, then)), tuple(map(anon, other)), expect)
        for conds, then, other, expect in programs
    ]


# -- the sequential specification ----------------------------------------------


def _holds(c: Cond, value: Any) -> bool:
    _, kind, cmp, operand = c
    if kind == "present":
        return (value is not None) is operand
    if value is None:
        return False  # a value comparison on an absent key is false
    if cmp == "=":
        return value == operand
    if cmp == "!=":
        return value != operand
    return value < operand if cmp == "<" else value > operand


def apply(_code: int, prog: Program, _b: Any, state: tuple[Any, ...]) -> Any:
    """The joint state after `prog`, or INVALID (the checker's step
    signature: code and b are unused)."""
    conds, then, other, expect = prog
    hold = all(_holds(c, state[c[0]]) for c in conds)
    if expect is not None and hold is not expect:
        return INVALID
    actions = then if hold else other
    if not actions:
        return state
    new = list(state)
    for a in actions:
        if a[0] == "put":
            new[a[1]] = a[2]
        elif a[0] == "del":
            for i in a[1]:
                new[i] = None
        else:
            for i, v in zip(a[1], a[2], strict=True):
                if new[i] != v:
                    return INVALID
    return tuple(new)


def explain(prog: Program, state: tuple[Any, ...], keys: Sequence[Value]) -> str:
    """Why `prog` cannot be linearized in `state` (keys names the indexes)."""
    if apply(0, prog, None, state) is not INVALID:
        return "allowed here, but every continuation from here was a dead end"
    conds, then, other, expect = prog
    hold = all(_holds(c, state[c[0]]) for c in conds)
    if expect is not None and hold is not expect:
        held = {keys[c[0]]: state[c[0]] for c in conds}
        return (
            f"reported {'success' if expect else 'failure'} but its comparisons "
            f"{'hold' if hold else 'do not hold'} on {held}"
        )
    new = list(state)
    for a in then if hold else other:
        if a[0] == "put":
            new[a[1]] = a[2]
        elif a[0] == "del":
            for i in a[1]:
                new[i] = None
        else:
            wrong = [(keys[i], v, new[i]) for i, v in zip(a[1], a[2], strict=True) if new[i] != v]
            if wrong:
                return "; ".join(f"read {k!r} = {v!r} but it holds {h!r}" for k, v, h in wrong)
    return "not allowed here"


def possible_writes(op: Operation, keys: Sequence[Value]) -> list[tuple[Value, Value | None]]:
    """(key, value left) for every write `op` made, or may have made when its
    outcome is unknown (both branches of a transaction then); value None
    for a delete."""
    if op.outcome is Outcome.FAIL:
        return []
    known = op.outcome is Outcome.OK
    if op.kind is Kind.PUT or (op.kind is Kind.CAS and not (known and not op.result)):
        return [(op.key, op.value)]
    if op.kind is Kind.DELETE:
        return [(op.key, None)]
    if op.kind is not Kind.TXN or op.txn is None:
        return []
    spec = op.txn
    if known:
        branches = [spec.success if op.result.succeeded else spec.failure]
    else:
        branches = [spec.success, spec.failure]
    out: list[tuple[Value, Value | None]] = []
    for steps in branches:
        for s in steps:
            if s.kind == "put":
                out.append((s.key, s.value))
            elif s.kind == "delete":
                out += [(k, None) for k in domain(s.key, s.range_end, keys)]
    return out
