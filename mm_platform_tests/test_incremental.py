"""Daily incremental retraining: unchanged series keep their model, changed ones are refitted."""

import json
from datetime import date

import pytest
import sqlalchemy as sa

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform.steps.ingest import ingest
from mm_platform.steps.train import build_training_sets, train_and_register
from mm_platform.stores.lake import Lake
from mm_platform.stores.registry import training_registry
from mm_platform.stores.warehouse import Warehouse
from mm_platform_tests.conftest import write_config

RUN = date(2025, 12, 31)


def test_only_changed_series_are_refitted_and_registered(tmp_path, spark):
    cfg = load_config(write_config(tmp_path))
    write_sales(cfg.source.url, "sales", 2, 3, 200, seed=11)
    lake = Lake(cfg.storage.lake_url)
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)

    def day():
        ingest(cfg, lake, cfg.source.url, RUN)
        build_training_sets(spark, lake, cfg, RUN)
        return train_and_register(spark, lake, cfg, RUN, training_registry(cfg), wh, "t")

    first = day()
    assert first.registered == 6
    before = training_registry(cfg).latest_by_series(cfg.name)
    engine = sa.create_engine(cfg.source.url)
    with engine.begin() as conn:  # a late correction of one series
        conn.execute(sa.text("UPDATE sales SET units = units + 3 WHERE store = 2 AND item = 3 AND date = '2025-12-30'"))
    second = day()
    assert second.registered == 1 and second.unchanged == 5
    rep = second.report.set_index("series_id")
    assert rep.loc["store=2,item=3", "registration"] == "registered"
    kept = rep[rep["registration"] == "unchanged"]
    assert (kept["fit_seconds"] == 0).all()  # not refitted at all
    assert (kept["status"] == "trained").all() and kept["wape"].notna().all()  # registered metrics carried over
    after = training_registry(cfg).latest_by_series(cfg.name)
    assert after["store=2,item=3"].version == before["store=2,item=3"].version + 1
    assert all(after[s].version == before[s].version for s in before if s != "store=2,item=3")


# --- warm start of changed series ---------------------------------------------------------------

# A warm-started fit ends where a cold one does, up to the optimiser's convergence tolerance
# (relative objective change 1e-13): forecasts agree to 1e-6 of their scale.
WARM_TOL = 1e-6


def _one_series(days: int = 800, item: int = 2):
    import pandas as pd

    from mm_platform.datagen import generate_sales

    df = generate_sales(1, 3, days, seed=5)
    s = df[df["item"] == item].rename(columns={"date": "ds", "units": "y"})
    s = s[["ds", "y", "price", "promo", "holiday"]].reset_index(drop=True)
    s["ds"] = pd.to_datetime(s["ds"])
    return s


def _spec(tmp_path, **prophet):
    from mm_platform.spark.train import train_spec

    cfg = load_config(write_config(tmp_path, algorithm={"name": "prophet", "prophet": prophet}))
    return train_spec(cfg)


def _assert_same_forecast(a, b):
    import numpy as np

    from mm_platform.forecasting.series import forecast_arrays

    fa, fb = forecast_arrays(a, 28), forecast_arrays(b, 28)
    scale = max(float(np.abs(fa[1]).max()), 1.0)
    for x, y in zip(fa[1:], fb[1:], strict=True):
        assert np.max(np.abs(x - y)) <= WARM_TOL * scale



@pytest.mark.parametrize("mode", ["additive", "multiplicative"])
def test_warm_started_refit_forecasts_like_a_cold_fit(tmp_path, monkeypatch, mode):
    import numpy as np

    from mm_platform.forecasting import families
    from mm_platform.forecasting.series import TRAINED, train_series, warm_starts

    spec = _spec(tmp_path, seasonality_mode=mode)
    today = _one_series()
    yesterday = train_series(today.iloc[:-1], spec)  # the registered model, one day older
    assert yesterday.status == TRAINED
    today.loc[len(today) - 3, "y"] += 5  # and a late correction
    previous = json.loads(yesterday.model_json())  # as read back from the registry

    inits = []
    real_fit = families.Prophet.fit

    def spy(self, history, ctx, init=None):
        inits.append(init)
        return real_fit(self, history, ctx, init=init)

    monkeypatch.setattr(families.Prophet, "fit", spy)
    warm = train_series(today, spec, previous=previous)
    warm_inits, inits[:] = list(inits), []
    cold = train_series(today, spec)
    cold_inits = list(inits)

    # the holdout fit started from the registered model's parameters, the cold one from Prophet's
    expected = warm_starts(previous)["prophet"]
    assert warm_inits[0] is not None and cold_inits[0] is None
    assert np.array_equal(warm_inits[0]["delta"], expected["delta"]) and warm_inits[0]["k"] == expected["k"]
    # ...and both arrive at the same model: same forecasts, metrics and fingerprint
    assert warm.status == cold.status == TRAINED
    assert warm.fingerprint == cold.fingerprint != yesterday.fingerprint
    _assert_same_forecast(warm.model, cold.model)
    for m in ("mape", "wape", "rmse"):
        assert abs(warm.metrics[m] - cold.metrics[m]) <= WARM_TOL * max(abs(cold.metrics[m]), 1.0)


