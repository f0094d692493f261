"""One fault run: a real cluster, concurrent clients, a nemesis, the checks.

Theory of operation
-------------------
`FaultRun.run()`:

1. starts a `FaultCluster` (3 or 5 real replica processes), each replica in
   a network namespace of its own (`net="netns"`, `tests.fault.netns`), or
   all on loopback with a `Firewall` for the partitions (`net="loopback"`);
2. starts `clients` worker threads, each with its own `KVClient` (short
   timeout) recording into one `History`: get / put / value-CAS / delete on
   a few hot keys, every written value unique (`w<worker>-<n>`). With
   `epoch_s` the hot keys change every epoch, so no key's subhistory grows
   without bound in a long run (the checker's cost is per key); and
   `bank_clients` more threads that move money between `accounts` keys
   with transactions and read them all at once with range reads (the bank
   workload, `_bank_worker`; issue 14), in a prefix of their own per epoch;
3. runs the `Nemesis` schedule for `duration_s` (one bounded fault at a
   time, each healed before the next);
4. stops the clients, heals everything, waits until the cluster settles
   (one leader, every replica applied up to the same commit index), reads
   every key used, recorded in the history too;
5. checks: (a) the history is linearizable (`tests.fault.linearizability`;
   the accounts of an epoch as one group of keys with a joint state);
   (b) every acknowledged write is visible in the final reads unless a later
   write overwrote it (`lost_writes`, the same property stated directly,
   with a plainer message); (c) every range read of the accounts saw the
   same total and no negative balance (`bank_problems`, again implied by
   (a) and stated plainly); (d) the replicas, stopped, have the same applied
   index and the same state-machine checksum; (e) no replica exited by
   itself and no replica logged a traceback; (f) the cluster settled.

Outcomes as the history records them: a reply is `ok` (a failed CAS is ok
with result False), BadRequest/RequestTooLarge are `fail` (nothing
happened), a timeout (ClusterUnavailable) or any other error is `unknown`
(a write may still take effect later; the checker allows either).

`stale_read_scenario` is the deterministic scenario that a replica serving
reads without its quorum fails: see its docstring. With `read="range"` the
stale read is a range read of two accounts after a transfer.

Everything a run makes stays under `root` (cluster files, replica logs,
history.jsonl, nemesis.log, summary.txt).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.client import KVClient
from client.errors import BadRequest, ClusterUnavailable, RequestTooLarge
from client.txn import cmp, range_args
from client.txn import op as txn_op
from replica.launch import REPLICA_MODULE
from tests.fault.cluster import FaultCluster
from tests.fault.history import (
    History,
    Kind,
    Operation,
    Outcome,
    TxnOutcome,
    range_pairs,
    txn_outcome,
    txn_spec,
)
from tests.fault.linearizability import Result, Verdict, check
from tests.fault.nemesis import (
    Cutter,
    Firewall,
    Nemesis,
    NemesisConfig,
    cut_links,
    parse_kinds,
    partition_links,
)
from tests.fault.netns import NetnsNetwork
from tests.fault.txnmodel import possible_writes, universe
from tests.harness import ReplicaState

FINAL = "final"
"""The process name of the final reads in the history."""

BANK_START = 100
"""Every account's balance when the bank workload creates it."""

FAULT_COMPACTION = {"log_slots": 50, "retained_slots": 10, "snapshot_chunk_bytes": 4096}
"""The `[compaction]` of fault runs: so small that every replica compacts
every few dozen slots and a replica that missed more than a few (killed,
paused, cut off) comes back by installing a snapshot, several times a run."""


@dataclass
class RunConfig:
    replicas: int = 3
    duration_s: float = 15.0
    seed: int = 0
    nemesis: str = "all"
    clients: int = 4
    keys: int = 3
    epoch_s: float = 0.0
    """0: the same hot keys for the whole run; else fresh keys every epoch."""
    op_timeout_s: float = 1.5
    attempt_timeout_s: float = 0.3
    think_s: float = 0.0
    """Pause between two operations of one client (spares the CPU)."""
    bank_clients: int = 0
    """Threads running the bank workload (0: none), besides `clients`."""
    accounts: int = 4
    """Accounts of the bank workload (per epoch): one group for the checker."""
    tick_ms: int = 10
    module: str = REPLICA_MODULE
    lease_reads: bool = False
    """The replicas run with --lease-reads (reads on the leader's lease)."""
    value_log_min_bytes: int | None = None
    """`[storage] value_log_min_bytes` (None: the default, 4 KiB; the
    workload's values are a few bytes, so 1 puts every value in the value
    log, kvstore/values.py)."""
    net: str = "netns"
    """"netns": each replica in a namespace of its own, partitions by
    iptables inside them; "loopback": all on 127.0.0.1, partitions by the
    replicas' gids (`nemesis.Firewall`)."""
    fault_min_s: float = 1.0
    fault_max_s: float = 3.0
    quiet_min_s: float = 0.5
    quiet_max_s: float = 1.5
    settle_timeout_s: float = 30.0
    check_seconds_per_key: float = 60.0
    verbose: bool = True
    compaction: dict[str, int] = field(default_factory=lambda: dict(FAULT_COMPACTION))
    """The cluster config's `[compaction]` table (empty: the defaults)."""


