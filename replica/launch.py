"""The one way to launch replica processes: the local cluster
(`kvstore-cluster`), the benchmarks and every test tier start, check and
stop replicas through this module, so each of these is written once:

- the command line, `replica_command`: the `kvstore-replica` contract
  (docs/CONTRACTS.md), `python -m replica.server --config F --id N
  --data-dir D [--initial-cluster-state S] [--tick-ms T] [--log-level L]
  [--log-format F]`.
  `module` runs a variant with the same command line (the fault tier's
  broken replica); `prefix` wraps it (`ip netns exec NS`), and must exec
  the command so that the pid we hold stays the replica's own;
- the environment, `replica_env`: this checkout first on PYTHONPATH;
- starting, `spawn` / `start_replica`: a session of its own (a Ctrl-C in the
  terminal that started it does not reach it), stdin closed, stdout and
  stderr appended to a log file;
- the liveness check, `wait_ready`: the process is alive AND its client port
  answers a STATUS request; `wait_for_leader` likewise polls STATUS until a
  replica leads. Both poll with a deadline, never a fixed sleep;
- stopping, `stop`: a signal (SIGTERM), then SIGKILL after a grace period,
  for our children (`Popen`, reaped) and for pids started by another process
  (`kvstore-cluster stop`), which count only while /proc says they run a
  replica, so a recycled pid is never signalled;
- free ports on loopback, `free_ports`, and `port_is_free`.

It imports kvstore/ and zmq only: client/, tests/ and benchmarks/ import it.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import zmq

from kvstore.config import normalize_address
from kvstore.protocol import Op, ProtocolError, Request, decode_response, encode_request
from kvstore.security import ClientKeys

REPLICA_MODULE = "replica.server"
PROJECT_ROOT = Path(__file__).resolve().parents[1]

Process: TypeAlias = subprocess.Popen[bytes] | int
"""A process we started (`Popen`) or the pid of one another process started."""


class LaunchError(RuntimeError):
    """A replica exited while we waited for it (the message ends with its log)."""


# -- starting -----------------------------------------------------------------


def replica_command(
    config: str | os.PathLike[str],
    replica_id: int | str,
    data_dir: str | os.PathLike[str],
    *,
    tick_ms: int | None = None,
    log_level: str | None = None,
    module: str = REPLICA_MODULE,
    prefix: Sequence[str] = (),
    cluster_state: str | None = "new",
    log_format: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The argv of one replica; None leaves an option at the replica's default.
    `cluster_state` is `--initial-cluster-state`, which matters only for an
    empty data directory: "new" (the default) for the first start of a
    cluster, "existing" for a restart that must never bootstrap (a wiped
    directory is then refused: replica/datadir.py). `extra`: more options
    (e.g. --trace-every N)."""
    argv = [*prefix, sys.executable, "-m", module, "--config", str(config),
            "--id", str(replica_id), "--data-dir", str(data_dir)]  # fmt: skip
    if cluster_state is not None:
        argv += ["--initial-cluster-state", cluster_state]
    if tick_ms is not None:
        argv += ["--tick-ms", str(tick_ms)]
    if log_level is not None:
        argv += ["--log-level", log_level]
    if log_format is not None:
        argv += ["--log-format", log_format]
    return argv + list(extra)


def replica_env() -> dict[str, str]:
    """This process's environment with this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def spawn(
    argv: Sequence[str], log_path: str | os.PathLike[str], **popen: Any
) -> subprocess.Popen[bytes]:
    """Starts argv in a session of its own, stdout and stderr appended to
    log_path (its folder is made); `popen` goes to Popen (env, cwd, group)."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, **popen,
        )  # fmt: skip


