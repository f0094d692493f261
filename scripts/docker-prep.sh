#!/usr/bin/env bash
# Prepares a machine with no container registry (an air-gapped site, or CI
# here) to build and run the docker-compose cluster. Idempotent: every step
# checks first and does nothing when its result is already there.
#
#   1. apt:       install docker.io, docker-compose, debootstrap, iptables if missing
#   2. engine:    start dockerd in the background if `docker info` fails
#                 (its pid goes to $PAXOSKV_DOCKERD_PIDFILE, so a test or CI
#                 can stop exactly what this script started)
#   3. base:      build a base image with Debian's Python by debootstrap from
#                 the mirror apt already uses, `docker import` it
#                 (skipped when the image exists)
#   4. wheelhouse: wheels of paxoskv and its dependencies for the base
#                 image's Python, in .wheelhouse/ (offline when it already
#                 holds what is needed)
#   5. image:     docker build --build-arg BASE_IMAGE=... --build-arg WHEELHOUSE=.wheelhouse
#
# Usage: scripts/docker-prep.sh [options]
#   --skip-apt --skip-engine --skip-base --skip-wheelhouse --skip-image
#   --only STEP[,STEP]      run only these steps (apt,engine,base,wheelhouse,image)
#   --base-image NAME       use this base image instead of building one
#                           (e.g. python:3.12-slim where a registry is reachable)
#   --image NAME            tag of the project image (default paxoskv:latest)
#   --rebuild-base          rebuild the debootstrap base even if it exists
#   --stop-engine           stop the dockerd this script started (by its pid file) and exit
#   -h, --help
# Environment (same meaning; flags win):
#   PAXOSKV_SKIP_APT=1 PAXOSKV_SKIP_ENGINE=1 PAXOSKV_SKIP_BASE=1
#   PAXOSKV_SKIP_WHEELHOUSE=1 PAXOSKV_SKIP_IMAGE=1
#   PAXOSKV_BASE_IMAGE      base image (default: build paxoskv-base:bookworm)
#   PAXOSKV_IMAGE           project image tag (default paxoskv:latest)
#   PAXOSKV_DEBIAN_SUITE    suite for debootstrap (default bookworm)
#   PAXOSKV_DEBIAN_MIRROR   mirror for debootstrap (default: the one apt uses)
#   PAXOSKV_DOCKERD_PIDFILE pid file of a dockerd we start (default /run/paxoskv-dockerd.pid)
#   PAXOSKV_DOCKERD_LOG     its log (default /var/log/paxoskv-dockerd.log)
#   PAXOSKV_DOCKERD_ARGS    extra dockerd arguments (e.g. --storage-driver=vfs)
#   PAXOSKV_WAIT_S          how long to wait for the engine (default 60)
#   PYTHON                  host Python used for wheels (default .venv/bin/python, else python3)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SKIP_APT=${PAXOSKV_SKIP_APT:-0}
SKIP_ENGINE=${PAXOSKV_SKIP_ENGINE:-0}
SKIP_BASE=${PAXOSKV_SKIP_BASE:-0}
SKIP_WHEELHOUSE=${PAXOSKV_SKIP_WHEELHOUSE:-0}
SKIP_IMAGE=${PAXOSKV_SKIP_IMAGE:-0}
DEFAULT_BASE=paxoskv-base:bookworm
BASE_IMAGE=${PAXOSKV_BASE_IMAGE:-}
IMAGE=${PAXOSKV_IMAGE:-paxoskv:latest}
SUITE=${PAXOSKV_DEBIAN_SUITE:-bookworm}
MIRROR=${PAXOSKV_DEBIAN_MIRROR:-}
PIDFILE=${PAXOSKV_DOCKERD_PIDFILE:-/run/paxoskv-dockerd.pid}
DOCKERD_LOG=${PAXOSKV_DOCKERD_LOG:-/var/log/paxoskv-dockerd.log}
WAIT_S=${PAXOSKV_WAIT_S:-60}
REBUILD_BASE=0
STOP_ENGINE=0
WHEELHOUSE=.wheelhouse

