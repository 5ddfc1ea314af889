"""Benchmark harness (``make bench``): the product next to raw Kafka/Redis limits and peers.

Imports broker, schemas and the bench's own modules; never streams (the worker runs as a child
process). Every benchmark interleaves subject and reference arms (ABAB..., at least 5 rounds) in
one run on one stack and reports the median of the per-round ratios of p50 and p99.
"""
