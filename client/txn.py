"""Transactions for people: the builders of `KVClient.txn` and the two text
formats `kvctl txn` reads from stdin.

Builders (etcd's Python clients read the same way):

    from client import KVClient, cmp, op

    kv.txn(
        [cmp.value("acct/a") == "100", cmp.version("acct/b") > 0],
        [op.put("acct/a", "90"), op.put("acct/b", "110")],
        [op.get("acct/a")],
    )

`cmp.value/version/mod/create(key)` compared with ==, !=, < or > give a
`Compare`; `cmp.exists(key)` and `cmp.missing(key)` need no operator.
`version` and `mod` are the same number here: a key's version IS its last
modification revision (etcd's mod_revision), the number `kvctl get
--version` prints and CAS checks. `op.put`, `op.delete`, `op.get` (with
`prefix=`, `from_key=`, `range_end=`, and for `get` `limit=`,
`keys_only=`, `count_only=`) give a `TxnOp`.

The JSON format (what `kvctl txn` reads when the input starts with `{`):

    {"compare": [{"key": "acct/a", "target": "value", "op": "=", "value": "100"},
                 {"key": "acct/b", "target": "version", "op": ">", "value": 0},
                 {"key": "lock", "target": "exists", "value": false}],
     "success": [{"put": {"key": "acct/a", "value": "90"}},
                 {"delete": {"key": "tmp/", "prefix": true}},
                 {"get": {"key": "acct/", "prefix": true, "limit": 10}}],
     "failure": [{"get": {"key": "acct/a"}}]}

target: value, version (or mod), create, exists; op: =, !=, <, > (default
=). Keys and values are strings (UTF-8); `key_base64`, `value_base64` and
`range_end_base64` give bytes instead. An operation takes `range_end`,
`prefix` or `from_key`; `get` also `limit`, `keys_only`, `count_only`.

etcdctl's format (anything else): comparisons one per line, an empty line,
the success operations, an empty line, the failure operations:

    mod("acct/b") > "0"
    val("acct/a") = "100"

    put acct/a 90
    del tmp/ --prefix

    get acct/a

Comparisons are `val|value|ver|version|mod|create("KEY") OP "OPERAND"`
(plus `exists("KEY") = "true"|"false"`, not etcdctl's); operations are `put
KEY VALUE`, `get KEY [RANGE_END] [--prefix] [--from-key] [--limit N]
[--keys-only] [--count-only]` and `del KEY [RANGE_END] [--prefix]
[--from-key]`, quoted like a shell command line. Every problem raises
`TxnSyntaxError` naming the line or the field.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shlex
from collections.abc import Iterable
from typing import Any

from kvstore.protocol import (
    FROM_KEY,
    Compare,
    CompareOp,
    CompareTarget,
    Txn,
    TxnOp,
    TxnOpKind,
    prefix_end,
)

__all__ = ["TXN_HELP", "TxnSyntaxError", "cmp", "op", "parse_etcdctl", "parse_json", "parse_txn"]

TXN_HELP = """\
input, JSON (when it starts with '{'):
  {"compare": [{"key": "acct/a", "target": "value", "op": "=", "value": "100"},
               {"key": "acct/b", "target": "version", "op": ">", "value": 0},
               {"key": "lock", "target": "exists", "value": false}],
   "success": [{"put": {"key": "acct/a", "value": "90"}},
               {"delete": {"key": "tmp/", "prefix": true}},
               {"get": {"key": "acct/", "prefix": true, "limit": 10}}],
   "failure": [{"get": {"key": "acct/a"}}]}
  target: value, version (= mod: a key's version is its last modification
  revision), create (the revision that created it), exists; op: =, !=, <, >
  (default =); a value comparison on a missing key is false. Keys and values
  are strings; key_base64, value_base64, range_end_base64 give raw bytes.
  delete and get take range_end, prefix or from_key; get also limit,
  keys_only, count_only.

input, etcdctl's format (otherwise): comparisons, an empty line, success
operations, an empty line, failure operations, one per line:
  mod("acct/b") > "0"
  val("acct/a") = "100"

  put acct/a 90
  del tmp/ --prefix

  get acct/a
  comparisons: val|ver|mod|create("KEY") =|!=|<|> "OPERAND", and
  exists("KEY") = "true"|"false"; operations: put KEY VALUE,
  get KEY [RANGE_END] [--prefix|--from-key] [--limit N] [--keys-only|--count-only],
  del KEY [RANGE_END] [--prefix|--from-key] (quoted as in a shell).

