"""etcd for comparison: a local three-member cluster and a minimal v3 client.

The cluster: Debian's `etcd-server` package (`apt-get install etcd-server`)
provides /usr/bin/etcd. `EtcdCluster` starts N members on 127.0.0.1 with free
ports, data under a temporary directory and etcd's defaults otherwise, so
every raft entry is fsync'd to the WAL before it is acknowledged (the same
durability as our replicas). Members are started and stopped by pid with the
process helpers of replica/launch.py, as our replicas are.

The client: etcd's gRPC API (`etcdserverpb.KV` Put/Range/Txn and
`Maintenance/Status`) driven with grpcio, with the protobuf messages
encoded and decoded by hand in this module. Why not the `etcd3` package or
generated stubs: `etcd3` on PyPI is unmaintained and its generated code
does not import with protobuf >= 4; generating stubs needs grpcio-tools and
the whole .proto tree (gogoproto, google/api annotations). The handful of
messages used here are a few lines of wire format each (field numbers from
etcd's api/etcdserverpb/rpc.proto and api/mvccpb/kv.proto), which keeps
the bench extra at grpcio alone and the per-request client cost low. grpcio
is called with no serializer, so requests and replies are raw bytes.

Messages used (proto3; field number: type):
  ResponseHeader  1 cluster_id, 2 member_id, 3 revision, 4 raft_term
  PutRequest      1 key, 2 value
  RangeRequest    1 key, 2 range_end, 3 limit, 7 serializable (false =
                  linearizable, the default)
  RangeResponse   1 header, 2 kvs (mvccpb.KeyValue), 3 more, 4 count
  KeyValue        1 key, 2 create_revision, 3 mod_revision, 4 version, 5 value
  Compare         1 result (EQUAL=0), 2 target (MOD=2, VALUE=3), 3 key,
                  6 mod_revision, 7 value
  RequestOp       2 request_put
  TxnRequest      1 compare, 2 success, 3 failure
  TxnResponse     1 header, 2 succeeded
  StatusResponse  1 header, 2 version, 3 dbSize, 4 leader, 5 raftIndex,
                  6 raftTerm, 7 raftAppliedIndex
  WatchRequest    1 create_request (WatchCreateRequest: 1 key, 2 range_end,
                  3 start_revision)
  WatchResponse   1 header, 2 watch_id, 3 created, 4 canceled,
                  5 compact_revision, 6 cancel_reason, 11 events
  Event           1 type (PUT=0, DELETE=1), 2 kv
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.cluster import temp_root
from replica.launch import free_ports, log_tail, spawn, stop

ETCD_BINARY = "etcd"

KV_PUT = "/etcdserverpb.KV/Put"
KV_RANGE = "/etcdserverpb.KV/Range"
KV_TXN = "/etcdserverpb.KV/Txn"
MAINT_STATUS = "/etcdserverpb.Maintenance/Status"
WATCH = "/etcdserverpb.Watch/Watch"


# --------------------------------------------------------------------------
# protobuf wire format, the little that is needed
# --------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(num: int, data: bytes) -> bytes:
    return _varint((num << 3) | 2) + _varint(len(data)) + data


def _field_varint(num: int, value: int) -> bytes:
    return _varint(num << 3) + _varint(value)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def parse_fields(buf: bytes) -> dict[int, list]:
    """field number -> list of values (int for varints, bytes for
    length-delimited fields; fixed32/64 as bytes)."""
    out: dict[int, list] = {}
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _read_varint(buf, pos)
        elif wt == 2:
            ln, pos = _read_varint(buf, pos)
            val = buf[pos : pos + ln]
            pos += ln
        elif wt == 1:
            val = buf[pos : pos + 8]
            pos += 8
        elif wt == 5:
            val = buf[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        out.setdefault(num, []).append(val)
    return out


def encode_put(key: bytes, value: bytes) -> bytes:
    return _field_bytes(1, key) + _field_bytes(2, value)


def encode_range(
    key: bytes, serializable: bool = False, range_end: bytes | None = None, limit: int = 0
) -> bytes:
    """A RangeRequest: one key, or [key, range_end) with at most `limit`
    keys (0: all of them, in one reply)."""
    msg = _field_bytes(1, key)
    if range_end is not None:
        msg += _field_bytes(2, range_end)
    if limit:
        msg += _field_varint(3, limit)
    if serializable:
        msg += _field_varint(7, 1)
    return msg


def encode_cas(key: bytes, expected: bytes, new: bytes) -> bytes:
    """Txn: if value(key) == expected then put(key, new)."""
    compare = (
        _field_varint(1, 0)  # result EQUAL (the default, written for clarity)
        + _field_varint(2, 3)  # target VALUE
        + _field_bytes(3, key)
        + _field_bytes(7, expected)
    )
    success = _field_bytes(2, encode_put(key, new))  # RequestOp.request_put
    return _field_bytes(1, compare) + _field_bytes(2, success)


def encode_txn_mod(keys: list[bytes], mod_revisions: list[int], value: bytes) -> bytes:
    """Txn: if every key's mod_revision is the one given (the revision of
    its last change: this store's `version`), put `value` to every key."""
    msg = b""
    for key, rev in zip(keys, mod_revisions, strict=True):
        compare = (
            _field_varint(2, 2)  # target MOD (result EQUAL, the default 0)
            + _field_bytes(3, key)
            + _field_varint(6, rev)
        )
        msg += _field_bytes(1, compare)
    for key in keys:
        msg += _field_bytes(2, _field_bytes(2, encode_put(key, value)))
    return msg


