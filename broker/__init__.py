"""permbroker: time-boxed permissions for AI agents over Kafka and Redis. Imports nothing."""

__version__ = "0.1.0"