def test_unusable_previous_model_means_a_cold_fit(tmp_path):
    from mm_platform.forecasting.series import train_series

    spec = _spec(tmp_path)
    today = _one_series(400)
    cold = train_series(today, spec)
    naive = {"family": "seasonal_naive", "model": {"last_season": [1.0] * 7, "last_ds": "2025-01-01", "step_days": 1}}
    for previous in (None, {}, {"family": "no_such_family", "model": {}}, naive,
                     {"family": "prophet", "model": {"k": "not a number"}}):
        again = train_series(today, spec, previous=previous)
        assert again.model_json() == cold.model_json()


def test_read_previous_model_verifies_the_registered_artifact(tmp_path):
    import hashlib

    from mm_platform.spark.train import read_previous_model

    data = json.dumps({"family": "prophet", "model": {"k": 1.0}}).encode()
    path = tmp_path / "m.json"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    assert read_previous_model((path.as_uri(), sha)) == json.loads(data)
    assert read_previous_model((str(path), sha)) == json.loads(data)
    assert read_previous_model((path.as_uri(), "0" * 64)) is None  # tampered: cold fit
    assert read_previous_model((str(tmp_path / "gone.json"), sha)) is None
    assert read_previous_model(None) is None


def test_changed_series_is_warm_started_from_its_registered_model(tmp_path, spark, monkeypatch):
    from mm_platform.forecasting.series import train_series
    from mm_platform.spark import train as spark_train
    from mm_platform.spark.train import read_previous_model, train_spec
    from mm_platform.stores.training_sets import training_set_store

    cfg = load_config(write_config(tmp_path))
    write_sales(cfg.source.url, "sales", 1, 3, 200, seed=7)
    lake = Lake(cfg.storage.lake_url)
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    registry = training_registry(cfg)
    calls = []
    real = spark_train.train_buckets  # the backend of a local lake

    def recording(*args, previous=None, **kw):
        calls.append(previous)
        return real(*args, previous=previous, **kw)

    monkeypatch.setattr(spark_train, "train_buckets", recording)

    def day():
        ingest(cfg, lake, cfg.source.url, RUN)
        build_training_sets(spark, lake, cfg, RUN)
        return train_and_register(spark, lake, cfg, RUN, registry, wh, "t")

    assert day().registered == 3
    assert calls[-1] == {}  # nothing registered yet: every fit is cold
    before = registry.latest_by_series(cfg.name)
    with sa.create_engine(cfg.source.url).begin() as conn:
        conn.execute(sa.text("UPDATE sales SET units = units + 4 WHERE item = 2 AND date = '2025-12-29'"))
    second = day()
    assert second.registered == 1 and second.unchanged == 2
    sid = "store=1,item=2"
    # the workers were handed each series' registered artifact, and it reads back verified
    assert calls[-1][sid] == (before[sid].source, before[sid].tags["artifact_sha256"])
    assert read_previous_model(calls[-1][sid]) == registry.load_model(before[sid])
    # the warm-started model forecasts as a cold fit on the same data does
    after = registry.latest_by_series(cfg.name)
    assert after[sid].version == before[sid].version + 1
    history = training_set_store(lake, cfg).dataframe(spark, RUN).where(f"series_id = '{sid}'").toPandas()
    cold = train_series(history.sort_values("ds").reset_index(drop=True), train_spec(cfg))
    _assert_same_forecast(registry.load_model(after[sid]), cold.model)
