"""In-process Prophet fit and compact predict, checked against the prophet library itself.

The library fits (one cmdstan call each) are cached per series for the whole module.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("prophet")
cmdstanpy = pytest.importorskip("cmdstanpy")

from mm_platform.forecasting.prophet_fast import (  # noqa: E402
    CompactProphet,
    ProphetSpec,
    _fit,
    _prepare_numpy,
    _prepare_prophet,
    fit_prophet_fast,
    log_posterior,
    make_prophet,
)

# cmdstanpy configures its logger (level DEBUG) on first use; configure it first, then quiet it.
cmdstanpy.utils.get_logger()
logging.getLogger("cmdstanpy").setLevel(logging.WARNING)

REGS = ("price", "promo")


def make_series(
    n: int,
    freq: str = "D",
    mode: str = "additive",
    seed: int = 0,
    trend_change: bool = False,
    regressors: bool = True,
    noise: float = 0.03,
) -> pd.DataFrame:
    """A seeded synthetic series: trend, yearly (+ weekly for daily data), price and 0/1 promo effects."""
    rng = np.random.default_rng(seed)
    ds = pd.date_range("2019-01-06", periods=n, freq=freq)
    days = np.asarray((ds - ds[0]).days, dtype=np.float64)
    level = 100.0 + 0.02 * days
    if trend_change:
        cp = days[int(n * 0.55)]
        level = level + np.where(days > cp, -0.09 * (days - cp), 0.0)
    season = 0.15 * np.sin(2 * np.pi * days / 365.25) + 0.05 * np.cos(4 * np.pi * days / 365.25)
    if freq == "D":
        season = season + 0.1 * np.sin(2 * np.pi * ds.dayofweek.to_numpy() / 7)
    price = 10.0 + np.cumsum(rng.normal(0.0, 0.05, n))
    promo = (rng.random(n) < 0.1).astype(np.float64)
    effect = -0.03 * (price - 10.0) + 0.2 * promo if regressors else 0.0
    if mode == "additive":
        y = level + 100.0 * (season + effect)
    else:
        y = level * (1.0 + season + effect)
    y = y * (1.0 + rng.normal(0.0, noise, n))
    df = pd.DataFrame({"ds": ds, "y": y})
    if regressors:
        df["price"] = price
        df["promo"] = promo
    return df


# name -> (training length, horizon, make_series kwargs, ProphetSpec kwargs)
CASES: dict[str, tuple[int, int, dict, dict]] = {
    "daily_additive": (1000, 28, {"seed": 1}, {"regressors": REGS}),
    "daily_multiplicative": (
        1000,
        28,
        {"seed": 2, "mode": "multiplicative"},
        {"seasonality_mode": "multiplicative", "regressors": REGS},
    ),
    "daily_mult_seasonality_additive_regressors": (
        900,
        28,
        {"seed": 3, "mode": "multiplicative"},
        {"seasonality_mode": "multiplicative", "regressors": REGS, "regressor_mode": "additive"},
    ),
    "weekly_additive": (156, 8, {"seed": 4, "freq": "W-SUN"}, {"regressors": REGS}),
    "weekly_multiplicative": (
        156,
        8,
        {"seed": 5, "freq": "W-SUN", "mode": "multiplicative"},
        {"seasonality_mode": "multiplicative", "regressors": REGS},
    ),
    "short_daily": (60, 28, {"seed": 6}, {"regressors": REGS}),
    "daily_trend_change": (900, 28, {"seed": 7, "trend_change": True}, {"regressors": REGS}),
    "weekly_trend_change": (
        170,
        8,
        {"seed": 8, "freq": "W-SUN", "trend_change": True, "mode": "multiplicative"},
        {"seasonality_mode": "multiplicative", "regressors": REGS},
    ),
    "daily_no_regressors": (800, 28, {"seed": 9, "regressors": False}, {}),
}


def wape(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).sum() / np.abs(np.asarray(b)).sum())


def regressor_values(df: pd.DataFrame, spec: ProphetSpec) -> dict[str, np.ndarray]:
    return {name: df[name].to_numpy() for name in spec.regressors}


@functools.cache
def case(name: str):
    """(spec, train, test, library-fitted Prophet, in-process fit) for one series."""
    n, h, gen, spec_kw = CASES[name]
    df = make_series(n + h, **gen)
    train, test = df.iloc[:n].reset_index(drop=True), df.iloc[n:].reset_index(drop=True)
    spec = ProphetSpec(**spec_kw)
    lib = make_prophet(spec, uncertainty_samples=0)
    lib.fit(train)
    ours = fit_prophet_fast(train, spec)
    return spec, train, test, lib, ours


# --- 1. compact predict == Prophet.predict -------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_compact_from_library_predicts_like_library(name):
    spec, train, test, lib, _ = case(name)
    both = pd.concat([train, test], ignore_index=True)  # history and future dates
    expected = lib.predict(both)["yhat"].to_numpy()
    compact = CompactProphet.from_prophet(lib)
    got = compact.predict(both["ds"].to_numpy(), regressor_values(both, spec))
    scale = float(np.abs(train["y"]).max())
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9 * scale)
    # datetime64[D] input gives the same answer
    got_days = compact.predict(both["ds"].to_numpy().astype("datetime64[D]"), regressor_values(both, spec))
    np.testing.assert_array_equal(got_days, got)


@pytest.mark.parametrize("name", list(CASES))
def test_in_process_params_predict_like_library_with_same_params(name):
    """Our fitted parameters, put into the library model, give our predictions."""
    spec, train, test, lib, ours = case(name)
    both = pd.concat([train, test], ignore_index=True)
    saved = lib.params
    try:
        lib.params = ours.to_prophet_params()
        expected = lib.predict(both)["yhat"].to_numpy()
    finally:
        lib.params = saved
    got = ours.predict(both["ds"].to_numpy(), regressor_values(both, spec))
    scale = float(np.abs(train["y"]).max())
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9 * scale)


# --- 2. in-process fit vs library fit ------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_in_process_fit_matches_library_fit(name):
    spec, train, test, lib, ours = case(name)
    lib_fc = lib.predict(test)["yhat"].to_numpy()
    our_fc = ours.predict(test["ds"].to_numpy(), regressor_values(test, spec))
    inputs = make_prophet(spec).preprocess(train)
    lp_lib = log_posterior(inputs, lib.params)
    lp_ours = log_posterior(inputs, ours.params)
    info = f"log posterior: ours {lp_ours:.6f}, library {lp_lib:.6f} (diff {lp_ours - lp_lib:+.6f})"
    # Same MAP objective: ours is at least as high (the library's L-BFGS may stop a little early).
    assert lp_ours >= lp_lib - 1e-6 * abs(lp_lib) - 1e-6, info
    assert wape(our_fc, lib_fc) < 0.01, info
    truth = test["y"].to_numpy()
    assert wape(our_fc, truth) <= wape(lib_fc, truth) + 0.01, info


def test_lbfgsb_reaches_the_same_optimum():
    """The L-BFGS-B variant of the same objective (kept as a cross-check) agrees."""
    spec, train, test, _, ours = case("daily_trend_change")
    other = _fit(train, spec, method="lbfgsb")
    inputs = make_prophet(spec).preprocess(train)
    lp_newton = log_posterior(inputs, ours.params)
    lp_lbfgsb = log_posterior(inputs, other.params)
    assert lp_newton >= lp_lbfgsb - 1e-6 * abs(lp_lbfgsb)
    regs = regressor_values(test, spec)
    assert wape(other.predict(test["ds"].to_numpy(), regs), ours.predict(test["ds"].to_numpy(), regs)) < 0.01


# --- preprocessing: the numpy replica is Prophet.preprocess --------------------------------


def _assert_same_preparation(history: pd.DataFrame, spec: ProphetSpec) -> None:
    fast = _prepare_numpy(history, spec)
    assert fast is not None
    ref = _prepare_prophet(history, spec)
    for f in dataclasses.fields(fast):
        a, b = getattr(fast, f.name), getattr(ref, f.name)
        if isinstance(a, np.ndarray):
            assert a.shape == b.shape, f.name
            np.testing.assert_array_equal(a, b, err_msg=f.name)
        else:
            assert a == b, f.name


@pytest.mark.parametrize("name", list(CASES))
def test_numpy_preprocessing_equals_prophet_preprocess(name):
    spec, train, _, _, _ = case(name)
    _assert_same_preparation(train, spec)


@pytest.mark.parametrize(
    "spec",
    [
        ProphetSpec(regressors=REGS, yearly_seasonality=4, weekly_seasonality=True, n_changepoints=0),
        ProphetSpec(
            regressors=("price",), daily_seasonality="auto", changepoint_range=1.0, n_changepoints=40
        ),
        ProphetSpec(yearly_seasonality=False, weekly_seasonality=False),
    ],
)
def test_numpy_preprocessing_equals_prophet_preprocess_unsorted_with_gaps(spec):
    df = make_series(400, seed=11)
    df.loc[[3, 50, 51], "y"] = np.nan  # dropped, as Prophet does
    df = pd.concat([df, df.iloc[100:110]])  # duplicate dates
    df = df.sample(frac=1.0, random_state=0)  # unsorted
    _assert_same_preparation(df, spec)


# --- 3. warm start ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["daily_additive", "daily_multiplicative", "weekly_multiplicative"])
def test_warm_start(name):
    n, h, gen, spec_kw = CASES[name]
    spec = ProphetSpec(**spec_kw)
    df = make_series(n + h, **gen)
    history, future = df.iloc[:n], df.iloc[n:]
    step = 28 if h == 28 else h
    first = fit_prophet_fast(history.iloc[:-step], spec)
    warm = fit_prophet_fast(history, spec, init=first.params)
    cold = fit_prophet_fast(history, spec)
    ds, regs = future["ds"].to_numpy(), regressor_values(future, spec)
    assert wape(warm.predict(ds, regs), cold.predict(ds, regs)) < 0.005
    # init entries of the wrong shape are ignored (as Prophet does), not an error
    odd = fit_prophet_fast(
        history, spec, init={"k": 0.1, "m": 0.2, "delta": [0.0], "beta": [], "sigma_obs": 1}
    )
    assert wape(odd.predict(ds, regs), cold.predict(ds, regs)) < 0.005


# --- 4. serialization ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["daily_additive", "weekly_multiplicative", "daily_no_regressors"])
def test_json_round_trip_predicts_identically(name):
    spec, train, test, lib, ours = case(name)
    ds, regs = test["ds"].to_numpy(), regressor_values(test, spec)
    for model in (ours, CompactProphet.from_prophet(lib)):
        payload = json.loads(json.dumps(model.to_dict()))
        back = CompactProphet.from_dict(payload)
        np.testing.assert_array_equal(back.predict(ds, regs), model.predict(ds, regs))
        for key, value in back.params.items():
            np.testing.assert_array_equal(value, model.params[key])


def test_predict_components_add_up():
    spec, _, test, _, ours = case("daily_mult_seasonality_additive_regressors")
    ds, regs = test["ds"].to_numpy(), regressor_values(test, spec)
    comps = ours.predict_components(ds, regs)
    np.testing.assert_allclose(comps["yhat"], ours.predict(ds, regs), rtol=1e-12)
    np.testing.assert_allclose(
        comps["multiplicative_terms"], comps["yearly"] + comps["weekly"], rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(comps["additive_terms"], comps["price"] + comps["promo"], rtol=1e-9, atol=1e-9)


# --- degenerate layouts --------------------------------------------------------------------


def test_no_seasonality_no_regressors_and_constant_series_match_library():
    spec = ProphetSpec(yearly_seasonality=False, weekly_seasonality=False)
    df = make_series(120, seed=12, regressors=False)
    constant = df.assign(y=5.0)
    for history in (df, constant):
        lib = make_prophet(spec, uncertainty_samples=0).fit(history)
        future = pd.DataFrame({"ds": pd.date_range(history["ds"].iloc[-1], periods=15, freq="D")[1:]})
        expected = lib.predict(future)["yhat"].to_numpy()
        np.testing.assert_allclose(
            CompactProphet.from_prophet(lib).predict(future["ds"].to_numpy()), expected, rtol=1e-9
        )
        ours = fit_prophet_fast(history, spec)
        assert ours.beta.shape == (1,)  # Prophet's placeholder column
        assert wape(ours.predict(future["ds"].to_numpy()), expected) < 0.01


# --- 5. errors ----------------------------------------------------------------------------


def test_errors():
    spec = ProphetSpec(regressors=REGS)
    empty = pd.DataFrame({"ds": pd.to_datetime([]), "y": [], "price": [], "promo": []})
    with pytest.raises(ValueError, match="at least 2 non-NaN"):
        fit_prophet_fast(empty, spec)
    one = make_series(3, seed=13)
    one.loc[[0, 1], "y"] = np.nan
    with pytest.raises(ValueError, match="at least 2 non-NaN"):
        fit_prophet_fast(one, spec)
    with pytest.raises(ValueError, match="promo"):
        fit_prophet_fast(make_series(30, seed=14).drop(columns="promo"), spec)
    same_day = make_series(3, seed=15).assign(ds=pd.Timestamp("2020-01-01"))
    with pytest.raises(ValueError, match="2 distinct dates"):
        fit_prophet_fast(same_day, spec)

    spec, _, test, _, ours = case("daily_additive")
    ds = test["ds"].to_numpy()
    with pytest.raises(ValueError, match="promo"):
        ours.predict(ds, {"price": test["price"].to_numpy()})
    with pytest.raises(ValueError, match="price"):
        ours.predict(ds)
    with pytest.raises(ValueError, match="price"):
        ours.predict(ds, {"price": test["price"].to_numpy()[:-1], "promo": test["promo"].to_numpy()})
    with pytest.raises(ValueError, match="seasonality_mode"):
        ProphetSpec(seasonality_mode="both")
    with pytest.raises(ValueError, match="changepoint_prior_scale"):
        ProphetSpec(changepoint_prior_scale=0.0)
