"""KVStateMachine on a real LevelDB and on its in-memory twin (MemoryDB): KV
semantics, versions, exactly-once sessions and their expiry by log time, bad
commands, persistence, checksums, snapshot export and the staged install
(crashes included)."""

from __future__ import annotations

import contextlib
import copy
import random
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import plyvel
import pytest

from kvstore.limits import (
    MAX_KEY_BYTES,
    MAX_REQUEST_BYTES,
    SESSION_EXPIRY_PER_CLOCK,
    SESSION_TTL_MS,
)
from kvstore.protocol import Op, Request, Response, Status, encode_clock, encode_request
from kvstore.statemachine import KVStateMachine, SnapshotReader
from replica.inmem import MemoryDB

ALICE = b"a" * 16
BOB = b"b" * 16
T0 = 1_700_000_000_000  # a log time (unix ms)

NewDB = Callable[[], Any]


@pytest.fixture(params=["leveldb", "memory"])
def new_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NewDB]:
    """Makes empty DBs of the parametrized kind: plyvel in tmp dirs, or MemoryDB."""
    opened: list[plyvel.DB] = []

    def make() -> Any:
        if request.param == "memory":
            return MemoryDB()
        opened.append(plyvel.DB(str(tmp_path / f"db{len(opened)}"), create_if_missing=True))
        return opened[-1]

    yield make
    for handle in opened:
        handle.close()


@pytest.fixture
def db(new_db: NewDB) -> Any:
    return new_db()


@pytest.fixture
def sm(db: Any) -> KVStateMachine:
    return KVStateMachine(db)


class Client:
    """Builds encoded write commands with increasing seq numbers."""

    def __init__(self, client_id: bytes = ALICE) -> None:
        self.client_id = client_id
        self.seq = 0

    def _cmd(self, **fields: object) -> bytes:
        self.seq += 1
        return encode_request(Request(client_id=self.client_id, seq=self.seq, **fields))

    def put(self, key: bytes, value: bytes) -> bytes:
        return self._cmd(op=Op.PUT, key=key, value=value)

    def delete(self, key: bytes) -> bytes:
        return self._cmd(op=Op.DELETE, key=key)

    def cas(self, key: bytes, value: bytes, **expect: object) -> bytes:
        return self._cmd(op=Op.CAS, key=key, value=value, **expect)


def run(sm: KVStateMachine, *commands: bytes) -> list[Response]:
    """Applies the commands as one slot; returns just the responses."""
    results = sm.apply([(sm.applied_index, tuple(commands))])
    return [resp for _, _, resp in results]


def run_one(sm: KVStateMachine, command: bytes) -> Response:
    (resp,) = run(sm, command)
    return resp


def clk(unix_ms: int, ttl_ms: int | None = SESSION_TTL_MS) -> bytes:
    """A clock command; `ttl_ms` None: the old 9-byte form (TTL unchanged)."""
    if ttl_ms is None:
        return encode_clock(unix_ms, 1)[:9]
    return encode_clock(unix_ms, ttl_ms)


def clock(sm: KVStateMachine, unix_ms: int, ttl_ms: int | None = SESSION_TTL_MS) -> None:
    """Applies a slot holding only the leader's clock command."""
    ((cid, seq, resp),) = sm.apply([(sm.applied_index, (clk(unix_ms, ttl_ms),))])
    assert (cid, seq, resp.status) == (b"", 0, Status.OK)  # answered to nobody


def live_state(sm: KVStateMachine) -> tuple[Any, ...]:
    """Everything of the current state, generation digits stripped: the `m
    state` record but its generation, and the raw d, s and t records."""
    records = []
    for prefix in sm._gen.prefixes():
        records += [(k[:1] + k[2:], v) for k, v in sm._db.iterator(prefix=prefix)]
    meta = sm._meta._replace(generation=0)
    assert meta[:3] == (sm.applied_index, sm.revision, sm.log_time)
    return meta, sm.session_count(), records


def other_generation(sm: KVStateMachine) -> list[bytes]:
    other = b"1" if sm._gen.number == 0 else b"0"
    prefixes = (b"d" + other, b"s" + other, b"t" + other)
    return [k for p in prefixes for k in sm._db.iterator(prefix=p, include_value=False)]


def check_session_index(sm: KVStateMachine) -> None:
    """Every session has exactly one index key, at its last_used, and no more;
    the kept session count is right."""
    gen = sm._gen
    expected = set()
    for key, raw in sm._db.iterator(prefix=gen.sessions):
        last_used = msgpack.unpackb(raw)[2]
        expected.add(gen.index_key(last_used, key[2:]))
    assert set(sm._db.iterator(prefix=gen.index, include_value=False)) == expected
    assert sm.session_count() == len(expected) == KVStateMachine(sm._db).session_count()


# --- KV semantics -----------------------------------------------------------


def test_put_then_get(sm: KVStateMachine) -> None:
    c = Client()
    resp = run_one(sm, c.put(b"k", b"v"))
    assert resp == Response(Status.OK, version=1)
    assert sm.get(b"k") == (b"v", 1)
    assert sm.get(b"other") is None


def test_apply_returns_client_id_and_seq(sm: KVStateMachine) -> None:
    a, b = Client(ALICE), Client(BOB)
    results = sm.apply([(0, (a.put(b"x", b"1"), b.put(b"y", b"2")))])
    assert [(cid, seq) for cid, seq, _ in results] == [(ALICE, 1), (BOB, 1)]


def test_every_write_bumps_the_revision(sm: KVStateMachine) -> None:
    c = Client()
    run(sm, c.put(b"a", b"1"), c.put(b"b", b"2"), c.put(b"a", b"3"))
    assert sm.revision == 3
    assert sm.get(b"a") == (b"3", 3)
    assert sm.get(b"b") == (b"2", 2)  # untouched keys keep their version


def test_empty_value_is_a_value(sm: KVStateMachine) -> None:
    run_one(sm, Client().put(b"k", b""))
    assert sm.get(b"k") == (b"", 1)


def test_delete_present_and_absent(sm: KVStateMachine) -> None:
    c = Client()
    run_one(sm, c.put(b"k", b"v"))
    assert run_one(sm, c.delete(b"k")).status == Status.OK
    assert sm.get(b"k") is None
    assert sm.revision == 2
    assert run_one(sm, c.delete(b"k")).status == Status.NOT_FOUND
    assert sm.revision == 2  # a failed delete is not a write


