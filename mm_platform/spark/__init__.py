"""Spark: the session and its tuning, the worker daemon, the JVM class archive, and the
distributed backends of training and scoring. The per-series work is called here, never
defined here (it is in ``mm_platform.forecasting``)."""
