"""The local stack (dev tooling): Kafka and Redis processes, a Kafka cluster, worker processes."""
