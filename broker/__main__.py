"""``python -m broker`` is the ``permbroker`` command."""

from broker.cli.main import main

main()
