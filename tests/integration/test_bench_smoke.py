"""Smoke run of the benchmark harness (benchmarks/run.py) against real clusters.

`python -m benchmarks.run --suite smoke` for about a second a point with a
few clients: the command works end to end, writes the JSON (and the PNG when
matplotlib is installed) and the table, and measures nonzero operations.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from replica.launch import replica_env
from tests.harness import SERVER_MISSING

ROOT = Path(__file__).resolve().parents[2]
HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
HAVE_ETCD = shutil.which("etcd") is not None and importlib.util.find_spec("grpc") is not None

pytestmark = pytest.mark.timeout(240)


def run_bench(tmp_path: Path, *args: str) -> tuple[dict, str]:
    env = dict(replica_env(), BENCH_DATA_DIR=str(tmp_path))
    out = tmp_path / "results"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--suite",
            "smoke",
            "--out",
            str(out),
            "--no-progress",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "latest.json").read_text())
    if HAVE_MPL:
        png = (out / "latest.png").read_bytes()
        assert png.startswith(b"\x89PNG")
    return doc, proc.stdout


def check_system(doc: dict, name: str, clients: list[int]) -> None:
    system = doc["systems"][name]
    assert system["status"] == "ok", system
    steady = system["scenarios"]["steady"]
    assert "error" not in steady, steady
    assert steady["preload"]["keys"] > 0
    assert [r["clients"] for r in steady["sweep"]] == clients
    for r in steady["sweep"] + steady["get"]:
        assert r["ops"] > 0 and r["throughput"] > 0, r
        lat = r["latency_ms"]
        for k in ("p50", "p90", "p99", "p99.9", "max"):
            assert lat[k] > 0
        assert lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
        assert r["histogram"]["total"] == r["ops"]
        assert r["error_count"] == 0, r["errors"]
    # the GETs read preloaded keys
    assert steady["get"][0]["not_found"] == 0


@pytest.mark.skipif(SERVER_MISSING, reason="replica/server.py does not exist yet")
def test_smoke_run_against_our_cluster(tmp_path):
    doc, stdout = run_bench(tmp_path, "--system", "paxoskv", "--clients", "1,3", "--duration", "1")
    for key in ("machine", "versions", "config", "systems", "table", "created", "seconds"):
        assert key in doc
    assert doc["machine"]["cores"] >= 1 and "fsync_ms" in doc["machine"]
    assert doc["config"]["replicas"] == 3
    check_system(doc, "paxoskv", [1, 3])
    assert "PUT 1 client p50" in stdout and "paxoskv" in stdout
    keys = {row["key"] for row in doc["table"]}
    assert {"put1_p50", "get1_p50", "put64_tput", "put64_cpu_per_write"} <= keys
    # the cost of a write (benchmarks/cost.py): the leader's counters around
    # each PUT run; a write is at most one revision, a slot holds >= 1 write
    steady = doc["systems"]["paxoskv"]["scenarios"]["steady"]
    for r in steady["sweep"]:
        commit = r["commit"]
        assert 0 < commit["slots"] <= commit["writes"], commit
        assert r["ops"] <= commit["writes"], (r["ops"], commit)  # the warm-up writes too
        assert r["wall_s"] > 0 and sum(r["server_cpu_s"].values()) > 0
        # durable writes reach the disk: every replica wrote something
        assert sorted(map(int, r["server_write_bytes"])) == [1, 2, 3], r["server_write_bytes"]
        assert min(r["server_write_bytes"].values()) > 0, r["server_write_bytes"]
    assert [row["clients"] for row in steady["cost"]["runs"]] == [1, 3]
    assert "CPU of the cluster across the PUT sweep" in stdout


@pytest.mark.skipif(not HAVE_ETCD, reason="etcd (Debian etcd-server) or grpcio not installed")
def test_smoke_run_against_etcd(tmp_path):
    doc, stdout = run_bench(tmp_path, "--system", "etcd", "--clients", "2", "--duration", "1")
    check_system(doc, "etcd", [2])
    assert doc["versions"]["etcd"]
    assert "etcd" in stdout


@pytest.mark.skipif(SERVER_MISSING, reason="replica/server.py does not exist yet")
def test_smoke_footprint_and_catchup_on_a_store(tmp_path):
    """The footprint scenario (issue 11) and the catch-up on a loaded store,
    tiny: 2,000 overwrites, a 500-key store; a few seconds."""
    doc, stdout = run_bench(
        tmp_path, "--system", "paxoskv", "--scenarios", "footprint,catchup",
        "--footprint-writes", "2000", "--catchup-writes", "0",
        "--catchup-store-keys", "500", "--catchup-store-writes", "1000",
    )  # fmt: skip
    sc = doc["systems"]["paxoskv"]["scenarios"]
    assert "catchup" not in sc  # --catchup-writes 0 skips the plain variant
    fp = sc["footprint"]
    assert "error" not in fp, fp
    assert fp["writes_done"] == 2000 and fp["stopped_early"] is None
    ser = fp["series"]
    assert ser["writes"][0] == 0 and ser["writes"][-1] == 2000
    assert ser["mark_samples"] and ser["mark"] == 200
    assert set(ser["rss_bytes"]) == set(ser["dir_bytes"]) == {"1", "2", "3"}
    for rid in ser["rss_bytes"]:
        assert all(v and v > 1024 * 1024 for v in ser["rss_bytes"][rid]), rid
        assert ser["dir_bytes"][rid][-1] > 0
    summary = fp["summary"]
    assert summary["live_bytes"] == 100 * (11 + 100)
    assert summary["rss_growth_max"] is not None and summary["dir_max"] > 0
    restart = fp["restart"]
    assert 0 < restart["restart_to_status_s"] <= restart["restart_to_first_write_s"] < 30
    assert restart["marker_errors"] == 0
    cs = sc["catchup_store"]
    assert "error" not in cs, cs
    assert cs["caught_up"] and cs["last_applied"] >= cs["target_index"]
    assert cs["follower_dir_after_bytes"] > 0 and cs["preload"]["keys"] == 500
    assert "restart to first committed write" in stdout


@pytest.mark.skipif(SERVER_MISSING, reason="replica/server.py does not exist yet")
def test_smoke_api_scenarios(tmp_path):
    """Issue 14's scenarios (`--scenarios api`: range, txn, watch), tiny:
    scans of 100 and 6,000 keys (two replies of ours), 1 and 4 txn clients,
    1 s of watched PUTs; against etcd too when it is installed."""
    system = "both" if HAVE_ETCD else "paxoskv"
    doc, stdout = run_bench(tmp_path, "--system", system, "--scenarios", "api")
    names = ["paxoskv", "etcd"] if HAVE_ETCD else ["paxoskv"]
    for name in names:
        assert doc["systems"][name]["status"] == "ok", doc["systems"][name]
        sc = doc["systems"][name]["scenarios"]
        assert {"range", "txn", "watch"} <= set(sc) and "steady" not in sc
        for part in ("range", "txn", "watch"):
            assert "error" not in sc[part], (name, sc[part])
        runs = {(r["keys_per_scan"], r["clients"]): r for r in sc["range"]["runs"]}
        assert set(runs) == {(100, 1), (100, 2), (6000, 1), (6000, 2)}
        for r in [*runs.values(), *sc["txn"]["runs"], sc["txn"]["put"]]:
            assert r["ops"] > 0 and r["error_count"] == 0, (name, r["label"], r["errors"])
            assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert runs[(6000, 1)]["counters"]["keys"] == 6000 * runs[(6000, 1)]["ops"]
        # our replies stop at 5,000 keys: a 6,000-key scan is two requests
        assert runs[(6000, 1)]["requests_per_scan"] == (2.0 if name == "paxoskv" else 1.0)
        assert [r["clients"] for r in sc["txn"]["runs"]] == [1, 4]
        assert all(r["cas_failed"] == 0 for r in sc["txn"]["runs"])
        watch = sc["watch"]
        assert watch["writes"] == 100 and set(watch["watchers"]) == {"leader", "follower"}
        for w in watch["watchers"].values():
            assert w["error"] is None and w["missing"] == 0 and w["received"] == 100, w
            assert w["latency_ms"]["p50"] > 0
    keys = {row["key"] for row in doc["table"]}
    assert {"range_6000_c1_p50", "txn_c4_tput", "watch_follower_p99"} <= keys
    assert "range 6,000 keys, 1 client p50" in stdout
