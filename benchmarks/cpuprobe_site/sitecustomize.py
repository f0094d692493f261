"""The replica side of `python -m benchmarks.cpuprobe` (benchmarks/cpuprobe.py).

Python imports this module at start-up when its directory is on
PYTHONPATH. It does nothing unless KV_CPUPROBE_DIR is set and the process
is a replica (`replica.server`); then it wraps the loop's methods listed in
PROBES with `time.thread_time_ns` (CPU time of the calling thread, system
time of its calls included) once they are imported, and writes the totals
every PERIOD_S to KV_CPUPROBE_DIR/probe-<pid>.json: for each method its
nanoseconds and calls, and the methods it could not find ("missing": a
renamed method is reported, not silently left out). Nothing here changes
what a replica does; the wrappers cost ~1 us per call.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

# (module, class, method): the replica loop's steps (replica/server.py
# `run_once`: poll, receive; replica/driver.py `iterate` and its parts;
# the state machine's apply and write).
PROBES = [
    ("zmq", "Poller", "poll"),
    ("replica.transport", "PeerTransport", "recv"),
    ("replica.transport", "PeerTransport", "send"),
    ("replica.transport", "ClientTransport", "recv"),
    ("replica.transport", "ClientTransport", "reply"),
    ("replica.paxos", "PaxosCore", "step"),
    ("replica.driver", "ReplicaDriver", "iterate"),
    ("replica.driver", "ReplicaDriver", "_finish"),
    ("replica.driver", "ReplicaDriver", "_persist"),
    ("replica.driver", "ReplicaDriver", "_send"),
    ("replica.driver", "ReplicaDriver", "_apply"),
    ("replica.driver", "ReplicaDriver", "_answer"),
    ("replica.driver", "ReplicaDriver", "_run_ticks"),
    ("replica.driver", "ReplicaDriver", "_collect_garbage"),
    ("replica.driver", "ReplicaDriver", "_after_iteration"),
    ("kvstore.statemachine", "KVStateMachine", "apply"),
    ("kvstore.statemachine", "KVStateMachine", "apply_effects"),
    ("kvstore.statemachine", "KVStateMachine", "write_applied"),
    ("kvstore.events", "EventLog", "store"),
    ("kvstore.events", "EventLog", "_trim"),
]
PERIOD_S = 0.25
WAIT_S = 10.0  # how long to wait for the classes to be defined


def _wrap(cls: type, name: str, totals: list[int]) -> None:
    original = cls.__dict__[name]
    clock = time.thread_time_ns

    def probed(*args, **kwargs):  # type: ignore[no-untyped-def]
        began = clock()
        try:
            return original(*args, **kwargs)
        finally:
            totals[0] += clock() - began
            totals[1] += 1

    setattr(cls, name, probed)


def _install(out_dir: str) -> None:
    """Wraps each probe once its class exists (a module is in sys.modules
    from the start of its import, its classes only once they are defined),
    giving up on the rest after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    totals: dict[str, list[int]] = {}
    left = list(PROBES)
    while left and time.monotonic() < deadline:
        for probe in list(left):
            mod, cls_name, method = probe
            cls = getattr(sys.modules.get(mod), cls_name, None)
            if isinstance(cls, type) and callable(cls.__dict__.get(method)):
                totals[f"{cls_name}.{method}"] = [0, 0]
                _wrap(cls, method, totals[f"{cls_name}.{method}"])
                left.remove(probe)
        if left:
            time.sleep(0.02)
    missing = [f"{mod}.{cls_name}.{method}" for mod, cls_name, method in left]
    path = os.path.join(out_dir, f"probe-{os.getpid()}.json")
    while True:
        snapshot = {"pid": os.getpid(), "missing": missing, "totals": totals}
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(snapshot, f)
        os.replace(tmp, path)
        time.sleep(PERIOD_S)


def _is_replica() -> bool:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return b"replica.server" in f.read()
    except OSError:
        return False


if os.environ.get("KV_CPUPROBE_DIR") and _is_replica():
    threading.Thread(
        target=_install, args=(os.environ["KV_CPUPROBE_DIR"],), name="cpuprobe", daemon=True
    ).start()
