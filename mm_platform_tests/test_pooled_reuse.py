"""The pooled choice of ``algorithm: auto`` across runs (spark/pooled.py): per-series training
stores each series' backtest summary in its artifact, and a later run's stage 1 reuses it
for sampled series whose data did not change instead of backtesting them again. Real Spark,
real MLflow registry, real lake."""

import json
from dataclasses import replace
from datetime import date

import pytest
import sqlalchemy as sa

from mm_platform.config import load_config
from mm_platform.core.vocabulary import TAG_FINGERPRINT, TAG_SHA256
from mm_platform.datagen import write_sales
from mm_platform.forecasting.series import summary_from_record
from mm_platform.spark.pooled import data_fingerprint, pooled_prior, pooled_totals, series_summary
from mm_platform.spark.train import series_fingerprint, train_spec
from mm_platform.steps.ingest import ingest
from mm_platform.steps.train import build_training_sets, train_and_register
from mm_platform.stores.lake import Lake
from mm_platform.stores.registry import training_registry
from mm_platform.stores.training_sets import training_set_store
from mm_platform.stores.warehouse import Warehouse
from mm_platform_tests import driver_guard
from mm_platform_tests.conftest import write_config

RUN = date(2025, 12, 31)
AUTO = {"name": "auto", "auto": {"folds": 2, "candidates": ["seasonal_naive", "croston", "regression"]}}


def _refs(cfg):
    """The registered models' fingerprints and (artifact URI, sha256), as model_set passes them."""
    latest = training_registry(cfg).latest_by_series(cfg.name)
    known = {sid: mv.tags[TAG_FINGERPRINT] for sid, mv in latest.items()}
    previous = {sid: (mv.source, mv.tags[TAG_SHA256]) for sid, mv in latest.items()}
    return latest, known, previous


def _reused(rows) -> int:
    return sum(r["reused"] or 0 for r in rows)


@pytest.mark.parametrize("lake_io", ["fsspec", "spark"])
def test_a_retrain_reuses_unchanged_series_backtests_and_chooses_the_same(tmp_path, spark, monkeypatch, lake_io):
    cfg = load_config(write_config(tmp_path, algorithm=AUTO, storage={"lake_io": lake_io}))
    write_sales(cfg.source.url, "sales", 2, 3, 200, seed=11)
    lake = Lake(cfg.storage.lake_url)
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    store, spec = training_set_store(lake, cfg), train_spec(cfg)

    def day():
        ingest(cfg, lake, cfg.source.url, RUN)
        build_training_sets(spark, lake, cfg, RUN)
        with monkeypatch.context() as m:  # stage 1 reads artifacts in tasks, not in the driver
            driver_guard.install(cfg.columns.target, m.setattr)
            return train_and_register(spark, lake, cfg, RUN, training_registry(cfg), wh, "t")

    assert day().registered == 6
    latest, known, previous = _refs(cfg)
    data = store._dataset(RUN).to_table().to_pandas().sort_values(["series_id", "ds"])
    for sid, pdf in data.groupby("series_id"):
        pdf = pdf.reset_index(drop=True)
        record = json.loads(training_registry(cfg).read_artifact(latest[sid]))["selection"]["pooled_summary"]
        fp = series_fingerprint(pdf, spec.regressors)
        assert record["fingerprint"] == fp == known[sid] == data_fingerprint(pdf, spec.regressors)
        assert data_fingerprint(pdf.assign(ds=pdf["ds"].astype("datetime64[ns]")), spec.regressors) == fp
        # Stage 2's stored summary is exactly stage 1's backtest of the same series.
        assert summary_from_record(record, spec, fp) == series_summary(pdf, spec)
        assert summary_from_record(record, spec, "other data") is None
        assert summary_from_record(record, replace(spec, folds=3), fp) is None

    # Nothing changed: every sampled series' summary comes from its artifact, and the sums
    # (so the choice) are the fresh computation's to the last bit.
    fresh, _, sampled = pooled_totals(spark, store, cfg, RUN, spec)
    again, rows, _ = pooled_totals(spark, store, cfg, RUN, spec, known=known, previous=previous)
    assert sampled == 6 and _reused(rows) == 6 and sum(r["series"] for r in rows) == 6
    assert again == fresh
    choice, summary = pooled_prior(spark, store, cfg, RUN, spec, known=known, previous=previous)
    assert choice and summary["series_reused"] == summary["series_backtested"] == 6
    assert choice == pooled_prior(spark, store, cfg, RUN, spec)[0]

    # Other backtest settings, or an artifact that fails its sha256: backtested again.
    other = replace(spec, folds=3)
    assert _reused(pooled_totals(spark, store, cfg, RUN, other, known=known, previous=previous)[1]) == 0
    bad = {sid: (uri, "0" * 64) for sid, (uri, _) in previous.items()}
    totals, rows, _ = pooled_totals(spark, store, cfg, RUN, spec, known=known, previous=bad)
    assert _reused(rows) == 0 and totals == fresh

    if lake_io == "spark":
        return
    engine = sa.create_engine(cfg.source.url)
    with engine.begin() as conn:  # a late correction of one series: only it is backtested again
        conn.execute(sa.text("UPDATE sales SET units = units + 30 WHERE store = 2 AND item = 3 AND date >= '2025-12-01'"))
    ingest(cfg, lake, cfg.source.url, RUN)
    build_training_sets(spark, lake, cfg, RUN)
    fresh, _, _ = pooled_totals(spark, store, cfg, RUN, spec)
    again, rows, _ = pooled_totals(spark, store, cfg, RUN, spec, known=known, previous=previous)
    assert _reused(rows) == 5 and again == fresh
    assert pooled_prior(spark, store, cfg, RUN, spec, known=known, previous=previous)[0] == pooled_prior(
        spark, store, cfg, RUN, spec)[0]

    # The retrain refits that series alone; its new artifact holds the summary of its new data.
    second = day()
    assert second.registered == 1 and second.unchanged == 5
    after, known2, previous2 = _refs(cfg)
    refit = after["store=2,item=3"]
    assert refit.version == latest["store=2,item=3"].version + 1
    record = json.loads(training_registry(cfg).read_artifact(refit))["selection"]["pooled_summary"]
    assert record["fingerprint"] == known2["store=2,item=3"] != known["store=2,item=3"]
    again, rows, _ = pooled_totals(spark, store, cfg, RUN, spec, known=known2, previous=previous2)
    assert _reused(rows) == 6 and again == fresh


