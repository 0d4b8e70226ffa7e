"""The cost cuts of ``auto`` with the global candidate (issue #21): each one gives the same
models as the code it replaced, or leaves out a fit only where the docs measured it harmless."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mm_platform.forecasting import global_lgbm as G
from mm_platform.forecasting.families import TSB, FitContext
from mm_platform.forecasting.series import TrainSpec, regularize


def _series(n_series: int, days: int, seed: int = 5):
    """``n_series`` generated daily series of ``days`` days (the generator's newer items, which
    start later, are left out)."""
    from mm_platform.datagen import generate_sales

    sales = generate_sales(1, 3 * n_series, days, seed=seed).rename(columns={"date": "ds", "units": "y"})
    sales["ds"] = pd.to_datetime(sales["ds"])
    regs = ("price", "promo", "holiday")
    out = []
    for item, g in sales.groupby("item"):
        if len(g) == days and len(out) < n_series:
            h = g[["ds", "y", *regs]].astype({"promo": "float64", "holiday": "float64"})
            out.append(({"item": str(item)}, regularize(h, "D", regs)))
    assert len(out) == n_series
    return out, regs


def test_fitting_several_origins_at_once_gives_the_models_of_one_fit_per_origin():
    series, regs = _series(4, 300)
    spec = G.FeatureSpec.default("D", regs, ("item",), rounds=15)
    last = max(h["ds"].iloc[-1] for _, h in series)
    origins = [(last - pd.Timedelta(days=d)).date() for d in (0, 28, 120)] + [pd.Timestamp("2000-01-01").date()]
    many = G.fit_global_origins(series, spec, origins)
    for origin, model in zip(origins[:3], many[:3], strict=True):
        one = G.fit_global(series, spec, origin)
        assert model.to_json() == one.to_json()
        assert model.origin == str(origin) and model.n_rows == one.n_rows
    assert many[3] is None  # no rows up to that date
    with pytest.raises(ValueError, match="no training rows"):
        G.fit_global(series, spec, origins[3])
    # Each origin's rows are its own: a later origin has more of them, never fewer.
    assert many[0].n_rows > many[1].n_rows > many[2].n_rows


def test_training_rows_end_at_the_origin():
    series, regs = _series(1, 200)
    kv, h = series[0]
    spec = G.FeatureSpec.default("D", regs, ("item",), categories={"item": ["1"]})
    origin = h["ds"].iloc[149]
    X, z = G.training_rows(h, kv, spec, origin.date())
    X_cut, z_cut = G.training_rows(h.iloc[:150], kv, spec)
    np.testing.assert_array_equal(X, X_cut)
    np.testing.assert_array_equal(z, z_cut)


def _spec(freq: str, holdout: int, family: str = "auto", regressors=()) -> TrainSpec:
    return TrainSpec(family, freq, 7 if freq == "D" else 52, holdout, 30, regressors, fold_length=holdout, folds=6)


def test_the_final_refit_is_left_out_only_where_the_holdout_is_a_small_share_of_the_rows():
    from mm_platform.spark.global_train import STALE_SHARE, origin_offsets

    daily = _spec("D", 28)
    assert origin_offsets(daily) == [0, 28, 28 + 6 * 28]  # rows unknown: every origin
    assert origin_offsets(daily, 730) == [28, 28 + 6 * 28]  # 28 of 730 rows
    assert origin_offsets(daily, int(28 / STALE_SHARE) - 1) == [0, 28, 28 + 6 * 28]
    weekly = _spec("W", 13)
    assert origin_offsets(weekly, 107) == [0, 13, 13 + 6 * 13]  # 13 of 107 weeks: refitted
    assert origin_offsets(_spec("D", 28, "global_lgbm"), 730) == [28]  # no backtest folds


def test_a_group_task_fits_each_origin_once_and_marks_the_newest_model(tmp_path):
    """Stage 1's task on a group of long daily series: the holdout and backtest models only,
    the same as fitting them one by one; a series with a gap takes regularize's path."""
    from mm_platform.spark.global_train import _GROUP_COL, _fit_group_fn, origin_offsets

    series, regs = _series(3, 800)
    rows = []
    for i, (kv, h) in enumerate(series):
        part = h.assign(series_id=f"s{i}", item=kv["item"], **{_GROUP_COL: "g"})
        if i == 1:
            part = part.drop(part.index[100:103])  # a gap: regularized like per-series training
        rows.append(part)
    pdf = pd.concat(rows, ignore_index=True)
    spec = _spec("D", 28, regressors=regs)
    out = _fit_group_fn(spec, ["item"], {"item": sorted(kv["item"] for kv, _ in series)})(pdf)
    assert out["error"].isna().all(), out["error"].tolist()
    assert sorted(out["offset"]) == sorted(origin_offsets(spec, 730)) == [28, 196]
    fspec = G.FeatureSpec.default("D", regs, ("item",), categories={"item": sorted(kv["item"] for kv, _ in series)})
    gapped = [(kv, regularize(h.drop(h.index[100:103]), "D", regs) if i == 1 else h) for i, (kv, h) in enumerate(series)]
    last = max(h["ds"].iloc[-1] for _, h in series)
    for r in out.to_dict("records"):
        expected = G.fit_global(gapped, fspec, (last - pd.Timedelta(days=int(r["offset"]))).date())
        assert r["model"] == expected.to_json()


def test_tsb_gives_the_fit_of_its_grid_search():
    """TSB's fit smooths each constant once; the choice and the level are those of running
    every pair of constants (``TSB._run``)."""
    rng = np.random.default_rng(3)
    ctx = FitContext("D", 7, (), {}, 56, None)
    for case in range(30):
        n = int(rng.integers(20, 900))
        y = rng.poisson(rng.uniform(0.3, 20), n) * (rng.uniform(size=n) < rng.uniform(0.05, 1))
        y = y.astype(np.float64)
        if case % 6 == 0:
            y[:] = 0.0
        h = pd.DataFrame({"ds": pd.date_range("2024-01-01", periods=n), "y": y})
        fitted = TSB().fit(h, ctx)
        yy = np.maximum(np.nan_to_num(y, nan=0.0), 0.0)[-730:]
        best = None
        for a_d in TSB.grid:
            for a_p in TSB.grid:
                level, sse = TSB._run(yy, a_d, a_p)
                if best is None or sse < best[0]:
                    best = (sse, level, float(a_d), float(a_p))
        assert (fitted.level, fitted.params["alpha_d"], fitted.params["alpha_p"]) == best[1:]
