"""Linearizability checking of a recorded key-value history.

Theory of operation.

A history is linearizable if every operation can be given a point in time,
between its invocation and its completion, such that executing the operations
one at a time in that order on a sequential key-value map gives every result
the clients saw. Checking that is NP-complete in general; in practice the
search below is fast because histories are mostly sequential.

1. Split per key (Horn & Kroening's P-compositionality; for a map it is just
   Herlihy & Wing's locality): a history is linearizable iff each key's
   subhistory is linearizable against a single register. Each key is checked
   on its own, with its own budget.

2. Each key is a register whose initial value is None (absent). Operations
   become register steps (`_normalise`):
   put(v) sets v; delete sets None; get must read the current value;
   cas(expected, new) with result True needs current == expected and sets
   new; with result False needs current != expected and changes nothing.
   A delete whose result is a bool also checks whether the key existed.
   'fail' operations never took effect and are dropped. 'unknown' (and
   'pending') operations may take effect at any point after their invocation
   or never: their completion time is +infinity and the search may leave them
   out; their return value is unknown, so an unknown cas, if placed, swaps
   exactly when current == expected. An unknown get has no effect and no
   observed result, so it is dropped.

   Version-CAS (expected_version != 0) is treated conservatively, since the
   register does not track versions: a successful one is a put of its new
   value with the precondition NOT checked; a failed one is dropped; an
   unknown one is an unknown put. So version-CAS can never cause a false
   alarm, but violations of its precondition go unseen; histories meant to be
   checked strictly should use value-CAS. expected_version == 0 means "must
   be absent" and is checked exactly (as expected=None).

3. Search (Wing & Gong 1993, with Lowe 2017's memoisation). The invocations
   and completions of the required operations (known outcome) sit in one
   time-ordered doubly linked list, the invocations of the optional ones
   (unknown outcome) in a second one. Walk the first from the front: at an
   invocation, try to linearize that operation now, i.e. apply it to the
   register; if that is allowed and the configuration is new (see below),
   push it on a stack, unlink its entries and start again from the front.
   At a completion, the earliest-completing operation not yet linearized,
   nothing more may be placed before that operation: make a second pass
   over the optional operations invoked by then, the same way. When that
   too is exhausted, pop the last choice, relink it, and try the next
   candidate after it. Success when every required operation is
   linearized (optional ones left over never happened); failure when the
   stack is empty.

   The cache holds configurations already explored, as Lowe's pairs
   (bitset of linearized operations, register value) with the bitset a
   Python int. Unknown operations would multiply those pairs by every
   subset of them that could have happened, so three refinements, each
   exact (they never change a verdict, only the work; a unit test checks
   the verdicts against brute force):
   - Subsumption: a configuration is skipped if a cached one has the same
     required operations and value and a SUBSET of its optional ones: that
     one can do everything this one can, by skipping the extra unknowns.
     Trying required operations first at each point (the two passes) makes
     the smaller subsets come first.
   - Unread values: a written value that no operation ever reads or
     compares against is replaced by one `_UNREAD` marker, since the model
     cannot tell such values apart (`_anonymise`).
   - Classes: optional operations with the same effect are interchangeable
     once invoked, so the cache records how many of each class were placed,
     not which (`_number`).

4. Multi-key operations (ranges, transactions: issue 14). Keys that one
   operation touches together are checked together, as one GROUP whose
   state is a tuple of register values (tests/fault/txnmodel.py: the
   groups, each operation as a conditional atomic step on that tuple, the
   same treatment of unknown outcomes). The search is the same, with that
   state in place of the register's value (`_Joint`); keys no multi-key
   operation touches keep the register check.

5. Diagnostics. Whenever the search backtracks from a deeper point than ever
   before, it notes that prefix, the operation whose completion blocked it
   and the candidates it could not place. On failure that deepest point is
   reported with a reason per candidate and the surrounding subhistory.

A per-key (per-group) step and time budget turns a search that runs too long into an
UNKNOWN verdict, which is not a pass.

Usage from the command line: `python -m tests.fault.linearizability H.jsonl
[H2.jsonl ...]` merges the files, checks them and exits 0 (linearizable),
1 (violation) or 2 (undecided).
"""