def test_delete_of_absent_key_still_records_the_session(sm: KVStateMachine) -> None:
    cmd = Client().delete(b"nothing")
    assert run_one(sm, cmd).status == Status.NOT_FOUND
    run_one(sm, Client(BOB).put(b"nothing", b"now"))
    # The retry must not delete the new key: it gets the recorded NOT_FOUND.
    assert run_one(sm, cmd).status == Status.NOT_FOUND
    assert sm.get(b"nothing") == (b"now", 1)


def test_cas_by_version(sm: KVStateMachine) -> None:
    c = Client()
    assert run_one(sm, c.cas(b"k", b"v1", expected_version=0)) == Response(Status.OK, version=1)
    assert run_one(sm, c.cas(b"k", b"v2", expected_version=1)) == Response(Status.OK, version=2)
    failed = run_one(sm, c.cas(b"k", b"v3", expected_version=1))
    assert failed == Response(Status.CAS_FAILED, value=b"v2", version=2)
    assert sm.get(b"k") == (b"v2", 2)


def test_cas_version_zero_means_absent(sm: KVStateMachine) -> None:
    c = Client()
    run_one(sm, c.put(b"k", b"v"))
    failed = run_one(sm, c.cas(b"k", b"x", expected_version=0))
    assert failed == Response(Status.CAS_FAILED, value=b"v", version=1)
    run_one(sm, c.delete(b"k"))
    assert run_one(sm, c.cas(b"k", b"x", expected_version=0)).status == Status.OK
    assert sm.get(b"k") == (b"x", 3)


def test_cas_by_value(sm: KVStateMachine) -> None:
    c = Client()
    run_one(sm, c.put(b"k", b"old"))
    assert run_one(sm, c.cas(b"k", b"new", expected_value=b"old")).status == Status.OK
    failed = run_one(sm, c.cas(b"k", b"newer", expected_value=b"old"))
    assert failed == Response(Status.CAS_FAILED, value=b"new", version=2)
    assert sm.get(b"k") == (b"new", 2)


def test_cas_by_value_on_absent_key_fails(sm: KVStateMachine) -> None:
    # An absent key matches no expected value, not even the empty one.
    failed = run_one(sm, Client().cas(b"k", b"v", expected_value=b""))
    assert failed == Response(Status.CAS_FAILED, value=None, version=0)
    assert sm.get(b"k") is None
    assert sm.revision == 0


def test_writes_in_one_call_see_each_other(sm: KVStateMachine) -> None:
    c = Client()
    results = sm.apply(
        [
            (0, (c.put(b"k", b"1"), c.cas(b"k", b"2", expected_version=1))),
            (1, (c.delete(b"k"), c.cas(b"k", b"3", expected_version=0))),
            (2, (c.cas(b"k", b"4", expected_value=b"3"),)),
        ]
    )
    assert [r.status for _, _, r in results] == [Status.OK] * 5
    assert [r.version for _, _, r in results] == [1, 2, 0, 4, 5]
    assert sm.get(b"k") == (b"4", 5)
    assert sm.applied_index == 3


# --- slots --------------------------------------------------------------------


def test_noop_slots_advance_the_applied_index(sm: KVStateMachine) -> None:
    assert sm.apply([(0, ()), (1, ())]) == []
    assert sm.applied_index == 2
    assert sm.revision == 0
    assert sm.key_count() == 0


def test_empty_apply_changes_nothing(sm: KVStateMachine) -> None:
    assert sm.apply([]) == []
    assert sm.applied_index == 0


@pytest.mark.parametrize("slots", [[1], [0, 2], [0, 0]])
def test_wrong_slot_raises_and_writes_nothing(sm: KVStateMachine, slots: list[int]) -> None:
    c = Client()
    with pytest.raises(ValueError, match="out of order"):
        sm.apply([(slot, (c.put(b"k", b"v"),)) for slot in slots])
    assert sm.applied_index == 0
    assert sm.get(b"k") is None
    assert KVStateMachine(sm._db).applied_index == 0  # nothing persisted either


def test_already_applied_slot_raises(sm: KVStateMachine) -> None:
    sm.apply([(0, ())])
    with pytest.raises(ValueError):
        sm.apply([(0, ())])
    assert sm.applied_index == 1


# --- exactly-once sessions ------------------------------------------------------


def test_retry_returns_recorded_result_and_applies_once(sm: KVStateMachine) -> None:
    c = Client()
    cmd = c.cas(b"k", b"v", expected_version=0)
    first = run_one(sm, cmd)
    retry = run_one(sm, cmd)
    assert first == retry == Response(Status.OK, version=1)  # not CAS_FAILED
    assert sm.revision == 1
    assert sm.applied_index == 2


def test_retry_within_the_same_batch(sm: KVStateMachine) -> None:
    cmd = Client().put(b"k", b"v")
    first, retry = run(sm, cmd, cmd)
    assert first == retry == Response(Status.OK, version=1)
    assert sm.revision == 1


def test_stale_seq_is_rejected_and_applies_nothing(sm: KVStateMachine) -> None:
    c = Client()
    old = c.put(b"k", b"old")
    run(sm, old, c.put(b"k", b"new"))
    stale = run_one(sm, old)
    assert stale.status == Status.BAD_REQUEST
    assert "stale" in stale.error
    assert sm.get(b"k") == (b"new", 2)


def test_sessions_are_per_client(sm: KVStateMachine) -> None:
    a, b = Client(ALICE), Client(BOB)
    ra, rb = run(sm, a.put(b"k", b"from a"), b.put(b"k", b"from b"))  # both seq 1
    assert (ra.version, rb.version) == (1, 2)
    assert sm.get(b"k") == (b"from b", 2)


def test_client_may_skip_seq_numbers(sm: KVStateMachine) -> None:
    c = Client()
    run_one(sm, c.put(b"k", b"1"))
    c.seq += 5
    assert run_one(sm, c.put(b"k", b"2")).status == Status.OK
    assert sm.get(b"k") == (b"2", 2)


def test_client_id_reused_for_another_request_is_refused(sm: KVStateMachine) -> None:
    old, new = Client(), Client()  # the same id, both start at seq 1
    run_one(sm, old.put(b"k", b"old process"))
    refused = run_one(sm, new.put(b"k", b"new process"))
    assert refused.status == Status.BAD_REQUEST
    assert "client id reused: seq 1 already answered for a different request" in refused.error
    assert sm.get(b"k") == (b"old process", 1)
    assert sm.revision == 1


