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

MAX_FRAME_BYTES = 64 * 1024 * 1024
"""ZeroMQ refuses frames above this on every socket (protects memory)."""

MAX_BATCH_BYTES = 4 * 1024 * 1024
"""The leader stops adding client commands to one slot value past this size."""
