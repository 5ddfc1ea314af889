"""permbroker: dynamic, time-boxed permissions for AI agents over Kafka and Redis."""

__version__ = "0.1.0"
