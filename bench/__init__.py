"""Benchmarks: each module prints a table; run with ``./dev bench NAME``."""
