"""The footprint scenario's measuring side (benchmarks/footprint.py) and its
rows in the table (benchmarks/run.py): parsers, sampling schedule, summary
arithmetic. No cluster is started."""

from __future__ import annotations

import os

import pytest

from benchmarks.footprint import (
    BudgetExceeded,
    FootprintSampler,
    dir_alloc_bytes,
    dir_bytes,
    live_bytes,
    mark_interval,
    parse_vmrss,
    rss_bytes,
    summarize,
)
from benchmarks.run import _int, build_parser, config_from_args, table_rows

STATUS = """Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t  512000 kB
VmSize:\t  498000 kB
VmHWM:\t   40000 kB
VmRSS:\t   31234 kB
RssAnon:\t   20000 kB
Threads:\t4
"""


def test_parse_vmrss_reads_kib():
    assert parse_vmrss(STATUS) == 31234 * 1024


def test_parse_vmrss_absent_or_malformed():
    assert parse_vmrss("Name:\tkthreadd\nState:\tS\n") is None
    assert parse_vmrss("VmRSS:\n") is None
    assert parse_vmrss("VmRSS:\t12 MB\n") == 12 * 1024 * 1024


def test_rss_of_this_process_and_of_no_process():
    mine = rss_bytes(os.getpid())
    assert mine is not None and mine > 1024 * 1024
    assert rss_bytes(None) is None
    assert rss_bytes(2**31 - 1) is None  # no such pid


def test_dir_bytes_sums_file_sizes_recursively(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 1000)
    sub = tmp_path / "sub" / "deeper"
    sub.mkdir(parents=True)
    (sub / "b").write_bytes(b"y" * 234)
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "a")  # not followed, not counted
    assert dir_bytes(tmp_path) == 1234
    assert dir_alloc_bytes(tmp_path) >= 1234
    assert dir_bytes(tmp_path / "missing") is None
    assert dir_bytes(None) is None


def test_sparse_file_counts_its_size_not_its_blocks(tmp_path):
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(64 * 1024 * 1024)
    assert dir_bytes(tmp_path) == 64 * 1024 * 1024
    assert dir_alloc_bytes(tmp_path) < 1024 * 1024


@pytest.mark.parametrize(
    "writes, mark, expected",
    [
        (1_000_000, 100_000, 100_000),
        (200_000, 100_000, 100_000),
        (199_999, 100_000, 19_999),
        (50_000, 100_000, 5_000),
        (5, 100_000, 1),
        (0, 100_000, 1),
    ],
)
def test_mark_interval(writes, mark, expected):
    assert mark_interval(writes, mark) == expected


def test_live_bytes_is_keys_times_key_and_value():
    assert live_bytes(1000, 100) == 1000 * (11 + 100)
    assert live_bytes(100_000, 100, key_bytes=16) == 100_000 * 116


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_sampler(clock: FakeClock, **kw):
    rss = {1: 10, 2: 20}
    calls = []

    def read_rss(pid):
        calls.append(pid)
        return None if pid is None else rss[pid] * (1 + len(calls))

    def read_dir(path):
        return len(str(path)) * 1000

    s = FootprintSampler(
        {1: 1, 2: 2}, {1: "/d/one", 2: "/d/two"}, read_rss=read_rss, read_dir=read_dir,
        clock=clock, **kw,
    )  # fmt: skip
    return s


def test_sampler_samples_at_marks_and_every_interval():
    clock = FakeClock()
    s = make_sampler(clock, interval=1.0, mark=100)
    s.sample(0)
    clock.now += 0.5
    s.on_progress(0.5, 40)  # neither a mark nor an interval later: nothing
    assert s.writes == [0]
    clock.now += 0.6
    s.on_progress(1.1, 80)  # 1.1 s since the last sample
    assert s.writes == [0, 80]
    clock.now += 0.1
    s.on_progress(1.2, 103)  # crossed 100: a mark sample, at once
    assert s.writes == [0, 80, 103]
    assert s.mark_samples == [2]
    clock.now += 0.1
    s.on_progress(1.3, 350)  # crossed 200 and 300 in one step: one sample
    assert s.mark_samples == [2, 3]
    assert s.next_mark == 400
    ser = s.series()
    assert ser["t_s"] == [0.0, 1.1, 1.2, 1.3]
    assert set(ser["rss_bytes"]) == {"1", "2"}
    assert ser["dir_bytes"]["1"] == [6000] * 4
    assert len(ser["rss_bytes"]["2"]) == 4
    assert s.last_writes == 350


