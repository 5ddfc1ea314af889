"""Adapters (L2): Redis, Kafka, token signing and local stack I/O behind the core's ports."""
