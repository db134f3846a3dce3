# syntax=docker/dockerfile:1
# chat4all-workers: one image for every role. Pick the roles with ROLES (e.g. ROLES=router);
# the command is a `chat4all-workers` subcommand (default `run`; also `run-once gc`,
# `db migrate`, `topics ensure`, `status`, `dlq replay`, `send`, `message ID`).
#
#   docker build -t chat4all-workers .
#   docker run --rm -e ROLES=router -e KAFKA_BOOTSTRAP_SERVERS=... chat4all-workers

ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: the project's wheel, then wheels of everything it depends on -----------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
# The project's own wheel first (no deps), then its dependency closure as wheels, so the runtime
# stage installs offline from /wheels and needs no compiler or network.
RUN pip wheel --no-deps --wheel-dir /dist . \
 && pip wheel --wheel-dir /wheels /dist/*.whl

# --- runtime: the wheel and its dependencies, nothing else ---------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The bind mount keeps the wheels out of the image's layers.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels chat4all-workers \
 && groupadd --system --gid 10001 chat4all \
 && useradd --system --uid 10001 --gid chat4all --no-create-home --shell /usr/sbin/nologin chat4all

COPY supervisor.toml /etc/chat4all/supervisor.toml
# Settings: flag > environment > this file > default; every key has an env name
# (`chat4all-workers config show`). ROLES picks the roles this container runs.
# The ops port on every interface (the checked-in file binds loopback, for `make run`).
ENV CHAT4ALL_CONFIG=/etc/chat4all/supervisor.toml \
    ROLES=all \
    METRICS_PORT=8000 \
    CHAT4ALL_OBSERVABILITY_METRICS_HOST=0.0.0.0

# The webhooks port (role webhooks) on every interface too; supervisor.toml binds it to loopback.
ENV CHAT4ALL_WEBHOOKS_HOST=0.0.0.0

# Logs: the contract's JSON lines, always. The default `auto` already writes JSON when stderr is
# not a terminal; this keeps `docker run -t` and a pod with `tty: true` from turning them into
# the text lines meant for a person (override it with --log-format text to read one by eye).
ENV CHAT4ALL_OBSERVABILITY_LOG_FORMAT=json

USER 10001:10001
WORKDIR /tmp
EXPOSE 8000 8200
# /healthz answers while the process is alive; readiness (/readyz) is the orchestrator's business.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('METRICS_PORT', '8000'), timeout=2)"]
# SIGTERM drains (stop fetching, finish in-flight work, commit, close pools) within
# [supervisor] shutdown_timeout_s (25 s): give the container longer than that to stop
# (compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["chat4all-workers"]
CMD ["run"]
