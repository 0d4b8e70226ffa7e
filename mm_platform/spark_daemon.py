"""Spark's Python worker daemon with the per-series stack imported once.

Spark starts one daemon per executor (``python -m pyspark.daemon``) and forks a Python worker
from it for each task slot; each worker then imports pandas, pyarrow, scipy, Prophet and our
forecasting code for itself: ≈ 2 core-s per worker, paid again in every new Spark session (a
local-mode Dagster run gets one a day). Set as ``spark.python.daemon.module``, this module
imports that stack in the daemon before it forks, so workers start with it already loaded
(shared copy-on-write pages, not imported again).

Spark's own daemon imports nothing before forking because imports may start threads. The only
thread this stack starts is jemalloc's background purge thread in pyarrow's allocator, which
jemalloc's own fork handlers cover; BLAS threads are held at 1 (``OPENBLAS_NUM_THREADS``), so
no other thread exists at fork. ``spark.preload_worker_modules: false`` turns this off.
"""

from __future__ import annotations

import importlib
import os
import sys

# What the training-set build, training and scoring tasks import, in dependency order.
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow",
    "pyarrow.compute",
    "pyarrow.dataset",
    "pyarrow.parquet",
    "scipy.optimize",
    "pyspark.worker",
    "pyspark.sql.pandas.serializers",
    "prophet",
    "mm_platform.forecasting.series",
    "mm_platform.spark_jobs",
)


def preload() -> list[str]:
    """Import ``PRELOAD``; return the modules that failed (a worker then imports what it needs
    itself, and reports the error where it happens). The daemon's stdout carries its port to
    the JVM, so anything an import prints goes to stderr instead."""
    failed = []
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except Exception:
                failed.append(name)
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    return failed


if __name__ == "__main__":
    preload()
    from pyspark.daemon import manager

    manager()
