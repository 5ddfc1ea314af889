"""The measures of make bench: latency, throughput, memory, expiry, policy, micro-benchmarks."""
