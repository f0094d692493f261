"""Profiling the leader during a run with py-spy (`--profile`).

py-spy (PyPI, in the bench extra) samples the leader replica's Python
stacks from outside, without slowing it much (`--nonblocking`). The samples
include idle ones (`--idle`): the replica is one thread, so the shares are
of wall-clock time, and the time spent waiting in poll() or in an fsync shows
up as such. The raw collapsed stacks are kept beside the results; the
summary (top frames by self time, top functions by inclusive time) goes
into the JSON and the stdout report.

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


def summarize(raw: str, top: int = 25) -> dict[str, Any]:
    """Top frames by self samples and top functions by inclusive samples,
    as percentages of all samples, from py-spy's raw (collapsed) output:
    one line per distinct stack, `frame;frame;...;leaf COUNT`."""
    self_c: Counter = Counter()
    incl_c: Counter = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [
            f for f in stack.split(";") if "(" in f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        self_c[_frame_name(frames[-1])[0]] += n
        for func in {_frame_name(f)[1] for f in frames}:
            incl_c[func] += n

    def pct(c: Counter) -> list[list[Any]]:
        return (
            [[name, round(100.0 * n / total, 1)] for name, n in c.most_common(top)] if total else []
        )

    return {"samples": total, "self_top": pct(self_c), "inclusive_top": pct(incl_c)}


def render(summary: dict[str, Any], lines: int = 12) -> str:
    if "error" in summary:
        return f"profile: {summary['error']}"
    out = [f"profile of the leader ({summary['samples']} samples, idle included):",
           "  self time                                          |  inclusive time"]  # fmt: skip
    left = summary["self_top"][:lines]
    # the root chain (<module>, main, run ...) is ~100 % and says nothing
    right = [e for e in summary["inclusive_top"] if e[1] < 95.0][:lines]
    for i in range(max(len(left), len(right))):
        a = f"{left[i][1]:5.1f}% {left[i][0][:44]}" if i < len(left) else ""
        b = f"{right[i][1]:5.1f}% {right[i][0][:44]}" if i < len(right) else ""
        out.append(f"  {a:<51}|  {b}")
    return "\n".join(out)