say() { printf '[docker-prep] %s\n' "$*" >&2; }
die() { printf '[docker-prep] ERROR: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
now() { date +%s; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --skip-apt) SKIP_APT=1 ;;
        --skip-engine) SKIP_ENGINE=1 ;;
        --skip-base) SKIP_BASE=1 ;;
        --skip-wheelhouse) SKIP_WHEELHOUSE=1 ;;
        --skip-image) SKIP_IMAGE=1 ;;
        --only)
            [ $# -ge 2 ] || die "--only needs a list of steps"
            SKIP_APT=1 SKIP_ENGINE=1 SKIP_BASE=1 SKIP_WHEELHOUSE=1 SKIP_IMAGE=1
            for step in ${2//,/ }; do
                case "$step" in
                    apt) SKIP_APT=0 ;; engine) SKIP_ENGINE=0 ;; base) SKIP_BASE=0 ;;
                    wheelhouse) SKIP_WHEELHOUSE=0 ;; image) SKIP_IMAGE=0 ;;
                    *) die "unknown step '$step' (apt, engine, base, wheelhouse, image)" ;;
                esac
            done
            shift ;;
        --base-image) [ $# -ge 2 ] || die "--base-image needs a name"; BASE_IMAGE=$2; shift ;;
        --image) [ $# -ge 2 ] || die "--image needs a name"; IMAGE=$2; shift ;;
        --rebuild-base) REBUILD_BASE=1 ;;
        --stop-engine) STOP_ENGINE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done
BASE_IMAGE=${BASE_IMAGE:-$DEFAULT_BASE}

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

is_root() { [ "$(id -u)" = 0 ]; }
docker_ok() { timeout 20 docker info >/dev/null 2>&1; }
compose_ok() { docker compose version >/dev/null 2>&1 || docker-compose version >/dev/null 2>&1; }

# --------------------------------------------------------------------------
stop_engine() {
    if [ ! -s "$PIDFILE" ]; then say "no pid file $PIDFILE: this script started no dockerd"; return 0; fi
    local pid
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null && grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null; then
        say "stopping dockerd (pid $pid)"
        kill -TERM "$pid"
        local deadline=$(( $(now) + 30 ))
        while kill -0 "$pid" 2>/dev/null && [ "$(now)" -lt "$deadline" ]; do sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then say "dockerd did not stop in 30 s; sending KILL"; kill -KILL "$pid"; fi
    else
        say "dockerd pid $pid from $PIDFILE is not running"
    fi
    rm -f "$PIDFILE"
}
if [ "$STOP_ENGINE" = 1 ]; then stop_engine; exit 0; fi