from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from typing import Any

from tests.fault import txnmodel
from tests.fault.history import History, Kind, Operation, Outcome, Value
from tests.fault.txnmodel import INVALID as _INVALID
from tests.fault.txnmodel import UNREAD as _UNREAD

DEFAULT_MAX_STEPS = 10_000_000
DEFAULT_MAX_SECONDS = 60.0
_PREFIX_SHOWN = 8
_WINDOW_SHOWN = 40


class Verdict(StrEnum):
    LINEARIZABLE = "linearizable"
    VIOLATION = "violation"
    UNKNOWN = "unknown"  # budget exhausted: neither a pass nor a proof of a bug


class _Code(IntEnum):
    """Register steps; `a` and `b` are the step's two arguments."""

    WRITE = 0  # state := a
    READ = 1  # requires state == a
    CAS_OK = 2  # requires state == a; state := b
    CAS_FALSE = 3  # requires state != a
    CAS_MAYBE = 4  # unknown outcome: if state == a then state := b
    DELETE_PRESENT = 5  # requires state is not None; state := None
    DELETE_ABSENT = 6  # requires state is None
    JOINT = 7  # a txnmodel.Program `a` on a group's joint state


@dataclass(frozen=True, slots=True)
class _Step:
    """One operation as the register model sees it."""

    op: Operation
    code: _Code
    a: Any
    b: Any
    required: bool  # completed with a known outcome: must be linearized
    index: int  # required: its bit; optional: its class's first bit (see _number)
    cls: int  # optional: its class, the steps with the same effect
    call: int
    ret: float  # +inf when the completion is unknown


def _apply(code: int, a: Any, b: Any, state: Any) -> Any:
    """The register's sequential specification: new state, or _INVALID."""
    if code == _Code.WRITE:
        return a
    if code == _Code.READ:
        return state if state == a else _INVALID
    if code == _Code.CAS_OK:
        return b if state == a else _INVALID
    if code == _Code.CAS_FALSE:
        return state if state != a else _INVALID
    if code == _Code.CAS_MAYBE:
        return b if state == a else state
    if code == _Code.DELETE_PRESENT:
        return None if state is not None else _INVALID
    return None if state is None else _INVALID


def _explain(step: _Step, state: Any) -> str:
    """Why `step` cannot be linearized when the register holds `state`."""
    if _apply(step.code, step.a, step.b, state) is not _INVALID:
        return "allowed here, but every continuation from here was a dead end"
    return {
        _Code.READ: f"read {step.a!r} but the register holds {state!r}",
        _Code.CAS_OK: f"swapped expecting {step.a!r} but the register holds {state!r}",
        _Code.CAS_FALSE: f"reported a failed swap but the register holds the expected {state!r}",
        _Code.DELETE_PRESENT: "reported the key existed but it is absent",
        _Code.DELETE_ABSENT: f"reported NOT_FOUND but the register holds {state!r}",
    }[step.code]


def _normalise(op: Operation) -> _Step | None:
    """Maps a recorded operation to a register step; None drops it."""
    if op.outcome is Outcome.FAIL:
        return None
    known = op.outcome is Outcome.OK
    ret = float(op.complete_ns) if known and op.complete_ns is not None else math.inf
    if known and op.complete_ns is None:
        raise ValueError(f"ok operation without a completion time: {op.describe()}")

    def mk(code: _Code, a: Any = None, b: Any = None) -> _Step:
        return _Step(op, code, a, b, known, -1, -1, op.invoke_ns, ret)

    if op.kind is Kind.PUT:
        return mk(_Code.WRITE, op.value)
    if op.kind is Kind.GET:
        return mk(_Code.READ, op.result) if known else None
    if op.kind is Kind.DELETE:
        if not known or op.result is None:
            return mk(_Code.WRITE, None)
        return mk(_Code.DELETE_PRESENT if op.result else _Code.DELETE_ABSENT)
    if op.by_version:  # conservative: see the module docstring
        if known and not op.result:
            return None
        return mk(_Code.WRITE, op.value)
    if not known:
        return mk(_Code.CAS_MAYBE, op.expected, op.value)
    if not isinstance(op.result, bool):
        raise TypeError(f"cas result must be a bool: {op.describe()}")
    return mk(_Code.CAS_OK if op.result else _Code.CAS_FALSE, op.expected, op.value)


