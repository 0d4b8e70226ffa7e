"""Benchmarks: commands that print numbers side by side with a baseline, never timed tests.
Outside the installed package; run from the repository root with ``python -m benchmarks``."""
