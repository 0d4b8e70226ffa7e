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
from mm_platform.steps.ingest import SourceSchemaError, ingest
from mm_platform.steps.train import build_training_sets
from mm_platform.stores.artifacts import ArtifactIntegrityError
from mm_platform.stores.lake import Lake
from mm_platform.stores.registry import ModelRegistry
from mm_platform.stores.training_sets import training_set_store
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
    df = spark.read.parquet(training_set_store(lake, cfg).uri(date(2025, 12, 20)))
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


def _files_by_bucket(lake, cfg, run_date) -> dict[int, pd.DataFrame]:
    import pyarrow.parquet as pq

    folder = Path(lake.path("training_sets", cfg.name, f"run_date={run_date}"))
    return {int(d.name.split("=")[1]): pq.read_table(sorted(d.glob("*.parquet")), partitioning=None).to_pandas()
            for d in sorted(folder.glob("bucket=*"))}


@pytest.mark.parametrize("keys", ["int", "string"])
def test_arrow_build_writes_what_spark_sql_defines(tmp_path, spark, keys):
    """The local lake's training sets (pyarrow in Spark tasks) hold exactly the rows of
    ``training_rows`` (the Spark SQL definition): same series ids, same buckets (Spark's
    xxhash64), same values, sorted by series and date in each bucket file; rows after the run
    date left out; int32/int64 key columns across raw files unified."""
    from mm_platform.stores.training_sets import training_rows

    path = write_config(tmp_path, columns={"keys": ["store", "item"]} if keys == "int" else
                        {"keys": ["region", "sku"], "regressors": ["price", "promo"]})
    cfg = load_config(path)
    lake = Lake(cfg.storage.lake_url)
    sales = generate_sales(stores=3, items=5, days=100, seed=4)
    if keys == "string":
        sales = sales.assign(region="région-" + sales["store"].astype(str), sku="SKU " + sales["item"].astype(str) + ",x")
        sales = sales.drop(columns=["store", "item", "holiday"])
    first, second = sales[sales["date"] < "2025-11-15"], sales[sales["date"] >= "2025-11-15"]
    if keys == "int":
        second = second.astype({"store": "int64"})  # a later month written with a wider key type
    for part in (first, second):
        lake.upsert_raw("sales", part.reset_index(drop=True), cfg.keys, "date")
    run_date = date(2025, 12, 20)
    stats = build_training_sets(spark, lake, cfg, run_date)

    import pyarrow.parquet as pq

    # (Spark's own Parquet reader refuses int32 and int64 in one column: read the reference with pandas.)
    files = [lake.path("raw", "sales", f) for f in lake.read_manifest("sales")["files"].values()]
    assert len(files) > 1
    raw = spark.createDataFrame(pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True))
    expected = training_rows(raw, cfg, run_date).toPandas()
    written = _files_by_bucket(lake, cfg, run_date)
    assert stats["rows"] == len(expected) == sum(map(len, written.values()))
    assert stats["series"] == expected["series_id"].nunique() == 15
    assert expected["ds"].max() == pd.Timestamp(run_date) and sales["date"].max() > pd.Timestamp(run_date)
    assert sorted(written) == sorted(expected["bucket"].unique())
    for bucket, got in written.items():
        want = expected[expected["bucket"] == bucket].drop(columns="bucket")
        want = want.sort_values(["series_id", "ds"], kind="stable").reset_index(drop=True)
        assert list(got.columns) == list(want.columns)
        got = got.assign(ds=got["ds"].astype("datetime64[ns]"), **{k: got[k].astype(want[k].dtype) for k in cfg.keys})
        pd.testing.assert_frame_equal(got, want.assign(ds=want["ds"].astype("datetime64[ns]")), check_dtype=False)


def test_training_set_rebuild_replaces_it_and_a_failed_build_keeps_the_previous_one(env, spark):
    cfg, lake = env
    ingest(cfg, lake, cfg.source.url, date(2025, 12, 31))
    run_date = date(2025, 12, 20)
    build_training_sets(spark, lake, cfg, run_date)
    before = _files_by_bucket(lake, cfg, run_date)
    build_training_sets(spark, lake, cfg, run_date)  # idempotent: the same set again, no leftovers
    again = _files_by_bucket(lake, cfg, run_date)
    assert before.keys() == again.keys() and all(before[b].equals(again[b]) for b in before)
    folder = Path(lake.path("training_sets", cfg.name))
    assert sorted(p.name for p in folder.iterdir()) == ["run_date=2025-12-20"]

    # A raw file that cannot be read fails the build; the previous set stays whole.
    victim = lake.path("raw", "sales", sorted(lake.read_manifest("sales")["files"].values())[-1])
    Path(victim).write_bytes(b"not parquet")
    with pytest.raises(Exception, match="(?i)parquet"):
        build_training_sets(spark, lake, cfg, run_date)
    kept = _files_by_bucket(lake, cfg, run_date)
    assert kept.keys() == before.keys() and all(before[b].equals(kept[b]) for b in before)
    assert sorted(p.name for p in folder.iterdir()) == ["run_date=2025-12-20"]


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
    from mm_platform.steps.train import _selection_tags

    r = train_series(_series(300), TrainSpec(family="auto", freq="D", season_length=7, holdout=28, min_history=60))
    tags = _selection_tags(r.model_json())
    assert tags["champion"] == r.champion and tags["selection_reason"] == r.selection_reason
    assert {k for k in tags if k.startswith("backtest.")} >= {"backtest.seasonal_naive.wape", "backtest.prophet.wape"}
    assert _selection_tags(train_series(_series(), SPEC).model_json()) == {}
