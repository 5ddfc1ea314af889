"""Kafka I/O (L2): the bus, the CloudEvents codec, admin, followed topics, acks, views, rebuild."""
