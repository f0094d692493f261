"""`kvstore-cluster`: start, stop and inspect a local development cluster.

Everything lives under one directory (default `.cluster/`):

    cluster.toml         the cluster config file (docs/CONTRACTS.md)
    data<N>/             replica N's LevelDB
    logs/replica<N>.log  replica N's stdout and stderr
    pids/replica<N>.pid  replica N's process id

Replicas are started, checked and stopped by replica/launch.py (the
`kvstore-replica` contract), each in its own session, so they outlive the
shell that started them. A pid file is trusted only while /proc/PID/cmdline
still names `replica.server`, so a recycled pid is never signalled. `start`
is idempotent: it starts only the
replicas that are not running (data is kept across stop/start); `stop`
sends SIGTERM, then SIGKILL to what is left after a grace period.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from client.client import KVClient
from client.kvctl import format_status_table, silence_stdout
from kvstore.config import (
    ConfigError,
    ReplicaAddress,
    display_address,
    load_cluster_config,
    local_cluster_config,
    parse_http_address,
    write_cluster_config,
)
from replica import launch

PROG = "kvstore-cluster"


class ClusterError(Exception):
    """A problem to report to the user in one line."""


class _NoLeader(ClusterError):
    """The replicas run but elected no leader in time (left running)."""


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = display_address(address).rpartition(":")
    return host, int(port)


# -- the cluster directory ----------------------------------------------------


class LocalCluster:
    """The files of a local cluster under `root` and the operations on them."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.config_path = self.root / "cluster.toml"

    def data_dir(self, rid: int) -> Path:
        return self.root / f"data{rid}"

    def log_path(self, rid: int) -> Path:
        return self.root / "logs" / f"replica{rid}.log"

    def pid_path(self, rid: int) -> Path:
        return self.root / "pids" / f"replica{rid}.pid"

    def replicas(self) -> list[ReplicaAddress]:
        return load_cluster_config(self.config_path)

    def pid_files(self) -> dict[int, Path]:
        found = {}
        for path in sorted((self.root / "pids").glob("replica*.pid")):
            suffix = path.stem.removeprefix("replica")
            if suffix.isdigit():
                found[int(suffix)] = path
        return found

    def running(self) -> dict[int, int]:
        """replica id -> pid of the replicas whose pid file names a live replica."""
        result = {}
        for rid, path in self.pid_files().items():
            try:
                pid = int(path.read_text().strip())
            except (OSError, ValueError):
                continue
            if launch.is_replica_process(pid):
                result[rid] = pid
        return result

    def spawn(self, replica: ReplicaAddress, tick_ms: int) -> subprocess.Popen[bytes]:
        """Starts one replica in its own session (it outlives this process)."""
        rid = replica.id
        proc = launch.start_replica(
            self.config_path, rid, self.data_dir(rid), self.log_path(rid),
            tick_ms=tick_ms, cwd=self.root,
        )  # fmt: skip
        self.pid_path(rid).parent.mkdir(parents=True, exist_ok=True)
        self.pid_path(rid).write_text(f"{proc.pid}\n")
        return proc

    def client(self, timeout: float = 2.0) -> KVClient:
        addresses = [r.client for r in self.replicas()]
        return KVClient(addresses, timeout=timeout, attempt_timeout=min(timeout, 0.5))


# -- start --------------------------------------------------------------------