@dataclass
class Summary:
    """What a run found. `passed` only if every check passed."""

    config: RunConfig
    root: Path
    history: History
    result: Result | None = None
    faults: Counter[str] = field(default_factory=Counter)
    fault_log: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    bank: list[str] = field(default_factory=list)
    """What `bank_problems` found."""
    states: list[ReplicaState] = field(default_factory=list)
    settled: dict[str, Any] = field(default_factory=dict)
    installs: int = 0
    """Snapshot installs completed, counted in the replicas' logs."""
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    title: str = ""
    """The first line; by default it describes the random run."""

    @property
    def verdict(self) -> Verdict | None:
        return None if self.result is None else self.result.verdict

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE and not self.problems

    def text(self) -> str:
        cfg = self.config
        ops = self.history.operations()
        by_outcome = Counter(o.outcome for o in ops if o.process != FINAL)
        title = self.title or (
            f"fault run: {cfg.replicas} replicas ({cfg.module}, {cfg.net}), seed {cfg.seed}, "
            f"{cfg.duration_s:g}s of faults '{cfg.nemesis}', {cfg.clients} clients"
            + (f" + {cfg.bank_clients} bank clients" if cfg.bank_clients else "")
            + (", lease reads" if cfg.lease_reads else "")
            + (
                f", value log from {cfg.value_log_min_bytes} B"
                if cfg.value_log_min_bytes is not None
                else ""
            )
        )
        lines = [
            f"{title}; {self.seconds:.0f}s in all; files in {self.root}",
            f"operations: {sum(by_outcome.values())} (ok {by_outcome[Outcome.OK]}, "
            f"fail {by_outcome[Outcome.FAIL]}, unknown {by_outcome[Outcome.UNKNOWN]}, "
            f"pending {by_outcome[Outcome.PENDING]}) on "
            f"{len({o.key for o in ops if o.kind is not Kind.RANGE})} keys; by kind:",
            *("  " + ln for ln in self.history.summary_text().splitlines()),
            f"faults injected: {sum(self.faults.values())}"
            + "".join(f"\n  {k:<20} {n}" for k, n in sorted(self.faults.items())),
        ]
        if self.settled:
            lines.append(
                f"settled: {'yes' if self.settled.get('ok') else 'NO'} after "
                f"{self.settled.get('seconds', 0):.1f}s"
            )
        lines.append(
            f"snapshot installs: {self.installs}; compaction points at the end: "
            + ", ".join(
                str(r.get("compacted")) for r in self.settled.get("rows", []) if "error" not in r
            )
        )
        if self.states:
            applied = {s.applied_index for s in self.states}
            sums = {s.checksum for s in self.states}
            lines.append(
                "replicas: "
                + ", ".join(
                    f"{s.rid}: applied {s.applied_index}, {s.keys} keys, {s.checksum[:12]}"
                    for s in self.states
                )
                + ("  (agree)" if len(applied) == 1 and len(sums) == 1 else "  (DIFFER)")
            )
        lines.append(
            "acknowledged writes: "
            + ("all visible in the final reads" if not self.lost else f"{len(self.lost)} LOST")
        )
        lines += ["  " + ln for ln in self.lost[:20]]
        if self.config.bank_clients:
            lines.append(self._bank_line(ops))
        if self.result is not None:
            lines.append("linearizability: " + self.result.report())
        lines += [f"problem: {p}" for p in self.problems]
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"VERDICT: {verdict}: history "
            f"{'not checked' if self.verdict is None else self.verdict.value}"
            + (f"; {len(self.problems)} other problem(s)" if self.problems else "")
        )
        return "\n".join(lines)

    def _bank_line(self, ops: list[Operation]) -> str:
        """What the bank workload did, how long its groups took to check,
        and `bank_problems`."""
        txns = [o for o in ops if o.kind is Kind.TXN]
        moved = sum(o.outcome is Outcome.OK and o.result.succeeded for o in txns)
        ranges = sum(o.kind is Kind.RANGE and o.outcome is Outcome.OK for o in ops)
        line = f"bank: {len(txns)} transactions ({moved} moved money), {ranges} range reads ok"
        keys = self.result.keys if self.result is not None else {}
        groups = [r for k, r in keys.items() if isinstance(k, tuple)]
        if groups:
            seconds = sum(r.seconds for r in groups)
            line += f"; {len(groups)} group(s) of keys checked in {seconds:.2f}s"
        if not self.bank:
            return line + "; every range read saw the same total"
        return "\n  ".join([line, *self.bank])


