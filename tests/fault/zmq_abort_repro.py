"""Pure-pyzmq reproduction of libzmq 4.3.5's `!_io_error` abort (docs/FAULTS.md).

A receiver process (a ROUTER with ROUTER_HANDOVER, as replicas used before
2026-11-27, or a PULL, as they use now; both with RCVHWM 0 and the replicas'
ZMTP heartbeats) is SIGSTOPped for longer than the heartbeat timeout while
SENDERS sockets in this process keep sending; it is resumed, and the run
counts how often it died. Senders reconnect during each pause, so with a
ROUTER every resume hands routing ids over from stale connections.

    python -m tests.fault.zmq_abort_repro router 120 16
    python -m tests.fault.zmq_abort_repro pull 120 16

Seen on 2026-11-27 (2 cores): router aborted in 3 pauses of 170, pull in
none of 120. The abort is a race, hence the many pauses. Only 127.0.0.1.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import zmq

from replica.launch import free_ports

HEARTBEAT_IVL_MS = 500
HEARTBEAT_TIMEOUT_MS = 2000
PAUSE_S = 2.6  # longer than the heartbeat timeout


def receiver(kind: str, port: int) -> None:
    """Binds and reads slowly forever (a backlog builds while it sleeps)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER if kind == "router" else zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    if kind == "router":
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.bind(f"tcp://127.0.0.1:{port}")
    while True:
        if sock.poll(100):
            for _ in range(1000):
                try:
                    sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
            time.sleep(0.001)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--receiver":
        receiver(argv[1], int(argv[2]))
        return 0
    if len(argv) != 3 or argv[0] not in ("router", "pull"):
        print(__doc__, file=sys.stderr)
        return 2
    kind, pauses, senders = argv[0], int(argv[1]), int(argv[2])
    (port,) = free_ports(1)

    def start() -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "tests.fault.zmq_abort_repro", "--receiver", kind, str(port)]
        return subprocess.Popen(cmd, stderr=subprocess.PIPE)

    child = start()
    ctx = zmq.Context()
    socks = []
    for i in range(senders):
        sock = ctx.socket(zmq.DEALER if kind == "router" else zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        if kind == "router":
            sock.setsockopt(zmq.ROUTING_ID, b"%d" % i)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.CONNECT_TIMEOUT, 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.connect(f"tcp://127.0.0.1:{port}")
        socks.append(sock)
    payload = b"x" * 200

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for sock in socks:
                for _ in range(20):
                    try:
                        sock.send(payload, zmq.NOBLOCK)
                    except zmq.Again:
                        break
            time.sleep(0.0005)

    aborts = 0
    try:
        pump(1.0)
        for n in range(pauses):
            child.send_signal(signal.SIGSTOP)
            pump(PAUSE_S)
            child.send_signal(signal.SIGCONT)
            pump(1.2)
            if child.poll() is not None:
                aborts += 1
                assert child.stderr is not None
                last = child.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
                print(f"pause {n}: receiver died (rc {child.returncode}): {last}", flush=True)
                child = start()
                pump(0.5)
    finally:
        child.kill()
        child.wait()
        for sock in socks:
            sock.close(linger=0)
        ctx.term()
    print(f"{kind}: {aborts} aborts in {pauses} pauses", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
