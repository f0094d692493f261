"""The replica's log lines: text for people (the default) or JSON for
machines (`kvstore-replica --log-format json`).

A key event (an election, a leadership change, a snapshot install, a
catch-up, refused input) is logged once, where it happens, with its
figures attached through `extra=event(name, **fields)`:

    log.info("replica %d is now the leader (ballot %s)", rid, ballot,
             extra=event("leader_elected", ballot=[3, 1], commit_index=1200))

The text format prints the message as before. The JSON format prints one
object per line:

    {"time": "2026-12-01T10:00:00.123Z", "level": "info", "replica": 1,
     "event": "leader_elected", "message": "replica 1 is now the leader ...",
     "fields": {"ballot": [3, 1], "commit_index": 1200}}

`time` is UTC (ISO 8601, milliseconds); a record logged without an event
name has event "message" and no fields; an exception adds "exception" (the
traceback as one string). Field values that JSON cannot hold are written
as their str(). This module imports only the standard library's logging
and json, so the driver (run by the simulator too) can use `event`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

FORMATS = ("text", "json")
_NO_EVENT = "message"


def event(name: str, **fields: Any) -> dict[str, Any]:
    """The `extra` of a log call that records key event `name` with `fields`."""
    return {"event": name, "fields": fields}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring)."""

    def __init__(self, replica_id: int | None) -> None:
        super().__init__()
        self.replica_id = replica_id

    def format(self, record: logging.LogRecord) -> str:
        ms = int(record.msecs)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        obj: dict[str, Any] = {
            "time": f"{stamp}.{ms:03d}Z",
            "level": record.levelname.lower(),
            "replica": self.replica_id,
            "event": getattr(record, "event", _NO_EVENT),
            "message": record.getMessage(),
            "fields": getattr(record, "fields", None) or {},
        }
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, separators=(",", ":"))


def text_formatter(replica_id: int | None) -> logging.Formatter:
    """The default format (unchanged from before JSON existed)."""
    who = f"replica-{replica_id}" if replica_id is not None else "replica"
    return logging.Formatter(f"%(asctime)s {who} %(levelname)s %(message)s")


def configure(
    level: str, log_format: str, replica_id: int | None, stream: TextIO | None = None
) -> logging.Handler:
    """Sends the root logger's records at `level` and above to `stream`
    (stderr) in `log_format` ("text" or "json"); returns the handler."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(replica_id))
    else:
        handler.setFormatter(text_formatter(replica_id))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
