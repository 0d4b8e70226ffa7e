"""``python -m mm_platform_tests.driver_guard run --config X --run-date D``: ``mm-platform``
with every driver-side way of holding training rows made to fail the run (issue #18), for the
slow tests that run the whole pipeline on a cluster in a subprocess.

Guarded, in the driver process only (Spark's executors and Python workers are other
processes, so the tasks' own reads are not affected):

* ``createDataFrame`` of data holding the target (``y`` or the configured target column):
  rows sent from the driver to Spark;
* ``toPandas`` of a DataFrame with one of those columns: rows collected to the driver;
* ``Lake.read_raw`` without a row filter: the raw table's whole history read in the driver.

Ingestion streams the source through the driver in bounded chunks by design (its memory is
measured by ``python -m benchmarks driver-rss``, docs/performance.md), and per-series
metadata (keys, ids, models, predictions) is allowed: neither carries the target's history.
"""

from __future__ import annotations

import sys


def install(target: str = "units", setattr_=setattr) -> None:
    from pyspark.sql import DataFrame, SparkSession

    from mm_platform.stores.lake import Lake

    guarded = {"y", target}
    classes: list[tuple[type, type]] = [(SparkSession, DataFrame)]
    try:  # Spark 4's classic DataFrame overrides toPandas: patching pyspark.sql.DataFrame alone misses it
        from pyspark.sql.classic.dataframe import DataFrame as ClassicDataFrame

        classes.append((SparkSession, ClassicDataFrame))
    except ImportError:
        pass
    try:
        from pyspark.sql.connect.dataframe import DataFrame as ConnectDataFrame
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        classes.append((ConnectSession, ConnectDataFrame))
    except ImportError:  # Spark Connect's client extras not installed
        pass

    for session_cls, frame_cls in classes:
        real_create, real_to_pandas = session_cls.createDataFrame, frame_cls.toPandas

        def create_dataframe(self, data, *a, _real=real_create, **k):
            columns = set(getattr(data, "columns", None) if hasattr(data, "columns") else [])
            if columns & guarded:
                raise AssertionError(f"data rows sent from the driver with createDataFrame: {sorted(columns)}")
            return _real(self, data, *a, **k)

        def to_pandas(self, *a, _real=real_to_pandas, **k):
            if set(self.columns) & guarded:
                raise AssertionError(f"data rows collected to the driver with toPandas: {self.columns}")
            return _real(self, *a, **k)

        setattr_(session_cls, "createDataFrame", create_dataframe)
        setattr_(frame_cls, "toPandas", to_pandas)

    real_read_raw = Lake.read_raw

    def read_raw(self, table, columns=None, filters=None):
        if filters is None:
            raise AssertionError("the raw table's whole history was read in the driver (Lake.read_raw without filters)")
        return real_read_raw(self, table, columns=columns, filters=filters)

    setattr_(Lake, "read_raw", read_raw)


def main(argv: list[str]) -> int:
    from mm_platform.cli import main as cli_main
    from mm_platform.config import load_config

    config = argv[argv.index("--config") + 1] if "--config" in argv else None
    install(load_config(config).columns.target)
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