# -- the checks that do not need the search ------------------------------------


def lost_writes(history: History) -> list[str]:
    """Every acknowledged write must be visible in the final read of its key
    unless overwritten. Precisely: the final value must come from a write
    (or the initial absence) that no acknowledged write strictly follows in
    real time. A transaction's writes count as writes of each key they
    write (`txnmodel.possible_writes`: both branches' when its outcome is
    unknown). Returns one line per key where that fails."""
    ops = history.operations()
    keys = universe(ops)
    finals = {o.key: o for o in ops if o.process == FINAL and o.kind is Kind.GET}
    writes: dict[Any, list[tuple[Operation, Any]]] = defaultdict(list)
    for o in ops:
        if o.process != FINAL:
            for key, value in possible_writes(o, keys):
                writes[key].append((o, value))
    out = []
    for key, final in sorted(finals.items(), key=lambda kv: str(kv[0])):
        if final.outcome is not Outcome.OK:
            out.append(f"{key!r}: the final read got no answer ({final.outcome.value})")
            continue
        ws = writes.get(key, [])
        acked = [w for w, _ in ws if w.outcome is Outcome.OK]
        # A source survives if no acknowledged write began after it ended.
        last_ack_invoke = max((w.invoke_ns for w in acked), default=-1)
        sources = [w for w, value in ws if value == final.result]
        ok = any(w.outcome is not Outcome.OK or last_ack_invoke <= w.complete_ns for w in sources)
        if final.result is None and not acked:
            ok = True  # still the initial absence (or an unacknowledged delete)
        if ok:
            continue
        if not sources and final.result is not None:
            out.append(f"{key!r}: final value {final.result!r} was never written")
            continue
        latest = [w for w in acked if not any(v.invoke_ns > w.complete_ns for v in acked)]
        out.append(
            f"{key!r}: final value {final.result!r}, but these acknowledged writes "
            f"came after its source and are not visible: "
            + "; ".join(w.describe() for w in latest[:5])
        )
    return out


def balance(value: bytes | None) -> int:
    """The balance in an account's value, b"<balance>:<unique tag>"."""
    return int((value or b"0").split(b":", 1)[0])


def bank_problems(history: History, accounts: int) -> list[str]:
    """Money is neither made nor lost: every acknowledged range read of an
    epoch's accounts that found them (the bank workload's and the final
    ones) saw all `accounts` of them, their balances summing to
    accounts * BANK_START, none negative. Implied by linearizability;
    stated directly, like `lost_writes`."""
    total = accounts * BANK_START
    out = []
    for o in history.operations():
        if o.kind is not Kind.RANGE or o.outcome is not Outcome.OK or not o.result:
            continue
        balances = [balance(v) for _, v in o.result]
        if len(balances) != accounts or sum(balances) != total or min(balances) < 0:
            out.append(
                f"{o.describe()}: {len(balances)} accounts, total {sum(balances)} "
                f"(expected {accounts} summing to {total}), lowest {min(balances)}"
            )
    return out[:20]


def compare_states(states: list[ReplicaState]) -> list[str]:
    problems = []
    applied = {s.applied_index for s in states}
    if len(applied) != 1:
        problems.append(
            "replicas applied different numbers of slots: "
            + ", ".join(f"{s.rid}: {s.applied_index}" for s in states)
        )
    elif len({s.checksum for s in states}) != 1:
        problems.append(
            f"replicas applied {applied.pop()} slots each but their data differ: "
            + ", ".join(f"{s.rid}: {s.checksum[:16]}" for s in states)
        )
    return problems