def start_replica(
    config: str | os.PathLike[str],
    replica_id: int,
    data_dir: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
    *,
    tick_ms: int | None = None,
    log_level: str | None = None,
    module: str = REPLICA_MODULE,
    prefix: Sequence[str] = (),
    cwd: str | os.PathLike[str] | None = None,
    group: int | None = None,
    cluster_state: str | None = "new",
    log_format: str | None = None,
    extra: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Starts one replica (`replica_command`) with `replica_env()` (see
    `spawn`); `group` is the group id to run it with (needs root)."""
    argv = replica_command(
        config, replica_id, data_dir, tick_ms=tick_ms, log_level=log_level, module=module,
        prefix=prefix, cluster_state=cluster_state, log_format=log_format, extra=extra,
    )  # fmt: skip
    return spawn(argv, log_path, env=replica_env(), cwd=cwd, group=group)


# -- is it up? ----------------------------------------------------------------


def statuses(
    addresses: Sequence[str], timeout: float = 0.5, *, curve: ClientKeys | None = None
) -> list[dict[str, Any] | None]:
    """One STATUS request to each client address ("host:port" or tcp://), all
    at once: each replica's report, or None where none came within `timeout`.
    `curve`: the client keys of a CURVE cluster (kvstore/security.py)."""
    ctx = zmq.Context.instance()
    poller = zmq.Poller()
    pending: dict[zmq.Socket, int] = {}
    result: list[dict[str, Any] | None] = [None] * len(addresses)
    socks = []
    try:
        for index, address in enumerate(addresses):
            sock = ctx.socket(zmq.DEALER)
            socks.append(sock)
            if curve is not None:
                curve.apply(sock)
            pending[sock] = index
            sock.connect(normalize_address(address))
            sock.send_multipart([b"", encode_request(Request(Op.STATUS))])
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while pending and (left := deadline - time.monotonic()) > 0:
            for sock, _ in poller.poll(left * 1000):
                poller.unregister(sock)
                with contextlib.suppress(ProtocolError):
                    result[pending[sock]] = decode_response(sock.recv_multipart()[-1]).info
                del pending[sock]
    finally:
        for sock in socks:
            sock.close(linger=0)
    return result


def find_leader(rows: Iterable[dict[str, Any] | None]) -> int | None:
    """The id of the replica that reports itself leader in STATUS rows (from
    `statuses` or `KVClient.status`); if several do (an old leader not yet
    deposed), the one with the highest ballot."""
    best: tuple[list[int], int] | None = None
    for row in rows:
        rid = row.get("id") if row else None
        if row is None or "error" in row or not isinstance(rid, int):
            continue
        if str(row.get("role", "")).lower() == "leader" or row.get("leader") == rid:
            ballot = row.get("ballot")
            key = (list(ballot) if isinstance(ballot, (list, tuple)) else [], rid)
            if best is None or key > best:
                best = key
    return None if best is None else best[1]


def log_tail(path: str | os.PathLike[str], lines: int = 20) -> str:
    """The last lines of a log, for error messages."""
    try:
        text = Path(path).read_text(errors="replace").rstrip()
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _raise_if_exited(
    watch: Mapping[int, subprocess.Popen[bytes]], logs: Mapping[int, Path]
) -> None:
    for rid, proc in watch.items():
        if proc.poll() is not None:
            log = f"; last lines of {logs[rid]}:\n{log_tail(logs[rid])}" if rid in logs else ""
            raise LaunchError(f"replica {rid} exited with status {proc.returncode}{log}")


def wait_ready(
    replica_id: int,
    proc: subprocess.Popen[bytes],
    address: str,
    timeout: float = 20.0,
    log_path: Path | None = None,
    curve: ClientKeys | None = None,
) -> dict[str, Any]:
    """The liveness check: waits until `proc` is alive and its client port
    `address` answers STATUS; returns the report. LaunchError if it exits,
    TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    logs = {replica_id: log_path} if log_path else {}
    while True:
        _raise_if_exited({replica_id: proc}, logs)
        wait = max(0.05, min(0.5, deadline - time.monotonic()))
        info = statuses([address], wait, curve=curve)[0]
        if info is not None and proc.poll() is None:
            return info
        if time.monotonic() >= deadline:
            raise TimeoutError(f"replica {replica_id} did not answer STATUS within {timeout:g}s")


def wait_for_leader(
    addresses: Sequence[str],
    timeout: float = 20.0,
    *,
    exclude: Collection[int] = (),
    watch: Mapping[int, subprocess.Popen[bytes]] | None = None,
    logs: Mapping[int, Path] | None = None,
    curve: ClientKeys | None = None,
) -> int:
    """Polls STATUS at `addresses` until a replica not in `exclude` says it
    leads; returns its id. LaunchError as soon as a process in `watch` (by
    replica id) exits; TimeoutError after `timeout` seconds. Either message
    shows the tails of `logs`."""
    logs = logs or {}
    deadline = time.monotonic() + timeout
    while True:
        _raise_if_exited(watch or {}, logs)
        leader = find_leader(statuses(addresses, curve=curve))
        if leader is not None and leader not in exclude:
            return leader
        if time.monotonic() >= deadline:
            tails = "".join(f"\n--- replica {r}:\n{log_tail(p, 5)}" for r, p in logs.items())
            raise TimeoutError(f"no leader within {timeout:g}s{tails}")
        time.sleep(0.05)


# -- stopping -----------------------------------------------------------------


def is_replica_process(pid: int, module: str = REPLICA_MODULE) -> bool:
    """True while pid is alive and runs `module` (not a recycled pid; a
    zombie's cmdline is empty, so it counts as gone)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return module.encode() in cmdline.split(b"\0")


def alive(proc: Process | None) -> bool:
    """A child: it has not exited (reaps it if it has). A pid: `is_replica_process`."""
    if isinstance(proc, int):
        return is_replica_process(proc)
    return proc is not None and proc.poll() is None


def send_signal(proc: Process, sig: int) -> bool:
    """Sends `sig` if the process is alive; returns whether it was sent."""
    if not alive(proc):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc if isinstance(proc, int) else proc.pid, sig)
    return True


def _wait_gone(procs: list[Process], deadline: float) -> list[Process]:
    """Polls until every process ended or the deadline passed; returns the rest."""
    while procs and time.monotonic() < deadline:
        time.sleep(0.02)
        procs = [p for p in procs if alive(p)]
    return procs


def stop(
    procs: Iterable[Process | None], grace: float = 10.0, sig: int = signal.SIGTERM
) -> list[int]:
    """Sends `sig` to each live process (and SIGCONT, so a paused one can
    act on it), waits up to `grace` seconds, then SIGKILLs what is left and
    waits for it. Returns the pids that had to be killed."""
    live = [p for p in procs if p is not None and alive(p)]
    for p in live:
        send_signal(p, sig)
        send_signal(p, signal.SIGCONT)
    left = _wait_gone(live, time.monotonic() + grace)
    killed = [p if isinstance(p, int) else p.pid for p in left if send_signal(p, signal.SIGKILL)]
    _wait_gone(left, time.monotonic() + 10.0)
    return killed


# -- ports --------------------------------------------------------------------


def port_is_free(host: str, port: int) -> bool:
    """Whether host:port can be bound (with SO_REUSEADDR, as ZeroMQ binds)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("" if host == "*" else host.strip("[]"), port))
        except OSError:
            return False
    return True


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            low, high = (int(x) for x in fh.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_ports(count: int, host: str = "127.0.0.1", *, consecutive: bool = False) -> list[int]:
    """`count` distinct TCP ports on `host` that were free a moment ago
    (another program may take one before it is bound: a race accepted for
    tests and benchmarks), chosen OUTSIDE the kernel's ephemeral range: a
    replica that is stopped and started again must find its ports free, and
    a port in that range can meanwhile become the local end of any outgoing
    connection (a client's, a load generator's). They are held bound until
    all are chosen, so none is handed out twice; `consecutive` asks for a
    run base..base+count-1 (for `kvstore-cluster --base-port`)."""
    low, high = _ephemeral_range()
    spans = [(lo, hi) for lo, hi in ((10_000, low - 1), (high + 1, 65_535)) if hi - lo > count]
    rng = random.Random()
    socks: list[socket.socket] = []
    try:
        for _ in range(50 * count + 200):
            if len(socks) == count:
                break
            lo, hi = rng.choice(spans)
            if consecutive:
                base = socks[0].getsockname()[1] if socks else rng.randint(lo, hi - count)
                port = base + len(socks)
            else:
                port = rng.randint(lo, hi)
            s = socket.socket()
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                if consecutive:  # start the run again elsewhere
                    for held in socks:
                        held.close()
                    socks = []
                continue
            socks.append(s)
        if len(socks) < count:
            raise OSError(f"found no {count} free ports on {host} outside the ephemeral range")
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
