# The permbroker image (docker-compose.yml builds it): the package with its policy bundles, no dev
# tools. It runs as an unprivileged user whose state (keys) lives in /data, a volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY broker ./broker
COPY streams ./streams
COPY policies ./policies
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /data --no-create-home permbroker \
 && mkdir -p /data/stack \
 && chown -R permbroker:permbroker /data \
 && chmod 0700 /data

# A new named volume mounted at /data starts as a copy of this folder: owned by the user.
USER permbroker
ENV HOME=/data XDG_DATA_HOME=/data PERMBROKER_STACK_DIR=/data/stack
CMD ["permbroker", "worker"]