# -- the run --------------------------------------------------------------------


class FaultRun:
    """Runs one fault run under `root`; see the module doc."""

    def __init__(self, config: RunConfig, root: Path) -> None:
        self.cfg = config
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.history = History()
        self.keys_used: set[bytes] = set()
        self.bank_prefixes: set[bytes] = set()
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._log_file = open(self.root / "run.log", "a", encoding="utf-8")  # noqa: SIM115
        self.worker_errors: Counter[str] = Counter()

    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self._t0:8.2f}s] {msg}"
        self._log_file.write(line + "\n")
        self._log_file.flush()
        if self.cfg.verbose:
            print(line, flush=True)

    # -- workers --

    def _epoch(self) -> int:
        cfg = self.cfg
        return int((time.monotonic() - self._t0) / cfg.epoch_s) if cfg.epoch_s > 0 else 0

    def _keys_now(self) -> list[bytes]:
        return [f"e{self._epoch()}k{i}".encode() for i in range(self.cfg.keys)]

    def _worker(self, wid: int, addresses: list[str]) -> None:
        cfg = self.cfg
        rng = random.Random(cfg.seed * 1000 + wid)
        hist = self.history
        seen: dict[bytes, bytes | None] = {}
        n = 0
        with KVClient(
            addresses, timeout=cfg.op_timeout_s, attempt_timeout=cfg.attempt_timeout_s
        ) as client:
            while not self._stop.is_set():
                key = rng.choice(self._keys_now())
                self.keys_used.add(key)
                n += 1
                value = f"w{wid}-{n}".encode()
                r = rng.random()
                try:
                    if r < 0.40:
                        h = hist.invoke(wid, Kind.GET, key)
                        got = self.record_call(hist, h, client.get, key)
                        if got is not _UNKNOWN:
                            hist.ok(h, got)
                            seen[key] = got
                    elif r < 0.65:
                        h = hist.invoke(wid, Kind.PUT, key, value)
                        if self.record_call(hist, h, client.put, key, value) is not _UNKNOWN:
                            hist.ok(h)
                            seen[key] = value
                    elif r < 0.93:
                        exp = seen.get(key)
                        h = hist.invoke(wid, Kind.CAS, key, value, expected=exp)
                        if exp is None:
                            res = self.record_call(
                                hist, h, client.cas, key, value, expected_version=0
                            )
                        else:
                            res = self.record_call(
                                hist, h, client.cas, key, value, expected_value=exp
                            )
                        if res is not _UNKNOWN:
                            hist.ok(h, res.succeeded)
                            seen[key] = value if res.succeeded else res.value
                    else:
                        h = hist.invoke(wid, Kind.DELETE, key)
                        existed = self.record_call(hist, h, client.delete, key)
                        if existed is not _UNKNOWN:
                            hist.ok(h, existed)
                            seen[key] = None
                except Exception as exc:  # a bug in this harness: stop loudly
                    self.worker_errors[f"worker {wid} crashed: {exc!r}"] += 1
                    self.log(f"worker {wid} crashed: {exc!r}")
                    return
                if cfg.think_s > 0:
                    self._stop.wait(rng.uniform(0, 2 * cfg.think_s))

    def _bank_worker(self, wid: int, addresses: list[str]) -> None:
        """The bank workload: `accounts` keys under b"bank/e<epoch>/", each
        holding b"<balance>:<unique tag>", created together by the first
        transaction that finds none of them (BANK_START each). Then, on the
        client's last view of the balances: 50 % a transfer (a transaction:
        if both accounts still hold the values seen, move up to 20 from one
        to the other, else read both, which refreshes the view), 30 % a
        range read of every account (a multi-register read: one state), 20 %
        a get of one. Every value written is unique, so a read names the
        write it saw and a comparison the exact state it expects. A view
        made stale by an unknown outcome is refreshed by a range read."""
        cfg = self.cfg
        pid = cfg.clients + wid
        rng = random.Random(cfg.seed * 1000 + 500 + wid)
        views: dict[bytes, dict[bytes, bytes]] = {}
        n = 0
        with KVClient(
            addresses, timeout=cfg.op_timeout_s, attempt_timeout=cfg.attempt_timeout_s
        ) as client:
            while not self._stop.is_set():
                prefix = b"bank/e%d/" % self._epoch()
                accounts = [prefix + b"%d" % i for i in range(cfg.accounts)]
                self.bank_prefixes.add(prefix)
                self.keys_used.update(accounts)
                n += 1
                view = views.get(prefix)
                try:
                    r = rng.random()
                    if view is None or len(view) != len(accounts) or r < 0.3:
                        views[prefix] = self._bank_read(pid, client, prefix, accounts)
                    elif r < 0.8:
                        self._transfer(pid, client, view, rng, f"b{wid}-{n}".encode())
                    else:
                        key = rng.choice(accounts)
                        h = self.history.invoke(pid, Kind.GET, key)
                        got = self.record_call(self.history, h, client.get, key)
                        if got is not _UNKNOWN:
                            self.history.ok(h, got)
                        if got is _UNKNOWN or got is None:
                            view.clear()
                        else:
                            view[key] = got
                except Exception as exc:  # a bug in this harness: stop loudly
                    self.worker_errors[f"bank worker {wid} crashed: {exc!r}"] += 1
                    self.log(f"bank worker {wid} crashed: {exc!r}")
                    return
                if cfg.think_s > 0:
                    self._stop.wait(rng.uniform(0, 2 * cfg.think_s))

    def _bank_read(
        self, pid: int | str, client: KVClient, prefix: bytes, accounts: list[bytes]
    ) -> dict[bytes, bytes]:
        """A range read of the accounts, recorded; creates them if it finds
        none. Returns the view it read ({} when it does not know)."""
        hist = self.history
        start, end = range_args(prefix, prefix=True)
        h = hist.invoke(pid, Kind.RANGE, start, range_end=end)
        page = self.record_call(hist, h, client.range, prefix, prefix=True)
        if page is _UNKNOWN:
            return {}
        pairs = range_pairs(page)
        hist.ok(h, pairs)
        if pairs:
            return dict(pairs)
        if pairs is None:
            return {}
        compare = [cmp.missing(k) for k in accounts]
        create = [txn_op.put(k, b"%d:init" % BANK_START) for k in accounts]
        found = self._record_txn(pid, client, compare, create, [txn_op.get(prefix, prefix=True)])
        if found is None:
            return {}
        if found.succeeded:
            return {k: b"%d:init" % BANK_START for k in accounts}
        return dict(found.reads[0]) if found.reads else {}

    def _transfer(
        self, pid: int | str, client: KVClient, view: dict[bytes, bytes], rng: random.Random,
        tag: bytes,
    ) -> None:  # fmt: skip
        """Moves up to 20 between two accounts if they still hold what
        `view` says; updates `view` from what the transaction did or read."""
        a, b = rng.sample(sorted(view), 2)
        amount = rng.randint(0, min(20, max(balance(view[a]), 0)))
        new = {
            a: b"%d:%s" % (balance(view[a]) - amount, tag),
            b: b"%d:%s" % (balance(view[b]) + amount, tag),
        }
        found = self._record_txn(
            pid,
            client,
            [cmp.value(a) == view[a], cmp.value(b) == view[b]],
            [txn_op.put(a, new[a]), txn_op.put(b, new[b])],
            [txn_op.get(a), txn_op.get(b)],
        )
        if found is None or (not found.succeeded and found.reads is None):
            view.clear()
        elif found.succeeded:
            view.update(new)
        else:
            assert found.reads is not None
            for key, pairs in zip((a, b), found.reads, strict=True):
                if pairs:
                    view.update(pairs)
                else:
                    view.pop(key, None)

    def _record_txn(
        self, pid: int | str, client: KVClient, compare: list[Any], success: list[Any],
        failure: list[Any],
    ) -> TxnOutcome | None:  # fmt: skip
        """Runs and records one transaction; its outcome, None if unknown."""
        spec = txn_spec(compare, success, failure)
        h = self.history.invoke(pid, Kind.TXN, spec.keys()[0], txn=spec)
        resp = self.record_call(self.history, h, client.txn, compare, success, failure)
        if resp is _UNKNOWN:
            return None
        outcome = txn_outcome(resp)
        self.history.ok(h, outcome)
        return outcome

    def record_call(self, hist: History, handle: int, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Calls the client; records fail/unknown itself and returns _UNKNOWN
        then, else returns the call's result for the caller to record."""
        try:
            return fn(*args, **kwargs)
        except ClusterUnavailable:
            hist.unknown(handle)
        except (BadRequest, RequestTooLarge) as exc:
            hist.fail(handle)
            self.worker_errors[f"refused: {exc}"] += 1
        except Exception as exc:  # the outcome is unknown: be conservative
            hist.unknown(handle)
            self.worker_errors[f"{type(exc).__name__}: {exc}"] += 1
        return _UNKNOWN

    # -- phases --

    def run(self) -> Summary:
        cfg = self.cfg
        started = time.monotonic()
        summary = Summary(cfg, self.root, self.history)
        kinds = parse_kinds(cfg.nemesis, cfg.replicas)
        cluster, firewall = make_cluster(
            self.root / "cluster",
            cfg.replicas,
            cfg.net,
            partitions=any(k.startswith("partition") for k in kinds),
            tick_ms=cfg.tick_ms,
            module=cfg.module,
            compaction=cfg.compaction,
            replica_args=("--lease-reads",) if cfg.lease_reads else (),
            storage=(
                {"value_log_min_bytes": cfg.value_log_min_bytes}
                if cfg.value_log_min_bytes is not None
                else None
            ),
        )
        nemesis = Nemesis(
            cluster,
            firewall,
            NemesisConfig(
                kinds, cfg.fault_min_s, cfg.fault_max_s, cfg.quiet_min_s, cfg.quiet_max_s
            ),
            random.Random(cfg.seed),
            log=self.log,
        )
        workers: list[threading.Thread] = []
        try:
            self.log(f"starting {cfg.replicas} replicas ({cfg.module}) in {cluster.root}")
            cluster.start(timeout=30)
            self.log(f"leader {cluster.leader_id()}; {cfg.clients} clients, nemesis {kinds}")
            self._t0 = time.monotonic()
            for wid in range(cfg.clients):
                t = threading.Thread(
                    target=self._worker,
                    args=(wid, cluster.addresses),
                    name=f"client-{wid}",
                    daemon=True,
                )
                t.start()
                workers.append(t)
            for wid in range(cfg.bank_clients):
                t = threading.Thread(
                    target=self._bank_worker,
                    args=(wid, cluster.addresses),
                    name=f"bank-{wid}",
                    daemon=True,
                )
                t.start()
                workers.append(t)
            nemesis.start()
            self._stop.wait(cfg.duration_s)
            self._finish(summary, cluster, nemesis, workers)
        finally:
            self._stop.set()
            nemesis.stop()
            cluster.stop()
            if firewall is not None:
                firewall.close()
            summary.seconds = time.monotonic() - started
            self._save(summary, nemesis)
            self._log_file.close()
        return summary

    def _finish(
        self,
        summary: Summary,
        cluster: FaultCluster,
        nemesis: Nemesis,
        workers: list[threading.Thread],
    ) -> None:
        cfg = self.cfg
        self.log("stopping the clients and the nemesis")
        self._stop.set()
        for t in workers:
            t.join(cfg.op_timeout_s + 10)
        nemesis.stop()
        summary.faults = nemesis.counts()
        summary.problems += nemesis.problems
        summary.problems += list(self.worker_errors_that_matter())
        self.log("healed; waiting for the cluster to settle")
        summary.settled = cluster.wait_settled(cfg.settle_timeout_s)
        if not summary.settled["ok"]:
            summary.problems.append(
                f"the cluster did not settle within {cfg.settle_timeout_s:g}s after healing: "
                + "; ".join(_row(r) for r in summary.settled["rows"])
            )
        self.log(
            f"settled={summary.settled['ok']} after {summary.settled['seconds']:.1f}s; "
            f"final reads of {len(self.keys_used)} keys"
        )
        self.final_reads(cluster)
        summary.lost = lost_writes(self.history)
        if summary.lost:
            summary.problems.append(f"{len(summary.lost)} key(s) lost acknowledged writes")
        summary.bank = bank_problems(self.history, cfg.accounts)
        if summary.bank:
            summary.problems.append(f"{len(summary.bank)} range read(s) saw money made or lost")
        self.log(f"checking {len(self.history)} operations for linearizability")
        summary.result = check(self.history, max_seconds_per_key=cfg.check_seconds_per_key)
        self.log(f"checker: {summary.result.verdict.value}")
        cluster.stop(grace=10)
        for rid, code in cluster.reap():
            summary.problems.append(f"replica {rid} exited with status {code}")
        summary.states = cluster.state_checksums()
        summary.problems += compare_states(summary.states)
        summary.installs = cluster.log_count("snapshot installed")
        for rid, lines in cluster.log_errors().items():
            summary.problems.append(
                f"replica {rid} logged {len(lines)} error line(s), first: {lines[0][:200]}"
            )

    def worker_errors_that_matter(self) -> list[str]:
        return [
            f"{msg} (x{n})"
            for msg, n in self.worker_errors.items()
            if "crashed" in msg or "refused" in msg
        ]

    def final_reads(self, cluster: FaultCluster) -> None:
        hist = self.history
        with KVClient(cluster.addresses, timeout=10.0, attempt_timeout=1.0) as client:
            for key in sorted(self.keys_used):
                h = hist.invoke(FINAL, Kind.GET, key)
                got = self.record_call(hist, h, client.get, key)
                if got is not _UNKNOWN:
                    hist.ok(h, got)
            for prefix in sorted(self.bank_prefixes):
                start, end = range_args(prefix, prefix=True)
                h = hist.invoke(FINAL, Kind.RANGE, start, range_end=end)
                page = self.record_call(hist, h, client.range, prefix, prefix=True)
                if page is not _UNKNOWN:
                    hist.ok(h, range_pairs(page))

    def _save(self, summary: Summary, nemesis: Nemesis) -> None:
        t0 = int(self._t0 * 1e9)
        summary.fault_log = [e.describe(t0) for e in nemesis.events]
        try:
            self.history.save(self.root / "history.jsonl")
            (self.root / "nemesis.log").write_text("\n".join(summary.fault_log) + "\n")
            (self.root / "summary.txt").write_text(summary.text() + "\n")
        except OSError as exc:
            self.log(f"could not save the run's files: {exc}")


class _Unknown:
    def __repr__(self) -> str:
        return "<unknown>"


_UNKNOWN = _Unknown()


def _row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r.get('address')}: {r['error']}"
    return (
        f"{r.get('id')}: {r.get('role')} leader={r.get('leader')} "
        f"commit={r.get('commit_index')} applied={r.get('applied_index')}"
    )


