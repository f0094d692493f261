"""Metrics, health checks and JSON logs of real replica processes, scraped
by a real Prometheus server (Debian's `prometheus` package).

One test, in steps: a 3-replica cluster serving metrics on 127.0.0.1 and
logging JSON; a Prometheus scraping all three every second; the commit
index read back through Prometheus's query API advances on every replica
as a client writes; a follower cut off from the leader (the leader and the
other follower SIGSTOPped: no majority, so no leader anywhere) turns
unready, on its /ready and in Prometheus, while /health stays 200, and
ready again once they resume; its JSON log has the events, once each.
A second test sends a replica's peer port messages from a stranger: they
are counted by kind on /metrics and logged once.

Without the prometheus binary the first test is skipped with the reason,
or fails when PAXOSKV_PROMETHEUS_REQUIRED=1 (set by .ci/run, which
installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from replica import codec, launch
from replica.messages import Ballot, Heartbeat
from tests.harness import SERVER_MISSING, Cluster, wait_for

pytestmark = pytest.mark.timeout(180)

WRITES = 50


class JsonLogCluster(Cluster):
    """The harness cluster, its replicas logging JSON (--log-format json)."""

    def launch_options(self, rid: int) -> dict[str, Any]:
        return {**super().launch_options(rid), "log_format": "json"}


class Prometheus:
    """A Prometheus server on a free 127.0.0.1 port, scraping `targets`
    every second, with its files under `root`."""

    def __init__(self, binary: str, root: Path, targets: list[str]) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = launch.free_ports(1)[0]
        self.log_path = root / "prometheus.log"
        config = root / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
            "scrape_configs:\n  - job_name: paxoskv\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.proc = launch.spawn(argv, self.log_path, cwd=root)

    def query(self, expr: str) -> dict[str, float]:
        """An instant query: {instance: value} of the resulting vector."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        with urllib.request.urlopen(url, timeout=5) as resp:
            doc = json.load(resp)
        assert doc["status"] == "success", doc
        return {
            r["metric"].get("instance", ""): float(r["value"][1]) for r in doc["data"]["result"]
        }

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"prometheus exited: {launch.log_tail(self.log_path)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        launch.stop([self.proc], grace=5)


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        reason = "no prometheus binary (Debian package prometheus; .ci/run installs it)"
        if os.environ.get("PAXOSKV_PROMETHEUS_REQUIRED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


@pytest.fixture
def json_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A started 3-replica cluster serving metrics and logging JSON; its
    files are removed unless the test failed."""
    if SERVER_MISSING:
        pytest.skip("replica/server.py is not there yet")
    cluster = JsonLogCluster(tmp_path / "cluster", 3, metrics=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
    rep = getattr(request.node, "_cluster_rep_call", None)
    if rep is not None and rep.passed:
        shutil.rmtree(tmp_path, ignore_errors=True)
    else:
        print(f"\nfiles kept in {tmp_path}")


@pytest.fixture
def monitored(
    json_cluster: Cluster, tmp_path: Path, prometheus_binary: str
) -> Iterator[tuple[Cluster, Prometheus]]:
    targets = [json_cluster.metrics_address(rid) for rid in json_cluster.ids]
    prometheus = Prometheus(prometheus_binary, tmp_path / "prometheus", targets)
    try:
        yield json_cluster, prometheus
    finally:
        prometheus.stop()


def _http(url: str) -> tuple[int, dict[str, Any]]:
    """GET: (status code, JSON body); (0, {}) when nothing answers in time."""
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
    except OSError:
        return 0, {}


def _events(log_path: Path, skip: int = 0) -> list[dict[str, Any]]:
    """Every line of a replica's JSON log after the first `skip`, parsed
    (each one must be a JSON object)."""
    lines = log_path.read_text().splitlines()[skip:]
    return [json.loads(line) for line in lines if line.strip()]


def test_prometheus_scrapes_the_cluster_and_ready_follows_the_leader(
    monitored: tuple[Cluster, Prometheus],
) -> None:
    cluster, prom = monitored
    instance = {rid: cluster.metrics_address(rid) for rid in cluster.ids}
    wait_for("prometheus to start", prom.ready, 30)
    wait_for(
        "prometheus to scrape all three replicas",
        lambda: prom.query('up{job="paxoskv"}') == dict.fromkeys(instance.values(), 1.0),
        30,
    )

    # The commit index, read back through Prometheus, advances everywhere.
    before = wait_for("a commit index per replica", lambda: _all(prom, "paxoskv_commit_index"))
    kv = cluster.client()
    for i in range(WRITES):
        kv.put(f"key{i}", f"value{i}")

    def advanced() -> dict[str, float] | None:
        now = _all(prom, "paxoskv_commit_index")
        return now if now and all(now[i] >= before[i] + WRITES for i in now) else None

    wait_for("every replica's commit index to advance in Prometheus", advanced, 30)
    puts = wait_for(
        "the PUT count in Prometheus",
        lambda: prom.query('sum(paxoskv_client_requests_total{op="put",status="ok"})'),
    )
    assert list(puts.values())[0] >= WRITES
    leader = cluster.leader_id()
    assert leader is not None
    assert prom.query("paxoskv_is_leader == 1") == {instance[leader]: 1.0}
    fsyncs = prom.query(f'paxoskv_fsync_duration_seconds_count{{instance="{instance[leader]}"}}')
    assert fsyncs[instance[leader]] >= WRITES  # one synced vote per write at least

    # Cut a follower off from the leader: pause the leader and the other
    # follower, so no leader can be elected either.
    follower = next(rid for rid in cluster.ids if rid != leader)
    others = [rid for rid in cluster.ids if rid != follower]
    base = f"http://{instance[follower]}"
    assert _http(base + "/ready")[0] == 200
    changes = f'paxoskv_leader_changes_total{{instance="{instance[follower]}"}}'
    changes_before = prom.query(changes)[instance[follower]]
    log_lines = len(cluster.log_path(follower).read_text().splitlines())
    for rid in others:
        cluster.pause(rid)
    try:
        code, body = wait_for(
            "/ready to turn 503 on the cut-off follower",
            lambda: (got := _http(base + "/ready"))[0] == 503 and got,
            15,
        )
        assert body["reason"] == "no leader known" and body["leader"] is None
        code, body = _http(base + "/health")
        assert (code, body["status"]) == (200, "ok")
        wait_for(
            "Prometheus to see the follower unready",
            lambda: (
                prom.query(f'paxoskv_ready{{instance="{instance[follower]}"}}')
                == {instance[follower]: 0.0}
            ),
            15,
        )
    finally:
        for rid in others:
            cluster.resume(rid)
    wait_for("/ready to turn 200 again", lambda: _http(base + "/ready")[0] == 200, 20)
    wait_for(
        "Prometheus to see all three ready",
        lambda: prom.query("paxoskv_ready") == dict.fromkeys(instance.values(), 1.0),
        20,
    )
    # Finding its leader again counts as a leader change (as etcd counts).
    assert prom.query(changes)[instance[follower]] >= changes_before + 1

    # Its JSON log told the story, one event each.
    events = _events(cluster.log_path(follower))
    assert all(e["replica"] == follower and e["time"].endswith("Z") for e in events)
    started = [e for e in events if e["event"] == "replica_started"]
    assert len(started) == 1 and started[0]["fields"]["metrics"] == f"http://{base[7:]}"
    during = [e["event"] for e in _events(cluster.log_path(follower), log_lines)]
    assert during.count("leader_lost") == 1, during
    assert during.count("leader_followed") + during.count("leader_elected") == 1, during


def _all(prom: Prometheus, expr: str) -> dict[str, float] | None:
    """{instance: value} once all three replicas have a value, else None."""
    values = prom.query(expr)
    return values if len(values) == 3 else None


def test_a_stranger_at_a_peer_port_is_counted_and_logged_once(json_cluster: Cluster) -> None:
    """Well-formed Paxos messages from a sender that is no configured peer
    are refused: /metrics counts them by kind, the JSON log says so once."""
    cluster = json_cluster
    rid = cluster.ids[0]
    peer = next(r.peer for r in cluster.replicas if r.id == rid)
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 1000)  # deliver before closing
    try:
        sock.connect(peer)
        for n in range(5):
            sock.send(codec.encode(Heartbeat(99, Ballot(10**6, 99), 10**6, n)))
    finally:
        sock.close()
    url = f"http://{cluster.metrics_address(rid)}/metrics"
    family = "paxoskv_dropped_frames_total"

    def refused() -> float | None:
        with urllib.request.urlopen(url, timeout=3) as resp:
            text = resp.read().decode()
        for fam in text_string_to_metric_families(text):
            for sample in fam.samples:
                if sample.name == family and sample.labels == {"kind": "peer_unknown"}:
                    return sample.value if sample.value >= 5 else None
        return None

    assert wait_for("the refused messages to be counted", refused) == 5
    dropped = [e for e in _events(cluster.log_path(rid)) if e["event"] == "input_dropped"]
    assert len(dropped) == 1, dropped
    assert dropped[0]["level"] == "warning"
    assert dropped[0]["fields"]["kind"] == "peer_unknown"
    assert "replica 99" in dropped[0]["fields"]["detail"]
    info = next(row for row in cluster.status() if row.get("id") == rid)
    assert info["promised"][0] < 10**6  # the forged ballot changed nothing
