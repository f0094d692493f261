#!/usr/bin/env bash
# dev.sh: the developer's entry point (virtualenv, local cluster, tests).
#
#   source dev.sh up     create/refresh .venv, start the local cluster and
#                        activate .venv in THIS shell (kvctl works right away)
#   ./dev.sh up          the same, without touching your shell
#   ./dev.sh down        stop the local cluster
#   ./dev.sh status      show the local cluster's replicas
#   ./dev.sh test [ARGS] run the whole test suite (ARGS go to pytest)
#
# `up` accepts kvstore-cluster start options (e.g. --replicas 5).
# The venv is (re)installed with `pip install -e '.[dev]'` only when
# pyproject.toml changed since the last install (stamp in .venv/).
#
# This file may be sourced: it never uses `set -e` or `exit` then (either
# would hit your interactive shell), and it cleans up its helpers.

_kvdev_sourced=0
(return 0 2>/dev/null) && _kvdev_sourced=1
if [ -n "${BASH_SOURCE[0]:-}" ]; then
    _kvdev_root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
else
    _kvdev_root="$(cd "$(dirname "$0")" && pwd)"
fi

_kvdev_say() { printf 'dev.sh: %s\n' "$*"; }
_kvdev_err() { printf 'dev.sh: error: %s\n' "$*" >&2; }

_kvdev_usage() {
    sed -n '2,13p' "$_kvdev_root/dev.sh" | sed 's/^# \{0,1\}//'
}

# Prints the first Python >= 3.11 on PATH.
_kvdev_find_python() {
    local candidate
    for candidate in python3 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

_kvdev_venv() {
    local venv="$_kvdev_root/.venv" py stamp want have
    if [ -x "$venv/bin/python" ] &&
        ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        _kvdev_err "$venv uses $("$venv/bin/python" -V 2>&1); Python >= 3.11 is needed: rm -rf .venv and retry"
        return 1
    fi
    if [ ! -x "$venv/bin/python" ]; then
        if ! py="$(_kvdev_find_python)"; then
            _kvdev_err "Python >= 3.11 is needed, found: $(python3 -V 2>&1 || echo 'no python3'). Install python3.11 or newer and retry."
            return 1
        fi
        _kvdev_say "creating .venv with $py ($("$py" -V 2>&1))"
        "$py" -m venv "$venv" || {
            _kvdev_err "could not create $venv (on Debian/Ubuntu: apt-get install python3-venv)"
            return 1
        }
    fi
    stamp="$venv/.dev-sh-pyproject.sha256"
    want="$("$venv/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$_kvdev_root/pyproject.toml")" || return 1
    have="$(cat "$stamp" 2>/dev/null)"
    if [ "$want" != "$have" ]; then
        _kvdev_say "installing the project into .venv (pip install -e '.[dev]')"
        (cd "$_kvdev_root" && "$venv/bin/python" -m pip install -q -e '.[dev]') || {
            _kvdev_err "pip install failed (see above)"
            return 1
        }
        printf '%s\n' "$want" >"$stamp"
    fi
}

_kvdev_up() {
    _kvdev_venv || return 1
    "$_kvdev_root/.venv/bin/kvstore-cluster" start --dir "$_kvdev_root/.cluster" "$@" || return 1
    if [ "$_kvdev_sourced" = 1 ]; then
        # shellcheck disable=SC1091
        . "$_kvdev_root/.venv/bin/activate" || return 1
        _kvdev_say "virtualenv activated in this shell: kvctl put hello world; kvctl get hello"
    else
        _kvdev_say "kvctl is in .venv/bin; put it on PATH with: source .venv/bin/activate"
        _kvdev_say "(or next time run: source dev.sh up)"
    fi
}

_kvdev_down() {
    if [ ! -x "$_kvdev_root/.venv/bin/kvstore-cluster" ]; then
        _kvdev_say "no .venv, so no cluster to stop"
        return 0
    fi
    "$_kvdev_root/.venv/bin/kvstore-cluster" stop --dir "$_kvdev_root/.cluster" || return 1
    if [ "$_kvdev_sourced" = 1 ] && [ "${VIRTUAL_ENV:-}" = "$_kvdev_root/.venv" ] &&
        command -v deactivate >/dev/null 2>&1; then
        deactivate
        _kvdev_say "virtualenv deactivated"
    fi
}

_kvdev_status() {
    _kvdev_venv || return 1
    "$_kvdev_root/.venv/bin/kvstore-cluster" status --dir "$_kvdev_root/.cluster"
}

_kvdev_test() {
    _kvdev_venv || return 1
    (cd "$_kvdev_root" && "$_kvdev_root/.venv/bin/python" -m pytest "$@")
}

_kvdev_main() {
    local cmd="${1:-help}"
    [ $# -gt 0 ] && shift
    case "$cmd" in
        up) _kvdev_up "$@" ;;
        down) _kvdev_down "$@" ;;
        status) _kvdev_status "$@" ;;
        test) _kvdev_test "$@" ;;
        help | -h | --help) _kvdev_usage ;;
        *)
            _kvdev_err "unknown command '$cmd'"
            _kvdev_usage >&2
            return 2
            ;;
    esac
}

_kvdev_main "$@"
_kvdev_rc=$?
if [ "$_kvdev_sourced" = 1 ]; then
    # eval expands the status before the variables are unset.
    eval "unset -f _kvdev_say _kvdev_err _kvdev_usage _kvdev_find_python _kvdev_venv \
        _kvdev_up _kvdev_down _kvdev_status _kvdev_test _kvdev_main
    unset _kvdev_sourced _kvdev_root _kvdev_rc
    return $_kvdev_rc"
fi
exit "$_kvdev_rc"
