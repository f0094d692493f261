"""Cluster addresses: the TOML cluster config file and `host:port` lists.

One small module in kvstore/ (both replica/ and client/ depend on kvstore,
never on each other), read by both sides: the replica server loads the cluster
config file (docs/CONTRACTS.md, "Cluster config file") to learn its own bind
addresses (and metrics address) and its peers, and its optional
`[compaction]`, `[sessions]`, `[timing]`, `[metrics]`, `[watch]` and
`[storage]` tables; the client and kvctl parse `host:port,host:port` lists
(the client ports) and the local-cluster tool writes the config file.

Addresses are kept in ZeroMQ endpoint form, `tcp://host:port`. A bare
`host:port` is accepted wherever a user types an address and is normalized.
Every problem raises `ConfigError` with a message that names the culprit.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvstore.events import WATCH_RETAIN_BYTES, WATCH_RETAIN_EVENTS
from kvstore.limits import SESSION_TTL_MS
from kvstore.values import VALUE_LOG_MIN_BYTES

ENV_CLUSTER = "KVSTORE_CLUSTER"
DEFAULT_CLUSTER = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
_SCHEME = "tcp://"


class ConfigError(ValueError):
    """A cluster config file or address list that cannot be used."""


@dataclass(frozen=True, slots=True)
class ReplicaAddress:
    """Where one replica is reached and what it binds.

    `peer` and `client` are the addresses others connect to (the peer port
    and the client port); `peer_bind` and `client_bind` are what the replica
    itself binds (they differ from the former behind NAT or docker, e.g.
    `tcp://*:7101`). `metrics`, if set, is the `host:port` where the replica
    serves HTTP metrics and health checks (replica/metrics.py); `*` as the
    host means every interface.
    """

    id: int
    peer: str
    client: str
    peer_bind: str
    client_bind: str
    metrics: str | None = None


def normalize_address(text: str, *, allow_wildcard: bool = False) -> str:
    """Returns `tcp://host:port` for `host:port` or `tcp://host:port`.

    `allow_wildcard` accepts `*` as the host (bind addresses only)."""
    raw = text.strip()
    rest = raw[len(_SCHEME) :] if raw.startswith(_SCHEME) else raw
    if "://" in rest:
        raise ConfigError(f"address {text!r}: only tcp:// is supported")
    host, sep, port = rest.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"address {text!r} is not host:port")
    if host == "*" and not allow_wildcard:
        raise ConfigError(f"address {text!r}: '*' is only valid in a bind address")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"address {text!r}: port must be a number in 1..65535")
    return f"{_SCHEME}{host}:{int(port)}"


def parse_http_address(text: str) -> tuple[str, int]:
    """`host:port` (`*` or an empty host: every interface; `[v6]:port`)
    -> (host, port) for an HTTP server to bind; "" is every interface."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or "://" in text:
        raise ConfigError(f"address {text!r} is not host:port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"address {text!r}: port must be a number in 1..65535")
    host = "" if host in ("", "*") else host.strip("[]")
    return host, int(port)


def display_address(address: str) -> str:
    """`tcp://host:port` -> `host:port`, for messages and tables."""
    return address[len(_SCHEME) :] if address.startswith(_SCHEME) else address


def parse_cluster_addresses(spec: str | Sequence[str] | None = None) -> list[str]:
    """Parses a client address list into `tcp://host:port` endpoints.

    `spec` is a comma (or space) separated string, a sequence of addresses,
    or None for the environment variable KVSTORE_CLUSTER, else the default
    local cluster (127.0.0.1:7001..7003)."""
    if spec is None:
        spec = os.environ.get(ENV_CLUSTER) or DEFAULT_CLUSTER
    if isinstance(spec, str):
        items = spec.replace(",", " ").split()
    else:
        items = [item for item in spec if item.strip()]
    if not items:
        raise ConfigError("the cluster address list is empty")
    addresses = [normalize_address(item) for item in items]
    if len(set(addresses)) != len(addresses):
        raise ConfigError(f"the cluster address list repeats an address: {spec!r}")
    return addresses


def _load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read cluster config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cluster config {path} is not valid TOML: {exc}") from None


def load_cluster_config(path: str | os.PathLike[str]) -> list[ReplicaAddress]:
    """Reads a cluster config file; returns the replicas in file order."""
    doc = _load_toml(path)
    entries = doc.get("replica")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"cluster config {path} has no [[replica]] tables")
    replicas = [_parse_replica(entry, n, path) for n, entry in enumerate(entries, 1)]
    seen: set[int] = set()
    for replica in replicas:
        if replica.id in seen:
            raise ConfigError(f"cluster config {path}: replica id {replica.id} appears twice")
        seen.add(replica.id)
    return replicas