def encode_watch_create(
    key: bytes, range_end: bytes | None = None, start_revision: int = 0
) -> bytes:
    """A WatchRequest creating a watch on [key, range_end) (from
    `start_revision`; 0: from the member's next revision)."""
    create = _field_bytes(1, key)
    if range_end is not None:
        create += _field_bytes(2, range_end)
    if start_revision:
        create += _field_varint(3, start_revision)
    return _field_bytes(1, create)


def decode_watch_response(buf: bytes) -> dict[str, object]:
    """created, canceled, cancel_reason, and the events as (type, key,
    mod_revision) tuples (type 0 PUT, 1 DELETE)."""
    f = parse_fields(buf)
    events = []
    for raw in f.get(11, []):
        ev = parse_fields(raw)
        kv = parse_fields(ev[2][0]) if 2 in ev else {}
        events.append((ev.get(1, [0])[0], kv.get(1, [b""])[0], kv.get(3, [0])[0]))
    return {
        "created": bool(f.get(3, [0])[0]),
        "canceled": bool(f.get(4, [0])[0]),
        "cancel_reason": f.get(6, [b""])[0].decode(errors="replace"),
        "events": events,
    }


def scan_range_reply(buf: bytes) -> tuple[int, bool, int]:
    """(keys in the reply, more, count) of a RangeResponse, walking its
    top-level fields only: the KeyValues are skipped, not decoded (a scan's
    client only needs to know it got them all)."""
    n = 0
    more = False
    count = 0
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _read_varint(buf, pos)
        if tag & 7 == 2:
            ln, pos = _read_varint(buf, pos)
            pos += ln
            n += tag >> 3 == 2
        elif tag & 7 == 0:
            val, pos = _read_varint(buf, pos)
            if tag >> 3 == 3:
                more = bool(val)
            elif tag >> 3 == 4:
                count = val
        else:
            raise ValueError(f"unexpected wire type {tag & 7} in a RangeResponse")
    return n, more, count


def decode_mod_revision(buf: bytes) -> int | None:
    """The mod_revision of the first key of a RangeResponse, None when absent."""
    kvs = parse_fields(buf).get(2)
    if not kvs:
        return None
    return parse_fields(kvs[0]).get(3, [0])[0]


def decode_header(buf: bytes) -> dict[str, int]:
    f = parse_fields(buf)
    return {
        "cluster_id": f.get(1, [0])[0],
        "member_id": f.get(2, [0])[0],
        "revision": f.get(3, [0])[0],
        "raft_term": f.get(4, [0])[0],
    }


def decode_range_value(buf: bytes) -> bytes | None:
    """The value of the first key of a RangeResponse, None when absent."""
    kvs = parse_fields(buf).get(2)
    if not kvs:
        return None
    return parse_fields(kvs[0]).get(5, [b""])[0]


def decode_txn_succeeded(buf: bytes) -> bool:
    return bool(parse_fields(buf).get(2, [0])[0])


