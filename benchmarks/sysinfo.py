"""What machine and software a result was measured on."""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _fs_type(path: str) -> str | None:
    try:
        out = subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", path],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def fsync_latency_ms(directory: str | None = None, rounds: int = 200) -> dict[str, float]:
    """p50/p99 of write(200 B) + fdatasync on the benchmark data disk: the
    floor under every durable write of both systems."""
    samples = []
    with tempfile.NamedTemporaryFile(dir=directory, prefix="fsync-probe-") as f:
        fd = f.fileno()
        for _ in range(rounds):
            os.write(fd, b"x" * 200)
            t0 = time.perf_counter_ns()
            os.fdatasync(fd)
            samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    return {
        "p50": samples[len(samples) // 2] / 1e6,
        "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1e6,
        "mean": statistics.fmean(samples) / 1e6,
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_times(stat: str | None = None) -> dict[str, int] | None:
    """The machine's CPU time in ticks since boot, all cores (the first line
    of /proc/stat, or `stat` given), or None where it cannot be read."""
    try:
        text = Path("/proc/stat").read_text() if stat is None else stat
        fields = text.splitlines()[0].split()
        if fields[0] != "cpu":
            return None
        return {name: int(v) for name, v in zip(_CPU_FIELDS, fields[1:9], strict=True)}
    except (OSError, IndexError, ValueError):
        return None


def steal_percent(before: dict[str, int] | None, after: dict[str, int] | None) -> float | None:
    """Of the CPU time this machine's cores wanted between two `cpu_times`
    readings, the share the hypervisor gave to someone else (steal), in
    percent: how contended the host was. None if unknown or nothing ran."""
    if not before or not after:
        return None
    d = {k: after[k] - before[k] for k in _CPU_FIELDS}
    wanted = sum(d[k] for k in ("user", "nice", "system", "irq", "softirq", "steal"))
    if wanted <= 0:
        return None
    return round(100 * d["steal"] / wanted, 1)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(data_dir: str | None = None) -> dict[str, Any]:
    data_dir = data_dir or os.environ.get("BENCH_DATA_DIR") or tempfile.gettempdir()
    uname = platform.uname()
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "kernel": f"{uname.system} {uname.release}",
        "os": _os_release(),
        "python": platform.python_version(),
        "data_dir": data_dir,
        "data_fs": _fs_type(data_dir),
        "load_average_at_start": load_average(),
    }
    try:
        info["fsync_ms"] = fsync_latency_ms(data_dir)
    except OSError as exc:
        info["fsync_ms"] = {"error": str(exc)}
    return info


def _os_release() -> str | None:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return None


def versions() -> dict[str, Any]:
    from benchmarks.cluster import _git_version
    from benchmarks.etcd import etcd_version

    out: dict[str, Any] = {"paxoskv_git": _git_version(), "etcd": etcd_version()}
    for dist in ("pyzmq", "msgpack", "plyvel", "grpcio", "matplotlib"):
        out[dist] = _version(dist)
    try:
        import zmq

        out["libzmq"] = zmq.zmq_version()
    except ImportError:
        pass
    return out
