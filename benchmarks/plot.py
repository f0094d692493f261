"""The PNG of a suite: six panels, paxoskv and etcd side by side.

1. latency vs throughput over the client sweep (p50 solid, p99 dashed),
2. latency CDF of the sweep's 1-client and largest runs,
3. latency vs value size, 4. latency vs store size,
5. write throughput around the leader kill, 6. catch-up and failover bars.
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
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    (ax_lt, ax_cdf, ax_val), (ax_store, ax_fo, ax_bar) = axes
    m = doc.get("machine", {})
    cfg = doc.get("config", {})
    fig.suptitle(
        f"paxoskv vs etcd: {cfg.get('replicas', 3)} replicas on one host, durable writes, "
        f"{cfg.get('value_size', 100)} B values, {cfg.get('keys', 0):,} keys "
        f"({m.get('cores', '?')} cores {m.get('cpu', '')}, fsync p50 "
        f"{m.get('fsync_ms', {}).get('p50', float('nan')):.2f} ms) - {doc.get('created', '')}",
        fontsize=11,
    )

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
    labels, groups = [], {}
    for name, sc in systems:
        fo = sc.get("failover") if isinstance(sc.get("failover"), dict) else {}
        cu = sc.get("catchup") if isinstance(sc.get("catchup"), dict) else {}
        groups[name] = [fo.get("unavailable_s"), cu.get("restart_to_caught_up_s")]
    labels = [
        "failover\nunavailability",
        f"catch-up after\n{cfg.get('catchup_writes', 0):,} writes",
    ]
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
    ax_bar.set_xticks(range(len(labels)), labels)
    ax_bar.set_ylabel("seconds")
    ax_bar.set_title("recovery times (lower is better)")
    ax_bar.grid(True, axis="y", alpha=0.3)
    if groups:
        ax_bar.legend(fontsize=8)

    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