def _plan(cluster: LocalCluster, args: argparse.Namespace) -> list[ReplicaAddress]:
    """The replicas to run: the existing config while some still run or
    data exists for it, else a fresh config from the arguments."""
    fresh = local_cluster_config(
        args.replicas, host=args.host, base_port=args.base_port, peer_base_port=args.peer_base_port
    )
    if args.metrics_base_port:  # HTTP metrics and health checks (README: Monitoring)
        fresh = [
            dataclasses.replace(r, metrics=f"{args.host}:{args.metrics_base_port + i}")
            for i, r in enumerate(fresh)
        ]
    if not cluster.config_path.exists():
        return fresh
    existing = cluster.replicas()
    if cluster.running():
        if existing != fresh:
            print(f"{PROG}: some replicas are running: keeping {cluster.config_path}")
        return existing
    old_ids = {r.id for r in existing}
    has_data = any(cluster.data_dir(rid).exists() for rid in old_ids)
    if has_data and old_ids != {r.id for r in fresh}:
        raise ClusterError(
            f"{cluster.root} holds the data of a cluster of replicas "
            f"{sorted(old_ids)}; remove it or use another --dir to change the size"
        )
    return fresh


def _check_ports(replicas: Sequence[ReplicaAddress]) -> None:
    busy = []
    for r in replicas:
        ports = [("client", *_host_port(r.client_bind)), ("peer", *_host_port(r.peer_bind))]
        if r.metrics is not None:
            ports.append(("metrics", *parse_http_address(r.metrics)))
        for what, host, port in ports:
            if not launch.port_is_free(host, port):
                busy.append(f"{port} ({what} port of replica {r.id})")
    if busy:
        raise ClusterError(
            f"port(s) in use: {', '.join(busy)}; another cluster may be running "
            "(try --base-port/--peer-base-port, or stop it)"
        )


def cmd_start(args: argparse.Namespace) -> int:
    if args.replicas < 1:
        raise ClusterError("--replicas must be at least 1")
    cluster = LocalCluster(args.dir)
    replicas = _plan(cluster, args)
    running = cluster.running()
    missing = [r for r in replicas if r.id not in running]
    if not missing:
        pids = ", ".join(f"{rid}:{pid}" for rid, pid in sorted(running.items()))
        print(f"{PROG}: already running in {cluster.root} (replica:pid {pids})")
        _print_access(replicas)
        return 0
    _check_ports(missing)
    cluster.root.mkdir(parents=True, exist_ok=True)
    if not running:
        write_cluster_config(cluster.config_path, replicas)
    started = {r.id: cluster.spawn(r, args.tick_ms) for r in missing}
    for rid, proc in started.items():
        print(f"started replica {rid} (pid {proc.pid}), log {cluster.log_path(rid)}")
    try:
        leader = _wait_for_leader(cluster, started, args.wait)
    except BaseException as exc:
        if not isinstance(exc, _NoLeader):  # a crash or Ctrl-C: undo this start
            launch.stop(started.values(), grace=5.0)
            for rid in started:
                cluster.pid_path(rid).unlink(missing_ok=True)
        raise
    address = display_address(next(r.client for r in replicas if r.id == leader))
    print(f"{PROG}: {len(replicas)} replicas running; leader is replica {leader} ({address})")
    _print_access(replicas)
    return 0


def _wait_for_leader(
    cluster: LocalCluster, started: dict[int, subprocess.Popen[bytes]], wait: float
) -> int:
    """Waits until every replica started now answers STATUS and some replica
    leads; fails early if one of those exited."""
    deadline = time.monotonic() + wait
    clients = {r.id: r.client for r in cluster.replicas()}
    logs = {rid: cluster.log_path(rid) for rid in clients}
    try:
        for rid, proc in started.items():
            launch.wait_ready(rid, proc, clients[rid], deadline - time.monotonic(), logs[rid])
        return launch.wait_for_leader(
            list(clients.values()), deadline - time.monotonic(), watch=started, logs=logs
        )
    except launch.LaunchError as exc:
        raise ClusterError(f"at start-up: {exc}") from None
    except TimeoutError:
        raise _NoLeader(
            f"no leader after {wait:g}s; the replicas are still running "
            f"(see {cluster.root / 'logs'}, or run `{PROG} stop`)"
        ) from None


