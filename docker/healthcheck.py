"""Container healthcheck: healthy when the replica answers STATUS.

Usage: python /opt/paxoskv/healthcheck.py [HOST:PORT] [TIMEOUT_S]
(default 127.0.0.1:7001, 2 s). Exit 0 and one line (id, role, leader,
applied index) when the replica answers; exit 1 with the reason otherwise.
Uses the wire protocol directly (kvstore.protocol), so it depends on
nothing but the replica itself.
"""

from __future__ import annotations

import sys

import zmq

from kvstore.protocol import Op, Request, Status, decode_response, encode_request


def main(argv: list[str]) -> int:
    address = argv[1] if len(argv) > 1 else "127.0.0.1:7001"
    timeout_ms = int(float(argv[2]) * 1000) if len(argv) > 2 else 2000
    if not address.startswith("tcp://"):
        address = "tcp://" + address
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
    try:
        sock.connect(address)
        sock.send(encode_request(Request(op=Op.STATUS)))
        resp = decode_response(sock.recv())
    except zmq.Again:
        print(f"unhealthy: no STATUS answer from {address} within {timeout_ms} ms")
        return 1
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
        print(f"unhealthy: {type(exc).__name__}: {exc}")
        return 1
    finally:
        sock.close()
    if resp.status != Status.OK:
        print(f"unhealthy: STATUS answered {resp.status.name} {resp.error}")
        return 1
    info = resp.info or {}
    print(
        "healthy: id={} role={} leader={} applied_index={}".format(
            info.get("id"), info.get("role"), info.get("leader"), info.get("applied_index")
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
