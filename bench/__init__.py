"""Benchmarks: esdb against its peers (`python bench/compare.py`), plus the older scripts."""
