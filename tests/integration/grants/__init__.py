"""Integration tests of grants on real Kafka and Redis."""
