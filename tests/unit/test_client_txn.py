"""client/txn.py: the builders of KVClient.txn, the range arguments, and the
two text formats kvctl txn reads (JSON and etcdctl's), errors included."""

from __future__ import annotations

import pytest

from client.txn import TxnSyntaxError, cmp, op, parse_etcdctl, parse_json, parse_txn, range_args
from kvstore.protocol import (
    FROM_KEY,
    Compare,
    CompareOp,
    CompareTarget,
    Op,
    Request,
    Txn,
    TxnOp,
    TxnOpKind,
    validate_request,
)

C = CompareTarget

EXPECTED = Txn(
    (
        Compare(C.VERSION, CompareOp.GREATER, b"acct/b", 0),
        Compare(C.VALUE, CompareOp.EQUAL, b"acct/a", b"100"),
        Compare(C.CREATE, CompareOp.LESS, b"x", 5),
        Compare(C.EXISTS, CompareOp.EQUAL, b"lock", False),
    ),
    (
        TxnOp(TxnOpKind.PUT, b"acct/a", value=b"90 units"),
        TxnOp(TxnOpKind.DELETE, b"tmp/", b"tmp0"),
        TxnOp(TxnOpKind.RANGE, b"acct/", b"acct0", None, 10, True),
    ),
    (TxnOp(TxnOpKind.RANGE, b"a", FROM_KEY, count_only=True), TxnOp(TxnOpKind.DELETE, b"k")),
)

ETCDCTL = """\
mod("acct/b") > "0"
val("acct/a") = "100"
create("x") < "5"
exists("lock") = "false"

put acct/a "90 units"
del tmp/ --prefix
get acct/ --prefix --limit 10 --keys-only

get a --from-key --count-only
del k
"""

JSON = """{
 "compare": [
  {"key": "acct/b", "target": "mod", "op": ">", "value": 0},
  {"key": "acct/a", "target": "value", "value": "100"},
  {"key_base64": "eA==", "target": "create", "op": "<", "value": 5},
  {"key": "lock", "target": "exists", "op": "==", "value": false}],
 "success": [
  {"put": {"key": "acct/a", "value": "90 units"}},
  {"delete": {"key": "tmp/", "prefix": true}},
  {"get": {"key": "acct/", "prefix": true, "limit": 10, "keys_only": true}}],
 "failure": [
  {"get": {"key": "a", "from_key": true, "count_only": true}},
  {"delete": {"key": "k"}}]
}"""


def test_the_builders() -> None:
    built = Txn(
        (
            cmp.mod("acct/b") > 0,
            cmp.value("acct/a") == "100",
            cmp.create(b"x") < 5,
            cmp.missing("lock"),
        ),
        (
            op.put("acct/a", "90 units"),
            op.delete("tmp/", prefix=True),
            op.get("acct/", prefix=True, limit=10, keys_only=True),
        ),
        (op.get("a", from_key=True, count_only=True), op.delete("k")),
    )
    assert built == EXPECTED
    assert (cmp.version("k") != 3) == Compare(C.VERSION, CompareOp.NOT_EQUAL, b"k", 3)
    assert cmp.exists("k") == Compare(C.EXISTS, CompareOp.EQUAL, b"k", True)


def test_both_formats_read_the_same_transaction() -> None:
    assert parse_etcdctl(ETCDCTL.splitlines()) == EXPECTED
    assert parse_json(JSON) == EXPECTED
    assert parse_txn(ETCDCTL) == parse_txn("  \n" + JSON) == EXPECTED
    assert validate_request(Request(Op.TXN, b"c" * 16, 1, txn=EXPECTED)) is None


def test_missing_sections_are_empty() -> None:
    assert parse_etcdctl([]) == Txn()
    assert parse_etcdctl(["", "put k v"]) == Txn((), (op.put("k", "v"),), ())
    assert parse_etcdctl(["", "", "get k", "", ""]) == Txn((), (), (op.get("k"),))
    assert parse_json("{}") == Txn()


def test_range_args() -> None:
    assert range_args("p/", prefix=True) == (b"p/", b"p0")
    assert range_args("", prefix=True) == (b"\0", FROM_KEY)  # every key
    assert range_args("", from_key=True) == (b"\0", FROM_KEY)
    assert range_args("k", from_key=True) == (b"k", FROM_KEY)
    assert range_args("a", "c") == (b"a", b"c")
    assert range_args("k") == (b"k", None)
    with pytest.raises(ValueError, match="at most one"):
        range_args("a", "c", prefix=True)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('val("k") ~ "v"', "line 1: a comparison reads like"),
        ('lease("k") = "1"', "unknown target lease()"),
        ('ver("k") = "x"', "integer"),
        ('exists("k") = "maybe"', '"true" or "false"'),
        ('val("k") = "unterminated', "quoting"),
        ('val("k") = two words', "one word"),
        ("\nfrobnicate k", "line 2: unknown operation"),
        ("\nput k", "put takes KEY VALUE"),
        ("\nget", "get takes KEY [RANGE_END]"),
        ("\nget a b c", "get takes KEY [RANGE_END]"),
        ("\ndel k --limit 3", "del does not take --limit"),
        ("\nget k --limit x", "--limit takes an integer"),
        ("\nget k z --prefix", "at most one of range_end, prefix"),
        ("\nput 'k v", "No closing quotation"),
        ("[1]", "line 1: a comparison"),  # not JSON: read as etcdctl's
        ("{", "not valid JSON"),
        ('{"compares": []}', "unknown field(s) ['compares']"),
        ('{"compare": {}}', "compare must be a list"),
        ('{"compare": [{"target": "value", "value": "v"}]}', "compare[0]: key is missing"),
        ('{"compare": [{"key": "k", "target": "lease", "value": 1}]}', "target must be"),
        ('{"compare": [{"key": "k", "target": "value", "op": "~", "value": "v"}]}', "op must"),
        ('{"compare": [{"key": "k", "target": "version", "value": "1"}]}', "an integer"),
        ('{"compare": [{"key": "k", "target": "exists", "value": 1}]}', "true or false"),
        ('{"compare": [{"key": "k", "target": "version"}]}', "value is missing"),
        ('{"compare": [{"key": 5, "target": "exists", "value": true}]}', "key must be a string"),
        ('{"compare": [{"key_base64": "%%", "target": "exists", "value": true}]}', "base64"),
        ('{"compare": [{"key": "k", "key_base64": "aw==", "target": "x"}]}', "not both"),
        ('{"compare": [{"key": "k", "target": "exists", "value": true, "x": 1}]}', "['x']"),
        ('{"success": [{"put": {"key": "k"}}]}', "success[0].put: value is missing"),
        ('{"success": [{"put": {"key": "k", "value": "v"}, "get": {}}]}', "must be"),
        ('{"success": [{"upsert": {"key": "k"}}]}', "success[0] must be"),
        ('{"failure": [{"get": {"key": "k", "limit": -1}}]}', "limit must be an integer"),
        ('{"failure": [{"delete": {"key": "k", "limit": 1}}]}', "unknown field(s) ['limit']"),
        ('{"failure": [{"get": {"key": "k", "prefix": "yes"}}]}', "prefix must be true"),
        ('{"failure": [{"get": {"key": "k", "prefix": true, "from_key": true}}]}', "at most one"),
        ('{"failure": [{"get": []}]}', "failure[0].get must be an object"),
    ],
)
def test_errors_say_where(text: str, words: str) -> None:
    with pytest.raises(TxnSyntaxError) as exc:
        parse_txn(text)
    assert words in str(exc.value)
