"""Every model family: fit, forecast with intervals, JSON round trip of the compact form."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mm_platform.config import ConfigError, parse_config
from mm_platform.forecasting.families import (
    COST_ORDER,
    FAMILIES,
    FitContext,
    PathModel,
    get_family,
    load_model,
)
from mm_platform.forecasting.metrics import conformal_half_width, coverage, mase, naive_scale
from mm_platform.forecasting.series import TRAINED, TrainSpec, forecast_arrays, train_series

# prophet_library is prophet's compact form fitted through cmdstan (covered by test_prophet_fast).
ROUND_TRIP = sorted(set(FAMILIES) - {"prophet_library"})


def retail_like(n=400, seed=0, freq="D"):
    rng = np.random.default_rng(seed)
    step = 7 if freq == "W" else 1
    ds = pd.date_range("2023-01-02", periods=n, freq=pd.Timedelta(days=step))
    t = np.arange(n)
    price = np.round(rng.uniform(2.0, 3.0, n), 2)
    promo = (rng.random(n) < 0.1).astype(float)
    week = 4 * np.sin(2 * np.pi * t / 7) if freq == "D" else 3 * np.sin(2 * np.pi * t / 52)
    lam = np.maximum(30 + week - 6 * (price - 2.5) + 8 * promo + 0.01 * t, 0.5)
    y = rng.poisson(lam).astype(float)
    y[[17, 60, 61]] = np.nan  # missing periods
    return pd.DataFrame({"ds": ds, "y": y, "price": price, "promo": promo})


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_fit_forecast_and_json_round_trip(name):
    h = retail_like()
    train, test = h.iloc[:-28], h.iloc[-28:]
    ctx = FitContext("D", 7, ("price", "promo"), max_horizon=28)
    fitted = get_family(name).fit(train, ctx)
    regs = {r: test[r].to_numpy() for r in ("price", "promo")}
    yhat = fitted.predict(test["ds"].to_numpy(), regs)
    assert yhat.shape == (28,) and np.isfinite(yhat).all()
    assert 10 < yhat.mean() < 60  # a sane level for a series around 30-37
    payload = json.loads(json.dumps(fitted.to_dict()))
    again = load_model({"family": name, "model": payload}).predict(test["ds"].to_numpy(), regs)
    np.testing.assert_array_equal(again, yhat)


@pytest.mark.parametrize("name", ["ets", "regression", "croston", "seasonal_naive"])
def test_artifact_forecasts_weekly_with_calibrated_intervals(name):
    h = retail_like(n=150, freq="W")
    spec = TrainSpec(name, "W", 52, 8, 30, ("price", "promo"), calibration_folds=2, fold_length=8, max_horizon=8)
    r = train_series(h, spec)
    assert r.status == TRAINED, r.reason
    artifact = json.loads(r.model_json())
    assert artifact["interval"]["method"] == "conformal" and artifact["interval"]["residuals"] >= 8
    ds, yhat, lo, hi = forecast_arrays(artifact, 20)
    assert (np.diff(ds).astype(int) == 7).all() and str(ds[0]) > artifact["last_ds"]
    assert (lo <= yhat).all() and (yhat <= hi).all() and np.isfinite(yhat).all()
    again = forecast_arrays(json.loads(json.dumps(artifact)), 20)
    for a, b in zip(again, (ds, yhat, lo, hi), strict=True):
        np.testing.assert_array_equal(a, b)


def test_path_model_repeats_its_last_season_past_the_stored_path():
    m = PathModel("ets", np.arange(10.0), np.datetime64("2025-01-01"), 1, 7)
    out = m.predict(np.datetime64("2025-01-01") + np.arange(1, 16))
    np.testing.assert_array_equal(out, [*range(10), 3, 4, 5, 6, 7])
    with pytest.raises(ValueError, match="after its last observation"):
        m.predict(np.array(["2025-01-01"], dtype="datetime64[D]"))


def test_arima_uses_regressors_linearly():
    h = retail_like(n=300)
    fitted = get_family("arima").fit(h, FitContext("D", 7, ("price", "promo"), max_horizon=14))
    ds = pd.date_range(h["ds"].iloc[-1] + pd.Timedelta(days=1), periods=14).to_numpy()
    base = fitted.predict(ds, {"price": np.full(14, 2.5), "promo": np.zeros(14)})
    promo = fitted.predict(ds, {"price": np.full(14, 2.5), "promo": np.ones(14)})
    assert 4 < (promo - base).mean() < 12  # the true promotion effect is +8


def test_ensemble_is_the_mean_of_its_members():
    h = retail_like(n=200)
    ctx = FitContext("D", 7, ("price", "promo"), max_horizon=14, options={"ensemble": ["regression", "croston"]})
    ens = get_family("ensemble").fit(h, ctx)
    ds = pd.date_range(h["ds"].iloc[-1] + pd.Timedelta(days=1), periods=14).to_numpy()
    regs = {"price": np.full(14, 2.5), "promo": np.zeros(14)}
    members = [get_family(n).fit(h, ctx).predict(ds, regs) for n in ("regression", "croston")]
    np.testing.assert_allclose(ens.predict(ds, regs), np.mean(members, axis=0))


def test_every_family_has_a_cost_rank():
    assert set(FAMILIES) <= set(COST_ORDER)
    assert COST_ORDER[0] == "seasonal_naive"


def test_coverage_and_conformal_half_width():
    assert coverage([1, 2, 3, 4], [0, 2.5, 2, 0], [2, 3, 4, 3]) == 0.5
    assert np.isnan(coverage([np.nan], [0], [1]))
    r = np.arange(1, 20, dtype=float)  # 19 residuals: rank ceil(20 * 0.9) = 18
    assert conformal_half_width(r, 0.9) == 18.0
    assert conformal_half_width(-r, 0.9) == 18.0  # absolute residuals
    assert conformal_half_width([1.0, 2.0], 0.9) == 2.0  # too few: the largest
    # On exchangeable errors the conformal interval covers new errors at the nominal rate.
    rng = np.random.default_rng(1)
    hits = []
    for _ in range(400):
        e = rng.standard_t(3, size=60)
        hits.append(abs(e[-1]) <= conformal_half_width(e[:-1], 0.9))
    assert 0.85 <= np.mean(hits) <= 0.95
    y = np.array([1.0, 2, 3, 1, 2, 3])
    assert naive_scale(y, 3) == 0.0 and naive_scale(np.arange(6.0), 1) == 1.0
    assert mase([2, 2], [1, 3], 2.0) == 0.5


def test_auto_config_is_validated_and_reaches_the_train_spec():
    from mm_platform.spark.train import train_spec

    cfg = parse_config(
        {
            "name": "x",
            "source": {"url": "sqlite:///x.db"},
            "algorithm": {"name": "auto", "auto": {"folds": 2, "fold_length": 14, "metric": "mase", "candidates": ["ets", "prophet"]}},
        }
    )
    spec = train_spec(cfg)
    assert (spec.family, spec.folds, spec.fold_length, spec.metric, spec.candidates) == ("auto", 2, 14, "mase", ("ets", "prophet"))
    with pytest.raises(ConfigError, match="algorithm.auto.candidates"):
        parse_config({"name": "x", "source": {"url": "sqlite:///x.db"}, "algorithm": {"auto": {"candidates": ["xgb"]}}})
    with pytest.raises(ConfigError, match="algorithm.name"):
        parse_config({"name": "x", "source": {"url": "sqlite:///x.db"}, "algorithm": {"name": "lstm"}})


@pytest.mark.parametrize("freq, origin_days", [("D", 3), ("W", 21)])
def test_a_kept_model_forecasts_the_horizon_after_the_run_date(freq, origin_days):
    """A production model kept over several runs publishes the periods after the run date,
    not after the day it was trained (issue #20: every series forecast every run)."""
    from mm_platform.spark.score import forecast_or_reason

    h = retail_like(n=150, freq=freq)
    spec = TrainSpec("ets", freq, 52 if freq == "W" else 7, 8, 30, ("price", "promo"), calibration_folds=2,
                     fold_length=8, max_horizon=8)
    r = train_series(h, spec)
    assert r.status == TRAINED, r.reason
    model_json = r.model_json()
    last = np.datetime64(json.loads(model_json)["last_ds"], "D")
    origin = str(last + np.timedelta64(origin_days, "D"))
    (ds, yhat, lo, hi), why = forecast_or_reason(model_json, 8, True, None, origin)
    assert why is None and len(ds) == 8
    assert ds[0] > np.datetime64(origin) and ds[0] - np.datetime64(origin) <= np.timedelta64(7 if freq == "W" else 1, "D")
    gap = origin_days // (7 if freq == "W" else 1)
    full, _ = forecast_or_reason(model_json, 8 + gap, True, None)
    np.testing.assert_array_equal(yhat, full[1][gap:])
    (same_ds, *_), _ = forecast_or_reason(model_json, 8, True, None, str(last))
    assert same_ds[0] == last + np.timedelta64(7 if freq == "W" else 1, "D")
