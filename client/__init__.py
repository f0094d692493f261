"""The Python client of the replicated key-value store.

    from client import KVClient, KVError

    with KVClient("127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003") as kv:
        kv.put(b"greeting", b"hello")

`KVClient` (client/client.py) finds the leader, retries and times out by
itself; every error it raises on purpose is a `KVError` (client/errors.py).
`cmp` and `op` (client/txn.py) build transactions for `KVClient.txn`;
`KVClient.lock` returns a `Lock` (client/lock.py).
`kvctl` (client/kvctl.py) is the command line built on it.
"""

from client.client import CasResult, KeyValue, KVClient, RangePage, TxnResponse
from client.errors import (
    AuthenticationFailed,
    BadRequest,
    ClusterUnavailable,
    KVError,
    LeaseNotFound,
    RequestTooLarge,
    SessionExpired,
)
from client.lease import Lease, LeaseInfo
from client.lock import Lock, LockLost, LockTimeout
from client.txn import cmp, op

__all__ = [
    "AuthenticationFailed",
    "BadRequest",
    "CasResult",
    "ClusterUnavailable",
    "KVClient",
    "KVError",
    "KeyValue",
    "Lease",
    "LeaseInfo",
    "LeaseNotFound",
    "Lock",
    "LockLost",
    "LockTimeout",
    "RangePage",
    "RequestTooLarge",
    "SessionExpired",
    "TxnResponse",
    "cmp",
    "op",
]