@pytest.mark.parametrize("size", [100, 4_000, 5_000, 300_000])
def test_large_requests_tell_a_retry_from_a_reused_id(sm: KVStateMachine, size: int) -> None:
    """A request over 4 KiB is digested by its head, length and CRC-32: a
    retry still matches, a request differing only in its last byte or in
    its length does not."""
    value = random.Random(size).randbytes(size)
    c = Client()
    cmd = c.put(b"k", value)
    assert run_one(sm, cmd) == Response(Status.OK, version=1)
    assert run_one(sm, cmd) == Response(Status.OK, version=1)  # the retry
    for other in (value[:-1] + bytes([value[-1] ^ 1]), value + b"x"):
        reused = Client()
        refused = run_one(sm, reused.put(b"k", other))
        assert refused.status == Status.BAD_REQUEST
        assert "client id reused" in refused.error
    assert sm.get(b"k") == (value, 1)


def test_a_session_digest_of_an_older_release_still_matches_its_retry(
    sm: KVStateMachine,
) -> None:
    """Records written before large requests were digested by their head:
    their digest is blake2b of the whole request, and a retry matches it."""
    import hashlib

    cmd = Client().put(b"k", b"v" * 10_000)
    run_one(sm, cmd)
    key = sm._gen.sessions + ALICE
    record = msgpack.unpackb(sm._db.get(key))
    record[1] = hashlib.blake2b(cmd, digest_size=8).digest()
    sm._db.put(key, msgpack.packb(record))
    reopened = KVStateMachine(sm._db)
    assert run_one(reopened, cmd) == Response(Status.OK, version=1)
    assert reopened.revision == 1


def test_a_deferred_batch_is_written_by_write_applied_or_the_next_apply(
    sm: KVStateMachine,
) -> None:
    c = Client()
    results = sm.apply([(0, (c.put(b"k", b"1"),))], defer_write=True)
    assert [r.status for _, _, r in results] == [Status.OK]
    assert sm._db.get(sm._gen.data + b"k") is None  # answered, not yet written
    sm.write_applied()
    assert sm.get(b"k") == (b"1", 1)
    sm.apply([(1, (c.put(b"k", b"2"),))], defer_write=True)
    run_one(sm, c.put(b"j", b"3"))  # writes the deferred batch first, then its own
    assert (sm.get(b"k"), sm.get(b"j")) == ((b"2", 2), (b"3", 3))
    assert KVStateMachine(sm._db).applied_index == 3
    sm.write_applied()  # nothing left: a no-op
    assert KVStateMachine(sm._db).applied_index == 3


def _forget_a_session(sm: KVStateMachine) -> None:
    clock(sm, T0)
    run_one(sm, Client(b"f" * 16).put(b"f", b"forgotten"))
    clock(sm, T0 + SESSION_TTL_MS + 1)
    assert sm.session_count() == 0


def test_unknown_client_above_seq_1_is_session_expired(sm: KVStateMachine) -> None:
    _forget_a_session(sm)
    c = Client()
    c.seq = 4
    resp = run_one(sm, c.put(b"k", b"v"))
    assert resp.status == Status.SESSION_EXPIRED
    assert "session expired or unknown" in resp.error and "seq 5" in resp.error
    assert sm.get(b"k") is None and sm.revision == 1
    assert sm.session_count() == 0  # no session was opened by it
    assert (
        KVStateMachine(sm._db).apply([(sm.applied_index, (c.put(b"k", b"v"),))])[0][2].status
        == Status.SESSION_EXPIRED
    )  # "a session was forgotten" is persisted


def test_before_any_session_is_forgotten_any_seq_opens_a_session(sm: KVStateMachine) -> None:
    """A client that numbers its reads too writes first at seq > 1: fine as
    long as no session ever expired (it cannot be a forgotten one)."""
    clock(sm, T0)
    c = Client()
    c.seq = 4
    assert run_one(sm, c.put(b"k", b"v")) == Response(Status.OK, version=1)
    assert sm.session_count() == 1


def test_failed_cas_answers_the_value_once_and_records_none(sm: KVStateMachine) -> None:
    big = b"x" * 100_000
    c = Client(BOB)
    run_one(sm, Client().put(b"k", big))
    cmd = c.cas(b"k", b"new", expected_version=7)
    assert run_one(sm, cmd) == Response(Status.CAS_FAILED, value=big, version=1)
    assert run_one(sm, cmd) == Response(Status.CAS_FAILED, value=None, version=1)  # a retry
    for _, raw in sm._db.iterator(prefix=sm._gen.sessions):
        assert len(raw) < 64  # [seq, digest, last_used, status, version]: never a value


def test_clock_commands_advance_log_time_monotonically(db: Any) -> None:
    sm = KVStateMachine(db)
    assert sm.log_time == 0
    clock(sm, T0)
    clock(sm, T0 - 5000)  # a new leader whose clock is behind
    assert sm.log_time == T0
    results = sm.apply([(sm.applied_index, (clk(T0 + 7), Client().put(b"k", b"v")))])
    assert [cid for cid, _, _ in results] == [b"", ALICE]
    assert KVStateMachine(db).log_time == T0 + 7  # persisted with the applied index


def test_idle_session_expires_after_the_ttl(sm: KVStateMachine) -> None:
    c = Client()
    clock(sm, T0)
    first = c.put(b"k", b"v")
    run_one(sm, first)
    clock(sm, T0 + SESSION_TTL_MS)  # idle exactly the TTL: still there
    assert run_one(sm, first) == Response(Status.OK, version=1)  # a retry, refreshes it
    clock(sm, T0 + 2 * SESSION_TTL_MS)
    assert sm.session_count() == 1
    clock(sm, T0 + 2 * SESSION_TTL_MS + 1)  # idle longer than the TTL: deleted
    assert sm.session_count() == 0
    check_session_index(sm)
    resp = run_one(sm, c.put(b"k", b"again"))
    assert resp.status == Status.SESSION_EXPIRED
    assert sm.get(b"k") == (b"v", 1)
    fresh = Client(BOB)  # a new session just works
    assert run_one(sm, fresh.put(b"k", b"w")) == Response(Status.OK, version=2)


def test_without_clock_commands_nothing_expires(sm: KVStateMachine) -> None:
    clients = [Client(bytes([i]) * 16) for i in range(1, 4)]
    for c in clients:
        run_one(sm, c.put(b"k", b"v"))
    sm.apply([(sm.applied_index + i, ()) for i in range(100)])
    assert sm.log_time == 0 and sm.session_count() == 3
    assert all(run_one(sm, c.put(b"k", b"w")).status == Status.OK for c in clients)


def _open_sessions(sm: KVStateMachine, count: int, at: int) -> list[Client]:
    clients = [Client(i.to_bytes(16, "big")) for i in range(count)]
    sm.apply([(sm.applied_index, (clk(at), *(c.put(b"k", b"v") for c in clients)))])
    return clients


