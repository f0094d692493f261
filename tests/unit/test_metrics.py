"""replica/metrics.py: what the loop counts, the Prometheus exposition
(names and conventions), the health judgements, and the HTTP endpoints of
real in-process replicas (driven by the test through `run_once`)."""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kvstore.config import ReplicaAddress
from kvstore.protocol import Op, Request, Response, Status, encode_request, encode_response
from replica.counters import Histogram
from replica.launch import free_ports
from replica.messages import Ballot, Heartbeat
from replica.metrics import (
    CATCHUP_SLOTS,
    PeerTraffic,
    ReplicaMetrics,
    RequestMeter,
    Snapshot,
    TaggedEnvelope,
    TimedStorage,
    families,
    health,
    readiness,
    request_op,
    response_status,
)
from replica.server import Replica

pytestmark = pytest.mark.timeout(60)

README = Path(__file__).resolve().parents[2] / "README.md"


# ------------------------------------------------------------ counting


def test_op_and_status_are_read_from_the_frames() -> None:
    for op in Op:
        assert request_op(encode_request(Request(op, b"c" * 16, 1, b"k", b"v"))) == op.name.lower()
    for status in Status:
        assert response_status(encode_response(Response(status))) == status.name.lower()
    assert request_op(b"\x93garbage") == "invalid"
    assert request_op(b"") == "invalid"
    assert request_op(msgpack.packb([2, 1, b"x"])) == "invalid"  # another protocol version
    assert request_op(msgpack.packb([1, 99, b"x"])) == "unknown"
    # More than 15 fields (an array16 header): read by unpacking, not by offset.
    assert request_op(msgpack.packb([1, int(Op.CAS)] + [None] * 20)) == "cas"
    assert response_status(msgpack.packb([1, int(Status.REDIRECT)] + [None] * 20)) == "redirect"


def test_histogram_buckets_are_inclusive_upper_bounds() -> None:
    h = Histogram((1, 2, 4))
    for v in (0.5, 1, 1.5, 2, 3, 4, 100):
        h.observe(v)
    assert h.counts == [2, 2, 2, 1]
    assert h.cumulative() == [(1, 2), (2, 4), (4, 6), (float("inf"), 7)]
    assert h.sum == pytest.approx(112)
    copy = h.copy()
    h.observe(1)
    assert copy.count == 7 and h.count == 8
    with pytest.raises(ValueError):
        Histogram((2, 1))


class _Replier:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, bytes]] = []

    def reply(self, envelope: Any, payload: bytes) -> None:
        self.sent.append((envelope, payload))


def test_request_meter_counts_by_op_and_status_and_times_from_arrival() -> None:
    now = [100.0]
    replier = _Replier()
    meter = RequestMeter(replier, clock=lambda: now[0])
    put = encode_request(Request(Op.PUT, b"c" * 16, 1, b"k", b"v"))
    get = encode_request(Request(Op.GET, b"c" * 16, 2, b"k"))
    requests = [([b"id1", b""], put), ([b"id2", b""], get)]
    meter.tag(requests, now[0])
    (env_put, _), (env_get, _) = requests
    assert isinstance(env_put, TaggedEnvelope) and list(env_put) == [b"id1", b""]
    now[0] = 100.003
    meter.reply(env_put, encode_response(Response(Status.OK, version=1)))
    now[0] = 100.5
    meter.reply(env_get, encode_response(Response(Status.REDIRECT, leader=2)))
    meter.reply([b"untagged", b""], encode_response(Response(Status.OK)))
    assert [env for env, _ in replier.sent] == [env_put, env_get, [b"untagged", b""]]
    assert meter.counts == {("put", "ok"): 1, ("get", "redirect"): 1, ("unknown", "ok"): 1}
    assert meter.latency["put"].sum == pytest.approx(0.003)
    assert meter.latency["put"].count == 1
    assert meter.latency["get"].sum == pytest.approx(0.5)
    assert "unknown" not in meter.latency  # no arrival time, no latency


