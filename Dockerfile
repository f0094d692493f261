# One image for the replicas (entry point `kvstore-replica`) and for `kvctl`.
#
# Normal machine:   docker compose build        (base python:3.12-slim, deps from PyPI)
# Air-gapped site:  scripts/docker-prep.sh      (base built by debootstrap,
#                   deps from a wheelhouse made on the host), which amounts to
#   docker build --build-arg BASE_IMAGE=paxoskv-base:bookworm \
#                --build-arg WHEELHOUSE=.wheelhouse -t paxoskv:latest .
#
# BASE_IMAGE must provide `python3` (>= 3.11) with the venv module, and
# `useradd`. WHEELHOUSE, when set, is a folder in the build context holding
# the paxoskv wheel and wheels of all its dependencies for the base image's
# Python; the install is then `pip install --no-index` (no network at all).
# Only the classic builder's features are used (no BuildKit needed): Docker
# 20.10's default builder and docker-compose 1.29 build this file.

ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
LABEL paxoskv.build=1
ARG WHEELHOUSE=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY . /src
RUN set -eu; \
    if [ -n "$WHEELHOUSE" ]; then \
        test -d "/src/$WHEELHOUSE" || { echo "WHEELHOUSE=$WHEELHOUSE is not a folder in the build context" >&2; exit 1; }; \
        /opt/venv/bin/pip install --no-index --find-links "/src/$WHEELHOUSE" paxoskv; \
    else \
        /opt/venv/bin/pip install /src; \
    fi; \
    /opt/venv/bin/python -c "import zmq, plyvel, msgpack, kvstore, replica, client"; \
    /opt/venv/bin/pip uninstall -y -q pip setuptools 2>/dev/null || true; \
    find /opt/venv -name __pycache__ -prune -exec rm -rf {} +; \
    /opt/venv/bin/python -m compileall -q /opt/venv/lib >/dev/null

FROM ${BASE_IMAGE}
LABEL paxoskv.build=1 \
      org.opencontainers.image.title="paxoskv" \
      org.opencontainers.image.description="Replicated key-value store: Multi-Paxos, LevelDB, ZeroMQ"
RUN set -eu; \
    groupadd --system --gid 10001 paxoskv; \
    useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
            --shell /usr/sbin/nologin paxoskv; \
    mkdir -p /data /etc/paxoskv /opt/paxoskv; \
    chown paxoskv:paxoskv /data
COPY --from=build /opt/venv /opt/venv
COPY docker/cluster.toml /etc/paxoskv/cluster.toml
COPY docker/healthcheck.py /opt/paxoskv/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LANG=C.UTF-8
USER paxoskv
WORKDIR /data
# The replica's LevelDB lives here; compose mounts a named volume on it.
VOLUME ["/data"]
# Ports: replica N serves clients on 700N and peers on 710N (docker/cluster.toml).
ENTRYPOINT ["kvstore-replica"]
CMD ["--config", "/etc/paxoskv/cluster.toml", "--id", "1", "--data-dir", "/data", "--initial-cluster-state", "new"]
