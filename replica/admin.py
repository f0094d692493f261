"""`kvstore-admin`: offline operations on data directories (no cluster).

    kvstore-admin snapshot restore FILE --config C --id N --data-dir D
    kvstore-admin snapshot status FILE

`restore` makes the data directory of replica N of a NEW cluster (the one
described by config C) from a backup that `kvctl snapshot save` wrote: the
backup is checked first (checksum, counts), the directory must not exist or
be empty, and it gets the new cluster's identity (replica/datadir.py). The
state is written the way a replica installs a snapshot from a peer
(replica/snapshots.py): staged record by record, then the compaction point
moves to the backup's index, then the state machine flips to it, and the
membership becomes the new config's replicas (all voters). Run it once per
replica, with the same FILE, then start every replica as usual: they start
with identical state at the backup's index and elect a leader. A
crash in the middle leaves a directory that `restore` refuses (not empty):
remove it and run `restore` again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import plyvel

from kvstore.backup import BackupError
from kvstore.backup import read as read_backup
from kvstore.config import ConfigError, load_cluster_config
from kvstore.membership import bootstrap
from kvstore.statemachine import KVStateMachine
from replica import datadir
from replica.server import LEVELDB_OPTIONS
from replica.storage import LevelDBStorage


class AdminError(Exception):
    """One line for the operator; exit code 2."""


def restore(backup_file: str, config: str, replica_id: int, data_dir: str) -> str:
    """Creates `data_dir` for replica `replica_id` of the cluster in `config`
    from `backup_file`; returns a one-line report."""
    summary, chunks = read_backup(backup_file)
    try:
        cluster = load_cluster_config(config)
        name = datadir.load_cluster_name(config)
    except ConfigError as exc:
        raise AdminError(str(exc)) from None
    ids = [r.id for r in cluster]
    if replica_id not in ids:
        raise AdminError(f"replica id {replica_id} is not in {config} (ids: {ids})")
    target = Path(data_dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise AdminError(f"{target} exists and is not an empty directory: restore makes a new one")
    datadir.prepare(target, name=name, replica_id=replica_id, state="new")
    db = plyvel.DB(str(target), create_if_missing=True, **LEVELDB_OPTIONS)
    try:
        sm = KVStateMachine(db)
        snapshot_id = bytes.fromhex(summary.sha256)[:16]
        sm.install_begin(snapshot_id, summary.index, summary.revision)
        for items in chunks:
            sm.install_chunk(items, items[-1][0])
        LevelDBStorage(db).persist(None, {}, {}, sync=True, compacted=summary.index)
        sm.install_finish()
        # A new cluster: its config's replicas, all voters (not the old membership).
        sm.reset_membership(bootstrap([(r.id, r.peer, r.client) for r in cluster]))
        keys = sm.key_count()
        checksum = sm.checksum()
    except ValueError as exc:
        raise AdminError(f"{backup_file} could not be restored: {exc}") from None
    finally:
        db.close()
    return (
        f"restored {backup_file} into {target} as replica {replica_id} of cluster "
        f"{datadir.cluster_id(name)} ({name}): revision {summary.revision}, applied index "
        f"{summary.index}, {keys} keys, state checksum {checksum}"
    )


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kvstore-admin",
        description="Offline operations on backups and data directories (no cluster needed).",
        epilog="See docs/OPERATIONS.md, 'Backup and restore'.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    snap = sub.add_parser("snapshot", help="backup files (from `kvctl snapshot save`)")
    what = snap.add_subparsers(dest="action", metavar="ACTION", required=True)
    rest = what.add_parser(
        "restore",
        help="make a replica's data directory of a new cluster from a backup",
        description="Make the data directory of replica --id of the NEW cluster that "
        "--config describes from FILE. Run once per replica with the same FILE, then start "
        "the replicas as usual.",
    )
    rest.add_argument("file", metavar="FILE")
    rest.add_argument("--config", required=True, help="the new cluster's config file (TOML)")
    rest.add_argument("--id", required=True, type=int, help="the replica to make it for")
    rest.add_argument("--data-dir", required=True, help="a directory that does not exist yet")
    stat = what.add_parser("status", help="check a backup file and print its summary")
    stat.add_argument("file", metavar="FILE")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    try:
        if args.action == "restore":
            print(restore(args.file, args.config, args.id, args.data_dir))
        else:
            summary, _ = read_backup(args.file)
            print("\n".join(summary.lines()))
    except (AdminError, BackupError, datadir.DataDirError) as exc:
        print(f"kvstore-admin: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, plyvel.Error) as exc:
        print(f"kvstore-admin: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
