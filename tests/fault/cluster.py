"""The integration `Cluster`, made partitionable and checkable for fault runs.

`FaultCluster` is `tests.harness.Cluster` (one harness, one launcher:
replica/launch.py) with these additions, made through `launch_options`:

- `net`: a `tests.fault.netns.NetnsNetwork`. Each replica then runs inside
  its own network namespace (`ip netns exec`), listens on its own address
  (peer port PEER_PORT, client port CLIENT_PORT) and reaches the others over
  veth pairs and a bridge; the network makes the cuts.
- Without `net` (loopback), every replica process runs with a group id of
  its own (`gid(rid)`; the user stays root). Outgoing packets carry their socket owner's gid, which
  iptables' `owner` match sees on the OUTPUT hook, so `nemesis.Firewall`
  can drop "what replica i sends to replica j's peer port" without any help
  from the replica: the transport's PUSH sockets connect from ephemeral ports on
  127.0.0.1, indistinguishable by address. Clients (this process, gid 0)
  are never matched, so a partitioned replica stays reachable by clients.
- `module`: the Python module the replicas run, `replica.server` or a
  deliberately broken wrapper (`tests.fault.broken_replica`).
- `wait_settled` (and the harness's `state_checksums`): the end-of-run checks that every
  replica applied the same log and holds the same data.
- `replace`: a new replica id takes over the SLOT (addresses, namespace or
  gid, nothing else) of one that left the membership: the wipe nemesis
  replaces a replica whose disk it wiped. Faults and cuts name replica ids;
  `slot(rid)` maps them to the slot whose network they use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kvstore.config import ReplicaAddress, write_cluster_config
from replica.launch import REPLICA_MODULE
from tests.fault.netns import NetnsNetwork
from tests.harness import Cluster

PEER_PORT = 7001
CLIENT_PORT = 7101
"""The ports of every replica on a namespace network (each has its own address)."""

GID_BASE = 3_000_000
"""Replica group ids are GID_BASE + 16 * (launcher pid % 100_000) + replica id:
unique per launcher, far from any real group, below 2**31."""


class FaultCluster(Cluster):
    """A `Cluster` whose replicas can be told apart by iptables."""

    def __init__(
        self,
        root: Path,
        replicas: int = 3,
        *,
        tick_ms: int = 10,
        module: str = REPLICA_MODULE,
        own_gids: bool | None = None,
        net: NetnsNetwork | None = None,
        compaction: dict[str, int] | None = None,
        replica_args: Sequence[str] = (),
        storage: dict[str, int] | None = None,
    ) -> None:
        super().__init__(root, replicas, tick_ms=tick_ms, replica_args=replica_args)
        self.module = module
        self.net = net
        self.compaction = dict(compaction or {})
        self.storage = dict(storage or {})
        self._slot: dict[int, int] = {}  # replica id -> the slot it took over (replace)
        self._next_id = replicas + 1
        if net is not None:
            self.replicas = [_netns_address(net, rid) for rid in self.ids]
            write_cluster_config(self.config_path, self.replicas)
        self._write_config()
        # Changing the group id needs root; without it kill and pause work,
        # loopback partitions do not. A namespace network needs no gids.
        if net is not None:
            own_gids = False
        self.own_gids = os.geteuid() == 0 if own_gids is None else own_gids
        self._gid0 = GID_BASE + 16 * (os.getpid() % 100_000)
        self.starts: dict[int, int] = {rid: 0 for rid in self.ids}
        self.exits: list[tuple[int, int]] = []  # (rid, returncode) seen by reap()
        self._reaped: set[int] = set()

    def _write_config(self) -> None:
        write_cluster_config(self.config_path, self.replicas)
        if self.compaction:
            with open(self.config_path, "a", encoding="utf-8") as fh:
                fh.write("\n[compaction]\n")
                fh.writelines(f"{name} = {value}\n" for name, value in self.compaction.items())
        if self.storage:
            with open(self.config_path, "a", encoding="utf-8") as fh:
                fh.write("\n[storage]\n")
                fh.writelines(f"{name} = {value}\n" for name, value in self.storage.items())

    def slot(self, rid: int) -> int:
        """The slot (the first replica id of those addresses) replica rid runs in."""
        return self._slot.get(rid, rid)

    def replace(self, old: int) -> int:
        """A new replica id for `old`'s slot (its addresses, namespace, gid):
        the config file names it in old's place. Returns the new id; start
        it with cluster_state="existing" once the cluster added it."""
        new = self._next_id
        self._next_id += 1
        index = self.ids.index(old)
        r = self.replicas[index]
        self.replicas[index] = ReplicaAddress(new, r.peer, r.client, r.peer_bind, r.client_bind)
        self._slot[new] = self.slot(old)
        self.starts[new] = 0
        self._write_config()
        return new

    def gid(self, rid: int) -> int:
        """The group id replica `rid` runs with (its slot's)."""
        if not self.own_gids:
            raise RuntimeError("replicas run without their own gids (not root)")
        return self._gid0 + self.slot(rid)

    def peer_port(self, rid: int) -> int:
        for r in self.replicas:
            if self.slot(r.id) == self.slot(rid):
                return int(r.peer.rsplit(":", 1)[1])
        raise KeyError(f"no replica in the slot of {rid}")

    def launch_options(self, rid: int) -> dict[str, Any]:
        """`self.module` as the program, in the replica's namespace (or under
        its own gid on loopback), with `replica_args`."""
        return {
            **super().launch_options(rid),
            "module": self.module,
            "prefix": self.net.prefix(self.slot(rid)) if self.net is not None else (),
            "group": self.gid(rid) if self.own_gids else None,
        }

    def start_replica(self, rid: int, *, cluster_state: str | None = "new") -> None:
        """As `Cluster.start_replica`; the log says which start this is."""
        if not self.is_running(rid):  # else super() refuses
            with open(self.log_path(rid), "ab") as log:
                log.write(f"=== start #{self.starts[rid] + 1} of replica {rid} ===\n".encode())
        super().start_replica(rid, cluster_state=cluster_state)
        self.starts[rid] += 1

    def is_paused(self, rid: int) -> bool:
        """Whether the replica's process is stopped (SIGSTOP), from /proc."""
        proc = self.procs.get(rid)
        if proc is None or proc.poll() is not None:
            return False
        try:
            with open(f"/proc/{proc.pid}/stat", encoding="ascii") as f:
                return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
        except OSError:
            return False

    def expect_exit(self, rid: int) -> None:
        """Replica rid's process is meant to exit by itself (a refused join):
        `reap` does not report it."""
        proc = self.procs.get(rid)
        if proc is not None:
            self._reaped.add(proc.pid)

    def reap(self) -> list[tuple[int, int]]:
        """Replicas that exited on their own (not by a signal we sent), each
        process reported once: (rid, returncode). The caller decides."""
        found = []
        for rid, proc in self.procs.items():
            if (
                proc.poll() is not None
                and proc.pid not in self._reaped
                and self._unexpected_exit(proc)
            ):
                self._reaped.add(proc.pid)
                found.append((rid, proc.returncode))
        self.exits += found
        return found

    # -- end-of-run checks --

    def wait_settled(self, timeout: float = 30.0, stable_rounds: int = 3) -> dict[str, Any]:
        """Polls STATUS until every replica answers, all name the same
        leader, and all have the same commit index and have applied up to it,
        `stable_rounds` polls in a row. Returns {"ok", "seconds", "rows"}."""
        started = time.monotonic()
        deadline = started + timeout
        streak, rows, last = 0, [], None
        while time.monotonic() < deadline:
            rows = self.status(timeout=1.0)
            sig = _settled_signature(rows)
            if sig is not None and sig == last:
                streak += 1
            elif sig is not None:
                streak = 1
            else:
                streak = 0
            last = sig
            if streak >= stable_rounds:
                return {"ok": True, "seconds": time.monotonic() - started, "rows": rows}
            time.sleep(0.2)
        return {"ok": False, "seconds": time.monotonic() - started, "rows": rows}

    def log_count(self, text: str) -> int:
        """How many lines of all the replica logs contain `text`."""
        count = 0
        for rid in self.ids:
            try:
                lines = self.log_path(rid).read_text(errors="replace").splitlines()
            except OSError:
                continue
            count += sum(text in line for line in lines)
        return count

    def log_errors(self) -> dict[int, list[str]]:
        """Lines of the replica logs that show a crash or an error."""
        found: dict[int, list[str]] = {}
        for rid in self.ids:
            try:
                text = self.log_path(rid).read_text(errors="replace")
            except OSError:
                continue
            bad = [
                ln
                for ln in text.splitlines()
                if "Traceback" in ln or " ERROR " in ln or " CRITICAL " in ln
            ]
            if bad:
                found[rid] = bad
        return found


def _netns_address(net: NetnsNetwork, rid: int) -> ReplicaAddress:
    peer = f"tcp://{net.address(rid)}:{PEER_PORT}"
    client = f"tcp://{net.address(rid)}:{CLIENT_PORT}"
    return ReplicaAddress(rid, peer, client, peer, client)


def _settled_signature(rows: list[dict[str, Any]]) -> tuple[int, int] | None:
    """(leader, commit index) if the STATUS rows show a settled cluster."""
    if not rows or any("error" in r for r in rows):
        return None
    leaders = {r.get("leader") for r in rows}
    commits = {r.get("commit_index") for r in rows}
    if len(leaders) != 1 or None in leaders or len(commits) != 1:
        return None
    if any(r.get("applied_index") != r.get("commit_index") for r in rows):
        return None
    roles = [r.get("role") for r in rows]
    if roles.count("leader") != 1:
        return None
    return leaders.pop(), commits.pop()
