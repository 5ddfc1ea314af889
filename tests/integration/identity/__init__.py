"""Integration tests of identity on real Kafka and Redis."""
