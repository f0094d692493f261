"""Process handling shared by the two clusters the harness starts (ours in
benchmarks/cluster.py, etcd in benchmarks/etcd.py): where their data goes,
starting a member with its output in a log file, signalling one, stopping
them all, and the tail of a log for error messages."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path


def temp_root(prefix: str) -> tempfile.TemporaryDirectory:
    """A fresh directory for a cluster's data: under BENCH_DATA_DIR, else the
    system temp dir (on this machine an ext4 disk, so fsync is real; a tmpfs
    would make durable writes free and the figures meaningless)."""
    return tempfile.TemporaryDirectory(prefix=prefix, dir=os.environ.get("BENCH_DATA_DIR") or None)


def spawn_logged(args: Sequence[str], log_path: Path, **popen: object) -> subprocess.Popen:
    """Starts args in a session of its own, stdout and stderr appended to log_path."""
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(  # type: ignore[call-overload]
            list(args),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **popen,
        )
    finally:
        log.close()


def alive(proc: subprocess.Popen | None) -> bool:
    return proc is not None and proc.poll() is None


def signal_and_reap(proc: subprocess.Popen | None, sig: int = signal.SIGKILL) -> None:
    """Sends sig to a running process and waits for it to end."""
    if alive(proc):
        assert proc is not None
        os.kill(proc.pid, sig)
        proc.wait()


def stop_all(procs: Iterable[subprocess.Popen | None], sig: int = signal.SIGTERM) -> None:
    """Sends sig to every running process, then reaps each (SIGKILL after 10 s)."""
    procs = [p for p in procs if p is not None]
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def tail(path: Path, n: int = 20) -> str:
    """The last n lines of a log file ("" if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
