"""``python -m broker`` is the ``permbroker`` command."""

from broker.cli import main

main()
