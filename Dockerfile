# syntax=docker/dockerfile:1.7
# One image for the service (gunicorn + uvicorn workers) and the worker (python -m worker).
#   docker build -t clickky .          docker compose up --scale app=4
ARG PYTHON_VERSION=3.12
ARG NODE_VERSION=22

# -- 1. the web pages: esbuild bundles service/web/src into service/static/ ---------------
FROM node:${NODE_VERSION}-bookworm-slim AS web
WORKDIR /src
COPY service/web/package.json service/web/package-lock.json service/web/
RUN --mount=type=cache,target=/root/.npm \
    npm --prefix service/web ci --no-audit --no-fund --loglevel=error
COPY service/web/ service/web/
RUN npm --prefix service/web run build

# -- 2. the Python environment, in a venv that the last stage copies whole ------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/clickky
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY worker/ worker/
COPY --from=web /src/service/static/ service/static/
# pymysql[rsa]: MySQL 8's default caching_sha2_password needs it on connections without TLS.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/clickky/bin/pip install . "pymysql[rsa]"

# -- 3. the runtime: no compilers, no node, no sources, not root ----------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ENV PATH=/opt/clickky/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 clickky \
    && useradd --system --uid 10001 --gid clickky --home-dir /app --shell /usr/sbin/nologin clickky \
    && install -d -o clickky -g clickky /app /app/exports
COPY --from=build /opt/clickky /opt/clickky
COPY deploy/gunicorn.conf.py /app/deploy/gunicorn.conf.py
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# The app; the worker's container runs `python -m worker` with the same image.
CMD ["gunicorn", "--config", "/app/deploy/gunicorn.conf.py", "service.app:app"]
