# The permbroker worker image (docker-compose.yml builds it): the package, its policies, no dev tools.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY broker ./broker
COPY streams ./streams
COPY policies ./policies
RUN pip install . \
 && useradd --system --uid 10001 --home-dir /app permbroker

USER permbroker
ENV PERMBROKER_POLICY_PATH=/app/policies/fraud
CMD ["permbroker", "worker"]