def _anonymise(steps: list[_Step]) -> list[_Step]:
    """Replaces written values that no step ever compares with by _UNREAD."""
    compared = {
        s.a for s in steps if s.code in (_Code.READ, _Code.CAS_OK, _Code.CAS_FALSE, _Code.CAS_MAYBE)
    }

    def anon(v: Any) -> Any:
        return v if v is None or v in compared else _UNREAD

    out = []
    for s in steps:
        if s.code == _Code.WRITE:
            s = replace(s, a=anon(s.a))
        elif s.code in (_Code.CAS_OK, _Code.CAS_MAYBE):
            s = replace(s, b=anon(s.b))
        out.append(s)
    return out


def _number(steps: list[_Step]) -> list[_Step]:
    """Gives each required step its own bit, and each class of optional
    steps with the same effect a run of bits, one per member.

    Members of a class are interchangeable once invoked: which of them the
    search placed does not matter, only how many. So the optional set in the
    cache records "the first n bits of the class", which makes configurations
    that differ only in which member was used compare equal."""
    classes: dict[tuple[Any, Any, Any], list[int]] = defaultdict(list)
    out, n_required = list(steps), 0
    for j, s in enumerate(steps):
        if s.required:
            out[j] = replace(s, index=n_required)
            n_required += 1
        else:
            classes[(s.code, s.a, s.b)].append(j)
    base = 0
    for cls, members in enumerate(classes.values()):
        for j in members:
            out[j] = replace(out[j], index=base, cls=cls)
        base += len(members)
    return out


class _Register:
    """The model of one key: a register, the steps of `_normalise`."""

    initial: Any = None
    apply = staticmethod(_apply)

    def explain(self, step: _Step, state: Any) -> str:
        return _explain(step, state)

    def real(self, steps: list[_Step]) -> list[_Step]:
        """The steps with the values `_anonymise` replaced, for diagnostics."""
        return [_normalise(s.op) or s for s in steps]

    def show(self, state: Any) -> Any:
        return state


class _Joint:
    """The model of a group of keys: a tuple of registers, the programs of
    `txnmodel.program` (`real`: before `txnmodel.anonymise`, in step order)."""

    apply = staticmethod(txnmodel.apply)

    def __init__(self, keys: tuple[Value, ...], real: list[txnmodel.Program]) -> None:
        self.keys = keys
        self.initial: Any = (None,) * len(keys)
        self._real = real

    def explain(self, step: _Step, state: Any) -> str:
        return txnmodel.explain(step.a, state, self.keys)

    def real(self, steps: list[_Step]) -> list[_Step]:
        return [replace(s, a=p) for s, p in zip(steps, self._real, strict=True)]

    def show(self, state: Any) -> Any:
        return dict(zip(self.keys, state, strict=True))


_Model = _Register | _Joint


# -- results -----------------------------------------------------------------


