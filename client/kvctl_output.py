"""kvctl's output formats, `-w simple|json|table` (`--write-out`), as etcdctl's.

- simple (the default): each command's own lines, as kvctl always printed
  them; the commands write those themselves (`Output.simple`).
- json: one JSON object per line and per result (a command's answer, each
  event of a watch, each keep-alive of `lease keep-alive --forever`), with
  a "header" first: {"revision": the store's revision of the answer,
  "leader_id", "replica_id": the replica that answered}. Keys and values
  are strings when they are UTF-8, else base64 under NAME_base64 (as the
  JSON transactions `kvctl txn` reads).
- table: the same fields as an aligned table with a title row.

Where the header comes from: answers carry the revision only for some
operations (a put's, a txn's, a range's), and never which replica
answered or who leads; `Header` asks STATUS of the replica that gave the
client its last answer (`KVClient.answered_status`: one round trip, and
only in json and table mode) and takes the revision of the answer itself
when the command has one, else the replica's revision at that moment.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client.client import KVClient

FORMATS = ("simple", "json", "table")
STATUS_CACHE_S = 1.0
"""How long a replica's STATUS serves the headers of a stream (watch)."""


def jsonable(value: Any, name: str = "") -> tuple[str, Any]:
    """(name, value) made JSON: bytes as a string if UTF-8, else base64
    under name_base64; dicts and lists element by element."""
    if isinstance(value, bytes):
        try:
            return name, value.decode("utf-8")
        except UnicodeDecodeError:
            return f"{name}_base64", base64.b64encode(value).decode("ascii")
    if isinstance(value, dict):
        return name, dict(jsonable(v, str(k)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return name, [jsonable(v)[1] for v in value]
    return name, value


def cell(value: Any) -> str:
    """A table cell: bytes decoded (undecodable bytes escaped), None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def format_table(titles: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An aligned table: a title row, then one line per row, two spaces
    between columns, no trailing blanks."""
    table = [list(titles)] + [[cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(titles))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table)
    return "\n".join(line.rstrip() for line in lines)


class Output:
    """Writes a command's results in the format chosen with -w."""

    def __init__(self, fmt: str, client: KVClient | None) -> None:
        self.fmt = fmt
        self.client = client
        self._status: tuple[float, int | None, dict[str, Any]] | None = None

    @property
    def simple(self) -> bool:
        return self.fmt == "simple"

    def header(self, revision: int | None = None, client: KVClient | None = None) -> dict:
        """{"revision", "leader_id", "replica_id"} of the last answer of
        `client` (default: the command's), `revision` when the answer had
        one. A replica's STATUS is kept for STATUS_CACHE_S (a stream's
        events share it)."""
        kv = client or self.client
        info: dict[str, Any] = {}
        if kv is not None:
            index = kv._answered
            now = time.monotonic()
            cached = self._status
            if cached is not None and cached[1] == index and now - cached[0] < STATUS_CACHE_S:
                info = cached[2]
            else:
                info = kv.answered_status()
                self._status = (now, index, info)
        return {
            "revision": info.get("revision") if revision is None else revision,
            "leader_id": info.get("leader"),
            "replica_id": info.get("id"),
        }

    def emit(
        self,
        fields: dict[str, Any],
        *,
        revision: int | None = None,
        table: tuple[Sequence[str], Iterable[Sequence[Any]]] | None = None,
        client: KVClient | None = None,
    ) -> None:
        """One result: in json, `fields` after the header; in table,
        `table` (titles, rows), by default one row of the fields."""
        if self.fmt == "json":
            obj = {"header": self.header(revision, client), **jsonable(fields)[1]}
            line = json.dumps(obj, sort_keys=False)
        else:
            titles, rows = table or ([k.upper() for k in fields], [list(fields.values())])
            line = format_table(titles, rows)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def kv_fields(kv: Any) -> dict[str, Any]:
    """A KeyValue in json: key, value (absent when keys only), version
    (its last modification revision), create_revision."""
    fields: dict[str, Any] = {"key": kv.key}
    if kv.value is not None:
        fields["value"] = kv.value
    fields["version"] = kv.version
    fields["create_revision"] = kv.create_revision
    return fields


KV_TITLES = ("KEY", "VALUE", "VERSION", "CREATE_REVISION")


def kv_row(kv: Any) -> list[Any]:
    return [kv.key, kv.value, kv.version, kv.create_revision]
