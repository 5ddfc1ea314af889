"""Integration tests of behaviour on real Kafka and Redis."""
