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
- `SessionExpired`: the cluster no longer knows this client's session (idle
  for over an hour of the leader's time, kvstore.limits.SESSION_TTL_MS), so
  it refused the request rather than risk applying it twice: it was NOT
  applied. The client has already started a new session; sending the
  request again applies it once.
- `AuthenticationFailed`: every replica refused this client's CURVE
  handshake (a client key that is not allowed, a wrong server key, or
  plaintext against a CURVE cluster, or the reverse): nothing was sent, so
  nothing changed. Retrying with the same keys will not help.
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


class LeaseNotFound(KVError):
    """A put named a lease the cluster does not hold (it expired, was
    revoked or never was): nothing changed."""


class SessionExpired(KVError):
    """The request was refused, not applied: the cluster forgot the client's
    session. The client starts a new session for its next request."""


class AuthenticationFailed(KVError):
    """Every replica refused the CURVE handshake: the request never reached
    one, nothing changed (README, Security)."""