@dataclass(frozen=True)
class Diagnostic:
    """Where the search for one key (or group) got stuck (its deepest point).

    `prefix`: the longest linearizable prefix found, in linearization order.
    `state`: the register after it (for a group: {key: value}). `blocked`:
    the operation whose completion came while none of the `candidates` could
    be placed (None if the search ran out of operations). `candidates`:
    (operation, reason) for every operation invoked before that completion
    and not in the prefix.
    `window`: the subhistory around that point, by invocation time.
    """

    key: Value | tuple[Value, ...]
    prefix: list[Operation]
    state: Any
    blocked: Operation | None
    candidates: list[tuple[Operation, str]]
    window: list[Operation]

    def __str__(self) -> str:
        t0 = min((o.invoke_ns for o in self.window), default=0)
        shown = min(len(self.prefix), _PREFIX_SHOWN)
        out = [
            f"longest linearizable prefix: {len(self.prefix)} operations; the last "
            + f"{shown}, in linearization order:"
        ]
        out += [f"    {_line(o, t0)}" for o in self.prefix[-_PREFIX_SHOWN:]]
        what = "state" if isinstance(self.key, tuple) else "register"
        out.append(f"  {what} after the prefix: {self.state!r}")
        if self.blocked is not None:
            out.append(f"  stuck at the completion of  {_line(self.blocked, t0)}")
        out.append("  no pending operation can be placed next:")
        out += [f"    {_line(o, t0)}\n        -> {why}" for o, why in self.candidates]
        out.append(
            f"  subhistory around that point ({len(self.window)} operations, "
            "by invocation; times in ms):"
        )
        out += [f"    {_line(o, t0)}" for o in self.window[:_WINDOW_SHOWN]]
        if len(self.window) > _WINDOW_SHOWN:
            out.append(f"    ... {len(self.window) - _WINDOW_SHOWN} more")
        return "\n".join(out)


def _line(op: Operation, t0: int) -> str:
    end = (
        "   ?   "
        if op.outcome is not Outcome.OK or op.complete_ns is None
        else (f"{(op.complete_ns - t0) / 1e6:7.3f}")
    )
    return f"#{op.id:<5} [{(op.invoke_ns - t0) / 1e6:7.3f} .. {end}] {op.describe()}"


@dataclass(frozen=True)
class KeyResult:
    """The verdict for one key, or for a group of keys checked together
    (`key` is then the tuple of its keys). `diagnostic` is set for VIOLATION
    and, as the deepest point reached so far, for UNKNOWN."""

    key: Value | tuple[Value, ...]
    verdict: Verdict
    operations: int  # operations the search had to consider
    dropped: int  # 'fail' operations, unknown gets, failed version-CAS
    steps: int
    seconds: float
    diagnostic: Diagnostic | None = None
    reason: str = ""

    def __str__(self) -> str:
        name = (
            "keys " + (", ".join(map(repr, self.key)) or "(none)")
            if isinstance(self.key, tuple)
            else f"key {self.key!r}"
        )
        head = (
            f"{name}: {self.verdict.value} ({self.operations} operations, "
            f"{self.dropped} dropped, {self.steps} steps, {self.seconds:.2f}s)"
        )
        if self.reason:
            head += f"\n  {self.reason}"
        if self.diagnostic is not None:
            head += "\n  " + str(self.diagnostic)
        return head


