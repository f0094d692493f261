"""The CPU a write costs the cluster, split into what every write costs and
what every slot (one Paxos instance, one group commit) costs.

For each run of paxoskv, `SystemRunner._run` (benchmarks/scenarios.py)
reads the leader's STATUS before and after: `commit_index` counts the slots
chosen in between and `revision` the writes applied (a PUT, DELETE or
successful CAS adds one). With the cluster's CPU seconds over the same
window (`server_cpu_s`), each run of the PUT sweep gives its writes per
slot and its CPU per write and per slot, and the busy runs fit

    cpu_seconds = a x writes + b x slots

by least squares: `a` is the CPU of one write wherever it is spent (parse,
apply and answer on the leader, the effects on each follower, LevelDB, the
ZeroMQ I/O threads), `b` that of one slot (messages, loop iterations,
one fsync per replica). The CPU per write at a batch of k writes per slot is
then about a + b / k: batching pays off b, and nothing pays off a. The
lowest CPU per write of the sweep is reported beside the fit, and issue
13's target of 100 us per write at 64 clients is a row of the table.
"""

from __future__ import annotations

from typing import Any

Point = dict[str, float]


def commit_counters(status: dict[str, Any] | None) -> tuple[int, int] | None:
    """(commit_index, revision) of a STATUS reply, or None."""
    if not isinstance(status, dict):
        return None
    ci, rev = status.get("commit_index"), status.get("revision")
    if type(ci) is not int or type(rev) is not int:
        return None
    return ci, rev


def commit_delta(
    before: tuple[int, int] | None, after: tuple[int, int] | None
) -> dict[str, int] | None:
    """{"slots", "writes"} between two readings of the same leader, or None
    (a reading missing, or counters that went back: another leader's)."""
    if before is None or after is None:
        return None
    slots, writes = after[0] - before[0], after[1] - before[1]
    if slots < 0 or writes < 0:
        return None
    return {"slots": slots, "writes": writes}


def points(runs: list[dict[str, Any]] | None) -> list[Point]:
    """One point per run that has what the fit needs: clients, wall,
    cpu (seconds of the whole cluster), writes and slots."""
    out: list[Point] = []
    for r in runs or []:
        commit = r.get("commit")
        cpu = r.get("server_cpu_s")
        wall = r.get("wall_s")
        if not isinstance(commit, dict) or not isinstance(cpu, dict) or not cpu or not wall:
            continue
        writes, slots = commit.get("writes") or 0, commit.get("slots") or 0
        if writes <= 0 or slots <= 0:
            continue
        out.append(
            {
                "clients": float(r.get("clients") or 0),
                "wall": float(wall),
                "cpu": float(sum(cpu.values())),
                "writes": float(writes),
                "slots": float(slots),
            }
        )
    return out


BUSY_WRITES_PER_SLOT = 4.0
"""The fit uses the runs with at least this many writes per slot: at fewer,
the loops sleep between slots and every wake-up costs more (cold caches:
benchmarks/README.md, "Session 11"), which a linear model does not describe."""


def fit(pts: list[Point]) -> dict[str, float] | None:
    """Least squares of cpu = a x writes + b x slots over the busy points
    (BUSY_WRITES_PER_SLOT); None with fewer than 2 of them at different
    writes per slot, or a fit that is not physical (a negative cost). The
    residuals are relative (each point weighted by 1 / cpu squared), so that
    the runs that burn less CPU count as much as the busy ones."""
    busy = [p for p in pts if p["writes"] >= BUSY_WRITES_PER_SLOT * p["slots"]]
    sww = sws = sss = swc = ssc = 0.0
    for p in busy:
        w = 1.0 / max(p["cpu"], 1e-9) ** 2
        sww += w * p["writes"] ** 2
        sws += w * p["writes"] * p["slots"]
        sss += w * p["slots"] ** 2
        swc += w * p["writes"] * p["cpu"]
        ssc += w * p["slots"] * p["cpu"]
    det = sww * sss - sws * sws
    if len(busy) < 2 or det <= 1e-9 * sww * sss:
        return None
    a = (swc * sss - ssc * sws) / det
    b = (sww * ssc - sws * swc) / det
    if a <= 0 or b < 0:
        return None
    return {"us_per_write": a * 1e6, "us_per_slot": b * 1e6, "runs": float(len(busy))}


def summary(runs: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The per-run figures and the fit, for the JSON and the report."""
    pts = points(runs)
    if not pts:
        return None
    rows = [
        {
            "clients": int(p["clients"]),
            "writes_per_slot": round(p["writes"] / p["slots"], 2),
            "us_per_write": round(p["cpu"] / p["writes"] * 1e6, 1),
            "us_per_slot": round(p["cpu"] / p["slots"] * 1e6, 1),
            "cores": round(p["cpu"] / p["wall"], 3),
        }
        for p in pts
    ]
    floor = min(rows, key=lambda r: r["us_per_write"])
    result: dict[str, Any] = {"runs": rows, "floor": floor, "fit": None}
    f = fit(pts)
    if f is not None:
        result["fit"] = {k: round(v, 1) for k, v in f.items()}
    return result


def render(s: dict[str, Any], title: str = "paxoskv") -> str:
    lines = [
        f"{title}: CPU of the cluster across the PUT sweep (whole runs, warm-up included)",
        f"  {'clients':>7}  {'writes/slot':>11}  {'us/write':>9}  {'us/slot':>9}  {'cores':>6}",
    ]
    for r in s["runs"]:
        lines.append(
            f"  {r['clients']:>7}  {r['writes_per_slot']:>11.1f}  {r['us_per_write']:>9,.0f}"
            f"  {r['us_per_slot']:>9,.0f}  {r['cores']:>6.2f}"
        )
    lo = s["floor"]
    lines.append(
        f"  lowest: {lo['us_per_write']:,.0f} us per write, at {lo['clients']} clients"
        f" ({lo['writes_per_slot']:.1f} writes per slot)"
    )
    f = s.get("fit")
    if f is None:
        lines.append(
            f"  fit: needs 2 or more runs of >= {BUSY_WRITES_PER_SLOT:g} writes per slot"
            " at different batches"
        )
    else:
        lines.append(
            f"  fit cpu = a x writes + b x slots over the {f['runs']:.0f} runs of >="
            f" {BUSY_WRITES_PER_SLOT:g} writes per slot: a = {f['us_per_write']:,.0f} us per"
            f" write, b = {f['us_per_slot']:,.0f} us per slot"
        )
        lines.append(
            "  (per write at k writes per slot: about a + b / k; batching pays off b, not a)"
        )
    return "\n".join(lines)
