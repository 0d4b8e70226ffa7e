"""Price-driven weekly data (``mm-platform generate --kind price_weekly``), the regression
family's constant-elasticity mode with pooled elasticities, the global LightGBM family, and
``mm-platform evaluate``'s least-squares baseline and auto mix (issue #21, pure parts)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mm_platform.config import ConfigError, load_config, parse_config
from mm_platform.datagen import generate_dataset, iter_dataset_chunks, write_sales
from mm_platform.forecasting.families import (
    FitContext,
    get_family,
    load_model,
    pooled_elasticities,
    series_elasticity,
)
from mm_platform.forecasting.series import TRAINED, TrainSpec, regularize, train_series

PACKAGED = Path(__file__).resolve().parents[1] / "mm_platform" / "configs" / "price_weekly.yaml"


# --- the generator ---------------------------------------------------------------------------


def test_price_weekly_data_is_deterministic_and_price_driven():
    a = generate_dataset("price_weekly", 2, 6, 120, seed=5, future=4)
    b = generate_dataset("price_weekly", 2, 6, 120, seed=5, future=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(generate_dataset("price_weekly", 2, 6, 120, seed=6, future=4))
    assert list(a.columns) == ["week", "region", "product", "revenue", "units", "price", "advertising"]
    assert set(pd.DatetimeIndex(a["week"]).dayofweek) == {0}  # weekly, on Mondays
    assert a.groupby(["region", "product"]).ngroups == 12
    hist = a[a["revenue"].notna()]
    np.testing.assert_allclose(hist["revenue"], np.round(hist["price"] * hist["units"], 2))
    # The last 4 weeks are planned: prices and advertising known, no sales yet.
    future = a[a["week"] > hist["week"].max()]
    assert future["week"].nunique() == 4 and future["revenue"].isna().all() and (future["price"] > 0).all()
    assert (a["price"] > 0).all() and (a["advertising"] >= 0).all() and (a["advertising"] > 0).any()
    # Real-sales noise: occasional stock-outs (zeros), but rare.
    assert 0 < (hist["units"] == 0).mean() < 0.05


def test_price_weekly_demand_follows_a_realistic_elasticity():
    data = generate_dataset("price_weekly", 3, 10, 156, seed=2)
    slopes = []
    for _, g in data[data["units"] > 0].groupby(["region", "product"]):
        if len(g) > 100:
            slopes.append(np.polyfit(np.log(g["price"]), np.log(g["units"]), 1)[0])
    slopes = np.asarray(slopes)
    # Drawn in [-3, -0.5] per product, varied by region; confounded a little by seasonality
    # and advertising in this crude per-series slope.
    assert np.median(slopes) < -0.5 and (slopes < 0).mean() > 0.9 and slopes.min() > -4.5


def test_generate_writes_the_price_weekly_table_the_packaged_config_reads(tmp_path, monkeypatch):
    from mm_platform.cli import main

    monkeypatch.setenv("MM_HOME", str(tmp_path))
    assert main(["generate", "--kind", "price_weekly", "--stores", "2", "--items", "3", "--days", "60", "--seed", "4"]) == 0
    cfg = load_config(PACKAGED)
    assert cfg.frequency == "weekly" and cfg.columns.regressors == ["price", "advertising"]
    import sqlalchemy as sa

    engine = sa.create_engine(cfg.source.url)
    with engine.connect() as conn:
        frame = pd.read_sql(sa.text(f"SELECT * FROM {cfg.source.table}"), conn)
    engine.dispose()
    assert {cfg.columns.date, cfg.columns.target, *cfg.columns.keys, *cfg.columns.regressors} <= set(frame.columns)
    expected = pd.concat(list(iter_dataset_chunks("price_weekly", 2, 3, 60, seed=4)), ignore_index=True)
    assert len(frame) == len(expected)
    # The retail kind is still the default, with its own columns.
    n = write_sales(f"sqlite:///{tmp_path}/r.db", "sales", 1, 2, 30, seed=1)
    assert n == 60


def test_weekly_multikey_kind_matches_its_packaged_config():
    cfg = load_config(PACKAGED.parent / "weekly_multikey.yaml")
    data = generate_dataset("weekly_multikey", 2, 3, 80, seed=1)
    assert {cfg.columns.date, cfg.columns.target, *cfg.columns.keys, *cfg.columns.regressors} <= set(data.columns)
    assert data.groupby(cfg.columns.keys).ngroups == 12


# --- price elasticity in the regression family ----------------------------------------------------


def _demand_series(n=150, elasticity=-1.8, seed=0, price_sd=0.15, revenue=True, noise=0.1):
    rng = np.random.default_rng(seed)
    ds = pd.date_range("2023-01-02", periods=n, freq="7D")
    price = 10 * np.exp(rng.normal(0, price_sd, n))
    q = 200 * price ** elasticity / 10 ** elasticity * np.exp(rng.normal(0, noise, n))
    y = q * price if revenue else q
    return pd.DataFrame({"ds": ds, "y": y, "price": price, "advertising": rng.uniform(0, 1, n)})


OPTS = {"price_column": "price", "target_kind": "revenue"}


def test_regression_price_elasticity_recovers_it_and_forecasts_revenue_as_price_times_quantity():
    h = _demand_series()
    ctx = FitContext("W", 52, ("price", "advertising"), options={"regression": OPTS})
    model = get_family("regression").fit(h, ctx)
    assert model.elasticity == pytest.approx(-1.8, abs=0.1)
    ds = pd.date_range(h["ds"].iloc[-1] + pd.Timedelta(days=7), periods=4, freq="7D").to_numpy()
    base = {"price": np.full(4, 10.0), "advertising": np.full(4, 0.5)}
    doubled = base | {"price": np.full(4, 20.0)}
    ratio = model.predict(ds, doubled) / model.predict(ds, base)
    np.testing.assert_allclose(ratio, 2.0 ** (1 + model.elasticity))  # revenue = p * q(p)
    # The compact form carries the mode; a plain regression's form is unchanged.
    payload = json.loads(json.dumps(model.to_dict()))
    assert payload["price"] == "price" and payload["revenue"] is True
    again = load_model({"family": "regression", "model": payload})
    np.testing.assert_allclose(again.predict(ds, base), model.predict(ds, base))
    plain = get_family("regression").fit(h, FitContext("W", 52, ("price", "advertising")))
    assert "price" not in plain.to_dict()


def test_elasticity_mode_beats_the_plain_regression_on_price_driven_revenue():
    errs = {"plain": 0.0, "elasticity": 0.0}
    total = 0.0
    for seed in range(6):
        h = _demand_series(n=130, elasticity=-2.5, seed=seed, price_sd=0.3)
        train, test = h.iloc[:-13], h.iloc[-13:]
        regs = {r: test[r].to_numpy() for r in ("price", "advertising")}
        for name, options in (("plain", None), ("elasticity", {"regression": OPTS})):
            m = get_family("regression").fit(train, FitContext("W", 52, ("price", "advertising"), options=options))
            errs[name] += np.abs(m.predict(test["ds"].to_numpy(), regs) - test["y"]).sum()
        total += test["y"].sum()
    assert errs["elasticity"] < errs["plain"]


def test_pooled_prior_pulls_a_short_series_toward_its_group():
    group = [series_elasticity(_demand_series(elasticity=-2.0, seed=s), FitContext("W", 52, ("price",), options={"regression": OPTS})) for s in range(5)]
    priors = pooled_elasticities({"g": group})
    e0, tau2 = priors["g"]
    assert e0 == pytest.approx(-2.0, abs=0.1) and tau2 >= 0.01
    # A short series whose price hardly moves: alone its estimate is noise; with the prior it
    # is near the group's.
    pooled_opts = OPTS | {"elasticity_prior": e0, "elasticity_prior_var": tau2}
    alone_err, pooled_err = [], []
    for seed in range(10, 20):
        short = _demand_series(n=20, elasticity=-2.0, seed=seed, price_sd=0.02, noise=0.2)
        alone = get_family("regression").fit(short, FitContext("W", 52, ("price",), options={"regression": OPTS}))
        pooled = get_family("regression").fit(short, FitContext("W", 52, ("price",), options={"regression": pooled_opts}))
        alone_err.append(abs(alone.elasticity + 2.0))
        pooled_err.append(abs(pooled.elasticity + 2.0))
    assert np.mean(pooled_err) < 0.3 < np.mean(alone_err)


def test_intermittent_series_falls_back_to_the_plain_regression():
    h = _demand_series()
    h.loc[h.index % 2 == 0, "y"] = 0.0  # half the weeks without sales
    model = get_family("regression").fit(h, FitContext("W", 52, ("price",), options={"regression": OPTS}))
    assert model.price == "" and "price" not in model.to_dict()


def test_regression_options_are_validated():
    raw = yaml.safe_load(PACKAGED.read_text())
    cfg = parse_config(raw)
    assert cfg.algorithm.regression.pool_by == "product"
    from mm_platform.spark.train import train_spec

    assert train_spec(cfg).options["regression"] == {"price_column": "price", "target_kind": "revenue", "pool_by": "product"}
    for bad, field in (
        ({"price_column": "cost"}, "price_column"),
        ({"price_column": "price", "pool_by": "store"}, "pool_by"),
        ({"target_kind": "revenue"}, "price_column"),
        ({"price_column": "price", "elasticity": 1}, "elasticity"),
    ):
        raw["algorithm"]["regression"] = bad
        with pytest.raises(ConfigError, match=field):
            parse_config(raw)


# --- the global family ---------------------------------------------------------------------------


def _keyed_weekly(regions=2, products=4, weeks=120, seed=3):
    data = generate_dataset("price_weekly", regions, products, weeks, seed=seed)
    out = []
    for (r, p), g in data.groupby(["region", "product"]):
        h = g.rename(columns={"week": "ds", "revenue": "y"})[["ds", "y", "price", "advertising"]]
        h["ds"] = pd.to_datetime(h["ds"])
        out.append(({"region": r, "product": p}, regularize(h, "W", ("price", "advertising"))))
    return out


def test_global_model_is_shared_by_reference_and_forecasts_per_series():
    from mm_platform.forecasting import global_lgbm as G

    series = _keyed_weekly()
    spec = G.FeatureSpec.default("W", ("price", "advertising"), ("region", "product"), rounds=60)
    origin = series[0][1]["ds"].iloc[-14]
    shared = G.fit_global(series, spec, origin)
    assert shared.n_series == len(series) and shared.spec.categories["product"] == ["P001", "P002", "P003", "P004"]
    text = shared.to_json()
    sha = G.register_shared(shared)
    err = act = 0.0
    for kv, h in series:
        train, test = h[h["ds"] <= origin], h[h["ds"] > origin].iloc[:13]
        if len(train) < 60:
            continue
        ctx = FitContext("W", 52, ("price", "advertising"), options={"global_lgbm": {"models": {str(origin.date()): sha}, "keys": kv}})
        m = get_family("global_lgbm").fit(train, ctx)
        regs = {r: test[r].to_numpy() for r in ("price", "advertising")}
        f = m.predict(test["ds"].to_numpy(), regs)
        # The per-series form is small and refers to the shared model by sha256.
        payload = json.loads(json.dumps(m.to_dict()))
        assert payload["shared_sha256"] == sha and len(json.dumps(payload)) < 5000
        np.testing.assert_allclose(load_model({"family": "global_lgbm", "model": payload}).predict(test["ds"].to_numpy(), regs), f)
        # A shorter horizon: the same path (recursive: step h depends on steps before it only).
        np.testing.assert_allclose(m.predict(test["ds"].to_numpy()[:5], {r: v[:5] for r, v in regs.items()}), f[:5])
        ok = np.isfinite(test["y"].to_numpy())
        err += np.abs(f - test["y"].to_numpy())[ok].sum()
        act += test["y"].to_numpy()[ok].sum()
    assert err / act < 0.4
    # Another process resolves the shared model through a resolver, checked against its sha256.
    G.forget_shared([sha])
    G.set_resolver(lambda s, uri: text.replace('"n_series":', '"n_series": ') if s == sha else "")
    try:
        with pytest.raises(ValueError, match="does not match its sha256"):
            G.resolve_shared(sha)
        G.set_resolver(lambda s, uri: text)
        assert G.resolve_shared(sha).booster_text == shared.booster_text
    finally:
        G.set_resolver(None)
        G.forget_shared([sha])
    with pytest.raises(ValueError, match="no shared global model"):
        opts = {"global_lgbm": {"models": {}, "keys": {}}}
        get_family("global_lgbm").fit(series[0][1], FitContext("W", 52, ("price", "advertising"), options=opts))


def test_auto_without_a_shared_model_for_an_origin_drops_the_global_candidate():
    h = _keyed_weekly(1, 1)[0][1]
    spec = TrainSpec("auto", "W", 52, 13, 52, ("price", "advertising"), candidates=("seasonal_naive", "regression", "global_lgbm"),
                     folds=2, fold_length=13, fallback="regression", options={"global_lgbm": {"models": {}, "keys": {}}})
    r = train_series(h, spec)
    assert r.status == TRAINED and r.champion != "global_lgbm"
    assert "global_lgbm" in json.loads(r.model_json())["selection"]["failed"]


# --- the accuracy report ---------------------------------------------------------------------------


def test_evaluate_reports_global_least_squares_and_auto_mix(tmp_path, monkeypatch):
    from mm_platform.evaluate import run

    monkeypatch.setenv("MM_HOME", str(tmp_path))
    raw = yaml.safe_load(PACKAGED.read_text())
    raw["algorithm"]["auto"]["folds"] = 2
    path = tmp_path / "pw.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    write_sales(cfg.source.url, cfg.source.table, 2, 3, 110, seed=8, kind="price_weekly")
    args = argparse.Namespace(
        config=str(path), families=None, series=6, folds=1, workers=2, cost_sample=0, cost_families="prophet",
        dump=None, json=True, no_global=False, global_by=None,
    )
    report = run(args)
    methods = report["methods"]
    assert {"auto", "auto_local", "global_lgbm", "least_squares", "regression"} <= set(methods)
    assert methods["global_lgbm"]["series"] == methods["auto"]["series"] == report["series_evaluated"] > 0
    assert methods["least_squares"]["interval_coverage"] is None and methods["least_squares"]["wape"] > 0
    mix = methods["auto"]["mix_share"]
    assert sum(mix.values()) == pytest.approx(1.0, abs=1e-3) and "global_lgbm" not in methods["auto_local"]["mix"]
    assert report["global"]["models_fitted"] == report["global"]["origins"] >= 4  # 2 folds, holdout, refit
    assert report["elasticity_priors"]["pool_by"] == "product"
    assert {"least_squares", "global_lgbm", "auto_local"} <= set(report["auto_vs"])
