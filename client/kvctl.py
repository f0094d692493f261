"""`kvctl`: the command line of the key-value store.

A thin shell over `client.client.KVClient`: argparse subcommands, bytes in
and out, and one promise: no traceback ever reaches the user. Every failure
is one line on stderr (`kvctl: error: ...`) and an exit code from the table
in EXIT_CODES_HELP.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from client import backup
from client.client import KVClient
from client.errors import (
    AuthenticationFailed,
    BadRequest,
    ClusterUnavailable,
    KVError,
    RequestTooLarge,
    SessionExpired,
)
from client.kvctl_lease import add_lease, lease_id
from client.kvctl_lock import add_lock, take_command
from client.kvctl_output import FORMATS, KV_TITLES, Output, format_table, kv_fields, kv_row
from client.kvctl_watch import add_watch
from client.txn import TXN_HELP, TxnSyntaxError, parse_txn
from kvstore.backup import BackupError
from kvstore.backup import read as read_backup
from kvstore.config import ENV_CLUSTER, ConfigError, display_address, normalize_address
from kvstore.limits import MAX_CLIENT_TIMEOUT_S
from kvstore.protocol import DeleteResult, KeyValue, PutResult, RangeResult, TxnOp
from kvstore.security import ENV_CLIENT_KEY, ENV_SERVER_KEY

EXIT_OK = 0
EXIT_FAILED = 1  # key not found, CAS failed, other failure
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_REJECTED = 4
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    key not found (get, delete), compare-and-set failed, or a
       transaction's comparisons failed (its failure operations ran)
  2    usage error (bad arguments, bad --cluster address)
  3    cluster unavailable: no replica answered within --timeout
       (the outcome of a write is then unknown: it may still be applied)
  4    rejected, nothing changed: key or value too large, a malformed
       request, or the client's session expired (sessions idle for over an
       hour are forgotten; run the command again); or every replica refused
       the CURVE handshake (client key not allowed, wrong server key)
  130  interrupted (Ctrl-C)
"""

MAIN_EPILOG = f"""\
The cluster is given by --cluster, else the environment variable
{ENV_CLUSTER}, else 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 (the
development cluster of `kvstore-cluster start`). Any replica will do: the
client finds the leader by itself.

Keys and values are byte strings (command-line arguments are taken as the
bytes the shell passed). A VALUE of '-' is read from standard input verbatim
(note that `echo` adds a newline; use `printf` or `echo -n`).

examples:
  kvctl put greeting hello
  kvctl get greeting
  kvctl cas greeting bonjour --expect hello
  kvctl get app/ --prefix --limit 10
  kvctl del tmp/ --prefix
  printf 'val("a") = "1"\\n\\nput a 2\\n' | kvctl txn
  kvctl --cluster 10.0.0.1:7001,10.0.0.2:7001 status
  kvctl -w json get app/ --prefix       (one JSON object per result, with a header)
  kvctl lock backups -- ./backup.sh

{EXIT_CODES_HELP}"""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"kvctl: error: {message} (see '{self.prog} --help')\n")


def _wrap(text: str) -> str:
    """Fills a description (the formatter keeps text as written, for epilogs)."""
    return textwrap.fill(text, width=78)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= MAX_CLIENT_TIMEOUT_S:
        raise argparse.ArgumentTypeError(
            f"timeout must be > 0 and at most {MAX_CLIENT_TIMEOUT_S:g} seconds, got {text}"
        )
    return value


