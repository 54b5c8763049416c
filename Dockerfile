# syntax=docker/dockerfile:1
# MSEv15E2E API image. Build: `docker build -t msev15 .`; run: `docker run -p 9080:9080 msev15`
# (README: "One instance" has the full line with a data volume and an API key).
# The same image runs the bundled MCP server: `python -m msev15.mcp_server --host 0.0.0.0`.
# Base images are pinned to an exact version: bump the tag on purpose, then rebuild and test.
# Logs are JSON lines on stdout only (LOG_TO_FILE=false): the container runtime collects them.

# --- build: install the pinned packages into a virtualenv (no compiler needed: all wheels) ---
FROM python:3.11.14-slim-trixie AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

# --- runtime: the virtualenv and the code, run as an unprivileged user ---
FROM python:3.11.14-slim-trixie AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ORDER_DB_PATH=/app/data/orders.db \
    SESSION_DB_PATH=/app/data/sessions.db \
    OUTBOX_DIR=/app/data/outbox \
    LOG_TO_FILE=false \
    MCP_AUTOSTART=false
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY app.py hypercorn.toml pyproject.toml ./
COPY msev15/ msev15/
COPY templates/ templates/
COPY static/ static/
COPY evals/ evals/
# Only data/ is writable (orders, sessions, outbox, the client-token secret). Mount a named volume
# there (`-v msev15-data:/app/data`): a new named volume takes this ownership. No VOLUME line: an
# anonymous volume per container would silently hold the data that belongs in the named one.
RUN mkdir -p /app/data && chown app:app /app/data
USER app
EXPOSE 9080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9080/health/liveness', timeout=4).status == 200 else 1)"]
# hypercorn.toml binds 0.0.0.0:9080; raise `workers` there only with SESSION_STORE=sqlite or redis.
CMD ["hypercorn", "--config", "hypercorn.toml", "app:app"]