class _Storage:
    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.calls: list[tuple[tuple, dict]] = []
        self.extra = "passed through"

    def load(self) -> str:
        return "state"

    def persist(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))
        self.clock[0] += 0.002  # the write and its fsync


def test_timed_storage_times_synced_batches_only() -> None:
    clock = [0.0]
    inner = _Storage(clock)
    storage = TimedStorage(inner, clock=lambda: clock[0])
    storage.persist(None, {}, {}, sync=True, compacted=5)
    storage.persist(None, {}, {})
    storage.persist(None, {}, {}, sync=False)
    assert len(inner.calls) == 3
    assert inner.calls[0] == ((None, {}, {}), {"sync": True, "compacted": 5})
    assert storage.fsync.count == 2 and storage.fsync.sum == pytest.approx(0.004)
    assert storage.load() == "state" and storage.extra == "passed through"


# ------------------------------------------------------------ exposition


def _snapshot(**over: Any) -> Snapshot:
    base: dict[str, Any] = {
        "replica_id": 2,
        "role": "follower",
        "leader_id": 1,
        "ballot_round": 3,
        "promised_round": 3,
        "commit_index": 40,
        "leader_commit_index": 42,
        "applied_index": 40,
        "requests": {("put", "ok"): 5, ("get", "redirect"): 2},
        "latency": {"put": Histogram((0.001, 0.01))},
        "peers": {1: PeerTraffic(10, 1000, 1, 9, 900), 3: PeerTraffic(4, 400, 0, 4, 40)},
        "dropped": {"peer_unknown": 3},
        "install": {"from": 1, "index": 500, "bytes": 2048, "keys": 7},
    }
    base.update(over)
    return Snapshot(**base)


def _expose(snap: Snapshot, max_lag: int = 1000, fresh: bool = True) -> str:
    class One:
        def collect(self) -> Iterator[Any]:
            yield from families(snap, max_lag, data_dir_bytes=1234, version="9.9", fresh=fresh)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(One())
    return generate_latest(registry).decode()


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_exposition_values() -> None:
    snap = _snapshot()
    snap.latency["put"].observe(0.004)
    s = _samples(_expose(snap))
    assert s[("paxoskv_applied_index", frozenset())] == 40
    assert s[("paxoskv_leader_commit_index", frozenset())] == 42
    assert s[("paxoskv_apply_lag_slots", frozenset())] == 2
    assert s[("paxoskv_role", frozenset({("role", "follower")}))] == 1
    assert s[("paxoskv_role", frozenset({("role", "leader")}))] == 0
    assert s[("paxoskv_leader_id", frozenset())] == 1
    assert s[("paxoskv_ready", frozenset())] == 1
    key = ("paxoskv_client_requests_total", frozenset({("op", "put"), ("status", "ok")}))
    assert s[key] == 5
    assert s[("paxoskv_peer_sent_bytes_total", frozenset({("peer", "1")}))] == 1000
    assert s[("paxoskv_peer_send_dropped_total", frozenset({("peer", "1")}))] == 1
    assert s[("paxoskv_dropped_frames_total", frozenset({("kind", "peer_unknown")}))] == 3
    bucket = "paxoskv_client_request_duration_seconds_bucket"
    assert s[(bucket, frozenset({("op", "put"), ("le", "0.001")}))] == 0
    assert s[(bucket, frozenset({("op", "put"), ("le", "0.01")}))] == 1
    assert s[(bucket, frozenset({("op", "put"), ("le", "+Inf")}))] == 1
    assert s[("paxoskv_snapshot_install_in_progress", frozenset())] == 1
    assert s[("paxoskv_snapshot_install_received_bytes", frozenset())] == 2048
    assert s[("paxoskv_replica_info", frozenset({("replica_id", "2"), ("version", "9.9")}))] == 1
    assert s[("paxoskv_data_dir_bytes", frozenset())] == 1234
    # Behind by more than the readiness limit: not ready.
    s = _samples(_expose(_snapshot(applied_index=30), max_lag=5))
    assert s[("paxoskv_ready", frozenset())] == 0
    # A snapshot the loop did not refresh in time: not ready either.
    stale = _samples(_expose(_snapshot(), fresh=False))
    assert stale[("paxoskv_ready", frozenset())] == 0
    assert stale[("paxoskv_applied_index", frozenset())] == 40  # the rest as last seen


