"""`python -m benchmarks.floor`: the floor under a 1-client PUT on this machine.

A mock of the commit path of one write with everything but the transport
and the disk taken out: four processes on loopback, the sockets the store
uses (a DEALER client, the leader's ROUTER, PUSH/PULL between replicas) and
the disk pattern of a vote (an append to a file and `fdatasync`):

    client --request--> leader --"Phase2a"--> follower 1, follower 2
                        leader appends + fdatasyncs its own "vote"
                        each follower appends + fdatasyncs, --"Phase2b"--> leader
    client <--reply---- leader, once its own vote is synced and one follower's
                        Phase2b is in (a majority of three)

No Paxos, no LevelDB, no msgpack, no state machine: each loop does nothing
but receive, write, sync and send. What it measures is therefore a floor
no implementation of this design on this machine (three processes, ZeroMQ
between them, a synced vote on a quorum before the answer) gets under:
the client's latency p50/p99, once with the syncs ("hops_fsync") and once
without them ("hops": the four ZeroMQ hops and the loops' wake-ups alone).
`python -m benchmarks.run` measures it at the start of every run of ours
(`machine.put1_floor` in the JSON, printed under the table), so a PUT x1
figure can be read against the floor of the same machine at the same time.

It also counts the CPU time the three mock replicas spend per write
("cpu_us_per_op": user and system, from /proc, all their threads), to set
beside the cluster's CPU per write at one client (`cost` in the JSON): on
this 2-core VM a 1-client write keeps both cores busy enough that the CPU
it takes on the replicas is latency, also where it is not on the path.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import zmq

from replica.launch import free_ports

REQUEST = b"r" * 150  # about a 100-byte PUT's request frame
VOTE_PAD = b"v" * 150  # a Phase2a carries the request and its slot's header
STOP = b"stop"
TIMEOUT_MS = 5000


def _socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    return sock


def _vote_file(directory: str, name: str) -> int:
    return os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def _follower(inbox_port: int, leader_port: int, directory: str, name: str, sync: bool) -> None:
    ctx = zmq.Context()
    inbox = _socket(ctx, zmq.PULL)
    inbox.bind(f"tcp://127.0.0.1:{inbox_port}")
    out = _socket(ctx, zmq.PUSH)
    out.connect(f"tcp://127.0.0.1:{leader_port}")
    fd = _vote_file(directory, name)
    try:
        while inbox.poll(TIMEOUT_MS * 4):
            msg = inbox.recv()
            if msg == STOP:
                break
            os.write(fd, msg)
            if sync:
                os.fdatasync(fd)
            out.send(msg[:8])  # the sequence number: the "Phase2b"
    finally:
        os.close(fd)
        ctx.destroy(0)


def _leader(
    client_port: int, inbox_port: int, follower_ports: list[int], directory: str, sync: bool
) -> None:
    ctx = zmq.Context()
    router = _socket(ctx, zmq.ROUTER)
    router.bind(f"tcp://127.0.0.1:{client_port}")
    inbox = _socket(ctx, zmq.PULL)
    inbox.bind(f"tcp://127.0.0.1:{inbox_port}")
    pushes = []
    for port in follower_ports:
        push = _socket(ctx, zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{port}")
        pushes.append(push)
    fd = _vote_file(directory, "leader")
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(inbox, zmq.POLLIN)
    seq = 0
    waiting: bytes | None = None  # the client waiting for the current request
    try:
        while True:
            ready = dict(poller.poll(TIMEOUT_MS * 4))
            if not ready:
                break  # the client is gone
            if router in ready:
                ident, _, body = router.recv_multipart()
                if body == STOP:
                    for push in pushes:
                        push.send(STOP)
                    break
                seq += 1
                msg = seq.to_bytes(8, "big") + body + VOTE_PAD
                for push in pushes:  # the early Phase2a: before the own vote's sync
                    push.send(msg)
                os.write(fd, msg)
                if sync:
                    os.fdatasync(fd)
                waiting = ident
            if inbox in ready:
                ack = inbox.recv()
                if waiting is not None and int.from_bytes(ack, "big") == seq:
                    router.send_multipart([waiting, b"", b"ok"])
                    waiting = None
    finally:
        os.close(fd)
        ctx.destroy(0)


def _cpu_seconds(pids: list[int]) -> tuple[float, float] | None:
    """(user, system) CPU seconds of these processes, all threads (Linux
    /proc), or None where that cannot be read."""
    user = system = 0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def _percentile(samples: list[float], q: float) -> float:
    return samples[min(len(samples) - 1, int(len(samples) * q))]


def measure(seconds: float = 3.0, sync: bool = True, data_dir: str | None = None) -> dict[str, Any]:
    """The client's latency through the mock for `seconds` (after 200
    warm-up requests): {"p50_ms", "p99_ms", "n"}, with "cpu_us_per_op"
    ({"user", "sys"}: the mock replicas' CPU per request) where /proc
    tells it. Raises RuntimeError if the mock does not answer (its
    processes are stopped either way)."""
    directory = tempfile.mkdtemp(prefix="floor-", dir=data_dir)
    client_port, leader_port, f1, f2 = free_ports(4)
    spawn = mp.get_context("spawn")
    procs = [
        spawn.Process(target=_follower, args=(f1, leader_port, directory, "f1", sync), daemon=True),
        spawn.Process(target=_follower, args=(f2, leader_port, directory, "f2", sync), daemon=True),
        spawn.Process(
            target=_leader, args=(client_port, leader_port, [f1, f2], directory, sync), daemon=True
        ),
    ]
    ctx = zmq.Context()
    try:
        for p in procs:
            p.start()
        client = _socket(ctx, zmq.DEALER)
        client.connect(f"tcp://127.0.0.1:{client_port}")

        def one() -> None:
            client.send_multipart([b"", REQUEST])
            if not client.poll(TIMEOUT_MS):
                raise RuntimeError(f"the floor mock did not answer in {TIMEOUT_MS / 1000:g}s")
            client.recv_multipart()

        for _ in range(200):
            one()
        samples: list[float] = []
        pids = [p.pid for p in procs if p.pid is not None]
        cpu_before = _cpu_seconds(pids)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            one()
            samples.append((time.perf_counter() - t0) * 1000)
        cpu_after = _cpu_seconds(pids)
        client.send_multipart([b"", STOP])
        for p in procs:
            p.join(5)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        ctx.destroy(0)
        shutil.rmtree(directory, ignore_errors=True)
    samples.sort()
    out: dict[str, Any] = {
        "p50_ms": round(_percentile(samples, 0.5), 3),
        "p99_ms": round(_percentile(samples, 0.99), 3),
        "n": len(samples),
    }
    if cpu_before is not None and cpu_after is not None:
        out["cpu_us_per_op"] = {
            "user": round((cpu_after[0] - cpu_before[0]) / len(samples) * 1e6, 1),
            "sys": round((cpu_after[1] - cpu_before[1]) / len(samples) * 1e6, 1),
        }
    return out


def put1_floor(seconds: float = 3.0, data_dir: str | None = None) -> dict[str, Any]:
    """Both variants: {"hops": ..., "hops_fsync": ...}, or {"error": why}."""
    try:
        return {
            "hops": measure(seconds, sync=False, data_dir=data_dir),
            "hops_fsync": measure(seconds, sync=True, data_dir=data_dir),
        }
    except (OSError, RuntimeError, zmq.ZMQError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def wait_until_quiet(
    threshold_ms: float,
    max_seconds: float,
    interval_s: float = 60.0,
    seconds: float = 2.0,
    data_dir: str | None = None,
    note: Callable[[str], None] = lambda _msg: None,
    reading: Callable[[], float | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Measure the synced floor's p50 every `interval_s` until a reading is
    at most `threshold_ms` or `max_seconds` have passed (a reading that
    fails counts as not quiet). Returns {"threshold_ms", "met", "waited_s",
    "readings_ms"} for the run's JSON (machine.quiet_wait). `reading`,
    `sleep` and `clock` are there for the tests."""

    def measure_once() -> float | None:
        try:
            return measure(seconds, sync=True, data_dir=data_dir)["p50_ms"]
        except (OSError, RuntimeError, zmq.ZMQError):
            return None

    read = reading or measure_once
    start = clock()
    readings: list[float | None] = []
    while True:
        r = read()
        readings.append(r)
        waited = clock() - start
        if r is not None and r <= threshold_ms:
            note(f"machine quiet: PUT x1 floor p50 {r:.2f} ms <= {threshold_ms:g} ms")
            met = True
            break
        left = max_seconds - waited
        if left <= 0:
            met = False
            break
        shown = "not measured" if r is None else f"{r:.2f} ms"
        note(
            f"waiting for a quiet machine: PUT x1 floor p50 {shown} > {threshold_ms:g} ms "
            f"({waited:.0f} of {max_seconds:.0f} s)"
        )
        sleep(min(interval_s, left))
    return {
        "threshold_ms": threshold_ms,
        "met": met,
        "waited_s": round(clock() - start, 1),
        "readings_ms": readings,
    }


def describe(floor: dict[str, Any] | None) -> str | None:
    """One line for the table's header, or None if there is no floor."""
    if not floor:
        return None
    if "error" in floor:
        return f"PUT x1 floor: not measured ({floor['error']})"
    synced = floor["hops_fsync"]
    line = (
        "PUT x1 floor here (benchmarks/floor.py: four ZeroMQ hops, three synced appends, "
        f"no work): p50 {synced['p50_ms']:.2f} ms "
        f"(hops alone {floor['hops']['p50_ms']:.2f})"
    )
    cpu = synced.get("cpu_us_per_op")
    if cpu:
        line += f"; its replicas' CPU per write {cpu['user'] + cpu['sys']:.0f} us"
    return line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.floor",
        description="The floor under a 1-client PUT on this machine: a mock of the commit "
        "path (client -> leader -> two followers -> leader -> client over ZeroMQ on "
        "loopback, each replica appending and fdatasyncing a vote) with no other work.",
    )
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per variant (default 3)")
    ap.add_argument(
        "--data-dir",
        help="where the mock's vote files go (default: $BENCH_DATA_DIR or the temp directory)",
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    if args.seconds <= 0:
        ap.error("--seconds must be positive")
    data_dir = args.data_dir or os.environ.get("BENCH_DATA_DIR") or None
    floor = put1_floor(args.seconds, data_dir)
    if args.json:
        print(json.dumps(floor, indent=1))
    else:
        print(describe(floor))
        if "error" not in floor:
            for name, r in floor.items():
                cpu = r.get("cpu_us_per_op")
                spent = f"  CPU {cpu['user']:.0f} user + {cpu['sys']:.0f} sys us/op" if cpu else ""
                print(
                    f"  {name:<10} p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  n={r['n']}"
                    + spent
                )
    return 1 if "error" in floor else 0


if __name__ == "__main__":
    raise SystemExit(main())