def _parse_replica(entry: object, n: int, path: object) -> ReplicaAddress:
    where = f"cluster config {path}, replica #{n}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(entry) - {"id", "peer", "client", "peer_bind", "client_bind", "metrics"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    rid = entry.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool) or rid < 1:
        raise ConfigError(f"{where}: id must be an integer >= 1")
    fields: dict[str, str] = {}
    for name in ("peer", "client", "peer_bind", "client_bind"):
        value = entry.get(name)
        if value is None and name.endswith("_bind"):
            value = fields[name.removesuffix("_bind")]
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {name} must be a string like 'tcp://host:port'")
        try:
            fields[name] = normalize_address(value, allow_wildcard=name.endswith("_bind"))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {name}: {exc}") from None
    metrics = entry.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, str):
            raise ConfigError(f"{where}: metrics must be a string like '127.0.0.1:9101'")
        try:
            parse_http_address(metrics)
        except ConfigError as exc:
            raise ConfigError(f"{where}: metrics: {exc}") from None
    return ReplicaAddress(id=rid, **fields, metrics=metrics)


def dump_cluster_config(replicas: Sequence[ReplicaAddress]) -> str:
    """The TOML text of a cluster config (bind addresses only when they
    differ from the connect addresses)."""
    lines = ["# Cluster config: see docs/CONTRACTS.md", ""]
    for r in replicas:
        lines += ["[[replica]]", f"id = {r.id}", f'peer = "{r.peer}"', f'client = "{r.client}"']
        if r.peer_bind != r.peer:
            lines.append(f'peer_bind = "{r.peer_bind}"')
        if r.client_bind != r.client:
            lines.append(f'client_bind = "{r.client_bind}"')
        if r.metrics is not None:
            lines.append(f'metrics = "{r.metrics}"')
        lines.append("")
    return "\n".join(lines)


def write_cluster_config(path: str | os.PathLike[str], replicas: Sequence[ReplicaAddress]) -> None:
    """Writes the config file atomically (a reader never sees half a file)."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(dump_cluster_config(replicas), encoding="utf-8")
    os.replace(tmp, target)


def local_cluster_config(
    replicas: int, *, host: str = "127.0.0.1", base_port: int = 7001, peer_base_port: int = 7101
) -> list[ReplicaAddress]:
    """Replicas 1..n on one host: client ports base_port.., peer ports
    peer_base_port..; each binds exactly the address it is reached at."""
    result = []
    for i in range(replicas):
        peer = normalize_address(f"{host}:{peer_base_port + i}")
        client = normalize_address(f"{host}:{base_port + i}")
        result.append(ReplicaAddress(i + 1, peer, client, peer, client))
    return result


@dataclass(frozen=True, slots=True)
class CompactionSettings:
    """When a replica compacts its log, and how it streams snapshots: the
    optional `[compaction]` table of the cluster config file. Each replica
    decides on its own (nothing here must be equal across replicas)."""

    log_slots: int = 1_000
    """Compact once this many applied slots beyond the retained tail are held."""
    log_bytes: int = 4 * 1024 * 1024
    """... or once the applied commands held reach this many bytes beyond
    `retained_bytes` (the tail a compaction keeps)."""
    retained_slots: int = 1_000
    """Applied slots kept below the applied index, for cheap catch-up by log."""
    retained_bytes: int = 4 * 1024 * 1024
    """... but never more than this many bytes of them."""
    snapshot_chunk_bytes: int = 1024 * 1024
    """The most one snapshot chunk carries (at least one key)."""


_COMPACTION_FIELDS = {f: int for f in CompactionSettings.__slots__}


def load_compaction_settings(path: str | os.PathLike[str]) -> CompactionSettings:
    """The `[compaction]` table of a cluster config file (defaults for what
    it omits; no table: all defaults)."""
    doc = _load_toml(path)
    table = doc.get("compaction", {})
    where = f"cluster config {path}, [compaction]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(table) - set(_COMPACTION_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    for name, value in table.items():
        least = 0 if name.startswith("retained") else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ConfigError(f"{where}: {name} must be an integer >= {least}")
    return CompactionSettings(**table)


MAX_SESSION_TTL_SECONDS = 2**32
"""The largest `[sessions]` ttl_seconds accepted (about 136 years)."""


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Client sessions: the optional `[sessions]` table of the cluster config
    file. The leader stamps its TTL into every clock command it proposes,
    and the state machine adopts it from the log, so the setting of the
    replica that leads applies to the whole cluster (and changes with the
    leader): give every replica the same value."""

    ttl_seconds: int = SESSION_TTL_MS // 1000
    """A client session idle for longer than this (log time) is forgotten."""

    @property
    def ttl_ms(self) -> int:
        return self.ttl_seconds * 1000