def test_names_follow_prometheus_conventions() -> None:
    text = _expose(_snapshot())
    for family in text_string_to_metric_families(text):
        name = family.name
        assert re.fullmatch(r"paxoskv_[a-z][a-z0-9_]*", name), name
        assert not name.endswith("_total") or family.type == "counter", name
        if family.type == "counter":
            assert all(s.name == name + "_total" for s in family.samples), name
        if family.type == "histogram":
            assert {s.name for s in family.samples} >= {name + "_bucket", name + "_sum"}, name
        if "duration" in name or "latency" in name:
            assert name.endswith("_seconds"), f"{name}: times are in seconds"
        if "bytes" in name:
            assert name.endswith(("_bytes", "_bytes_total")), f"{name}: the unit comes last"
        assert not re.search(r"_(ms|milliseconds|kb|mb|mib)(_|$)", name), name
        assert family.documentation, f"{name} has no help text"


def test_readme_lists_every_metric() -> None:
    """The README's Monitoring section names every metric family."""
    text = README.read_text()
    section = text.split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    for family in text_string_to_metric_families(_expose(_snapshot())):
        shown = family.name + ("_total" if family.type == "counter" else "")
        if family.type == "info":
            shown = family.name + "_info"
        assert f"`{shown}" in section, f"README, Monitoring: {shown} is not listed"


# ------------------------------------------------------------ judgements


def test_health_and_readiness() -> None:
    assert health(None, False) == (False, health(None, False)[1])
    assert "starting" in health(None, False)[1]["reason"]
    ok, body = health(_snapshot(), True)
    assert ok and body["status"] == "ok" and body["replica"] == 2
    ok, body = health(_snapshot(), False, age=7.25)
    assert not ok and "did not answer" in body["reason"] and "7.2 s" in body["reason"]
    ok, body = health(_snapshot(db_error="Corruption: bad block"), True)
    assert not ok and "Corruption" in body["reason"]

    ok, body = readiness(_snapshot(), True, 1000)
    assert ok and body["leader"] == 1 and body["lag"] == 2
    ok, body = readiness(_snapshot(leader_id=None, role="precandidate"), True, 1000)
    assert not ok and body["reason"] == "no leader known"
    ok, body = readiness(_snapshot(applied_index=30), True, 12)
    assert ok
    ok, body = readiness(_snapshot(applied_index=29), True, 12)
    assert not ok and "13 slots behind" in body["reason"]
    ok, body = readiness(_snapshot(), False, 1000)
    assert not ok  # an unresponsive loop is neither healthy nor ready


# ------------------------------------------------------------ catch-up


class _Driver:
    """Just what ReplicaMetrics needs of a driver."""

    def __init__(self) -> None:
        self.id = 3
        self.clients = _Replier()
        self.storage = _Storage([0.0])
        self.sm = type("SM", (), {"applied_index": 0})()
        self.core = type("Core", (), {"leader_id": 1})()


