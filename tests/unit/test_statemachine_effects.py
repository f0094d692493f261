"""KVStateMachine's effects (kvstore/statemachine.py, "Effects"), on LevelDB
and on MemoryDB: a follower that writes the leader's captured batch with
`apply_effects` ends in exactly the state it would have reached executing
the same slots itself: every LevelDB key (data, sessions, leases, their
indexes, `m state`, its own watch event log and `mwatch`) and the in-memory
state (meta, membership schedule, session count, event span; the session
floor and the event log's oldest revision stay lower bounds of what is
stored). Effects that do not fit (another start, other slots, another
generation, malformed bytes) are refused with nothing changed."""

# ruff: noqa: F811 - the fixture of test_statemachine is imported by name

from __future__ import annotations

import dataclasses
import random
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest

from kvstore.events import EVENT_PREFIX, INLINE_VALUE_BYTES, WATCH_META_KEY, record_events
from kvstore.limits import SESSION_TTL_MS
from kvstore.membership import (
    Change,
    ChangeKind,
    Membership,
    apply_command,
    bootstrap,
    encode_change,
)
from kvstore.protocol import (
    FROM_KEY,
    Compare,
    CompareOp,
    CompareTarget,
    Op,
    Request,
    Txn,
    TxnOp,
    TxnOpKind,
    encode_clock,
    encode_lease_expiry,
)
from kvstore.statemachine import EFFECTS_MAX_BYTES, KVStateMachine, Result
from replica.inmem import MemoryDB
from tests.unit.test_statemachine import new_db  # noqa: F401 - the fixture (plyvel, MemoryDB)
from tests.unit.test_statemachine_leases import LeaseClient

T0 = 1_700_000_000_000  # a log time (unix ms)
META_KEY = b"mstate"
READER = b"r" * 16
Entries = list[tuple[int, tuple[bytes, ...]]]
NewDB = Callable[[], Any]


# --- commands ------------------------------------------------------------------


class Client(LeaseClient):
    """Builds encoded write commands (leases, ranges and transactions too)
    with increasing seq numbers."""

    def __init__(self, client_id: bytes) -> None:
        super().__init__(client_id)
        self.last_used = 0  # the log time of its last command (Workload)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> bytes:
        return self._cmd(op=Op.PUT, key=key, value=value, lease=lease)

    def delete_range(self, key: bytes, range_end: bytes | None) -> bytes:
        return self._cmd(op=Op.DELETE_RANGE, key=key, range_end=range_end)

    def txn(self, compares: Any = (), success: Any = (), failure: Any = ()) -> bytes:
        return self._cmd(op=Op.TXN, txn=Txn(tuple(compares), tuple(success), tuple(failure)))


def clk(unix_ms: int, ttl_ms: int | None = SESSION_TTL_MS) -> bytes:
    """A clock command; `ttl_ms` None: the old 9-byte form (TTL unchanged)."""
    if ttl_ms is None:
        return encode_clock(unix_ms, 1)[:9]
    return encode_clock(unix_ms, ttl_ms)


BOOTSTRAP = bootstrap([(1, "p1", "c1"), (2, "p2", "c2"), (3, "p3", "c3")])


