"""Ranges and transactions on a real 3-replica cluster (issue 14).

- Ranges over 10,000 keys, page by page with limits and continuations, by
  prefix, from a key and over [key, range_end), linearizable and stale,
  keys-only and count-only, equal a Python dict model of what was written;
  a range delete removes a prefix at one revision on every replica.
- A bank: concurrent clients move money between accounts with
  transactions (compare both versions, then put both balances) while the
  leader is killed with SIGKILL. The total never changes and no balance
  goes negative in any snapshot a reader takes (a range read of every
  account is one state), and the replicas end identical.

Every wait polls with a deadline (tests/harness.py wait_for).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest

from client import ClusterUnavailable, KVClient, SessionExpired, cmp, op
from kvstore.limits import MAX_RANGE_KEYS
from kvstore.protocol import KeyValue
from replica.launch import find_leader
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.timeout(240)

KEYS = 10_000


def _load(client: KVClient, rng: random.Random) -> dict[bytes, tuple[bytes, int]]:
    """10,000 keys under a few prefixes (some binary), written 100 to a
    transaction, then some overwritten and some deleted; returns the model
    key -> (value, version)."""
    prefixes = [b"app/", b"app/conf/", b"users/", b"\x00bin/", b"z\xff"]
    keys = [rng.choice(prefixes) + b"%05d" % i for i in range(KEYS)]
    model: dict[bytes, tuple[bytes, int]] = {}
    for start in range(0, KEYS, 100):
        chunk = keys[start : start + 100]
        puts = [op.put(k, rng.randbytes(rng.randint(0, 40))) for k in chunk]
        done = client.txn((), puts)
        assert done.succeeded
        for put in puts:
            model[put.key] = (put.value, done.revision)
    for key in rng.sample(keys, 300):
        value = b"overwritten %d" % rng.randint(0, 99)
        model[key] = (value, client.put(key, value))
    for key in rng.sample(keys, 200):
        if client.delete(key):
            del model[key]
    return model


def _expected(model: dict, start: bytes, end: bytes | None) -> list[tuple[bytes, bytes, int]]:
    return [
        (key, value, version)
        for key, (value, version) in sorted(model.items())
        if key >= start and (end is None or key < end)
    ]


def _paged(client: KVClient, start: bytes, end: bytes | None, limit: int, stale: bool) -> list:
    """Follows the continuations by hand, checking each page's promises."""
    got: list[KeyValue] = []
    key = start
    pages = 0
    while True:
        if end is None:
            page = client.range(key, from_key=True, limit=limit, stale=stale)
        else:
            page = client.range(key, end, limit=limit, stale=stale)
        pages += 1
        assert page.count == len(page.kvs) <= min(limit or MAX_RANGE_KEYS, MAX_RANGE_KEYS)
        assert [kv.key for kv in page.kvs] == sorted(kv.key for kv in page.kvs)
        got += page.kvs
        if not page.more:
            break
        assert page.next_key is not None and page.next_key > got[-1].key
        key = page.next_key
    assert pages <= len(got) // (limit or MAX_RANGE_KEYS) + 1
    return [(kv.key, kv.value, kv.version) for kv in got]


def test_ranges_over_10000_keys_match_a_dict_model(cluster: Cluster) -> None:
    rng = random.Random(14)
    client = cluster.client(timeout=20.0)
    model = _load(client, rng)
    cases = [
        (b"app/", b"app0"),  # a prefix that holds another prefix
        (b"app/conf/", b"app/conf0"),
        (b"users/", b"users0"),
        (b"\x00", None),  # every key
        (b"users/04000", None),  # from a key
        (b"\x00bin/", b"app/conf/05000"),  # [key, range_end) across prefixes
        (b"z\xff", None),
        (b"nothing/", b"nothing0"),
    ]
    for start, end in cases:
        want = _expected(model, start, end)
        for limit in (0, 1, 7, 999, 3000):
            if limit == 1 and len(want) > 50:
                continue  # one key a page: too slow to be worth it for big ranges
            assert _paged(client, start, end, limit, stale=False) == want, (start, end, limit)
        if end is not None:
            assert client.count(start, end) == len(want)
            listed = list(client.iter_range(start, end, keys_only=True))
            assert [(kv.key, kv.value) for kv in listed] == [(k, None) for k, _, _ in want]
    # Stale reads of each replica, once it has applied everything.
    revision = client.range(b"\x00", from_key=True, limit=1).revision
    for rid in cluster.ids:
        with KVClient([cluster.address(rid)], timeout=10.0) as one:
            wait_for(
                f"replica {rid} to apply revision {revision}",
                lambda one=one: (
                    one.range(b"\x00", from_key=True, limit=1, stale=True).revision >= revision
                ),
            )
            assert _paged(one, b"\x00", None, 2500, stale=True) == _expected(model, b"\x00", None)
    # A range delete: one revision, every key of the prefix, nothing else.
    doomed = _expected(model, b"users/", b"users0")
    assert client.delete_range(b"users/", prefix=True) == len(doomed)
    after = client.range(b"\x00", from_key=True, limit=1).revision
    assert after == revision + 1
    for key, *_ in doomed:
        del model[key]
    assert _paged(client, b"\x00", None, 0, stale=False) == _expected(model, b"\x00", None)


# --- the bank -------------------------------------------------------------------------

