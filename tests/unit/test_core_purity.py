"""The Paxos core is sans-IO: importing it pulls in no socket, clock, thread
or storage library (STYLE.md, "For this project", rule 1)."""

import subprocess
import sys

FORBIDDEN = ["zmq", "plyvel", "socket", "time", "threading", "asyncio", "select", "selectors"]
CORE_MODULES = ["replica.paxos", "replica.messages"]


def test_core_imports_no_io_modules():
    # A fresh interpreter, so that nothing imported by other tests hides a leak.
    code = (
        "import sys\n"
        # `time` is loaded at interpreter start-up: forget it so a re-import shows.
        f"for m in {FORBIDDEN!r}: sys.modules.pop(m, None)\n"
        f"for m in {CORE_MODULES!r}: __import__(m)\n"
        f"bad = sorted(m for m in {FORBIDDEN!r} if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core imports I/O modules: {out.stdout.strip()}"


def test_codec_imports_no_io_modules():
    # The codec needs msgpack (which itself loads `time`), but no sockets,
    # threads or storage.
    code = (
        "import sys\n"
        "import replica.codec\n"
        "print(','.join(m for m in ['zmq', 'plyvel', 'socket', 'threading'] if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_core_source_names_no_io_modules():
    import replica.paxos as paxos

    with open(paxos.__file__, encoding="utf-8") as fh:
        source = fh.read()
    for name in FORBIDDEN:
        assert f"import {name}" not in source and f"from {name} " not in source


def test_driver_imports_neither_zmq_nor_plyvel():
    """The replica driver takes its storage, state machine, transports and
    clock as parameters (replica/driver.py), so the simulator can run it: it
    must pull in no socket or storage library, directly or through what it
    imports. (It logs role changes, and `logging` loads `threading` for its
    locks: that one is allowed; the driver starts no thread.)"""
    code = (
        "import sys\n"
        "import replica.driver, replica.inmem\n"
        "bad = ['zmq', 'plyvel', 'socket', 'select', 'selectors', 'asyncio']\n"
        "print(','.join(m for m in bad if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the driver imports I/O modules: {out.stdout.strip()}"
