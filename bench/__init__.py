"""Benchmark harness for bajas: `python -m bench --help`.

Starts its own real stack (Temporal dev server, embedded PostgreSQL, an SMTP sink and
worker processes running `python worker.py`), measures, prints a summary table and
writes bench/results/latest.json and docs/performance.png. Not part of the test suite.
"""
