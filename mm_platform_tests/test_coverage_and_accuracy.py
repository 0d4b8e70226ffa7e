"""Coverage (every series with enough history gets a production forecast, by a champion or a
fallback), realized accuracy against a hand computation, and drift that acts (issue #20)."""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from mm_platform.config import load_config, parse_config
from mm_platform.core.vocabulary import (
    FALLBACK_PROMOTED,
    METRICS,
    NOT_FORECAST,
    TAG_TIER,
    TIER_CHAMPION,
    TIER_FALLBACK,
    TRAINED,
    format_metric,
    identity_tags,
    metric_tag,
    model_name,
)
from mm_platform.forecasting.series import forecast_arrays
from mm_platform.steps.accuracy import act_on_drift, evaluate_accuracy
from mm_platform.steps.promote import promote
from mm_platform.steps.train import register_model_set
from mm_platform.stores.registry import production_by_series, production_registry
from mm_platform.stores.warehouse import Warehouse
from mm_platform_tests.conftest import write_config
from mm_platform_tests.fakes import FakeHistories, FakeRegistry, FakeWarehouse

RUN = date(2025, 12, 31)


def _cfg(**over):
    return parse_config({"name": "retail", "source": {"url": "sqlite:///unused.db"}, "columns": {"keys": ["store", "item"]},
                         "algorithm": {"name": "prophet"}, "promotion": {"max_wape": 0.5, "beats_seasonal_naive": True},
                         **over})


def _history(item: int, y: np.ndarray) -> pd.DataFrame:
    ds = pd.date_range(end=pd.Timestamp(RUN), periods=len(y), freq="D")
    return pd.DataFrame({"store": 1, "item": item, "series_id": f"store=1,item={item}", "ds": ds, "y": y.astype(float)})


def _results(rows):
    return pd.DataFrame([{"store": 1, "item": item, "series_id": f"store=1,item={item}", "status": TRAINED, "reason": "",
                          "n_obs": 200, "last_date": str(RUN), "fingerprint": f"f{item}", **dict.fromkeys(METRICS),
                          "wape": wape, "naive_wape": naive, "fit_seconds": 0.1,
                          "model_json": json.dumps({"family": "seasonal_naive", "item": item})} for item, wape, naive in rows])


