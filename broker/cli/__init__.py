"""The ``permbroker`` command line (L3): one module per command group, registered in main."""
