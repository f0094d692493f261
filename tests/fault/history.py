"""Recording what concurrent clients did, for the linearizability checker.

Theory of operation. A client that is about to send a request calls
`History.invoke(...)`, which stamps the invocation time and returns a handle
(the operation's id). When the request ends the client says how:

- `ok(handle, result)`: a reply came back and the request took effect (or,
  for a read or a failed CAS, observed the state). `result` is what the reply
  says, see `Operation`.
- `fail(handle)`: the request certainly did NOT take effect (BAD_REQUEST,
  TOO_LARGE, a REDIRECT or UNAVAILABLE reply to the only attempt). A CAS that
  answered CAS_FAILED is not a 'fail': it is `ok(handle, False)`.
- `unknown(handle)`: a timeout or a lost connection. The request may have
  taken effect, at any time after its invocation, or never.

An operation that is invoked and never completed (the client thread died, the
run ended) is 'pending'; the checker treats it exactly like 'unknown'.

Times come from `time.monotonic_ns`. On Linux that is CLOCK_MONOTONIC, one
clock for the whole machine (containers included), so histories recorded by
several processes can be merged (`History.merge`) and compared. The
invocation stamp is taken before the request is sent and the completion stamp
after the reply is read, so the recorded interval contains the real one: the
checker can only be more permissive than the truth, never stricter.

CAS. The store compares either by value (`expected_value`) or by version
(`expected_version`, where 0 means "the key must be absent"). The checker
models values only: record value-CAS with `expected=` (None meaning "must be
absent") for histories that should be checked strictly. Version-CAS may be
recorded with `expected_version=`; see `tests.fault.linearizability` for how
conservatively it is treated.

Multi-key operations (issue 14). A range read is `Kind.RANGE` over
[`key`, `range_end`) as on the wire (`client.txn.range_args` turns a prefix
into one; `range_end` b"\\0" means "every key from `key` on"), its result
the (key, value) pairs it returned, in key order. A transaction is
`Kind.TXN` with `txn` a `TxnSpec` (its comparisons and both branches, from
`txn_spec`), `key` its first key (for display and summaries only), and its
result a `TxnOutcome` (`txn_outcome`): which branch ran and what the branch's
gets read, or None for the reads when the answer came from the session
record of a retried request (which keeps no results: the reads are then
not checked).

Storage: JSON lines, one completed (or pending) operation per line, see
`Operation.to_json`. Bytes are written as {"utf8": text} when they decode as
UTF-8, else {"b64": base64}; str values are plain JSON strings.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from kvstore.protocol import (
    FROM_KEY,
    Compare,
    CompareOp,
    CompareTarget,
    RangeResult,
    TxnOp,
    TxnOpKind,
)

if TYPE_CHECKING:
    from client.client import RangePage, TxnResponse

Value = bytes | str
"""A key or a value. Bytes from the real store; str is handy in tests."""


class Kind(StrEnum):
    PUT = "put"
    GET = "get"
    DELETE = "delete"
    CAS = "cas"
    RANGE = "range"
    TXN = "txn"


SINGLE_KEY = frozenset({Kind.PUT, Kind.GET, Kind.DELETE, Kind.CAS})


class TxnCompare(NamedTuple):
    """One comparison: `target` "value", "version", "create" or "exists";
    `op` "=", "!=", "<" or ">"; `operand` bytes (value), an int (version,
    create) or a bool (exists). As the store evaluates it (kvstore/protocol.py,
    CompareTarget): a value comparison is false when the key is absent."""

    target: str
    op: str
    key: Value
    operand: Any


class TxnStep(NamedTuple):
    """One operation of a branch: "put" `key` `value`; "delete" `key` (or
    [key, range_end)); "get" `key` (or [key, range_end), every key in it)."""

    kind: str
    key: Value
    value: Value | None = None
    range_end: Value | None = None


class TxnSpec(NamedTuple):
    """A transaction: if every comparison holds the success steps run, else
    the failure ones, atomically."""

    compares: tuple[TxnCompare, ...] = ()
    success: tuple[TxnStep, ...] = ()
    failure: tuple[TxnStep, ...] = ()

    def keys(self) -> list[Value]:
        """The keys it names, in order (range starts included)."""
        named = [c.key for c in self.compares] + [s.key for s in self.success + self.failure]
        return list(dict.fromkeys(named))


Pairs = tuple[tuple[Value, Value | None], ...]
"""What a range read returned: (key, value) in key order."""


class TxnOutcome(NamedTuple):
    """The result of an acknowledged transaction: whether the comparisons
    held (the success branch ran), and per get of the branch that ran the
    pairs it read (None: not known, nothing is checked)."""

    succeeded: bool
    reads: tuple[Pairs, ...] | None = None


_TARGETS = {
    CompareTarget.VALUE: "value",
    CompareTarget.VERSION: "version",
    CompareTarget.CREATE: "create",
    CompareTarget.EXISTS: "exists",
}
_OPS = {
    CompareOp.EQUAL: "=",
    CompareOp.NOT_EQUAL: "!=",
    CompareOp.LESS: "<",
    CompareOp.GREATER: ">",
}


def txn_spec(
    compare: Iterable[Compare], success: Iterable[TxnOp], failure: Iterable[TxnOp] = ()
) -> TxnSpec:
    """The `TxnSpec` of what `KVClient.txn(compare, success, failure)` sends
    (`client.txn.cmp` and `op` build those). Gets with a limit, keys only or
    count only are refused: a checked read must return every key's value."""

    def step(o: TxnOp) -> TxnStep:
        if o.kind is TxnOpKind.PUT:
            return TxnStep("put", o.key, o.value)
        if o.kind is TxnOpKind.DELETE:
            return TxnStep("delete", o.key, None, o.range_end)
        if o.limit or o.keys_only or o.count_only:
            raise ValueError("a recorded get reads whole values: no limit, keys_only, count_only")
        return TxnStep("get", o.key, None, o.range_end)

    return TxnSpec(
        tuple(TxnCompare(_TARGETS[c.target], _OPS[c.op], c.key, c.operand) for c in compare),
        tuple(map(step, success)),
        tuple(map(step, failure)),
    )


