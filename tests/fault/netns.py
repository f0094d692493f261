"""A network of its own for a fault run: one namespace per replica, veth
pairs to a bridge, and iptables DROP inside the namespaces.

Theory of operation
-------------------
`NetnsNetwork(ids)` builds, with iproute2:

    namespace <tag>-sw        bridge br0; one veth end per replica, and one
                              for the test process (the clients)
    namespace <tag>-r<i>      replica i: lo, and eth0 = 10.201.<n>.<10+i>/24,
                              the other end of its veth pair on br0
    root namespace            <dev> = 10.201.<n>.1/24, its peer on br0, so
                              the clients in this process reach every replica

`<tag>` is `kvf<launcher pid>-<k>`; `<n>` is a /24 held for the network's
lifetime by an flock (`_SubnetLock`), so parallel runs (pytest -n) never
share addresses; `<dev>` is `kvfc<n>`. The bridge lives in a namespace of its
own because the root namespace may bridge through iptables' FORWARD chain
(br_netfilter), whose policy Docker sets to DROP.

A replica runs as `ip netns exec <tag>-r<i> python -m replica.server ...`:
`ip netns exec` execs the command, so the pid the launcher holds is the
replica's own and kill -9 / SIGSTOP reach it directly.

A cut "i -> j" is one rule in replica i's namespace:

    iptables -A OUTPUT -p tcp -d <j's address> --dport <j's peer port> -j DROP

It drops what i's PUSH sends to j's peer PULL: every Paxos message from
i to j, and nothing else; j -> i travels on j's own connection, so the cut is
one-way and a partition cuts both directions between the sides (the same
semantics as the loopback `nemesis.Firewall`). Clients, in the root
namespace, are never cut. `heal` flushes OUTPUT in every namespace with a
cut. `close` kills what still runs in the namespaces and deletes them (the
veth pairs and the rules go with them); `remove_stale` does the same for
networks whose launcher died.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Protocol

PREFIX = "kvf"
SUBNET = "10.201"
"""Networks are 10.201.<n>.0/24, n in 1..254."""
_counter = itertools.count(1)
_TAG = re.compile(rf"^{PREFIX}(\d+)-\d+-(sw|r\d+)$")


class _HasPeerPort(Protocol):
    def peer_port(self, rid: int) -> int: ...


class NetnsError(RuntimeError):
    """ip or iptables refused a command."""


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    if check and r.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {r.stderr.strip() or r.returncode}")
    return r


def _iptables() -> str | None:
    return next((b for b in ("iptables", "iptables-legacy") if shutil.which(b)), None)


def netns_problem() -> str | None:
    """Why namespace networks cannot be made here (one line), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "iproute2 is not installed (apt-get install -y iproute2)"
    if not _iptables():
        return "iptables is not installed (apt-get install -y iptables)"
    try:
        NetnsNetwork([1]).close()
    except (NetnsError, OSError) as exc:
        return f"network namespaces are not usable: {exc}"
    return None


