"""Fault injection against real clusters, checked for linearizability.

Short runs for CI (a few minutes in all): one per nemesis family and cluster
size, each with the bank workload (transactions and range reads, checked
as one group of keys) beside the register workload; the deterministic
stale-read scenario, with a GET and with a range read, against the real
replica (must pass) and against deliberately broken ones (must be caught);
and checks of the pieces that need no cluster. The long run is `python -m
tests.fault.longrun` (docs/FAULTS.md).
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from replica.transport import HEARTBEAT_TIMEOUT_MS
from tests.fault.history import History, Kind, Operation, Outcome, TxnOutcome, TxnSpec, TxnStep
from tests.fault.linearizability import Verdict
from tests.fault.nemesis import ALL_KINDS, FAMILIES, Firewall, parse_kinds, partition_links
from tests.fault.netns import PREFIX as NETNS_PREFIX
from tests.fault.netns import NetnsNetwork
from tests.fault.runner import (
    BANK_START,
    FINAL,
    RunConfig,
    Summary,
    bank_problems,
    compare_states,
    lost_writes,
    run,
)
from tests.fault.runner import stale_read_scenario as scenario

SHORT = {"duration_s": 12.0, "fault_min_s": 1.0, "fault_max_s": 2.0,
         "quiet_min_s": 0.3, "quiet_max_s": 0.8,
         "bank_clients": 2, "accounts": 4}  # fmt: skip
"""Every short run has the bank workload too (issue 14): two clients moving
money between four accounts by transactions and reading them all by range
reads, under the family's faults."""

LONGER_THAN_HEARTBEAT = {
    "fault_min_s": HEARTBEAT_TIMEOUT_MS / 1000 + 0.5,
    "fault_max_s": HEARTBEAT_TIMEOUT_MS / 1000 + 2.0,
}
"""Pauses and partitions outlast the peers' ZMTP heartbeat timeout. For a
pause, the paused replica's connections are dropped by the others and it
wakes to dead links and a backlog: the case that once aborted libzmq inside a
replica (docs/FAULTS.md). For a partition, a shorter cut loses no message:
TCP retransmits everything queued once the rules go, the cut-off replica
votes for every slot it missed and catches up by log; a longer one drops the
connections and the messages queued on them, so it comes back far behind
the others' compaction points and installs a snapshot."""

FAMILY_SHORT = {
    **{
        family: {**SHORT, **LONGER_THAN_HEARTBEAT, "duration_s": 16.0}
        for family in ("pause", "partition")
    },
    # A wipe takes its own time (the refusal, then the replacement: 4-5 s).
    "wipe": {**SHORT, "duration_s": 18.0},
}


def _chains() -> str:
    out = subprocess.run(["iptables", "-w", "5", "-S"], capture_output=True, text=True)
    return out.stdout


def _check_short_run(summary: Summary, family: str) -> None:
    print(summary.text())
    assert summary.passed, summary.text()
    assert sum(summary.faults.values()) >= 3, summary.faults
    assert set(summary.faults) <= set(FAMILIES[family])
    ok = sum(o.outcome is Outcome.OK for o in summary.history)
    assert ok >= 100, f"only {ok} operations succeeded: the cluster made little progress"
    # FAULT_COMPACTION: a replica killed, paused or cut off (past the
    # heartbeat timeout) misses far more than the retained tail and comes
    # back by installing a snapshot.
    assert summary.installs >= 2, f"only {summary.installs} snapshot install(s) in the run"
    _check_bank(summary)


def _check_bank(summary: Summary) -> None:
    """The bank workload ran and was checked as one group of accounts."""
    ops = summary.history.operations()
    txns = [o.result for o in ops if o.kind is Kind.TXN and o.outcome is Outcome.OK]
    moved = sum(r.succeeded for r in txns)
    ranges = sum(o.kind is Kind.RANGE and o.outcome is Outcome.OK and bool(o.result) for o in ops)
    assert moved >= 10 and ranges >= 10, f"{moved} transfers and {ranges} range reads ok"
    accounts = summary.config.accounts
    assert summary.result is not None
    groups = [k for k in summary.result.keys if isinstance(k, tuple)]
    assert groups and all(len(k) == accounts for k in groups), groups
    assert not summary.bank, summary.bank


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.mark.parametrize("replicas", [3, 5])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_short_run(family: str, replicas: int, netns_ok: None, run_dir: Path) -> None:
    """Each replica in a network namespace of its own (veth pairs, a bridge,
    iptables DROP inside the namespaces for the partitions)."""
    seed = 100 * replicas + list(FAMILIES).index(family)
    lengths = FAMILY_SHORT.get(family, SHORT)
    summary = run(RunConfig(replicas=replicas, seed=seed, nemesis=family, **lengths), run_dir)
    _check_short_run(summary, family)
    assert f"{NETNS_PREFIX}{os.getpid()}-" not in _namespaces(), "namespaces were left behind"


