"""ZeroMQ CURVE: key files, the `[curve]` table, and the client's keys.

CURVE (libzmq's CurveZMQ: Curve25519 key exchange, encrypted and
authenticated frames) is off unless the cluster config file has a
`[curve]` table. With it on, every socket of the cluster speaks CURVE:

- Peer ports. Every replica has a key pair of its own. Its PULL socket is a
  CURVE server with its secret key; every PUSH to a peer is a CURVE client
  that names that peer's public key as the server key and presents the
  sender's own key pair. The replica's ZAP handler (replica/curve.py)
  accepts on the peer port only the public keys of `[curve.replica_keys]`,
  and tags each connection with the replica id its key belongs to, so a
  message whose sender is another id than its key's is dropped too.
- Client ports. Every replica serves clients with ONE key pair shared by the
  cluster (`server_secret_key_file`), so that a client needs one server key
  (`--server-key`) whichever replica it reaches, redirects and members added
  later included. A client presents a key pair of its own; the replicas
  accept the keys listed in `client_keys` or found in `client_keys_dir`
  (re-read when the directory changes: adding or removing a client needs no
  restart), and the replicas' own keys. `require_client_key = false` accepts
  any client key pair: encryption, and the authenticity of the cluster, but
  no client authentication.

Key files are Z85 text (40 characters for 32 bytes), as `kvstore-keys`
writes them: `NAME.key` holds the public key, `NAME.key_secret` the secret
key (mode 0600; the public key is derived from it). Lines starting with
`#` are comments. A key can be given inline in the config file as its Z85
text as well. Relative paths in the config file are relative to the file.

Why the key book `[curve.replica_keys]` is a table of its own rather than a
field of each `[[replica]]`: the `[[replica]]` tables are the membership a
new cluster starts with, while a member added later (`kvctl member add`)
needs its key known to every replica before it connects. Its key goes into
the key book of every replica's config file, and a replica re-reads the key
book when the membership names a member whose key it lacks (no restart).
The membership in the log carries addresses only, never keys: keys stay
what each operator's config file says, so a client (which may change the
membership) can never make its own key a peer's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from zmq.utils import z85

from kvstore.config import ConfigError, _load_toml

ENV_CLIENT_KEY = "KVSTORE_CLIENT_KEY"
"""Path of the client's secret key file (kvctl --client-key)."""
ENV_SERVER_KEY = "KVSTORE_SERVER_KEY"
"""Path of the cluster's client-port public key file (kvctl --server-key)."""
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
Z85_KEY_CHARS = 40
ZAP_DOMAIN_PEER = b"paxoskv-peer"
ZAP_DOMAIN_CLIENT = b"paxoskv-client"


class KeyFileError(ConfigError):
    """A key file or key text that cannot be used."""


# -- keys -----------------------------------------------------------------------


def parse_key(text: str, where: str) -> bytes:
    """The Z85 key (40 ASCII bytes) in `text`: the first line that is not
    empty or a comment; KeyFileError naming `where` otherwise."""
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise KeyFileError(f"{where}: no key found (a Z85 key is {Z85_KEY_CHARS} characters)")
    key = lines[0].encode("ascii", "replace")
    if len(key) != Z85_KEY_CHARS:
        raise KeyFileError(f"{where}: a Z85 key is {Z85_KEY_CHARS} characters, found {len(key)}")
    try:
        if len(z85.decode(key)) != 32:
            raise ValueError
    except (ValueError, KeyError, IndexError, OverflowError):
        raise KeyFileError(f"{where}: not a Z85 key") from None
    return key


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The Z85 key in a key file (public or secret)."""
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    return parse_key(text, f"key file {path}")


def public_of(secret: bytes) -> bytes:
    """The Z85 public key of a Z85 secret key."""
    return zmq.curve_public(secret)


def write_keypair(directory: str | os.PathLike[str], name: str, *, force: bool = False) -> Path:
    """Makes a key pair: DIR/NAME.key (public, 0644) and DIR/NAME.key_secret
    (secret, created 0600). Refuses to overwrite unless `force`. Returns
    the public key file's path."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    pub_path, sec_path = folder / (name + PUBLIC_SUFFIX), folder / (name + SECRET_SUFFIX)
    if not force:
        for path in (pub_path, sec_path):
            if path.exists():
                raise KeyFileError(f"{path} exists (pass --force to replace it)")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(sec_path, flags, 0o600)  # never readable by others, not even for a moment
    os.fchmod(fd, 0o600)  # an existing file (--force) keeps its mode otherwise
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(f"# paxoskv CURVE secret key (Z85) of {name}: keep it private\n")
        fh.write(secret.decode() + "\n")
    pub_path.write_text(
        f"# paxoskv CURVE public key (Z85) of {name}\n{public.decode()}\n", encoding="ascii"
    )
    pub_path.chmod(0o644)
    return pub_path


