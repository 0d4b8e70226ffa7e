"""Unit tests for each stage on real parts (SQLite, lake folder, MLflow SQLite store, local Spark)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from mm_platform.config import load_config
from mm_platform.datagen import generate_sales, write_sales
from mm_platform.forecasting.series import FAILED, SKIPPED, TRAINED, TrainSpec, forecast_arrays, train_series
from mm_platform.ingestion import SourceSchemaError, ingest
from mm_platform.lake import Lake
from mm_platform.registry import ArtifactIntegrityError, ModelRegistry
from mm_platform.spark_jobs import build_training_sets, training_set_uri
from mm_platform_tests.conftest import write_config


@pytest.fixture
def env(tmp_path):
    path = write_config(tmp_path)
    cfg = load_config(path)
    write_sales(cfg.source.url, "sales", stores=2, items=3, days=120, seed=1)
    return cfg, Lake(cfg.storage.lake_url)


def test_generator_is_deterministic_and_realistic():
    a = generate_sales(3, 20, 400, seed=5)
    b = generate_sales(3, 20, 400, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(generate_sales(3, 20, 400, seed=6))
    per_series = a.groupby(["store", "item"])
    assert per_series.ngroups == 60
    assert per_series.size().min() < 400  # some newly launched items
    zero_share = per_series["units"].apply(lambda s: (s == 0).mean())
    assert zero_share.max() > 0.3  # intermittent slow movers
    assert set(a["promo"].unique()) == {0, 1} and a["holiday"].sum() > 0


def test_ingestion_is_incremental_and_idempotent(env):
    cfg, lake = env
    first = ingest(cfg, lake, cfg.source.url, date(2025, 12, 1))
    assert first["inserted"] == 6 * 90 and first["watermark"] == "2025-12-01"
    again = ingest(cfg, lake, cfg.source.url, date(2025, 12, 1))
    assert again["inserted"] == 0 and again["updated"] == 0
    version = lake.read_manifest("sales")["version"]
    rest = ingest(cfg, lake, cfg.source.url, date(2025, 12, 31))
    assert rest["inserted"] == 6 * 30
    assert lake.read_manifest("sales")["version"] == version + 1
    raw = lake.read_raw("sales")
    assert len(raw) == 6 * 120 and not raw.duplicated(["store", "item", "date"]).any()


def test_corrected_source_rows_replace_old_values(env):
    cfg, lake = env
    ingest(cfg, lake, cfg.source.url, date(2025, 12, 31))
    engine = sa.create_engine(cfg.source.url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE sales SET units = 999 WHERE store = 1 AND item = 1 AND date = '2025-12-29'"))
    stats = ingest(cfg, lake, cfg.source.url, date(2025, 12, 31))
    assert stats["updated"] == 1 and stats["inserted"] == 0
    raw = lake.read_raw("sales")
    row = raw[(raw.store == 1) & (raw.item == 1) & (raw.date == "2025-12-29")]
    assert row["units"].tolist() == [999.0]
    assert len(raw) == 6 * 120


def test_bad_rows_are_quarantined_good_rows_go_on(env):
    cfg, lake = env
    engine = sa.create_engine(cfg.source.url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO sales VALUES ('2025-12-30', NULL, 1, 3, 1.0, 0, 0)"))
        conn.execute(sa.text("INSERT INTO sales VALUES ('2025-12-30', 9, 9, -4, 1.0, 0, 0)"))
        conn.execute(sa.text("INSERT INTO sales VALUES ('2025-12-30', 9, 8, 'abc', 1.0, 0, 0)"))
    stats = ingest(cfg, lake, cfg.source.url, date(2025, 12, 31))
    assert stats["rows_quarantined"] == 3 and stats["inserted"] == 6 * 120
    q = lake.read_quarantine("sales")
    assert sorted(q["reason"]) == ["missing key store", "negative units", "non-numeric units"]


def test_missing_source_column_is_named(tmp_path):
    cfg = load_config(write_config(tmp_path, columns={"date": "date", "target": "revenue", "keys": ["store", "item"], "regressors": []}))
    write_sales(cfg.source.url, "sales", 1, 1, 10)
    with pytest.raises(SourceSchemaError, match="revenue"):
        ingest(cfg, Lake(cfg.storage.lake_url), cfg.source.url, date(2025, 12, 31))


def test_training_sets_are_bucketed_so_one_series_reads_one_bucket(env, spark):
    cfg, lake = env
    ingest(cfg, lake, cfg.source.url, date(2025, 12, 31))
    stats = build_training_sets(spark, lake, cfg, date(2025, 12, 20))
    assert stats["series"] == 6 and stats["rows"] == 6 * 109  # 2025-09-03 .. 2025-12-20
    df = spark.read.parquet(training_set_uri(lake, cfg, date(2025, 12, 20)))
    from pyspark.sql import functions as F

    buckets = df.groupBy("series_id").agg(F.countDistinct("bucket")).collect()
    assert all(r[1] == 1 for r in buckets)  # every series lives in exactly one bucket
    one = df.where("series_id = 'store=1,item=2'")
    plan = one._jdf.queryExecution().executedPlan().toString()
    assert one.count() == 109 and "bucket" in df.columns and "PushedFilters" in plan
    # Within each file rows are sorted by series and date (one series is one contiguous run).
    import pyarrow.parquet as pq

    files = sorted(Path(lake.path("training_sets", cfg.name, "run_date=2025-12-20")).glob("bucket=*/*.parquet"))
    assert files
    for f in files:
        part = pq.read_table(f, columns=["series_id", "ds"]).to_pandas()
        assert part.equals(part.sort_values(["series_id", "ds"], kind="stable").reset_index(drop=True)), f


def _series(n=200, level=20.0, seed=0):
    rng = np.random.default_rng(seed)
    ds = pd.date_range("2024-01-01", periods=n, freq="D")
    y = level + 5 * np.sin(2 * np.pi * np.arange(n) / 7) + rng.normal(0, 1, n)
    return pd.DataFrame({"ds": ds, "y": y, "price": rng.uniform(1, 2, n)})


SPEC = TrainSpec(family="prophet", freq="D", season_length=7, holdout=28, min_history=60, regressors=("price",))


def test_train_series_reports_bad_series_instead_of_raising():
    good = train_series(_series(), SPEC)
    assert good.status == TRAINED and good.metrics["wape"] < good.metrics["naive_wape"]
    short = train_series(_series(40), SPEC)
    assert short.status == SKIPPED and "min_history" in short.reason
    dup = _series()
    dup = pd.concat([dup, dup.iloc[:3]])
    assert train_series(dup, SPEC).status == FAILED
    inf = _series()
    inf.loc[5, "y"] = np.inf
    assert train_series(inf, SPEC).reason == "infinite target values"
    empty = _series()
    empty["y"] = np.nan
    assert train_series(empty, SPEC).status == SKIPPED


def test_forecast_from_the_model_artifact():
    r = train_series(_series(), SPEC)
    artifact = json.loads(r.model_json())
    ds, yhat, lo, hi = forecast_arrays(artifact, 14)
    assert len(ds) == 14 and str(ds[0]) == "2024-07-19"
    assert (lo <= yhat).all() and (yhat <= hi).all()
    assert abs(yhat.mean() - 20) < 3


def test_registry_verifies_artifact_checksums(tmp_path):
    reg = ModelRegistry(f"sqlite:///{tmp_path}/r.db", str(tmp_path / "art"), "x")
    (mv,) = reg.register_many([("ds.s_1", b'{"a": 1}', {"dataset": "ds", "series_id": "s=1"})], "run", {})
    assert reg.load_model(mv) == {"a": 1}
    path = mv.source.removeprefix("file://")
    with open(path, "wb") as f:
        f.write(b'{"a": 2}')
    with pytest.raises(ArtifactIntegrityError, match="sha256"):
        reg.load_model(mv)
    ro = ModelRegistry(f"sqlite:///{tmp_path}/r.db", str(tmp_path / "art"), "x", writable=False)
    with pytest.raises(PermissionError):
        ro.register_many([("ds.s_2", b"{}", {})], "run", {})


def test_auto_selection_becomes_registry_tags():
    from mm_platform.pipeline import _selection_tags

    r = train_series(_series(300), TrainSpec(family="auto", freq="D", season_length=7, holdout=28, min_history=60))
    tags = _selection_tags(r.model_json())
    assert tags["champion"] == r.champion and tags["selection_reason"] == r.selection_reason
    assert {k for k in tags if k.startswith("backtest.")} >= {"backtest.seasonal_naive.wape", "backtest.prophet.wape"}
    assert _selection_tags(train_series(_series(), SPEC).model_json()) == {}
