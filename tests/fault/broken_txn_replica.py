"""A replica whose transactions compare against the state stored before the
current apply() call, missing the commands before them in the same batch;
everything else is the real replica's. See tests/fault/broken_replica.py.

    python -m tests.fault.broken_txn_replica --config F --id N --data-dir D
"""

from __future__ import annotations

import sys

from tests.fault.broken_replica import main

if __name__ == "__main__":
    sys.exit(main(broken="compares"))
