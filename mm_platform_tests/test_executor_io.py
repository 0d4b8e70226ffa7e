"""Issue #18: one executor-side data path for every fsspec lake. Spark tasks read the raw
files, write the training-set buckets and read them to train, through fsspec opened from the
executor's environment; the driver handles manifests, file lists and per-series results only.
A lake whose fsspec package or credential is missing on the executors fails with one line.

The object-store code (version folders and a pointer, executor-side reads) is forced on a
``file://`` lake here: executors are separate processes, so ``memory://`` cannot stand in for
a remote store; ``test_prod_azure.py`` runs the same code against Azurite (slow)."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession

from mm_platform.config import load_config
from mm_platform.core.errors import UserError
from mm_platform.datagen import write_sales
from mm_platform.spark import train as spark_train
from mm_platform.steps.ingest import ingest
from mm_platform.stores.lake import Lake, task_filesystem
from mm_platform.stores.training_sets import (
    POINTER,
    SPLIT_SCHEMA,
    FsspecTrainingSets,
    _run_tasks,
    _split_task_fn,
    training_set_store,
)
from mm_platform_tests.conftest import write_config

RUN = date(2025, 12, 31)


def _no_data_rows_through_the_driver(monkeypatch):
    """Make every driver-side way of holding data rows raise: ``createDataFrame`` (rows sent
    from the driver), ``toPandas`` of a frame with the target column (rows collected), and
    ``Lake.read_raw`` (the raw table read in the driver). Spark's Python workers are other
    processes, so the tasks' own reads are not affected. Chosen over comparing the driver's
    RSS across data sizes: it names the stage that broke the rule and does not depend on
    allocator noise."""
    from pyspark.sql.classic.dataframe import DataFrame as ClassicDataFrame

    def create_dataframe(self, *a, **k):
        raise AssertionError("createDataFrame called in the driver during build/train")

    def read_raw(self, *a, **k):
        raise AssertionError("the raw table was read in the driver")

    # Spark 4's classic DataFrame overrides toPandas: both classes are patched.
    for cls in (DataFrame, ClassicDataFrame):
        def to_pandas(self, _real=cls.toPandas):
            if "y" in self.columns:
                raise AssertionError(f"data rows collected to the driver: {self.columns}")
            return _real(self)

        monkeypatch.setattr(cls, "toPandas", to_pandas)
    monkeypatch.setattr(SparkSession, "createDataFrame", create_dataframe)
    monkeypatch.setattr(Lake, "read_raw", read_raw)


def test_fsspec_lake_builds_and_trains_in_executors_only(tmp_path, spark, monkeypatch):
    cfg = load_config(write_config(tmp_path))
    write_sales(cfg.source.url, "sales", 2, 3, 200, seed=5)
    local = Lake(cfg.storage.lake_url)
    remote = Lake(f"file://{tmp_path}/remote-lake")  # the object-store path, on a folder
    for lake in (local, remote):
        ingest(cfg, lake, cfg.source.url, RUN)
    expected_stats = training_set_store(local, cfg).build(spark, RUN)
    expected = training_set_store(local, cfg).train(spark, RUN)

    store = FsspecTrainingSets(remote, cfg, object_store=True)
    with monkeypatch.context() as m:
        _no_data_rows_through_the_driver(m)
        stats = store.build(spark, RUN)
        first = store.folder(RUN)
        stats = store.build(spark, RUN)  # a rebuild makes a new version and drops the old one
        got = store.train(spark, RUN)

    assert {k: stats[k] for k in ("rows", "series")} == {k: expected_stats[k] for k in ("rows", "series")}
    base = Path(remote.path("training_sets", cfg.name, f"run_date={RUN}"))
    version = (base / POINTER).read_text()
    assert store.folder(RUN) == str(base / version) != first and version.startswith("v=")
    assert sorted(p.name for p in base.iterdir()) == sorted([POINTER, version])  # old version deleted
    assert not [p for p in base.parent.iterdir() if p.name.startswith(".building")]  # staging removed
    pd.testing.assert_frame_equal(got.drop(columns="fit_seconds"), expected.drop(columns="fit_seconds"))

    # the executor-side reader gives the rows Spark's own reader gives on the local lake
    def frame(s):
        return s.dataframe(spark, RUN).toPandas().sort_values(["series_id", "ds"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(frame(store), frame(training_set_store(local, cfg)), check_dtype=False)
    pd.testing.assert_frame_equal(store.series(RUN).sort_values("series_id", ignore_index=True),
                                  training_set_store(local, cfg).series(RUN).sort_values("series_id", ignore_index=True))


def test_missing_filesystem_package_on_executors_is_one_line(tmp_path, spark):
    """A lake URL whose fsspec package the executors cannot import (gcsfs is not installed
    here) fails in the first task, raised in the driver as one line naming the scheme, the
    package and where to install it — in the build's tasks and in the training tasks."""
    try:
        import gcsfs  # noqa: F401
        pytest.skip("gcsfs is installed here")
    except ImportError:
        pass
    cfg = load_config(write_config(tmp_path))
    split = _split_task_fn("gcs://bucket/lake", ["bucket/lake/raw/x.parquet"], None, cfg, RUN, "bucket/lake/map")
    with pytest.raises(UserError) as err:
        _run_tasks(spark, 1, 1, split, SPLIT_SCHEMA)
    msg = str(err.value)
    assert "\n" not in msg and "gcs://" in msg and "gcsfs" in msg and "executors" in msg
    assert "Traceback" not in msg

    with pytest.raises(UserError) as err:
        spark_train.train_buckets(spark, ["gcs://bucket/lake/training_sets/retail/run_date=x/bucket=0"],
                                  [("store", spark_train.T.LongType()), ("item", spark_train.T.LongType())], 10, cfg)
    assert "\n" not in str(err.value) and "gcsfs" in str(err.value)


