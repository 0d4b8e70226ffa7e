"""auto's pooled selection: a dataset-level choice (a family or an equal-weight mean of up to
three) from every series' backtest, kept per series unless the series' own evidence is
clearly better; backtest forecasts supplied from outside (e.g. by the global model's job)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mm_platform.forecasting.families import load_model
from mm_platform.forecasting.series import (
    TRAINED,
    Backtest,
    TrainSpec,
    add_summaries,
    backtest_summary,
    choose_with_prior,
    combo_weights,
    fit_candidates,
    fold_origins,
    forecast_arrays,
    pooled_choice,
    regularize,
    run_backtest,
    train_series,
)


def _bt(errors: dict[str, float], level: float = 100.0, folds: int = 3) -> Backtest:
    """A hand-made backtest: each family's forecast is off by a constant ``errors[f]``."""
    actual = [np.full(7, level) for _ in range(folds)]
    return Backtest([(0, 7)] * folds, {f: [a + e for a in actual] for f, e in errors.items()}, actual, {}, 1.0)


def _spec(**over) -> TrainSpec:
    base = {
        "family": "auto", "freq": "D", "season_length": 7, "holdout": 28, "min_history": 60,
        "candidates": ("seasonal_naive", "regression", "prophet"), "folds": 3, "fold_length": 28,
        "max_horizon": 28,
    }
    return TrainSpec(**(base | over))