# --------------------------------------------------------------------------
step_apt() {
    local pkgs=()
    have dockerd || pkgs+=(docker.io)
    # A docker CLI without the compose plugin and no docker-compose: take v1.
    if ! have docker-compose && ! { have docker && docker compose version >/dev/null 2>&1; }; then
        pkgs+=(docker-compose)
    fi
    if [ "$SKIP_BASE" != 1 ] && [ "$BASE_IMAGE" = "$DEFAULT_BASE" ] && ! have debootstrap; then
        pkgs+=(debootstrap)
    fi
    have iptables || pkgs+=(iptables)
    # With AppArmor on in the kernel, dockerd needs apparmor_parser to load
    # its default profile (a recommendation of docker.io, not a dependency).
    if [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" = Y ] && ! have apparmor_parser; then
        pkgs+=(apparmor)
    fi
    if [ ${#pkgs[@]} = 0 ]; then say "apt: docker engine, compose, debootstrap, iptables already installed"; return 0; fi
    is_root || die "apt: need root to install ${pkgs[*]}"
    have apt-get || die "apt: no apt-get; install ${pkgs[*]} by other means"
    say "apt: installing ${pkgs[*]}"
    local t0; t0=$(now)
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null \
        || die "apt-get install ${pkgs[*]} failed"
    say "apt: done in $(( $(now) - t0 )) s"
}

# --------------------------------------------------------------------------
start_dockerd() {  # $@: extra args; returns 0 once `docker info` answers
    local pid deadline
    : >"$DOCKERD_LOG"
    # setsid: the daemon outlives this script and is not in its process group.
    # 9>&-: the daemon must not inherit (and so hold forever) the run lock.
    setsid dockerd "$@" >>"$DOCKERD_LOG" 2>&1 < /dev/null 9>&- &
    pid=$!
    echo "$pid" >"$PIDFILE"
    say "engine: started dockerd $* (pid $pid, log $DOCKERD_LOG, pid file $PIDFILE)"
    deadline=$(( $(now) + WAIT_S ))
    while [ "$(now)" -lt "$deadline" ]; do
        if docker_ok; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            say "engine: dockerd exited; last lines of its log:"
            tail -n 15 "$DOCKERD_LOG" >&2 || true
            rm -f "$PIDFILE"
            return 1
        fi
        sleep 0.5
    done
    say "engine: dockerd did not answer within $WAIT_S s; stopping it; last lines of its log:"
    tail -n 15 "$DOCKERD_LOG" >&2 || true
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(( $(now) + 20 ))
    while kill -0 "$pid" 2>/dev/null && [ "$(now)" -lt "$deadline" ]; do sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    return 1
}

step_engine() {
    have docker || die "engine: no docker command (install docker.io, or drop --skip-apt)"
    if docker_ok; then say "engine: docker info answers; nothing to start"; return 0; fi
    have dockerd || die "engine: docker info fails and there is no dockerd to start"
    is_root || die "engine: docker info fails and only root can start dockerd here"
    if [ -s "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
        die "engine: dockerd from $PIDFILE (pid $(cat "$PIDFILE")) runs but does not answer; see $DOCKERD_LOG"
    fi
    mkdir -p "$(dirname "$PIDFILE")" "$(dirname "$DOCKERD_LOG")"
    # shellcheck disable=SC2086
    if start_dockerd ${PAXOSKV_DOCKERD_ARGS:-}; then
        :
    elif [ -z "${PAXOSKV_DOCKERD_ARGS:-}" ]; then
        # The usual causes on unusual kernels: overlayfs refused, or nftables.
        say "engine: retrying with --storage-driver=vfs"
        if ! start_dockerd --storage-driver=vfs; then
            if have iptables-legacy; then
                say "engine: retrying with iptables-legacy and --storage-driver=vfs"
                update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null 2>&1 || true
                update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null 2>&1 || true
                start_dockerd --storage-driver=vfs || die "engine: dockerd cannot be started here (log: $DOCKERD_LOG)"
            else
                die "engine: dockerd cannot be started here (log: $DOCKERD_LOG)"
            fi
        fi
    else
        die "engine: dockerd $PAXOSKV_DOCKERD_ARGS cannot be started here (log: $DOCKERD_LOG)"
    fi
    say "engine: ready ($(docker info --format '{{.ServerVersion}}, storage {{.Driver}}' 2>/dev/null))"
}

# --------------------------------------------------------------------------
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

apt_mirror() {  # the Debian mirror apt uses (not the security one)
    local f uri=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk 'tolower($1)=="uris:" {for (i=2;i<=NF;i++) print $i}' /etc/apt/sources.list.d/debian.sources \
              | grep -v -- '-security' | head -n1 || true)
    fi
    if [ -z "$uri" ]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -r "$f" ] || continue
            uri=$(awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i ~ /^(https?|file|ftp):/) {print $i; break}}' "$f" \
                  | grep -v -- '-security' | head -n1 || true)
            [ -n "$uri" ] && break
        done
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

step_base() {
    if [ "$BASE_IMAGE" != "$DEFAULT_BASE" ]; then
        if image_exists "$BASE_IMAGE"; then say "base: using $BASE_IMAGE (present)"; return 0; fi
        say "base: pulling $BASE_IMAGE"
        docker pull "$BASE_IMAGE" || die "base: $BASE_IMAGE is not here and cannot be pulled (no registry?); leave --base-image out to build one by debootstrap"
        return 0
    fi
    if image_exists "$BASE_IMAGE" && [ "$REBUILD_BASE" != 1 ]; then
        say "base: $BASE_IMAGE exists; skipping debootstrap (--rebuild-base to redo)"
        return 0
    fi
    is_root || die "base: debootstrap needs root"
    have debootstrap || die "base: no debootstrap (apt-get install debootstrap, or drop --skip-apt)"
    [ -n "$MIRROR" ] || MIRROR=$(apt_mirror)
    local work t0; t0=$(now)
    work=$(mktemp -d /var/tmp/paxoskv-rootfs.XXXXXX)
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    say "base: debootstrap $SUITE from $MIRROR (about a minute)"
    if ! debootstrap --variant=minbase --include=python3,python3-venv,python3-pip \
            "$SUITE" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
        tail -n 20 "$work/debootstrap.log" >&2
        die "base: debootstrap failed (full log above was $work/debootstrap.log)"
    fi
    # Slim it: package caches, apt lists, docs, man pages, locales.
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/cache/apt/"*.bin \
           "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/usr/share/doc/"* \
           "$work/rootfs/usr/share/man/"* "$work/rootfs/usr/share/info/"* \
           "$work/rootfs/var/log/"*.log
    find "$work/rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true
    say "base: importing as $BASE_IMAGE"
    tar --numeric-owner -C "$work/rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        -m "debootstrap --variant=minbase $SUITE + python3 (paxoskv docker-prep)" \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$work"
    trap - EXIT
    docker run --rm "$BASE_IMAGE" python3 -c 'import sys, venv; print(sys.version.split()[0])' >/dev/null \
        || die "base: $BASE_IMAGE does not run python3"
    say "base: built $BASE_IMAGE in $(( $(now) - t0 )) s ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
}

# --------------------------------------------------------------------------
step_wheelhouse() {
    image_exists "$BASE_IMAGE" || die "wheelhouse: base image $BASE_IMAGE is missing (run the base step)"
    "$PYTHON" -m pip --version >/dev/null 2>&1 || die "wheelhouse: $PYTHON has no pip (set PYTHON=...)"
    local target pyver abi arch glibc t0
    t0=$(now)
    # What the image's Python accepts: version, and glibc for manylinux tags.
    target=$(docker run --rm --entrypoint python3 "$BASE_IMAGE" -c \
        'import sys, platform; print("%d.%d" % sys.version_info[:2], platform.machine(), platform.libc_ver()[1])') \
        || die "wheelhouse: cannot run python3 in $BASE_IMAGE"
    read -r pyver arch glibc <<<"$target"
    abi="cp${pyver/./}"
    say "wheelhouse: target Python $pyver, $arch, glibc $glibc (from $BASE_IMAGE)"
    mkdir -p "$WHEELHOUSE"
    rm -f "$WHEELHOUSE"/paxoskv-*.whl
    # 1. The project itself (pure Python, py3-none-any), built from a clean
    #    copy of the sources: setuptools' in-tree build/ could carry stale
    #    modules into the wheel, and the work tree stays untouched.
    local iso=() src
    # Without build isolation (works offline) when the host Python can build
    # it: setuptools >= 61, and the wheel package below setuptools 70.1.
    if "$PYTHON" - 2>/dev/null <<'PY'
import sys
import setuptools
v = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
if v < (61, 0):
    sys.exit(1)
if v < (70, 1):
    import wheel  # noqa: F401  (bdist_wheel lived there)
PY
    then
        iso=(--no-build-isolation)
    fi
    src=$(mktemp -d /tmp/paxoskv-src.XXXXXX)
    local parts=(pyproject.toml kvstore replica client) f
    for f in README.md LICENSE; do [ -f "$f" ] && parts+=("$f"); done
    tar -C "$ROOT" --exclude=__pycache__ --exclude='*.pyc' -cf - "${parts[@]}" | tar -C "$src" -xf -
    # A fixed SOURCE_DATE_EPOCH gives the same wheel bytes for the same
    # sources, so an unchanged tree hits docker's build cache.
    if ! SOURCE_DATE_EPOCH=315532800 "$PYTHON" -m pip wheel -q --no-deps "${iso[@]}" -w "$ROOT/$WHEELHOUSE" "$src" >"$src.log" 2>&1; then
        grep -v "is ignored: it is neither a file nor a directory" "$src.log" | tail -n 20 >&2
        rm -rf "$src" "$src.log"
        die "wheelhouse: building the paxoskv wheel failed"
    fi
    rm -rf "$src" "$src.log"
    # 2. Its runtime dependencies, as binary wheels for the target.
    local whl reqs=()
    whl=$(ls "$WHEELHOUSE"/paxoskv-*.whl | head -n1)
    mapfile -t reqs < <("$PYTHON" - "$whl" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            print(line.split(":", 1)[1].split(";")[0].strip())
PY
)
    local plat=() minor
    glibc_minor=${glibc#*.}
    for minor in $(seq 17 "${glibc_minor:-17}"); do plat+=(--platform "manylinux_2_${minor}_${arch}"); done
    plat+=(--platform "manylinux2014_${arch}" --platform "manylinux2010_${arch}" --platform "manylinux1_${arch}")
    local dl=("$PYTHON" -m pip download -q --only-binary=:all: --python-version "$pyver" --implementation cp
              --abi "$abi" --abi abi3 --abi none "${plat[@]}" -d "$WHEELHOUSE" --find-links "$WHEELHOUSE")
    local log; log=$(mktemp /tmp/paxoskv-wheelhouse.XXXXXX.log)
    if "${dl[@]}" --no-index "${reqs[@]}" >"$log" 2>&1; then
        say "wheelhouse: dependencies already in $WHEELHOUSE (offline)"
    elif "${dl[@]}" "${reqs[@]}" >"$log" 2>&1; then
        say "wheelhouse: downloaded dependencies for Python $pyver"
    else
        grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -n 20 >&2
        die "wheelhouse: no binary wheels of ${reqs[*]} for Python $pyver/$arch; copy a wheelhouse from a connected machine into $WHEELHOUSE"
    fi
    rm -f "$log"
    say "wheelhouse: $(ls "$WHEELHOUSE"/*.whl | wc -l) wheels in $WHEELHOUSE ($(( $(now) - t0 )) s): $(cd "$WHEELHOUSE" && ls -- *.whl | tr '\n' ' ')"
}

# --------------------------------------------------------------------------
step_image() {
    image_exists "$BASE_IMAGE" || die "image: base image $BASE_IMAGE is missing (run the base step)"
    local args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    if [ -d "$WHEELHOUSE" ] && ls "$WHEELHOUSE"/paxoskv-*.whl >/dev/null 2>&1; then
        args+=(--build-arg "WHEELHOUSE=$WHEELHOUSE")
    else
        say "image: no wheelhouse; dependencies come from PyPI inside the build"
    fi
    local t0; t0=$(now)
    say "image: docker build -t $IMAGE ${args[*]} ."
    # The classic builder is what Docker 20.10 and docker-compose 1.29 use.
    local log; log=$(mktemp /tmp/paxoskv-docker-build.XXXXXX.log)
    # The build stage is tagged too ($stage_tag), so that its cached layers
    # (the venv) survive the pruning of this project's dangling images below.
    local stage_tag="${IMAGE%:*}:build-stage"
    if ! { DOCKER_BUILDKIT=0 docker build --force-rm --target build -t "$stage_tag" "${args[@]}" . \
           && DOCKER_BUILDKIT=0 docker build --force-rm -t "$IMAGE" "${args[@]}" . ; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "image: docker build failed (full log: $log)"
    fi
    rm -f "$log"
    # Drop this project's dangling images (earlier builds) only.
    docker image prune -f --filter label=paxoskv.build=1 >/dev/null 2>&1 || true
    docker run --rm --entrypoint python "$IMAGE" -c 'import zmq, plyvel, msgpack, kvstore, replica, client' \
        || die "image: $IMAGE cannot import the project"
    say "image: built $IMAGE in $(( $(now) - t0 )) s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
}

# --------------------------------------------------------------------------
T0=$(now)
# One run at a time on a machine: the wheelhouse and the image tag are shared
# (two test runs building at once would delete each other's wheel).
LOCK=${PAXOSKV_PREP_LOCK:-/tmp/paxoskv-docker-prep.lock}
if have flock; then
    exec 9>>"$LOCK"
    if ! flock -n 9; then
        say "another docker-prep run holds $LOCK; waiting (at most 15 min)"
        flock -w 900 9 || die "timed out waiting for $LOCK"
    fi
fi
[ "$SKIP_APT" = 1 ] || step_apt
[ "$SKIP_ENGINE" = 1 ] || step_engine
if [ "$SKIP_BASE$SKIP_WHEELHOUSE$SKIP_IMAGE" != 111 ]; then
    docker_ok || die "the Docker engine does not answer (docker info); run without --skip-engine, or start it"
fi
[ "$SKIP_BASE" = 1 ] || step_base
[ "$SKIP_WHEELHOUSE" = 1 ] || step_wheelhouse
[ "$SKIP_IMAGE" = 1 ] || step_image
if ! compose_ok; then say "note: neither 'docker compose' nor 'docker-compose' works here"; fi
say "done in $(( $(now) - T0 )) s"