bounds: at most 128 comparisons and 128 operations per branch, 2 MiB - 8 KiB
of keys and values in all; the gets of one transaction return at most 5,000
keys or about 4 MiB together; its deletes delete at most 10,000 keys.
"""


class TxnSyntaxError(ValueError):
    """A transaction text that cannot be read; the message says where."""


def _bytes(data: bytes | str, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8", "surrogateescape")
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")


def range_args(
    key: bytes | str,
    range_end: bytes | str | None = None,
    *,
    prefix: bool = False,
    from_key: bool = False,
) -> tuple[bytes, bytes | None]:
    """(key, range_end) on the wire for a range given by a prefix, from a
    key, or [key, range_end); an empty key with a prefix or from-key means
    every key (b"\\0", the smallest key, is sent)."""
    raw = _bytes(key, "key")
    if prefix + from_key + (range_end is not None) > 1:
        raise ValueError("give at most one of range_end, prefix and from_key")
    if prefix:
        return raw or b"\0", prefix_end(raw)
    if from_key:
        return raw or b"\0", FROM_KEY
    return raw, None if range_end is None else _bytes(range_end, "range_end")


# -- builders -------------------------------------------------------------------


class _Target:
    """`cmp.value(key)` and friends: compared with ==, !=, <, > to a Compare."""

    __slots__ = ("key", "target")
    __hash__ = None  # == builds a Compare: not hashable

    def __init__(self, target: CompareTarget, key: bytes | str) -> None:
        self.target = target
        self.key = _bytes(key, "key")

    def _make(self, op: CompareOp, operand: Any) -> Compare:
        if self.target is CompareTarget.VALUE:
            operand = _bytes(operand, "the compared value")
        return Compare(self.target, op, self.key, operand)

    def __eq__(self, operand: Any) -> Compare:
        return self._make(CompareOp.EQUAL, operand)

    def __ne__(self, operand: Any) -> Compare:
        return self._make(CompareOp.NOT_EQUAL, operand)

    def __lt__(self, operand: Any) -> Compare:
        return self._make(CompareOp.LESS, operand)

    def __gt__(self, operand: Any) -> Compare:
        return self._make(CompareOp.GREATER, operand)


class cmp:  # noqa: N801 - a namespace, read as cmp.value(key) == v
    """Comparisons of a transaction (see the module docstring)."""

    @staticmethod
    def value(key: bytes | str) -> _Target:
        return _Target(CompareTarget.VALUE, key)

    @staticmethod
    def version(key: bytes | str) -> _Target:
        return _Target(CompareTarget.VERSION, key)

    mod = version  # the same number: a key's version is its mod revision

    @staticmethod
    def create(key: bytes | str) -> _Target:
        return _Target(CompareTarget.CREATE, key)

    @staticmethod
    def exists(key: bytes | str) -> Compare:
        return Compare(CompareTarget.EXISTS, CompareOp.EQUAL, _bytes(key, "key"), True)

    @staticmethod
    def missing(key: bytes | str) -> Compare:
        return Compare(CompareTarget.EXISTS, CompareOp.EQUAL, _bytes(key, "key"), False)


class op:  # noqa: N801 - a namespace, read as op.put(key, value)
    """Operations of a transaction (see the module docstring)."""

    @staticmethod
    def put(key: bytes | str, value: bytes | str) -> TxnOp:
        return TxnOp(TxnOpKind.PUT, _bytes(key, "key"), value=_bytes(value, "value"))

    @staticmethod
    def delete(
        key: bytes | str,
        range_end: bytes | str | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
    ) -> TxnOp:
        start, end = range_args(key, range_end, prefix=prefix, from_key=from_key)
        return TxnOp(TxnOpKind.DELETE, start, end)

    @staticmethod
    def get(
        key: bytes | str,
        range_end: bytes | str | None = None,
        *,
        prefix: bool = False,
        from_key: bool = False,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
    ) -> TxnOp:
        start, end = range_args(key, range_end, prefix=prefix, from_key=from_key)
        return TxnOp(TxnOpKind.RANGE, start, end, None, limit, keys_only, count_only)


# -- text formats ---------------------------------------------------------------


def parse_txn(text: str) -> Txn:
    """JSON when the text starts with `{`, else etcdctl's format."""
    if text.lstrip().startswith("{"):
        return parse_json(text)
    return parse_etcdctl(text.splitlines())


_TARGETS = {
    "value": CompareTarget.VALUE,
    "val": CompareTarget.VALUE,
    "version": CompareTarget.VERSION,
    "ver": CompareTarget.VERSION,
    "mod": CompareTarget.VERSION,
    "create": CompareTarget.CREATE,
    "exists": CompareTarget.EXISTS,
}
_OPS = {
    "=": CompareOp.EQUAL,
    "==": CompareOp.EQUAL,
    "!=": CompareOp.NOT_EQUAL,
    "<": CompareOp.LESS,
    ">": CompareOp.GREATER,
}