def load_session_settings(path: str | os.PathLike[str]) -> SessionSettings:
    """The `[sessions]` table of a cluster config file (no table, or no
    ttl_seconds in it: the default, SESSION_TTL_MS)."""
    doc = _load_toml(path)
    table = doc.get("sessions", {})
    where = f"cluster config {path}, [sessions]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(table) - {"ttl_seconds"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    ttl = table.get("ttl_seconds", SessionSettings().ttl_seconds)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_SESSION_TTL_SECONDS:
        raise ConfigError(
            f"{where}: ttl_seconds must be an integer from 1 to {MAX_SESSION_TTL_SECONDS} "
            f"(seconds), got {ttl!r}"
        )
    return SessionSettings(ttl)


def _int_table(path: str | os.PathLike[str], name: str, fields: dict[str, int]) -> dict[str, int]:
    """The optional table `name`: known integer fields, each >= its least."""
    table = _load_toml(path).get(name, {})
    where = f"cluster config {path}, [{name}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(table) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    for key, value in table.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < fields[key]:
            raise ConfigError(f"{where}: {key} must be an integer >= {fields[key]}, got {value!r}")
    return table


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """The optional `[metrics]` table: how the HTTP health checks judge
    (replica/metrics.py). Each replica reads it for itself."""

    ready_max_lag: int = 1000
    """`/ready` answers 503 while this replica's applied index is more than
    this many slots behind the commit index its leader announced."""


def load_metrics_settings(path: str | os.PathLike[str]) -> MetricsSettings:
    """The `[metrics]` table of a cluster config file (defaults for what it omits)."""
    return MetricsSettings(**_int_table(path, "metrics", {"ready_max_lag": 0}))


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """The optional `[watch]` table: how much of its event log each replica
    keeps for watchers resuming from a revision (kvstore/events.py); each
    replica reads it for itself."""

    retain_events: int = WATCH_RETAIN_EVENTS
    retain_bytes: int = WATCH_RETAIN_BYTES


def load_watch_settings(path: str | os.PathLike[str]) -> WatchSettings:
    """The `[watch]` table of a cluster config file (defaults for what it omits)."""
    fields = {"retain_events": 1, "retain_bytes": 1}
    return WatchSettings(**_int_table(path, "watch", fields))


WRITE_BUFFER_BYTES = 4 << 20
"""LevelDB's memtable and log file size by default (LevelDB's own default).
Issue 11 had set 1 MiB, to keep the data directory closer to the live data;
but a value written three times (vote, record, watch event) filled it
every few large PUTs, and writes waited for its flushes: 100 KiB and 1 MiB
PUTs took about twice as long (benchmarks/README.md, "Speed"). With 4 MiB,
1M overwrites of 1,000 keys peaked at 14.7-21.8 MiB of data directory.
A store written with large values for long is faster with more
(`[storage]` `write_buffer_bytes`, README "Configuration")."""
VOTE_LOG_MIN_BYTES = 1
"""Votes of commands this large and up go to the vote log (`[storage]`
vote_log_min_bytes): with 1, every vote of a write. Small votes in
LevelDB cost its background thread ~1-2 us per write per replica more at
64 clients, and the 64-client p99 ~1-4 ms (benchmarks/README.md,
"Session 15"); until session 15 the value log's threshold applied."""
MIN_WRITE_BUFFER_BYTES = 64 << 10
MAX_WRITE_BUFFER_BYTES = 1 << 30
"""LevelDB's own bounds of the write buffer (it clamps to them silently;
the config file is refused outside them instead)."""


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """The optional `[storage]` table: how a replica opens its LevelDB
    (replica/server.py). Each replica reads it for itself; it takes effect
    at the replica's next start and changes nothing on disk."""

    write_buffer_bytes: int = WRITE_BUFFER_BYTES
    """LevelDB's memtable (and log file) size. Larger: fewer flushes and
    fewer compactions that rewrite the live records, so a store written
    with values of ~100 KiB and up for long writes faster (100 KiB PUTs
    over 100 keys, one client, 20 s: p50 3.4-3.8 ms with 16 MiB against
    5.2-7.3 with 4 MiB, benchmarks/README.md "Session 12"); the data
    directory and the RSS grow by up to about twice the difference (the
    log and the memtable being flushed)."""
    value_log_min_bytes: int = VALUE_LOG_MIN_BYTES
    """A PUT's value of at least this many bytes is kept in the replica's
    value log beside LevelDB (kvstore/values.py), its record holding a
    reference: written once instead of again at every LevelDB compaction.
    0 keeps every value in LevelDB. Changing it affects new writes only:
    values already written stay where they are, and both kinds are read."""
    vote_log_min_bytes: int = VOTE_LOG_MIN_BYTES
    """A vote whose value holds a command of at least this many bytes is
    synced in the replica's vote log (replica/storage.py) instead of its
    LevelDB: written once and deleted a segment at a time after log
    compaction, not again by LevelDB's memtable flushes and compactions.
    1 (the default) sends every vote of commands there; 0 keeps every vote
    in LevelDB. Votes already written are read from both, whatever it is."""