# -- the [curve] table ------------------------------------------------------------


@dataclass(frozen=True)
class CurveConfig:
    """The `[curve]` table of a cluster config file, keys read.

    `replica_keys`: replica id -> Z85 public key (the key book);
    `secret_key_file`: this replica's secret key, `{id}` replaced;
    `server_secret`: the client ports' shared secret key;
    `client_keys` and `client_keys_dir`: the allowed client public keys."""

    path: Path
    replica_keys: Mapping[int, bytes]
    secret_key_file: str
    server_secret: bytes
    client_keys: frozenset[bytes] = frozenset()
    client_keys_dir: Path | None = None
    require_client_key: bool = True

    def replica_secret(self, replica_id: int) -> bytes:
        """This replica's secret key; KeyFileError unless it matches its public
        key in the key book."""
        file = self.resolve(self.secret_key_file.replace("{id}", str(replica_id)))
        secret = read_key_file(file)
        mine = self.replica_keys.get(replica_id)
        if mine is None:
            raise KeyFileError(
                f"{self.path}: [curve.replica_keys] has no key for replica {replica_id}"
            )
        if public_of(secret) != mine:
            raise KeyFileError(
                f"the secret key in {file} does not belong to replica {replica_id}'s "
                f"public key in {self.path} [curve.replica_keys]"
            )
        return secret

    def resolve(self, name: str) -> Path:
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.path.parent / path


_CURVE_FIELDS = {
    "replica_keys", "secret_key_file", "server_secret_key_file", "client_keys",
    "client_keys_dir", "require_client_key",
}  # fmt: skip


def load_curve_config(path: str | os.PathLike[str]) -> CurveConfig | None:
    """The `[curve]` table of a cluster config file, or None (CURVE off)."""
    table = _load_toml(path).get("curve")
    if table is None:
        return None
    where = f"cluster config {path}, [curve]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(table) - _CURVE_FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    for name in ("secret_key_file", "server_secret_key_file"):
        if not isinstance(table.get(name), str):
            raise ConfigError(f"{where}: {name} must be a file name (string)")
    base = CurveConfig(Path(path), parse_replica_keys(table.get("replica_keys"), where), "", b"")
    clients = table.get("client_keys", [])
    if not isinstance(clients, list) or not all(isinstance(k, str) for k in clients):
        raise ConfigError(f"{where}: client_keys must be a list of Z85 public keys")
    keys = frozenset(parse_key(k, f"{where}, client_keys[{i}]") for i, k in enumerate(clients))
    folder = table.get("client_keys_dir")
    if folder is not None and not isinstance(folder, str):
        raise ConfigError(f"{where}: client_keys_dir must be a directory name (string)")
    require = table.get("require_client_key", True)
    if not isinstance(require, bool):
        raise ConfigError(f"{where}: require_client_key must be true or false")
    return CurveConfig(
        base.path,
        base.replica_keys,
        table["secret_key_file"],
        read_key_file(base.resolve(table["server_secret_key_file"])),
        keys,
        base.resolve(folder) if folder is not None else None,
        require,
    )


def parse_replica_keys(table: object, where: str) -> dict[int, bytes]:
    """`[curve.replica_keys]`: "ID" = "Z85 public key", one per replica."""
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{where}: [curve.replica_keys] must name each replica's public key")
    keys: dict[int, bytes] = {}
    for rid, key in table.items():
        if not rid.isdigit() or int(rid) < 1:
            raise ConfigError(f"{where}.replica_keys: {rid!r} is not a replica id")
        if not isinstance(key, str):
            raise ConfigError(f"{where}.replica_keys: {rid} must be a Z85 public key (string)")
        keys[int(rid)] = parse_key(key, f"{where}.replica_keys, {rid}")
    if len(set(keys.values())) != len(keys):
        raise ConfigError(f"{where}.replica_keys: two replicas have the same key")
    return keys


def read_key_dir(folder: Path) -> frozenset[bytes]:
    """The public keys of every `*.key` file in `folder` (bad files skipped:
    the caller logs what it found)."""
    keys = set()
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return frozenset()
    for entry in entries:
        if entry.name.endswith(PUBLIC_SUFFIX):
            try:
                keys.add(read_key_file(entry))
            except ConfigError:
                continue
    return frozenset(keys)


