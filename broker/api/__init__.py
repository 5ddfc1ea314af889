"""The HTTP API (L3): FastAPI app factory, routes, auth, metrics. ``create_app(settings)``."""
