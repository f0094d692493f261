"""Size limits of the store, enforced at the edge (client library, replica) and
documented in the README. A request over a limit is rejected with a clear
error and changes nothing.

The numbers follow etcd's spirit (1.5 MiB per request) while letting a 1 MiB
value through with room for its key and framing.
"""

MAX_KEY_BYTES = 4 * 1024
"""Longest key, in bytes. Keys must also be non-empty."""

MAX_VALUE_BYTES = 1024 * 1024
"""Largest value, in bytes (1 MiB)."""

MAX_REQUEST_BYTES = MAX_KEY_BYTES + 2 * MAX_VALUE_BYTES + 1024
"""Largest encoded client request a replica will decode (a CAS carries two
values). Anything bigger is answered with TOO_LARGE without being decoded."""

MAX_RANGE_REPLY_BYTES = 4 * 1024 * 1024
"""Most bytes of keys and values one range reply carries (a RANGE, or all
the reads of one TXN together); the rest comes with a continuation. A
RANGE always returns at least one key, so with a 1 MiB value a reply stays
near 5 MiB, far under MAX_FRAME_BYTES."""

MAX_RANGE_KEYS = 5_000
"""Most keys one range reply covers (returned, or counted for count-only;
a TXN's reads together): bounds the time a replica spends on one read,
which it serves from its event loop (a long scan would delay heartbeats)."""

MAX_DELETE_RANGE_KEYS = 10_000
"""Most keys one DELETE_RANGE (or all the deletes of one TXN) may delete:
it is one log command, applied by every replica in its event loop. A
larger range is refused (TOO_LARGE), nothing deleted."""

MAX_TXN_COMPARES = 128
"""Most comparisons in one transaction (etcd's default --max-txn-ops)."""

MAX_TXN_OPS = 128
"""Most operations in each branch (success, failure) of one transaction."""

MAX_TXN_BYTES = 2 * MAX_VALUE_BYTES - 8 * 1024
"""Most bytes of keys, range ends, values and compared values in one
transaction together (2 MiB - 8 KiB): with the framing of the largest
number of comparisons and operations it stays within MAX_REQUEST_BYTES."""

MAX_FRAME_BYTES = 64 * 1024 * 1024
"""ZeroMQ refuses frames above this on every socket (protects memory)."""

MAX_BATCH_BYTES = 4 * 1024 * 1024
"""The leader stops adding client commands to one slot value past this size."""

SESSION_TTL_MS = 60 * 60 * 1000
"""The default session TTL (1 hour). A client session idle for longer than
the TTL in force, in log time (the leaders' wall clocks as stamped into the
log), is forgotten: the next request of that client id numbered above 1 is
refused with SESSION_EXPIRED. The TTL in force is decided through the log:
the leader stamps its configured TTL (`[sessions] ttl_seconds` of the
cluster config, this by default) into each clock command, and every replica
adopts it from there; before the first clock command it is this value
(kvstore/statemachine.py)."""

SESSION_EXPIRY_PER_CLOCK = 256
"""At most this many idle sessions are deleted per clock command of the log,
so one apply stays cheap; a larger backlog goes with the following clocks.
Part of the state machine's rules: every replica must use the same value."""

MAX_CLIENT_TIMEOUT_S = SESSION_TTL_MS / 1000 / 2
"""The longest overall timeout a client may give one request (30 minutes):
half the default TTL, so a retry finds the session its first attempt
created unless log time jumps forward by more than the difference. The
client does not know the TTL in force and does not check it: an operator
who configures a shorter `[sessions] ttl_seconds` must keep it at least
twice the longest timeout the clients use (kvctl: 5 s by default), or a
retried write may be refused (SessionExpired) or, if it is a session's
first write, applied twice."""

MIN_LEASE_TTL_S = 1
MAX_LEASE_TTL_S = 90 * 24 * 3600
"""A lease's TTL is a whole number of seconds in [1 s, 90 days] (etcd's are
seconds too). A keep-alive every third of the TTL keeps it; after a leader
change the new leader gives every lease a full TTL before it expires any."""

MAX_LEASE_KEYS = 10_000
"""Most keys attached to one lease: its expiry or revocation deletes them
all at one revision in one command, like a DELETE_RANGE of at most
MAX_DELETE_RANGE_KEYS. A put that would attach one more is TOO_LARGE."""

MAX_LEASE_LIST = 10_000
"""Most lease ids one LEASE_LIST reply carries (then `more`, and ask again
after the last id)."""

LEASE_EXPIRY_LEASES = 64
"""Most leases one expiry command names; the leader also stops adding
leases once their keys pass MAX_DELETE_RANGE_KEYS (at least one lease)."""

EFFECTS_MAX_BYTES = 64 << 10
"""The largest effects of one apply a leader sends (kvstore/statemachine.py,
"Effects"): a batch of large values is applied by each follower itself
(its effects would send every value a second time)."""