def load_storage_settings(path: str | os.PathLike[str]) -> StorageSettings:
    """The `[storage]` table of a cluster config file (defaults for what it omits)."""
    table = _int_table(
        path,
        "storage",
        {
            "write_buffer_bytes": MIN_WRITE_BUFFER_BYTES,
            "value_log_min_bytes": 0,
            "vote_log_min_bytes": 0,
        },
    )
    size = table.get("write_buffer_bytes", WRITE_BUFFER_BYTES)
    if size > MAX_WRITE_BUFFER_BYTES:
        raise ConfigError(
            f"cluster config {path}, [storage]: write_buffer_bytes must be at most "
            f"{MAX_WRITE_BUFFER_BYTES} (1 GiB), got {size}"
        )
    return StorageSettings(
        size,
        table.get("value_log_min_bytes", VALUE_LOG_MIN_BYTES),
        table.get("vote_log_min_bytes", VOTE_LOG_MIN_BYTES),
    )


ELECTION_HEARTBEAT_RATIO = 5
"""`[timing]` election_ms must be at least this many heartbeat intervals."""


@dataclass(frozen=True, slots=True)
class TimingSettings:
    """The optional `[timing]` table: the protocol's timers, in milliseconds.
    Unset fields keep the replica's defaults: a 10 ms tick (`--tick-ms`
    overrides `tick_ms`), a heartbeat every 2 ticks, elections after 20 to
    40 ticks of silence. Each replica reads it for itself; give every
    replica the same values."""

    tick_ms: int | None = None
    """The unit of the protocol's timers."""
    heartbeat_ms: int | None = None
    """How often the leader sends heartbeats (a multiple of the tick)."""
    election_ms: int | None = None
    """A follower that hears nothing from a leader for a random time in
    [election_ms, 2 * election_ms) starts an election (a multiple of the
    tick, at least ELECTION_HEARTBEAT_RATIO heartbeats)."""

    def ticks(
        self, tick_ms: float, default_heartbeat: int, default_election: int
    ) -> tuple[int, int]:
        """(heartbeat_ticks, election_ticks) for a tick of `tick_ms`;
        ConfigError (one line) if a value is not a whole number of ticks or
        the election timeout is under ELECTION_HEARTBEAT_RATIO heartbeats."""
        heartbeat = self._in_ticks("heartbeat_ms", self.heartbeat_ms, tick_ms, default_heartbeat)
        election = self._in_ticks("election_ms", self.election_ms, tick_ms, default_election)
        if election < ELECTION_HEARTBEAT_RATIO * heartbeat:
            raise ConfigError(
                f"[timing]: election_ms ({election * tick_ms:g}) must be at least "
                f"{ELECTION_HEARTBEAT_RATIO} x heartbeat_ms ({heartbeat * tick_ms:g}) = "
                f"{ELECTION_HEARTBEAT_RATIO * heartbeat * tick_ms:g}, so that a follower "
                f"misses several heartbeats before it starts an election"
            )
        return heartbeat, election

    @staticmethod
    def _in_ticks(name: str, ms: int | None, tick_ms: float, default: int) -> int:
        if ms is None:
            return default
        ticks = round(ms / tick_ms)
        if ticks < 1 or abs(ticks * tick_ms - ms) > 1e-9 * ms:
            raise ConfigError(
                f"[timing]: {name} ({ms}) must be a whole multiple of the tick ({tick_ms:g} ms)"
            )
        return ticks


def load_timing_settings(path: str | os.PathLike[str]) -> TimingSettings:
    """The `[timing]` table of a cluster config file (None for what it omits)."""
    fields = {"tick_ms": 1, "heartbeat_ms": 1, "election_ms": 1}
    return TimingSettings(**_int_table(path, "timing", fields))