def test_short_run_with_every_value_in_the_value_log(netns_ok: None, run_dir: Path) -> None:
    """The kill family with `[storage] value_log_min_bytes = 1`: every value
    the workload writes lives in the replicas' value logs (kvstore/values.py),
    read back through kill -9s, restarts, snapshot installs and the value
    log's garbage collection, and checked like any run."""
    cfg = RunConfig(replicas=3, seed=31, nemesis="kill", value_log_min_bytes=1, **SHORT)
    summary = run(cfg, run_dir)
    _check_short_run(summary, "kill")
    assert "value_log_min_bytes = 1" in (run_dir / "cluster" / "cluster.toml").read_text()
    assert list((run_dir / "cluster").glob("data*/values/*.vlog")), "no value log segment"


def test_short_run_on_loopback(firewall_ok: None, run_dir: Path) -> None:
    """The same partitions with every replica on 127.0.0.1, cut by gid."""
    cfg = RunConfig(
        replicas=3, seed=7, nemesis="partition", net="loopback", **FAMILY_SHORT["partition"]
    )
    _check_short_run(run(cfg, run_dir), "partition")
    assert f"KVF{os.getpid()}" not in _chains(), "the iptables chain was left behind"


def test_broken_replica_is_caught(netns_ok: None, run_dir: Path) -> None:
    """A leader that serves reads from local state, without confirming with
    a majority that it still leads, answers a stale read: the checker must
    say so."""
    summary = scenario(run_dir, "tests.fault.broken_replica")
    print(summary.text())
    assert summary.verdict is Verdict.VIOLATION, summary.text()
    bad = summary.result.violations()
    assert [k.key for k in bad] == [b"stale"]
    assert "read b'v1' but the register holds b'v2'" in str(bad[0])


def test_real_replica_passes_the_stale_read_scenario(netns_ok: None, run_dir: Path) -> None:
    summary = scenario(run_dir)
    print(summary.text())
    assert summary.passed, summary.text()


def test_real_replica_with_lease_reads_passes_the_stale_read_scenario(
    netns_ok: None, run_dir: Path
) -> None:
    """With --lease-reads the paused old leader wakes up after its lease
    ended (0.8 x (election timeout - 1 tick) from its last confirmed
    heartbeat round): it asks a majority again, cannot, and does not answer."""
    summary = scenario(run_dir, lease_reads=True)
    print(summary.text())
    assert summary.passed, summary.text()


def test_a_read_lease_past_its_bound_is_caught(netns_ok: None, run_dir: Path) -> None:
    """tests.fault.broken_lease_replica keeps its lease for a minute: the
    old leader answers from it after the new leader took v2."""
    summary = scenario(run_dir, "tests.fault.broken_lease_replica", lease_reads=True)
    print(summary.text())
    assert summary.verdict is Verdict.VIOLATION, summary.text()
    bad = summary.result.violations()
    assert [k.key for k in bad] == [b"stale"]
    assert "read b'v1' but the register holds b'v2'" in str(bad[0])


def test_broken_range_reads_are_caught(netns_ok: None, run_dir: Path) -> None:
    """A leader that serves RANGE reads (only) from local state answers a
    range read of two accounts with both values from before an acknowledged
    transfer: the check of the two keys as one state must say so."""
    summary = scenario(run_dir, "tests.fault.broken_range_replica", read="range")
    print(summary.text())
    assert summary.verdict is Verdict.VIOLATION, summary.text()
    bad = summary.result.violations()
    assert [k.key for k in bad] == [(b"stale/a", b"stale/b")]
    assert "read b'stale/a' = b'a1' but it holds b'a2'" in str(bad[0])


def test_broken_transaction_compares_are_caught(firewall_ok: None, run_dir: Path) -> None:
    """Replicas whose transactions compare against the state stored before
    the current batch (tests.fault.broken_txn_replica): two transfers
    committed together both succeed on the balances they saw. No fault is
    needed, only the bank workload: the group check must find a transaction
    that succeeded although its comparisons did not hold."""
    cfg = RunConfig(
        replicas=3, duration_s=8.0, seed=11, nemesis="none", net="loopback", clients=0,
        bank_clients=3, module="tests.fault.broken_txn_replica",
    )  # fmt: skip
    summary = run(cfg, run_dir)
    print(summary.text())
    assert summary.verdict is Verdict.VIOLATION, summary.text()
    (bad,) = summary.result.violations()
    assert bad.key == tuple(b"bank/e0/%d" % i for i in range(cfg.accounts))
    assert "reported success but its comparisons do not hold" in str(bad)


