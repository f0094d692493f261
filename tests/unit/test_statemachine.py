"""KVStateMachine on a real LevelDB: KV semantics, versions, exactly-once
sessions, bad commands, persistence, checksums and snapshots."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgpack
import plyvel
import pytest

from kvstore.limits import MAX_KEY_BYTES, MAX_REQUEST_BYTES
from kvstore.protocol import Op, Request, Response, Status, encode_request
from kvstore.statemachine import KVStateMachine

ALICE = b"a" * 16
BOB = b"b" * 16


@pytest.fixture
def db(tmp_path: Path) -> Iterator[plyvel.DB]:
    handle = plyvel.DB(str(tmp_path / "db"), create_if_missing=True)
    yield handle
    handle.close()


@pytest.fixture
def sm(db: plyvel.DB) -> KVStateMachine:
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
    sm.apply([(0, (Client(BOB).put(b"j", b"w"), retry)), (1, ())])
    before = sm.checksum()
    db.close()

    db = plyvel.DB(path)
    try:
        sm = KVStateMachine(db)
        assert (sm.applied_index, sm.revision) == (2, 2)
        assert sm.get(b"k") == (b"v", 2)
        assert sm.checksum() == before
        # The session survived: the retry is answered from the record.
        assert run_one(sm, retry) == Response(Status.OK, version=2)
        assert run_one(sm, c.put(b"k", b"x")).version == 3
    finally:
        db.close()


def test_other_prefixes_are_left_alone(db: plyvel.DB) -> None:
    db.put(b"a", b"acceptor")
    db.put(b"v" + bytes(8), b"vote")
    sm = KVStateMachine(db)
    sm.apply([(0, (Client().put(b"k", b"v"),))])
    applied, revision, items = sm.snapshot_items()
    sm.restore(list(items), applied, revision)
    assert db.get(b"a") == b"acceptor"
    assert db.get(b"v" + bytes(8)) == b"vote"
    assert sm.key_count() == 1


# --- checksums and snapshots ------------------------------------------------------


def _log() -> list[tuple[int, tuple[bytes, ...]]]:
    a, b = Client(ALICE), Client(BOB)
    return [
        (0, (a.put(b"x", b"1"), b.put(b"y", b"2"))),
        (1, ()),
        (2, (a.cas(b"x", b"3", expected_value=b"1"), b.delete(b"y"), a.put(b"z", b""))),
    ]


def _fresh(tmp_path: Path, name: str) -> plyvel.DB:
    return plyvel.DB(str(tmp_path / name), create_if_missing=True)


def test_checksum_equal_for_the_same_log(tmp_path: Path) -> None:
    db1, db2 = _fresh(tmp_path, "1"), _fresh(tmp_path, "2")
    sm1, sm2 = KVStateMachine(db1), KVStateMachine(db2)
    log = _log()
    sm1.apply(log)
    for entry in log:  # the same log in smaller steps
        sm2.apply([entry])
    assert sm1.checksum() == sm2.checksum()
    assert sm1.key_count() == sm2.key_count() == 2
    db1.close()
    db2.close()


def test_checksum_differs_on_value_key_or_version(tmp_path: Path) -> None:
    sums = set()
    for name, commands in [
        ("base", (Client().put(b"k", b"v"),)),
        ("value", (Client().put(b"k", b"w"),)),
        ("key", (Client().put(b"j", b"v"),)),
        ("version", (Client(BOB).put(b"x", b"1"), Client().put(b"k", b"v"))),
    ]:
        db = _fresh(tmp_path, name)
        sm = KVStateMachine(db)
        sm.apply([(0, commands)])
        if name == "version":  # same k -> v as base, but at version 2
            sm.apply([(1, (Client(BOB).delete(b"x"),))])
        sums.add(sm.checksum())
        db.close()
    assert len(sums) == 4


def test_checksum_of_empty_store(sm: KVStateMachine) -> None:
    assert sm.checksum() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_snapshot_restore_round_trip(tmp_path: Path) -> None:
    src_db, dst_db = _fresh(tmp_path, "src"), _fresh(tmp_path, "dst")
    src, dst = KVStateMachine(src_db), KVStateMachine(dst_db)
    log = _log()
    src.apply(log)
    dst.apply([(0, (Client(b"c" * 16).put(b"stale", b"gone"),))])  # replaced below

    applied, revision, items = src.snapshot_items()
    src.apply([(3, (Client(b"d" * 16).put(b"late", b"not in snapshot"),))])
    dst.restore(items, applied, revision)

    assert (dst.applied_index, dst.revision) == (3, 5)
    assert dst.get(b"stale") is None
    assert dst.get(b"late") is None
    assert dst.get(b"x") == (b"3", 3)
    # Sessions came along: a retry of the last command gets its recorded result.
    retry = log[2][1][2]  # ALICE's last command: put z
    assert run_one(dst, retry) == Response(Status.OK, version=5)
    assert dst.revision == 5
    dst_db.close()
    src_db.close()
    reopened_db = plyvel.DB(str(tmp_path / "dst"))
    reopened = KVStateMachine(reopened_db)
    assert reopened.applied_index == 4
    assert reopened.get(b"x") == (b"3", 3)
    reopened_db.close()


def test_snapshot_restores_to_equal_checksum(tmp_path: Path) -> None:
    src_db, dst_db = _fresh(tmp_path, "src"), _fresh(tmp_path, "dst")
    src, dst = KVStateMachine(src_db), KVStateMachine(dst_db)
    src.apply(_log())
    applied, revision, items = src.snapshot_items()
    dst.restore(items, applied, revision)
    assert dst.checksum() == src.checksum()
    # Both continue identically from the snapshot point.
    nxt = [(3, (Client(b"e" * 16).put(b"x", b"after"),))]
    assert src.apply(nxt) == dst.apply(nxt)
    assert dst.checksum() == src.checksum()
    src_db.close()
    dst_db.close()


def test_restore_rejects_unknown_kind_and_changes_nothing(sm: KVStateMachine) -> None:
    sm.apply([(0, (Client().put(b"k", b"v"),))])
    with pytest.raises(ValueError, match="kind"):
        sm.restore([(b"a", b"x", b"y")], 9, 9)
    assert sm.applied_index == 1
    assert sm.get(b"k") == (b"v", 1)
    assert sm._db.get(b"ax") is None