def _acknowledged_txn(
    run: FaultRun, process: str, client: KVClient, compare: list[Any], success: list[Any]
) -> None:
    """A transaction of the scenario, recorded; it must succeed."""
    found = run._record_txn(process, client, compare, success, [])
    if found is None or not found.succeeded:
        raise RuntimeError(f"the scenario's transaction was not acknowledged: {found}")


def run(config: RunConfig, root: Path) -> Summary:
    return FaultRun(config, root).run()


NETS = ("netns", "loopback")


def make_cluster(
    root: Path, replicas: int, net: str, *, partitions: bool = True, **kw: Any
) -> tuple[FaultCluster, Cutter | None]:
    """A `FaultCluster` (not started) on the chosen network, and what cuts
    its links (None on loopback without partitions). Close the cutter after
    stopping the cluster."""
    if net == "netns":
        network = NetnsNetwork(list(range(1, replicas + 1)))
        try:
            return FaultCluster(root, replicas, net=network, **kw), network
        except BaseException:
            network.close()
            raise
    if net != "loopback":
        raise ValueError(f"unknown network {net!r}: use {' or '.join(NETS)}")
    firewall = Firewall() if partitions else None
    return FaultCluster(root, replicas, **kw), firewall


# -- the deterministic stale-read scenario --------------------------------------


