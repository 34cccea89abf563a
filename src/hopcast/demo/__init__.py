"""Synthetic data for demos and benchmarks: a streaming company that produces graph mutations."""
