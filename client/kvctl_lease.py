"""`kvctl lease ...`: grant, keep-alive, revoke, list, ttl (client/kvctl.py
adds these to its parser). Lease ids are printed and read in hexadecimal,
as etcdctl does; `lease grant` prints the id alone, for scripts:

    ID=$(kvctl lease grant 30)
    kvctl put service/a up --lease "$ID"
    kvctl lease keep-alive "$ID" --forever
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from client.client import KVClient
from client.errors import ClusterUnavailable
from kvstore.limits import MAX_LEASE_TTL_S, MIN_LEASE_TTL_S
from kvstore.protocol import MAX_LEASE_ID

EXIT_OK, EXIT_FAILED = 0, 1

LEASE_HELP = """\
actions:
  grant TTL               grant a lease of TTL seconds; prints its id (hex)
  keep-alive ID           one keep-alive (the lease lasts TTL from now);
                          --forever: one every TTL/3 until interrupted
  revoke ID               revoke it: its keys are deleted at one revision
  list                    the ids of every lease
  ttl ID [--keys]         its TTL, the seconds left, and its keys
Keys are attached with 'kvctl put KEY VALUE --lease ID' and deleted when
the lease expires (no keep-alive for TTL seconds) or is revoked.
"""


def lease_id(text: str) -> int:
    """A lease id as kvctl prints it: hexadecimal (0x optional)."""
    try:
        value = int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a lease id (hex): {text!r}") from None
    if not 1 <= value <= MAX_LEASE_ID:
        raise argparse.ArgumentTypeError(f"a lease id is 1 to {MAX_LEASE_ID:x} (hex)")
    return value


def lease_ttl(text: str) -> int:
    """An argparse type: a lease TTL in seconds, within the limits."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not MIN_LEASE_TTL_S <= value <= MAX_LEASE_TTL_S:
        raise argparse.ArgumentTypeError(
            f"a lease TTL is {MIN_LEASE_TTL_S} to {MAX_LEASE_TTL_S} seconds"
        )
    return value


def add_lease(sub: Any, fmt: type, epilog: str) -> None:
    p = sub.add_parser(
        "lease",
        help="grant, keep alive, revoke and list leases",
        description="Leases: keys put with --lease ID vanish when the lease expires.",
        epilog=LEASE_HELP + "\n" + epilog,
        formatter_class=fmt,
    )
    what = p.add_subparsers(dest="lease_command", metavar="ACTION", required=True)
    grant = what.add_parser("grant", help="grant a lease; prints its id")
    grant.add_argument("ttl", type=lease_ttl, metavar="TTL", help="seconds")
    grant.set_defaults(run=_run_grant)
    keep = what.add_parser("keep-alive", help="keep a lease alive")
    keep.add_argument("id", type=lease_id, metavar="ID")
    keep.add_argument("--forever", action="store_true", help="every TTL/3 until interrupted")
    keep.set_defaults(run=_run_keep_alive)
    revoke = what.add_parser("revoke", help="revoke a lease and delete its keys")
    revoke.add_argument("id", type=lease_id, metavar="ID")
    revoke.set_defaults(run=_run_revoke)
    what.add_parser("list", help="list the leases").set_defaults(run=_run_list)
    ttl = what.add_parser("ttl", help="a lease's TTL and time left")
    ttl.add_argument("id", type=lease_id, metavar="ID")
    ttl.add_argument("--keys", action="store_true", help="also its keys")
    ttl.set_defaults(run=_run_ttl)


def _gone(lid: int) -> int:
    print(f"kvctl: error: lease {lid:x} not found (expired or revoked)", file=sys.stderr)
    return EXIT_FAILED


def _run_grant(client: KVClient, args: argparse.Namespace) -> int:
    lid = client.lease_grant(args.ttl)
    if args.out.simple:
        print(f"{lid:x}")
    else:
        args.out.emit({"id": f"{lid:x}", "ttl": args.ttl})
    return EXIT_OK


def _run_keep_alive(client: KVClient, args: argparse.Namespace) -> int:
    while True:
        try:
            ttl = client.lease_keep_alive(args.id)
        except ClusterUnavailable:
            if not args.forever:
                raise
            time.sleep(1.0)  # a failover: the new leader gives the lease a full TTL
            continue
        if ttl is None:
            return _gone(args.id)
        if args.out.simple:
            print(f"lease {args.id:x} keepalived with TTL({ttl})", flush=True)
        else:
            args.out.emit({"id": f"{args.id:x}", "ttl": ttl})
        if not args.forever:
            return EXIT_OK
        time.sleep(max(ttl, 1) / 3)


def _run_revoke(client: KVClient, args: argparse.Namespace) -> int:
    if not client.lease_revoke(args.id):
        return _gone(args.id)
    if args.out.simple:
        print(f"lease {args.id:x} revoked")
    else:
        args.out.emit({"id": f"{args.id:x}", "revoked": True})
    return EXIT_OK


def _run_list(client: KVClient, args: argparse.Namespace) -> int:
    ids = client.lease_list()
    if not args.out.simple:
        shown = [f"{lid:x}" for lid in ids]
        args.out.emit({"leases": shown, "count": len(ids)}, table=(["ID"], [[i] for i in shown]))
        return EXIT_OK
    print(f"found {len(ids)} leases")
    for lid in ids:
        print(f"{lid:x}")
    return EXIT_OK


def _run_ttl(client: KVClient, args: argparse.Namespace) -> int:
    info = client.lease_ttl(args.id, keys=args.keys)
    if info is None:
        return _gone(args.id)
    if not args.out.simple:
        fields = {**info._asdict(), "id": f"{args.id:x}"}
        if info.keys is None:
            del fields["keys"]
        table = [[fields["id"], info.granted_ttl, info.ttl, info.key_count]]
        titles = ["ID", "GRANTED_TTL", "TTL", "KEYS"]
        if info.keys is not None:
            table[0].append(b" ".join(info.keys))
            titles.append("ATTACHED")
        args.out.emit(fields, table=(titles, table))
        return EXIT_OK
    line = f"lease {args.id:x} granted with TTL({info.granted_ttl}s), remaining({info.ttl}s)"
    if info.keys is not None:
        keys = " ".join(k.decode("utf-8", "backslashreplace") for k in info.keys)
        left = info.key_count - len(info.keys)
        more = f" and {left} more" if left > 0 else ""
        line += f", attached keys([{keys}]{more})"
    print(line)
    return EXIT_OK