def stale_read_scenario(
    root: Path,
    module: str = REPLICA_MODULE,
    *,
    replicas: int = 3,
    net: str = "netns",
    verbose: bool = True,
    read: str = "get",
    lease_reads: bool = False,
) -> Summary:
    """A leader cut off from its peers but not from clients must not answer
    a read with old data. `lease_reads`: the replicas answer reads on the
    leader's read lease (--lease-reads), which must have ended by step 4.

    With `read="get"` the key is b"stale" and the writes are puts. With
    `read="range"` (issue 14) two accounts b"stale/a" and b"stale/b" are
    created together by a transaction in step 1, step 3 is a transfer (a
    transaction comparing both values) and step 4 a range read of the
    prefix b"stale/": a stale answer shows both old values after the
    transfer was acknowledged, which only the check of the two keys
    together as one state (tests/fault/txnmodel.py) can judge.

    1. put(k, v1) through the leader L, acknowledged.
    2. Cut L off from every peer (both ways), then at once SIGSTOP L: its
       clock stops, so a replica that trusts its own belief that it leads
       still believes it when it wakes up.
    3. The others elect a new leader; put(k, v2) through it, acknowledged.
    4. A client that knows only L's address sends get(k); L is resumed
       while that request waits. A correct replica cannot confirm its
       leadership with a majority: the read fails (unknown). A replica that
       reads its local state answers v1 after v2 was acknowledged: the
       history is not linearizable.
    5. Heal, settle, final reads, the usual checks.
    """
    if read not in ("get", "range"):
        raise ValueError(f"read must be get or range, not {read!r}")
    root = Path(root)
    cfg = RunConfig(
        replicas=replicas,
        duration_s=0,
        nemesis="partition",
        module=module,
        net=net,
        verbose=verbose,
        lease_reads=lease_reads,
    )
    run = FaultRun(cfg, root)
    summary = Summary(
        cfg, root, run.history,
        title=f"stale-read scenario ({read}): {replicas} replicas ({module}, {net})"
        + (", lease reads" if lease_reads else ""),
    )  # fmt: skip
    hist = run.history
    key = b"stale"
    prefix, pair = b"stale/", [b"stale/a", b"stale/b"]
    started = time.monotonic()
    cluster, firewall = make_cluster(
        root / "cluster",
        replicas,
        net,
        module=module,
        replica_args=("--lease-reads",) if lease_reads else (),
    )
    assert firewall is not None
    try:
        cluster.start(timeout=30)
        leader = cluster.leader_id()
        assert leader is not None
        others = [r for r in cluster.ids if r != leader]
        run.log(f"leader is {leader}")
        if read == "get":
            run.keys_used.add(key)
        else:
            run.keys_used.update(pair)
            run.bank_prefixes.add(prefix)
        with KVClient(cluster.addresses, timeout=10, attempt_timeout=1) as c:
            if read == "get":
                h = hist.invoke("a", Kind.PUT, key, b"v1")
                c.put(key, b"v1")
                hist.ok(h)
            else:
                _acknowledged_txn(run, "a", c, [cmp.missing(k) for k in pair],
                                  [txn_op.put(k, k[-1:] + b"1") for k in pair])  # fmt: skip
        cut_links(cluster, firewall, partition_links([[leader], others]))
        cluster.pause(leader)
        run.log(f"isolated and paused {leader}")
        summary.faults["partition-leader+pause"] += 1
        new = cluster.wait_for_leader(20, exclude=(leader,))
        run.log(f"new leader {new}")
        with KVClient([cluster.address(r) for r in others], timeout=10, attempt_timeout=1) as c:
            if read == "get":
                h = hist.invoke("b", Kind.PUT, key, b"v2")
                c.put(key, b"v2")
                hist.ok(h)
            else:
                _acknowledged_txn(run, "b", c, [cmp.value(k) == k[-1:] + b"1" for k in pair],
                                  [txn_op.put(k, k[-1:] + b"2") for k in pair])  # fmt: skip
        run.log("v2 acknowledged by the new majority")

        def read_old() -> None:
            with KVClient([cluster.address(leader)], timeout=3, attempt_timeout=3) as c:
                if read == "get":
                    h = hist.invoke("c", Kind.GET, key)
                    got = run.record_call(hist, h, c.get, key)
                else:
                    start, end = range_args(prefix, prefix=True)
                    h = hist.invoke("c", Kind.RANGE, start, range_end=end)
                    page = run.record_call(hist, h, c.range, prefix, prefix=True)
                    got = page if page is _UNKNOWN else range_pairs(page)
                if got is not _UNKNOWN:
                    hist.ok(h, got)
                    run.log(f"the old leader answered {got!r}")
                else:
                    run.log("the old leader did not answer (as it must not)")

        reader = threading.Thread(target=read_old)
        reader.start()
        time.sleep(0.3)
        cluster.resume(leader)
        reader.join(10)
        firewall.heal()
        summary.settled = cluster.wait_settled(30)
        if not summary.settled["ok"]:
            summary.problems.append("the cluster did not settle after healing")
        run.final_reads(cluster)
        summary.lost = lost_writes(hist)
        summary.result = check(hist)
        run.log(f"checker: {summary.result.verdict.value}")
        cluster.stop(grace=10)
        summary.states = cluster.state_checksums()
        summary.problems += compare_states(summary.states)
    finally:
        cluster.stop()
        firewall.close()
        summary.seconds = time.monotonic() - started
        try:
            hist.save(root / "history.jsonl")
            (root / "summary.txt").write_text(summary.text() + "\n")
        except OSError:
            pass
        run._log_file.close()
    return summary