def decode_status(buf: bytes) -> dict[str, object]:
    f = parse_fields(buf)
    header = decode_header(f[1][0]) if 1 in f else {}
    return {
        "member_id": header.get("member_id", 0),
        "version": f.get(2, [b""])[0].decode(),
        "db_size": f.get(3, [0])[0],
        "leader": f.get(4, [0])[0],
        "raft_index": f.get(5, [0])[0],
        "raft_term": f.get(6, [0])[0],
        "raft_applied_index": f.get(7, [0])[0],
    }


# --------------------------------------------------------------------------
# a synchronous helper client (set-up, status polling); the load generator
# lives in benchmarks/driver.py
# --------------------------------------------------------------------------
# gRPC's reconnect backoff starts at 1 s and grows to 120 s: a channel to a
# member that was down would answer "unavailable" for seconds after the
# member is back, and a restart or catch-up time would include that. The
# admin channels retry every 50..200 ms instead.
ADMIN_CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 200),
)


class EtcdAdmin:
    """Blocking calls to one or more members (one channel each)."""

    def __init__(self, endpoints: list[str]) -> None:
        import grpc

        self._grpc = grpc
        self.endpoints = list(endpoints)
        self._channels = {
            ep: grpc.insecure_channel(ep, options=ADMIN_CHANNEL_OPTIONS) for ep in self.endpoints
        }

    def _call(self, ep: str, method: str, body: bytes, timeout: float) -> bytes:
        fn = self._channels[ep].unary_unary(method)
        return fn(body, timeout=timeout)

    def status(self, ep: str, timeout: float = 1.0) -> dict[str, object]:
        return decode_status(self._call(ep, MAINT_STATUS, b"", timeout))

    def put(self, ep: str, key: bytes, value: bytes, timeout: float = 5.0) -> dict[str, int]:
        reply = self._call(ep, KV_PUT, encode_put(key, value), timeout)
        return decode_header(parse_fields(reply)[1][0])

    def get(
        self, ep: str, key: bytes, timeout: float = 5.0, serializable: bool = False
    ) -> bytes | None:
        """The value of key (linearizable; `serializable`: the member's own
        state, answered without asking the leader)."""
        body = encode_range(key, serializable=serializable)
        return decode_range_value(self._call(ep, KV_RANGE, body, timeout))

    def cas(self, ep: str, key: bytes, expected: bytes, new: bytes, timeout: float = 5.0) -> bool:
        return decode_txn_succeeded(self._call(ep, KV_TXN, encode_cas(key, expected, new), timeout))

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()


def grpc_available() -> bool:
    try:
        import grpc  # noqa: F401
    except ImportError:
        return False
    return True


def etcd_binary() -> str | None:
    return shutil.which(ETCD_BINARY)


def etcd_version() -> str | None:
    exe = etcd_binary()
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        if line.lower().startswith("etcd version"):
            return line.split(":", 1)[1].strip()
    return out.strip().splitlines()[0] if out.strip() else None


def unavailable_reason() -> str | None:
    """None when the comparison can run, else why not."""
    if not etcd_binary():
        return "etcd is not installed (Debian: apt-get install etcd-server)"
    if not grpc_available():
        return "grpcio is not installed (pip install -e '.[bench]')"
    return None


# --------------------------------------------------------------------------
# the cluster
# --------------------------------------------------------------------------
@dataclass
class EtcdMember:
    id: int  # 1..n, the harness's own numbering
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    member_id: int = 0  # etcd's member id (from Status), once known

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


