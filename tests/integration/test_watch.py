"""Watch on a real 3-replica cluster (issue 14): a watcher (KVClient.watch in
a thread) sees every change exactly once and in revision order while the
leader is killed with SIGKILL and restarted, and a second watcher resumes
from a revision and sees the same events; kvctl watch prints them, with
--prev-kv the previous key-value lines, or a note on stderr once the
previous revision is past the retention (while the event itself is kept).

Every wait polls with a deadline (tests/harness.py wait_for).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable

import pytest

from client import ClusterUnavailable, KVClient
from client.watch import PUT, watch
from kvstore.protocol import WatchEvent
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.timeout(240)


STOP_KEY = b"w/end"


def _put(kv: KVClient, key: str, value: str) -> int:
    """A put that rides out a failover (its session makes a retry apply once)."""
    for _ in range(5):
        try:
            return kv.put(key, value)
        except ClusterUnavailable:
            continue
    raise AssertionError(f"put {key} never went through")


class Watcher(threading.Thread):
    """Collects the events of `w/` from `start` until it saw the key `w/end`
    (a key, not a revision set by the test: the last event may arrive
    before the test could name its revision)."""

    def __init__(self, cluster: Cluster, start: int, first: int | None = None) -> None:
        """`first`: the replica the watcher asks first (it then stays with
        whichever answers)."""
        super().__init__(daemon=True)
        self.ids = list(cluster.ids)
        if first is not None:  # that replica's address first
            self.ids = [first] + [rid for rid in cluster.ids if rid != first]
        addresses = [cluster.address(rid) for rid in self.ids]
        self.kv = KVClient(addresses, timeout=10.0)
        # The client whose sockets poll (as client/watch.py's poller_for
        # makes it, but asking the first address first).
        self.poller = KVClient(addresses, timeout=10.0, attempt_timeout=1.5, first=0)
        self.connected: int | None = None  # the replica that answered the last poll
        self.start_revision = start
        self.seen: list[WatchEvent] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            events = watch(
                self.kv, "w/", prefix=True, start_revision=self.start_revision, poller=self.poller
            )
            for event in events:
                self.seen.append(event)
                answered = self.poller._answered  # the index of the address that answered
                self.connected = None if answered is None else self.ids[answered]
                if event.key == STOP_KEY:
                    return
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.kv.close()

    def done(self) -> bool:
        return self.error is not None or not self.is_alive()


def test_a_watcher_on_the_leader_sees_every_change_once_across_its_kill_and_restart(
    cluster: Cluster,
) -> None:
    kv = cluster.client()
    start = kv.put("other", "x") + 1
    old = cluster.wait_for_leader()
    watcher = Watcher(cluster, start, first=old)  # watching on the leader
    watcher.start()
    written: list[tuple[int, bytes, bytes]] = []

    def write(count: int) -> None:
        for _ in range(count):
            n = len(written)
            key, value = f"w/{n % 7}", f"v{n}"
            written.append((_put(kv, key, value), key.encode(), value.encode()))

    write(20)
    # The watcher polls the leader: killing it kills the leader and the
    # watcher's replica; it goes on elsewhere, and its replica restarts.
    wait_for("the watcher on the leader", lambda: watcher.connected == old or None)
    cluster.kill(old)
    write(20)  # under a new leader (the writes wait for it)
    cluster.start_replica(old, cluster_state=None)
    cluster.wait_ready(old)
    write(20)
    written.append((_put(kv, STOP_KEY.decode(), "end"), STOP_KEY, b"end"))
    wait_for("the watcher to see the last write", lambda: watcher.done() or None, timeout=60)
    assert watcher.error is None, repr(watcher.error)
    revisions = [e.revision for e in watcher.seen]
    assert revisions == sorted(set(revisions)), "in revision order, no repeat"
    assert [(e.revision, e.key, e.value) for e in watcher.seen] == written
    assert all(e.kind == PUT and e.version == e.revision for e in watcher.seen)
    # Resuming from a revision gives the same events.
    again = Watcher(cluster, written[30][0])
    again.start()
    wait_for("the second watcher", lambda: again.done() or None, timeout=60)
    assert again.error is None and again.seen == watcher.seen[30:]


def test_kvctl_watch_prints_the_changes(cluster: Cluster) -> None:
    kv = cluster.client()
    first = kv.put("cfg/a", "1")
    kv.delete("cfg/a")
    kv.put("cfg/b", "2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.kvctl", "--cluster", cluster.cluster_arg, "-v", "watch",
         "cfg/", "--prefix", "--rev", str(first)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        lines: list[bytes] = []
        assert proc.stdout is not None
        while len(lines) < 8:
            lines.append(proc.stdout.readline().rstrip(b"\n"))
    finally:
        proc.kill()
        proc.wait()
    assert lines == [
        b"# revision %d" % first, b"PUT", b"cfg/a", b"1",
        b"# revision %d" % (first + 1), b"DELETE", b"cfg/a",
        b"# revision %d" % (first + 2),
    ]  # fmt: skip


def test_previous_values_on_request_kvctl_and_client(cluster: Cluster) -> None:
    kv = cluster.client()
    first = kv.put("pkv/a", "1")  # created: no previous value
    kv.put("pkv/a", "2")  # an overwrite
    kv.delete("pkv/a")  # a delete
    events = kv.watch("pkv/", prefix=True, start_revision=first, prev_kv=True)
    seen = [next(events) for _ in range(3)]
    events.close()
    assert [(e.revision, e.prev_revision, e.prev_value) for e in seen] == [
        (first, 0, None),
        (first + 1, first, b"1"),
        (first + 2, first + 1, b"2"),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.kvctl", "--cluster", cluster.cluster_arg, "watch",
         "pkv/", "--prefix", "--rev", str(first), "--prev-kv"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        lines: list[bytes] = []
        assert proc.stdout is not None
        while len(lines) < 12:
            lines.append(proc.stdout.readline().rstrip(b"\n"))
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert lines == [
        b"PUT", b"pkv/a", b"1",  # created: no previous key-value lines
        b"PUT", b"pkv/a", b"1", b"pkv/a", b"2",  # etcdctl's order: previous, then new
        b"DELETE", b"pkv/a", b"2", b"pkv/a",
    ]  # fmt: skip
    assert b"kvctl:" not in err  # every previous value was there: no note


def _kvctl_watch_lines(cluster: Cluster, args: list[str], count: int) -> tuple[list[bytes], bytes]:
    """The first `count` stdout lines of `kvctl watch ARGS`, and its stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.kvctl", "--cluster", cluster.cluster_arg, "watch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lines: list[bytes] = []
        assert proc.stdout is not None
        while len(lines) < count:
            lines.append(proc.stdout.readline().rstrip(b"\n"))
    finally:
        proc.kill()
        _, err = proc.communicate()
    return lines, err


def test_a_previous_value_past_the_retention_is_said_to_be_gone(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory(3, start=False)
    with open(cluster.config_path, "a", encoding="utf-8") as fh:
        fh.write("\n[watch]\nretain_events = 5\n")
    cluster.start()
    kv = cluster.client()
    first = kv.put("rare", "first")
    for i in range(20):
        kv.put(f"busy/{i % 3}", str(i))
    again = kv.put("rare", "second")
    lines, err = _kvctl_watch_lines(cluster, ["rare", "--prev-kv", "--rev", str(again)], 3)
    assert lines == [b"PUT", b"rare", b"second"]  # as for a created key ...
    assert (
        f"kvctl: the value of 'rare' before revision {again} (from revision {first}) "
        "is no longer kept"
    ).encode() in err  # ... and said on stderr
    busy = ["busy/", "--prefix", "--prev-kv", "--rev", str(again - 1)]
    lines, err = _kvctl_watch_lines(cluster, busy, 5)
    assert lines == [b"PUT", b"busy/1", b"16", b"busy/1", b"19"] and b"kvctl:" not in err
