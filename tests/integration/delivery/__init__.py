"""Integration tests of delivery on real Kafka and Redis."""
