"""Worker entry point, ``python -m streams`` (run by ``permbroker worker``). Imports streams.app."""

from __future__ import annotations

import logging
import sys

import faust

from broker.config import Settings
from broker.errors import ConfigError, PolicyError
from broker.policy import load_policy
from streams.app import create_app


def main() -> int:
    """Load settings and policy, then run the faust worker until it is stopped."""
    settings = Settings()
    loglevel = sys.argv[1] if len(sys.argv) > 1 else "info"
    try:
        policy = load_policy(settings.policy_path)
    except PolicyError as exc:
        print(f"permbroker worker: invalid policy: {exc}", file=sys.stderr)
        return 2
    try:
        app = create_app(settings, policy)
    except ConfigError as exc:
        print(f"permbroker worker: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("permbroker").setLevel(loglevel.upper() if loglevel != "warn" else "WARNING")
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