def test_catchup_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    driver = _Driver()
    clock = [0.0]
    metrics = ReplicaMetrics(driver, peers=None, db_probe=lambda: None, clock=lambda: clock[0])
    assert isinstance(driver.clients, RequestMeter) and isinstance(driver.storage, TimedStorage)
    behind = CATCHUP_SLOTS + 50
    caplog.set_level(logging.INFO, logger="replica.metrics")
    for _ in range(3):  # several heartbeats while behind: one episode
        metrics.on_input([Heartbeat(1, Ballot(1, 1), behind, 1)], [])
    assert metrics.catchups == 1
    clock[0] = 2.5
    driver.sm.applied_index = behind - 1
    metrics.on_input([], [])
    driver.sm.applied_index = behind
    metrics.on_input([], [])
    metrics.on_input([Heartbeat(1, Ballot(1, 1), behind + 3, 2)], [])  # a small lag: no episode
    assert metrics.catchups == 1
    events = [(r.event, r.fields) for r in caplog.records if hasattr(r, "event")]
    assert events == [
        ("catchup_started", {"behind": behind, "leader": 1, "applied_index": 0,
                             "commit_index": behind}),
        ("catchup_finished", {"slots": behind, "seconds": 2.5, "applied_index": behind}),
    ]  # fmt: skip


# ------------------------------------------------------------ in-process replicas


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[list[Replica]]:
    ports = free_ports(9)
    addresses = []
    for i in range(3):
        peer, client = f"tcp://127.0.0.1:{ports[i]}", f"tcp://127.0.0.1:{ports[3 + i]}"
        addresses.append(ReplicaAddress(i + 1, peer, client, peer, client))
    replicas = [Replica(a, addresses, tmp_path / f"r{a.id}", tick_ms=2) for a in addresses]
    for r, port in zip(replicas, ports[6:], strict=True):
        r.serve_metrics("127.0.0.1", port, max_lag=1000)
    yield replicas
    for r in replicas:
        r.close()


def _while_pumping(replicas: list[Replica], work: Callable[[], Any]) -> Any:
    """Runs `work` (HTTP requests) in a thread while this thread runs the
    replicas' loops, which answer the HTTP thread's snapshot requests."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    while thread.is_alive():
        for r in replicas:
            r.run_once(1)
    thread.join()
    return result[0]


def _url(r: Replica, path: str) -> str:
    assert r.metrics_server is not None
    host, port = r.metrics_server.address
    return f"http://{host}:{port}{path}"


def test_endpoints_of_in_process_replicas(trio: list[Replica]) -> None:
    def leader() -> Replica | None:
        leaders = [r for r in trio if r.driver.core.is_leader]
        agreed = len(leaders) == 1 and all(r.driver.core.leader_id == leaders[0].id for r in trio)
        return leaders[0] if agreed else None

    while leader() is None:
        for r in trio:
            r.run_once(1)
    lead = leader()
    assert lead is not None
    follower = next(r for r in trio if r is not lead)

    pages = _while_pumping(
        trio,
        lambda: {
            (r.id, path): _get(_url(r, path))
            for r in trio
            for path in ("/metrics", "/health", "/ready", "/nope")
        },
    )
    for r in trio:
        code, ctype, text = pages[(r.id, "/metrics")]
        assert code == 200 and ctype.startswith("text/plain")
        s = _samples(text)
        assert s[("paxoskv_leader_id", frozenset())] == lead.id
        assert s[("paxoskv_is_leader", frozenset())] == (r is lead)
        assert s[("paxoskv_db_readable", frozenset())] == 1
        assert ("process_resident_memory_bytes", frozenset()) in s
        for path in ("/health", "/ready"):
            code, ctype, body = pages[(r.id, path)]
            assert (code, ctype) == (200, "application/json"), body
            assert json.loads(body)["status"] == "ok"
        assert pages[(r.id, "/nope")][0] == 404
    assert json.loads(pages[(follower.id, "/ready")][2])["leader"] == lead.id

    # The follower's loop stops answering (not pumped): unhealthy, unready.
    code, _, body = _get(_url(follower, "/health"))
    assert code == 503 and "did not answer" in json.loads(body)["reason"]
    assert _get(_url(follower, "/ready"))[0] == 503
