"""Benchmarks that print figures; docs/benchmarks.md records them.

Run them as modules from the project root, e.g. `python -m bench.loop_overhead`.
"""
