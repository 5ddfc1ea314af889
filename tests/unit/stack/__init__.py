"""Unit tests of the local stack: processes, security settings, the Redis Cluster layout."""
