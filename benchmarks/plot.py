"""The PNG of a suite: six panels, paxoskv and etcd side by side.

1. latency vs throughput over the client sweep (p50 solid, p99 dashed),
2. latency CDF of the sweep's 1-client and largest runs,
3. latency vs value size, 4. latency vs store size,
5. write throughput around the leader kill, 6. recovery-time bars (failover,
   catch-up, catch-up on a store, restart after the footprint writes).

With the footprint scenario a third row: 7. every replica's RSS and
8. data-directory size against the writes done (a line per replica, the
live data dotted), 9. the write rate over the run.

With the API scenarios (issue 14) a row more: range-scan latency (p50
bars, p99 ticks) per scan size and client count, transaction latency vs
throughput, and the CDF of the PUT-to-event latency of each watcher.
When only the footprint or only the API scenarios ran, the PNG is that
row (or those two rows) alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {"paxoskv": "#1f77b4", "etcd": "#d62728"}


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _systems(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, s["scenarios"])
        for name, s in doc["systems"].items()
        if s.get("status") == "ok" and s.get("scenarios")
    ]


def _plain_log(ax: Any, which: str = "both") -> None:
    """Log axes labelled 0.5, 1, 2, 5, 10 ... instead of 5x10^-1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:,.10g}" if v >= 1 else f"{v:.3g}")
    for axis in (
        (ax.xaxis, ax.yaxis) if which == "both" else ((ax.xaxis,) if which == "x" else (ax.yaxis,))
    ):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(fmt)
        axis.set_minor_formatter(NullFormatter())


def _legend(ax: Any, **kw: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, **kw)