def test_real_replica_passes_the_stale_range_scenario(netns_ok: None, run_dir: Path) -> None:
    summary = scenario(run_dir, read="range")
    print(summary.text())
    assert summary.passed, summary.text()
    (read,) = [o for o in summary.history if o.process == "c"]
    assert read.kind is Kind.RANGE
    # No answer, or one after the old leader learned of the transfer.
    assert read.outcome is Outcome.UNKNOWN or read.result == (
        (b"stale/a", b"a2"),
        (b"stale/b", b"b2"),
    ), read.describe()


def test_firewall_cuts_one_direction_and_cleans_up(firewall_ok: None) -> None:
    with Firewall() as fw:
        assert f"-N {fw.chain}" in _chains()
        fw.cut(3_999_999, 9)
        assert "--gid-owner 3999999" in _chains()
        fw.heal()
        assert "--gid-owner 3999999" not in _chains()
        assert f"-N {fw.chain}" in _chains()
    assert fw.chain not in _chains()


_LISTEN = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(); print('up', flush=True)\n"
    "time.sleep(60)\n"
)
_CONNECT = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)"


def test_netns_network_cuts_one_direction_and_cleans_up(netns_ok: None) -> None:
    import sys

    def reaches(net: NetnsNetwork, src: int, dst: int) -> bool:
        cmd = net.command(src, [sys.executable, "-c", _CONNECT, net.address(dst), "7001"])
        return subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0

    with NetnsNetwork([1, 2, 3]) as net:
        listeners = []
        for rid in (1, 2):
            cmd = [sys.executable, "-c", _LISTEN, net.address(rid), "7001"]
            p = subprocess.Popen(net.command(rid, cmd), stdout=subprocess.PIPE)
            assert p.stdout is not None and p.stdout.readline() == b"up\n"
            listeners.append(p)
        assert f"{net.tag}-r3" in _namespaces()
        assert reaches(net, 1, 2) and reaches(net, 2, 1) and reaches(net, 3, 2)
        with socket.create_connection((net.address(2), 7001), 2):
            pass  # this process (the clients) reaches the replicas
        net.cut(1, 2, 7001)
        assert "-j DROP" in net.rules(1)
        assert not reaches(net, 1, 2), "the cut 1 -> 2 let a connection through"
        assert reaches(net, 2, 1) and reaches(net, 3, 2), "the cut hit other links"
        net.heal()
        assert "-j DROP" not in net.rules(1)
        assert reaches(net, 1, 2)
    for p in listeners:
        assert p.wait(10) == -9  # killed with the namespace
    assert net.tag not in _namespaces()
    links = subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
    assert f" {net.client_dev}@" not in links


# -- pieces that need no cluster ------------------------------------------------


def test_partition_links_cut_both_ways_between_sides_only() -> None:
    links = set(partition_links([[1, 2], [4, 5]]))
    assert links == {(1, 4), (1, 5), (2, 4), (2, 5), (4, 1), (4, 2), (5, 1), (5, 2)}
    assert set(partition_links([[3], [1, 2]])) == {(3, 1), (3, 2), (1, 3), (2, 3)}


def test_parse_kinds() -> None:
    assert parse_kinds("all", 3) == ALL_KINDS
    assert parse_kinds("kill,pause-leader", 5) == (*FAMILIES["kill"], "pause-leader")
    assert parse_kinds("none", 3) == ()
    with pytest.raises(ValueError, match="unknown nemesis"):
        parse_kinds("flood", 3)


def _op(
    process: object,
    kind: Kind,
    key: bytes,
    t0: int,
    t1: int | None,
    outcome: Outcome = Outcome.OK,
    **kw: object,
) -> Operation:
    return Operation(
        process=process, kind=kind, key=key, invoke_ns=t0, complete_ns=t1, outcome=outcome, **kw
    )  # type: ignore[arg-type]


def _history(*ops: Operation) -> History:
    return History.from_operations(ops)


def test_lost_writes_flags_an_acknowledged_write_missing_at_the_end() -> None:
    h = _history(
        _op(1, Kind.PUT, b"k", 0, 10, value=b"a"),
        _op(2, Kind.PUT, b"k", 20, 30, value=b"b"),
        _op(FINAL, Kind.GET, b"k", 100, 110, result=b"a"),
    )
    (line,) = lost_writes(h)
    assert "put(b'k', b'b')" in line