def test_sampler_stops_the_run_past_its_deadline():
    clock = FakeClock()
    s = make_sampler(clock, deadline=clock.now + 5)
    s.on_progress(1.0, 10)
    clock.now += 6
    with pytest.raises(BudgetExceeded, match="20 writes"):
        s.on_progress(7.0, 20)


def test_sampler_follows_a_restarted_replica():
    clock = FakeClock()
    s = make_sampler(clock)
    s.set_pid(2, None)
    s.sample(5)
    assert s.series()["rss_bytes"]["2"] == [None]
    s.set_pid(2, 2)
    s.sample(6)
    assert s.series()["rss_bytes"]["2"][-1] is not None


def series(rss1, rss2, dir1, dir2, marks, writes=None):
    n = len(rss1)
    return {
        "t_s": [float(i) for i in range(n)],
        "writes": writes or [i * 50_000 for i in range(n)],
        "rss_bytes": {"1": rss1, "2": rss2},
        "dir_bytes": {"1": dir1, "2": dir2},
        "mark_samples": marks,
    }


def test_summarize_growth_from_the_first_mark_to_the_end():
    MiB = 1024 * 1024
    ser = series(
        rss1=[10 * MiB, 20 * MiB, 30 * MiB, 60 * MiB],
        rss2=[10 * MiB, 25 * MiB, 24 * MiB, 22 * MiB],
        dir1=[0, 5 * MiB, 9 * MiB, 7 * MiB],
        dir2=[0, 4 * MiB, 8 * MiB, 12 * MiB],
        marks=[2, 3],
    )
    out = summarize(ser, live=1 * MiB)
    r1, r2 = out["replicas"]["1"], out["replicas"]["2"]
    assert out["first_mark_writes"] == 100_000 and out["end_writes"] == 150_000
    assert r1["rss_first_mark"] == 30 * MiB and r1["rss_end"] == 60 * MiB
    assert r1["rss_growth"] == 30 * MiB
    assert r2["rss_growth"] == -2 * MiB  # shrinking counts as such
    assert r1["dir_max"] == 9 * MiB and r1["dir_end"] == 7 * MiB
    assert r1["dir_first_mark"] == 9 * MiB
    assert r1["dir_max_over_live"] == 9.0
    assert out["rss_growth_max"] == 30 * MiB
    assert out["rss_end_max"] == 60 * MiB
    assert out["dir_max"] == 12 * MiB and out["dir_end_max"] == 12 * MiB
    assert out["dir_max_over_live"] == 12.0
    assert out["live_bytes"] == MiB


def test_summarize_skips_samples_of_a_replica_that_was_down():
    ser = series(
        rss1=[100, 200, 300, None],
        rss2=[100, None, 150, 160],
        dir1=[1, 2, None, None],
        dir2=[None, None, None, None],
        marks=[1],
    )
    out = summarize(ser, live=10)
    r1, r2 = out["replicas"]["1"], out["replicas"]["2"]
    assert r1["rss_end"] == 300 and r1["rss_growth"] == 100
    assert r2["rss_first_mark"] is None and r2["rss_growth"] is None
    assert r1["dir_end"] == 2 and r2["dir_max"] is None
    assert out["rss_growth_max"] == 100
    assert out["dir_max"] == 2


def test_summarize_without_a_mark():
    out = summarize(series([1, 2], [1, 2], [1, 2], [1, 2], marks=[]), live=0)
    assert out["first_mark_writes"] is None
    assert out["rss_growth_max"] is None
    assert out["dir_max_over_live"] is None


