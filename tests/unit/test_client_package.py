"""The client package's public surface (client/__init__.py): the import the
README documents, and nothing more than the client, its results, its
errors and the transaction builders."""

from __future__ import annotations

import client
import client.client
import client.errors
import client.lock
import client.txn


def test_from_client_import_kvclient() -> None:
    from client import KVClient, KVError

    assert KVClient is client.client.KVClient
    assert KVError is client.errors.KVError


def test_the_public_surface_is_short() -> None:
    assert sorted(client.__all__) == [
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
    for name in client.__all__:
        home = client.txn if name in ("cmp", "op") else client.client
        home = client.lock if name.startswith("Lock") else home
        assert getattr(client, name) is getattr(home, name)


def test_every_error_is_a_kverror() -> None:
    errors = (client.BadRequest, client.ClusterUnavailable, client.RequestTooLarge)
    for error in (*errors, client.SessionExpired):
        assert issubclass(error, client.KVError)
