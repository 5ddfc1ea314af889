"""The fraud-agent demo (L3): the scenario and its steps, on real Kafka and Redis."""
