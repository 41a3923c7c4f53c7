"""Benchmarks of the harness (pytest-benchmark): run with `pytest benchmarks/`; see benchmarks/README.md."""
