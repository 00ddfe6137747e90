"""`make bench`: throughput, latency and memory of storefront RPCs against a bare gRPC ceiling."""
