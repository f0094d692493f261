"""A replica that answers RANGE reads from local state when it believes it
leads (no read index); GETs and everything else are the real replica's.
See tests/fault/broken_replica.py.

    python -m tests.fault.broken_range_replica --config F --id N --data-dir D
"""

from __future__ import annotations

import sys

from tests.fault.broken_replica import main

if __name__ == "__main__":
    sys.exit(main(broken="ranges"))