class Workload:
    """A random log: clock commands (session TTLs of seconds, time jumps
    past them), puts (small, over INLINE_VALUE_BYTES, and some large enough
    that a batch of them is over EFFECTS_MAX_BYTES), deletes, CAS, range
    deletes, transactions, leases (grant, attach, keep-alive, revoke, the
    leader's expiry command), retries, stale and reused seqs, bad commands,
    membership changes and no-op slots."""

    KEYS = [b"k%02d" % i for i in range(24)]

    def __init__(self, rng: random.Random, large: bool = True) -> None:
        self.rng = rng
        self.large = large
        self.now = T0
        self.ttl: int | None = 4000
        self.next_id = 1
        self.clients = [self._new_client() for _ in range(12)]
        self.recent: list[bytes] = []
        self.membership: Membership = BOOTSTRAP
        self.next_replica = 4

    def _new_client(self) -> Client:
        self.next_id += 1
        return Client(self.next_id.to_bytes(16, "big"))

    def key(self) -> bytes:
        return self.rng.choice(self.KEYS)

    def value(self) -> bytes:
        r = self.rng.random()
        if r < 0.70:
            size = self.rng.randrange(0, 9)
        elif r < 0.85:
            size = self.rng.randrange(100, 400)
        elif r < 0.96 or not self.large:
            size = self.rng.randrange(INLINE_VALUE_BYTES + 1, 3000)
        elif r < 0.99:
            size = self.rng.randrange(20_000, 40_000)
        else:
            size = self.rng.randrange(EFFECTS_MAX_BYTES, EFFECTS_MAX_BYTES + 10_000)
        return bytes([self.rng.randrange(256)]) * size

    def _range(self) -> tuple[bytes, bytes | None]:
        a, b = sorted(self.rng.sample(self.KEYS, 2))
        return self.rng.choice([(a, b), (a, FROM_KEY), (a, None), (b"k", b"l")])

    def _compare(self) -> Compare:
        rng = self.rng
        target = rng.choice(list(CompareTarget))
        op = rng.choice(list(CompareOp))
        operand: Any
        if target is CompareTarget.VALUE:
            operand = rng.choice([b"", b"\x00" * 3, b"x"])
        elif target is CompareTarget.EXISTS:
            operand = rng.random() < 0.5
            op = rng.choice([CompareOp.EQUAL, CompareOp.NOT_EQUAL])
        else:
            operand = rng.randrange(0, 40)
        return Compare(target, op, self.key(), operand)

    def _txn_ops(self) -> list[TxnOp]:
        ops = []
        for _ in range(self.rng.randrange(4)):
            kind = self.rng.choice(list(TxnOpKind))
            if kind is TxnOpKind.PUT:
                ops.append(TxnOp(kind, self.key(), value=self.value()))
            else:
                key, end = self._range()
                ops.append(TxnOp(kind, key, end))
        return ops

    def command(self) -> bytes:
        rng = self.rng
        if self.recent and rng.random() < 0.08:
            return rng.choice(self.recent)  # a retry (or, much later, a stale one)
        if rng.random() < 0.02:
            return rng.choice([b"\x93\x01", b"garbage", b"\x91\xc0"])  # bad commands
        if rng.random() < 0.04:
            return encode_lease_expiry(rng.sample(range(1, 7), rng.randrange(1, 4)))
        i = rng.randrange(len(self.clients))
        idle = self.now - self.clients[i].last_used > (self.ttl or 4000)
        if rng.random() < (0.85 if idle else 0.03):  # a new process: a new session
            self.clients[i] = self._new_client()  # (some idle ones go on: SESSION_EXPIRED)
        c = self.clients[i]
        c.last_used = self.now
        if rng.random() < 0.04 and c.seq > 1:  # reused id, stale or skipped seq
            c.seq = rng.randrange(0, c.seq + 2)
        r = rng.random()
        lease = rng.randrange(1, 7)
        if r < 0.35:
            cmd = c.put(self.key(), self.value(), lease if rng.random() < 0.25 else 0)
        elif r < 0.45:
            cmd = c.delete(self.key())
        elif r < 0.55:
            if rng.random() < 0.5:
                cmd = c.cas(self.key(), self.value(), expected_version=rng.randrange(0, 40))
            else:
                cmd = c.cas(self.key(), self.value(), expected_value=rng.choice([b"", b"x"]))
        elif r < 0.62:
            cmd = c.delete_range(*self._range())
        elif r < 0.75:
            compares = [self._compare() for _ in range(rng.randrange(3))]
            cmd = c.txn(compares, self._txn_ops(), self._txn_ops())
        elif r < 0.85:
            cmd = c.grant(lease, rng.randrange(1, 4))
        elif r < 0.93:
            cmd = c.keep_alive(lease)
        else:
            cmd = c.revoke(lease)
        self.recent = (self.recent + [cmd])[-30:]
        return cmd

    def change(self) -> bytes:
        """A membership change, stale (against an older epoch) now and then."""
        rng, m = self.rng, self.membership
        waiting = sorted(m.learners - m.started)
        started = sorted(m.learners & m.started)
        r = rng.random()
        if r < 0.3 or not m.learners:
            rid = self.next_replica
            self.next_replica += 1
            change = Change(ChangeKind.ADD_LEARNER, rid, m.epoch, f"p{rid}", f"c{rid}")
        elif r < 0.5 and waiting:
            change = Change(ChangeKind.JOINED, waiting[0], m.epoch)
        elif r < 0.75 and started:
            change = Change(ChangeKind.PROMOTE, started[0], m.epoch)
        else:
            change = Change(ChangeKind.REMOVE, rng.choice(sorted(m.members)), m.epoch)
        if rng.random() < 0.15:
            change = dataclasses.replace(change, base_epoch=m.epoch - 1)
        change = dataclasses.replace(change, request_id=b"req%d" % rng.randrange(10**6))
        cmd = encode_change(change)
        self.membership = apply_command(m, cmd) or m
        return cmd

    def slot(self) -> tuple[bytes, ...]:
        rng = self.rng
        r = rng.random()
        if r < 0.08:
            return ()  # a no-op
        if r < 0.13:
            return (self.change(),)
        self.now += rng.choice([0, 5, 300, 900, 1700, (self.ttl or 4000) + 1])
        if rng.random() < 0.05:
            self.ttl = rng.choice([None, 2500, 4000, 9000])
        commands = [clk(self.now, self.ttl)] if rng.random() < 0.9 else []
        commands += [self.command() for _ in range(rng.randrange(0, 7))]
        if rng.random() < 0.04:
            commands.append(self.change())
        return tuple(commands)

    def batch(self, start: int, slots: int) -> Entries:
        return [(start + i, self.slot()) for i in range(slots)]


# --- state -----------------------------------------------------------------------


def db_items(sm: KVStateMachine) -> list[tuple[bytes, bytes]]:
    """The whole LevelDB of the state machine (every prefix)."""
    return list(sm._db.iterator())


def _is_event_log(key: bytes) -> bool:
    return key[:1] == EVENT_PREFIX or key == WATCH_META_KEY


def replicated_items(sm: KVStateMachine) -> list[tuple[bytes, bytes]]:
    """The DB but the watch event log, each replica's own."""
    return [(k, v) for k, v in sm._db.iterator() if not _is_event_log(k)]


def span(sm: KVStateMachine) -> tuple[int, int, int]:
    """(floor, count, bytes) of the event log, as `mwatch` records it."""
    return tuple(sm.events._span)  # type: ignore[return-value]


def raw_memory(sm: KVStateMachine) -> tuple[Any, ...]:
    """Every in-memory field apply and apply_effects touch, as they are."""
    schedule = None if sm._schedule is None else sm._schedule.pack()
    return (
        sm._meta,
        schedule,
        sm._schedule_changed,
        sm._session_count,
        span(sm),
        sm.events.oldest,
        sm._session_floor,
        sm._unwritten,
        sm._effects,
        sm._gen,
    )


def memory_state(sm: KVStateMachine, events: bool = True) -> tuple[Any, ...]:
    """The in-memory state that must be equal wherever the DB is."""
    schedule = None if sm._schedule is None else sm._schedule.pack()
    state = (sm._meta, schedule, sm.session_count())
    return (*state, span(sm)) if events else state