ACCOUNTS = [f"bank/{i:02d}" for i in range(8)]
OPENING = 100


def _balances(client: KVClient) -> dict[str, int]:
    """One linearizable range read of every account: one state of the store."""
    page = client.range("bank/", prefix=True)
    assert not page.more
    return {kv.key.decode(): int(kv.value) for kv in page.kvs}


class Bank:
    """Transfer clients and an auditor, each a thread with its own client."""

    def __init__(self, cluster: Cluster, workers: int) -> None:
        self.cluster = cluster
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.transfers = [0] * workers  # committed transfers per worker
        self.rngs = [random.Random(w) for w in range(workers)]
        self.audits = 0
        self.calls: dict[str, int] = {}  # outcomes, for a report on a timeout
        self.threads = [
            threading.Thread(target=self._guard, args=(self._transfer, w), daemon=True)
            for w in range(workers)
        ] + [threading.Thread(target=self._guard, args=(self._audit, 0), daemon=True)]

    def _guard(self, body: Callable[[KVClient, int], None], w: int) -> None:
        client = KVClient(self.cluster.addresses, timeout=10.0, attempt_timeout=0.3)
        try:
            while not self.stop.is_set():
                # A transfer's outcome may be unknown: the invariant holds either way.
                try:
                    body(client, w)
                    outcome = "ok"
                except (ClusterUnavailable, SessionExpired) as exc:
                    outcome = type(exc).__name__
                self.calls[outcome] = self.calls.get(outcome, 0) + 1
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(f"{body.__name__}[{w}]: {type(exc).__name__}: {exc}")
        finally:
            client.close()

    def _transfer(self, client: KVClient, w: int) -> None:
        rng = self.rngs[w]
        source, target = rng.sample(ACCOUNTS, 2)
        page = client.range(source)  # the key alone, with its version
        other = client.range(target)
        if not page.kvs or not other.kvs:
            self.errors.append(f"an account is missing: {source} or {target}")
            return
        (src,), (dst,) = page.kvs, other.kvs
        amount = rng.randint(1, 30)
        if int(src.value) < amount:
            return
        done = client.txn(
            [cmp.version(source) == src.version, cmp.version(target) == dst.version],
            [
                op.put(source, str(int(src.value) - amount)),
                op.put(target, str(int(dst.value) + amount)),
            ],
            [op.get("bank/", prefix=True)],  # lost a race: the balances as they are now
        )
        if done.succeeded:
            self.transfers[w] += 1

    def _audit(self, client: KVClient, _: int) -> None:
        balances = _balances(client)
        self._check(balances, "range read")
        self.audits += 1
        # The same through a read-only transaction (applied through the log).
        # After a retry the answer comes from the session record: no results.
        responses = client.txn((), [op.get("bank/", prefix=True)]).responses
        if responses is not None:
            (snapshot,) = responses
            self._check({kv.key.decode(): int(kv.value) for kv in snapshot.kvs}, "txn read")

    def _check(self, balances: dict[str, int], how: str) -> None:
        if sorted(balances) != ACCOUNTS or sum(balances.values()) != OPENING * len(ACCOUNTS):
            self.errors.append(f"{how}: the total moved: {balances}")
        if any(v < 0 for v in balances.values()):
            self.errors.append(f"{how}: a negative balance: {balances}")

    def run_until(self, done: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        try:
            wait_for(what, lambda: done() or bool(self.errors), timeout)
        except pytest.fail.Exception as exc:
            seen = f"transfers {self.transfers}, audits {self.audits}, calls {self.calls}"
            raise AssertionError(f"{exc}; {seen}; status {self.cluster.status()}") from None
        assert not self.errors, self.errors


def test_bank_transfers_stay_consistent_across_a_leader_kill(cluster: Cluster) -> None:
    client = cluster.client(timeout=20.0)
    opened = client.txn(
        [cmp.missing(a) for a in ACCOUNTS], [op.put(a, str(OPENING)) for a in ACCOUNTS]
    )
    assert opened.succeeded
    bank = Bank(cluster, workers=4)
    for thread in bank.threads:
        thread.start()
    try:
        bank.run_until(lambda: sum(bank.transfers) >= 40 and bank.audits >= 5, "transfers")
        old = find_leader(cluster.status())
        assert old is not None
        cluster.kill(old)
        before = sum(bank.transfers)
        new = cluster.wait_for_leader(exclude=(old,))
        assert new != old
        bank.run_until(lambda: sum(bank.transfers) >= before + 40, "transfers under the new leader")
        cluster.start_replica(old)
        bank.run_until(lambda: sum(bank.transfers) >= before + 80, "transfers after the restart")
    finally:
        bank.stop.set()
        for thread in bank.threads:
            thread.join(15)
    assert not bank.errors, bank.errors
    final = _balances(client)
    assert sum(final.values()) == OPENING * len(ACCOUNTS) and min(final.values()) >= 0
    assert final != {a: OPENING for a in ACCOUNTS}  # money did move
    revision = client.range("bank/", prefix=True).revision

    def caught_up() -> bool:
        reports = cluster.status()
        return all(r.get("revision", -1) >= revision for r in reports)

    wait_for("every replica to apply the last transfer", caught_up, 30)
    cluster.stop()
    states = cluster.state_checksums()
    assert len({(s.applied_index, s.revision, s.checksum) for s in states}) == 1, states
