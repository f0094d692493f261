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
from typing import Any, NamedTuple

Value = bytes | str
"""A key or a value. Bytes from the real store; str is handy in tests."""


class Kind(StrEnum):
    PUT = "put"
    GET = "get"
    DELETE = "delete"
    CAS = "cas"


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

    `result` when `outcome` is OK: put: None (ignored). get: the value read,
    None for absent. delete: None (not checked), or a bool saying whether the
    key existed (False for a NOT_FOUND reply). cas: True if it swapped, False
    for CAS_FAILED. For other outcomes `result` is None.

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
    id: int = -1

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))
        object.__setattr__(self, "outcome", Outcome(self.outcome))
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
        else:
            call = f"{self.kind.value}({self.key!r})"
        if self.outcome is Outcome.OK:
            quiet = self.kind is Kind.PUT or (self.kind is Kind.DELETE and self.result is None)
            tail = " ok" if quiet else f" = {self.result!r}"
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
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Operation:
        return cls(
            id=obj["id"],
            process=obj["process"],
            kind=Kind(obj["kind"]),
            key=_dec(obj["key"]),
            value=_dec(obj["value"]),
            expected=_dec(obj["expected"]),
            expected_version=obj["expected_version"],
            invoke_ns=obj["invoke_ns"],
            complete_ns=obj["complete_ns"],
            outcome=Outcome(obj["outcome"]),
            result=_dec(obj["result"]),
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


def _enc(v: Any) -> Any:
    if isinstance(v, bytes):
        try:
            return {"utf8": v.decode("utf-8")}
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(v).decode("ascii")}
    return v


def _dec(v: Any) -> Any:
    if isinstance(v, dict):
        if "utf8" in v:
            return v["utf8"].encode("utf-8")
        return base64.b64decode(v["b64"])
    return v
