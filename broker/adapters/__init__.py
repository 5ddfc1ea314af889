"""Adapters (L2): Redis, Kafka, token signing and local stack I/O. Imports the core and schemas."""