def parse_json(text: str) -> Txn:
    """A transaction in the JSON format of the module docstring."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TxnSyntaxError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise TxnSyntaxError("a JSON transaction is an object with compare, success, failure")
    unknown = set(doc) - {"compare", "success", "failure"}
    if unknown:
        raise TxnSyntaxError(f"unknown field(s) {sorted(unknown)}: use compare, success, failure")
    compares = [_json_compare(c, f"compare[{i}]") for i, c in enumerate(_list(doc, "compare"))]
    branches = [
        tuple(_json_op(o, f"{name}[{i}]") for i, o in enumerate(_list(doc, name)))
        for name in ("success", "failure")
    ]
    return Txn(tuple(compares), *branches)


def _list(doc: dict, name: str) -> list:
    items = doc.get(name, [])
    if not isinstance(items, list):
        raise TxnSyntaxError(f"{name} must be a list")
    return items


def _field_bytes(obj: dict, name: str, where: str, required: bool = True) -> bytes | None:
    """`name` (a string) or `name_base64`, as bytes."""
    if name in obj and f"{name}_base64" in obj:
        raise TxnSyntaxError(f"{where}: give {name} or {name}_base64, not both")
    if f"{name}_base64" in obj:
        encoded = obj[f"{name}_base64"]
        try:
            return base64.b64decode(_str(encoded, f"{where}.{name}_base64"), validate=True)
        except binascii.Error:
            raise TxnSyntaxError(f"{where}: {name}_base64 is not valid base64") from None
    if name in obj:
        return _str(obj[name], f"{where}.{name}").encode("utf-8", "surrogateescape")
    if required:
        raise TxnSyntaxError(f"{where}: {name} is missing")
    return None


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise TxnSyntaxError(f"{where} must be a string")
    return value


def _json_compare(obj: Any, where: str) -> Compare:
    if not isinstance(obj, dict):
        raise TxnSyntaxError(f"{where} must be an object")
    unknown = set(obj) - {"key", "key_base64", "target", "op", "value", "value_base64"}
    if unknown:
        raise TxnSyntaxError(f"{where}: unknown field(s) {sorted(unknown)}")
    key = _field_bytes(obj, "key", where)
    target = _TARGETS.get(obj.get("target", ""))
    if target is None:
        raise TxnSyntaxError(f"{where}: target must be value, version, mod, create or exists")
    operator = _OPS.get(obj.get("op", "="))
    if operator is None:
        raise TxnSyntaxError(f"{where}: op must be =, !=, < or >")
    if target is CompareTarget.VALUE:
        operand: Any = _field_bytes(obj, "value", where)
    elif "value" not in obj:
        raise TxnSyntaxError(f"{where}: value is missing")
    else:
        operand = obj["value"]
        wanted = bool if target is CompareTarget.EXISTS else int
        if type(operand) is not wanted:
            kind = "true or false" if wanted is bool else "an integer"
            raise TxnSyntaxError(f"{where}: a {target.name.lower()} comparison's value is {kind}")
    assert key is not None
    return Compare(target, operator, key, operand)


_OP_FIELDS = {
    "put": {"key", "value"},
    "delete": {"key", "range_end", "prefix", "from_key"},
    "get": {"key", "range_end", "prefix", "from_key", "limit", "keys_only", "count_only"},
}


def _json_op(obj: Any, where: str) -> TxnOp:
    if not isinstance(obj, dict) or len(obj) != 1 or next(iter(obj)) not in _OP_FIELDS:
        raise TxnSyntaxError(f'{where} must be {{"put": ...}}, {{"delete": ...}} or {{"get": ...}}')
    ((kind, args),) = obj.items()
    if not isinstance(args, dict):
        raise TxnSyntaxError(f"{where}.{kind} must be an object")
    allowed = _OP_FIELDS[kind]
    unknown = {f.removesuffix("_base64") for f in args} - allowed
    if unknown:
        raise TxnSyntaxError(f"{where}.{kind}: unknown field(s) {sorted(unknown)}")
    key = _field_bytes(args, "key", f"{where}.{kind}")
    assert key is not None
    if kind == "put":
        return op.put(key, _field_bytes(args, "value", f"{where}.put") or b"")
    flags = {}
    for name in ("prefix", "from_key", "keys_only", "count_only"):
        if name in args:
            if type(args[name]) is not bool:
                raise TxnSyntaxError(f"{where}.{kind}.{name} must be true or false")
            flags[name] = args[name]
    if "limit" in args:
        if type(args["limit"]) is not int or args["limit"] < 0:
            raise TxnSyntaxError(f"{where}.get.limit must be an integer >= 0")
        flags["limit"] = args["limit"]
    end = _field_bytes(args, "range_end", f"{where}.{kind}", required=False)
    build = op.delete if kind == "delete" else op.get
    try:
        return build(key, end, **flags)
    except ValueError as exc:
        raise TxnSyntaxError(f"{where}.{kind}: {exc}") from None


_COMPARE_LINE = re.compile(r'^\s*(\w+)\("((?:[^"\\]|\\.)*)"\)\s*(==|=|!=|<|>)\s*(.*?)\s*$')


def parse_etcdctl(lines: Iterable[str]) -> Txn:
    """etcdctl's txn format: comparisons, an empty line, success operations,
    an empty line, failure operations (a missing section is empty)."""
    sections: list[list[tuple[int, str]]] = [[]]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            if len(sections) == 3:
                continue  # trailing empty lines
            sections.append([])
        else:
            sections[-1].append((number, line))
    sections += [[]] * (3 - len(sections))
    compares = tuple(_etcdctl_compare(n, line) for n, line in sections[0])
    success = tuple(_etcdctl_op(n, line) for n, line in sections[1])
    failure = tuple(_etcdctl_op(n, line) for n, line in sections[2])
    return Txn(compares, success, failure)


def _unquote(text: str, where: str) -> str:
    """A double-quoted operand with JSON escapes, or a bare word."""
    if text.startswith('"'):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise TxnSyntaxError(f"{where}: bad quoting in {text}") from None
        if not isinstance(value, str):
            raise TxnSyntaxError(f"{where}: bad quoting in {text}")
        return value
    if not text or " " in text:
        raise TxnSyntaxError(f'{where}: the operand must be one word or "quoted"')
    return text


def _etcdctl_compare(number: int, line: str) -> Compare:
    where = f"line {number}"
    match = _COMPARE_LINE.match(line)
    if match is None:
        raise TxnSyntaxError(
            f'{where}: a comparison reads like val("KEY") = "VALUE", got {line.strip()!r}'
        )
    name, quoted_key, operator, operand_text = match.groups()
    target = _TARGETS.get(name)
    if target is None:
        raise TxnSyntaxError(f"{where}: unknown target {name}(): use val, ver, mod or create")
    key = _unquote(f'"{quoted_key}"', where).encode("utf-8", "surrogateescape")
    operand_str = _unquote(operand_text, where)
    operand: bytes | int | bool
    if target is CompareTarget.VALUE:
        operand = operand_str.encode("utf-8", "surrogateescape")
    elif target is CompareTarget.EXISTS:
        if operand_str not in ("true", "false"):
            raise TxnSyntaxError(f'{where}: exists() compares to "true" or "false"')
        operand = operand_str == "true"
    else:
        if not operand_str.isdigit():
            raise TxnSyntaxError(f"{where}: {name}() compares to an integer >= 0")
        operand = int(operand_str)
    return Compare(target, _OPS[operator], key, operand)


def _etcdctl_op(number: int, line: str) -> TxnOp:
    where = f"line {number}"
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise TxnSyntaxError(f"{where}: {exc}") from None
    name, args = words[0], words[1:]
    try:
        if name == "put":
            if len(args) != 2:
                raise TxnSyntaxError(f"{where}: put takes KEY VALUE")
            return op.put(args[0], args[1])
        if name in ("get", "del", "delete"):
            return _etcdctl_range(name, args, where)
    except ValueError as exc:
        raise TxnSyntaxError(f"{where}: {exc}") from None
    raise TxnSyntaxError(f"{where}: unknown operation {name!r}: use put, get or del")


def _etcdctl_range(name: str, args: list[str], where: str) -> TxnOp:
    flags: dict[str, Any] = {}
    positional: list[str] = []
    allowed = {"--prefix", "--from-key"}
    if name == "get":
        allowed |= {"--limit", "--keys-only", "--count-only"}
    it = iter(args)
    for word in it:
        if word.startswith("--") and word.split("=")[0] in allowed:
            flag, _, inline = word.partition("=")
            if flag == "--limit":
                text = inline or next(it, "")
                if not text.isdigit():
                    raise TxnSyntaxError(f"{where}: --limit takes an integer >= 0")
                flags["limit"] = int(text)
            else:
                flags[flag[2:].replace("-", "_")] = True
        elif word.startswith("--"):
            raise TxnSyntaxError(f"{where}: {name} does not take {word}")
        else:
            positional.append(word)
    if not 1 <= len(positional) <= 2:
        raise TxnSyntaxError(f"{where}: {name} takes KEY [RANGE_END]")
    build = op.get if name == "get" else op.delete
    return build(*positional, **flags)
