"""The long fault run from the command line (see docs/FAULTS.md).

    python -m tests.fault.longrun --duration 1800 --seed 7 --replicas 5 --nemesis all

Prints the run's progress and its summary; exits 0 if every check passed,
1 if one failed (the history is not linearizable, a write was lost, the
replicas disagree, a replica crashed, the cluster did not settle), 2 for a
usage or environment problem. Files (replica logs, history.jsonl,
nemesis.log, summary.txt) stay under --dir.

`--scenario stale-read` runs the deterministic stale-read scenario instead
(`runner.stale_read_scenario`), against `--module` (e.g.
tests.fault.broken_replica, which must fail it); `--read range` makes its
stale read a range read of two accounts after a transfer (which
tests.fault.broken_range_replica must fail).

`--bank-clients` (2) more clients run the bank workload: transfers between
`--accounts` (4) keys by transactions, range reads of them all.

Replicas run each in a network namespace of its own by default (`--net
netns`: veth pairs to a bridge, partitions by iptables inside the
namespaces); `--net loopback` runs them all on 127.0.0.1 and partitions by
their group ids.

SIGTERM and SIGINT stop the run early but still heal, stop the replicas and
remove the namespaces (or the iptables chain).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from replica.launch import REPLICA_MODULE
from tests.fault.nemesis import firewall_problem, parse_kinds
from tests.fault.netns import netns_problem
from tests.fault.runner import NETS, RunConfig, run, stale_read_scenario


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.fault.longrun",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults (60)")
    p.add_argument("--seed", type=int, default=None, help="nemesis and client seed")
    p.add_argument("--replicas", type=int, choices=(3, 5), default=3)
    p.add_argument(
        "--nemesis",
        default="all",
        help="all, none, kill, pause, partition or single kinds, comma separated",
    )
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (4)")
    p.add_argument("--keys", type=int, default=3, help="hot keys at a time (3)")
    p.add_argument(
        "--bank-clients",
        type=int,
        default=2,
        help="clients of the bank workload: transactions and range reads (2; 0: none)",
    )
    p.add_argument(
        "--accounts", type=int, default=4, help="accounts of the bank workload (4, at least 2)"
    )
    p.add_argument(
        "--epoch",
        type=float,
        default=30.0,
        help="seconds before the clients move to fresh keys (30; 0: never)",
    )
    p.add_argument(
        "--think-ms",
        type=float,
        default=5.0,
        help="mean pause between two operations of a client (5)",
    )
    p.add_argument("--op-timeout", type=float, default=1.5, help="client timeout (1.5 s)")
    p.add_argument("--fault-min", type=float, default=1.0)
    p.add_argument("--fault-max", type=float, default=6.0)
    p.add_argument("--quiet-min", type=float, default=1.0)
    p.add_argument("--quiet-max", type=float, default=4.0)
    p.add_argument(
        "--module",
        default=REPLICA_MODULE,
        help="the replica program (tests.fault.broken_replica to see a failure)",
    )
    p.add_argument(
        "--net",
        choices=NETS,
        default="netns",
        help="netns: each replica in a network namespace of its own, linked by veth "
        "pairs (default); loopback: all on 127.0.0.1, partitions by gid",
    )
    p.add_argument(
        "--lease-reads",
        action="store_true",
        help="run the replicas with --lease-reads (linearizable reads on the leader's "
        "read lease): pauses and partitions then test the lease's bound",
    )
    p.add_argument(
        "--value-log-min-bytes",
        type=int,
        default=None,
        metavar="N",
        help="[storage] value_log_min_bytes of the replicas (default: theirs, 4 KiB); the "
        "workload's values are a few bytes, so 1 puts every value in the value log",
    )
    p.add_argument("--scenario", choices=("random", "stale-read"), default="random")
    p.add_argument(
        "--read",
        choices=("get", "range"),
        default="get",
        help="the stale-read scenario's read: a GET, or a range read after a transfer",
    )
    p.add_argument("--dir", type=Path, default=None, help="where the run's files go")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    args = p.parse_args(argv)
    try:
        parse_kinds(args.nemesis, args.replicas)
    except ValueError as exc:
        p.error(str(exc))
    if args.accounts < 2 or args.bank_clients < 0:
        p.error("--accounts must be at least 2 and --bank-clients at least 0")
    return args


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(3), "big")
    needs_fw = args.scenario == "stale-read" or "partition" in ",".join(
        parse_kinds(args.nemesis, args.replicas)
    )
    problem = netns_problem() if args.net == "netns" else None
    if args.net == "loopback" and needs_fw:
        problem = firewall_problem()
    if problem:
        print(f"longrun: {problem}", file=sys.stderr)
        return 2
    root = args.dir or Path(tempfile.mkdtemp(prefix=f"kvfault-{seed}-", dir="/tmp"))
    signal.signal(signal.SIGTERM, _terminate)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"longrun: seed {seed}, started {started}, files in {root}", flush=True)
    try:
        if args.scenario == "stale-read":
            summary = stale_read_scenario(
                root, args.module, replicas=args.replicas, net=args.net,
                verbose=not args.quiet, read=args.read, lease_reads=args.lease_reads,
            )  # fmt: skip
        else:
            cfg = RunConfig(
                replicas=args.replicas, duration_s=args.duration, seed=seed,
                nemesis=args.nemesis, clients=args.clients, keys=args.keys,
                bank_clients=args.bank_clients, accounts=args.accounts,
                epoch_s=args.epoch, op_timeout_s=args.op_timeout,
                think_s=args.think_ms / 1000.0, module=args.module, net=args.net,
                lease_reads=args.lease_reads,
                value_log_min_bytes=args.value_log_min_bytes,
                fault_min_s=args.fault_min, fault_max_s=args.fault_max,
                quiet_min_s=args.quiet_min, quiet_max_s=args.quiet_max,
                verbose=not args.quiet,
            )  # fmt: skip
            summary = run(cfg, root)
    except KeyboardInterrupt as exc:
        print(f"longrun: interrupted ({exc}); cleaned up, files in {root}", file=sys.stderr)
        return 2
    print()
    print(summary.text(), flush=True)
    return 0 if summary.passed else 1


if __name__ == "__main__":
    sys.exit(main())