def check_bounds(sm: KVStateMachine) -> None:
    """The session floor and the event log's oldest revision are lower
    bounds of what is stored (expiry and trimming seek to them: a bound too
    high skips keys), and the event span counts what is stored."""
    index = sm._gen.index
    first = next(sm._db.iterator(prefix=index, include_value=False), None)
    if first is not None:
        oldest_use = struct.unpack_from(">Q", first, len(index))[0]
        assert sm._session_floor <= oldest_use, "the session floor is above a stored index key"
    records = list(sm._db.iterator(prefix=EVENT_PREFIX))
    events = [event for _, raw in records for event in record_events(raw)]
    if events:
        assert sm.events.oldest <= events[0][0], "events.oldest is above a stored event"
    for key, raw in records:  # a record's key is its last revision
        assert struct.unpack_from(">Q", key, 1)[0] == record_events(raw)[-1][0], "a record's key"
    floor, count, size = span(sm)
    assert count == len(events), "the event span's count is not the events stored"
    assert size == sum(len(raw) + 8 for _, raw in records), "the event span's bytes are off"
    if events:
        assert events[-1][0] <= sm.revision, "a future event"


def check_reopened(sm: KVStateMachine, retention: tuple[int, int] | None) -> None:
    """The in-memory state is what the DB says (a restart reads the same)."""
    fresh = KVStateMachine(sm._db, retention)
    assert memory_state(fresh) == memory_state(sm), (memory_state(fresh), memory_state(sm))


def reads(sm: KVStateMachine) -> list[Any]:
    """What clients read but watches: keys, ranges, leases, the checksum."""
    out: list[Any] = [sm.get(k) for k in Workload.KEYS]
    for key, end, limit in ((b"\0", FROM_KEY, 0), (b"k03", b"k17", 4), (b"k05", None, 0)):
        out.append(sm.read_range(Request(Op.RANGE, READER, 1, key, range_end=end, limit=limit)))
    for lease in range(1, 7):
        out.append((sm.lease(lease), sm.lease_keys(lease)))
    out.append(sm.lease_ids(0, 100))
    out.append(list(sm.leases_due(sm.log_time, 100)))
    out.append((sm.key_count(), sm.checksum(), sm.membership, sm.session_ttl_ms))
    return out