def _history(days: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ds = pd.date_range("2024-01-01", periods=days, freq="D")
    t = np.arange(days)
    y = 50 + 10 * np.sin(2 * np.pi * t / 7) + 0.02 * t + rng.normal(0, 2, days)
    return pd.DataFrame({"ds": ds, "y": y})


def test_combination_weights_expand_the_ensemble_into_its_members():
    ctx = _spec(options={"ensemble": ["prophet", "regression"]}).fit_context
    assert combo_weights("regression+ensemble", ctx) == {"regression": 0.75, "prophet": 0.25}
    assert combo_weights("prophet+global_lgbm+ensemble", ctx) == {
        "prophet": 1 / 3 + 1 / 6, "global_lgbm": 1 / 3, "regression": 1 / 6,
    }


def test_pooled_choice_finds_the_combination_whose_errors_cancel_across_series():
    # On every series a over-forecasts and b under-forecasts by about as much: each alone is
    # worse than seasonal naive's small bias on some series, their mean is best everywhere.
    total: dict = {}
    for shift in (0.0, 1.0, -1.0, 2.0):
        add_summaries(total, backtest_summary(_bt({"a": 10 + shift, "b": -10 + shift, "seasonal_naive": 6.0}), ["a", "b", "seasonal_naive"]))
    assert pooled_choice(total) == ("a", "b")
    assert total["a+b"][2] == 4  # summed over four series
    # Single families only (combine=1): the best single family.
    single: dict = {}
    for shift in (0.0, 1.0):
        add_summaries(single, backtest_summary(_bt({"a": 10 + shift, "b": -9.0, "seasonal_naive": 12.0}), ["a", "b", "seasonal_naive"], combine=1))
    assert pooled_choice(single) == ("b",)


def test_pooled_choice_ignores_a_family_that_failed_on_many_series():
    total: dict = {}
    add_summaries(total, backtest_summary(_bt({"a": 5.0, "rare": 0.0}), ["a", "rare"]))
    for _ in range(3):
        add_summaries(total, backtest_summary(_bt({"a": 5.0}), ["a", "rare"]))
    assert pooled_choice(total) == ("a",)  # "rare" is perfect but backtested on 1 series of 4
    assert pooled_choice({}) == ()


def test_a_series_keeps_the_dataset_choice_unless_its_own_evidence_is_strong():
    cands = ("seasonal_naive", "regression", "prophet")
    # The prior (mean of regression and prophet) scores 1/100; prophet alone 3/100: kept.
    bt = _bt({"seasonal_naive": 20.0, "regression": -1.0, "prophet": 3.0})
    champion, reason = choose_with_prior(bt, cands, ("regression", "prophet"), 0.1, "wape")
    assert champion == "regression+prophet" and reason.startswith("dataset choice")
    # A family 50% better than the prior on this series: it leaves the prior with margin 0.1 ...
    bt = _bt({"seasonal_naive": 20.0, "regression": 1.0, "prophet": 3.0})
    champion, reason = choose_with_prior(bt, cands, ("regression", "prophet"), 0.1, "wape")
    assert champion == "regression" and "by more than 10%" in reason
    # ... but not with margin 1 (never leave the dataset choice).
    assert choose_with_prior(bt, cands, ("regression", "prophet"), 1.0, "wape")[0] == "regression+prophet"
    # A prior member that failed on this series: no prior here (the caller falls back).
    assert choose_with_prior(_bt({"regression": 1.0}), cands, ("regression", "prophet"), 0.1, "wape") is None


def test_external_backtest_forecasts_replace_fitting_that_family():
    spec = _spec(candidates=("seasonal_naive", "regression"))
    train = regularize(_history(), "D", ())
    origins = fold_origins(train, spec, spec.folds)
    assert len(origins) == 3 and origins == sorted(origins, reverse=True)
    y = train["y"].to_numpy()
    perfect = {}
    for (start, end), origin in zip(run_backtest(train, spec, ("seasonal_naive",), 3).folds, origins, strict=True):
        perfect[origin] = y[start:end]
    bt = run_backtest(train, spec, ("seasonal_naive", "regression", "global_lgbm"), 3, external={"global_lgbm": perfect})
    assert bt.pooled("global_lgbm", "wape") == 0.0 and bt.pooled("regression", "wape") > 0
    # A fold the outside job has no forecast for: that family is not a candidate of the series.
    partial = dict(list(perfect.items())[:2])
    bt = run_backtest(train, spec, ("seasonal_naive", "global_lgbm"), 3, external={"global_lgbm": partial})
    assert "global_lgbm" not in bt.forecasts and "no external backtest forecast" in bt.errors["global_lgbm"]


def test_a_combination_champion_is_one_servable_ensemble_artifact():
    spec = _spec(prior=("regression", "prophet"), prior_margin=1.0)
    h = _history()
    r = train_series(h, spec)
    assert r.status == TRAINED and r.champion == "regression+prophet", r.reason
    art = json.loads(r.model_json())
    assert art["family"] == "ensemble" and art["selection"]["dataset_choice"] == "regression+prophet"
    assert art["selection"]["combination"]["weights"] == {"regression": 0.5, "prophet": 0.5}
    assert all("+" not in k for k in r.tags())  # registry tag keys stay family names
    fitted = load_model(art)
    assert sorted(m.family for m in fitted.members) == ["prophet", "regression"]
    _, yhat, lo, hi = forecast_arrays(art, 28)
    assert yhat.shape == (28,) and (lo <= yhat).all() and (hi >= yhat).all()
    # The combination's holdout forecast is the mean of its members'.
    fits = fit_candidates(regularize(h, "D", ()), spec, every=True)
    np.testing.assert_allclose(
        fits.holdout_forecasts["regression+prophet"],
        (fits.holdout_forecasts["regression"] + fits.holdout_forecasts["prophet"]) / 2,
    )
    # Retraining with the previous combination's artifact warm-starts and gives the same choice.
    again = train_series(h, spec, previous=art)
    assert again.status == TRAINED and again.champion == "regression+prophet"


def test_a_series_too_short_to_backtest_takes_the_dataset_choice():
    spec = _spec(prior=("regression", "seasonal_naive"), min_history=30)
    r = train_series(_history(days=70), spec)
    assert r.status == TRAINED and r.champion == "regression+seasonal_naive"
    assert "too short" in r.selection_reason


def test_evaluate_reports_the_dataset_choice_and_auto_follows_it(tmp_path, monkeypatch):
    import argparse
    from pathlib import Path

    import yaml

    from mm_platform.config import load_config
    from mm_platform.datagen import write_sales
    from mm_platform.evaluate import run

    monkeypatch.setenv("MM_HOME", str(tmp_path))
    packaged = Path(__file__).parents[1] / "mm_platform" / "configs" / "price_weekly.yaml"
    raw = yaml.safe_load(packaged.read_text())
    raw["algorithm"]["auto"]["folds"] = 2
    path = tmp_path / "pw.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    write_sales(cfg.source.url, cfg.source.table, 2, 3, 110, seed=8, kind="price_weekly")
    args = argparse.Namespace(
        config=str(path), families="seasonal_naive,regression,prophet", series=6, folds=1, workers=1,
        cost_sample=0, cost_families="prophet", dump=None, json=True, no_global=True, global_by=None,
        prior_margin=1.0, combine=2,
    )
    report = run(args)
    choice = report["pooled_choice"]["cut_0"]["choice"]
    assert choice and len(choice.split("+")) <= 2 and report["selection"]["pooled"]
    # Never leaving the dataset choice: every backtested series' champion is that choice.
    assert set(report["methods"]["auto"]["mix"]) == {choice}
    args.no_pooled = True
    per_series = run(args)
    assert "pooled_choice" not in per_series and all("+" not in f for f in per_series["methods"]["auto"]["mix"])


def test_prior_only_backtests_the_choice_alone_and_trains_the_same_model():
    """A series outside the pooled sample (``prior_only``, margin 1: it can never leave the
    dataset choice) backtests only the choice's families, and gets the same champion, holdout
    scores, intervals and forecasts as with every candidate backtested."""
    h = _history(seed=3)
    for prior in (("prophet",), ("regression", "ensemble"), ("seasonal_naive", "prophet")):
        opts = {"ensemble": ["prophet", "regression"]}
        full = train_series(h, _spec(prior=prior, options=opts))
        only = train_series(h, _spec(prior=prior, options=opts, prior_only=True))
        assert full.status == only.status == TRAINED and full.champion == only.champion
        assert {k: v for k, v in only.metrics.items() if not k.startswith("backtest")} == pytest.approx(
            {k: v for k, v in full.metrics.items() if not k.startswith("backtest")}, nan_ok=True)
        for a, b in zip(forecast_arrays(full.model, 28), forecast_arrays(only.model, 28), strict=True):
            np.testing.assert_allclose(np.asarray(a, dtype=float) if a.dtype.kind == "f" else a.astype("int64"),
                                       np.asarray(b, dtype=float) if b.dtype.kind == "f" else b.astype("int64"))
        tested = set(only.model["selection"]["backtest"])
        assert "seasonal_naive" not in tested or "seasonal_naive" in prior
        assert set(full.model["selection"]["backtest"]) >= {"seasonal_naive", "regression", "prophet"}
