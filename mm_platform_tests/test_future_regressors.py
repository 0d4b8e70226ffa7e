"""Known future regressor values (planned prices, promotions) reach batch scoring from the
source data: ingestion keeps the run date's snapshot, scoring aligns it to each model's
forecast dates and carries the latest value forward where the source has none."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import sqlalchemy as sa

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform.forecasting.series import forecast_arrays, future_regressor_values
from mm_platform.steps.ingest import ingest
from mm_platform.steps.promote import promote
from mm_platform.steps.score import score_and_write
from mm_platform.steps.train import build_training_sets, train_and_register
from mm_platform.stores.lake import Lake
from mm_platform.stores.registry import production_by_series, production_registry, training_registry
from mm_platform.stores.sql import create_engine
from mm_platform.stores.training_sets import training_set_store
from mm_platform.stores.warehouse import Warehouse
from mm_platform_tests.conftest import write_config

RUN = date(2025, 12, 31)


def test_known_future_values_are_used_and_gaps_carry_the_latest_value_forward():
    model = {"last_ds": "2025-12-31", "freq": "D", "regressor_names": ["price", "promo"],
             "last_regressors": {"price": 2.0, "promo": 0.0}}
    known = {"ds": ["2026-01-02", "2026-01-03", "2026-01-09"], "price": [1.5, None, 3.0], "promo": [1, 1, 0]}
    got = future_regressor_values(model, 5, known)
    assert got["price"].tolist() == [2.0, 1.5, 1.5, 1.5, 1.5]  # 01-01 unknown, 01-03 null
    assert got["promo"].tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert future_regressor_values(model, 2, None)["price"].tolist() == [2.0, 2.0]
    weekly = {**model, "freq": "W", "last_ds": "2025-12-28"}
    assert future_regressor_values(weekly, 2, {"ds": ["2026-01-11"], "price": [9.0], "promo": [0]})["price"].tolist() == [2.0, 9.0]


def test_batch_scoring_uses_the_planned_prices_in_the_source(tmp_path, spark):
    horizon = 14
    cfg = load_config(write_config(
        tmp_path, horizon=horizon, algorithm={"name": "regression"},
        promotion={"max_wape": None, "beats_seasonal_naive": False, "not_worse_than_production": False},
    ))
    write_sales(cfg.source.url, cfg.source.table, stores=1, items=4, days=500, seed=11, future_days=horizon + 3)
    engine = create_engine(cfg.source.url)
    with engine.begin() as conn:
        # A deep discount planned on item 2 for the second week, and one bad planned row.
        conn.execute(sa.text("UPDATE sales SET price = price * 0.4 WHERE item = 2 AND date > '2026-01-07'"))
        conn.execute(sa.text("UPDATE sales SET price = NULL WHERE item = 3 AND date = '2026-01-05'"))
        future_in_source = conn.execute(sa.text("SELECT COUNT(*) FROM sales WHERE date > '2025-12-31'")).scalar()
    engine.dispose()
    assert future_in_source == 4 * (horizon + 3)

    lake = Lake(cfg.storage.lake_url)
    stats = ingest(cfg, lake, cfg.source.url, RUN)
    assert stats["future_rows"] == 4 * horizon - 1  # within the horizon, minus the quarantined row
    assert stats["watermark"] == "2025-12-31"  # planned rows are not history
    quarantined = lake.read_quarantine(cfg.source.table)
    assert quarantined["reason"].tolist() == ["future row: missing or non-numeric regressor price"]

    build_training_sets(spark, lake, cfg, RUN)
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    train_and_register(spark, lake, cfg, RUN, training_registry(cfg), wh, "train")
    promote(cfg, RUN, training_registry(cfg), production_registry(cfg, writable=True), wh, training_set_store(lake, cfg))
    score_and_write(spark, lake, cfg, RUN, production_registry(cfg), wh, "score")

    preds = wh.read("SELECT item, ds, yhat FROM predictions ORDER BY item, ds")
    planned = lake.read_future(cfg.source.table, RUN)
    prod = production_by_series(production_registry(cfg), cfg.name)
    assert "store=1,item=2" in prod
    for mv in prod.values():
        item = int(mv.tags["key.item"])
        model = production_registry(cfg).load_model(mv)
        rows = planned[planned["item"] == item]
        known = {"ds": pd.to_datetime(rows["date"]).dt.strftime("%Y-%m-%d").tolist(),
                 **{r: rows[r].tolist() for r in cfg.columns.regressors}}
        regressors = future_regressor_values(model, horizon, known)
        expected = forecast_arrays(model, horizon, regressors)[1]
        got = preds.loc[preds["item"] == item, "yhat"].to_numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-9)
        if item == 2:
            assert regressors["price"][-1] < 0.5 * regressors["price"][0]
            carried = forecast_arrays(model, horizon)[1]  # the last observed price carried forward
            assert got[7:].mean() > 1.2 * carried[7:].mean(), "a planned discount should raise the forecast"