def test_lost_writes_accepts_concurrent_and_unknown_writes() -> None:
    h = _history(
        _op(1, Kind.PUT, b"k", 0, 30, value=b"a"),
        _op(2, Kind.PUT, b"k", 10, 20, value=b"b"),  # concurrent: either may win
        _op(3, Kind.PUT, b"j", 0, 10, value=b"x"),
        _op(4, Kind.CAS, b"j", 20, None, Outcome.UNKNOWN, value=b"y", expected=b"x"),
        _op(5, Kind.DELETE, b"d", 0, 10, result=False),
        _op(FINAL, Kind.GET, b"k", 100, 110, result=b"a"),
        _op(FINAL, Kind.GET, b"j", 100, 110, result=b"y"),
        _op(FINAL, Kind.GET, b"d", 100, 110, result=None),
    )
    assert lost_writes(h) == []


def test_lost_writes_flags_a_value_nobody_wrote_and_a_failed_final_read() -> None:
    h = _history(
        _op(1, Kind.PUT, b"k", 0, 10, value=b"a"),
        _op(2, Kind.CAS, b"k", 20, 30, value=b"z", expected=b"q", result=False),
        _op(FINAL, Kind.GET, b"k", 100, 110, result=b"z"),
        _op(FINAL, Kind.GET, b"m", 100, None, Outcome.UNKNOWN),
    )
    lines = lost_writes(h)
    assert any("never written" in ln for ln in lines)
    assert any("no answer" in ln for ln in lines)


def _transfer(t0: int, t1: int | None, new: dict[bytes, bytes], ok: bool = True) -> Operation:
    spec = TxnSpec((), tuple(TxnStep("put", k, v) for k, v in new.items()))
    outcome = Outcome.OK if t1 is not None else Outcome.UNKNOWN
    result = TxnOutcome(ok, ()) if t1 is not None else None
    return _op(1, Kind.TXN, min(new), t0, t1, outcome, txn=spec, result=result)


def test_lost_writes_counts_the_writes_of_transactions() -> None:
    ok = _history(
        _transfer(0, 10, {b"a": b"1", b"b": b"2"}),
        _transfer(20, None, {b"a": b"3"}),  # unknown: may be the source
        _op(FINAL, Kind.GET, b"a", 100, 110, result=b"3"),
        _op(FINAL, Kind.GET, b"b", 100, 110, result=b"2"),
    )
    assert lost_writes(ok) == []
    lost = _history(
        _transfer(0, 10, {b"a": b"1", b"b": b"2"}),
        _transfer(20, 30, {b"a": b"3", b"b": b"4"}),
        _transfer(40, 50, {b"a": b"5"}, ok=False),  # its failure branch ran: no write
        _op(FINAL, Kind.GET, b"a", 100, 110, result=b"1"),
        _op(FINAL, Kind.GET, b"b", 100, 110, result=b"4"),
    )
    (line,) = lost_writes(lost)
    assert line.startswith("b'a'") and "put(b'a', b'3')" in line


def test_bank_problems_name_range_reads_that_made_or_lost_money() -> None:
    start = b"%d:init" % BANK_START
    fine = ((b"bank/0", b"90:x"), (b"bank/1", b"%d:x" % (BANK_START + 10)))
    made = ((b"bank/0", b"90:x"), (b"bank/1", start))
    h = _history(
        _op(1, Kind.RANGE, b"bank/", 0, 1, result=fine, range_end=b"bank0"),
        _op(1, Kind.RANGE, b"bank/", 2, 3, result=(), range_end=b"bank0"),  # before creation
        _op(2, Kind.RANGE, b"bank/", 4, 5, result=made, range_end=b"bank0"),
        _op(2, Kind.RANGE, b"bank/", 6, 7, result=fine[:1], range_end=b"bank0"),
    )
    problems = bank_problems(h, 2)
    assert len(problems) == 2
    assert "total 190 (expected 2 summing to 200)" in problems[0]
    assert "1 accounts" in problems[1]


def test_compare_states() -> None:
    from tests.harness import ReplicaState

    same = [ReplicaState(r, 7, 3, "ab", 2) for r in (1, 2, 3)]
    assert compare_states(same) == []
    lagging = [*same[:2], ReplicaState(3, 6, 3, "ab", 2)]
    assert "different numbers of slots" in compare_states(lagging)[0]
    diverged = [*same[:2], ReplicaState(3, 7, 3, "cd", 2)]
    assert "data differ" in compare_states(diverged)[0]