@dataclass
class EtcdCluster:
    """n etcd members on loopback. Use as a context manager."""

    n: int = 3
    base_dir: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    members: list[EtcdMember] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory | None = None
    _admin: EtcdAdmin | None = None

    system = "etcd"

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        exe = etcd_binary()
        if not exe:
            raise RuntimeError("etcd is not installed")
        if self.base_dir is None:
            self._tmp = temp_root("bench-etcd-")
            self.base_dir = Path(self._tmp.name)
        ports = free_ports(2 * self.n)
        self.members = []
        for i in range(self.n):
            d = self.base_dir / f"m{i + 1}"
            d.mkdir(parents=True, exist_ok=True)
            self.members.append(
                EtcdMember(
                    id=i + 1,
                    name=f"m{i + 1}",
                    client_port=ports[2 * i],
                    peer_port=ports[2 * i + 1],
                    data_dir=d / "data",
                    log_path=d / "etcd.log",
                )
            )
        for m in self.members:
            self._spawn(m, "new")
        self._admin = EtcdAdmin([m.endpoint for m in self.members])
        self.wait_leader(timeout)

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)

    def _spawn(self, m: EtcdMember, state: str) -> None:
        args = [
            etcd_binary() or ETCD_BINARY,
            "--name",
            m.name,
            "--data-dir",
            str(m.data_dir),
            "--listen-client-urls",
            f"http://127.0.0.1:{m.client_port}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{m.client_port}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{m.peer_port}",
            "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{m.peer_port}",
            "--initial-cluster",
            self._initial_cluster(),
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            f"bench-{os.getpid()}-{id(self)}",
            "--logger",
            "zap",
            "--log-level",
            "warn",
            "--quota-backend-bytes",
            str(8 * 1024**3),
            *self.extra_args,
        ]
        m.proc = spawn(args, m.log_path)

    @property
    def admin(self) -> EtcdAdmin:
        assert self._admin is not None
        return self._admin

    def endpoints(self) -> dict[int, str]:
        return {m.id: m.endpoint for m in self.members}

    def pids(self) -> dict[int, int]:
        return {m.id: m.proc.pid for m in self.members if m.proc and m.proc.poll() is None}

    def status(self, mid: int, timeout: float = 0.5) -> dict[str, object] | None:
        m = self.members[mid - 1]
        try:
            st = self.admin.status(m.endpoint, timeout=timeout)
        except Exception:  # noqa: BLE001 - down or starting
            return None
        m.member_id = int(st["member_id"])
        return st

    def leader(self, timeout: float = 0.5) -> int | None:
        """The harness id of the current leader, or None."""
        for m in self.members:
            if m.proc is None or m.proc.poll() is not None:
                continue
            st = self.status(m.id, timeout)
            if st and st["leader"]:
                for other in self.members:
                    if other.member_id == 0:
                        self.status(other.id)
                for other in self.members:
                    if other.member_id == st["leader"]:
                        return other.id
        return None

    def wait_leader(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(
                        f"etcd member {m.name} exited with {m.proc.returncode}; "
                        f"see {m.log_path}:\n{log_tail(m.log_path)}"
                    )
            lid = self.leader()
            if lid is not None:
                # a leader that can commit: one put through it
                try:
                    self.admin.put(self.members[lid - 1].endpoint, b"__bench_ready", b"1", 2.0)
                    return lid
                except Exception:  # noqa: BLE001
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"no etcd leader within {timeout}s")

    def kill(self, mid: int, sig: int = signal.SIGKILL) -> None:
        stop([self.members[mid - 1].proc], sig=sig)

    def restart(self, mid: int) -> None:
        m = self.members[mid - 1]
        self._spawn(m, "existing")

    def data_dirs(self) -> dict[int, Path]:
        return {m.id: m.data_dir for m in self.members}

    def write_marker(self, leader: int, key: bytes, value: bytes) -> int:
        """One put through `leader` (the restart measurement); the token for
        `marker_applied` is its revision."""
        header = self.admin.put(self.members[leader - 1].endpoint, key, value, timeout=2.0)
        return int(header["revision"])

    def marker_applied(self, mid: int, key: bytes, token: int) -> bool | None:
        """Whether member `mid` serves the marker key in a serializable read
        (from its own state: it has applied a write made after its restart);
        None while it does not answer."""
        try:
            value = self.admin.get(self.members[mid - 1].endpoint, key, 0.2, serializable=True)
        except Exception:  # noqa: BLE001 - down or starting
            return None
        return value is not None

    def applied_index(self, mid: int) -> int | None:
        st = self.status(mid)
        return int(st["raft_applied_index"]) if st else None

    def commit_index(self, mid: int) -> int | None:
        st = self.status(mid)
        return int(st["raft_index"]) if st else None

    def version(self) -> str | None:
        return etcd_version()

    def stop(self) -> None:
        # SIGKILL: the data is thrown away, and a SIGTERM'd etcd 3.4 leader
        # spends seconds trying to hand its leadership to stopped members.
        stop((m.proc for m in self.members), sig=signal.SIGKILL)
        if self._admin:
            self._admin.close()
            self._admin = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
