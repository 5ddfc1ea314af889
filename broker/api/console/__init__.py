"""The operator console at /console: server-rendered pages, htmx, Server-Sent Events. L3.

Imports fastapi, starlette and the console's modules. A thin layer over the API's runtime: the
pages read the same stores, views and audit as the CLI, and the actions go through the same
operator paths, relayed with the signed-in operator's assertion. Its scripts are vendored
(``static/``), so it works with no network access.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from broker.api.console import actions, pages
from broker.api.console.session import Sessions


def install(app: FastAPI) -> None:
    """Serve the console (pages, forms, live streams, static assets) from ``app``."""
    app.state.console_sessions = Sessions()
    app.mount("/console/static", StaticFiles(directory=Path(__file__).parent / "static"),
              name="console-static")
    app.include_router(actions.router)
    app.include_router(pages.router)