# -- the client's side ------------------------------------------------------------


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs to reach a CURVE cluster: the client ports'
    public key and a key pair of its own."""

    server_key: bytes
    public: bytes = field(repr=False, default=b"")
    secret: bytes = field(repr=False, default=b"")

    def apply(self, sock: zmq.Socket) -> None:
        """Makes `sock` (before it connects) a CURVE client of the cluster."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


def client_keys(
    client_key: str | os.PathLike[str] | None = None,
    server_key: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> ClientKeys | None:
    """The client's keys from files, else from the environment variables
    KVSTORE_CLIENT_KEY (its secret key file) and KVSTORE_SERVER_KEY (the
    cluster's public key file); None without a server key (plaintext). A
    server key without a client key makes a throwaway key pair (for a
    cluster with `require_client_key = false`)."""
    env = os.environ if env is None else env
    client_key = client_key or env.get(ENV_CLIENT_KEY) or None
    server_key = server_key or env.get(ENV_SERVER_KEY) or None
    if server_key is None:
        if client_key is not None:
            raise ConfigError(
                "a client key needs the cluster's server key too "
                f"(--server-key or ${ENV_SERVER_KEY})"
            )
        return None
    server = read_key_file(server_key)
    if client_key is None:
        public, secret = zmq.curve_keypair()
    else:
        secret = read_key_file(client_key)
        public = public_of(secret)
    return ClientKeys(server, public, secret)


# -- kvstore-keys -------------------------------------------------------------------


def cluster_keys(
    directory: str | os.PathLike[str],
    replica_ids: Iterable[int],
    clients: Sequence[str] = ("client",),
    *,
    force: bool = False,
) -> str:
    """Key pairs for a whole cluster in DIR: replicaN (each replica), server
    (the client ports), clients/NAME (each client). Returns the `[curve]`
    table for the config file (paths relative to DIR's parent, where the
    config file is expected)."""
    folder = Path(directory)
    book = {}
    for rid in replica_ids:
        book[rid] = read_key_file(write_keypair(folder, f"replica{rid}", force=force)).decode()
    write_keypair(folder, "server", force=force)
    for name in clients:
        write_keypair(folder / "clients", name, force=force)
    rel = folder.name
    lines = [
        "[curve]",
        f'secret_key_file = "{rel}/replica{{id}}{SECRET_SUFFIX}"',
        f'server_secret_key_file = "{rel}/server{SECRET_SUFFIX}"',
        f'client_keys_dir = "{rel}/clients"',
        "require_client_key = true",
        "",
        "[curve.replica_keys]",
        *(f'{rid} = "{key}"' for rid, key in book.items()),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`kvstore-keys`: make CURVE key pairs (README, Security)."""
    ap = argparse.ArgumentParser(
        prog="kvstore-keys",
        description="Make ZeroMQ CURVE key pairs: NAME.key (public) and NAME.key_secret "
        "(secret, mode 0600), Z85 text.",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = sub.add_parser("generate", help="one key pair: DIR/NAME.key and DIR/NAME.key_secret")
    gen.add_argument("name", metavar="NAME")
    gen.add_argument("--dir", default=".", help="where to write them (default: .)")
    gen.add_argument("--force", action="store_true", help="replace existing files")
    clu = sub.add_parser(
        "cluster",
        help="key pairs for a cluster (replicaN, server, clients/NAME); prints the [curve] table",
    )
    clu.add_argument("--dir", default="keys", help="where to write them (default: keys)")
    clu.add_argument("--replicas", type=int, default=3, help="replicas 1..N (default 3)")
    clu.add_argument("--client", action="append", help="a client key pair (default: client)")
    clu.add_argument("--force", action="store_true", help="replace existing files")
    pub = sub.add_parser("public", help="print the public key of a secret key file")
    pub.add_argument("file", metavar="SECRET_FILE")
    args = ap.parse_args(argv)
    try:
        if args.command == "generate":
            path = write_keypair(args.dir, args.name, force=args.force)
            print(f"{path} {read_key_file(path).decode()}")
        elif args.command == "cluster":
            ids = range(1, args.replicas + 1)
            print(cluster_keys(args.dir, ids, args.client or ["client"], force=args.force), end="")
        else:
            print(public_of(read_key_file(args.file)).decode())
    except ConfigError as exc:
        print(f"kvstore-keys: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kvstore-keys: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