def _bytes_log(ax: Any, sizes: list[int]) -> None:
    """Ticks at the measured value sizes, labelled 100 B, 1 KiB, ..."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    from benchmarks.scenarios import _size

    ax.xaxis.set_major_locator(FixedLocator(sorted(set(sizes))))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _size(int(round(v)))))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot(doc: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.histogram import Histogram

    systems = _systems(doc)
    with_fp = any(_footprint(sc) for _, sc in systems)
    m = doc.get("machine", {})
    cfg = doc.get("config", {})
    title = (
        f"paxoskv vs etcd: {cfg.get('replicas', 3)} replicas on one host, durable writes, "
        f"{cfg.get('value_size', 100)} B values, {cfg.get('keys', 0):,} keys "
        f"({m.get('cores', '?')} cores {m.get('cpu', '')}, fsync p50 "
        f"{m.get('fsync_ms', {}).get('p50', float('nan')):.2f} ms) - {doc.get('created', '')}"
    )
    with_api = any(_api(sc) for _, sc in systems)
    main = any(sc.get(k) for k in ("steady", "values", "store", "failover") for _, sc in systems)
    if (with_fp or with_api) and not main:
        # only the footprint (and catch-up) and/or the API scenarios ran:
        # their rows alone, no empty panels
        rows = int(with_fp) + int(with_api)
        cols = 4 if with_fp else 3
        fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 5.5 * rows), squeeze=False)
        fig.suptitle(title, fontsize=11)
        if with_fp:
            _plot_footprint(systems, axes[0][:3], cfg)
            _plot_bars(axes[0][3], systems, cfg)
        if with_api:
            _plot_api(systems, axes[rows - 1][:3], cfg)
            if cols == 4:
                axes[rows - 1][3].set_visible(False)
        return _save(fig, path, top=0.93 if rows == 1 else 0.95)
    rows = 2 + int(with_fp) + int(with_api)
    fig, axes = plt.subplots(rows, 3, figsize=(17, 4.75 * rows))
    (ax_lt, ax_cdf, ax_val), (ax_store, ax_fo, ax_bar) = axes[0], axes[1]
    fig.suptitle(title, fontsize=11)

    # 1. latency vs throughput
    for name, sc in systems:
        sweep = sc.get("steady", {}).get("sweep") if isinstance(sc.get("steady"), dict) else None
        if not sweep:
            continue
        x = [r["throughput"] for r in sweep]
        col = COLORS.get(name)
        ax_lt.plot(x, [r["latency_ms"]["p50"] for r in sweep], "o-", color=col, label=f"{name} p50")
        ax_lt.plot(
            x,
            [r["latency_ms"]["p99"] for r in sweep],
            "s--",
            color=col,
            alpha=0.7,
            label=f"{name} p99",
        )
        for r in sweep:
            ax_lt.annotate(
                f"{r['clients']}c",
                (r["throughput"], r["latency_ms"]["p50"]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=8,
                color=col,
            )
    ax_lt.set_yscale("log")
    _plain_log(ax_lt, "y")
    ax_lt.set_xlabel("throughput (ops/s)")
    ax_lt.set_ylabel("latency (ms, log)")
    ax_lt.set_title("latency vs throughput (closed loop, client sweep)")
    ax_lt.grid(True, which="both", alpha=0.3)
    _legend(ax_lt)

    # 2. CDF
    for name, sc in systems:
        steady = sc.get("steady")
        if not isinstance(steady, dict) or not steady.get("sweep"):
            continue
        runs = steady["sweep"]
        picks = [runs[0]] if len(runs) == 1 else [runs[0], runs[-1]]
        for r, style in zip(picks, ("-", "--"), strict=False):
            h = Histogram.from_dict(r["histogram"])
            pts = list(h.cdf())
            if not pts:
                continue
            xs = [v / 1e6 for v, _ in pts]
            ys = [f for _, f in pts]
            ax_cdf.step(
                xs,
                ys,
                style,
                where="post",
                color=COLORS.get(name),
                label=f"{name} {r['clients']} client(s)",
            )
    ax_cdf.set_xscale("log")
    _plain_log(ax_cdf, "x")
    ax_cdf.set_xlabel("latency (ms, log)")
    ax_cdf.set_ylabel("fraction of requests")
    ax_cdf.set_title("latency CDF (main workload)")
    ax_cdf.grid(True, which="both", alpha=0.3)
    _legend(ax_cdf, loc="lower right")

    # 3. value size
    for name, sc in systems:
        vals = sc.get("values")
        if not isinstance(vals, list) or not vals:
            continue
        xs = [r["value_size"] for r in vals]
        col = COLORS.get(name)
        ax_val.plot(
            xs, [r["latency_ms"]["p50"] for r in vals], "o-", color=col, label=f"{name} p50"
        )
        ax_val.plot(
            xs,
            [r["latency_ms"]["p99"] for r in vals],
            "s--",
            color=col,
            alpha=0.7,
            label=f"{name} p99",
        )
    ax_val.set_xscale("log")
    ax_val.set_yscale("log")
    _plain_log(ax_val, "y")
    _bytes_log(ax_val, cfg.get("value_sizes") or [100])
    ax_val.set_xlabel("value size (bytes, log)")
    ax_val.set_ylabel("PUT latency (ms, log)")
    ax_val.set_title(f"value size ({cfg.get('value_clients', 1)} client(s))")
    ax_val.grid(True, which="both", alpha=0.3)
    _legend(ax_val)

    # 4. store size
    for name, sc in systems:
        pts = sc.get("store")
        if not isinstance(pts, list) or not pts:
            continue
        xs = [p["keys"] for p in pts]
        col = COLORS.get(name)
        ax_store.plot(
            xs,
            [p["put"]["latency_ms"]["p50"] for p in pts],
            "o-",
            color=col,
            label=f"{name} PUT p50",
        )
        ax_store.plot(
            xs,
            [p["get"]["latency_ms"]["p50"] for p in pts],
            "^:",
            color=col,
            label=f"{name} GET p50",
        )
        ax_store.plot(
            xs,
            [p["put"]["latency_ms"]["p99"] for p in pts],
            "s--",
            color=col,
            alpha=0.5,
            label=f"{name} PUT p99",
        )
    ax_store.set_xscale("log")
    ax_store.set_yscale("log")
    _plain_log(ax_store)
    ax_store.set_xlabel("keys in the store (log)")
    ax_store.set_ylabel("latency (ms, log)")
    ax_store.set_title(f"store size ({cfg.get('store_clients', 16)} clients)")
    ax_store.grid(True, which="both", alpha=0.3)
    _legend(ax_store)

    # 5. failover timeline
    for name, sc in systems:
        fo = sc.get("failover")
        if not isinstance(fo, dict) or "timeline" not in fo:
            continue
        tl = fo["timeline"]
        xs = [tl["t0_rel_kill_s"] + i * tl["bin_s"] for i in range(len(tl["rates"]))]
        lab = name
        if fo.get("unavailable_s") is not None:
            lab += f" (unavailable {fo['unavailable_s']:.2f} s)"
        ax_fo.step(xs, tl["rates"], where="post", color=COLORS.get(name), label=lab)
    ax_fo.axvline(0, color="k", lw=1, ls=":")
    ax_fo.set_xlabel("seconds since kill -9 of the leader")
    ax_fo.set_ylabel("completed writes/s (100 ms bins)")
    ax_fo.set_title(f"failover ({cfg.get('failover_clients', 16)} writing clients)")
    ax_fo.grid(True, alpha=0.3)
    _legend(ax_fo)

    # 6. bars: catch-up and failover times
    _plot_bars(ax_bar, systems, cfg)

    if with_fp:
        _plot_footprint(systems, axes[2], cfg)
    if with_api:
        _plot_api(systems, axes[rows - 1], cfg)

    return _save(fig, path, top=0.96 if rows == 2 else 0.97)


def _save(fig: Any, path: Path, top: float) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout(rect=(0, 0, 1, top))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_bars(ax_bar: Any, systems: list[tuple[str, dict[str, Any]]], cfg: dict) -> None:
    """Recovery times: failover, catch-up (both variants), restart after the
    footprint writes; a group per scenario that ran."""
    labels, groups = [], {}
    bars_spec = [
        ("failover", "unavailable_s", "failover\nunavailability"),
        (
            "catchup",
            "restart_to_caught_up_s",
            f"catch-up after\n{cfg.get('catchup_writes', 0):,} writes",
        ),
        (
            "catchup_store",
            "restart_to_caught_up_s",
            f"catch-up, {_count(cfg.get('catchup_store_keys', 0))}\n"
            f"keys +{_count(cfg.get('catchup_store_writes', 0))} writes",
        ),
        ("footprint", "restart", f"restart after\n{_count(cfg.get('footprint_writes', 0))} writes"),
    ]
    present = [b for b in bars_spec if any(isinstance(sc.get(b[0]), dict) for _, sc in systems)]
    for name, sc in systems:
        vals = []
        for scen, key, _ in present:
            d = sc.get(scen) if isinstance(sc.get(scen), dict) else {}
            if key == "restart":
                d, key = d.get("restart") or {}, "restart_to_first_write_s"
            vals.append(d.get(key))
        groups[name] = vals
    labels = [b[2] for b in present]
    width = 0.8 / max(1, len(groups))
    for k, (name, vals) in enumerate(groups.items()):
        xs = [i + (k - (len(groups) - 1) / 2) * width for i in range(len(labels))]
        hs = [v if v is not None else 0 for v in vals]
        bars = ax_bar.bar(xs, hs, width, color=COLORS.get(name), label=name)
        for b, v in zip(bars, vals, strict=False):
            ax_bar.annotate(
                "n/a" if v is None else f"{v:.2f}s",
                (b.get_x() + b.get_width() / 2, b.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax_bar.set_xticks(range(len(labels)), labels, fontsize=8)
    ax_bar.set_ylabel("seconds")
    ax_bar.set_title("recovery times (lower is better)")
    ax_bar.grid(True, axis="y", alpha=0.3)
    if groups:
        ax_bar.legend(fontsize=8)


def _count(n: int) -> str:
    """12000 -> 12k, 1000000 -> 1M (bar labels)."""
    if n >= 1_000_000 and n % 100_000 == 0:
        return f"{n / 1_000_000:g}M"
    if n >= 1000 and n % 100 == 0:
        return f"{n / 1000:g}k"
    return f"{n:,}"


def _footprint(sc: dict[str, Any]) -> dict[str, Any] | None:
    fp = sc.get("footprint")
    return fp if isinstance(fp, dict) and fp.get("series") else None


_REPLICA_STYLES = ("-", "--", ":", "-.", (0, (5, 1)))


def _plot_footprint(systems: list[tuple[str, dict[str, Any]]], axes: Any, cfg: dict) -> None:
    """7. RSS and 8. data-directory size vs writes (a line per replica),
    9. the write rate between samples."""
    ax_rss, ax_dir, ax_rate = axes
    mib = 1024 * 1024
    live = None
    for name, sc in systems:
        fp = _footprint(sc)
        if fp is None:
            continue
        ser = fp["series"]
        xs = ser["writes"]
        col = COLORS.get(name)
        live = (fp.get("summary") or {}).get("live_bytes") or live
        for k, rid in enumerate(sorted(ser["rss_bytes"], key=int)):
            style = _REPLICA_STYLES[k % len(_REPLICA_STYLES)]
            for ax, key in ((ax_rss, "rss_bytes"), (ax_dir, "dir_bytes")):
                pts = [(x, v / mib) for x, v in zip(xs, ser[key][rid], strict=False) if v]
                if pts:
                    ax.plot(*zip(*pts, strict=True), ls=style, color=col, label=f"{name} r{rid}")
        rate = [
            (xs[i], (xs[i] - xs[i - 1]) / (ser["t_s"][i] - ser["t_s"][i - 1]))
            for i in range(1, len(xs))
            if ser["t_s"][i] > ser["t_s"][i - 1] and xs[i] > xs[i - 1]
        ]
        if rate:
            ax_rate.plot(*zip(*rate, strict=True), color=col, label=name)
        restart = (fp.get("restart") or {}).get("restart_to_first_write_s")
        if restart is not None and xs:
            ax_rss.annotate(
                f"{name}: restart {restart:.2f} s",
                (xs[-1], (fp["summary"].get("rss_end_max") or 0) / mib),
                textcoords="offset points",
                xytext=(-110, 6),
                fontsize=8,
                color=col,
            )
    ax_dir.set_yscale("log")
    _plain_log(ax_dir, "y")
    if live:
        ax_dir.axhline(live / mib, color="k", ls=":", lw=1, label="live data")
        ax_dir.set_ylim(bottom=live / mib / 2)
    writes = f"overwrites of {cfg.get('footprint_keys', 0):,} keys"
    ax_rss.set_title(f"footprint: RSS per replica ({writes})")
    ax_rss.set_ylabel("RSS (MiB)")
    ax_dir.set_title("footprint: data directory per replica")
    ax_dir.set_ylabel("sum of file sizes (MiB, log)")
    ax_rate.set_title("footprint: write rate")
    ax_rate.set_ylabel("writes/s between samples")
    from matplotlib.ticker import FuncFormatter

    thousands = FuncFormatter(lambda v, _: f"{v / 1000:,.0f}k" if v >= 1000 else f"{v:.0f}")
    for ax in axes:
        ax.xaxis.set_major_formatter(thousands)
        ax.set_xlabel("writes done")
        ax.grid(True, alpha=0.3)
        ax.set_xlim(left=0)
        _legend(ax, ncols=2)


def _api(sc: dict[str, Any]) -> bool:
    return any(isinstance(sc.get(k), dict) for k in ("range", "txn", "watch"))


def _plot_api(systems: list[tuple[str, dict[str, Any]]], axes: Any, cfg: dict) -> None:
    """Issue 14: range scans (p50 bars, p99 ticks, log), transactions
    (latency vs throughput over the client counts), watch latency CDFs."""
    from benchmarks.histogram import Histogram

    ax_rng, ax_txn, ax_w = axes
    # range scans: a group per (size, clients), a bar per system
    points = sorted(
        {
            (r["keys_per_scan"], r["clients"])
            for _, sc in systems
            for r in (sc.get("range") or {}).get("runs", [])
            if isinstance(sc.get("range"), dict)
        }
    )
    width = 0.8 / max(1, len(systems))
    for k, (name, sc) in enumerate(systems):
        runs = (sc.get("range") or {}).get("runs", []) if isinstance(sc.get("range"), dict) else []
        by = {(r["keys_per_scan"], r["clients"]): r for r in runs if r["ops"]}
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(points))]
        p50 = [by[p]["latency_ms"]["p50"] if p in by else 0 for p in points]
        p99 = [by[p]["latency_ms"]["p99"] if p in by else float("nan") for p in points]
        ax_rng.bar(xs, p50, width, color=COLORS.get(name), label=f"{name} p50")
        ax_rng.plot(xs, p99, "_", ms=14, mew=2, color="k", alpha=0.6)
    if points:
        ax_rng.set_xticks(
            range(len(points)), [f"{n:,} keys\n{c} cl." for n, c in points], fontsize=8
        )
        ax_rng.set_yscale("log")
        _plain_log(ax_rng, "y")
    ax_rng.set_ylabel("scan latency (ms, log; tick: p99)")
    ax_rng.set_title("linearizable range scans (every page)")
    ax_rng.grid(True, axis="y", which="both", alpha=0.3)
    _legend(ax_rng)
    # transactions: latency vs throughput
    for name, sc in systems:
        runs = (sc.get("txn") or {}).get("runs", []) if isinstance(sc.get("txn"), dict) else []
        runs = [r for r in runs if r["ops"]]
        if not runs:
            continue
        col = COLORS.get(name)
        x = [r["throughput"] for r in runs]
        ax_txn.plot(x, [r["latency_ms"]["p50"] for r in runs], "o-", color=col, label=f"{name} p50")
        ax_txn.plot(
            x, [r["latency_ms"]["p99"] for r in runs], "s--", color=col, alpha=0.7,
            label=f"{name} p99",
        )  # fmt: skip
        for r in runs:
            ax_txn.annotate(
                f"{r['clients']}c", (r["throughput"], r["latency_ms"]["p50"]),
                textcoords="offset points", xytext=(4, -10), fontsize=8, color=col,
            )  # fmt: skip
    ax_txn.set_yscale("log")
    _plain_log(ax_txn, "y")
    ax_txn.set_xlabel("transactions/s")
    ax_txn.set_ylabel("latency (ms, log)")
    ax_txn.set_title("2-key transactions (compare versions, put both)")
    ax_txn.grid(True, which="both", alpha=0.3)
    _legend(ax_txn)
    # watch: CDF of PUT-to-event latency per watcher
    for name, sc in systems:
        w = sc.get("watch") if isinstance(sc.get("watch"), dict) else {}
        watchers = (w.get("watchers") or {}).items()
        for (where, info), style in zip(watchers, ("-", "--"), strict=False):
            pts = list(Histogram.from_dict(info["histogram"]).cdf())
            if pts:
                ax_w.step(
                    [v / 1e6 for v, _ in pts], [f for _, f in pts], style, where="post",
                    color=COLORS.get(name), label=f"{name}, watcher on the {where}",
                )  # fmt: skip
    ax_w.set_xscale("log")
    _plain_log(ax_w, "x")
    ax_w.set_xlabel("PUT sent to event received (ms, log)")
    ax_w.set_ylabel("fraction of events")
    ax_w.set_title(f"watch latency ({cfg.get('watch_rate', 0):g} PUTs/s on a prefix)")
    ax_w.grid(True, which="both", alpha=0.3)
    _legend(ax_w, loc="lower right")
