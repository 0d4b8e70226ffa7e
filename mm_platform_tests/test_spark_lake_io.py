"""Issue #18, ``storage.lake_io: spark``: the training set built, read and trained from by
Spark's own Parquet reader and writer (what hadoop-azure gives Databricks and Synapse on
``abfss://``), tested here on local paths: the same layout, the same rows and the same models
as the fsspec path, and still no data row in the driver."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform.steps.ingest import ingest
from mm_platform.stores.lake import Lake
from mm_platform.stores.training_sets import (
    POINTER,
    FsspecTrainingSets,
    SparkTrainingSets,
    training_set_store,
)
from mm_platform_tests.conftest import write_config
from mm_platform_tests.test_executor_io import _no_data_rows_through_the_driver

RUN = date(2025, 12, 31)


def _layout(store, run_date) -> dict[int, list]:
    """bucket -> the (series_id, ds) order of its one file."""
    files = store._bucket_files(run_date)
    out: dict[int, list] = {}
    for path, bucket in files:
        assert bucket not in out, f"bucket {bucket} has more than one file"
        t = pq.read_table(path, columns=["series_id", "ds"])
        out[bucket] = list(zip(t["series_id"].to_pylist(), t["ds"].to_pylist(), strict=True))
    return out


def test_spark_native_io_equals_the_fsspec_path(tmp_path, spark, monkeypatch):
    ref_home, home = tmp_path / "fsspec", tmp_path / "spark"
    ref_home.mkdir()
    home.mkdir()
    ref_cfg = load_config(write_config(ref_home))
    write_sales(ref_cfg.source.url, "sales", 2, 3, 200, seed=7)
    cfg = load_config(write_config(home, source={"url": ref_cfg.source.url, "table": "sales"},
                                   storage={"lake_io": "spark"}))
    ref_lake, lake = Lake(ref_cfg.storage.lake_url), Lake(cfg.storage.lake_url)
    for lk in (ref_lake, lake):
        ingest(ref_cfg, lk, ref_cfg.source.url, RUN)
    ref = training_set_store(ref_lake, ref_cfg)
    assert type(ref) is FsspecTrainingSets
    ref_stats = ref.build(spark, RUN)
    ref_models = ref.train(spark, RUN)

    store = training_set_store(lake, cfg)
    assert type(store) is SparkTrainingSets
    # an object-store swap (version folder + pointer) through Spark's writer, on a file:// URL
    versioned = SparkTrainingSets(Lake(f"file://{tmp_path}/versioned"), cfg, object_store=True)
    ingest(ref_cfg, versioned.lake, ref_cfg.source.url, RUN)
    only = ["store=1,item=2", "store=2,item=3"]
    with monkeypatch.context() as m:
        _no_data_rows_through_the_driver(m)
        stats = store.build(spark, RUN)
        stats = store.build(spark, RUN)  # a rebuild replaces the set
        models = store.train(spark, RUN)
        versioned.build(spark, RUN)
        subset = versioned.train(spark, RUN, known={only[0]: ref_models.set_index("series_id").loc[only[0], "fingerprint"]},
                                 only_series=only)

    assert {k: stats[k] for k in ("rows", "series")} == {k: ref_stats[k] for k in ("rows", "series")}
    assert ref_stats["series"] == 6 and ref_stats["rows"] > 1000
    pd.testing.assert_frame_equal(models.drop(columns="fit_seconds"), ref_models.drop(columns="fit_seconds"))
    assert subset["series_id"].tolist() == only and subset["status"].tolist() == ["unchanged", "trained"]
    pd.testing.assert_frame_equal(subset.iloc[1:].drop(columns="fit_seconds").reset_index(drop=True),
                                  ref_models[ref_models["series_id"] == only[1]].drop(columns="fit_seconds").reset_index(drop=True))

    # the same layout: the same buckets, one file each, series and dates in the same order
    assert _layout(store, RUN) == _layout(ref, RUN) == _layout(versioned, RUN)
    folder = Path(store.folder(RUN))
    assert folder == Path(lake.path("training_sets", cfg.name, f"run_date={RUN}"))
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".building")]
    base = Path(versioned.lake.path("training_sets", cfg.name, f"run_date={RUN}"))
    assert sorted(p.name for p in base.iterdir()) == sorted([POINTER, (base / POINTER).read_text()])

    def frame(s):
        return s.dataframe(spark, RUN).toPandas().sort_values(["series_id", "ds"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(frame(store), frame(ref), check_dtype=False)
    pd.testing.assert_frame_equal(store.series(RUN).sort_values("series_id", ignore_index=True),
                                  ref.series(RUN).sort_values("series_id", ignore_index=True))


def test_the_driver_guard_stops_rows_through_the_driver(tmp_path, spark, monkeypatch):
    """The guard the cluster slow tests run ``mm-platform run`` under (driver_guard.py) fails
    on each driver-side way of holding target rows, and lets metadata through."""
    from mm_platform_tests import driver_guard

    cfg = load_config(write_config(tmp_path))
    write_sales(cfg.source.url, "sales", 1, 2, 120, seed=3)
    lake = Lake(cfg.storage.lake_url)
    ingest(cfg, lake, cfg.source.url, RUN)
    rows = pd.DataFrame({"series_id": ["a"], "y": [1.0]})
    with monkeypatch.context() as m:
        driver_guard.install("units", m.setattr)
        with pytest.raises(AssertionError, match="createDataFrame"):
            spark.createDataFrame(rows)
        with pytest.raises(AssertionError, match="toPandas"):
            spark.range(2).selectExpr("id", "1.0 as units").toPandas()
        with pytest.raises(AssertionError, match="whole history"):
            lake.read_raw("sales")
        assert len(lake.read_raw("sales", columns=["store"], filters=[("store", "=", 1)])) > 0
        assert spark.createDataFrame(rows[["series_id"]]).toPandas()["series_id"].tolist() == ["a"]
    assert spark.createDataFrame(rows).toPandas()["y"].tolist() == [1.0]  # undone


def test_the_executor_io_instrumentation_catches_collected_rows(spark, monkeypatch):
    from mm_platform_tests.test_executor_io import _no_data_rows_through_the_driver

    with monkeypatch.context() as m:
        _no_data_rows_through_the_driver(m)
        with pytest.raises(AssertionError, match="collected"):
            spark.range(2).selectExpr("id", "1.0 as y").toPandas()