def range_pairs(result: RangeResult | RangePage) -> Pairs | None:
    """The pairs of a whole range reply; None if it was cut short (`more`):
    a partial read is not checked."""
    if result.more:
        return None
    return tuple((kv.key, kv.value) for kv in result.kvs)


def txn_outcome(response: TxnResponse) -> TxnOutcome:
    """The `TxnOutcome` of a `KVClient.txn` answer."""
    if response.responses is None:
        return TxnOutcome(response.succeeded, None)
    reads = [range_pairs(r) for r in response.responses if isinstance(r, RangeResult)]
    if any(r is None for r in reads):
        return TxnOutcome(response.succeeded, None)
    return TxnOutcome(response.succeeded, tuple(r for r in reads if r is not None))


def in_range(key: Value, start: Value, end: Value | None) -> bool:
    """Whether `key` is in [start, end) as the store reads a range: end None
    is the one key `start`, end FROM_KEY (b"\\0") every key from `start` on."""
    if end is None:
        return key == start
    if end == FROM_KEY:
        return key >= start
    return start <= key < end


class Outcome(StrEnum):
    PENDING = "pending"  # invoked, never completed: treated as UNKNOWN
    OK = "ok"
    FAIL = "fail"  # definitely not applied
    UNKNOWN = "unknown"  # may or may not have been applied


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation, from invocation to completion.

    Arguments by kind: put: `value`. get: none. delete: none. cas: `value` is
    the new value and exactly one of `expected` (the value the key must hold;
    None = must be absent) or `expected_version` (0 = must be absent).

    range: `range_end` (see the module docstring). txn: `txn`.

    `result` when `outcome` is OK: put: None (ignored). get: the value read,
    None for absent. delete: None (not checked), or a bool saying whether the
    key existed (False for a NOT_FOUND reply). cas: True if it swapped, False
    for CAS_FAILED. range: the `Pairs` read. txn: a `TxnOutcome`. For other
    outcomes `result` is None.

    `complete_ns` is None for PENDING and may be None for UNKNOWN (the
    checker treats an unknown completion as +infinity either way).
    """

    process: int | str
    kind: Kind
    key: Value
    invoke_ns: int
    complete_ns: int | None = None
    outcome: Outcome = Outcome.PENDING
    result: Any = None
    value: Value | None = None
    expected: Value | None = None
    expected_version: int | None = None
    range_end: Value | None = None
    txn: TxnSpec | None = None
    id: int = -1

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))
        object.__setattr__(self, "outcome", Outcome(self.outcome))
        if self.kind is Kind.TXN and self.txn is None:
            raise ValueError("txn needs its TxnSpec")
        if (
            self.kind is Kind.TXN
            and self.outcome is Outcome.OK
            and not isinstance(self.result, TxnOutcome)
        ):
            raise TypeError(f"an ok txn's result is a TxnOutcome, not {self.result!r}")
        if self.kind is Kind.PUT and self.value is None:
            raise ValueError("put needs a value")
        if self.kind is Kind.CAS:
            if self.value is None:
                raise ValueError("cas needs a new value")
            if self.expected is not None and self.expected_version is not None:
                raise ValueError("cas takes expected or expected_version, not both")

    @property
    def by_version(self) -> bool:
        """A CAS that compares versions (other than 0, which means absent)."""
        return self.kind is Kind.CAS and bool(self.expected_version)

    def describe(self) -> str:
        """One line: 'p3 cas(k, b'a' -> b'b') = True'."""
        if self.kind is Kind.PUT:
            call = f"put({self.key!r}, {self.value!r})"
        elif self.kind is Kind.CAS:
            exp = (
                f"v{self.expected_version}"
                if self.expected_version is not None
                else repr(self.expected)
            )
            call = f"cas({self.key!r}, {exp} -> {self.value!r})"
        elif self.kind is Kind.RANGE:
            call = f"range({self.key!r}, {self.range_end!r})"
        elif self.kind is Kind.TXN:
            assert self.txn is not None
            call = _describe_txn(self.txn)
        else:
            call = f"{self.kind.value}({self.key!r})"
        if self.outcome is Outcome.OK:
            quiet = self.kind is Kind.PUT or (self.kind is Kind.DELETE and self.result is None)
            tail = " ok" if quiet else f" = {_describe_result(self.result)}"
        else:
            tail = f" {self.outcome.value}"
        return f"p{self.process} {call}{tail}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "process": self.process,
            "kind": self.kind.value,
            "key": _enc(self.key),
            "value": _enc(self.value),
            "expected": _enc(self.expected),
            "expected_version": self.expected_version,
            "invoke_ns": self.invoke_ns,
            "complete_ns": self.complete_ns,
            "outcome": self.outcome.value,
            "result": _enc(self.result),
            **({"range_end": _enc(self.range_end)} if self.range_end is not None else {}),
            **({"txn": _enc(self.txn)} if self.txn is not None else {}),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Operation:
        kind = Kind(obj["kind"])
        result = _dec(obj["result"])
        if kind is Kind.TXN and result is not None:
            result = TxnOutcome(*result)
        spec = None
        if obj.get("txn") is not None:
            compares, success, failure = _dec(obj["txn"])
            spec = TxnSpec(
                tuple(TxnCompare(*c) for c in compares),
                tuple(TxnStep(*t) for t in success),
                tuple(TxnStep(*t) for t in failure),
            )
        return cls(
            id=obj["id"],
            process=obj["process"],
            kind=kind,
            key=_dec(obj["key"]),
            value=_dec(obj["value"]),
            expected=_dec(obj["expected"]),
            expected_version=obj["expected_version"],
            invoke_ns=obj["invoke_ns"],
            complete_ns=obj["complete_ns"],
            outcome=Outcome(obj["outcome"]),
            result=result,
            range_end=_dec(obj.get("range_end")),
            txn=spec,
        )


class Event(NamedTuple):
    """One end of an operation on the timeline: its invocation or completion."""

    time_ns: int
    is_invoke: bool
    op: Operation


class History:
    """A thread-safe log of operations. One per process; merge them after."""

    def __init__(self, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ops: dict[int, Operation] = {}
        self._next_id = 0

    # -- recording ---------------------------------------------------------

    def invoke(
        self,
        process: int | str,
        kind: Kind | str,
        key: Value,
        value: Value | None = None,
        *,
        expected: Value | None = None,
        expected_version: int | None = None,
        range_end: Value | None = None,
        txn: TxnSpec | None = None,
    ) -> int:
        """Records the start of an operation; returns its handle."""
        now = self._clock()
        with self._lock:
            handle = self._next_id
            self._next_id += 1
            self._ops[handle] = Operation(
                process=process,
                kind=Kind(kind),
                key=key,
                value=value,
                expected=expected,
                expected_version=expected_version,
                range_end=range_end,
                txn=txn,
                invoke_ns=now,
                id=handle,
            )
        return handle

    def ok(self, handle: int, result: Any = None) -> None:
        self._complete(handle, Outcome.OK, result)

    def fail(self, handle: int) -> None:
        self._complete(handle, Outcome.FAIL, None)

    def unknown(self, handle: int) -> None:
        self._complete(handle, Outcome.UNKNOWN, None)

    def _complete(self, handle: int, outcome: Outcome, result: Any) -> None:
        now = self._clock()
        with self._lock:
            op = self._ops.get(handle)
            if op is None:
                raise KeyError(f"no operation with handle {handle}")
            if op.outcome is not Outcome.PENDING:
                raise ValueError(f"operation {handle} already completed: {op.describe()}")
            self._ops[handle] = replace(op, outcome=outcome, result=result, complete_ns=now)

    def append(self, op: Operation) -> Operation:
        """Adds an already-built operation (tests, loading); assigns its id."""
        with self._lock:
            op = replace(op, id=self._next_id)
            self._ops[op.id] = op
            self._next_id += 1
        return op

    # -- reading -----------------------------------------------------------

    def operations(self) -> list[Operation]:
        """A snapshot of every operation, in invocation order."""
        with self._lock:
            ops = list(self._ops.values())
        return sorted(ops, key=lambda o: (o.invoke_ns, o.id))

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)

    def __iter__(self) -> Iterator[Operation]:
        return iter(self.operations())

    def events(self) -> list[Event]:
        """Invocations and completions on one timeline (pending and unknown
        operations with no completion time have only their invocation)."""
        evs = [Event(o.invoke_ns, True, o) for o in self.operations()]
        evs += [
            Event(o.complete_ns, False, o) for o in self.operations() if o.complete_ns is not None
        ]
        return sorted(evs, key=lambda e: (e.time_ns, not e.is_invoke, e.op.id))

    def summary(self) -> dict[str, dict[str, int]]:
        """{kind: {outcome: count}} for every kind and outcome."""
        counts = Counter((o.kind, o.outcome) for o in self.operations())
        return {k.value: {o.value: counts[(k, o)] for o in Outcome} for k in Kind}

    def summary_text(self) -> str:
        rows = [f"{'kind':<7}" + "".join(f"{o.value:>9}" for o in Outcome)]
        for kind, by_outcome in self.summary().items():
            rows.append(f"{kind:<7}" + "".join(f"{n:>9}" for n in by_outcome.values()))
        return "\n".join(rows)

    # -- persistence -------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Writes one JSON object per line, in invocation order."""
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(
                json.dumps(op.to_json(), separators=(",", ":")) + "\n" for op in self.operations()
            )

    @classmethod
    def load(cls, path: str | Path) -> History:
        """Reads a file written by `save`; ids are kept."""
        hist = cls()
        with open(path, encoding="utf-8") as f:
            ops = [Operation.from_json(json.loads(line)) for line in f if line.strip()]
        with hist._lock:
            for op in ops:
                hist._ops[op.id] = op
            hist._next_id = max((o.id for o in ops), default=-1) + 1
        return hist

    @classmethod
    def merge(cls, histories: Iterable[History]) -> History:
        """One history holding the operations of several (e.g. one per client
        process); ids are renumbered in invocation order."""
        ops = sorted(
            (o for h in histories for o in h.operations()),
            key=lambda o: (o.invoke_ns, str(o.process), o.id),
        )
        return cls.from_operations(ops)

    @classmethod
    def from_operations(cls, ops: Iterable[Operation]) -> History:
        hist = cls()
        for op in ops:
            hist.append(op)
        return hist


