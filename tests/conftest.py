"""Suite-wide hooks.

A SIGTERM (a cancelled CI job, `timeout`, `kill`) stops a test run the way
Ctrl-C does: pytest unwinds, and the fixtures' teardown stops the replicas
they started (by pid, SIGKILL after a grace period, paused ones included)
and removes their namespaces and directories. Without this the process died
at once and left them behind (tests/integration/test_suite_sigterm.py).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import pytest


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