def test_series_failing_the_rules_get_a_fallback_and_short_ones_are_reported():
    """Item 1 passes (champion); 2 fails max_wape but beats naive (its own model, as fallback);
    3 is intermittent (croston/tsb); 4 fails and is smooth (seasonal naive); 5 is too short."""
    rng = np.random.default_rng(3)
    t = np.arange(200)
    smooth = 20 + 5 * np.sin(2 * np.pi * t / 7) + rng.normal(0, 1, 200)
    sparse = np.where(rng.random(200) < 0.6, 0.0, rng.integers(1, 4, 200))
    data = pd.concat([_history(1, smooth), _history(2, smooth), _history(3, sparse), _history(4, smooth),
                      _history(5, smooth[:40])], ignore_index=True)
    c, training, production, wh = _cfg(), FakeRegistry("sqlite:///t.db"), FakeRegistry(), FakeWarehouse()
    register_model_set(_results([(1, 0.2, 0.4), (2, 0.6, 0.7), (3, 0.9, 0.8), (4, 0.3, 0.25)]), c, training, RUN, "r")
    out = promote(c, RUN, training, production, wh, FakeHistories(data, c.keys), decided_by="test")

    cov = out.coverage.set_index("series_id")
    assert cov["tier"].to_dict() == {"store=1,item=1": TIER_CHAMPION, "store=1,item=2": TIER_FALLBACK,
                                     "store=1,item=3": TIER_FALLBACK, "store=1,item=4": TIER_FALLBACK,
                                     "store=1,item=5": NOT_FORECAST}
    assert cov.loc["store=1,item=2", "family"] == "prophet"  # its own (trained) model
    assert cov.loc["store=1,item=3", "family"] in ("croston", "tsb")
    assert cov.loc["store=1,item=4", "family"] == "seasonal_naive"
    assert cov.loc["store=1,item=5", "reason"] == "40 observations, fewer than min_history 56"
    assert out.coverage_counts() == {TIER_CHAMPION: 1, TIER_FALLBACK: 3, NOT_FORECAST: 1}

    prod = production_by_series(production, "retail")
    assert set(prod) == {f"store=1,item={i}" for i in (1, 2, 3, 4)}
    assert {sid: mv.tags[TAG_TIER] for sid, mv in prod.items()} == cov["tier"].drop("store=1,item=5").to_dict()
    # A fitted fallback is registered like a trained model: same name and identity tags, holdout metrics, servable.
    mv = prod["store=1,item=3"]
    assert mv.name == model_name("retail", {"store": 1, "item": 3})
    assert all(mv.tags[k] == v for k, v in identity_tags("retail", {"store": 1, "item": 3}).items())
    assert mv.metric("wape") is not None and mv.metric("naive_wape") is not None
    ds, yhat, lo, hi = forecast_arrays(json.loads(production.read_artifact(mv)), 28)
    assert str(ds[0]) == str(RUN + timedelta(days=1)) and (lo <= yhat).all() and (yhat <= hi).all()
    assert production.read_artifact(prod["store=1,item=2"]) == training.read_artifact(training.latest_by_series("retail")["store=1,item=2"])

    log = wh.tables["promotion_log"].set_index("series_id")
    fallback = log[log["action"] == FALLBACK_PROMOTED]
    assert sorted(fallback.index) == ["store=1,item=2", "store=1,item=3", "store=1,item=4"]
    assert (fallback["tier"] == TIER_FALLBACK).all() and fallback["reasons"].str.contains("champion rules failed").all()
    assert log.loc["store=1,item=1", "tier"] == TIER_CHAMPION

    # Rerun of the run date: nothing new. Next run date: fitted fallbacks are refreshed, the
    # own-model fallback (same training version) and the champion stay.
    again = promote(c, RUN, training, production, wh, FakeHistories(data, c.keys))
    assert again.fallbacks == 0 and len(production.versions) == 4 and again.coverage_counts()[TIER_FALLBACK] == 3
    nxt = promote(c, RUN + timedelta(days=1), training, production, wh, FakeHistories(data, c.keys))
    assert nxt.fallbacks == 2
    assert {n: len(v) for n, v in production.versions.items()} == {
        "retail.store_1.item_1": 1, "retail.store_1.item_2": 1, "retail.store_1.item_3": 2, "retail.store_1.item_4": 2}


def test_fallback_disabled_reports_the_series_as_not_forecast():
    data = _history(4, np.full(100, 5.0))
    c, training = _cfg(promotion={"max_wape": 0.5, "fallback": {"enabled": False}}), FakeRegistry()
    register_model_set(_results([(4, 0.9, 0.2)]), c, training, RUN, "r")
    out = promote(c, RUN, training, FakeRegistry(), FakeWarehouse(), FakeHistories(data, c.keys))
    assert out.coverage.loc[0, "tier"] == NOT_FORECAST and "promotion.fallback.enabled is false" in out.coverage.loc[0, "reason"]


