"""replica/logfmt.py: the replica's text and JSON log lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from replica.logfmt import JsonFormatter, configure, event, text_formatter


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, with its handlers and level restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_time_level_replica_event_and_fields(
    root_logger: logging.Logger,
) -> None:
    out = io.StringIO()
    configure("info", "json", 3, stream=out)
    log = logging.getLogger("replica.test")
    log.info("replica %d is now the leader", 3, extra=event("leader_elected", ballot=[4, 3]))
    log.debug("not shown at info")
    log.warning("plain %s", "message")
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        log.exception("fatal", extra=event("fatal_error", path=b"/data"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["time"].endswith("Z") and len(first["time"]) == len("2026-01-01T00:00:00.000Z")
    assert {k: first[k] for k in ("level", "replica", "event", "message", "fields")} == {
        "level": "info",
        "replica": 3,
        "event": "leader_elected",
        "message": "replica 3 is now the leader",
        "fields": {"ballot": [4, 3]},
    }
    assert (second["event"], second["fields"], second["level"]) == ("message", {}, "warning")
    assert third["fields"] == {"path": "b'/data'"}  # not JSON: its str()
    assert "RuntimeError: disk on fire" in third["exception"]


def test_text_stays_the_default_format(root_logger: logging.Logger) -> None:
    out = io.StringIO()
    configure("info", "text", 2, stream=out)
    logging.getLogger("replica.test").info("hello %d", 5, extra=event("greeting", n=5))
    line = out.getvalue().strip()
    assert line.endswith(" replica-2 INFO hello 5")
    with pytest.raises(ValueError):
        configure("info", "xml", 2)


def test_formatters_alone() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "m %s", ("a",), None)
    assert json.loads(JsonFormatter(None).format(record))["replica"] is None
    assert "replica ERROR m a" in text_formatter(None).format(record)
