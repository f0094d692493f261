"""Fixtures for the docker-compose tests (tests/docker/).

`docker_env` (session): checks that a Docker engine answers and a compose
command exists, and brings the project image up to date with the tree
(`scripts/docker-prep.sh --skip-apt --skip-engine`: the wheelhouse and the
image; the debootstrap base only if it is missing). Where there is no
engine, every docker test is skipped with one line saying why, unless
PAXOSKV_DOCKER_REQUIRED=1, which turns that skip into a failure (CI on a
machine where the engine is known to work).

Environment:
  PAXOSKV_DOCKER_REQUIRED=1   fail instead of skipping when docker is missing
  PAXOSKV_DOCKER_SKIP_BUILD=1 use the image as it is (e.g. built just before)
  PAXOSKV_COMPOSE             the compose command, e.g. "docker-compose"
                              (default: `docker compose` if it works, else
                              `docker-compose`)
  PAXOSKV_IMAGE, PAXOSKV_BASE_IMAGE   as for scripts/docker-prep.sh
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PREP = ROOT / "scripts" / "docker-prep.sh"
# The compose projects of this test are named PROJECT_PREFIX + pid + "x" + hex.
PROJECT_PREFIX = "paxoskvtest"


@dataclass
class DockerEnv:
    compose: list[str]  # e.g. ["docker", "compose"] or ["docker-compose"]
    image: str
    timings: dict[str, float] = field(default_factory=dict)


def _run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _unavailable(reason: str) -> None:
    line = f"docker tests: {reason}"
    if os.environ.get("PAXOSKV_DOCKER_REQUIRED") == "1":
        pytest.fail(line + " (PAXOSKV_DOCKER_REQUIRED=1)", pytrace=False)
    pytest.skip(line)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _compose_command() -> list[str] | None:
    forced = os.environ.get("PAXOSKV_COMPOSE")
    candidates = [shlex.split(forced)] if forced else [["docker", "compose"], ["docker-compose"]]
    for cmd in candidates:
        if shutil.which(cmd[0]) is None:
            continue
        try:
            if _run(cmd + ["version"], timeout=30).returncode == 0:
                return cmd
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_projects() -> list[str]:
    """Removes what earlier, interrupted runs of this test left behind:
    containers, volumes and networks of projects named PROJECT_PREFIX<pid>x...
    whose pid no longer runs (a live pid may be a concurrent run)."""
    removed: list[str] = []
    kinds = {  # kind: (list command, its id field, remove command)
        "container": (["docker", "ps", "-a"], "{{.ID}}", ["docker", "rm", "-f", "-v"]),
        "volume": (["docker", "volume", "ls"], "{{.Name}}", ["docker", "volume", "rm", "-f"]),
        "network": (["docker", "network", "ls"], "{{.ID}}", ["docker", "network", "rm"]),
    }
    for kind, (ls, id_field, rm) in kinds.items():
        out = _run(
            ls
            + [
                "--filter",
                "label=com.docker.compose.project",
                "--format",
                id_field + ' {{.Label "com.docker.compose.project"}}',
            ],
            timeout=60,
        )
        stale = []
        for line in out.stdout.splitlines():
            ident, _, project = line.partition(" ")
            if not project.startswith(PROJECT_PREFIX):
                continue
            pid = project[len(PROJECT_PREFIX) :].partition("x")[0]
            if pid.isdigit() and not _pid_alive(int(pid)):
                stale.append(ident)
        if stale:
            _run(rm + stale, timeout=120)
            removed += [f"{kind} {s}" for s in stale]
    return removed


@pytest.fixture(scope="session")
def docker_env() -> DockerEnv:
    if shutil.which("docker") is None:
        _unavailable("no `docker` command (scripts/docker-prep.sh installs docker.io)")
    try:
        info = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30)
    except subprocess.TimeoutExpired:
        _unavailable("`docker info` did not answer in 30 s")
    if info.returncode != 0:
        _unavailable(
            f"no Docker engine answers ({_first_line(info.stderr)}); "
            "run scripts/docker-prep.sh as root to install and start one"
        )
    compose = _compose_command()
    if compose is None:
        _unavailable(
            "neither `docker compose` nor `docker-compose` works (apt-get install docker-compose)"
        )
    image = os.environ.get("PAXOSKV_IMAGE", "paxoskv:latest")
    env = DockerEnv(compose=compose, image=image)
    remove_stale_projects()
    if os.environ.get("PAXOSKV_DOCKER_SKIP_BUILD") != "1":
        # Image from this tree: a few seconds when nothing changed; the
        # debootstrap base (about a minute) only when missing.
        t0 = time.monotonic()
        prep = _run(["bash", str(PREP), "--skip-apt", "--skip-engine"], timeout=900, cwd=ROOT)
        env.timings["image build (docker-prep.sh --skip-apt --skip-engine)"] = time.monotonic() - t0
        if prep.returncode != 0:
            pytest.fail(
                "scripts/docker-prep.sh --skip-apt --skip-engine failed:\n" + prep.stderr[-4000:],
                pytrace=False,
            )
    if _run(["docker", "image", "inspect", image], timeout=60).returncode != 0:
        pytest.fail(f"image {image} is missing (run scripts/docker-prep.sh)", pytrace=False)
    return env
