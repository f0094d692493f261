"""The commit-path breakdown from the replicas' per-request trace (`--trace`).

With `--trace`, the harness starts the paxoskv replicas with
`--trace-every N`: each writes a record per N-th slot into its data
directory (replica/trace.py says what each mark means). After the run,
`collect` reads the files and `breakdown` joins each slot's leader record
with the record of the follower whose Phase2b completed the quorum, and
gives each stage's median and p90 in microseconds:

    leader: request batch -> slot proposed    parse, sessions, propose
    leader: proposed -> Phase2a handed over   encode, the early send
    to the follower                           ZeroMQ, the follower's loop
    follower: fsync of its vote
    follower: synced -> Phase2b handed over
    back to the leader                        ZeroMQ, the leader's loop
    leader: commit iteration's sync           (if the iteration synced)
    leader: apply
    leader: reply
    leader residence (first to last mark)

and, beside the path through the follower, the leader's own fsync
(Phase2a handed over -> own vote synced), which runs in parallel with it.
The stages of one slot add up to its residence; their medians need not.
The time before the leader's loop took the request (the client's send,
ZeroMQ, waiting for the loop's previous iteration) is the client's latency
minus the residence, reported as such when the caller passes the latency.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from replica.trace import TRACE_FILE

# (label, record of the mark before, mark before, record of the mark after, mark after)
STAGES: tuple[tuple[str, str, str, str, str], ...] = (
    ("leader: request batch -> slot proposed", "L", "start", "L", "proposed"),
    ("leader: proposed -> Phase2a handed over", "L", "proposed", "L", "sent"),
    ("to the follower (ZeroMQ, its loop)", "L", "sent", "F", "start"),
    ("follower: fsync of its vote", "F", "start", "F", "persisted"),
    ("follower: synced -> Phase2b handed over", "F", "persisted", "F", "sent"),
    ("back to the leader (ZeroMQ, its loop)", "F", "sent", "L", "p2b"),
    ("leader: commit iteration's sync", "L", "p2b", "L", "chosen_persisted"),
    ("leader: apply", "L", "chosen_persisted", "L", "applied"),
    ("leader: reply", "L", "applied", "L", "replied"),
)
PARALLEL = ("leader: own fsync (beside the path above)", "L", "sent", "L", "persisted")
RESIDENCE = ("leader residence (request batch -> reply)", "L", "start", "L", "replied")


def collect(data_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """Every trace record found in the data directories (none: tracing was off)."""
    records: list[dict[str, Any]] = []
    for path in data_dirs:
        file = Path(path) / TRACE_FILE
        if not file.exists():
            continue
        records.extend(_parse(file.read_text(encoding="utf-8", errors="replace")))
    return records


class Marks:
    """Where each replica's trace file ended when made: `since()` reads only
    the records written after, i.e. those of one run on a cluster that
    keeps tracing across runs."""

    def __init__(self, data_dirs: Iterable[Path]) -> None:
        self._files = [Path(d) / TRACE_FILE for d in data_dirs]
        self._offsets = [f.stat().st_size if f.exists() else 0 for f in self._files]

    def since(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for file, offset in zip(self._files, self._offsets, strict=True):
            if not file.exists():
                continue
            with file.open("rb") as fh:
                fh.seek(offset)
                records.extend(_parse(fh.read().decode("utf-8", "replace")))
        return records


def _parse(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a killed replica
    return records


def joined(records: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping, Mapping]]:
    """(leader record, follower record) per slot, the follower being the
    one whose Phase2b completed the quorum; slots without both are left out."""
    followers = {(r["replica"], r["slot"]): r for r in records if r.get("role") == "follower"}
    pairs = []
    for r in records:
        if r.get("role") != "leader" or "replied" not in r or "p2b_from" not in r:
            continue
        other = followers.get((r["p2b_from"], r["slot"]))
        if other is not None and "sent" in other:
            pairs.append((r, other))
    return pairs


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def breakdown(
    records: Sequence[Mapping[str, Any]], latency_p50_ms: float | None = None
) -> dict[str, Any]:
    """The stages' medians and p90s (us) over the joined slots; see the module doc."""
    pairs = joined(records)
    rows = []
    for label, rec_a, mark_a, rec_b, mark_b in (*STAGES, PARALLEL, RESIDENCE):
        spans = []
        for leader, follower in pairs:
            a = (leader if rec_a == "L" else follower).get(mark_a)
            b = (leader if rec_b == "L" else follower).get(mark_b)
            if a is not None and b is not None:
                spans.append((b - a) * 1e6)
        if spans:
            rows.append(
                {
                    "stage": label,
                    "p50_us": round(statistics.median(spans), 1),
                    "p90_us": round(_quantile(spans, 0.9), 1),
                }
            )
    result: dict[str, Any] = {
        "slots": len(pairs),
        "commands_per_slot": (
            round(statistics.mean(p[0].get("commands", 0) for p in pairs), 1) if pairs else 0
        ),
        "stages": rows,
    }
    residence = next((r for r in rows if r["stage"] == RESIDENCE[0]), None)
    if latency_p50_ms is not None and residence is not None:
        result["outside_leader_p50_us"] = round(latency_p50_ms * 1000 - residence["p50_us"], 1)
    return result


def render(result: Mapping[str, Any], title: str) -> str:
    """A text table of a `breakdown`."""
    lines = [
        f"{title}: commit path of {result['slots']} traced slots "
        f"({result['commands_per_slot']} commands per slot on average)",
        f"  {'stage':<48} {'p50 us':>9} {'p90 us':>9}",
    ]
    for row in result["stages"]:
        lines.append(f"  {row['stage']:<48} {row['p50_us']:>9.1f} {row['p90_us']:>9.1f}")
    if "outside_leader_p50_us" in result:
        lines.append(
            f"  {'client latency p50 - residence p50 (send, wait)':<48} "
            f"{result['outside_leader_p50_us']:>9.1f}"
        )
    return "\n".join(lines)