def test_every_series_with_enough_history_is_forecast_after_the_first_run(tmp_path, spark):
    """The demo's coverage promise on a small generated dataset: every series with enough
    history has predictions after the first run, each row with its tier; some by fallback."""
    import dagster as dg

    from mm_platform.datagen import write_sales
    from mm_platform.defs.dataset import Dataset

    path = write_config(tmp_path, algorithm={"name": "regression"}, horizon=7, min_history=90,
                        promotion={"max_wape": 0.5, "beats_seasonal_naive": True})
    cfg = load_config(path)
    write_sales(cfg.source.url, cfg.source.table, stores=2, items=5, days=240, seed=7)
    graph = Dataset.from_file(path).definitions()
    result = dg.materialize(list(graph.assets), partition_key=str(RUN), resources=graph.resources, raise_on_error=True)
    assert result.success
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    report = wh.read("SELECT series_id, n_obs, status FROM training_report WHERE run_date = :r", r=RUN)
    enough = set(report.loc[report["n_obs"] >= cfg.min_history, "series_id"])
    preds = wh.read("SELECT series_id, tier FROM predictions WHERE run_date = :r", r=RUN)
    assert set(preds["series_id"]) == enough
    assert preds["tier"].isin([TIER_CHAMPION, TIER_FALLBACK]).all()
    log = wh.read("SELECT series_id, action FROM promotion_log")
    rejected = set(log.loc[log["action"] == "rejected", "series_id"])
    assert rejected, "the generated data should make some models fail the rules"
    assert set(preds.loc[preds["tier"] == TIER_FALLBACK, "series_id"]) == rejected
    coverage = wh.read("SELECT * FROM v_coverage WHERE run_date = :r", r=RUN)
    assert set(coverage.loc[coverage["coverage"].isin([TIER_CHAMPION, TIER_FALLBACK]), "series_id"]) == enough
    metrics = wh.read("SELECT * FROM v_run_summary").iloc[-1]
    assert metrics["forecast_champion"] + metrics["forecast_fallback"] == len(enough)
    assert metrics["forecast_fallback"] == len(rejected) and metrics["not_forecast"] == len(report) - len(enough)
    mats = result.asset_materializations_for_node(dg.AssetKey([cfg.name, "promoted_models"]).to_python_identifier())
    assert mats[-1].metadata["coverage_fallback"].value == len(rejected)


# -- realized accuracy and drift ---------------------------------------------------------------


def _tiny(tmp_path, **over):
    """Two series with 30 days of actuals in the lake (one season = 7 days)."""
    from mm_platform.steps.ingest import ingest
    from mm_platform.stores.lake import Lake

    path = write_config(tmp_path, columns={"date": "date", "target": "units", "keys": ["store", "item"], "regressors": []},
                        horizon=3, holdout=7, min_history=14, **over)
    cfg = load_config(path)
    days = pd.date_range("2025-12-01", "2025-12-30", freq="D")
    src = pd.concat([pd.DataFrame({"date": days.date, "store": 1, "item": i, "units": np.arange(1, 31) * i})
                     for i in (1, 2)], ignore_index=True)
    src.to_sql("sales", sa.create_engine(cfg.source.url), index=False, if_exists="replace")
    lake = Lake(cfg.storage.lake_url)
    ingest(cfg, lake, cfg.source.url, date(2025, 12, 30))
    return cfg, lake, Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)


def _publish(wh, run_date, item, yhat, version=1, width=1.0):
    ds = [run_date + timedelta(days=k) for k in range(1, len(yhat) + 1)]
    rows = pd.DataFrame({"store": 1, "item": item, "series_id": f"store=1,item={item}", "ds": ds, "yhat": yhat,
                         "yhat_lower": np.asarray(yhat) - width, "yhat_upper": np.asarray(yhat) + width,
                         "model_name": f"retail.store_1.item_{item}", "model_version": version, "tier": TIER_CHAMPION})
    wh.replace_series("predictions", run_date, rows, [f"store=1,item={item}"])


