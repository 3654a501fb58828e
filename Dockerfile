# syntax=docker/dockerfile:1
# Communiqué: one image for the web app (default command) and the worker (`communique worker`).
# Build stage: resolve and install the dependencies into a virtualenv (all of them ship wheels).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY service ./service
COPY templates ./templates
COPY contacts ./contacts
# A regular (not editable) install: the wheel carries templates/email/ and contacts/ as package data.
RUN pip install . && python -m compileall -q /opt/venv/lib

# Final stage: the virtualenv only (the installed wheel); no source, no compiler, no pip cache, no root.
FROM ${PYTHON_IMAGE}
RUN useradd --system --user-group --uid 10001 --home-dir /app --no-create-home communique \
    && mkdir -p /app/instance && chown communique:communique /app/instance
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    COMMUNIQUE_INSTANCE_PATH=/app/instance
USER communique
EXPOSE 8000
# Every container migrates first: `communique init` holds a PostgreSQL advisory lock, so when
# several start together one migrates and the others wait, then find the schema at head.
ENTRYPOINT ["/bin/sh", "-c", "communique init && exec \"$@\"", "communique-entrypoint"]
# The production web server, exactly as README.md documents it.
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "4", "service:create_app()"]
