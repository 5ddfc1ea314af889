"""CLI commands of operations: the local stack, the worker, the demo, the API, propagation."""
