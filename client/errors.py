"""The exceptions of the client library.

Every error the client raises on purpose is a `KVError`, so a caller (kvctl,
a benchmark) can catch one type. The subclasses say what the caller can do:

- `ClusterUnavailable`: no replica gave a usable answer within the timeout.
  For a write the outcome is UNKNOWN (it may still be applied); retrying the
  same logical write is safe only if the application can tolerate that.
- `RequestTooLarge`: a key or value over `kvstore.limits`; nothing was sent or
  nothing changed. Retrying will not help.
- `BadRequest`: a malformed request (empty key, CAS without an expectation,
  ...); nothing changed. Retrying will not help.
"""

from __future__ import annotations


class KVError(Exception):
    """Base class of every error the key-value client raises."""


class ClusterUnavailable(KVError):
    """No replica answered usefully within the overall timeout."""


class RequestTooLarge(KVError):
    """The key or value is over the documented size limits."""


class BadRequest(KVError):
    """The request is malformed; the cluster (or the client) refused it."""
