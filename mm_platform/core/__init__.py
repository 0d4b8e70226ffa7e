"""The platform's vocabulary and the few helpers every layer shares (no I/O, no Spark, no Dagster)."""
