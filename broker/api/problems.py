"""Every refusal of the HTTP API as an RFC 9457 problem (``application/problem+json``). L3.

Imports fastapi, starlette, pydantic and stdlib. ``Refused`` is the one exception the routes
raise (an ``HTTPException`` carrying a problem ``type``); the handlers turn it, FastAPI's
validation errors and any other HTTP error into a problem body, and ``BodyLimit`` answers an
oversized body with 413 before anything reads it. ``PROBLEMS`` declares those responses in the
OpenAPI document, and ``problem_openapi`` files their schema under the problem media type.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:permbroker:problem:"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Problem(BaseModel):
    """An RFC 9457 problem: what kind of refusal (type), its status, and what to do (detail)."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


class ProblemResponse(JSONResponse):
    """A JSON response served as ``application/problem+json``."""

    media_type = PROBLEM_JSON


class Refused(HTTPException):
    """A refusal with a problem type (``urn:permbroker:problem:<kind>``) and a sentence."""

    def __init__(self, status: int, detail: str, *, kind: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail, headers=headers)
        self.kind = kind


def problem_body(status: int, detail: str, kind: str = "", **extra: Any) -> dict[str, Any]:
    """The JSON of a problem (``kind`` becomes its type URN)."""
    body: dict[str, Any] = {"type": TYPE_PREFIX + kind if kind else "about:blank",
                            "title": HTTPStatus(status).phrase, "status": status,
                            "detail": detail}
    return {**body, **extra}


def problem(status: int, detail: str, kind: str = "", headers: dict[str, str] | None = None,
            **extra: Any) -> ProblemResponse:
    """A problem response."""
    return ProblemResponse(problem_body(status, detail, kind, **extra), status_code=status,
                           headers=headers)


def _described(status: int, description: str) -> dict[str, Any]:
    return {"description": description, "model": Problem, "content": {PROBLEM_JSON: {}}}


# Every refusal an operation may answer; declared on every route (FastAPI merges them).
PROBLEMS: dict[int | str, dict[str, Any]] = {
    400: _described(400, "The body is not readable JSON"),
    401: _described(401, "No valid assertion: missing, malformed, expired, used before, or "
                         "signed by an unknown or revoked key"),
    403: _described(403, "Authenticated, but this principal may not do this"),
    404: _described(404, "Nothing by that name"),
    413: _described(413, "The body is larger than PERMBROKER_API_MAX_BODY_BYTES"),
    422: _described(422, "The request does not validate (the problem lists each error)"),
    429: _described(429, "Over this credential's rate limit: retry after Retry-After seconds"),
    503: _described(503, "A dependency (Kafka, Redis, the grant view) cannot answer now"),
    504: _described(504, "No worker answered within PERMBROKER_DECISION_TIMEOUT_S"),
}
HEALTH_PROBLEMS: dict[int | str, dict[str, Any]] = {k: PROBLEMS[k] for k in (400, 413)}


def install(app: FastAPI) -> None:
    """Register the handlers that answer every refusal with a problem."""
    app.add_exception_handler(StarletteHTTPException, _http_problem)
    app.add_exception_handler(RequestValidationError, _validation_problem)


async def _http_problem(_request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    kind = exc.kind if isinstance(exc, Refused) else ""
    return problem(exc.status_code, detail, kind, headers=dict(exc.headers or {}))


async def _validation_problem(_request: Request, exc: Exception) -> ProblemResponse:
    assert isinstance(exc, RequestValidationError)
    # Never echo the input back (it may be huge, or a secret sent by mistake).
    errors = [{"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", "")),
               "type": str(e.get("type", ""))} for e in list(exc.errors())[:20]]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"]) if first["loc"] else "request"
    status = 400 if first.get("type") == "json_invalid" else 422
    return problem(status, f"{where}: {first['msg']}", "invalid-request", errors=errors)


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is refused (413) before the app reads it.

    The body is read here (at most ``limit`` bytes are held) and handed on in one piece.
    """

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole: list[Message] = [{"type": "http.request", "body": b"".join(chunks),
                                 "more_body": False}]

        async def replay() -> Message:
            return whole.pop() if whole else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(413, f"the body is larger than {self.limit} bytes "
                           "(PERMBROKER_API_MAX_BODY_BYTES)", "body-too-large")
        await response(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1").strip()
    return None


def problem_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` with every problem schema filed under ``application/problem+json``
    (FastAPI files a response model under the route's media type)."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = base()
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                for response in operation.get("responses", {}).values():
                    content = response.get("content", {})
                    if PROBLEM_JSON in content and "application/json" in content:
                        content[PROBLEM_JSON] = content.pop("application/json")
        app.openapi_schema = schema
        return schema

    return openapi
