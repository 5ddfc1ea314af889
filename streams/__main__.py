"""Worker entry point, ``python -m streams`` (``permbroker worker``). Imports streams.bootstrap."""

from __future__ import annotations

import sys

from streams.bootstrap import main

if __name__ == "__main__":
    sys.exit(main())