def test_expiry_is_bounded_per_clock_command_and_oldest_first(sm: KVStateMachine) -> None:
    old = _open_sessions(sm, 2 * SESSION_EXPIRY_PER_CLOCK + 10, T0)
    young = Client(b"y" * 16)
    sm.apply([(sm.applied_index, (clk(T0 + 1), young.put(b"y", b"1")))])
    total = len(old) + 1
    clock(sm, T0 + SESSION_TTL_MS + 1)  # every old one is expired, the young one is not
    assert sm.session_count() == total - SESSION_EXPIRY_PER_CLOCK
    # Not yet deleted, but expired already: refused like a deleted one.
    assert run_one(sm, old[-1].put(b"k", b"late")).status == Status.SESSION_EXPIRED
    clock(sm, T0 + SESSION_TTL_MS + 1)
    clock(sm, T0 + SESSION_TTL_MS + 1)
    assert sm.session_count() == 1  # only the young one is left
    check_session_index(sm)
    assert run_one(sm, young.put(b"y", b"2")).status == Status.OK


# --- the session TTL, decided through the log ------------------------------------------


def test_the_ttl_comes_from_clock_commands_and_persists(db: Any) -> None:
    sm = KVStateMachine(db)
    assert sm.session_ttl_ms == SESSION_TTL_MS  # before any clock command
    clock(sm, T0, 1000)
    assert (sm.log_time, sm.session_ttl_ms) == (T0, 1000)
    clock(sm, T0 + 5, None)  # the old 9-byte form: time moves, the TTL stays
    assert (sm.log_time, sm.session_ttl_ms) == (T0 + 5, 1000)
    clock(sm, T0 - 9000, 2500)  # a leader whose clock is behind still sets its TTL
    assert (sm.log_time, sm.session_ttl_ms) == (T0 + 5, 2500)
    assert KVStateMachine(db).session_ttl_ms == 2500  # persisted in `m state`
    run_one(sm, Client().put(b"k", b"v"))  # writes change nothing of it
    assert KVStateMachine(db).session_ttl_ms == 2500