def test_with_the_global_candidate_summaries_are_reused_while_its_shared_models_are_the_same(tmp_path, spark):
    """The global family's backtest depends on its group's shared models, refitted every run:
    unchanged data give the same models (same sha256, new artifact URIs) and the stored
    summaries are reused; one changed series changes its group's models and none is."""
    from mm_platform.forecasting import global_lgbm as G
    from mm_platform.spark.global_train import prepare_shared

    cfg = load_config(write_config(
        tmp_path, algorithm={"name": "auto", "auto": {"candidates": ["seasonal_naive", "regression", "global_lgbm"],
                                                      "fallback": "regression", "folds": 2}},
    ))
    write_sales(cfg.source.url, cfg.source.table, 2, 3, 300, seed=3)
    lake = Lake(cfg.storage.lake_url)
    store, spec, registry = training_set_store(lake, cfg), train_spec(cfg), training_registry(cfg)
    ingest(cfg, lake, cfg.source.url, RUN)
    build_training_sets(spark, lake, cfg, RUN)
    G.forget_shared()
    out = train_and_register(spark, lake, cfg, RUN, registry, Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys), "g1")
    assert out.failed == 0 and out.registered == 6
    _, known, previous = _refs(cfg)

    setup = prepare_shared(spark, store, cfg, RUN, registry, spec, "g2")  # a new run's shared models
    fresh, fresh_rows, _ = pooled_totals(spark, store, cfg, RUN, spec, shared=setup)
    backtested = sum(r["series"] for r in fresh_rows)  # (two of these series are too short to backtest)
    again, rows, _ = pooled_totals(spark, store, cfg, RUN, spec, shared=setup, known=known, previous=previous)
    assert backtested >= 3 and _reused(rows) == backtested and again == fresh and any("global_lgbm" in k for k in fresh)

    engine = sa.create_engine(cfg.source.url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE sales SET units = units + 30 WHERE store = 1 AND item = 1 AND date >= '2025-12-01'"))
    ingest(cfg, lake, cfg.source.url, RUN)
    build_training_sets(spark, lake, cfg, RUN)
    setup = prepare_shared(spark, store, cfg, RUN, registry, spec, "g3")
    fresh, _, _ = pooled_totals(spark, store, cfg, RUN, spec, shared=setup)
    again, rows, _ = pooled_totals(spark, store, cfg, RUN, spec, shared=setup, known=known, previous=previous)
    assert _reused(rows) == 0 and again == fresh
    G.forget_shared()
