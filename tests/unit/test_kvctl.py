"""kvctl: exit codes, output and error messages (fake replicas, no servers).

Runs `main(argv)` in-process for most cases and the real console entry in a
subprocess once, to see exactly what a user would see.
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from client import kvctl
from client.client import KVClient
from kvstore.limits import MAX_VALUE_BYTES
from kvstore.protocol import Response, Status
from replica.launch import free_ports
from tests.unit.test_client import FakeReplica, FakeStore

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def leader() -> Iterator[FakeReplica]:
    fake = FakeReplica(1, FakeStore())
    yield fake
    fake.close()


@pytest.fixture
def run(capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> Run:
    """Runs kvctl.main(argv) with optional stdin bytes; returns (code, out, err)."""

    def runner(*argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        code = kvctl.main(list(argv))
        out, err = capsysbinary.readouterr()
        return code, out.decode(errors="replace"), err.decode(errors="replace")

    return runner


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("command", [[], ["put"], ["get"], ["delete"], ["cas"], ["status"]])
def test_help_explains_exit_codes(run: Run, command: list[str]) -> None:
    code, out, _ = run(*command, "--help")
    assert code == 0
    assert "exit codes" in out and "cluster unavailable" in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["put", "k"],
        ["cas", "k", "v"],
        ["cas", "k", "v", "--expect", "a", "--expect-absent"],
        ["cas", "k", "v", "--expect-version", "-1"],
        ["--timeout", "0", "get", "k"],
        ["--timeout", "soon", "get", "k"],
        ["--timeout", "86400", "get", "k"],
        ["--cluster", "nonsense", "get", "k"],
        ["--cluster", "host:99999", "get", "k"],
        ["cas", "k", "-", "--expect", "-"],
    ],
)
def test_usage_errors_exit_2_with_one_line(run: Run, argv: list[str]) -> None:
    code, _, err = run(*argv)
    assert code == kvctl.EXIT_USAGE
    assert one_error_line(err).startswith("kvctl: error: ")


def test_put_get_delete(run: Run, leader: FakeReplica) -> None:
    c = ["--cluster", leader.address]
    assert run(*c, "put", "k", "hello") == (0, "OK\n", "")
    assert run(*c, "get", "k") == (0, "hello\n", "")
    assert run(*c, "get", "k", "--raw") == (0, "hello", "")
    assert run(*c, "get", "k", "--version") == (0, "1\thello\n", "")
    assert run(*c, "-v", "put", "k", "again") == (0, "OK version 2\n", "")
    assert run(*c, "delete", "k") == (0, "OK\n", "")
    code, out, err = run(*c, "get", "k")
    assert (code, out) == (1, "") and "not found" in one_error_line(err)
    code, out, err = run(*c, "delete", "k")
    assert (code, out) == (1, "") and "not found" in one_error_line(err)


def test_value_from_stdin_is_verbatim(run: Run, leader: FakeReplica) -> None:
    c = ["--cluster", leader.address]
    assert run(*c, "put", "k", "-", stdin=b"line\n\x00bin")[0] == 0
    assert leader.data_requests()[0].value == b"line\n\x00bin"


def test_cas(run: Run, leader: FakeReplica) -> None:
    c = ["--cluster", leader.address]
    assert run(*c, "cas", "k", "v1", "--expect-absent") == (0, "OK\n", "")
    code, _, err = run(*c, "cas", "k", "v2", "--expect-absent")
    assert code == 1 and "current version 1, value 'v1'" in one_error_line(err)
    assert run(*c, "cas", "k", "v2", "--expect", "v1")[0] == 0
    assert run(*c, "cas", "k", "v3", "--expect-version", "2")[0] == 0
    code, _, err = run(*c, "cas", "gone", "x", "--expect", "y")
    assert code == 1 and "does not exist" in one_error_line(err)


def test_a_retried_failed_cas_prints_the_version_only(run: Run) -> None:
    fake = FakeReplica(1, lambda r: Response(Status.CAS_FAILED, None, 7))
    try:
        code, _, err = run("--cluster", fake.address, "cas", "k", "v", "--expect", "x")
    finally:
        fake.close()
    assert code == 1 and one_error_line(err) == "kvctl: cas failed: current version 7"


def test_session_expired_exits_4_with_one_line(run: Run) -> None:
    expired = "session expired or unknown: seq 2 was not applied; start a new session"
    fake = FakeReplica(1, lambda r: Response(Status.SESSION_EXPIRED, error=expired))
    try:
        code, out, err = run("--cluster", fake.address, "put", "k", "v")
    finally:
        fake.close()
    assert (code, out) == (kvctl.EXIT_REJECTED, "")
    assert one_error_line(err) == f"kvctl: error: rejected: {expired}"


def test_help_documents_session_expiry(run: Run) -> None:
    _, out, _ = run("--help")
    assert "session expired" in out


def test_oversized_value_is_rejected_with_exit_4(run: Run, leader: FakeReplica) -> None:
    big = b"x" * (MAX_VALUE_BYTES + 1)
    code, _, err = run("--cluster", leader.address, "put", "k", "-", stdin=big)
    assert code == kvctl.EXIT_REJECTED
    assert "rejected" in one_error_line(err) and "limit" in err
    assert leader.requests == []


def test_status_table(run: Run, leader: FakeReplica) -> None:
    nobody = f"127.0.0.1:{free_ports(1)[0]}"
    code, out, _ = run("--cluster", f"{leader.address},{nobody}", "--timeout", "0.5", "status")
    assert code == 0
    header, first, second = out.splitlines()
    assert header.split() == [
        "ID",
        "ADDRESS",
        "ROLE",
        "LEADER",
        "BALLOT",
        "COMMIT",
        "APPLIED",
        "COMPACTED",
        "LOG",
        "INSTALL",
    ]
    assert first.split()[:5] == ["1", leader.address, "fake", "-", "1.1"]
    assert second.split()[:3] == ["?", nobody, "unreachable"]


def test_status_shows_an_install_in_progress() -> None:
    row = {"id": 2, "address": "tcp://h:1", "role": "follower", "compacted": 9000}
    row["install"] = {"from": 1, "index": 12000, "bytes": 3 << 20, "keys": 4000}
    table = kvctl.format_status_table([row])
    assert "9000" in table and "from 1 @12000: 3.0 MiB, 4000 keys" in table


def test_status_with_nobody_answering_exits_3(run: Run) -> None:
    code, out, err = run("--cluster", f"127.0.0.1:{free_ports(1)[0]}", "--timeout", "0.3", "status")
    assert code == kvctl.EXIT_UNAVAILABLE
    assert "unreachable" in out and "no replica answered" in one_error_line(err)


def test_status_json(run: Run, leader: FakeReplica) -> None:
    import json

    nobody = f"127.0.0.1:{free_ports(1)[0]}"
    argv = ("--cluster", f"{leader.address},{nobody}", "--timeout", "0.5", "status")
    code, out, _ = run(*argv, "-w", "json")
    assert code == 0
    first, second = json.loads(out)
    assert (first["id"], first["role"], first["ballot"]) == (1, "fake", [1, 1])
    assert second["error"] == "unreachable" and nobody in second["address"]
    code, out, err = run("--cluster", nobody, "--timeout", "0.3", "status", "--write-out", "json")
    assert code == kvctl.EXIT_UNAVAILABLE and json.loads(out)[0]["error"] == "unreachable"
    assert "no replica answered" in one_error_line(err)
    code, _, err = run(*argv, "-w", "yaml")
    assert code == kvctl.EXIT_USAGE and "invalid choice" in err


def test_interrupt_exits_130(
    run: Run, leader: FakeReplica, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kw: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(KVClient, "put", interrupted)
    code, _, err = run("--cluster", leader.address, "put", "k", "v")
    assert code == 130 and one_error_line(err) == "kvctl: interrupted"


def test_unexpected_errors_are_one_line(
    run: Run, leader: FakeReplica, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kw: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(KVClient, "get_versioned", broken)
    code, _, err = run("--cluster", leader.address, "get", "k")
    assert code == 1 and "boom" in one_error_line(err)


def test_unreachable_cluster_as_a_user_sees_it() -> None:
    addr = f"127.0.0.1:{free_ports(1)[0]}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "client.kvctl",
            "--cluster",
            addr,
            "--timeout",
            "0.5",
            "put",
            "k",
            "v",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == kvctl.EXIT_UNAVAILABLE
    line = one_error_line(proc.stderr)
    assert line.startswith("kvctl: error: no answer from the cluster") and addr in line
    assert proc.stdout == ""
