"""A data directory's identity: which cluster and which replica it belongs to.

A replica's data directory holds its promises and votes. Started on the
directory of another replica, or of another cluster, a replica would answer
with promises and votes it never made; started on an EMPTY directory under
an id the cluster already has (a disk that died, a directory deleted by
mistake), it has forgotten promises and votes it did make, and can form a
majority that contradicts them (docs/OPERATIONS.md works through the
example). So a directory records whom it belongs to, and creating one is
explicit, as etcd's `--initial-cluster-state`:

* ``new``: bootstrap a new cluster. Every replica of the new cluster starts
  on an empty directory, with nothing promised or voted anywhere, so an
  empty directory is the truth. Use it once, for the first start.
* ``existing``: join a cluster that already runs. An empty directory under
  an id of that cluster is refused: it cannot be told apart from a replica
  that lost its disk, and no amount of asking the others makes that safe
  (a promise it made may be known only to a candidate that is down; see
  docs/OPERATIONS.md). Until membership changes land, such a replica stays
  out (the others still make a majority); the safe way back is a new
  member id through reconfiguration.

The identity is a small JSON file, ``IDENTITY``, written before LevelDB
creates anything (atomically: a temporary file, fsync, rename, fsync of
the directory), so a directory with LevelDB data always has one, except a
directory created before identities existed: that one is adopted once,
with a log line.

The cluster id is derived from the config: the `[cluster] name` (default
"kvstore") and the sorted replica ids. Addresses are not part of it, so a
cluster can move to new addresses; give clusters that share machines
different names to tell their directories apart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from kvstore.config import ConfigError, _load_toml

log = logging.getLogger("replica.datadir")

IDENTITY_FILE = "IDENTITY"
FORMAT = 1
STATES = ("new", "existing")
DEFAULT_CLUSTER_NAME = "kvstore"


class DataDirError(Exception):
    """A data directory that must not be used: one line for the operator."""


@dataclass(frozen=True)
class Identity:
    cluster_id: str
    replica_id: int
    cluster_name: str
    created: str
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def load_cluster_name(path: str | os.PathLike[str]) -> str:
    """The optional `[cluster] name` of a cluster config (default "kvstore")."""
    table = _load_toml(path).get("cluster", {})
    where = f"cluster config {path}, [cluster]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(table) - {"name"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name = table.get("name", DEFAULT_CLUSTER_NAME)
    if not isinstance(name, str) or not name or len(name) > 128:
        raise ConfigError(f"{where}: name must be a string of 1 to 128 characters")
    return name


def cluster_id(name: str, replica_ids: Iterable[int]) -> str:
    """The id of the cluster named `name` made of `replica_ids` (16 hex digits)."""
    ids = ",".join(str(i) for i in sorted(set(replica_ids)))
    return hashlib.sha256(f"kvstore-cluster\n{name}\n{ids}".encode()).hexdigest()[:16]


def read_identity(path: str | os.PathLike[str]) -> Identity | None:
    """The identity recorded in data directory `path`, or None if it has none."""
    file = Path(path) / IDENTITY_FILE
    try:
        raw = file.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DataDirError(f"cannot use data directory {path}: {file}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
        ident = Identity(
            cluster_id=str(data["cluster_id"]),
            replica_id=int(data["replica_id"]),
            cluster_name=str(data.get("cluster_name", "")),
            created=str(data.get("created", "")),
            format=int(data.get("format", FORMAT)),
        )
    except (ValueError, KeyError, TypeError):
        raise DataDirError(f"{file} is not a valid identity file") from None
    if ident.format > FORMAT:
        raise DataDirError(f"{file} has format {ident.format}; this version reads {FORMAT}")
    return ident


def write_identity(path: str | os.PathLike[str], ident: Identity) -> None:
    """Writes the identity durably (temporary file, fsync, rename, dir fsync)."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (IDENTITY_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.write(ident.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / IDENTITY_FILE)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _has_data(path: Path) -> bool:
    """True if LevelDB (or anything else but an identity) lives in `path`."""
    if not path.is_dir():
        return False
    return any(p.name not in (IDENTITY_FILE, IDENTITY_FILE + ".tmp") for p in path.iterdir())


def new_identity(name: str, cid: str, replica_id: int) -> Identity:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Identity(cluster_id=cid, replica_id=replica_id, cluster_name=name, created=created)


def prepare(
    path: str | os.PathLike[str],
    *,
    name: str,
    replica_ids: Iterable[int],
    replica_id: int,
    state: str | None,
) -> Identity:
    """Checks (or, for a new cluster, creates) the identity of data directory
    `path` for replica `replica_id` of the cluster `name` made of
    `replica_ids`. Raises DataDirError with one line when the directory must
    not be used."""
    directory = Path(path)
    cid = cluster_id(name, replica_ids)
    ident = read_identity(directory)
    if ident is not None:
        if ident.cluster_id != cid:
            raise DataDirError(
                f"data directory {directory} belongs to cluster {ident.cluster_id} "
                f"({ident.cluster_name or 'unnamed'}), not to this config's cluster {cid} "
                f"({name}): wrong directory or wrong config"
            )
        if ident.replica_id != replica_id:
            raise DataDirError(
                f"data directory {directory} belongs to replica {ident.replica_id}, "
                f"not {replica_id}: wrong directory or wrong --id"
            )
        return ident
    if _has_data(directory):
        # Created before identities existed: adopt it (once).
        ident = new_identity(name, cid, replica_id)
        write_identity(directory, ident)
        log.warning(
            "data directory %s had no identity: recorded it as replica %d of cluster %s (%s)",
            directory,
            replica_id,
            cid,
            name,
        )
        return ident
    if state is None:
        raise DataDirError(
            f"data directory {directory} is empty: pass --initial-cluster-state new to "
            "bootstrap a new cluster (every replica starts empty), or existing to join "
            "a running one"
        )
    if state == "existing":
        raise DataDirError(
            f"replica {replica_id} would rejoin cluster {cid} ({name}) with an empty data "
            f"directory {directory}: it may have promised or voted before its data was lost, "
            "and rejoining under the same id could contradict that (docs/OPERATIONS.md: start "
            "it on its old directory, or run on without it)"
        )
    if state != "new":
        raise DataDirError(f"--initial-cluster-state must be one of {', '.join(STATES)}")
    ident = new_identity(name, cid, replica_id)
    write_identity(directory, ident)
    log.info(
        "data directory %s created for replica %d of cluster %s (%s)",
        directory,
        replica_id,
        cid,
        name,
    )
    return ident
