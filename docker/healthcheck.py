"""Container healthcheck: healthy when the replica is ready, or answers STATUS.

Usage: python /opt/paxoskv/healthcheck.py [URL | HOST:PORT] [TIMEOUT_S]

- an http:// URL (what docker-compose.yml uses: the replica's
  `http://127.0.0.1:910N/ready`, README "Monitoring"): healthy when it
  answers 200; its JSON body is printed, with the reason when it is 503;
- HOST:PORT, a client port (default 127.0.0.1:7001): healthy when the
  replica answers a STATUS request over the wire protocol (for a replica
  that serves no metrics).

Exit 0 and one line when healthy; exit 1 with the reason otherwise (the
timeout defaults to 2 s). Depends on nothing but the replica itself.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

import zmq

from kvstore.protocol import Op, Request, Status, decode_response, encode_request


def check_http(url: str, timeout_s: float) -> int:
    """GET `url`: 0 if it answers 200, else 1; prints one line."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = resp.read().decode(errors="replace").strip()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace").strip()
        print(f"unhealthy: {url} answered {exc.code}: {body}")
        return 1
    except OSError as exc:
        print(f"unhealthy: no answer from {url}: {exc}")
        return 1
    print(f"healthy: {body}")
    return 0


def main(argv: list[str]) -> int:
    address = argv[1] if len(argv) > 1 else "127.0.0.1:7001"
    timeout_ms = int(float(argv[2]) * 1000) if len(argv) > 2 else 2000
    if address.startswith("http://"):
        return check_http(address, timeout_ms / 1000)
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