def test_missing_azure_credentials_name_the_variable(monkeypatch, spark, tmp_path):
    """No AZURE_STORAGE_* on the executors: one line naming the scheme, the variables and
    ``spark.executorEnv``. In-process for the message, and through a real training task (the
    local executors inherit this process's environment, which has none)."""
    for k in list(os.environ):
        if k.startswith("AZURE_STORAGE_"):
            monkeypatch.delenv(k)
    with pytest.raises(UserError) as err:
        task_filesystem("abfs://lake/retail")
    msg = str(err.value)
    assert "\n" not in msg and "abfs://" in msg and "AZURE_STORAGE_CONNECTION_STRING" in msg
    assert "spark.executorEnv" in msg and "no credential is set on the executors" in msg

    if any(k.startswith("AZURE_STORAGE_") for k in spark.sparkContext.environment):
        pytest.skip("the Spark executors were started with Azure credentials")
    cfg = load_config(write_config(tmp_path))
    with pytest.raises(UserError) as err:
        spark_train.train_buckets(spark, ["abfs://lake/retail/training_sets/retail/run_date=x/bucket=0"],
                                  [("store", spark_train.T.LongType()), ("item", spark_train.T.LongType())], 10, cfg)
    assert "\n" not in str(err.value) and "AZURE_STORAGE_CONNECTION_STRING" in str(err.value)


def test_object_store_parquet_io_is_one_request_per_file():
    """On an object store (here fsspec's in-memory one) the data path's Parquet files are read
    whole in one request each and written with one request at close; what comes back equals
    what went in, across files and row groups."""
    import fsspec
    import pyarrow as pa

    from mm_platform.stores.lake import ParquetSink, read_parquet, write_parquet

    fs = fsspec.filesystem("memory")
    base = f"/mm-io-{os.getpid()}"
    a = pa.table({"series_id": ["a", "a", "b"], "y": [1.0, 2.0, 3.0]})
    b = pa.table({"series_id": ["c"], "y": [4.0]})
    sink = ParquetSink(fs, f"{base}/bucket=1/part-00000.parquet", a.schema)
    sink.write(a)
    sink.write(b)  # a second row group
    assert not fs.exists(f"{base}/bucket=1/part-00000.parquet")  # nothing stored before close
    sink.close()
    write_parquet(fs, f"{base}/bucket=2/part-00000.parquet", b)

    calls = []
    real_cat, real_cat_file, real_open = fs.cat, fs.cat_file, fs.open
    fs.cat = lambda paths, **k: calls.append(("cat", len(paths))) or real_cat(paths, **k)
    fs.cat_file = lambda path, **k: calls.append(("cat_file", 1)) or real_cat_file(path, **k)
    fs.open = lambda *a, **k: calls.append(("open", 1)) or real_open(*a, **k)
    try:
        both = read_parquet(fs, [f"{base}/bucket=1/part-00000.parquet", f"{base}/bucket=2/part-00000.parquet"])
        one = read_parquet(fs, f"{base}/bucket=2/part-00000.parquet", columns=["y"])
    finally:
        fs.cat, fs.cat_file, fs.open = real_cat, real_cat_file, real_open
    # (fsspec's cat reads each path with cat_file; pyarrow's own reads would open the files)
    assert calls[0] == ("cat", 2) and calls[-1] == ("cat_file", 1) and ("open", 1) not in calls
    assert both.to_pydict() == pa.concat_tables([a, b, b]).to_pydict()
    assert one.to_pydict() == {"y": [4.0]}
    fs.rm(base, recursive=True)


def test_manifest_records_each_raw_files_schema_as_written(tmp_path, monkeypatch):
    """The build's raw schema comes from the manifest, which records each month file's schema
    as written (no footer read per file; on an object store each is a round trip): the same
    types the footers have, after an upsert (nanosecond dates, a contract) and a conform; a
    file written before the manifest recorded schemas is read from its footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lake = Lake(str(tmp_path / "lake"))
    frame = pd.DataFrame({"store": [1, 1, 2], "item": [1, 2, 1], "units": [1.0, 2.0, 3.0],
                          "date": pd.to_datetime(["2025-01-31", "2025-02-01", "2025-02-02"])})
    lake.upsert_raw("sales", frame, ["store", "item"], "date")
    contract = pa.schema([("store", pa.int64()), ("item", pa.int64()), ("units", pa.float64()), ("date", pa.timestamp("ns"))])
    more = frame.assign(date=pd.to_datetime(["2025-03-01"] * 3))
    lake.upsert_raw("sales", more, ["store", "item"], "date", schema=contract)
    lake.conform_raw("sales", pa.schema([("store", pa.int32()), ("item", pa.int64()), ("units", pa.float64()),
                                         ("date", pa.timestamp("us"))]))

    def footers():
        return [pq.read_schema(f).remove_metadata() for f in lake.raw_files("sales")]

    manifest = lake.read_manifest("sales")
    expected = footers()
    assert {str(s.field("store").type) for s in expected} == {"int32"}  # the conform was recorded
    assert sorted(manifest["schemas"]) == sorted(manifest["files"].values())
    reads = []
    real = pq.read_schema
    monkeypatch.setattr(pq, "read_schema", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    assert [s.remove_metadata() for s in lake.raw_schemas("sales")] == expected
    assert reads == []

    # a lake written before schemas were recorded: its files' footers are read instead
    lake.update_manifest("sales", schemas={})
    assert [s.remove_metadata() for s in lake.raw_schemas("sales")] == expected
    assert len(reads) == len(manifest["files"])