def test_expiry_uses_the_ttl_of_the_log(sm: KVStateMachine) -> None:
    c = Client()
    clock(sm, T0, 1000)
    run_one(sm, c.put(b"k", b"v"))
    # Its last_used: T0 rounded up to the stamp step, TTL / 16 = 62 ms.
    stamp = -(-T0 // 62) * 62
    assert T0 < stamp < T0 + 62
    clock(sm, T0 + 1000, 1000)  # idle exactly the TTL: kept
    assert sm.session_count() == 1
    clock(sm, stamp + 1000, 1000)  # idle for the TTL and part of a step: kept
    assert sm.session_count() == 1
    clock(sm, stamp + 1001, 1000)  # longer: deleted
    assert sm.session_count() == 0
    resp = run_one(sm, c.put(b"k", b"w"))
    assert resp.status == Status.SESSION_EXPIRED
    assert resp.error == (
        "session expired or unknown: this client id has no session (sessions idle for "
        "over 1 s are forgotten), so request seq 2 was not applied; start a new session "
        "(a new client id, seq 1)"
    )
    assert sm.get(b"k") == (b"v", 1) and sm.session_count() == 0


def test_a_busy_sessions_index_key_moves_once_per_stamp_step(sm: KVStateMachine) -> None:
    """A write in every slot, each slot with a clock command 2 ms later: the
    session's `t` key moves only when log time enters the next stamp step
    (1 s for the default hour), not on every write; its last_used is never
    before its last use, and the index stays exact."""
    c = Client()
    moves, last = 0, None
    for i in range(1500):
        now = T0 + 2 * i
        sm.apply([(sm.applied_index, (clk(now), c.put(b"k", b"v%d" % i)))], capture=True)
        effects = msgpack.unpackb(sm.take_effects())
        ops = zip(effects[6][::2], effects[6][1::2], strict=True)
        index_puts = [k for k, v in ops if k.startswith(sm._gen.index) and v is not None]
        stamp = msgpack.unpackb(sm._db.get(sm._gen.sessions + c.client_id))[2]
        assert now <= stamp < now + 1000
        moves += bool(index_puts)
        assert (stamp != last) == bool(index_puts)
        last = stamp
        check_session_index(sm)
    assert moves in (3, 4)  # 3 s of log time: the first write and each new second


@pytest.mark.parametrize(
    ("ttl_ms", "text"), [(1000, "1 s"), (1500, "1.5 s"), (120_000, "2 min"), (7_200_000, "2 h")]
)
def test_the_session_expired_message_names_the_ttl(
    sm: KVStateMachine, ttl_ms: int, text: str
) -> None:
    _forget_a_session(sm)
    clock(sm, sm.log_time, ttl_ms)
    c = Client()
    c.seq = 1
    assert f"idle for over {text} are forgotten" in run_one(sm, c.put(b"k", b"v")).error


def test_a_lower_ttl_expires_idle_sessions_at_the_next_clock(sm: KVStateMachine) -> None:
    idle, busy = Client(), Client(BOB)
    clock(sm, T0)  # one hour
    run_one(sm, idle.put(b"i", b"1"))
    clock(sm, T0 + 60_000)
    run_one(sm, busy.put(b"b", b"1"))
    clock(sm, T0 + 60_001, 30_000)  # the leader now says 30 s: idle (60 s) is expired
    assert sm.session_count() == 1
    assert run_one(sm, idle.put(b"i", b"2")).status == Status.SESSION_EXPIRED
    assert run_one(sm, busy.put(b"b", b"2")).status == Status.OK
    check_session_index(sm)


def test_a_higher_ttl_never_revives_an_expired_session(sm: KVStateMachine) -> None:
    """Expired sessions not yet deleted (more than one clock deletes) stay
    expired when a later clock raises the TTL: a delayed copy of a request
    refused with SESSION_EXPIRED must never be applied afterwards."""
    old = _open_sessions_at(sm, 2 * SESSION_EXPIRY_PER_CLOCK + 10, T0, 1000)
    clock(sm, T0 + _PAST, 1000)  # all expired; only SESSION_EXPIRY_PER_CLOCK deleted
    assert sm.session_count() == len(old) - SESSION_EXPIRY_PER_CLOCK
    late = old[-1].put(b"k", b"late")
    assert run_one(sm, late).status == Status.SESSION_EXPIRED
    clock(sm, T0 + _PAST + 1, SESSION_TTL_MS)  # one hour again
    old[-1].seq -= 1
    assert run_one(sm, late).status == Status.SESSION_EXPIRED  # still refused
    young = Client(b"y" * 16)
    run_one(sm, young.put(b"y", b"1"))
    clock(sm, T0 + _PAST + 2, SESSION_TTL_MS)
    clock(sm, T0 + 60_000, SESSION_TTL_MS)  # the backlog goes; young is live under 1 h
    assert sm.session_count() == 1
    check_session_index(sm)
    assert run_one(sm, young.put(b"y", b"2")).status == Status.OK
    assert sm.get(b"k") == (b"v", len(old))


_PAST = 1000 + 62 + 1
"""Idle longer than a 1 s TTL and its stamp step (62 ms): expired."""


def _open_sessions_at(sm: KVStateMachine, count: int, at: int, ttl_ms: int) -> list[Client]:
    clients = [Client(i.to_bytes(16, "big")) for i in range(count)]
    commands = (clk(at, ttl_ms), *(c.put(b"k", b"v") for c in clients))
    sm.apply([(sm.applied_index, commands)])
    return clients


def test_a_state_of_the_format_before_the_ttl_is_read_with_the_default(db: Any) -> None:
    """The 26-byte `m state` of the previous release: TTL one hour, and what
    was expired then (idle over an hour of its log time) still is."""
    gen = b"0"
    idle, recent = Client(), Client(BOB)
    db.put(b"mstate", struct.pack(">QQQBB", 7, 2, T0 + SESSION_TTL_MS + 5, 1, 0))
    for c, last_used in ((idle, T0), (recent, T0 + SESSION_TTL_MS)):
        c.seq = 1
        db.put(b"s" + gen + c.client_id, msgpack.packb([1, bytes(8), last_used, 0, 1]))
        db.put(b"t" + gen + struct.pack(">Q", last_used) + c.client_id, b"")
    sm = KVStateMachine(db)
    assert (sm.applied_index, sm.revision, sm.session_ttl_ms) == (7, 2, SESSION_TTL_MS)
    assert sm._meta.expired_before == T0 + 5
    assert run_one(sm, idle.put(b"k", b"v")).status == Status.SESSION_EXPIRED
    assert run_one(sm, recent.put(b"k", b"v")).status == Status.OK
    assert len(db.get(b"mstate")) == 42  # written in the current form
    clock(sm, T0 + SESSION_TTL_MS + 6, None)  # an old clock command in the log
    assert sm.session_count() == 1 and sm.session_ttl_ms == SESSION_TTL_MS


def test_a_snapshot_carries_the_ttl_and_the_expiry_cutoff(new_db: NewDB) -> None:
    src, dst = KVStateMachine(new_db()), KVStateMachine(new_db())
    old = _open_sessions_at(src, 3 * SESSION_EXPIRY_PER_CLOCK + 10, T0, 1000)
    clock(src, T0 + _PAST, 1000)
    clock(src, T0 + _PAST + 1, 5000)  # raised: the cutoff must travel, not just the TTL
    assert src.session_count() > SESSION_EXPIRY_PER_CLOCK  # expired ones not yet deleted
    with src.snapshot_reader() as reader:
        assert reader.session_ttl_ms == 5000
        transfer(reader, dst)
    assert dst.session_ttl_ms == 5000
    assert live_state(dst) == live_state(src)
    check_session_index(dst)
    late = old[-1].put(b"k", b"late")
    assert src.apply([(src.applied_index, (late,))]) == dst.apply([(dst.applied_index, (late,))])
    assert run_one(dst, old[-1].put(b"k", b"x")).status == Status.SESSION_EXPIRED


def test_a_snapshot_meta_item_without_the_ttl_is_accepted(sm: KVStateMachine) -> None:
    """From a peer of the previous release: TTL one hour."""
    sm.install_begin(b"old", 4, 0)
    sm.install_chunk([(b"m", struct.pack(">QQQB", 4, 0, T0, 0))], b"m")
    sm.install_finish()
    assert (sm.applied_index, sm.log_time, sm.session_ttl_ms) == (4, T0, SESSION_TTL_MS)
    assert sm._meta.expired_before == T0 - SESSION_TTL_MS


@pytest.mark.parametrize(
    "record",
    [
        struct.pack(">QQQBQQ", 5, 9, T0, 0, 0, 0),  # TTL 0
        struct.pack(">QQQBQQ", 5, 9, T0, 2, 1000, 0),  # forgot not a bool
        struct.pack(">QQQBQQ", 5, 9, T0, 0, 1000, T0 + 1),  # cutoff after log time
        struct.pack(">QQQBQ", 5, 9, T0, 0, 1000),  # neither length
    ],
)
def test_a_malformed_snapshot_meta_item_is_refused(sm: KVStateMachine, record: bytes) -> None:
    sm.install_begin(b"id", 5, 9)
    with pytest.raises(ValueError, match="snapshot meta item"):
        sm.install_chunk([(b"m", record)], b"m")


def test_expiry_is_the_same_however_the_log_is_split(new_db: NewDB) -> None:
    """Sessions opened and expired inside one apply call, more expiries than
    one clock may do: one call, slot by slot, and random splits agree."""
    log = _session_log(random.Random(7), slots=120)
    states = set()
    for split in ("whole", "each", "random"):
        sm = KVStateMachine(new_db())
        answers = []
        for part in _split(log, split, random.Random(3)):
            answers += sm.apply(part)
        check_session_index(sm)
        states.add((repr(live_state(sm)), repr(answers), sm.checksum()))
    assert len(states) == 1
    assert "SESSION_EXPIRED" in next(iter(states))[1]


def _session_log(rng: random.Random, slots: int) -> list[tuple[int, tuple[bytes, ...]]]:
    """A log of writes by 300 clients (retries, reused ids, stale seqs) with
    clock commands that jump past the TTL now and then and change the TTL
    (old 9-byte clock commands, TTL unchanged, included)."""
    clients = [Client(i.to_bytes(16, "big")) for i in range(300)]
    now = T0
    ttl: int | None = SESSION_TTL_MS
    log = []
    for slot in range(slots):
        now += rng.choice([10, 1000, SESSION_TTL_MS // 3, SESSION_TTL_MS + 1])
        if rng.random() < 0.1:  # the TTL changes (another leader, or a new setting)
            ttl = rng.choice([None, 5000, SESSION_TTL_MS // 2, SESSION_TTL_MS, 3 * SESSION_TTL_MS])
        commands = [clk(now, ttl)]
        for _ in range(rng.randrange(40)):
            c = rng.choice(clients)
            cmd = c.put(bytes([rng.randrange(20)]), rng.randbytes(3))
            commands.append(cmd)
            if rng.random() < 0.2:
                commands.append(cmd)  # a retry
            if rng.random() < 0.05:
                c.seq = rng.randrange(1, c.seq + 2)  # reuse, stale or skip
        log.append((slot, tuple(commands)))
    return log


def _split(log: list, how: str, rng: random.Random) -> Iterator[list]:
    if how == "whole":
        yield log
    elif how == "each":
        yield from ([entry] for entry in log)
    else:
        i = 0
        while i < len(log):
            n = rng.randrange(1, 15)
            yield log[i : i + n]
            i += n


def test_two_replicas_fed_the_same_log_agree(new_db: NewDB) -> None:
    """The same log on plyvel and on MemoryDB, applied in different steps."""
    log = _session_log(random.Random(11), slots=60)
    on_memory = KVStateMachine(MemoryDB())
    on_disk = KVStateMachine(new_db())
    on_memory.apply(log)
    for entry in log:
        on_disk.apply([entry])
    assert live_state(on_memory) == live_state(on_disk)
    assert on_memory.checksum() == on_disk.checksum()


# --- bad commands ---------------------------------------------------------------


def _bad_commands() -> list[tuple[bytes, Status]]:
    good: dict = {"client_id": ALICE, "seq": 1, "key": b"k", "value": b"v"}
    return [
        (b"\xc1garbage", Status.BAD_REQUEST),
        (msgpack.packb([1, 2, 3]), Status.BAD_REQUEST),
        (encode_request(Request(op=Op.PUT, **{**good, "key": b""})), Status.BAD_REQUEST),
        (encode_request(Request(op=Op.PUT, **{**good, "client_id": b"x"})), Status.BAD_REQUEST),
        (encode_request(Request(op=Op.GET, **good)), Status.BAD_REQUEST),
        (encode_request(Request(op=Op.STATUS)), Status.BAD_REQUEST),
        (encode_request(Request(op=Op.CAS, **good)), Status.BAD_REQUEST),
        (
            encode_request(Request(op=Op.PUT, **{**good, "key": b"k" * (MAX_KEY_BYTES + 1)})),
            Status.TOO_LARGE,
        ),
        (b"\x00" * (MAX_REQUEST_BYTES + 1), Status.TOO_LARGE),
    ]


@pytest.mark.parametrize(("command", "status"), _bad_commands())
def test_bad_command_inside_a_batch(sm: KVStateMachine, command: bytes, status: Status) -> None:
    c = Client(BOB)
    results = sm.apply([(0, (c.put(b"a", b"1"), command, c.put(b"b", b"2")))])
    cid, seq, resp = results[1]
    assert (cid, seq, resp.status) == (b"", 0, status)
    assert resp.error
    # The good commands around it are applied; the bad one changed nothing.
    assert [r.status for _, _, r in (results[0], results[2])] == [Status.OK, Status.OK]
    assert sm.get(b"a") == (b"1", 1)
    assert sm.get(b"b") == (b"2", 2)
    assert sm.key_count() == 2
    assert sm.get(b"k") is None


def test_non_bytes_command_does_not_raise(sm: KVStateMachine) -> None:
    ((cid, _, resp),) = sm.apply([(0, ("not bytes",))])  # type: ignore[list-item]
    assert (cid, resp.status) == (b"", Status.BAD_REQUEST)
    assert sm.applied_index == 1


# --- persistence ----------------------------------------------------------------


def test_state_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    c = Client()
    retry = c.put(b"k", b"v")
    db = plyvel.DB(path, create_if_missing=True)
    sm = KVStateMachine(db)
    sm.apply([(0, (clk(T0), Client(BOB).put(b"j", b"w"), retry)), (1, ())])
    before = sm.checksum()
    db.close()

    db = plyvel.DB(path)
    try:
        sm = KVStateMachine(db)
        assert (sm.applied_index, sm.revision, sm.log_time) == (2, 2, T0)
        assert sm.get(b"k") == (b"v", 2)
        assert sm.checksum() == before
        # The session survived: the retry is answered from the record.
        assert run_one(sm, retry) == Response(Status.OK, version=2)
        assert run_one(sm, c.put(b"k", b"x")).version == 3
    finally:
        db.close()


def test_a_data_directory_of_the_old_layout_is_refused(db: Any) -> None:
    db.put(b"mstate", bytes(16))  # applied_index, revision: before generations
    with pytest.raises(ValueError, match="empty data directory"):
        KVStateMachine(db)


# --- checksums --------------------------------------------------------------------


def _log() -> list[tuple[int, tuple[bytes, ...]]]:
    a, b = Client(ALICE), Client(BOB)
    return [
        (0, (clk(T0), a.put(b"x", b"1"), b.put(b"y", b"2"))),
        (1, ()),
        (2, (a.cas(b"x", b"3", expected_value=b"1"), b.delete(b"y"), a.put(b"z", b""))),
    ]


def test_checksum_equal_for_the_same_log(new_db: NewDB) -> None:
    sm1, sm2 = KVStateMachine(new_db()), KVStateMachine(new_db())
    log = _log()
    sm1.apply(log)
    for entry in log:  # the same log in smaller steps
        sm2.apply([entry])
    assert sm1.checksum() == sm2.checksum()
    assert live_state(sm1) == live_state(sm2)
    assert sm1.key_count() == sm2.key_count() == 2


def test_checksum_differs_on_value_key_or_version(new_db: NewDB) -> None:
    sums = set()
    for name, commands in [
        ("base", (Client().put(b"k", b"v"),)),
        ("value", (Client().put(b"k", b"w"),)),
        ("key", (Client().put(b"j", b"v"),)),
        ("version", (Client(BOB).put(b"x", b"1"), Client().put(b"k", b"v"))),
    ]:
        sm = KVStateMachine(new_db())
        sm.apply([(0, commands)])
        if name == "version":  # same k -> v as base, but at version 2
            sm.apply([(1, (Client(BOB).delete(b"x"),))])
        sums.add(sm.checksum())
    assert len(sums) == 4


def test_checksum_of_empty_store(sm: KVStateMachine) -> None:
    assert sm.checksum() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# --- snapshots: export and staged install -------------------------------------------


def _populate(sm: KVStateMachine, keys: int, seed: int = 1) -> None:
    """`keys` keys of varied sizes written by 50 clients, some deleted, over
    clock commands: data, sessions and a log time to carry over."""
    rng = random.Random(seed)
    clients = [Client(bytes([seed]) + i.to_bytes(15, "big")) for i in range(50)]
    slot_commands: list[bytes] = []
    for i in range(keys):
        c = clients[i % len(clients)]
        slot_commands.append(c.put(b"key%06d" % i, rng.randbytes(rng.choice([0, 10, 300]))))
        if i % 7 == 3:
            slot_commands.append(c.delete(b"key%06d" % (i - 1)))
        if len(slot_commands) >= 100:
            _apply_slot(sm, slot_commands, T0 + seed * 1000 + sm.applied_index)
            slot_commands = []
    _apply_slot(sm, slot_commands, T0 + seed * 1000 + sm.applied_index)


def _apply_slot(sm: KVStateMachine, commands: list[bytes], now: int) -> None:
    sm.apply([(sm.applied_index, (clk(now), *commands))])


def _chunks(reader: SnapshotReader, max_bytes: int, after: bytes | None = None) -> Iterator:
    while True:
        items, last = reader.chunk(after, max_bytes)
        yield items, last
        if last is None:
            return
        after = last


def transfer(
    src: KVStateMachine | SnapshotReader, dst: KVStateMachine, max_bytes: int = 2048
) -> int:
    """What the driver does: begin (or resume), chunks, finish, collect the
    garbage. Returns how many items were staged by this call."""
    reader = src.snapshot_reader() if isinstance(src, KVStateMachine) else src
    snapshot_id = b"snap-%d" % reader.index
    after = dst.install_begin(snapshot_id, reader.index, reader.revision)
    staged = 0
    for items, _ in _chunks(reader, max_bytes, after):
        if items:  # as replica/snapshots.py calls it
            dst.install_chunk(items, items[-1][0])
        staged += len(items)
    dst.install_finish()
    while dst.collect_garbage(100):
        pass
    return staged


@pytest.mark.parametrize("old_data", [False, True])
def test_install_in_small_chunks_gives_the_same_state(new_db: NewDB, old_data: bool) -> None:
    src, dst = KVStateMachine(new_db()), KVStateMachine(new_db())
    _populate(src, 3000)
    if old_data:  # other keys, sessions and a longer log: all replaced
        _populate(dst, 500, seed=2)
    failed_cas = Client(b"r" * 16).cas(b"key000001", b"x", expected_version=999)
    current = src.get(b"key000001")
    assert run_one(src, failed_cas) == Response(Status.CAS_FAILED, *current)

    reader = src.snapshot_reader()
    run_one(src, Client(b"late" * 4).put(b"late", b"not in the snapshot"))
    transfer(reader, dst)
    reader.close()

    assert (dst.applied_index, dst.revision, dst.log_time) == (
        reader.index,
        reader.revision,
        reader.log_time,
    )
    assert dst.get(b"late") is None
    assert dst.key_count() == src.key_count() - 1
    check_session_index(dst)
    assert other_generation(dst) == []  # the old state is collected
    # Sessions came along: a retry is answered from the record.
    assert run_one(dst, failed_cas) == Response(Status.CAS_FAILED, None, current[1])
    assert dst.revision == reader.revision
    if old_data:  # a session of the replaced state is gone
        assert dst._db.get(dst._gen.sessions + bytes([2]) + bytes(15)) is None
    # Both continue identically from the snapshot point.
    fresh = KVStateMachine(new_db())
    transfer(src, fresh)
    assert live_state(fresh) == live_state(src)
    nxt = [(src.applied_index, (clk(T0 + 99_000), Client(b"e" * 16).put(b"x", b"after")))]
    assert src.apply(nxt) == fresh.apply(nxt)
    assert live_state(fresh) == live_state(src)
    assert fresh.checksum() == src.checksum()


def test_chunks_are_bounded_and_cover_everything_once(db: Any) -> None:
    sm = KVStateMachine(db)
    _populate(sm, 3000)
    run_one(sm, Client(b"h" * 16).put(b"huge", b"h" * 50_000))
    max_bytes = 4096
    with sm.snapshot_reader() as reader:
        chunks = list(_chunks(reader, max_bytes))
    keys = [key for items, _ in chunks for key, _ in items]
    assert keys == sorted(keys) and len(keys) == len(set(keys))
    assert len(keys) == sm.key_count() + sm.session_count() + 1  # + the meta item
    for items, last in chunks[:-1]:
        size = sum(len(k) + len(v) for k, v in items)
        assert size <= max_bytes or len(items) == 1  # one item bigger than a chunk
        assert last == items[-1][0]
    sizes = [sum(len(k) + len(v) for k, v in items) for items, _ in chunks]
    assert max(sizes) > 50_000 and sorted(sizes)[-2] <= max_bytes
    assert chunks[-1][1] is None
    assert reader_resumes_anywhere(sm, keys)


def reader_resumes_anywhere(sm: KVStateMachine, keys: list[bytes]) -> bool:
    with sm.snapshot_reader() as reader:
        for i in (0, 1, len(keys) // 2, len(keys) - 2, len(keys) - 1):
            items, _ = reader.chunk(keys[i], 1)
            assert [k for k, _ in items] == keys[i + 1 : i + 2]
        assert reader.chunk(None, 1)[0][0][0] == keys[0]
        assert reader.chunk(b"", 1)[0][0][0] == keys[0]
    return True


def test_an_empty_state_machine_exports_its_meta_only(sm: KVStateMachine) -> None:
    with sm.snapshot_reader() as reader:
        items, last = reader.chunk(None, 1 << 20)
    assert [k for k, _ in items] == [b"m"] and last is None


def test_install_chunk_refuses_bad_items_and_stages_nothing(sm: KVStateMachine) -> None:
    with pytest.raises(ValueError, match="install_begin"):
        sm.install_chunk([(b"dk", msgpack.packb([b"v", 1]))], b"dk")
    sm.install_begin(b"id", 5, 9)
    good = (b"dk", msgpack.packb([b"v", 1]))
    for bad in [
        [(b"xk", b"")],
        [(b"dk", b"\xc1")],
        [(b"dk", msgpack.packb([b"v"]))],
        [(b"s" + ALICE, msgpack.packb([1, 2, 3]))],
        [(b"s" + b"short", msgpack.packb([1, bytes(8), 0, 0, 0]))],
        [(b"m", bytes(24))],  # index and revision are not 5 and 9
        [good, (b"dj", msgpack.packb([b"v", 1]))],  # out of order
    ]:
        with pytest.raises(ValueError):
            sm.install_chunk(bad, bad[-1][0])
    assert sm.install_progress() == {
        "snapshot_id": b"id",
        "index": 5,
        "bytes": 0,
        "keys": 0,
        "last": None,
    }
    assert other_generation(sm) == []
    with pytest.raises(ValueError, match="last key"):
        sm.install_chunk([good], b"other")
    with pytest.raises(ValueError, match="not completely staged"):
        sm.install_finish()


def test_a_resent_chunk_is_skipped(sm: KVStateMachine, new_db: NewDB) -> None:
    src = KVStateMachine(new_db())
    _populate(src, 200)
    with src.snapshot_reader() as reader:
        sm.install_begin(b"s", reader.index, reader.revision)
        first, last = reader.chunk(None, 1024)
        sm.install_chunk(first, last)
        sm.install_chunk(first, last)  # sent again: nothing new
        assert sm.install_progress()["keys"] == len(first)
        for items, end in _chunks(reader, 1024, last):
            sm.install_chunk(items, end)
    sm.install_finish()
    assert live_state(sm) == live_state(src)


def test_another_snapshot_discards_the_staged_one(sm: KVStateMachine, new_db: NewDB) -> None:
    one, two = KVStateMachine(new_db()), KVStateMachine(new_db())
    _populate(one, 300, seed=1)
    _populate(two, 200, seed=2)
    with one.snapshot_reader() as reader:
        sm.install_begin(b"one", reader.index, reader.revision)
        items, last = reader.chunk(None, 4096)
        sm.install_chunk(items, last)
    assert sm.install_begin(b"one", reader.index, reader.revision) == last  # resume
    transfer(two, sm)  # a different id: starts over
    assert live_state(sm) == live_state(two)
    assert other_generation(sm) == []


def test_install_finish_refuses_a_snapshot_behind_the_state(sm: KVStateMachine) -> None:
    src = KVStateMachine(MemoryDB())
    _populate(src, 10)
    _populate(sm, 300)
    assert sm.applied_index > src.applied_index
    with src.snapshot_reader() as reader:
        sm.install_begin(b"old", reader.index, reader.revision)
        for items, last in _chunks(reader, 1 << 20):
            sm.install_chunk(items, last)
    before = live_state(sm)
    with pytest.raises(ValueError, match="behind"):
        sm.install_finish()
    sm.install_abort()
    assert sm.install_progress() is None
    assert other_generation(sm) != []
    while sm.collect_garbage(7):
        assert len(other_generation(sm)) > 0
    assert other_generation(sm) == []
    assert live_state(sm) == before


def test_garbage_is_collected_in_bounded_batches(new_db: NewDB) -> None:
    src, dst = KVStateMachine(new_db()), KVStateMachine(MemoryDB())
    _populate(src, 300)
    _populate(dst, 300, seed=3)
    garbage = len(live_state(dst)[-1])
    reader = src.snapshot_reader()
    dst.install_begin(b"x", reader.index, reader.revision)
    for items, last in _chunks(reader, 1 << 20):
        dst.install_chunk(items, last)
    dst.install_finish()
    assert len(other_generation(dst)) == garbage
    calls = 0
    while True:
        batches = dst._db.unsynced_batches
        more = dst.collect_garbage(50)
        calls += 1
        assert dst._db.unsynced_batches == batches + 1  # one batch per call
        assert len(other_generation(dst)) == max(0, garbage - 50 * calls)
        if not more:
            break
    assert dst.collect_garbage(50) is False
    assert live_state(dst) == live_state(src)


def test_other_prefixes_are_left_alone(db: Any, new_db: NewDB) -> None:
    foreign = {b"a": b"acceptor", b"v" + bytes(8): b"vote", b"p": b"compacted", b"c": b"x"}
    for key, value in foreign.items():
        db.put(key, value)
    sm = KVStateMachine(db)
    _populate(sm, 100)
    src = KVStateMachine(new_db())
    _populate(src, 100, seed=5)
    transfer(src, sm)
    again = KVStateMachine(new_db())
    _populate(again, 400, seed=6)
    transfer(again, sm)  # back to generation 0
    assert {k: db.get(k) for k in foreign} == foreign
    assert live_state(sm) == live_state(again)


# --- snapshots: crashes at every batch of an install -------------------------------------


class _Crash(Exception):
    pass


class CrashingDB(MemoryDB):
    """A MemoryDB whose process dies when it attempts its `budget`+1-th write."""

    budget: int | None = None

    def _write(self, ops: list, sync: bool) -> None:
        if self.budget is not None:
            if self.budget == 0:
                raise _Crash
            self.budget -= 1
        super()._write(ops, sync)


def _old_state() -> CrashingDB:
    """A replica with data and a previous install's garbage, all durable."""
    db = CrashingDB()
    sm = KVStateMachine(db)
    _populate(sm, 60, seed=4)
    other = KVStateMachine(MemoryDB())
    _populate(other, 40, seed=6)
    transfer(other, sm)
    _populate(sm, 80, seed=7)  # generation 1 now; 0 is empty
    stale = KVStateMachine(MemoryDB())
    _populate(stale, 30, seed=8)
    sm.install_begin(b"abandoned", 1, 1)  # some staged leftovers in generation 0
    reader = stale.snapshot_reader()
    items, last = reader.chunk(None, 600)
    sm.install_chunk(items, last)
    db.write_batch(sync=True).write()
    return db


def test_a_crash_at_any_batch_of_an_install_leaves_old_or_new(new_db: NewDB) -> None:
    src = KVStateMachine(new_db())
    _populate(src, 150, seed=9)
    src.apply([(src.applied_index + i, ()) for i in range(10)])  # ahead of the old state
    new = live_state(src)
    old = live_state(KVStateMachine(_old_state()))
    assert old != new

    db = _old_state()
    db.budget = 10**6
    transfer(src, KVStateMachine(db), max_bytes=700)
    writes = 10**6 - db.budget
    total_items = len(list(_chunk_items(src)))
    assert writes > 20

    seen = {"old": 0, "new": 0, "resumed_midway": 0}
    for budget in range(writes + 1):
        db = _old_state()
        db.budget = budget
        with contextlib.suppress(_Crash):
            transfer(src, KVStateMachine(db), max_bytes=700)
        db.budget = None
        for keep in range(db.unsynced_batches + 1):
            crashed = copy.deepcopy(db)
            crashed.crash(keep)
            sm = KVStateMachine(crashed)
            state = live_state(sm)
            assert state in (old, new), (budget, keep)
            seen["old" if state == old else "new"] += 1
            progress = sm.install_progress()
            staged = transfer(src, sm, max_bytes=700) if state == old else 0
            if progress is not None and progress["snapshot_id"] == b"snap-%d" % src.applied_index:
                assert staged == total_items - progress["keys"]  # resumed, not restarted
                seen["resumed_midway"] += progress["keys"] > 0
            while sm.collect_garbage(13):
                pass
            assert live_state(sm) == new
            assert other_generation(sm) == []
            check_session_index(sm)
    assert min(seen.values()) > 0, seen


def _chunk_items(sm: KVStateMachine) -> Iterator[tuple[bytes, bytes]]:
    with sm.snapshot_reader() as reader:
        for items, _ in _chunks(reader, 1 << 20):
            yield from items
