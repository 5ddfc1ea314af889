"""Integration tests of audit on real Kafka and Redis."""
