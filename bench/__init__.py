"""Benchmarks: `python -m bench` runs every workload against every system (see README.md)."""
