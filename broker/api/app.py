"""The FastAPI app factory and its health endpoints. Imports fastapi and broker (not streams).

    permbroker api                                  # uvicorn on PERMBROKER_API_HOST:PORT
    uvicorn --factory broker.api.app:from_env

OpenAPI at ``/openapi.json`` and ``/docs``. ``/healthz`` says the process runs; ``/readyz`` is
200 only when Kafka answers, Redis answers and the grant view is fresh, and otherwise names each
cause. ``/metrics`` is Prometheus text.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from broker.adapters.kafka.access import KafkaAccess
from broker.api import (
    routes_agents,
    routes_approvals,
    routes_behaviour,
    routes_operator,
    routes_selector,
)
from broker.api.runtime import Runtime
from broker.config import Settings

OPENAPI_TAGS = [
    {"name": "health", "description": "Liveness, readiness (with causes) and metrics."},
    {"name": "resource services", "description": "Check an action against the grant view."},
    {"name": "agents", "description": "Escalate, renew, release and list an agent's own grants."},
    {"name": "operators", "description": "Revoke agents, follow revocation propagation."},
]


ROUTERS = (routes_agents.router, routes_operator.router, routes_selector.router,
           routes_approvals.router, routes_behaviour.router)


def create_app(settings: Settings) -> FastAPI:
    """The API for ``settings`` (``from_env`` reads them from the environment)."""
    runtime = Runtime(settings, KafkaAccess.from_settings(settings))
    app = FastAPI(
        title="permbroker", version="0.1.0", lifespan=_lifespan(runtime),
        openapi_tags=OPENAPI_TAGS,
        description="Time-boxed, narrow, revocable permissions for AI agents: check, escalate, "
        "renew, release, revoke. Agent, service and operator endpoints take a bearer token.",
    )
    app.state.settings = settings
    app.state.runtime = runtime
    _health_routes(app, runtime)
    for router in ROUTERS:
        app.include_router(router)
    return app


def from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: the settings are read once, here."""
    return create_app(Settings())


def _lifespan(runtime: Runtime) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the runtime (Kafka, Redis, the grant view) with the app; stop it after."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(runtime.start)
        try:
            yield
        finally:
            await asyncio.to_thread(runtime.stop)
            if runtime.store is not None:
                await runtime.store.aclose()

    return lifespan


def _health_routes(app: FastAPI, runtime: Runtime) -> None:
    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is up (no dependency checked)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready: causes"}})
    def readyz() -> JSONResponse:
        """Ready only when Kafka and Redis answer and the grant view is fresh; else why not."""
        checks = {
            "kafka": _check(runtime.kafka_problem()),
            "redis": _check(runtime.redis_problem()),
            "view": _view_check(runtime),
        }
        ready = all(c["ok"] for c in checks.values())
        causes = [f"{name}: {c['detail']}" for name, c in checks.items() if not c["ok"]]
        body = {"ready": ready, "causes": causes, "checks": checks,
                "refused_records": _refusals(runtime)}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], response_class=Response)
    def metrics() -> Response:
        """Prometheus metrics (revocation propagation, view freshness, checks)."""
        assert runtime.view is not None
        body = runtime.metrics.render(runtime.view.freshness())
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/.well-known/jwks.json", tags=["health"])
    def jwks(request: Request) -> dict[str, Any]:
        """The broker's grant-token keys as published on Kafka (the JWKS topic); a JWKS file
        (PERMBROKER_JWKS_PATH) only when no key set was published yet."""
        published = runtime.jwks.document() if runtime.jwks is not None else {"keys": []}
        if published["keys"]:
            return published
        path = runtime.settings.jwks_path
        if path is None or not path.is_file():
            return {"keys": []}
        data: dict[str, Any] = json.loads(path.read_text("utf-8"))
        return {"keys": data.get("keys", [])}


def _refusals(runtime: Runtime) -> dict[str, Any]:
    """Records this process's readers refused (unsigned, forged, unreadable): how many, and the
    latest with their origin. Information only: a refusal never makes the API unready."""
    if runtime.trust is None:
        return {"total": 0, "recent": []}
    refusals = runtime.trust.refusals
    return {"total": refusals.total(), "recent": [r.as_dict() for r in refusals.recent()[-10:]]}


def _check(problem: str) -> dict[str, Any]:
    return {"ok": not problem, "detail": problem or "ok"}


def _view_check(runtime: Runtime) -> dict[str, Any]:
    if runtime.view is None:
        return {"ok": False, "detail": "grant view not started"}
    f = runtime.view.freshness()
    return {
        "ok": f.fresh, "detail": f.reason() or "fresh", "staleness_s": f.staleness_s,
        "lag": f.lag, "bound_s": f.bound_s, "topic": runtime.view.topic,
    }
