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

import contextlib
import gc
import importlib
import logging
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
    "mm_platform.spark.train",
    "mm_platform.spark.score",
    "mm_platform.stores.training_sets",
)


# Prophet imports matplotlib and plotly when it is imported, for plotting helpers that Spark
# tasks hardly ever call: 0.6 of the 2.2 core-s this preload costs.
PLOTTING = ("matplotlib", "plotly")
# The names prophet.plot imports from them, resolved on first use instead (_LazyName).
PROPHET_PLOT_NAMES = {
    "plt": ("matplotlib.pyplot", None),
    "MonthLocator": ("matplotlib.dates", "MonthLocator"),
    "num2date": ("matplotlib.dates", "num2date"),
    "AutoDateLocator": ("matplotlib.dates", "AutoDateLocator"),
    "AutoDateFormatter": ("matplotlib.dates", "AutoDateFormatter"),
    "FuncFormatter": ("matplotlib.ticker", "FuncFormatter"),
    "go": ("plotly.graph_objs", None),
    "make_subplots": ("plotly.subplots", "make_subplots"),
}


class _LazyName:
    """A module or one of its attributes, imported when first called or looked into."""

    def __init__(self, module: str, attr: str | None):
        self._module, self._attr = module, attr

    def _target(self):
        module = importlib.import_module(self._module)
        return getattr(module, self._attr) if self._attr else module

    def __getattr__(self, name):
        return getattr(self._target(), name)

    def __call__(self, *args, **kwargs):
        return self._target()(*args, **kwargs)


@contextlib.contextmanager
def _without_plotting():
    """Import Prophet without ``PLOTTING``: inside, importing them fails (prophet.plot catches
    that; its log line is silenced); afterwards they import normally again, and prophet.plot's
    names for them resolve on first use, so its plots still work in a task."""
    hidden = [m for m in PLOTTING if m not in sys.modules]
    log = logging.getLogger("prophet.plot")
    was_disabled, log.disabled = log.disabled, True
    for m in hidden:
        sys.modules[m] = None  # the documented way to make an import raise ImportError
    try:
        yield
    finally:
        for m in hidden:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]
        log.disabled = was_disabled
        plot = sys.modules.get("prophet.plot")
        if plot is not None:
            for name, (module, attr) in PROPHET_PLOT_NAMES.items():
                if not hasattr(plot, name):
                    setattr(plot, name, _LazyName(module, attr))


def drop_installed_pyspark_archives() -> list[str]:
    """Take off ``sys.path`` the archives Spark puts on the workers' PYTHONPATH when they lie
    inside the installed pyspark package itself (pip's layout), so pyspark and py4j are
    imported from that package:

    - ``pyspark/python/lib/pyspark.zip`` and ``py4j-*.zip``, copies of the installed
      ``pyspark`` and ``py4j`` packages. From a zip, Python compiles every module from source
      (no .pyc is written for zips: ≈ 1 core-s more per session).
    - ``pyspark/jars/spark-core_*.jar`` (Spark adds the jar of its own Python runner, for
      Python files packed into an assembly jar; pip's jars hold none).

    Python 3.11's ``importlib.invalidate_caches``, called by each worker's first task when it
    puts Spark's files folder on sys.path, re-reads the directory of every zip it has an
    importer for (1,485 entries for pyspark.zip, 5,973 for the jar: ≈ 0.04 core-s per worker),
    so the archives' cached importers go too. Returns the entries removed."""
    import site

    # <site-packages>/pyspark/{python/lib,jars} -> <site-packages>
    installed = {}
    for d in (*site.getsitepackages(), site.getusersitepackages()):
        if os.path.isfile(os.path.join(d, "pyspark", "__init__.py")):
            installed[os.path.realpath(os.path.join(d, "pyspark", "python", "lib"))] = d
            installed[os.path.realpath(os.path.join(d, "pyspark", "jars"))] = d
    dropped = []
    for entry in list(sys.path):
        name = os.path.basename(entry)
        site_dir = installed.get(os.path.dirname(os.path.realpath(entry)))
        if site_dir is None:
            continue
        if name == "pyspark.zip" or name.endswith(".jar") or (
            name.startswith("py4j-") and name.endswith(".zip") and os.path.isfile(os.path.join(site_dir, "py4j", "__init__.py"))
        ):
            sys.path.remove(entry)
            dropped.append(entry)
    for key in [k for k in sys.path_importer_cache if any(k == e or k.startswith(e + os.sep) for e in dropped)]:
        del sys.path_importer_cache[key]
    return dropped


def preload() -> list[str]:
    """Import ``PRELOAD``; return the modules that failed (a worker then imports what it needs
    itself, and reports the error where it happens). The daemon's stdout carries its port to
    the JVM, so anything an import prints goes to stderr instead."""
    failed = []
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with _without_plotting():
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
    drop_installed_pyspark_archives()
    preload()
    # The preloaded modules' objects live as long as the daemon: out of the collector's reach
    # (gc.freeze), a worker's full collections neither walk them nor write to their pages,
    # which would copy those shared pages into every forked worker.
    gc.collect()
    gc.freeze()
    from pyspark.daemon import manager

    manager()
