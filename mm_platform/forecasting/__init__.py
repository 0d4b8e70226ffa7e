"""Per-series forecasting: pure functions that know nothing of Spark or Dagster."""
