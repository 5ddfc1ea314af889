"""The HTTP API starts with Kafka and Redis down: /readyz names each, the routes answer 503."""

from __future__ import annotations

import socket
from pathlib import Path

from fastapi.testclient import TestClient

from broker.api.app import create_app
from broker.config import Settings


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_the_api_serves_with_kafka_and_redis_down_and_says_which(tmp_path: Path) -> None:
    """Nothing listens at either address: the app still starts; /healthz is 200, /readyz is
    503 naming Kafka and Redis (and why the start waits), any other route is a 503 problem."""
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{closed_port()}",
                        redis_url=f"redis://127.0.0.1:{closed_port()}/0", stack_dir=tmp_path)
    with TestClient(create_app(settings)) as api:
        assert api.get("/healthz").status_code == 200
        ready = api.get("/readyz")
        assert ready.status_code == 503
        causes = ready.json()["causes"]
        assert any(c.startswith("kafka: Kafka") for c in causes), causes
        assert any(c.startswith("redis: Redis") for c in causes), causes
        assert any(c.startswith("start: starting: Kafka is unreachable") for c in causes)
        refused = api.get("/v1/operator/revocations")
        assert refused.status_code == 503
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "the API is starting: Kafka is unreachable" in refused.json()["detail"]