def test_count_options_take_suffixes():
    assert _int("100k") == 100_000 and _int("1m") == 1_000_000 and _int("5000") == 5000
    args = build_parser().parse_args(
        ["--scenarios", "footprint,catchup", "--footprint-writes", "200k",
         "--footprint-keys", "1k", "--catchup-store-keys", "100k", "--catchup-store-writes",
         "50k", "--etcd-auto-compaction", "periodic:30s"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.scenarios == ["footprint", "catchup"]
    assert cfg.footprint_writes == 200_000 and cfg.footprint_keys == 1000
    assert cfg.catchup_store_keys == 100_000 and cfg.catchup_store_writes == 50_000
    assert cfg.etcd_auto_compaction == "periodic:30s"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--etcd-auto-compaction", "hourly:1"])


def test_etcd_compaction_flags():
    from benchmarks.scenarios import SuiteConfig, etcd_compaction, make_cluster

    assert etcd_compaction("10000") == ("revision", "10000")
    assert etcd_compaction("periodic:30s") == ("periodic", "30s")
    cluster = make_cluster("etcd", 3, SuiteConfig(etcd_auto_compaction="revision:500"))
    assert cluster.extra_args == [
        "--auto-compaction-mode", "revision", "--auto-compaction-retention", "500",
    ]  # fmt: skip
    assert make_cluster("etcd", 3, SuiteConfig()).extra_args == []


def test_suites_size_the_footprint():
    def cfg(suite):
        return config_from_args(build_parser().parse_args(["--suite", suite]))

    assert cfg("full").footprint_writes == 1_000_000
    assert "footprint" in cfg("full").scenarios and cfg("full").catchup_store_keys == 100_000
    assert cfg("standard").footprint_writes == 200_000
    assert "footprint" not in cfg("standard").scenarios
    assert cfg("quick").footprint_writes == 50_000
    assert cfg("smoke").footprint_writes == 5_000


def doc_with_footprint(writes: int, keys: int = 1000) -> dict:
    MiB = 1024 * 1024
    cfg = config_from_args(build_parser().parse_args([])).to_dict()
    cfg.update(footprint_writes=writes, footprint_keys=keys)

    def system(growth_mib, restart):
        return {
            "status": "ok",
            "scenarios": {
                "footprint": {
                    "run": {"throughput": 1000.0},
                    "summary": {
                        "rss_first_mark_max": 40 * MiB,
                        "rss_end_max": (40 + growth_mib) * MiB,
                        "rss_growth_max": growth_mib * MiB,
                        "dir_max": 300 * MiB,
                        "dir_end_max": 290 * MiB,
                        "dir_max_over_live": 2833.9,
                    },
                    "restart": {"restart_to_first_write_s": restart},
                },
                "catchup_store": {
                    "restart_to_caught_up_s": 2.5,
                    "follower_dir_after_bytes": 50 * MiB,
                },
            },
        }

    return {
        "config": cfg,
        "systems": {"paxoskv": system(100, 3.0), "etcd": system(10, 0.5)},
    }


def test_table_rows_of_the_footprint():
    rows = {r["key"]: r for r in table_rows(doc_with_footprint(200_000))}
    assert rows["fp_rss_growth"]["values"] == {"paxoskv": 100.0, "etcd": 10.0}
    assert rows["fp_rss_growth"]["ratio"] is None  # a difference: no ratio
    assert rows["fp_rss_end"]["values"]["paxoskv"] == 140.0
    assert rows["fp_restart_s"]["ratio"] == pytest.approx(0.5 / 3.0)
    assert rows["fp_dir_max"]["values"]["etcd"] == 300.0
    assert rows["cu_store_s"]["values"]["paxoskv"] == 2.5
    assert rows["cu_store_dir"]["values"]["etcd"] == 50.0
    assert "RSS after 100,000 writes" in rows["fp_rss_first"]["label"]
    # the targets apply only to >= 1M overwrites of 1,000 keys
    assert rows["fp_rss_growth"]["target"] is None
    rows = {r["key"]: r for r in table_rows(doc_with_footprint(1_000_000))}
    assert rows["fp_rss_growth"]["target"] == ("<=", 20.0)
    assert rows["fp_rss_growth"]["met"] is False
    assert rows["fp_restart_s"]["met"] is False
    rows = {r["key"]: r for r in table_rows(doc_with_footprint(1_000_000, keys=100))}
    assert rows["fp_restart_s"]["target"] is None


def test_footprint_labels_fit_the_table_column():
    for r in table_rows(doc_with_footprint(1_000_000)):
        assert len(r["label"]) <= 43, r["label"]


def test_fresh_values_travel_to_the_workers():
    from benchmarks.driver import RunSpec
    from benchmarks.workload import WorkloadSpec

    spec = RunSpec("paxoskv", {1: "tcp://127.0.0.1:1"}, 1, 4, WorkloadSpec(fresh_values=True))
    assert RunSpec.from_dict(spec.to_dict()).workload.fresh_values is True
    assert WorkloadSpec().fresh_values is False