def _version_number(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"a version is an integer >= 0, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The kvctl argument parser (subcommands with their own --help)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="kvctl",
        description=_wrap("Read and write the replicated key-value store."),
        epilog=MAIN_EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument(
        "--cluster",
        metavar="ADDRS",
        help=f"client addresses host:port,host:port,... (default: ${ENV_CLUSTER} "
        "or 127.0.0.1:7001,7002,7003)",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_seconds,
        default=5.0,
        help=f"give up after this long (default: 5, at most {MAX_CLIENT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--client-key",
        metavar="FILE",
        help=f"CURVE: this client's secret key file (default: ${ENV_CLIENT_KEY}; "
        "without one, a throwaway key pair)",
    )
    parser.add_argument(
        "--server-key",
        metavar="FILE",
        help=f"CURVE: the cluster's public key file, server.key (default: ${ENV_SERVER_KEY}; "
        "without one: plaintext)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also print versions after writes"
    )
    parser.add_argument(
        "-w",
        "--write-out",
        choices=FORMATS,
        default="simple",
        help="output format: simple (default: the lines below), json (one object per "
        "result, with a header: revision, leader_id, replica_id) or table",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_put(sub, fmt)
    _add_get(sub, fmt)
    _add_delete(sub, fmt)
    _add_cas(sub, fmt)
    _add_txn(sub, fmt)
    _add_status(sub, fmt)
    _add_snapshot(sub, fmt)
    _add_member(sub, fmt)
    _add_move_leader(sub, fmt)
    add_lease(sub, fmt, EXIT_CODES_HELP)
    add_watch(sub, fmt, EXIT_CODES_HELP)
    add_lock(sub, fmt, EXIT_CODES_HELP)
    return parser


def _add_put(sub: Any, fmt: type) -> None:
    p = sub.add_parser(
        "put",
        help="set a key to a value",
        description=_wrap(
            "Set KEY to VALUE (creating or replacing it). Prints OK; with "
            "-v, the key's new version."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE", help="the value, or '-' to read it from stdin")
    p.add_argument(
        "--lease",
        type=lease_id,
        default=0,
        metavar="ID",
        help="attach the key to this lease (hex id, from 'kvctl lease grant')",
    )
    p.set_defaults(run=_run_put)


def _add_get(sub: Any, fmt: type) -> None:
    p = sub.add_parser(
        "get",
        help="print a key's value",
        description=_wrap(
            "Print the value of KEY followed by a newline (--raw: the exact "
            "bytes, no newline). A missing key prints nothing and exits with 1. Reads "
            "are linearizable unless --stale."
        ),
        epilog=RANGE_HELP + "\n" + EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    p.add_argument("key", metavar="KEY")
    p.add_argument(
        "--stale",
        action="store_true",
        help="read from whichever replica answers, without confirming with a "
        "majority: faster, but possibly out of date",
    )
    p.add_argument(
        "--version",
        action="store_true",
        help="print 'VERSION<TAB>VALUE' (the version is the key's last modification revision)",
    )
    p.add_argument("--raw", action="store_true", help="write the value's bytes only, no newline")
    _add_range_arguments(p, reads=True)
    p.set_defaults(run=_run_get)


RANGE_HELP = """ranges (any of RANGE_END, --prefix, --from-key, --limit, --keys-only,
--count-only makes a range read):
  the keys in [KEY, RANGE_END), or starting with KEY (--prefix), or from
  KEY on (--from-key), in key order; an empty KEY ('') with --prefix or
  --from-key means every key. Each key prints as two lines, KEY then VALUE
  (with --version: VERSION<TAB>VALUE); --keys-only prints the keys, one a
  line; --count-only prints how many. A range that holds nothing prints
  nothing and exits 0. The replicas answer a range in pages (at most 5,000
  keys or about 4 MiB each); kvctl asks for page after page until the range
  or --limit is done. Each page is linearizable unless --stale, but a range
  over several pages is not one snapshot.
"""


def _add_range_arguments(p: argparse.ArgumentParser, reads: bool) -> None:
    p.add_argument(
        "range_end",
        metavar="RANGE_END",
        nargs="?",
        help="the end of the range [KEY, RANGE_END) (not included)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--prefix", action="store_true", help="every key that starts with KEY")
    which.add_argument("--from-key", action="store_true", help="every key from KEY on")
    if not reads:
        return
    p.add_argument(
        "--limit", metavar="N", type=_version_number, default=0, help="at most N keys (0: all)"
    )
    only = p.add_mutually_exclusive_group()
    only.add_argument("--keys-only", action="store_true", help="print the keys, not the values")
    only.add_argument("--count-only", action="store_true", help="print how many keys there are")


def _add_delete(sub: Any, fmt: type) -> None:
    p = sub.add_parser(
        "delete",
        aliases=["del"],
        help="delete a key, or a range of keys",
        description=_wrap(
            "Delete KEY. Prints OK; a key that did not exist exits with 1. With "
            "RANGE_END, --prefix or --from-key: delete every key of the range "
            "atomically, as one command at one revision, and print how many were "
            "deleted (0 is not an error). One range delete deletes at most 10,000 keys: "
            "a larger range is refused (exit 4) and nothing is deleted."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    p.add_argument("key", metavar="KEY")
    _add_range_arguments(p, reads=False)
    p.set_defaults(run=_run_delete)


def _add_txn(sub: Any, fmt: type) -> None:
    p = sub.add_parser(
        "txn",
        help="run a transaction read from stdin",
        description=_wrap(
            "Read a transaction from standard input and run it atomically, as one "
            "command at one revision: if every comparison holds, the success "
            "operations run, else the failure ones. Prints SUCCESS or FAILURE, then "
            "one result per operation (put: OK; del: how many keys it deleted; get: "
            "KEY and VALUE lines, as 'kvctl get'). Exits with 1 when the comparisons "
            "failed. A retried request prints no results (the replicas keep none)."
        ),
        epilog=TXN_HELP + "\n" + EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    p.set_defaults(run=_run_txn)


def _add_cas(sub: Any, fmt: type) -> None:
    p = sub.add_parser(
        "cas",
        help="compare-and-set a key",
        description=_wrap(
            "Atomically set KEY to NEW if its current value (or version) is "
            "the expected one. Prints OK; otherwise exits with 1 and tells the "
            "current version and value."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    p.add_argument("key", metavar="KEY")
    p.add_argument("new", metavar="NEW", help="the new value, or '-' to read it from stdin")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--expect", metavar="VALUE", help="the current value must be VALUE")
    how.add_argument(
        "--expect-version",
        metavar="N",
        type=_version_number,
        help="the current version must be N (as printed by get --version)",
    )
    how.add_argument("--expect-absent", action="store_true", help="the key must not exist")
    p.set_defaults(run=_run_cas)


def _add_status(sub: Any, fmt: type) -> None:
    p = sub.add_parser(
        "status",
        help="show every replica's state",
        description=_wrap(
            "Ask every replica for its state and print a table: id, "
            "address, role, the leader it follows, ballot, commit index, applied index "
            "and log size. Unreachable replicas are shown as such. Exits with 3 if "
            "no replica answered. With -w json (here or before the command): every "
            "replica's whole STATUS report, as one JSON array (a replica that did not "
            "answer: its address and error); -w simple is the table."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    p.add_argument(
        "-w",
        "--write-out",
        dest="status_write_out",
        choices=["table", "json"],
        help="output format (default: table; the global -w json works too)",
    )
    p.set_defaults(run=_run_status)


# -- running the commands ---------------------------------------------------


def _add_snapshot(sub: Any, fmt: type) -> None:
    p = sub.add_parser(
        "snapshot",
        help="save a backup of the cluster, or check a backup file",
        description=_wrap(
            "Backups. 'save FILE' streams a consistent snapshot of the whole store from "
            "the leader (every write acknowledged before it began is in it) into FILE, in "
            "chunks of at most 1 MiB, with a checksum; FILE appears only once complete. "
            "'status FILE' checks a backup file (format, checksum, counts) and prints its "
            "revision, applied index, record count, size and checksum; it needs no cluster. "
            "A backup becomes the data directories of a new cluster with "
            "'kvstore-admin snapshot restore' (docs/OPERATIONS.md)."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    what = p.add_subparsers(dest="snapshot_command", metavar="ACTION", required=True)
    save = what.add_parser("save", help="stream a snapshot of the cluster into FILE")
    save.add_argument("file", metavar="FILE", help="the backup file to write")
    save.set_defaults(run=_run_snapshot_save)
    status = what.add_parser("status", help="check a backup file and print its summary")
    status.add_argument("file", metavar="FILE", help="the backup file to read")
    status.set_defaults(run=_run_snapshot_status, offline=True)


def _add_member(sub: Any, fmt: type) -> None:
    p = sub.add_parser(
        "member",
        help="list or change the cluster's members",
        description=_wrap(
            "Membership, changed through the log one replica at a time. 'list' prints "
            "every member with its role. 'add ID --peer-url U --client-url U' adds a "
            "non-voting learner; then start that replica on an empty data directory with "
            "--initial-cluster-state existing: it installs a snapshot and catches up. "
            "'promote ID' makes a learner that has caught up a voter. 'remove ID' removes "
            "a member for good (ids are never reused; removing the leader makes it hand "
            "over). A change is refused (exit 4) when it cannot apply or would leave no "
            "live majority; asking again for a change already made answers OK. See "
            "docs/OPERATIONS.md for replacing a replica."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    what = p.add_subparsers(dest="member_command", metavar="ACTION", required=True)
    what.add_parser("list", help="print the members").set_defaults(run=_run_member)
    add = what.add_parser("add", help="add a learner")
    add.add_argument("id", type=_replica_id, metavar="ID")
    add.add_argument("--peer-url", required=True, metavar="U", help="tcp://host:port of its peers")
    add.add_argument("--client-url", required=True, metavar="U", help="tcp://host:port for clients")
    add.set_defaults(run=_run_member)
    for action, text in (("promote", "make a learner a voter"), ("remove", "remove a member")):
        q = what.add_parser(action, help=text)
        q.add_argument("id", type=_replica_id, metavar="ID")
        q.set_defaults(run=_run_member)


def _add_move_leader(sub: Any, fmt: type) -> None:
    p = sub.add_parser(
        "move-leader",
        help="hand leadership to another voter (before maintenance)",
        description=_wrap(
            "Hand leadership to voter ID: the leader stops starting new slots, waits "
            "until ID has every slot it started, then lets ID start an election at once. "
            "Writes meanwhile wait and are retried by their clients, none fails. Waits "
            "(up to --timeout) until ID leads; exit 3 if it did not take over in time "
            "(the old leader then goes on leading)."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    p.add_argument("id", type=_replica_id, metavar="ID")
    p.set_defaults(run=_run_move_leader)


def _run_move_leader(client: KVClient, args: argparse.Namespace) -> int:
    leader = client.move_leader(args.id)
    if args.out.simple:
        print(f"replica {leader} leads")
    else:
        args.out.emit({"leader": leader})
    return EXIT_OK


def _replica_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a replica id: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("replica ids are >= 1")
    return value


def _run_member(client: KVClient, args: argparse.Namespace) -> int:
    action = args.member_command
    if action == "add":
        peer = normalize_address(args.peer_url)
        client_url = normalize_address(args.client_url)
        info = client.member_add(args.id, peer, client_url)
    elif action == "promote":
        info = client.member_promote(args.id)
    elif action == "remove":
        info = client.member_remove(args.id)
    else:
        info = client.member_list()
    if args.out.fmt == "json":
        args.out.emit(info)
    else:
        print(format_members(info))
    return EXIT_OK


def format_members(info: dict[str, Any]) -> str:
    """`kvctl member` output: one line per member, then the removed ids."""
    rows = []
    started = set(info.get("started", ()))
    for m in info.get("members", ()):
        rid = m.get("id")
        rows.append([str(rid), str(m.get("role", "?")), "yes" if rid in started else "no",
                     display_address(str(m.get("peer", ""))),
                     display_address(str(m.get("client", "")))])  # fmt: skip
    lines = [format_table(["ID", "ROLE", "STARTED", "PEER", "CLIENT"], rows)]
    lines.append(
        f"epoch {info.get('epoch', '?')}; removed: {sorted(info.get('removed', [])) or '-'}"
    )
    return "\n".join(lines)


def _run_snapshot_save(client: KVClient, args: argparse.Namespace) -> int:
    summary = backup.save(client, args.file)
    if args.out.simple:
        print(f"saved {args.file}")
        print("\n".join(summary.lines()[:5]))
    else:
        _emit_summary(args.out, args.file, summary)
    return EXIT_OK


def _run_snapshot_status(client: KVClient | None, args: argparse.Namespace) -> int:
    summary, _ = read_backup(args.file)
    if args.out.simple:
        print("\n".join(summary.lines()))
    else:
        _emit_summary(args.out, args.file, summary)
    return EXIT_OK


def _emit_summary(out: Output, file: str, summary: Any) -> None:
    """A backup's summary: FIELD and VALUE rows in a table."""
    fields = {"file": file, **dataclasses.asdict(summary)}
    out.emit(fields, revision=summary.revision, table=(("FIELD", "VALUE"), fields.items()))


def _arg_bytes(text: str, stdin_used: list[bool]) -> bytes:
    """An argument's bytes; '-' reads stdin (once)."""
    if text != "-":
        return os.fsencode(text)
    if stdin_used[0]:
        raise _UsageError("only one argument can be '-' (standard input)")
    stdin_used[0] = True
    return sys.stdin.buffer.read()


class _UsageError(Exception):
    pass


def _out(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _run_put(client: KVClient, args: argparse.Namespace) -> int:
    value = _arg_bytes(args.value, [False])
    key = os.fsencode(args.key)
    version = client.put(key, value, lease=args.lease)
    if args.out.simple:
        _out(f"OK version {version}\n".encode() if args.verbose else b"OK\n")
    else:
        args.out.emit({"key": key, "version": version}, revision=version)
    return EXIT_OK


def _is_range(args: argparse.Namespace) -> bool:
    reads = ("limit", "keys_only", "count_only")
    return bool(
        args.range_end is not None
        or args.prefix
        or args.from_key
        or any(getattr(args, name, None) for name in reads)
    )


def _run_get(client: KVClient, args: argparse.Namespace) -> int:
    if _is_range(args):
        return _run_range(client, args)
    if not args.out.simple:  # a range read of the one key: the store's revision too
        page = client.range(os.fsencode(args.key), stale=args.stale)
        _emit_kvs(args.out, page.kvs, page.revision)
        if not page.kvs:
            print(f"kvctl: key not found: {args.key}", file=sys.stderr)
        return EXIT_OK if page.kvs else EXIT_FAILED
    found = client.get_versioned(os.fsencode(args.key), stale=args.stale)
    if found is None:
        print(f"kvctl: key not found: {args.key}", file=sys.stderr)
        return EXIT_FAILED
    value, version = found
    prefix = f"{version}\t".encode() if args.version else b""
    _out(prefix + value + (b"" if args.raw else b"\n"))
    return EXIT_OK


def _range_of(args: argparse.Namespace) -> tuple[bytes, bytes | None, dict[str, bool]]:
    key = os.fsencode(args.key)
    if args.range_end is not None and (args.prefix or args.from_key):
        raise _UsageError("give RANGE_END, --prefix or --from-key, not two of them")
    if not key and not (args.prefix or args.from_key):
        raise _UsageError("an empty KEY needs --prefix or --from-key (every key)")
    end = None if args.range_end is None else os.fsencode(args.range_end)
    return key, end, {"prefix": args.prefix, "from_key": args.from_key}


def _run_range(client: KVClient, args: argparse.Namespace) -> int:
    if args.raw:
        raise _UsageError("--raw is for one key, not a range")
    key, end, how = _range_of(args)
    if args.count_only:
        count = client.count(key, end, stale=args.stale, **how)
        if args.out.simple:
            _out(b"%d\n" % count)
        else:
            args.out.emit({"count": count})
        return EXIT_OK
    kvs = client.iter_range(
        key, end, limit=args.limit, keys_only=args.keys_only, stale=args.stale, **how
    )
    if not args.out.simple:
        _emit_kvs(args.out, list(kvs), None)
        return EXIT_OK
    for kv in kvs:
        _out_kv(kv.key, kv.value, kv.version, args.version)
    return EXIT_OK


def _emit_kvs(out: Output, kvs: Sequence[KeyValue], revision: int | None) -> None:
    """A read's keys: json {"kvs": [...], "count"}, or a KEY/VALUE/... table."""
    fields = {"kvs": [kv_fields(kv) for kv in kvs], "count": len(kvs)}
    out.emit(fields, revision=revision, table=(KV_TITLES, [kv_row(kv) for kv in kvs]))


def _out_kv(key: bytes, value: bytes | None, version: int, with_version: bool) -> None:
    if value is None:  # keys only
        _out(key + b"\n")
        return
    prefix = f"{version}\t".encode() if with_version else b""
    _out(key + b"\n" + prefix + value + b"\n")


def _run_delete(client: KVClient, args: argparse.Namespace) -> int:
    if _is_range(args):
        key, end, how = _range_of(args)
        deleted = client.delete_range(key, end, **how)
        if args.out.simple:
            _out(b"OK\n" if deleted is None else b"%d\n" % deleted)
        else:  # None: a retry's answer, which does not say how many
            args.out.emit({"key": key, "range_end": end, **how, "deleted": deleted})
        return EXIT_OK
    key = os.fsencode(args.key)
    existed = client.delete(key)
    if not args.out.simple:
        args.out.emit({"key": key, "deleted": int(existed)})
    if not existed:
        print(f"kvctl: key not found: {args.key}", file=sys.stderr)
        return EXIT_FAILED
    if args.out.simple:
        _out(b"OK\n")
    return EXIT_OK


def _run_cas(client: KVClient, args: argparse.Namespace) -> int:
    stdin_used = [False]
    new = _arg_bytes(args.new, stdin_used)
    expected_value = None if args.expect is None else _arg_bytes(args.expect, stdin_used)
    expected_version = 0 if args.expect_absent else args.expect_version
    result = client.cas(
        os.fsencode(args.key),
        new,
        expected_value=expected_value,
        expected_version=expected_version,
    )
    if not args.out.simple:
        fields = {"key": os.fsencode(args.key), **result._asdict()}
        args.out.emit(fields, revision=result.version if result.succeeded else None)
    if result.succeeded:
        if args.out.simple:
            _out(f"OK version {result.version}\n".encode() if args.verbose else b"OK\n")
        return EXIT_OK
    if result.version == 0:
        current = "the key does not exist"
    elif result.value is None:  # a retry's answer, from a record that keeps no value
        current = f"current version {result.version}"
    else:
        current = f"current version {result.version}, value {_preview(result.value)}"
    print(f"kvctl: cas failed: {current}", file=sys.stderr)
    return EXIT_FAILED


def _run_txn(client: KVClient, args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        print(
            "kvctl: reading a transaction (JSON, or etcdctl's format: comparisons, "
            "an empty line, success operations, an empty line, failure operations; "
            "end with Ctrl-D)",
            file=sys.stderr,
        )
    text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    try:
        txn = parse_txn(text)
    except TxnSyntaxError as exc:
        raise _UsageError(f"bad transaction: {exc}") from None
    result = client.txn(txn.compares, txn.success, txn.failure)
    ran = txn.success if result.succeeded else txn.failure
    if not args.out.simple:
        _emit_txn(args.out, result, ran)
        return EXIT_OK if result.succeeded else EXIT_FAILED
    _out(b"SUCCESS\n" if result.succeeded else b"FAILURE\n")
    for txn_op, response in zip(ran, result.responses or (), strict=False):
        _out_txn_response(txn_op, response, args.verbose)
    if args.verbose:
        _out(f"revision {result.revision}\n".encode())
    return EXIT_OK if result.succeeded else EXIT_FAILED


def _emit_txn(out: Output, result: Any, ran: Sequence[TxnOp]) -> None:
    """A transaction: json {"succeeded", "revision", "responses": [{"put":
    {...}} | {"delete": {...}} | {"range": {...}}]} (responses null in a
    retry's answer); a table of OP, KEY, RESULT rows."""
    responses: list[dict[str, Any]] = []
    rows: list[list[Any]] = [["txn", "", "SUCCESS" if result.succeeded else "FAILURE"]]
    for txn_op, response in zip(ran, result.responses or (), strict=False):
        if isinstance(response, PutResult):
            responses.append({"put": {"key": txn_op.key, "version": response.version}})
            rows.append(["put", txn_op.key, f"OK version {response.version}"])
        elif isinstance(response, DeleteResult):
            responses.append({"delete": {"key": txn_op.key, "deleted": response.deleted}})
            rows.append(["del", txn_op.key, f"{response.deleted} deleted"])
        else:
            kvs = [kv_fields(kv) for kv in response.kvs]
            found = {"kvs": kvs, "count": response.count, "more": response.more}
            responses.append({"range": found})
            rows += [["get", kv.key, kv.value] for kv in response.kvs]
            if txn_op.count_only:
                rows.append(["get", txn_op.key, f"count {response.count}"])
    fields = {
        "succeeded": result.succeeded,
        "revision": result.revision,
        "responses": None if result.responses is None else responses,
    }
    out.emit(fields, revision=result.revision, table=(("OP", "KEY", "RESULT"), rows))


def _out_txn_response(txn_op: TxnOp, response: Any, verbose: bool) -> None:
    """One operation's result, as the command of its kind prints it."""
    if isinstance(response, PutResult):
        _out(f"OK version {response.version}\n".encode() if verbose else b"OK\n")
    elif isinstance(response, DeleteResult):
        _out(b"%d\n" % response.deleted)
    elif txn_op.count_only:
        _out(b"%d\n" % response.count)
    else:
        for kv in response.kvs:
            _out_kv(kv.key, kv.value, kv.version, verbose)
    if isinstance(response, RangeResult) and response.more:
        print(
            f"kvctl: more keys from {_preview(response.next_key or b'')} (the reads of a "
            "transaction return at most 5,000 keys or about 4 MiB: read the rest with "
            "kvctl get)",
            file=sys.stderr,
        )


def _preview(value: bytes, limit: int = 60) -> str:
    text = value.decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _run_status(client: KVClient, args: argparse.Namespace) -> int:
    rows = client.status()
    if (args.status_write_out or args.write_out) == "json":
        print(json.dumps(rows, indent=2, sort_keys=True, default=repr))
    else:
        print(format_status_table(rows))
    if all("error" in row for row in rows):
        print("kvctl: error: no replica answered", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


_COLUMNS = (
    ("ID", "id"),
    ("ADDRESS", "address"),
    ("ROLE", "role"),
    ("LEADER", "leader"),
    ("BALLOT", "ballot"),
    ("COMMIT", "commit_index"),
    ("APPLIED", "applied_index"),
    ("COMPACTED", "compacted"),
    ("LOG", "log_size"),
    ("INSTALL", "install"),
)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "ballot" and isinstance(value, (list, tuple)):
        return ".".join(str(part) for part in value)
    if key == "install" and isinstance(value, dict):
        # A snapshot install in progress: from whom, up to which index, how far.
        mib = value.get("bytes", 0) / (1 << 20)
        where = f"from {value.get('from')} @{value.get('index')}"
        return f"{where}: {mib:.1f} MiB, {value.get('keys')} keys"
    return str(value)


def format_status_table(rows: Sequence[dict[str, Any]]) -> str:
    """The `kvctl status` table: one line per replica, aligned columns; a
    replica that did not answer shows its error in the ROLE column."""
    table = []
    for row in rows:
        if "error" in row:
            cells = ["?", display_address(str(row.get("address", "?"))), row["error"]]
            table.append(cells + ["-"] * (len(_COLUMNS) - 3))
        else:
            table.append([_cell(key, row.get(key)) for _, key in _COLUMNS])
    return format_table([title for title, _ in _COLUMNS], table)


def _execute(args: argparse.Namespace) -> int:
    run: Callable[[KVClient, argparse.Namespace], int] = args.run
    if getattr(args, "offline", False):  # needs no cluster
        args.out = Output(args.write_out, None)
        return run(None, args)  # type: ignore[arg-type]
    attempt = min(1.0, args.timeout)
    with KVClient(
        args.cluster,
        timeout=args.timeout,
        attempt_timeout=attempt,
        client_key=args.client_key,
        server_key=args.server_key,
    ) as client:
        args.out = Output(args.write_out, client)
        return run(client, args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `kvctl`; returns the exit code (see EXIT_CODES_HELP)."""
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and not take_command(args, extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return _execute(args)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        print("kvctl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `kvctl get k | head -c1`: not an error
        silence_stdout()
        return EXIT_OK
    except (ConfigError, _UsageError, TxnSyntaxError) as exc:
        return _fail(EXIT_USAGE, str(exc))
    except ClusterUnavailable as exc:
        return _fail(EXIT_UNAVAILABLE, str(exc))
    except (RequestTooLarge, BadRequest, SessionExpired) as exc:
        return _fail(EXIT_REJECTED, f"rejected: {exc}")
    except AuthenticationFailed as exc:
        return _fail(EXIT_REJECTED, f"refused: {exc}")
    except (KVError, BackupError) as exc:
        return _fail(EXIT_FAILED, str(exc))
    except OSError as exc:
        return _fail(EXIT_FAILED, f"{exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 -- the promise: never a traceback
        return _fail(EXIT_FAILED, f"unexpected {type(exc).__name__}: {exc}")


def _fail(code: int, message: str) -> int:
    print(f"kvctl: error: {message}", file=sys.stderr)
    return code


def silence_stdout() -> None:
    """Points stdout at /dev/null after a broken pipe, so that Python does
    not report it again when flushing at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
