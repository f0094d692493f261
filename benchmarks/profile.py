"""Profiling the leader during a run with py-spy (`--profile`).

py-spy (PyPI, in the bench extra) samples the leader replica's Python
stacks from outside, without slowing it much (`--nonblocking`). The samples
include idle ones (`--idle`), so the shares are of wall-clock time, and the
time spent waiting in poll() or in an fsync shows up as such. The replica
has Python threads beside its loop (the sync writer, the reclaimer), idle
nearly always: the summary counts the loop thread's samples only (those
under `run_once`), the top frames by self time, the top functions by
inclusive time, and `loop_split`, where the loop's wall-clock time went:
idle in poll, its own synced batch (`persist`), waiting for the writer
thread (to take the batch, and for its sync while applying beside it),
ZeroMQ sends, and the rest (its
Python work). The raw collapsed stacks are kept beside the results; the
summary goes into the JSON and the stdout report.

py-spy 0.4.3 cannot read the version of a pyenv-built Python (it fails with
"Failed to find python version from target process"); 0.4.2 and older work.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def pyspy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


class Profiler:
    """One `py-spy record` of a process for a number of seconds."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int = 250) -> None:
        self.pid = pid
        self.seconds = seconds
        self.out = out
        self.rate = rate
        self.proc: subprocess.Popen | None = None
        self.error: str | None = None

    def start(self) -> None:
        exe = pyspy_binary()
        if exe is None:
            self.error = "py-spy is not installed (pip install -e '.[bench]')"
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        args = [exe, "record", "-p", str(self.pid), "-d", str(max(1, round(self.seconds))),
                "-r", str(self.rate), "-f", "raw", "-o", str(self.out),
                "--nonblocking", "--idle"]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def wait(self, timeout: float = 60.0) -> dict[str, Any]:
        if self.proc is None:
            return {"error": self.error or "not started"}
        try:
            output, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            output, _ = self.proc.communicate()
        if self.proc.returncode != 0 or not self.out.exists():
            text = output.decode(errors="replace").strip().splitlines()
            return {"error": f"py-spy failed: {' / '.join(text[:3])}"}
        summary = summarize(self.out.read_text())
        summary["raw_file"] = str(self.out)
        return summary


def _frame_name(frame: str) -> tuple[str, str]:
    """(`func (file:line)`, `func (file)`) of one collapsed-stack frame."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame, frame
    func, file = m.group("func"), Path(m.group("file")).name
    line = m.group("line")
    return (f"{func} ({file}:{line})" if line else f"{func} ({file})"), f"{func} ({file})"


LOOP = "run_once (server.py)"
"""The frame under which every sample of the replica's loop thread lies."""

SPLIT = (
    "idle in poll",
    "own synced batch",
    "waiting for the writer",
    "ZeroMQ sends",
    "Python",
)
"""`loop_split`'s parts, in the order they are printed."""


def _part(funcs: list[str]) -> str:
    """Which part of SPLIT a loop sample (its functions, root first) is in."""
    leaf = funcs[-1]
    names = set(funcs)
    if leaf == "poll (poll.py)":
        return SPLIT[0]
    if "persist (storage.py)" in names and leaf in ("write (storage.py)", "sync (values.py)"):
        return SPLIT[1]
    if "wait (storage.py)" in names or "begin (storage.py)" in names:
        return SPLIT[2]  # the hand-over waits for the writer thread to wake up
    if "send (transport.py)" in names or "reply (transport.py)" in names:
        return SPLIT[3]
    return SPLIT[4]


def summarize(raw: str, top: int = 25) -> dict[str, Any]:
    """From py-spy's raw (collapsed) output, one line per distinct stack,
    `frame;frame;...;leaf COUNT`, the loop thread's samples only: top
    frames by self samples, top functions by inclusive samples, and
    `loop_split` (module docstring), as percentages of those samples."""
    self_c: Counter = Counter()
    incl_c: Counter = Counter()
    split: Counter = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [
            f for f in stack.split(";") if "(" in f and not f.startswith(("process ", "thread "))
        ]
        funcs = [_frame_name(f)[1] for f in frames]
        if LOOP not in funcs:
            continue  # another thread of the replica
        n = int(count)
        total += n
        self_c[_frame_name(frames[-1])[0]] += n
        for func in set(funcs):
            incl_c[func] += n
        split[_part(funcs)] += n

    def pct(c: Counter) -> list[list[Any]]:
        return (
            [[name, round(100.0 * n / total, 1)] for name, n in c.most_common(top)] if total else []
        )

    return {
        "samples": total,
        "self_top": pct(self_c),
        "inclusive_top": pct(incl_c),
        "loop_split": {p: round(100.0 * split[p] / total, 1) for p in SPLIT} if total else {},
    }


def render(summary: dict[str, Any], lines: int = 12) -> str:
    if "error" in summary:
        return f"profile: {summary['error']}"
    out = [f"profile of the leader's loop thread ({summary['samples']} samples, idle included):",
           "  self time                                          |  inclusive time"]  # fmt: skip
    left = summary["self_top"][:lines]
    # the root chain (<module>, main, run ...) is ~100 % and says nothing
    right = [e for e in summary["inclusive_top"] if e[1] < 95.0][:lines]
    for i in range(max(len(left), len(right))):
        a = f"{left[i][1]:5.1f}% {left[i][0][:44]}" if i < len(left) else ""
        b = f"{right[i][1]:5.1f}% {right[i][0][:44]}" if i < len(right) else ""
        out.append(f"  {a:<51}|  {b}")
    split = summary.get("loop_split")
    if split:
        parts = ", ".join(f"{split[p]:.0f}% {p}" for p in SPLIT)
        out.append(f"  the loop's wall-clock time: {parts}")
    return "\n".join(out)
