"""`inferd bench`: offline throughput, latency, and online serving benchmarks."""
