"""permbroker wire contract (L0): event models, topic registry, JSON Schema. Imports pydantic."""
