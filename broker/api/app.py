"""The FastAPI app factory and its health endpoints. Imports fastapi and broker (not streams).

    permbroker api                                  # uvicorn on PERMBROKER_API_HOST:PORT
    uvicorn --factory broker.api.app:from_env

The OpenAPI document is at ``/openapi.json`` and is the only documentation served: no
``/docs`` or ``/redoc`` page (they load their scripts from a CDN, and an API whose every call
needs a fresh assertion gains little from a try-it-out page; any OpenAPI viewer reads the JSON
offline). ``/healthz`` says the process runs; ``/readyz`` is 200 only when Kafka answers,
Redis answers and the grant view is fresh, and otherwise names each cause, reusing the
runtime's clients; the app serves even when Kafka or Redis is down at start (the readers
start once Kafka answers, the other routes answer 503 until then). ``/metrics`` is Prometheus
text. Every refusal is a problem
(``broker.api.problems``); bodies are limited (413) before anything reads them.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from broker.adapters.kafka.access import KafkaAccess
from broker.api import (
    problems,
    routes_agents,
    routes_approvals,
    routes_behaviour,
    routes_operator,
    routes_selector,
)
from broker.api.console import install as install_console
from broker.api.problems import HEALTH_PROBLEMS, BodyLimit
from broker.api.runtime import Runtime
from broker.config import Settings
from broker.errors import BrokerError

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
        openapi_tags=OPENAPI_TAGS, docs_url=None, redoc_url=None,
        description="Time-boxed, narrow, revocable permissions for AI agents: check, escalate, "
        "renew, release, revoke. Agent, service and operator endpoints take a bearer "
        "assertion: a short-lived JWT for the call, signed by the caller's own key. Every "
        "refusal is an RFC 9457 problem (application/problem+json).",
    )
    app.state.settings = settings
    app.state.runtime = runtime
    problems.install(app)
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    app.add_middleware(UntilStarted, runtime=runtime)
    _health_routes(app, runtime)
    for router in ROUTERS:
        app.include_router(router)
    install_console(app)  # the operator console at /console (not in the OpenAPI document)
    app.openapi = problems.problem_openapi(app)  # type: ignore[method-assign]
    return app


def from_env() -> FastAPI:
    """Factory for ``uvicorn --factory``: the settings are read once, here."""
    return create_app(Settings())


def _lifespan(runtime: Runtime) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start the runtime (Kafka, Redis, the grant view) with the app; stop it after."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Serve even when Kafka is down: /readyz says why, the other routes answer 503 until
        # the readers are up (their start is retried in the background).
        runtime.connect()
        stop = threading.Event()
        starter = threading.Thread(target=runtime.start_until_ready, args=(stop,),
                                   name="api-start", daemon=True)
        try:
            await asyncio.to_thread(runtime.start)
        except BrokerError as exc:
            runtime.start_problem = str(exc)
            runtime.stop(readers_only=True)
            starter.start()
        try:
            yield
        finally:
            stop.set()
            if starter.is_alive():
                await asyncio.to_thread(starter.join, 30.0)
            await asyncio.to_thread(runtime.stop)
            if runtime.store is not None:
                await runtime.store.aclose()

    return lifespan


class Readiness(BaseModel):
    """Whether the API can answer, and otherwise each cause."""

    ready: bool
    causes: list[str]
    checks: dict[str, dict[str, Any]]
    refused_records: dict[str, Any]  # unsigned/forged/unreadable records refused (information)


class Jwks(BaseModel):
    """A JWK Set (RFC 7517): the broker's public grant-token keys."""

    keys: list[dict[str, Any]]


def _health_routes(app: FastAPI, runtime: Runtime) -> None:
    health = APIRouter(tags=["health"], responses=HEALTH_PROBLEMS)

    @health.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is up (no dependency checked)."""
        return {"status": "ok"}

    @health.get("/readyz", response_model=Readiness,
                responses={503: {"description": "not ready: causes", "model": Readiness}})
    def readyz() -> JSONResponse:
        """Ready only when Kafka and Redis answer and the grant view is fresh; else why not."""
        checks = {} if runtime.started else {
            "start": _check(f"starting: {runtime.start_problem or 'connecting'}")}
        checks |= {
            "kafka": _check(runtime.kafka_problem()),
            "redis": _check(runtime.redis_problem()),
            "view": _view_check(runtime),
        }
        ready = all(c["ok"] for c in checks.values())
        causes = [f"{name}: {c['detail']}" for name, c in checks.items() if not c["ok"]]
        body = Readiness(ready=ready, causes=causes, checks=checks,
                         refused_records=_refusals(runtime))
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    @health.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> Response:
        """Prometheus metrics (revocation propagation, view freshness, checks)."""
        if runtime.view is None:
            return problems.problem(503, "the grant view is not started yet (see /readyz)",
                                    kind="unavailable")
        body = runtime.metrics.render(runtime.view.freshness())
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @health.get("/.well-known/jwks.json")
    def jwks() -> Jwks:
        """The broker's grant-token keys as published on Kafka (the JWKS topic); a JWKS file
        (PERMBROKER_JWKS_PATH) only when no key set was published yet."""
        published = runtime.jwks.document() if runtime.jwks is not None else {"keys": []}
        if published["keys"]:
            return Jwks.model_validate(published)
        path = runtime.settings.jwks_path
        if path is None or not path.is_file():
            return Jwks(keys=[])
        data: dict[str, Any] = json.loads(path.read_text("utf-8"))
        return Jwks(keys=list(data.get("keys", [])))

    app.include_router(health)


class UntilStarted:
    """ASGI middleware: 503 (with the cause) for every route but health and the OpenAPI
    document until the runtime's readers are up (Kafka or Redis was down at start)."""

    OPEN = frozenset({"/healthz", "/readyz", "/metrics", "/.well-known/jwks.json",
                      "/openapi.json"})

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.runtime.started or scope["path"] in self.OPEN:
            await self.app(scope, receive, send)
            return
        cause = self.runtime.start_problem or "connecting to Kafka and Redis"
        response = problems.problem(503, f"the API is starting: {cause} (see /readyz)",
                                    kind="unavailable", headers={"Retry-After": "2"})
        await response(scope, receive, send)


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
        "mode": f.mode, "grace_until": f.grace_until,
    }