def _print_access(replicas: Sequence[ReplicaAddress]) -> None:
    spec = ",".join(display_address(r.client) for r in replicas)
    metrics = [f"http://{r.metrics}/metrics" for r in replicas if r.metrics is not None]
    if metrics:
        print(f"metrics: {' '.join(metrics)}")
    default = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    if spec == default:
        print("try: kvctl put hello world && kvctl get hello")
    else:
        print(f"try: export KVSTORE_CLUSTER={spec}; kvctl status")


# -- stop and status ----------------------------------------------------------


def _stop_pids(cluster: LocalCluster, pids: dict[int, int], grace: float = 10.0) -> None:
    """SIGTERM, wait up to `grace`, SIGKILL what is left; removes pid files."""
    killed = launch.stop(pids.values(), grace)
    for rid, pid in pids.items():
        if pid in killed:
            print(f"replica {rid} (pid {pid}) ignored SIGTERM for {grace:g}s: killed")
        cluster.pid_path(rid).unlink(missing_ok=True)
        print(f"stopped replica {rid} (pid {pid})")


def cmd_stop(args: argparse.Namespace) -> int:
    cluster = LocalCluster(args.dir)
    files = cluster.pid_files()
    if not files:
        print(f"{PROG}: no cluster running in {cluster.root}")
        return 0
    running = cluster.running()
    for rid, path in files.items():
        if rid not in running:
            path.unlink(missing_ok=True)
            print(f"replica {rid} was not running (removed its stale pid file)")
    _stop_pids(cluster, running, args.grace)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cluster = LocalCluster(args.dir)
    if not cluster.config_path.exists():
        print(f"{PROG}: no cluster in {cluster.root} (start one with `{PROG} start`)")
        return 1
    running = cluster.running()
    if not running:
        print(f"{PROG}: no replica is running in {cluster.root} (start with `{PROG} start`)")
        return 3
    with cluster.client(timeout=1.0) as client:
        rows = client.status()
    print(format_status_table(rows))
    for r in cluster.replicas():
        state = f"pid {running[r.id]}" if r.id in running else "not running"
        print(f"replica {r.id}: {state}, log {cluster.log_path(r.id)}")
    return 0 if any("error" not in row for row in rows) else 3


# -- command line -------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--dir", default=".cluster", help="the cluster's directory (default: .cluster)"
    )
    parser = _Parser(
        prog=PROG,
        description="Run a local development cluster of replicas on this machine.",
        epilog="exit codes: 0 ok, 1 failure, 2 usage error, 3 no replica answered (status)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    start = sub.add_parser(
        "start",
        parents=[common],
        help="start the replicas (only those not running) and wait for a leader",
        description="Write DIR/cluster.toml, start every replica that is not running "
        "in the background (logs in DIR/logs) and wait until a leader is elected.",
    )
    start.add_argument("--replicas", type=int, default=3, help="number of replicas (default 3)")
    start.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    start.add_argument("--base-port", type=int, default=7001, help="first client port")
    start.add_argument("--peer-base-port", type=int, default=7101, help="first peer port")
    start.add_argument(
        "--metrics-base-port",
        type=int,
        help="serve replica N's /metrics, /health, /ready on HOST:PORT+N-1 (default: off)",
    )
    start.add_argument("--tick-ms", type=int, default=10, help="replica tick (default 10 ms)")
    start.add_argument("--wait", type=float, default=20.0, help="seconds to wait for a leader")
    start.set_defaults(run=cmd_start)
    stop = sub.add_parser(
        "stop", parents=[common], help="stop the replicas (SIGTERM, then SIGKILL)"
    )
    stop.add_argument("--grace", type=float, default=10.0, help="seconds before SIGKILL")
    stop.set_defaults(run=cmd_stop)
    status = sub.add_parser("status", parents=[common], help="show every replica's state")
    status.set_defaults(run=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `kvstore-cluster`; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kvstore-cluster status | head`: not an error
        silence_stdout()
        return 0
    except (ClusterError, ConfigError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
