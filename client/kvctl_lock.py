"""`kvctl lock NAME [--ttl N] [--wait S] [-- COMMAND ...]` (client/kvctl.py
adds it to its parser), on `client.lock.Lock`:

- with a COMMAND: acquire the lock, run the command with KVCTL_LOCK_KEY
  and KVCTL_LOCK_TOKEN (the fencing token) in its environment, release
  the lock when it ends, and exit with its status (128 + N when killed by
  signal N). Ctrl-C reaches the command from the terminal; a SIGTERM or
  SIGHUP sent to kvctl is passed on to it. Should the lock's lease be
  lost while it runs (no replica kept it alive for a TTL), the command is
  terminated and kvctl exits 1: another holder may have the lock.
- without one: acquire, print the lock's key and token (two lines), hold
  it until SIGINT or SIGTERM, release and exit 0.

While it waits, SIGINT and SIGTERM give up the wait (the key and lease
are removed; exit 130).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from client.client import KVClient
from client.kvctl_lease import lease_ttl
from client.kvctl_output import Output
from client.lock import DEFAULT_TTL, Lock
from kvstore.config import ConfigError

EXIT_OK, EXIT_FAILED = 0, 1
POLL_S = 0.2
"""How often a held lock's lease is checked while a command runs or kvctl holds."""

LOCK_HELP = f"""\
examples:
  kvctl lock backups -- ./backup.sh --full     run it holding the lock 'backups'
  kvctl lock backups --wait 60 -- make deploy  give up after waiting 60 s
  kvctl lock backups                           hold it until Ctrl-C (prints
                                               the key, then the fencing token)
The command sees KVCTL_LOCK_KEY and KVCTL_LOCK_TOKEN; the token is the
revision that created the lock's key, higher for every new holder: pass
it to what you write to, so it can refuse a holder that lost the lock.
A holder that dies keeps the lock until its lease expires (--ttl, default
{DEFAULT_TTL} s). Exit status: the command's; without one, 0 once released.
"""


def _wait(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("--wait must be > 0 seconds")
    return value


def add_lock(sub: Any, fmt: type, epilog: str) -> None:
    p = sub.add_parser(
        "lock",
        help="hold a distributed lock (while a command runs)",
        description=textwrap.fill(
            "Acquire the lock NAME (waiting for the holders before in line), then run "
            "COMMAND holding it and exit with its status, or hold it until interrupted. "
            "Exit 1 when not acquired within --wait, or when the lock's lease was lost.",
            width=78,
        ),
        epilog=LOCK_HELP + "\n" + epilog,
        formatter_class=fmt,
    )
    p.add_argument("name", metavar="NAME", help="the lock's name")
    p.add_argument(
        "--ttl",
        type=lease_ttl,
        default=DEFAULT_TTL,
        metavar="SECONDS",
        help=f"TTL of the lock's lease: how long a dead holder keeps it (default {DEFAULT_TTL})",
    )
    p.add_argument(
        "--wait",
        type=_wait,
        metavar="SECONDS",
        help="give up (exit 1) when not acquired within SECONDS (default: as long as it takes)",
    )
    p.add_argument(
        "lock_command",
        nargs="*",
        metavar="-- COMMAND",
        help="the command to run holding the lock, after '--' when it has options",
    )
    p.set_defaults(run=run_lock)


def take_command(args: argparse.Namespace, extra: list[str]) -> bool:
    """`kvctl lock NAME --ttl 5 -- COMMAND ...`: argparse leaves what follows
    the '--' unparsed when an option came between NAME and it. Takes it
    as the command; False when `extra` is something else (an error)."""
    if getattr(args, "run", None) is not run_lock or args.lock_command or extra[:1] != ["--"]:
        return False
    args.lock_command = extra[1:]
    return True


def run_lock(client: KVClient, args: argparse.Namespace) -> int:
    command = list(args.lock_command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not args.name:
        raise ConfigError("a lock needs a NAME")
    lock = client.lock(args.name, ttl=args.ttl, timeout=args.wait)
    with _signals_interrupt():
        lock.acquire()
        try:
            if command:
                return _run_command(lock, command)
            return _hold(lock, args.out)
        finally:
            lock.release()


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM (and SIGHUP) interrupt like Ctrl-C while this runs."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    with _handlers(interrupt, signal.SIGTERM, signal.SIGHUP):
        yield


@contextmanager
def _handlers(handler: Any, *signums: signal.Signals) -> Iterator[None]:
    """Installs `handler` for `signums` (main thread only), restores after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, old in before.items():
            signal.signal(s, old)


def _show(out: Output, lock: Lock) -> None:
    """The held lock: its key and token lines (json: name, key, token, lease)."""
    if out.simple:
        sys.stdout.buffer.write(b"%s\n%d\n" % (lock.key, lock.token))
        sys.stdout.flush()
        return
    lease = f"{lock.lease_id:x}"
    out.emit(
        {"name": lock.name, "key": lock.key, "token": lock.token, "lease": lease},
        table=(("KEY", "TOKEN", "LEASE"), [[lock.key, lock.token, lease]]),
    )


def _lost(lock: Lock) -> int:
    name = lock.name.decode("utf-8", "backslashreplace")
    print(
        f"kvctl: error: lost the lock {name}: its lease expired (no replica kept it "
        "alive); another holder may have it",
        file=sys.stderr,
    )
    return EXIT_FAILED


def _run_command(lock: Lock, command: list[str]) -> int:
    env = dict(os.environ)
    env["KVCTL_LOCK_KEY"] = os.fsdecode(lock.key or b"")
    env["KVCTL_LOCK_TOKEN"] = str(lock.token)
    sys.stdout.flush()
    try:
        proc = subprocess.Popen(command, env=env)
    except OSError as exc:
        print(f"kvctl: error: cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED

    def forward(signum: int, frame: Any) -> None:
        proc.send_signal(signum)

    with _handlers(forward, signal.SIGTERM, signal.SIGHUP), _handlers(_ignore, signal.SIGINT):
        while True:
            try:
                code = proc.wait(POLL_S)
                return code if code >= 0 else 128 - code
            except subprocess.TimeoutExpired:
                pass
            if not lock.held:
                proc.terminate()
                proc.wait()
                return _lost(lock)


def _ignore(signum: int, frame: Any) -> None:
    """Ctrl-C while the command runs: the terminal sent it the command too."""


def _hold(lock: Lock, out: Output) -> int:
    """Shows the lock, then holds it until SIGINT or SIGTERM (a
    KeyboardInterrupt here, from the moment it is shown) or the lease is lost."""
    try:
        _show(out, lock)
        while True:
            time.sleep(POLL_S)
            if not lock.held:
                return _lost(lock)
    except KeyboardInterrupt:
        return EXIT_OK