def _describe_txn(spec: TxnSpec) -> str:
    """'txn(if value(a) = b'1' then put(a, b'2') else get(a))'."""

    def step(t: TxnStep) -> str:
        if t.kind == "put":
            return f"put({t.key!r}, {t.value!r})"
        return f"{t.kind}({t.key!r}" + ("" if t.range_end is None else f", {t.range_end!r}") + ")"

    conds = " and ".join(f"{c.target}({c.key!r}) {c.op} {c.operand!r}" for c in spec.compares)
    then = ", ".join(map(step, spec.success)) or "nothing"
    other = ", ".join(map(step, spec.failure)) or "nothing"
    return f"txn(if {conds or 'true'} then {then} else {other})"


def _describe_result(result: Any) -> str:
    if isinstance(result, TxnOutcome):
        branch = "success" if result.succeeded else "failure"
        return branch if not result.reads else f"{branch}, read {list(result.reads)!r}"
    return repr(result)


def _enc(v: Any) -> Any:
    """JSON for a value: bytes as {"utf8"} or {"b64"}, tuples (and named
    tuples) as lists, recursively."""
    if isinstance(v, bytes):
        try:
            return {"utf8": v.decode("utf-8")}
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(v).decode("ascii")}
    if isinstance(v, (tuple, list)):
        return [_enc(x) for x in v]
    return v


def _dec(v: Any) -> Any:
    """The inverse of `_enc`; lists come back as tuples."""
    if isinstance(v, dict):
        if "utf8" in v:
            return v["utf8"].encode("utf-8")
        return base64.b64decode(v["b64"])
    if isinstance(v, list):
        return tuple(_dec(x) for x in v)
    return v
