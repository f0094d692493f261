"""`kvctl watch KEY [RANGE_END] [--prefix | --from-key] [--rev N] [--prev-kv]`
(client/kvctl.py adds it to its parser): prints each change as etcdctl
does, the event type (PUT or DELETE), then the key, then for a PUT the
value, one a line, until interrupted (exit 130). With -v a line
`# revision R` comes first. With --prev-kv, as etcdctl's, the key and its
previous value come between the type and the key, for an overwrite or a
delete; when the replica no longer keeps it (or cannot tell), those two
lines are left out, as for a created key, and one line on stderr says so.

With -w json, one object per event: a header (the event's revision, the
leader and the replica that answered the poll), then type, key, value
(PUT), version, create_revision (and prev_revision, prev_value with
--prev-kv); with -w table, a title row, then one aligned row per event.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from client.client import KVClient
from client.kvctl_output import Output, cell
from client.watch import PREV_UNKNOWN, PUT, WatchEvent, poller_for, watch
from kvstore.config import ConfigError

WATCH_HELP = """\
examples:
  kvctl watch config/app                 changes to one key, from now on
  kvctl watch config/ --prefix           every key under config/
  kvctl watch config/ --prefix --rev 42  from revision 42 on (if still kept:
                                         else one error line naming the oldest)
  kvctl watch config/app --prev-kv       also the previous key and value:
                                         PUT, config/app, old, config/app, new
"""


def _revision(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a revision: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("revisions start at 1")
    return value


def add_watch(sub: Any, fmt: type, epilog: str) -> None:
    p = sub.add_parser(
        "watch",
        help="print the changes to a key or range as they happen",
        description="Print every change (PUT, DELETE) to KEY, or a range, in revision order, "
        "until interrupted; it follows leader changes and resumes where it was.",
        epilog=WATCH_HELP + "\n" + epilog,
        formatter_class=fmt,
    )
    p.add_argument("key", metavar="KEY")
    p.add_argument("range_end", metavar="RANGE_END", nargs="?", help="watch [KEY, RANGE_END)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--prefix", action="store_true", help="every key starting with KEY")
    how.add_argument("--from-key", action="store_true", help="every key from KEY on")
    p.add_argument("--rev", type=_revision, metavar="N", help="start from revision N")
    p.add_argument(
        "--prev-kv",
        action="store_true",
        help="also print the key and its previous value before each overwrite or delete "
        "(while the replicas still keep that revision's event)",
    )
    p.set_defaults(run=_run_watch)


def _run_watch(client: KVClient, args: argparse.Namespace) -> int:
    if args.range_end is not None and (args.prefix or args.from_key):
        raise ConfigError("give RANGE_END, --prefix or --from-key, not two")
    out = sys.stdout.buffer
    end = None if args.range_end is None else os.fsencode(args.range_end)
    poller = poller_for(client)
    events = watch(
        client,
        os.fsencode(args.key),
        end,
        prefix=args.prefix,
        from_key=args.from_key,
        start_revision=args.rev,
        prev_kv=args.prev_kv,
        poller=poller,
    )
    if not args.out.simple:
        if args.out.fmt == "table":
            prev = ["PREV_VALUE"] if args.prev_kv else []
            _write_row(["TYPE", "REVISION", "KEY", "VALUE", *prev])
        for event in events:
            _emit(args.out, event, args.prev_kv, poller)
        return 0
    for event in events:
        if args.verbose:
            out.write(b"# revision %d\n" % event.revision)
        out.write(b"PUT\n" if event.kind == PUT else b"DELETE\n")
        if args.prev_kv:
            _write_prev(out, event)
        if event.kind == PUT:
            out.write(event.key + b"\n" + (event.value or b"") + b"\n")
        else:
            out.write(event.key + b"\n")
        out.flush()
    return 0


def _write_prev(out: Any, event: WatchEvent) -> None:
    """The previous key and value (etcdctl's prev_kv lines), or nothing
    for a created key, or nothing and a note on stderr when it is missing."""
    if event.prev_value is not None:
        out.write(event.key + b"\n" + event.prev_value + b"\n")
        return
    if event.prev_revision == 0:
        return  # created: there was none
    from client.kvctl import _preview  # kvctl imports this module

    what = f"kvctl: the value of {_preview(event.key)} before revision {event.revision}"
    if event.prev_revision == PREV_UNKNOWN:
        why = "is not known (an event or a replica of the release before previous values)"
    else:
        why = f"(from revision {event.prev_revision}) is no longer kept (the watch retention)"
    out.flush()
    print(f"{what} {why}", file=sys.stderr)


_ROW = "{:<6}  {:>8}  {:<24}  {}"
"""A watch table's row: TYPE, REVISION, KEY, VALUE (then PREV_VALUE)."""


def _emit(out: Output, event: WatchEvent, prev_kv: bool, poller: KVClient) -> None:
    """One event as a JSON object, or a row of the watch table."""
    kind = "PUT" if event.kind == PUT else "DELETE"
    if out.fmt == "table":
        prev = [event.prev_value] if prev_kv else []
        _write_row([kind, event.revision, event.key, event.value, *prev])
        return
    fields = {"type": kind, "key": event.key}
    if event.kind == PUT:
        fields.update(value=event.value, version=event.version)
    fields["create_revision"] = event.create_revision
    if prev_kv:
        fields.update(prev_revision=event.prev_revision, prev_value=event.prev_value)
    out.emit(fields, revision=event.revision, client=poller)


def _write_row(cells: list[Any]) -> None:
    shown = [cell(c) for c in cells]
    line = _ROW.format(*shown[:4]) + "".join(f"  {c}" for c in shown[4:])
    sys.stdout.write(line.rstrip() + "\n")
    sys.stdout.flush()