@dataclass(frozen=True)
class Result:
    """The verdict for a whole history: one `KeyResult` per key, or per
    group of keys checked together (keyed by the tuple of its keys)."""

    keys: dict[Value | tuple[Value, ...], KeyResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True only if every key is proven linearizable."""
        return all(k.verdict is Verdict.LINEARIZABLE for k in self.keys.values())

    @property
    def verdict(self) -> Verdict:
        verdicts = {k.verdict for k in self.keys.values()}
        for v in (Verdict.VIOLATION, Verdict.UNKNOWN):
            if v in verdicts:
                return v
        return Verdict.LINEARIZABLE

    def violations(self) -> list[KeyResult]:
        return [k for k in self.keys.values() if k.verdict is Verdict.VIOLATION]

    def undecided(self) -> list[KeyResult]:
        return [k for k in self.keys.values() if k.verdict is Verdict.UNKNOWN]

    def report(self) -> str:
        """The overall verdict, then every key that is not linearizable."""
        n_ops = sum(k.operations for k in self.keys.values())
        joint = [k for k in self.keys if isinstance(k, tuple)]
        n_keys = len(self.keys) - len(joint) + sum(map(len, joint))
        together = f" ({len(joint)} group(s) of keys checked together)" if joint else ""
        lines = [
            f"{self.verdict.value}: {n_keys} keys{together}, {n_ops} operations checked, "
            + f"{len(self.violations())} violations, {len(self.undecided())} undecided"
        ]
        lines += [str(k) for k in self.violations() + self.undecided()]
        return "\n".join(lines)

    __str__ = report


# -- the search --------------------------------------------------------------


class _Search:
    """Wing & Gong's search with Lowe's cache over one key's register steps
    (or a group's joint steps: `model`)."""

    def __init__(self, steps: list[_Step], model: _Model | None = None) -> None:
        self.model = model = _Register() if model is None else model
        self.steps = steps = _number(steps)
        ends = sorted(
            [(s.call, 0, i) for i, s in enumerate(steps) if s.required]
            + [(s.ret, 1, i) for i, s in enumerate(steps) if s.required]
        )
        maybes = sorted((s.call, 0, i) for i, s in enumerate(steps) if not s.required)
        # Two chains in one set of arrays, each between a head sentinel and a
        # tail sentinel that reads as a completion at +infinity:
        #   entry 0 .. TAIL: invocations and completions of required steps;
        #   OPT .. end: invocations of optional steps, in invocation order.
        chain = [(0, 1, -1)] + ends + [(math.inf, 1, -1)]
        self.opt_head = len(chain)
        chain += [(0, 1, -1)] + maybes + [(math.inf, 1, -1)]
        self.op = [i for _, _, i in chain]
        self.is_call = [kind == 0 for _, kind, _ in chain]
        self.time = [t for t, _, _ in chain]
        n, h = len(chain), self.opt_head
        self.nxt = [*range(1, h), h - 1, *range(h + 1, n), n - 1]
        self.prv = [0, *range(h - 1), h, *range(h, n - 1)]
        self.ret_entry = [-1] * len(steps)
        for e, (_, kind, i) in enumerate(chain):
            if kind == 1 and i >= 0:
                self.ret_entry[i] = e
        self.best: tuple[list[int], int, list[int]] | None = None
        self.best_depth = -1
        self.steps_taken = 0
        self.known = 0  # bitset of linearized required steps
        self.unknown = 0  # bitset of linearized optional steps
        self.cache: dict[tuple[int, Any], list[int]] = {(0, model.initial): [0]}
        self.used = [0] * len(steps)  # per class of optional steps: how many placed

    def _unlink(self, e: int) -> None:
        nxt, prv = self.nxt, self.prv
        nxt[prv[e]] = nxt[e]
        prv[nxt[e]] = prv[e]

    def _relink(self, e: int) -> None:
        self.nxt[self.prv[e]] = e
        self.prv[self.nxt[e]] = e

    def _lift(self, call: int) -> None:
        self._unlink(call)
        ret = self.ret_entry[self.op[call]]
        if ret >= 0:
            self._unlink(ret)

    def _unlift(self, call: int) -> None:
        ret = self.ret_entry[self.op[call]]
        if ret >= 0:
            self._relink(ret)
        self._relink(call)

    def _note_stuck(self, stack: list[tuple[int, Any, int]], depth: int, at: int) -> None:
        """Remembers the point where the search, having placed the most
        required operations (`depth`), had to backtrack: `at` is the
        completion entry that nothing more could be placed before."""
        if depth <= self.best_depth:
            return
        self.best_depth = depth
        pending, e = [], self.nxt[0]
        while e != at:
            pending.append(self.op[e])
            e = self.nxt[e]
        e = self.nxt[self.opt_head]
        while self.time[e] <= self.time[at]:
            pending.append(self.op[e])
            e = self.nxt[e]
        self.best = ([self.op[c] for c, *_ in stack], self.op[at], pending)

    def run(self, max_steps: int | None, deadline: float | None) -> Verdict:
        """Returns LINEARIZABLE, VIOLATION or UNKNOWN (budget spent).

        At each point the walk makes two passes: first over the required
        steps invoked before the earliest pending completion (`at`), then
        over the optional ones invoked by then, so that "the unknown never
        happened" is explored first and `_fresh` can prune alternatives."""
        steps, nxt, is_call, op_of, when = self.steps, self.nxt, self.is_call, self.op, self.time
        remaining = total = sum(s.required for s in steps)
        stack: list[tuple[int, Any, int]] = []  # (call entry, state before, `at`)
        state: Any = self.model.initial
        apply = self.model.apply
        e, at, n = nxt[0], -1, 0  # at == -1: first pass
        limit = math.inf if max_steps is None else max_steps
        while remaining:
            n += 1
            if n > limit or (n & 0x3FF == 0 and deadline and time.monotonic() > deadline):
                self.steps_taken = n
                return Verdict.UNKNOWN
            if is_call[e] and (at < 0 or when[e] <= when[at]):
                s = steps[op_of[e]]
                new = apply(s.code, s.a, s.b, state)
                if new is not _INVALID and self._fresh(s, new):
                    stack.append((e, state, at))
                    state = new
                    self._lift(e)
                    remaining -= s.required
                    e, at = nxt[0], -1
                    continue
                e = nxt[e]
            elif at < 0:
                self._note_stuck(stack, total - remaining, e)
                e, at = nxt[self.opt_head], e
            else:
                if not stack:
                    self.steps_taken = n
                    return Verdict.VIOLATION
                e, state, at = stack.pop()
                self._forget(steps[op_of[e]])
                self._unlift(e)
                remaining += steps[op_of[e]].required
                e = nxt[e]
        self.steps_taken = n
        return Verdict.LINEARIZABLE

    def _fresh(self, s: _Step, new: Any) -> bool:
        """Linearizes `s` into the sets if the configuration is new.

        Lowe's cache, keyed by (required operations linearized, state), holds
        the sets of optional operations linearized with them. A configuration
        is pruned when a cached one has a SUBSET of its optional operations:
        that one can do everything this one can (it may still skip or place
        the extra unknowns), and it has been, or is being, explored."""
        known, unknown = self.known, self.unknown
        if s.required:
            known |= 1 << s.index
        else:
            unknown |= 1 << (s.index + self.used[s.cls])
        seen = self.cache.get((known, new))
        if seen is None:
            self.cache[(known, new)] = [unknown]
        elif any(old & ~unknown == 0 for old in seen):
            return False
        else:
            seen.append(unknown)
        self.known, self.unknown = known, unknown
        if not s.required:
            self.used[s.cls] += 1
        return True

    def _forget(self, s: _Step) -> None:
        if s.required:
            self.known ^= 1 << s.index
        else:
            self.used[s.cls] -= 1
            self.unknown ^= 1 << (s.index + self.used[s.cls])

    def diagnostic(self, key: Value | tuple[Value, ...]) -> Diagnostic | None:
        if self.best is None:
            return None
        prefix_ix, blocked_ix, pending_ix = self.best
        # Replay with the real values (the search ran on anonymised ones).
        model = self.model
        steps = model.real(self.steps)
        state = model.initial
        for i in prefix_ix:
            state = model.apply(steps[i].code, steps[i].a, steps[i].b, state)
        blocked = steps[blocked_ix]
        candidates = [(steps[i].op, model.explain(steps[i], state)) for i in pending_ix]
        # The window: the required operations overlapping the stretch from the
        # last few placed ones to the blocking completion, the unknown ones
        # placed in that stretch, and the candidates.
        tail = prefix_ix[-_PREFIX_SHOWN:]
        lo = min(steps[i].call for i in tail + pending_ix if steps[i].required)
        window = {
            i for i, s in enumerate(steps) if s.required and s.call <= blocked.ret and s.ret >= lo
        }
        window.update(tail, pending_ix)
        return Diagnostic(
            key,
            [steps[i].op for i in prefix_ix],
            model.show(state),
            blocked.op,
            candidates,
            [steps[i].op for i in sorted(window)],
        )


# -- entry points ------------------------------------------------------------


def check_key(
    key: Value,
    ops: Iterable[Operation],
    *,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
) -> KeyResult:
    """Checks the operations on one key against a register."""
    ops = sorted(ops, key=lambda o: (o.invoke_ns, o.id))
    steps = _anonymise([s for s in map(_normalise, ops) if s is not None])
    return _search(key, steps, _Register(), len(ops), max_steps, max_seconds)


def check_group(
    keys: Iterable[Value],
    ops: Iterable[Operation],
    *,
    universe: Iterable[Value] | None = None,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
) -> KeyResult:
    """Checks the operations on a group of keys against their joint state
    (tests/fault/txnmodel.py). `keys` must hold every key the operations
    touch; `universe` is every key of the whole history (default: those of
    `ops`), which says which keys a range read."""
    ops = sorted(ops, key=lambda o: (o.invoke_ns, o.id))
    names = tuple(sorted(set(keys), key=txnmodel.sort_key))
    known_keys = txnmodel.universe(ops if universe is None else [])
    if universe is not None:
        known_keys = sorted(universe, key=txnmodel.sort_key)
    ix = {k: i for i, k in enumerate(names)}
    kept: list[tuple[Operation, txnmodel.Program]] = []
    try:
        for op in ops:
            prog = txnmodel.program(op, ix, known_keys)
            if prog is not None:
                kept.append((op, prog))
    except txnmodel.Unmodelable as exc:
        return KeyResult(names, Verdict.UNKNOWN, len(ops), 0, 0, 0.0, None, f"{exc}: NOT a pass")
    real = [p for _, p in kept]
    if any(op.outcome is Outcome.OK and op.complete_ns is None for op, _ in kept):
        raise ValueError("ok operation without a completion time")
    steps = [
        _Step(
            op,
            _Code.JOINT,
            prog,
            None,
            op.outcome is Outcome.OK,
            -1,
            -1,
            op.invoke_ns,
            _ret(op),
        )
        for (op, _), prog in zip(kept, txnmodel.anonymise(real), strict=True)
    ]
    return _search(names, steps, _Joint(names, real), len(ops), max_steps, max_seconds)


def _ret(op: Operation) -> float:
    """The completion time the search uses: +infinity unless known."""
    if op.outcome is not Outcome.OK or op.complete_ns is None:
        return math.inf
    return float(op.complete_ns)


def _search(
    key: Value | tuple[Value, ...],
    steps: list[_Step],
    model: _Model,
    n_ops: int,
    max_steps: int | None,
    max_seconds: float | None,
) -> KeyResult:
    started = time.monotonic()
    deadline = None if max_seconds is None else started + max_seconds
    search = _Search(steps, model)
    verdict = search.run(max_steps, deadline)
    elapsed = time.monotonic() - started
    reason = ""
    if verdict is Verdict.UNKNOWN:
        reason = (
            f"budget exhausted ({search.steps_taken} steps, {elapsed:.1f}s; limits "
            f"{max_steps} steps, {max_seconds}s): NOT a pass"
        )
    diagnostic = None if verdict is Verdict.LINEARIZABLE else search.diagnostic(key)
    return KeyResult(
        key,
        verdict,
        len(steps),
        n_ops - len(steps),
        search.steps_taken,
        elapsed,
        diagnostic,
        reason,
    )


def check(
    history: History | Iterable[Operation],
    *,
    max_steps_per_key: int | None = DEFAULT_MAX_STEPS,
    max_seconds_per_key: float | None = DEFAULT_MAX_SECONDS,
) -> Result:
    """Checks a whole history, key by key, and the keys that multi-key
    operations tie together group by group. `None` budgets mean unlimited."""
    ops = list(history)
    universe = txnmodel.universe(ops)
    results: dict[Value | tuple[Value, ...], KeyResult] = {}
    budget = {"max_steps": max_steps_per_key, "max_seconds": max_seconds_per_key}
    for keys, group, joint in txnmodel.groups(ops):
        if joint:
            results[keys] = check_group(keys, group, universe=universe, **budget)
        else:
            results[keys[0]] = check_key(keys[0], group, **budget)
    return Result(results)


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m tests.fault.linearizability HISTORY.jsonl [...]")
        return 2
    history = History.merge(History.load(p) for p in paths)
    print(history.summary_text())
    result = check(history)
    print(result.report())
    return {Verdict.LINEARIZABLE: 0, Verdict.VIOLATION: 1, Verdict.UNKNOWN: 2}[result.verdict]


if __name__ == "__main__":
    sys.exit(main())