def _ns_pids(ns: str) -> list[int]:
    out = _run("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _delete_namespace(ns: str) -> None:
    """Kills every process inside `ns`, then deletes it."""
    for pid in _ns_pids(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _run("ip", "netns", "del", ns, check=False)


def remove_stale() -> list[str]:
    """Deletes the namespaces of networks whose launcher is gone."""
    removed = []
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _TAG.match(name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            _delete_namespace(name)
            removed.append(name)
    return removed


class _SubnetLock:
    """Holds 10.201.<n>.0/24 for this process: an flock on a file per n."""

    def __init__(self) -> None:
        d = Path(tempfile.gettempdir()) / "kvf-subnets"
        d.mkdir(exist_ok=True)
        in_use = _run("ip", "-o", "-4", "addr", "show", check=False).stdout
        for n in range(1, 255):
            if f" {SUBNET}.{n}." in in_use:
                continue
            f = open(d / f"{n}.lock", "w")  # noqa: SIM115 - held until release
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            self.n, self._file = n, f
            return
        raise NetnsError(f"no free {SUBNET}.<n>.0/24 subnet left")

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()


class NetnsNetwork:
    """The replicas' namespaces, their links and the cuts between them."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = sorted(ids)
        self.tag = f"{PREFIX}{os.getpid()}-{next(_counter)}"
        self.iptables = _iptables() or "iptables"
        self.cuts: set[tuple[int, int, int]] = set()  # (src, dst, dport)
        self._lock = threading.Lock()
        self._made: list[str] = []
        self._closed = False
        remove_stale()
        self._subnet = _SubnetLock()
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # -- names and addresses --

    @property
    def switch(self) -> str:
        return f"{self.tag}-sw"

    def namespace(self, rid: int) -> str:
        return f"{self.tag}-r{rid}"

    def address(self, rid: int) -> str:
        """Replica rid's IPv4 address."""
        return f"{SUBNET}.{self._subnet.n}.{10 + rid}"

    @property
    def client_address(self) -> str:
        """This process's address on the network."""
        return f"{SUBNET}.{self._subnet.n}.1"

    @property
    def client_dev(self) -> str:
        return f"kvfc{self._subnet.n}"

    def prefix(self, rid: int) -> list[str]:
        """What runs a command inside replica rid's namespace (it execs the
        command: same pid); `replica.launch` puts it before a replica's argv."""
        return ["ip", "netns", "exec", self.namespace(rid)]

    def command(self, rid: int, cmd: list[str]) -> list[str]:
        """`cmd` run inside replica rid's namespace."""
        return [*self.prefix(rid), *cmd]

    # -- building --

    def _add_namespace(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self._made.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def _build(self) -> None:
        sw = self.switch
        self._add_namespace(sw)
        _run("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", sw, "link", "set", "br0", "up")
        for rid in self.ids:
            ns = self.namespace(rid)
            self._add_namespace(ns)
            port = f"h{rid}"
            _run("ip", "-n", sw, "link", "add", port, "type", "veth",
                 "peer", "name", "eth0", "netns", ns)  # fmt: skip
            _run("ip", "-n", sw, "link", "set", port, "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.address(rid)}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
        dev = self.client_dev
        _run("ip", "link", "del", dev, check=False)  # a leftover of a crashed run
        _run("ip", "link", "add", dev, "type", "veth", "peer", "name", "c0", "netns", sw)
        _run("ip", "-n", sw, "link", "set", "c0", "master", "br0", "up")
        _run("ip", "addr", "add", f"{self.client_address}/24", "dev", dev)
        _run("ip", "link", "set", dev, "up")
        for rid in self.ids:  # prove that iptables works inside the namespaces
            self._iptables(rid, "-F", "OUTPUT")

    # -- cuts --

    def _iptables(self, rid: int, *args: str) -> None:
        _run("ip", "netns", "exec", self.namespace(rid), self.iptables, "-w", "5", *args)

    def cut_link(self, cluster: _HasPeerPort, src: int, dst: int) -> None:
        """Replica src's messages to replica dst are lost."""
        self.cut(src, dst, cluster.peer_port(dst))

    def cut(self, src: int, dst: int, dport: int) -> None:
        """Drops what replica src sends to replica dst's port `dport`."""
        with self._lock:
            if (src, dst, dport) in self.cuts:
                return
            self._iptables(src, "-A", "OUTPUT", "-p", "tcp", "-d", self.address(dst),
                           "--dport", str(dport), "-j", "DROP")  # fmt: skip
            self.cuts.add((src, dst, dport))

    def heal(self) -> None:
        """Removes every cut."""
        with self._lock:
            for src in sorted({c[0] for c in self.cuts}):
                self._iptables(src, "-F", "OUTPUT")
            self.cuts.clear()

    def rules(self, rid: int) -> str:
        """`iptables -S OUTPUT` inside replica rid's namespace."""
        return _run("ip", "netns", "exec", self.namespace(rid), self.iptables, "-w", "5",
                    "-S", "OUTPUT").stdout  # fmt: skip

    def close(self) -> None:
        """Kills what still runs inside, deletes every namespace (and with
        them the links and rules). Safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for ns in reversed(self._made):
                _delete_namespace(ns)
            _run("ip", "link", "del", self.client_dev, check=False)
            self._subnet.release()
            self.cuts.clear()

    def __enter__(self) -> NetnsNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
