"""`python -m benchmarks.run`: the benchmark suite, paxoskv and etcd side by side.

    python -m benchmarks.run                      # the standard suite (< ~5 min)
    python -m benchmarks.run --suite quick        # a shorter pass
    python -m benchmarks.run --suite full         # 1M keys, 100k catch-up, 1M-write footprint
    python -m benchmarks.run --scenarios footprint --footprint-writes 200k
    python -m benchmarks.run --scenarios api      # range scans, txns, watch latency
    python -m benchmarks.run --suite smoke        # seconds; what the test suite runs
    python -m benchmarks.run --system paxoskv --scenarios steady \\
        --clients 1,8,64 --duration 10 --mix put=50,get=50 --dist zipfian

Writes benchmarks/results/<timestamp>.json and .png plus latest.json and
latest.png (or under --out), and prints a one-screen table. See
benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import etcd as etcd_mod
from benchmarks.cluster import server_available
from benchmarks.floor import describe as describe_floor
from benchmarks.floor import put1_floor, wait_until_quiet
from benchmarks.harness import Progress
from benchmarks.scenarios import (
    API_SCENARIOS,
    SCENARIOS,
    KiB,
    MiB,
    SuiteConfig,
    SystemRunner,
    per_op,
    scan_requests,
    written_per_op,
)
from benchmarks.sysinfo import cpu_times, load_average, machine_info, steal_percent, versions
from benchmarks.workload import parse_mix
from kvstore.config import MAX_WRITE_BUFFER_BYTES, MIN_WRITE_BUFFER_BYTES

WRITTEN_ROW_MIN_VALUE = 10 * KiB
"""Value sizes from this up get a row of the bytes written per PUT (all
replicas' /proc write_bytes): where large values cost, the disk traffic
says why better than the latency alone."""

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SYSTEMS = ("paxoskv", "etcd")

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(
        clients=[1, 4],
        duration=1.0,
        kvclient_duration=0.3,
        warmup=0.2,
        keys=100,
        get_clients=[1],
        mixed_clients=4,
        value_sizes=[100, 10 * KiB],
        value_duration=0.5,
        store_sizes=[200, 1000],
        store_clients=4,
        store_duration=0.5,
        preload_clients=8,
        catchup_writes=500,
        catchup_clients=8,
        catchup_timeout=30.0,
        catchup_store_writes=2000,
        footprint_writes=5000,
        footprint_keys=100,
        footprint_clients=8,
        footprint_timeout=60.0,
        restart_timeout=30.0,
        failover_clients=4,
        failover_before=0.5,
        failover_after=3.0,
        range_sizes=[100, 6000],  # 6,000: two pages of ours (MAX_RANGE_KEYS 5,000)
        range_clients=[1, 2],
        range_duration=1.0,
        txn_clients=[1, 4],
        watch_duration=1.0,
        scenarios=["steady"],
    ),
    "quick": dict(
        clients=[1, 16, 64],
        duration=2.0,
        get_clients=[1],
        value_sizes=[100, 10 * KiB, 1 * MiB],
        value_duration=1.0,
        store_sizes=[1000, 10_000],
        store_duration=1.0,
        catchup_writes=5000,
        catchup_store_writes=20_000,
        failover_after=4.0,
        footprint_writes=50_000,
        range_duration=3.0,
        watch_duration=3.0,
        scenarios=list(SCENARIOS),
    ),
    "standard": dict(),
    "full": dict(
        clients=[1, 2, 4, 8, 16, 32, 64, 128],
        duration=10.0,
        warmup=1.0,
        value_sizes=[100, 1 * KiB, 4 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB],
        value_duration=5.0,
        store_sizes=[1000, 10_000, 100_000, 1_000_000],
        store_duration=5.0,
        catchup_writes=100_000,
        catchup_timeout=600.0,
        catchup_store_keys=100_000,
        catchup_store_writes=200_000,
        failover_after=8.0,
        footprint_writes=1_000_000,
        footprint_timeout=900.0,
        range_clients=[1, 4, 16],
        range_duration=10.0,
        txn_clients=[1, 16, 64],
        watch_duration=10.0,
        scenarios=list(SCENARIOS),
    ),
}

# name, unit, which way is better ("low"/"high"), target (op, value) or None
TARGETS = {
    "put1_p50": ("<=", 0.8),
    "put64_tput": (">=", 10_000),
    "put64_p99": ("<=", 25.0),
    "get1_p50": ("<=", 0.5),
    "put64_cpu_per_write": ("<=", 100.0),  # issue 13: about half of the ~195 us it filed
    # issue 11, checked on runs of >= 1,000,000 overwrites of 1,000 keys
    "fp_rss_growth": ("<=", 20.0),
    "fp_restart_s": ("<=", 1.0),
}
FOOTPRINT_TARGET_WRITES = 1_000_000


def _int_list(text: str) -> list[int]:
    out = []
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        mult = 1
        p = part.strip().lower()
        for suffix, m in (("kib", KiB), ("mib", MiB), ("k", 1000), ("m", 1_000_000)):
            if p.endswith(suffix):
                p, mult = p[: -len(suffix)], m
                break
        out.append(int(float(p) * mult))
    return out


def _int(text: str) -> int:
    """One count with an optional k/m/KiB/MiB suffix."""
    values = _int_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"one number expected, not {text!r}")
    return values[0]


def _etcd_compaction(text: str) -> str:
    from benchmarks.scenarios import etcd_compaction

    try:
        etcd_compaction(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Latency/throughput benchmarks of paxoskv, side by side with etcd.",
    )
    ap.add_argument("--suite", choices=sorted(PRESETS), default="standard")
    ap.add_argument(
        "--system",
        choices=("both", *SYSTEMS),
        default="both",
        help="which system(s) to run; 'both' runs etcd only when it is installed",
    )
    ap.add_argument("--no-etcd", action="store_true", help="skip the etcd comparison")
    ap.add_argument(
        "--scenarios",
        help=f"comma list of {', '.join(SCENARIOS)} (api: {', '.join(API_SCENARIOS)})",
    )
    ap.add_argument("--replicas", type=int, choices=(3, 5))
    ap.add_argument("--clients", type=_int_list, help="client counts of the sweep, e.g. 1,4,16,64")
    ap.add_argument("--duration", type=float, help="seconds per run (after the warm-up)")
    ap.add_argument("--ops", type=int, help="run each sweep point for this many ops instead")
    ap.add_argument("--warmup", type=float)
    ap.add_argument("--mix", type=parse_mix, help="e.g. put=50,get=45,cas=5 (default put)")
    ap.add_argument("--keys", type=int)
    ap.add_argument("--dist", dest="distribution", choices=("uniform", "zipfian"))
    ap.add_argument("--theta", type=float, help="zipfian skew (default 0.99)")
    ap.add_argument("--value-size", type=int)
    ap.add_argument("--value-sizes", type=_int_list, help="value-size sweep, e.g. 100,1KiB,1MiB")
    ap.add_argument(
        "--value-duration",
        type=float,
        metavar="S",
        help="seconds of each value-size run (default 2 in the standard suite; a few seconds "
        "show a fresh store, a minute what a store written with large values for long does)",
    )
    ap.add_argument("--store-sizes", type=_int_list, help="store-size sweep, e.g. 1k,100k,1m")
    ap.add_argument(
        "--catchup-writes",
        type=_int,
        help="distinct keys written while a follower is down (0: skip)",
    )
    ap.add_argument(
        "--catchup-store-keys",
        type=_int,
        help="also catch up on a store of this many keys (e.g. 100k; 0: off)",
    )
    ap.add_argument(
        "--catchup-store-writes",
        type=_int,
        help="overwrites of that store while the follower is down",
    )
    ap.add_argument("--footprint-writes", type=_int, help="overwrites in the footprint scenario")
    ap.add_argument("--footprint-keys", type=_int, help="keys the footprint scenario overwrites")
    ap.add_argument("--footprint-clients", type=int)
    ap.add_argument(
        "--footprint-timeout", type=float, help="time budget (s) of a footprint write phase"
    )
    ap.add_argument(
        "--etcd-auto-compaction",
        type=_etcd_compaction,
        metavar="MODE:RETENTION",
        help="etcd's MVCC auto-compaction, e.g. periodic:30s or revision:10000 (default: off)",
    )
    ap.add_argument(
        "--range-sizes", type=_int_list, help="keys per scan in the range scenario, e.g. 100,10k"
    )
    ap.add_argument("--range-clients", type=_int_list, help="client counts of the range scans")
    ap.add_argument("--range-duration", type=float, help="seconds per range-scan run")
    ap.add_argument("--txn-clients", type=_int_list, help="client counts of the transactions")
    ap.add_argument("--watch-rate", type=float, help="PUTs/s while measuring watch latency")
    ap.add_argument("--watch-duration", type=float, help="seconds of PUTs in the watch scenario")
    ap.add_argument("--failover-clients", type=int)
    ap.add_argument("--workers", type=int, help="load-generator processes (default: cores)")
    ap.add_argument("--seed", type=int)
    ap.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the paxoskv leader during the largest sweep point; summary in the report",
    )
    ap.add_argument(
        "--trace",
        type=int,
        nargs="?",
        const=20,
        default=0,
        metavar="N",
        help="trace the commit path of every N-th slot (default 20) on our replicas and print "
        "each run's stage-by-stage breakdown (benchmarks/trace.py); JSON: each run's 'trace'",
    )
    ap.add_argument(
        "--write-buffer",
        type=_int,
        metavar="SIZE",
        help="start our replicas with [storage] write_buffer_bytes = SIZE (e.g. 16MiB; README "
        "'Configuration'); default: the replicas' default (4 MiB). etcd unchanged",
    )
    ap.add_argument(
        "--lease-reads",
        action="store_true",
        help="start our replicas with --lease-reads (linearizable reads on the leader's read "
        "lease, README 'Lease reads'); etcd unchanged. Record such runs apart: the default "
        "is a heartbeat round per batch of reads",
    )
    ap.add_argument(
        "--no-vouch-reads",
        dest="vouch_reads",
        action="store_false",
        help="our load generators and KVClient send GETs without asking the other replicas to "
        "vouch for them (README 'Linearizable'): the leader confirms each batch of reads by a "
        "heartbeat round, as before vouched reads",
    )
    ap.add_argument(
        "--curve",
        action="store_true",
        help="CURVE on every socket of our cluster, load generators included (README, "
        "Security; etcd stays plaintext): compare with a run without it",
    )
    ap.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure the floor under a 1-client PUT on this machine first (benchmarks/floor.py, "
        "~7 s; JSON: machine.put1_floor); default: on when paxoskv runs the steady scenario, "
        "except in the smoke suite",
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        metavar="MS",
        help="before anything else, measure the PUT x1 floor (its synced p50; ~3 s) every "
        "minute until it reads MS or less, so that runs to compare start on an equally quiet "
        "machine (on the project's VM: ~0.6 quiet, 0.75-0.9 busy). Gives up after --wait-max "
        "with exit status 3 and no results. JSON: machine.quiet_wait",
    )
    ap.add_argument(
        "--wait-max",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="with --wait-quiet: how long to wait at most (default 3600)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    ap.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="run nothing: print the table of an earlier result (with --markdown: as markdown)",
    )
    ap.add_argument("--markdown", action="store_true", help="with --report: a markdown table")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when it is a terminal)",
    )
    return ap


def config_from_args(args: argparse.Namespace) -> SuiteConfig:
    cfg = SuiteConfig(name=args.suite, **PRESETS[args.suite])
    for name in (
        "replicas",
        "clients",
        "duration",
        "ops",
        "warmup",
        "mix",
        "keys",
        "distribution",
        "theta",
        "value_size",
        "value_sizes",
        "value_duration",
        "store_sizes",
        "catchup_writes",
        "catchup_store_keys",
        "catchup_store_writes",
        "footprint_writes",
        "footprint_keys",
        "footprint_clients",
        "footprint_timeout",
        "etcd_auto_compaction",
        "range_sizes",
        "range_clients",
        "range_duration",
        "txn_clients",
        "watch_rate",
        "watch_duration",
        "failover_clients",
        "workers",
        "seed",
    ):
        v = getattr(args, name)
        if v is not None:
            setattr(cfg, name, v)
    if args.scenarios:
        wanted = []
        for name in (s.strip() for s in args.scenarios.split(",")):
            for one in API_SCENARIOS if name == "api" else (name,) if name else ():
                if one not in wanted:
                    wanted.append(one)
        bad = set(wanted) - set(SCENARIOS)
        if bad:
            raise SystemExit(f"unknown scenario(s): {', '.join(sorted(bad))}")
        cfg.scenarios = wanted
    cfg.mixed_clients = min(cfg.mixed_clients, max(cfg.clients))
    if args.profile:
        cfg.profile = True
        cfg.profile_dir = str(args.out)
    cfg.curve = args.curve
    cfg.lease_reads = args.lease_reads
    cfg.vouch_reads = args.vouch_reads
    if args.write_buffer is not None:
        if not MIN_WRITE_BUFFER_BYTES <= args.write_buffer <= MAX_WRITE_BUFFER_BYTES:
            raise SystemExit(
                f"--write-buffer: from {MIN_WRITE_BUFFER_BYTES} (64 KiB) to "
                f"{MAX_WRITE_BUFFER_BYTES} (1 GiB) bytes"
            )
        cfg.write_buffer_bytes = args.write_buffer
    if args.trace < 0:
        raise SystemExit("--trace N: N must be >= 1")
    cfg.trace_every = args.trace
    return cfg


# --------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------
def _find(runs: list[dict[str, Any]] | None, clients: int) -> dict[str, Any] | None:
    for r in runs or []:
        if r.get("clients") == clients:
            return r
    return None


def _per_op_us(run: dict[str, Any] | None) -> float | None:
    """CPU of the cluster per operation in us: its cores over the run's
    throughput (the same figure for both systems; warm-up included in the
    CPU, so slightly high)."""
    if not run or not run.get("server_cpu_share") or not run.get("throughput"):
        return None
    return run["server_cpu_share"] / run["throughput"] * 1e6


def headline(sc: dict[str, Any]) -> dict[str, float | None]:
    """The figures of the table for one system (None where not measured)."""
    steady = sc.get("steady") if isinstance(sc.get("steady"), dict) else {}
    sweep = steady.get("sweep") or []
    gets = steady.get("get") or []
    out: dict[str, float | None] = {}
    one = _find(sweep, 1)
    top = max(sweep, key=lambda r: r["clients"]) if sweep else None
    out["put1_p50"] = one["latency_ms"]["p50"] if one else None
    out["put1_p99"] = one["latency_ms"]["p99"] if one else None
    out["put1_tput"] = one["throughput"] if one else None
    out["put64_tput"] = top["throughput"] if top else None
    out["put64_p50"] = top["latency_ms"]["p50"] if top else None
    out["put64_p99"] = top["latency_ms"]["p99"] if top else None
    out["put64_p999"] = top["latency_ms"]["p99.9"] if top else None
    out["put64_clients"] = top["clients"] if top else None
    out["put64_server_cpu"] = top.get("server_cpu_share") if top else None
    out["put64_client_cpu"] = top.get("client_cpu_share") if top else None
    out["put64_cpu_per_write"] = _per_op_us(top)
    g1 = _find(gets, 1)
    gtop = max(gets, key=lambda r: r["clients"]) if gets else None
    out["get1_p50"] = g1["latency_ms"]["p50"] if g1 else None
    out["get1_p99"] = g1["latency_ms"]["p99"] if g1 else None
    out["getN_tput"] = gtop["throughput"] if gtop and gtop["clients"] > 1 else None
    kvc = steady.get("kvclient") if isinstance(steady.get("kvclient"), dict) else {}
    out["kvc_put_p50"] = kvc["put"]["latency_ms"]["p50"] if "put" in kvc else None
    out["kvc_get_p50"] = kvc["get"]["latency_ms"]["p50"] if "get" in kvc else None
    mixed = (steady.get("mixed") or [None])[0]
    out["mixed_tput"] = mixed["throughput"] if mixed else None
    out["mixed_p99"] = mixed["latency_ms"]["p99"] if mixed else None
    fo = sc.get("failover") if isinstance(sc.get("failover"), dict) else {}
    out["failover_s"] = fo.get("unavailable_s")
    out["elected_s"] = fo.get("leader_elected_s")
    mv = fo.get("move_leader") if isinstance(fo.get("move_leader"), dict) else {}
    # Writes never stop during a hand-over: the figure is the longest pause
    # between two completed writes in the run (for kill -9, the time from the
    # kill to the end of the pause it caused).
    out["move_s"] = mv.get("longest_gap_s")
    errs = mv.get("errors")
    out["move_errors"] = sum(errs.values()) if isinstance(errs, dict) else None
    cu = sc.get("catchup") if isinstance(sc.get("catchup"), dict) else {}
    out["catchup_s"] = cu.get("restart_to_caught_up_s")
    cs = sc.get("catchup_store") if isinstance(sc.get("catchup_store"), dict) else {}
    out["cu_store_s"] = cs.get("restart_to_caught_up_s")
    out["cu_store_dir"] = _mib(cs.get("follower_dir_after_bytes"))
    fp = sc.get("footprint") if isinstance(sc.get("footprint"), dict) else {}
    fps = fp.get("summary") or {}
    out["fp_rss_first"] = _mib(fps.get("rss_first_mark_max"))
    out["fp_rss_end"] = _mib(fps.get("rss_end_max"))
    out["fp_rss_growth"] = _mib(fps.get("rss_growth_max"))
    out["fp_dir_max"] = _mib(fps.get("dir_max"))
    out["fp_dir_end"] = _mib(fps.get("dir_end_max"))
    out["fp_dir_live"] = fps.get("dir_max_over_live")
    out["fp_restart_s"] = (fp.get("restart") or {}).get("restart_to_first_write_s")
    out["fp_rate"] = (fp.get("run") or {}).get("throughput")
    out.update(api_headline(sc))
    for r in sc.get("values") if isinstance(sc.get("values"), list) else []:
        out[f"value_{r['value_size']}_p50"] = r["latency_ms"]["p50"]
        written = written_per_op(r)
        out[f"value_{r['value_size']}_written"] = None if written is None else written / KiB
    for p in sc.get("store") if isinstance(sc.get("store"), list) else []:
        out[f"store_{p['keys']}_put_p50"] = p["put"]["latency_ms"]["p50"]
        out[f"store_{p['keys']}_get_p50"] = p["get"]["latency_ms"]["p50"]
    return out


def api_headline(sc: dict[str, Any]) -> dict[str, float | None]:
    """The API scenarios' figures (issue 14): per scan size and client
    count p50, p99, scans/s and requests a scan; per txn client count the
    same; per watcher (leader, follower) the PUT-to-event p50 and p99."""
    out: dict[str, float | None] = {}
    rng = sc.get("range") if isinstance(sc.get("range"), dict) else {}
    for r in rng.get("runs") or []:
        k = f"range_{r['keys_per_scan']}_c{r['clients']}"
        out[k + "_p50"] = r["latency_ms"]["p50"] if r["ops"] else None
        out[k + "_p99"] = r["latency_ms"]["p99"] if r["ops"] else None
        out[k + "_tput"] = r["throughput"]
        out[f"range_{r['keys_per_scan']}_requests"] = scan_requests(r)
        if r["clients"] == 1:
            out[f"range_{r['keys_per_scan']}_cpu"] = per_op(r, "client_cpu_ns", 1e-6)
    txn = sc.get("txn") if isinstance(sc.get("txn"), dict) else {}
    put = txn.get("put") if isinstance(txn.get("put"), dict) else None
    out["txn_put1_p50"] = put["latency_ms"]["p50"] if put and put["ops"] else None
    for r in txn.get("runs") or []:
        k = f"txn_c{r['clients']}"
        out[k + "_p50"] = r["latency_ms"]["p50"] if r["ops"] else None
        out[k + "_p99"] = r["latency_ms"]["p99"] if r["ops"] else None
        out[k + "_tput"] = r["throughput"]
        if r["clients"] == 1:
            out["txn_cpu"] = per_op(r, "client_cpu_ns", 1e-6)
    watch = sc.get("watch") if isinstance(sc.get("watch"), dict) else {}
    for name, w in (watch.get("watchers") or {}).items():
        got = w.get("received")
        out[f"watch_{name}_p50"] = w["latency_ms"]["p50"] if got else None
        out[f"watch_{name}_p99"] = w["latency_ms"]["p99"] if got else None
        out[f"watch_{name}_missing"] = w.get("missing")
    return out


def api_rows(cfg: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(key, label, unit, better) of the API scenarios' rows, labelled with
    the run's sizes and client counts."""
    rows: list[tuple[str, str, str, str]] = []
    for n in cfg.get("range_sizes") or []:
        for c in cfg.get("range_clients") or []:
            k, who = f"range_{n}_c{c}", f"range {n:,} keys, {_clients(c)}"
            rows += [
                (k + "_p50", f"{who} p50", "ms", "low"),
                (k + "_p99", f"{who} p99", "ms", "low"),
                (k + "_tput", f"{who}", "scan/s", "high"),
            ]
        rows.append((f"range_{n}_requests", f"range {n:,} keys: requests a scan", "", "none"))
        rows.append((f"range_{n}_cpu", f"range {n:,} keys: client CPU a scan, 1c", "ms", "none"))
    for c in cfg.get("txn_clients") or []:
        k, who = f"txn_c{c}", f"txn 2-key CAS, {_clients(c)}"
        rows += [
            (k + "_p50", f"{who} p50", "ms", "low"),
            (k + "_p99", f"{who} p99", "ms", "low"),
            (k + "_tput", who, "txn/s", "high"),
        ]
    if cfg.get("txn_clients"):
        rows.append(("txn_cpu", "txn 2-key CAS: client CPU a txn, 1c", "ms", "none"))
        rows.append(("txn_put1_p50", "txn's reference: PUT 1 client p50", "ms", "low"))
    rate = cfg.get("watch_rate") or 0
    for name in ("leader", "follower"):
        who = f"watch {rate:g}/s: PUT to event, {name}"
        rows += [
            (f"watch_{name}_p50", f"{who} p50", "ms", "low"),
            (f"watch_{name}_p99", f"{who} p99", "ms", "low"),
        ]
    return rows


def _clients(c: int) -> str:
    return f"{c} client" + ("" if c == 1 else "s")


def _mib(n: int | None) -> float | None:
    return None if n is None else n / (1024 * 1024)


def footprint_rows(cfg: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(key, label, unit, better) of the footprint and catch-up-on-a-store
    rows, labelled with the run's sizes."""
    from benchmarks.footprint import mark_interval

    n = cfg.get("footprint_writes") or 0
    mark = mark_interval(n, cfg.get("footprint_mark") or 100_000)
    keys = cfg.get("footprint_keys") or 0
    sk, sw = cfg.get("catchup_store_keys") or 0, cfg.get("catchup_store_writes") or 0
    return [
        ("fp_rate", f"footprint: {n:,} writes to {keys:,} keys", "op/s", "high"),
        ("fp_rss_first", f"footprint: RSS after {mark:,} writes (max)", "MiB", "none"),
        ("fp_rss_end", f"footprint: RSS after {n:,} writes (max)", "MiB", "low"),
        ("fp_rss_growth", f"footprint: RSS growth {mark:,}..end (max)", "MiB", "none"),
        ("fp_dir_max", "footprint: data dir, max (max replica)", "MiB", "low"),
        ("fp_dir_end", "footprint: data dir at the end (max)", "MiB", "low"),
        ("fp_dir_live", "footprint: data dir max / live data", "x", "low"),
        ("fp_restart_s", "footprint: restart to first committed write", "s", "low"),
        ("cu_store_s", f"catch-up, {sk:,}-key store, {sw:,} writes", "s", "low"),
        ("cu_store_dir", "catch-up, store: follower data dir after", "MiB", "low"),
    ]


def _ratio(r: float | None) -> str:
    if not r:
        return "-"
    return f"{r:,.0f}x" if r >= 100 else (f"{r:.1f}x" if r >= 10 else f"{r:.2f}x")


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("op/s", "txn/s"):
        return f"{v:,.0f}"
    if unit == "scan/s":
        return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
    if unit in ("s", "cores"):
        return f"{v:.2f}"
    if unit == "x":
        return f"{v:,.1f}"
    if unit == "MiB":
        return f"{v:,.1f}"
    if unit == "us":
        return f"{v:,.0f}"
    return f"{v:.2f}" if v < 100 else f"{v:,.0f}"


def table_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """[{label, unit, better, key, values: {system: v}, ratio, target, met}]"""
    cfg = doc["config"]
    heads = {
        name: headline(s["scenarios"])
        for name, s in doc["systems"].items()
        if s.get("status") == "ok"
    }
    any_head = next(iter(heads.values()), {})
    topc = any_head.get("put64_clients") or max(cfg.get("clients") or [64])
    ops = {op for op, w in (cfg.get("mix") or {"put": 1}).items() if w > 0}
    main = "PUT" if ops == {"put"} else "/".join(sorted(op.upper() for op in ops))
    mixlab = "/".join(f"{int(v)}" for v in (cfg.get("mixed") or {}).values())
    spec: list[tuple[str, str, str, str]] = [
        ("put1_p50", f"{main} 1 client p50", "ms", "low"),
        ("put1_p99", f"{main} 1 client p99", "ms", "low"),
        ("kvc_put_p50", "PUT 1 client p50, via KVClient", "ms", "low"),
        ("put1_tput", f"{main} 1 client throughput", "op/s", "high"),
        ("put64_tput", f"{main} {topc} clients throughput", "op/s", "high"),
        ("put64_p50", f"{main} {topc} clients p50", "ms", "low"),
        ("put64_p99", f"{main} {topc} clients p99", "ms", "low"),
        ("put64_p999", f"{main} {topc} clients p99.9", "ms", "low"),
        ("put64_server_cpu", f"{main} {topc} clients: CPU of the cluster", "cores", "none"),
        ("put64_client_cpu", f"{main} {topc} clients: CPU of the clients", "cores", "none"),
        ("put64_cpu_per_write", f"{main} {topc} clients: cluster CPU per op", "us", "low"),
        ("get1_p50", "GET 1 client p50 (linearizable)", "ms", "low"),
        ("get1_p99", "GET 1 client p99 (linearizable)", "ms", "low"),
        ("kvc_get_p50", "GET 1 client p50, via KVClient", "ms", "low"),
        (
            "getN_tput",
            f"GET {max(cfg.get('get_clients') or [1])} clients throughput",
            "op/s",
            "high",
        ),
        (
            "mixed_tput",
            f"mixed put/get/cas {mixlab} zipf, {cfg.get('mixed_clients')}c",
            "op/s",
            "high",
        ),
        ("mixed_p99", "mixed p99", "ms", "low"),
        ("failover_s", "failover: unavailable after kill -9", "s", "low"),
        ("elected_s", "failover: new leader seen in STATUS", "s", "low"),
        ("move_s", "failover: longest write pause, move-leader", "s", "low"),
        ("move_errors", "failover: failed requests, move-leader", "", "low"),
        ("catchup_s", f"catch-up after {cfg.get('catchup_writes', 0):,} writes", "s", "low"),
    ]
    spec += footprint_rows(cfg)
    spec += api_rows(cfg)
    for size in cfg.get("value_sizes") or []:
        spec.append((f"value_{size}_p50", f"PUT p50, value {_size_label(size)}", "ms", "low"))
    for size in [n for n in cfg.get("value_sizes") or [] if n >= WRITTEN_ROW_MIN_VALUE]:
        label = f"PUT {_size_label(size)}: written to disk per PUT"
        spec.append((f"value_{size}_written", label, "KiB", "low"))
    for n in sorted(cfg.get("store_sizes") or []):
        spec.append((f"store_{n}_put_p50", f"PUT p50, store {n:,} keys", "ms", "low"))
        spec.append((f"store_{n}_get_p50", f"GET p50, store {n:,} keys", "ms", "low"))
    rows = []
    for key, label, unit, better in spec:
        vals = {name: h.get(key) for name, h in heads.items()}
        if all(v is None for v in vals.values()):
            continue
        ours, theirs = vals.get("paxoskv"), vals.get("etcd")
        ratio = None
        if ours and theirs and better != "none":
            ratio = (theirs / ours) if better == "low" else (ours / theirs)
        # the targets: 3 replicas, 100 B values, PUT (GET), 64 clients
        standard = cfg.get("replicas") == 3 and cfg.get("value_size") == 100
        target = TARGETS.get(key) if standard else None
        if main != "PUT" and key.startswith("put"):
            target = None
        if key in ("put64_tput", "put64_p99", "put64_cpu_per_write") and topc != 64:
            target = None
        if key.startswith("fp_") and (
            (cfg.get("footprint_writes") or 0) < FOOTPRINT_TARGET_WRITES
            or cfg.get("footprint_keys") != 1000
        ):
            target = None
        met = None
        if target and ours is not None:
            met = ours <= target[1] if target[0] == "<=" else ours >= target[1]
        rows.append(
            {
                "key": key,
                "label": label,
                "unit": unit,
                "better": better,
                "values": vals,
                "ratio": ratio,
                "target": target,
                "met": met,
            }
        )
    return rows


def _size_label(n: int) -> str:
    from benchmarks.scenarios import _size

    return _size(n)


def render_table(doc: dict[str, Any]) -> str:
    rows = table_rows(doc)
    names = [n for n in SYSTEMS if doc["systems"].get(n, {}).get("status") == "ok"]
    m = doc["machine"]
    cfg = doc["config"]
    lines = [
        f"{' vs '.join(names) or 'nothing ran'}: {cfg['replicas']} replicas, durable writes, "
        f"{cfg['value_size']} B values, {cfg['keys']:,} keys ({cfg['distribution']}), "
        f"suite {cfg['name']}",
        f"machine: {m.get('cores')} cores {m.get('cpu')}, {m.get('memory_gib')} GiB, "
        f"{m.get('data_fs')}, fsync p50 {m.get('fsync_ms', {}).get('p50', float('nan')):.2f} ms; "
        f"load avg {m.get('load_average_at_start')}",
    ]
    floor = describe_floor(m.get("put1_floor"))
    if floor:
        lines.append(floor)
    quiet = m.get("quiet_wait")
    if quiet:
        seen = quiet["readings_ms"]
        lines.append(
            f"started after {quiet['waited_s']:.0f} s waiting for a quiet machine "
            f"(--wait-quiet {quiet['threshold_ms']:g}: floor p50 "
            f"{seen[-1]:.2f} ms at the last of {len(seen)} readings)"
        )
    steal = [
        f"{n} {doc['systems'][n]['cpu_steal_pct']:.1f} %"
        for n in names
        if doc["systems"][n].get("cpu_steal_pct") is not None
    ]
    if steal:
        lines.append(
            "CPU steal (of the CPU time the cores wanted, what the host gave elsewhere): "
            + ", ".join(steal)
        )
    if cfg.get("write_buffer_bytes"):  # what the replicas ran with
        lines.append(f"paxoskv replicas with write_buffer_bytes = {cfg['write_buffer_bytes']:,}")
    for name, s in doc["systems"].items():
        if s.get("status") != "ok":
            lines.append(f"{name}: {s.get('status')} - {s.get('reason', '')}")
    header = f"{'metric':<44}{'unit':>6}" + "".join(f"{n:>12}" for n in names)
    if "paxoskv" in names and "etcd" in names:
        header += f"{'ratio':>8}"
    header += f"  {'target':>14}"
    lines += ["", header, "-" * len(header)]
    for r in rows:
        line = f"{r['label'][:43]:<44}{r['unit']:>6}"
        line += "".join(f"{_fmt(r['values'].get(n), r['unit']):>12}" for n in names)
        if "paxoskv" in names and "etcd" in names:
            ratio = _ratio(r["ratio"])
            line += f"{ratio:>8}"
        if r["target"]:
            op, val = r["target"]
            mark = "ok" if r["met"] else ("MISS" if r["met"] is False else "")
            tgt = f"{op} {val:,g} {mark}"
            line += f"  {tgt:>14}"
        lines.append(line)
    if "paxoskv" in names and "etcd" in names:
        lines.append(
            "ratio > 1: paxoskv ahead (etcd/paxoskv for latency and times, "
            "paxoskv/etcd for throughput)"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def dump_json(doc: dict[str, Any]) -> str:
    """Indented JSON, except that long number lists (histogram buckets,
    timelines) stay on one line each: readable and a tenth of the size."""
    blobs: list[str] = []

    def squash(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: squash(v) for k, v in o.items()}
        if isinstance(o, list):
            if len(o) > 16 and all(
                isinstance(x, (int, float)) or (isinstance(x, list) and len(x) == 2) for x in o
            ):
                blobs.append(json.dumps(o, separators=(",", ":")))
                return f"@@blob{len(blobs) - 1}@@"
            return [squash(v) for v in o]
        return o

    text = json.dumps(squash(doc), indent=1, default=str)
    return re.sub(r'"@@blob(\d+)@@"', lambda m: blobs[int(m.group(1))], text)


def render_markdown(doc: dict[str, Any]) -> str:
    """The table as markdown (for benchmarks/README.md)."""
    rows = table_rows(doc)
    names = [n for n in SYSTEMS if doc["systems"].get(n, {}).get("status") == "ok"]
    both = "paxoskv" in names and "etcd" in names
    head = ["metric", "unit", *names] + (["ratio"] if both else []) + ["target"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], r["unit"], *(_fmt(r["values"].get(n), r["unit"]) for n in names)]
        if both:
            cells.append(_ratio(r["ratio"]))
        tgt = ""
        if r["target"]:
            op, val = r["target"]
            tgt = f"{op} {val:,g} " + ("met" if r["met"] else "**missed**")
        cells.append(tgt)
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def traced_runs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, breakdown) of every run of ours that carries a trace."""
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("trace"), dict) and node["trace"].get("slots"):
                found.append((f"paxoskv {node.get('label', '')}", node["trace"]))
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc["systems"].get("paxoskv", {}).get("scenarios", {}))
    return found


def _print_cost(doc: dict[str, Any]) -> None:
    """The per-write and per-slot CPU of our PUT sweep, if the run has it."""
    steady = doc["systems"].get("paxoskv", {}).get("scenarios", {}).get("steady", {})
    if isinstance(steady, dict) and steady.get("cost"):
        from benchmarks.cost import render as render_cost

        print()
        print(render_cost(steady["cost"]))


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def wants_floor(flag: bool | None, suite: str, scenarios: list[str], systems: list[str]) -> bool:
    """Whether to measure the PUT x1 floor first (`--floor/--no-floor`; by
    default when paxoskv runs the steady scenario outside the smoke suite)."""
    if "paxoskv" not in systems:
        return False
    if flag is not None:
        return flag
    return suite != "smoke" and "steady" in scenarios


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report:
        doc = json.loads(args.report.read_text())
        if args.markdown:
            print(render_markdown(doc))
        else:
            print(render_table(doc))
            _print_cost(doc)
        return 0
    if args.wait_quiet is not None and not args.wait_quiet > 0:
        build_parser().error("--wait-quiet must be a positive number of milliseconds")
    if not args.wait_max >= 0:
        build_parser().error("--wait-max must be zero or more seconds")
    cfg = config_from_args(args)
    # A SIGTERM (`timeout`, `kill`, a CI job's end) unwinds like Ctrl-C
    # would, so every cluster's context manager stops its replicas and
    # removes its directory instead of leaving them running.
    signal.signal(signal.SIGTERM, _terminated)
    progress = Progress(enabled=args.progress)
    t_suite = time.monotonic()
    now = dt.datetime.now(dt.UTC).astimezone()

    quiet = None
    if args.wait_quiet is not None:
        quiet = wait_until_quiet(
            args.wait_quiet,
            args.wait_max,
            data_dir=os.environ.get("BENCH_DATA_DIR") or None,
            note=progress.note,
        )
        if not quiet["met"]:
            seen = [r for r in quiet["readings_ms"] if r is not None]
            print(
                f"benchmarks.run: the machine did not get quiet: the PUT x1 floor's p50 stayed "
                f"above {args.wait_quiet:g} ms for {quiet['waited_s']:.0f} s "
                f"({len(quiet['readings_ms'])} readings, lowest "
                + (f"{min(seen):.2f} ms" if seen else "none measured")
                + "); nothing was run",
                file=sys.stderr,
            )
            return 3
        t_suite = time.monotonic()  # the run's own seconds, without the wait
        now = dt.datetime.now(dt.UTC).astimezone()

    systems: list[str] = []
    skipped: dict[str, str] = {}
    want = list(SYSTEMS) if args.system == "both" else [args.system]
    if args.no_etcd and "etcd" in want:
        want.remove("etcd")
        skipped["etcd"] = "skipped (--no-etcd)"
    for name in want:
        why = server_available() if name == "paxoskv" else etcd_mod.unavailable_reason()
        if why:
            skipped[name] = why
            if name == "etcd":
                progress.note(f"etcd comparison skipped: {why}; running paxoskv alone")
            else:
                progress.note(f"paxoskv skipped: {why}")
        else:
            systems.append(name)

    doc: dict[str, Any] = {
        "schema": 1,
        "created": now.isoformat(timespec="seconds"),
        "command": " ".join(
            ["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": machine_info(),
        "versions": versions(),
        "config": cfg.to_dict(),
        "systems": {name: {"status": "skipped", "reason": why} for name, why in skipped.items()},
    }
    if quiet is not None:
        doc["machine"]["quiet_wait"] = quiet
    if wants_floor(args.floor, args.suite, cfg.scenarios, systems):
        progress.note("measuring the PUT x1 floor of this machine (benchmarks/floor.py)")
        doc["machine"]["put1_floor"] = put1_floor(data_dir=doc["machine"].get("data_dir"))
    for name in systems:
        t0 = time.monotonic()
        cpu0 = cpu_times()
        runner = SystemRunner(name, cfg, progress)
        try:
            scen = runner.run_all()
            doc["systems"][name] = {
                "status": "ok",
                "scenarios": scen,
                "seconds": round(time.monotonic() - t0, 1),
                "cpu_steal_pct": steal_percent(cpu0, cpu_times()),
            }
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - report it and go on with the other system
            progress.note(f"{name} failed: {type(exc).__name__}: {exc}")
            doc["systems"][name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    doc["machine"]["load_average_at_end"] = load_average()
    doc["seconds"] = round(time.monotonic() - t_suite, 1)
    doc["table"] = table_rows(doc)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    json_path = out / f"{stamp}.json"
    text = dump_json(doc)
    json_path.write_text(text)
    (out / "latest.json").write_text(text)
    png_path = None
    if not args.no_plot:
        from benchmarks.plot import matplotlib_available, plot

        if matplotlib_available() and any(s.get("status") == "ok" for s in doc["systems"].values()):
            png_path = plot(doc, out / f"{stamp}.png")
            (out / "latest.png").write_bytes(png_path.read_bytes())
        elif not matplotlib_available():
            progress.note("no plot: matplotlib is not installed (pip install -e '.[bench]')")
    print(render_table(doc))
    prof = doc["systems"].get("paxoskv", {}).get("scenarios", {}).get("steady", {})
    if isinstance(prof, dict) and "profile" in prof:
        from benchmarks.profile import render

        print()
        print(render(prof["profile"]))
    _print_cost(doc)
    for title, breakdown in traced_runs(doc):
        from benchmarks.trace import render

        print()
        print(render(breakdown, title))
    print(
        f"\nwrote {json_path}"
        + (f" and {png_path}" if png_path else "")
        + f" (latest.* beside them) in {doc['seconds']:.0f}s"
    )
    ok = any(s.get("status") == "ok" for s in doc["systems"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
