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
* ``existing``: join a cluster that already runs, as a member added with
  `kvctl member add`. The replica starts JOINING (replica/paxos.py): it
  promises and votes nothing until it has installed a snapshot, and the
  snapshot's membership tells whether its id ever ran; if it did, the
  replica lost its disk and stops with an error (it may have promised
  before: docs/OPERATIONS.md), and the way back is a new id.

The identity is a small JSON file, ``IDENTITY``, written before LevelDB
creates anything (atomically: a temporary file, fsync, rename, fsync of
the directory), so a directory with LevelDB data always has one, except a
directory created before identities existed: that one is adopted once,
with a log line.

The cluster id is derived from the config's `[cluster] name` (default
"kvstore"): not from the replica ids or addresses, which membership changes
and moves change. Give clusters that share machines different names to
tell their directories apart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
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
    created_as: str = "new"
    """"new" (bootstrapped a cluster) or "existing" (joined a running one)."""

    @property
    def joining(self) -> bool:
        """Started on an empty directory to join: see replica/paxos.py."""
        return self.created_as == "existing"

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


def cluster_id(name: str) -> str:
    """The id of the cluster named `name` (16 hex digits)."""
    return hashlib.sha256(f"kvstore-cluster\n{name}".encode()).hexdigest()[:16]


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
            created_as=str(data.get("created_as", "new")),
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


def new_identity(name: str, cid: str, replica_id: int, created_as: str = "new") -> Identity:
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Identity(
        cluster_id=cid,
        replica_id=replica_id,
        cluster_name=name,
        created=created,
        created_as=created_as,
    )


def prepare(
    path: str | os.PathLike[str],
    *,
    name: str,
    replica_id: int,
    state: str | None,
) -> Identity:
    """Checks (or, for an empty directory, creates) the identity of data
    directory `path` for replica `replica_id` of the cluster `name`. Raises
    DataDirError with one line when the directory must not be used."""
    directory = Path(path)
    cid = cluster_id(name)
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
    if state not in STATES:
        raise DataDirError(f"--initial-cluster-state must be one of {', '.join(STATES)}")
    ident = new_identity(name, cid, replica_id, created_as=state)
    write_identity(directory, ident)
    log.info(
        "data directory %s created for replica %d of cluster %s (%s) to %s",
        directory,
        replica_id,
        cid,
        name,
        "bootstrap a new cluster" if state == "new" else "join a running one",
    )
    return ident