def watch_reads(sm: KVStateMachine, floor: int, prev_kv: bool = True) -> list[Any]:
    """Watches (with previous values, unless not `prev_kv`) from `floor` on."""
    revision = sm.revision
    out = []
    for start in sorted({floor, floor + 1, (floor + revision) // 2, revision, revision + 1}):
        out.append(sm.watch_events(start, b"\0", FROM_KEY, prev_kv=prev_kv))
        out.append(sm.watch_events(start, b"k04", b"k12"))
    return out


def _first_differences(a: list, b: list, limit: int = 4) -> list[Any]:
    da, db_ = dict(a), dict(b)
    keys = sorted(set(da) | set(db_))
    diffs = [(k, da.get(k, "-"), db_.get(k, "-")) for k in keys if da.get(k) != db_.get(k)]
    return [(k, repr(x)[:300], repr(y)[:300]) for k, x, y in diffs[:limit]]


def assert_same(ref: KVStateMachine, *others: KVStateMachine, where: str = "") -> None:
    """Byte-identical DBs (every prefix), the same in-memory state, the
    same reads and watches; the bounds hold."""
    ref_items, ref_memory, ref_reads = db_items(ref), memory_state(ref), reads(ref)
    ref_watch = watch_reads(ref, ref.events.floor - 1)
    check_bounds(ref)
    for n, sm in enumerate(others, 1):
        items = db_items(sm)
        assert items == ref_items, (
            f"{where}: DB of #{n} differs: {_first_differences(ref_items, items)}"
        )
        memory = memory_state(sm)
        assert memory == ref_memory, (
            f"{where}: in-memory state of #{n} differs: {memory} {ref_memory}"
        )
        assert reads(sm) == ref_reads, f"{where}: reads of #{n} differ"
        assert watch_reads(sm, sm.events.floor - 1) == ref_watch, f"{where}: watches of #{n} differ"
        check_bounds(sm)


def assert_same_replicated(a: KVStateMachine, b: KVStateMachine, where: str = "") -> None:
    """Two replicas whose event logs may differ (their applies were split
    differently, or they keep different retentions): the same replicated
    state, and the same events in the revisions both keep."""
    items_a, items_b = replicated_items(a), replicated_items(b)
    diffs = _first_differences(items_a, items_b)
    assert items_a == items_b, f"{where}: replicated state differs: {diffs}"
    assert memory_state(a, events=False) == memory_state(b, events=False), where
    assert reads(a) == reads(b), f"{where}: reads differ"
    floor = max(a.events.floor, b.events.floor)
    common = [
        [event for _, raw in sm._db.iterator(prefix=EVENT_PREFIX) for event in record_events(raw)]
        for sm in (a, b)
    ]
    common = [[((e[0], e[2]), e) for e in events if e[0] >= floor] for events in common]
    diffs = _first_differences(*common)
    assert common[0] == common[1], f"{where}: events from {floor} differ: {diffs}"
    # Without previous values: one replica may keep the revision a previous
    # value was written at, and the other not.
    assert watch_reads(a, floor, False) == watch_reads(b, floor, False), f"{where}: watches differ"
    check_bounds(a)
    check_bounds(b)


def assert_refused(
    sm: KVStateMachine, entries: Entries, effects: bytes, defer_write: bool = False
) -> None:
    """apply_effects returns False, and neither the DB nor the in-memory state changed."""
    before = (db_items(sm), raw_memory(sm))
    assert sm.apply_effects(entries, effects, defer_write=defer_write) is False
    assert db_items(sm) == before[0], "a refused apply_effects changed the DB"
    assert raw_memory(sm) == before[1], "a refused apply_effects changed the in-memory state"


def captured(sm: KVStateMachine, entries: Entries, **kw: Any) -> bytes:
    sm.apply(entries, capture=True, **kw)
    effects = sm.take_effects()
    assert effects is not None
    return effects


def per_slot(entries: Entries, results: list[Result]) -> dict[int, list[Result]]:
    """Each slot's results (apply answers one per command, in log order)."""
    out, i = {}, 0
    for slot, value in entries:
        out[slot] = results[i : i + len(value)]
        i += len(value)
    assert i == len(results)
    return out


# --- 1. the randomized property test ----------------------------------------------


RETENTIONS: list[tuple[int, int] | None] = [None, (40, 1 << 20), (400, 6000), (12, 2500)]


class _Follower:
    """B, with C beside it: B writes A's effects whenever they fit, else
    executes; it lags behind now and then, executes batches itself, splits
    the log its own way (then A's later effects start elsewhere), restarts,
    and is offered effects that must be refused on the way. C executes
    exactly the runs of slots B applies, so B must equal C in everything."""

    def __init__(
        self, b: KVStateMachine, c: KVStateMachine, rng: random.Random, retention: Any
    ) -> None:
        self.b, self.c = b, c
        self.rng = rng
        self.retention = retention
        self.held: list[tuple[Entries, bytes | None]] = []  # A's batches B has not applied
        self.applied: list[tuple[Entries, bytes]] = []  # A's effects B applied before
        self.answers: dict[int, list[Result]] = {}  # A's results by slot
        self.stats: Counter[str] = Counter()
        self.log: list[tuple[str, int, int]] = []  # (how, first slot, end): for reports

    def _run(self, how: str, entries: Entries, effects: bytes | None = None) -> None:
        """B applies `entries` (by effects or executing), C executes them."""
        rng, b = self.rng, self.b
        defer = rng.random() < 0.3
        if effects is not None:
            floor_before = b._session_floor
            assert b.apply_effects(entries, effects, defer_write=defer), "fitting effects refused"
            assert b._session_floor >= floor_before, "apply_effects lowered the session floor"
            if not defer:
                check_bounds(b)  # ... and it is still a lower bound of the index
            self.applied.append((entries, effects))
        else:
            b.apply(entries, defer_write=defer)
        if defer and rng.random() < 0.5:
            b.write_applied()  # else the next apply or apply_effects writes it
        results = self.c.apply(entries)
        expected = [r for slot, _ in entries for r in self.answers.pop(slot)]
        assert results == expected, "the executor answered differently from the leader"
        self.stats[how] += 1
        self.log.append((how, entries[0][0], entries[-1][0] + 1))

    def _refusal(self, i: int) -> None:
        """Effects that do not fit B's applied index or the entries given."""
        rng = self.rng
        entries, effects = self.held[i]
        later = [(e, x) for e, x in self.held[i + 1 :] if x is not None]
        cases: list[tuple[Entries, bytes]] = []
        if later:
            e, x = rng.choice(later)
            cases.append((e, x))  # starts ahead of the applied index
            cases.append((entries + [s for e, _ in self.held[i + 1 :] for s in e], x))
        if self.applied:
            cases.append(rng.choice(self.applied))  # behind: applied before
        if effects is not None:
            if len(entries) > 1:
                cases.append((entries[:-1], effects))  # fewer slots
                cases.append((entries[1:], effects))  # another start
            if i + 1 < len(self.held):
                cases.append((entries + self.held[i + 1][0], effects))  # more slots
            cases.append(([(s + 1, v) for s, v in entries], effects))  # shifted
            cases.append(([], effects))
            cases.append((entries, effects[: rng.randrange(len(effects))]))  # truncated
            cases.append((entries, rng.randbytes(rng.randrange(1, 64))))  # random bytes
        if cases:
            bad_entries, bad = rng.choice(cases)
            assert_refused(self.b, bad_entries, bad, defer_write=rng.random() < 0.5)
            self.stats["refused"] += 1

    def catch_up(self) -> None:
        rng = self.rng
        i = 0
        while i < len(self.held):
            if rng.random() < 0.4:
                self._refusal(i)
            entries, effects = self.held[i]
            r = rng.random()
            if effects is not None and r < 0.65:
                self._run("effects", entries, effects)
                i += 1
            elif r < 0.85 or i + 1 == len(self.held):
                self._run("executed", entries)
                i += 1
            else:  # the rest, split B's own way
                rest = [s for e, _ in self.held[i:] for s in e]
                while rest:
                    n = rng.randrange(1, len(rest) + 1)
                    self._run("resplit", rest[:n])
                    rest = rest[n:]
                i = len(self.held)
        self.held.clear()
        self.b.write_applied()


def _run_random(seed: int, new_db: NewDB, steps: int) -> Counter[str]:
    rng = random.Random(seed)
    retention = RETENTIONS[seed % len(RETENTIONS)]
    # Every fifth seed, B and C keep another watch retention than A's.
    follower_retention = RETENTIONS[(seed + 1) % len(RETENTIONS)] if seed % 5 == 4 else retention
    a = KVStateMachine(new_db(), retention)
    b = KVStateMachine(new_db(), follower_retention)
    c = KVStateMachine(new_db(), follower_retention)
    for sm in (a, b, c):
        sm.membership_schedule(BOOTSTRAP)  # as the driver does at start
    work = Workload(rng)
    f = _Follower(b, c, rng, follower_retention)
    aligned = retention == follower_retention  # A's, B's and C's applies split alike
    for step in range(steps):
        where = f"seed {seed} step {step}"
        entries = work.batch(a.applied_index, rng.choice([1, 1, 1, 2, 3, 5]))
        defer = rng.random() < 0.3
        results = a.apply(entries, defer_write=defer, capture=True)
        effects = a.take_effects()
        assert a.take_effects() is None
        if defer:
            a.write_applied()
        if effects is None:
            f.stats["too large"] += 1
        f.answers.update(per_slot(entries, results))
        f.held.append((entries, effects))
        if rng.random() > 0.65 and len(f.held) <= 4:
            continue  # B lags
        if rng.random() < 0.1:  # B restarts: nothing in memory but what its DB says
            f.b = KVStateMachine(f.b._db, follower_retention)
            f.b.membership_schedule(BOOTSTRAP)
        f.catch_up()
        aligned = aligned and not f.stats["resplit"]
        assert_same(f.c, f.b, where=f"{where} (B against C)")
        if aligned:
            assert_same(a, f.c, where=f"{where} (A against C)")
        else:
            assert_same_replicated(a, f.c, where=f"{where} (A against C)")
        if rng.random() < 0.1:
            check_reopened(a, retention)
            check_reopened(f.b, follower_retention)
    f.catch_up()
    assert_same(f.c, f.b, where=f"seed {seed} end")
    assert_same_replicated(a, f.b, where=f"seed {seed} end")
    f.stats["revision"] = a.revision
    f.stats["sessions"] = a.session_count()
    f.stats["expired sessions"] = int(a._meta.forgot)
    f.stats["membership epoch"] = a.membership.epoch
    return f.stats


@pytest.mark.parametrize("seed", range(30))
def test_effects_give_the_state_of_executing(new_db: NewDB, seed: int) -> None:
    """A (the leader, capture=True); B (A's effects whenever they fit, else
    executes; lags, resplits, restarts, is offered effects that do not fit
    and must change nothing); C (executes the same runs of slots as B).
    After every catch-up: B and C byte-identical (every prefix, the event
    log included) with the same in-memory state, reads and watches; A and C
    the same replicated state and events in the revisions both keep (and
    byte-identical while their applies were split alike)."""
    stats = _run_random(seed, new_db, steps=50)
    assert stats["effects"] >= 5, stats
    assert stats["executed"] + stats["resplit"] >= 1, stats


def test_the_random_workload_reaches_every_path() -> None:
    """The property test does mix what it claims to (on a few seeds)."""
    total: Counter[str] = Counter()
    for seed in range(4):
        total += _run_random(seed, MemoryDB, steps=60)
    for path in ("effects", "executed", "resplit", "refused", "too large"):
        assert total[path] > 0, (path, total)


# --- helpers of the tests below ------------------------------------------------------


def _trio(
    new_db: NewDB, retention: tuple[int, int] | None = None, seed: int = 1, warmup: int = 12
) -> tuple[Workload, list[KVStateMachine]]:
    """Three state machines on the same state: `warmup` batches of a random
    workload (no batch over EFFECTS_MAX_BYTES) executed by each."""
    work = Workload(random.Random(seed), large=False)
    sms = [KVStateMachine(new_db(), retention) for _ in range(3)]
    for sm in sms:
        sm.membership_schedule(BOOTSTRAP)
    for _ in range(warmup):
        entries = work.batch(sms[0].applied_index, 2)
        for sm in sms:
            sm.apply(entries)
    return work, sms


def transfer(src: KVStateMachine, dst: KVStateMachine) -> None:
    """A snapshot install, as the driver does it (dst flips its generation)."""
    with src.snapshot_reader() as reader:
        after = dst.install_begin(b"snap-%d" % reader.index, reader.index, reader.revision)
        while True:
            items, last = reader.chunk(after, 4096)
            if items:
                dst.install_chunk(items, items[-1][0])
            if last is None:
                break
            after = last
    dst.install_finish()
    while dst.collect_garbage(100):
        pass


# --- 2. deferred writes --------------------------------------------------------------


def test_deferred_effects_are_written_by_write_applied_or_the_next_apply(new_db: NewDB) -> None:
    work, (a, b, c) = _trio(new_db)

    def step(slots: int = 2) -> tuple[Entries, bytes]:
        entries = work.batch(a.applied_index, slots)
        effects = captured(a, entries)
        c.apply(entries)
        return entries, effects

    entries, effects = step(3)
    before = db_items(b)
    assert b.apply_effects(entries, effects, defer_write=True)
    assert db_items(b) == before  # nothing written yet ...
    assert (b.applied_index, b.revision) == (a.applied_index, a.revision)  # ... but applied
    b.write_applied()
    assert_same(c, a, b, where="write_applied")
    b.write_applied()  # nothing left: a no-op
    assert_same(c, b, where="a second write_applied")

    # The next apply writes the deferred batch first, then its own.
    entries, effects = step()
    assert b.apply_effects(entries, effects, defer_write=True)
    entries = work.batch(a.applied_index, 2)
    assert b.apply(entries) == a.apply(entries) == c.apply(entries)
    assert_same(c, a, b, where="deferred effects, then apply")
    assert KVStateMachine(b._db).applied_index == c.applied_index

    # ... and so does the next apply_effects, deferred or not.
    for defer_next in (True, False):
        entries, effects = step()
        assert b.apply_effects(entries, effects, defer_write=True)
        first_done = b.applied_index
        entries, effects = step()
        assert b.apply_effects(entries, effects, defer_write=defer_next)
        assert KVStateMachine(b._db).applied_index == (
            first_done if defer_next else a.applied_index
        )
        b.write_applied()
        assert_same(c, a, b, where=f"deferred effects, then effects (deferred: {defer_next})")

    # A deferred apply is written before effects are.
    entries, effects = step()
    b.apply(entries, defer_write=True)
    entries, effects = step()
    assert b.apply_effects(entries, effects)
    assert b._unwritten is None
    assert_same(c, a, b, where="deferred apply, then effects")


def test_effects_of_a_deferred_apply_are_the_same(new_db: NewDB) -> None:
    """The driver's leader captures with defer_write=True and sends the
    effects before its batch is written."""
    work, (a, b, c) = _trio(new_db)
    for _ in range(5):
        entries = work.batch(a.applied_index, 3)
        effects = captured(a, entries, defer_write=True)
        assert b.apply_effects(entries, effects)
        a.write_applied()
        c.apply(entries)
        assert_same(c, a, b)


# --- 3. refusals change nothing ---------------------------------------------------------


def _malformed(effects: bytes) -> dict[str, bytes]:
    """Bytes that are no effects, or effects of the wrong shape."""
    header = msgpack.unpackb(effects)
    pack = msgpack.Packer(use_bin_type=True).pack
    rng = random.Random(5)
    cases = {
        "empty bytes": b"",
        "random bytes": rng.randbytes(300),
        "random bytes, short": rng.randbytes(7),
        "cut in half": effects[: len(effects) // 2],
        "cut by a byte": effects[:-1],
        "a byte too many": effects + b"\x00",
        "a map": pack({"start": header[1]}),
        "an int": pack(header[1]),
        "nil": pack(None),
        "an empty list": pack([]),
        "one field short": pack(header[:-1]),
        "one field more": pack([*header, 0]),
        "another format": pack([header[0] + 1, *header[1:]]),
        "the format before event log records": pack([1, *header[1:]]),
    }
    events = header[7]
    assert events, "the batch has events"
    for name, key, raw in (
        ("an event record of the layout before", b"w" + events[0][1:] + b"\0\0\0\0", events[1]),
        ("an event record without its header", events[0], events[1][:5]),
        ("an event record with unknown flags", events[0], b"\x07" + events[1][1:]),
        ("an event record's key of another prefix", b"d0" + events[0][1:], events[1]),
        ("an event record that is not bytes", events[0], 5),
    ):
        cases[name] = pack([*header[:7], [key, raw, *events[2:]], *header[8:]])
    return cases


def _refusal_setup(new_db: NewDB, defer: bool) -> tuple[Any, ...]:
    """B has applied batch 1 from A's effects (left unwritten if `defer`)
    and stands at batch 2; A has applied batches 1-3, C batch 1."""
    work, (a, b, c) = _trio(new_db)
    w = Client(b"w" * 16)
    now = work.now + 1
    slots = [
        (clk(now), w.put(b"k01", b"L" * 2000), w.put(b"k02", b"v")),
        (w.grant(3, 2), w.put(b"k03", b"leased", lease=3)),
        # batch 2: a large value replaced, a session, events, a lease, a txn
        (clk(now + 1), w.put(b"k01", b"new"), w.delete(b"k02")),
        (w.txn([], [TxnOp(TxnOpKind.PUT, b"k04", value=b"t")]), w.keep_alive(3)),
        (w.delete_range(b"k00", b"k05"),),
        (clk(now + 2), w.put(b"k05", b"v")),
        (),
    ]
    entries = [(a.applied_index + i, value) for i, value in enumerate(slots)]
    batches = []
    for run in (entries[:2], entries[2:5], entries[5:]):
        batches.append((run, captured(a, run)))
    assert b.apply_effects(*batches[0], defer_write=defer)
    c.apply(batches[0][0])
    return a, b, c, batches


def _misfits(batches: list[tuple[Entries, bytes]]) -> dict[str, tuple[Entries, bytes]]:
    (e1, x1), (e2, x2), (e3, x3) = batches
    cases = {
        "applied before (behind)": (e1, x1),
        "ahead of the applied index": (e3, x3),
        "ahead, given the slots from the applied index": (e2 + e3, x3),
        "fewer slots": (e2[:-1], x2),
        "more slots": (e2 + e3[:1], x2),
        "another first slot": (e2[1:], x2),
        "shifted slot numbers": ([(s + 1, v) for s, v in e2], x2),
        "slots numbered from 0": ([(i, v) for i, (_, v) in enumerate(e2)], x2),
        "no slots": ([], x2),
    }
    for name, bad in _malformed(x2).items():
        cases[f"malformed: {name}"] = (e2, bad)
    return cases


@pytest.mark.parametrize("defer", [False, True], ids=["written", "deferred"])
def test_effects_that_do_not_fit_are_refused_and_change_nothing(new_db: NewDB, defer: bool) -> None:
    """Another start, other slots, malformed bytes: False, the DB and the
    in-memory state untouched (a deferred batch stays unwritten); the
    fitting effects still apply afterwards."""
    a, b, c, batches = _refusal_setup(new_db, defer)
    for name, (entries, effects) in _misfits(batches).items():
        before = (db_items(b), raw_memory(b))
        assert b.apply_effects(entries, effects, defer_write=defer) is False, name
        assert db_items(b) == before[0], f"{name}: the DB changed"
        assert raw_memory(b) == before[1], f"{name}: the in-memory state changed"
    assert (b._unwritten is not None) == defer
    for entries, effects in batches[1:]:
        assert b.apply_effects(entries, effects)
        c.apply(entries)
    assert_same(c, a, b)


def _paths(obj: Any, path: tuple[int, ...] = (), depth: int = 0) -> Iterator[tuple[int, ...]]:
    """Paths into nested lists: every top-level item; in a list inside, its
    first, middle and last items, and so on down."""
    if type(obj) is not list or not obj or depth > 3:
        return
    indexes = range(len(obj)) if depth == 0 else sorted({0, len(obj) // 2, len(obj) - 1})
    for i in indexes:
        yield (*path, i)
        yield from _paths(obj[i], (*path, i), depth + 1)


def _kind(items: list) -> str:
    """The kind of a list in effects. "flat": keys and values, in pairs (a
    removed or added item breaks them); "nested": a list of records (of any
    length); else "record": a fixed sequence of fields."""
    if all(type(x) in (bytes, type(None)) for x in items):
        return "flat"
    if all(type(x) is list for x in items):
        return "nested"
    return "record"


_JUNK: list[Any] = [None, "x", 1.5, -1, 2**64 - 1, True, b"\x00", [], [b"x"], {"x": 1}]


def _shape_mutations(effects: bytes) -> Iterator[tuple[str, bytes]]:
    """The effects with one item replaced by a value of another type, or
    removed, or with an item added to a list."""
    header = msgpack.unpackb(effects)
    pack = msgpack.Packer(use_bin_type=True).pack
    for path in _paths(header):
        *up, last = path
        for junk in _JUNK:
            copy = msgpack.unpackb(effects)
            parent = copy
            for i in up:
                parent = parent[i]
            if type(junk) is type(parent[last]):
                continue
            parent[last] = junk
            yield f"{path} = {junk!r}", pack(copy)
        copy = msgpack.unpackb(effects)
        parent = copy
        for i in up:
            parent = parent[i]
        if not up or _kind(parent) != "nested":  # a shape, not just other content
            parent_copy = list(parent)
            del parent[last]
            yield f"{path} removed", pack(copy)
            parent[:] = [*parent_copy, b"x"]
            yield f"{list(up)} + [b'x']", pack(copy)


def test_effects_of_the_wrong_shape_are_refused_or_harmless(new_db: NewDB) -> None:
    """Each item of the effects (each field, and items of the lists in
    them) replaced by a value of another type, removed, or a list given an
    item more: apply_effects never raises; it refuses, changing nothing,
    or (a replacement it cannot tell) writes exactly what executing writes."""
    a, b, c, batches = _refusal_setup(new_db, defer=False)
    (e2, x2) = batches[1]
    c.apply(e2)
    problems = []
    cases = 0
    for name, bad in _shape_mutations(x2):
        cases += 1
        before = (db_items(b), raw_memory(b))
        try:
            accepted = b.apply_effects(e2, bad)
        except Exception as exc:  # noqa: BLE001 - any exception is the finding
            problems.append(f"{name}: raised {type(exc).__name__}: {exc}")
            accepted = None
        if accepted is False:
            if (db_items(b), raw_memory(b)) != before:
                problems.append(f"{name}: refused, but changed the state")
            continue
        if accepted and (db_items(b), memory_state(b)) != (db_items(c), memory_state(c)):
            problems.append(f"{name}: accepted, and the state is not that of executing")
        # Start over from batch 1 (the state was changed, or may have been).
        a, b, c, batches = _refusal_setup(new_db, defer=False)
        c.apply(e2)
    assert cases > 50
    assert not problems, "\n".join(problems)


def _with_meta_record(effects: bytes, change: Callable[[bytes], bytes]) -> bytes:
    """The effects with the `m state` record in them replaced by change(record)."""
    header = msgpack.unpackb(effects)
    (ops,) = [f for f in header if type(f) is list and len(f) >= 2 and f[-2] == META_KEY]
    ops[-1] = change(ops[-1])
    return msgpack.packb(header, use_bin_type=True)


@pytest.mark.parametrize(
    "name, change",
    [
        ("cut short", lambda meta: meta[:20]),
        ("another applied index", lambda meta: struct.pack(">Q", 10**6) + meta[8:]),
        ("another generation", lambda meta: meta[:25] + b"\x01" + meta[26:]),
        ("a malformed membership schedule", lambda meta: meta[:42] + b"\xc1\xc1"),
    ],
)
def test_effects_with_a_malformed_meta_record_are_refused(
    new_db: NewDB, name: str, change: Callable[[bytes], bytes]
) -> None:
    """apply_effects reads the `m state` record of the effects (the applied
    index, the generation, the membership schedule): one it cannot use is
    refused, changing nothing, never an exception halfway."""
    a, b, c, batches = _refusal_setup(new_db, defer=False)
    entries, effects = batches[1]
    bad = _with_meta_record(effects, change)
    assert bad != effects
    assert_refused(b, entries, bad)
    assert b.apply_effects(entries, effects)
    c.apply(entries)
    assert_same(c, b)


@pytest.mark.parametrize("revision", [-1, 10**6, 2**64 - 1])
def test_effects_with_a_replaced_revision_out_of_range_never_raise(
    new_db: NewDB, revision: int
) -> None:
    """The replaced large values of the effects name the revision of the
    event to copy each into; one beyond any revision is refused or
    ignored, never an exception halfway through apply_effects."""
    a, b, c, batches = _refusal_setup(new_db, defer=False)
    entries, effects = batches[1]
    header = msgpack.unpackb(effects)
    (replaced,) = [
        f
        for f in header
        if type(f) is list and f and all(type(x) is list and len(x) == 3 for x in f)
    ]
    assert replaced[0][0] == b"k01"  # the large value batch 2 replaced
    replaced[0][2] = revision
    bad = msgpack.packb(header, use_bin_type=True)
    before = (db_items(b), raw_memory(b))
    if not b.apply_effects(entries, bad):
        assert (db_items(b), raw_memory(b)) == before


def test_effects_of_another_generation_are_refused(new_db: NewDB) -> None:
    """A replica that installed a snapshot (the other generation) at the
    same applied index refuses the leader's effects and executes; effects
    made in its generation, from the same state, fit."""
    work, (a, _, _) = _trio(new_db)
    b, c = KVStateMachine(new_db()), KVStateMachine(new_db())
    for sm in (b, c):
        transfer(a, sm)
        assert (sm.applied_index, sm._gen.number) == (a.applied_index, 1 - a._gen.number)
    assert b._meta.generation != a._meta.generation
    entries = work.batch(a.applied_index, 3)
    effects = captured(a, entries)
    assert_refused(b, entries, effects)
    assert_refused(b, entries, effects, defer_write=True)
    effects_c = captured(c, entries)  # the same slots, from b's state and generation
    assert b.apply_effects(entries, effects_c)
    assert_same(c, b)
    assert reads(a) == reads(b)  # the client's view (a's keys are in the other generation)
    # and the leader's next effects, still of its generation, are refused again
    entries = work.batch(a.applied_index, 2)
    assert_refused(b, entries, captured(a, entries))


# --- 4. take_effects ----------------------------------------------------------------


def test_take_effects_gives_them_once_and_only_when_captured(new_db: NewDB) -> None:
    work, (a, b, c) = _trio(new_db)
    assert a.take_effects() is None
    entries = work.batch(a.applied_index, 2)
    a.apply(entries)
    assert a.take_effects() is None  # not captured
    entries = work.batch(a.applied_index, 2)
    a.apply(entries, capture=True)
    effects = a.take_effects()
    assert isinstance(effects, bytes) and effects
    assert a.take_effects() is None  # once
    entries = work.batch(a.applied_index, 2)
    a.apply(entries, capture=True)
    entries = work.batch(a.applied_index, 2)
    a.apply(entries)  # a later apply without capture drops the captured ones
    assert a.take_effects() is None
    a.apply([], capture=True)  # nothing applied: nothing captured
    assert a.take_effects() is None
    a.apply([(a.applied_index, ())], capture=True)  # a no-op slot is applied
    effects = a.take_effects()
    assert effects is not None
    assert not b.apply_effects([(b.applied_index, ())], effects)  # b is behind


def test_a_batch_over_effects_max_bytes_is_not_captured(new_db: NewDB) -> None:
    """Values that together exceed EFFECTS_MAX_BYTES: no effects (each
    follower executes); each of them alone is captured and applies."""
    work, (a, b, c) = _trio(new_db)
    writer = Client(b"w" * 16)
    size = EFFECTS_MAX_BYTES // 2 + 1000
    one = [(a.applied_index, (clk(work.now), writer.put(b"k01", b"1" * size)))]
    effects = captured(a, one)
    assert len(effects) > size
    assert b.apply_effects(one, effects)
    c.apply(one)
    two = [(a.applied_index, (writer.put(b"k02", b"2" * size), writer.put(b"k03", b"3" * size)))]
    a.apply(two, capture=True)
    assert a.take_effects() is None
    huge = [(a.applied_index, (writer.put(b"k04", b"4" * EFFECTS_MAX_BYTES),))]
    a.apply(huge, capture=True)
    assert a.take_effects() is None
    for sm in (b, c):
        sm.apply(two)
        sm.apply(huge)
    assert_same(c, a, b)
    small = [(a.applied_index, (writer.put(b"k05", b"5"),))]
    assert b.apply_effects(small, captured(a, small))  # capturing goes on after
    c.apply(small)
    assert_same(c, a, b)


# --- 5. executing after effects -------------------------------------------------------


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
def test_executing_after_effects_continues_like_the_leader(new_db: NewDB, restart: bool) -> None:
    """After a batch written from effects (sessions expired in part by
    its clock command, event log trimmed, large values replaced, leases
    expired, a membership change that comes in force), the follower's own
    execution of the next batches matches the leader's, and the follower
    can lead: its effects fit the old leader."""
    retention = (12, 2500)
    a, b, c = (KVStateMachine(new_db(), retention) for _ in range(3))
    for sm in (a, b, c):
        sm.membership_schedule(BOOTSTRAP)
    ttl = 2000
    clients = [Client(i.to_bytes(16, "big")) for i in range(1, 301)]
    lessee = Client(b"L" * 16)
    warmup = [(0, (clk(T0, ttl), lessee.grant(5, 1), lessee.put(b"k00", b"x", lease=5)))]
    for i in range(6):  # 300 sessions; large values (kept in their records)
        group = clients[50 * i : 50 * (i + 1)]
        puts = [c_.put(b"k%02d" % (10 + j % 14), b"v" * 2000) for j, c_ in enumerate(group)]
        warmup.append((len(warmup), (clk(T0 + 1 + i, ttl), *puts)))
    change = encode_change(Change(ChangeKind.ADD_LEARNER, 4, 0, "p4", "c4"))
    warmup.append((len(warmup), (change,)))
    for sm in (a, b, c):
        sm.apply(warmup)
    now = T0 + 10 + ttl + ttl // 16  # idle past the TTL and its stamp step
    late = Client(b"z" * 16)
    effects_batch = [
        (a.applied_index, (clk(now, ttl), late.put(b"k01", b"w" * 1500))),  # 256 sessions expire
        (a.applied_index + 1, (encode_lease_expiry([5]), late.delete(b"k02"))),
    ]
    effects = captured(a, effects_batch)
    assert b.apply_effects(effects_batch, effects)
    c.apply(effects_batch)
    assert b._session_floor >= a._session_floor  # the leader's bound is ours too
    check_bounds(b)
    assert b.lease(5) is None and b.get(b"k00") is None
    assert_same(c, a, b, where="after the effects")
    if restart:
        b = KVStateMachine(b._db, retention)
    for step in range(12):
        now += 7
        entries = [
            (
                a.applied_index + i,
                (clk(now + i, ttl), late.put(b"k%02d" % (step % 5), b"s" * (300 * i))),
            )
            for i in range(2)
        ]
        results = a.apply(entries)
        assert b.apply(entries) == results == c.apply(entries)
        assert_same(c, a, b, where=f"executing, step {step}")
    assert b.session_count() == 1  # the rest expired, some by B's own execution
    assert b.membership_schedule(BOOTSTRAP).at(b.applied_index).learners == {4}
    # B leads now: its effects fit A and C.
    entries = [(b.applied_index, (clk(now + 100, ttl), late.put(b"k09", b"new")))]
    effects = captured(b, entries)
    assert a.apply_effects(entries, effects) and c.apply_effects(entries, effects)
    assert_same(b, a, c, where="B's effects")


# --- 6. watch retention -------------------------------------------------------------


def test_a_follower_with_another_watch_retention_keeps_its_own_event_log(new_db: NewDB) -> None:
    """The event log is each replica's own: a follower keeping more (or
    fewer) events than the leader accepts its effects, stores their new
    events under its own retention (exactly what executing would keep),
    and has the leader's replicated state; with the leader's retention, the
    leader's event log byte for byte."""
    leader_retention, other = (12, 2500), (400, 50_000)
    work = Workload(random.Random(3), large=False)
    a = KVStateMachine(new_db(), leader_retention)
    same = KVStateMachine(new_db(), leader_retention)
    b, c = KVStateMachine(new_db(), other), KVStateMachine(new_db(), other)
    small_b, small_c = KVStateMachine(new_db(), (3, 400)), KVStateMachine(new_db(), (3, 400))
    for _ in range(25):
        entries = work.batch(a.applied_index, 2)
        effects = captured(a, entries)
        for follower, executor in ((b, c), (small_b, small_c)):
            assert follower.apply_effects(entries, effects)
            executor.apply(entries)
        assert same.apply_effects(entries, effects)
    assert_same(a, same)
    for follower, executor in ((b, c), (small_b, small_c)):
        assert_same(executor, follower)
        assert_same_replicated(a, follower)
    assert span(b)[1] > span(a)[1] > span(small_b)[1]  # the retentions did differ
