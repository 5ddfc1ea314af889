"""The HTTP arm's server: the permbroker API and a trivial FastAPI app in one process.

    python -m bench.httpapi API_PORT TRIVIAL_PORT

Imports broker, schemas, fastapi and uvicorn. Both apps run on uvicorn servers of one event
loop, so they share the process, its interpreter and its threadpool: the difference between
them is what ``/v1/check`` does beyond FastAPI's own work (verifying the caller's assertion,
its rate limit and tenant, the grant view's answer, the metrics). The trivial endpoint
(``async def``, no thread hop) parses the same body into the same model and returns a constant.
The API is the ``api`` role's Kafka and Redis user, like the product's; its rate limit is raised
so the load generator is not refused (the throttle still runs on every call).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI

from bench.env import bench_settings
from broker.api.app import create_app
from broker.api.bodies import CheckBody
from broker.stack import local as stack
from broker.stack.credentials import role_settings
from schemas import topics

ENFORCEMENT_POINT = "bench-api"
RATE_LIMIT = 10**6


def trivial_app() -> FastAPI:
    """One POST route on the event loop (FastAPI's cheapest kind): the body parsed into
    ``CheckBody``, a constant answer."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/v1/check")
    async def check(body: CheckBody) -> dict[str, Any]:
        return {"allowed": True, "unavailable": False, "reason": "trivial",
                "agent_id": body.agent_id}

    return app


async def serve(api_port: int, trivial_port: int) -> None:
    """Both servers until either stops."""
    settings = role_settings(stack.as_admin(bench_settings()), topics.API).model_copy(
        update={"enforcement_point": ENFORCEMENT_POINT, "api_rate_limit": RATE_LIMIT})
    servers = [uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                             log_level="warning", access_log=False))
               for app, port in ((create_app(settings), api_port),
                                 (trivial_app(), trivial_port))]
    print("bench http ready", flush=True)
    await asyncio.gather(*(s.serve() for s in servers))


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2])))