def test_realized_accuracy_matches_a_hand_computation(tmp_path):
    cfg, lake, wh = _tiny(tmp_path)
    # Published on 12-27 for 12-28..12-30 (actuals of item 1: 28, 29, 30) and on 12-29 for
    # 12-30..01-01 (only 12-30 has an actual yet).
    _publish(wh, date(2025, 12, 27), 1, [30.0, 29.0, 27.0])
    _publish(wh, date(2025, 12, 29), 1, [33.0, 1.0, 1.0])
    out = evaluate_accuracy(lake, cfg, date(2025, 12, 30), wh)
    rows = wh.read("SELECT * FROM forecast_accuracy ORDER BY run_date").set_index("run_date")
    first = rows.iloc[0]
    # |28-30| + |29-29| + |30-27| = 5 over 87; bias (2 + 0 - 3) / 87; inside +-1: only 29 -> 1/3.
    assert first["pairs"] == 3 and first["max_step"] == 3
    assert first["wape"] == pytest.approx(5 / 87) and first["bias"] == pytest.approx(-1 / 87)
    assert first["interval_coverage"] == pytest.approx(1 / 3)
    # Seasonal naive as of 12-27 forecasts the values of 12-21, 12-22, 12-23: 21, 22, 23 -> 7+7+7 = 21.
    assert first["naive_wape"] == pytest.approx(21 / 87)
    second = rows.iloc[1]
    assert second["pairs"] == 1 and second["wape"] == pytest.approx(3 / 30) and second["naive_wape"] == pytest.approx(7 / 30)
    assert out.summary["wape"] == pytest.approx(8 / 117)
    # Idempotent: evaluating again replaces the run dates' rows.
    evaluate_accuracy(lake, cfg, date(2025, 12, 30), wh)
    assert len(wh.read("SELECT * FROM forecast_accuracy")) == 2
    assert len(wh.read("SELECT * FROM v_accuracy_over_time")) == 2


def test_drift_flags_only_the_degraded_series_and_rolls_it_back(tmp_path):
    cfg, lake, wh = _tiny(tmp_path, accuracy={"drift": {"window_days": 10, "min_actuals": 3, "factor": 1.5,
                                                        "actions": ["refit", "rollback"]}})
    registry = production_registry(cfg, writable=True)

    def register(item, wape):
        keys = {"store": 1, "item": item}
        tags = {**identity_tags("retail", keys), **{metric_tag(m): format_metric(wape if m == "wape" else None) for m in METRICS}}
        registry.register_many([(model_name("retail", keys), b"{}", tags)], run_name="t", run_tags={}, alias="production")

    register(1, 0.05)
    register(2, 0.05)
    register(1, 0.05)  # item 1: version 2 now in production
    actual = lambda item, d: float((d - date(2025, 11, 30)).days * item)  # noqa: E731
    for run in (date(2025, 12, 22), date(2025, 12, 23)):  # version 1 of item 1 forecast well
        _publish(wh, run, 1, [actual(1, run + timedelta(days=k)) for k in (1, 2, 3)], version=1)
    for run in (date(2025, 12, 25), date(2025, 12, 26)):  # version 2 forecasts badly; item 2 stays good
        _publish(wh, run, 1, [actual(1, run + timedelta(days=k)) * 2 for k in (1, 2, 3)], version=2)
        _publish(wh, run, 2, [actual(2, run + timedelta(days=k)) + 0.5 for k in (1, 2, 3)], version=1)
    out = evaluate_accuracy(lake, cfg, date(2025, 12, 30), wh, registry)
    assert set(out.rows["estimated_wape"].dropna()) == {0.05}
    flags = act_on_drift(cfg, date(2025, 12, 30), out.rows, registry, wh)
    assert flags["series_id"].tolist() == ["store=1,item=1"]
    flag = flags.iloc[0]
    assert flag["realized_wape"] == pytest.approx(1.0) and flag["estimated_wape"] == 0.05 and flag["pairs"] == 6
    assert "rollback to version 1" in flag["actions"] and "refit" in flag["actions"]
    assert production_by_series(registry, "retail")["store=1,item=1"].version == 1
    assert production_by_series(registry, "retail")["store=1,item=2"].version == 1
    logged = wh.read("SELECT * FROM v_drift_log")
    assert logged["series_id"].tolist() == ["store=1,item=1"] and logged["realized_wape"].iloc[0] == pytest.approx(1.0)
    assert wh.refit_requests() == ["store=1,item=1"]
