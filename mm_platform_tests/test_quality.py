"""Forecast quality: model selection picks the known-best family, regressors pay, and a
weekly multi-key revenue dataset runs end to end through the same pipeline and YAML."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml

from mm_platform.config import load_config
from mm_platform.forecasting.series import TRAINED, TrainSpec, forecast_arrays, train_series

CANDIDATES = ("seasonal_naive", "croston", "tsb", "regression", "ets", "prophet", "ensemble")


def auto_spec(**over) -> TrainSpec:
    base = {
        "family": "auto", "freq": "D", "season_length": 7, "holdout": 28, "min_history": 90,
        "candidates": CANDIDATES, "folds": 3, "fold_length": 28, "max_horizon": 28,
    }
    return TrainSpec(**(base | over))


def test_weekly_seasonal_random_walk_level_picks_seasonal_naive_or_ets():
    rng = np.random.default_rng(3)
    n = 300
    pattern = np.array([0.0, 2.0, 4.0, 3.0, 1.0, 9.0, 6.0])
    level = 60 + np.cumsum(rng.normal(0, 1.0, n))
    y = level + pattern[np.arange(n) % 7] + rng.normal(0, 0.3, n)
    h = pd.DataFrame({"ds": pd.date_range("2024-01-01", periods=n), "y": y})
    r = train_series(h, auto_spec())
    assert r.status == TRAINED, r.reason
    assert r.champion in ("seasonal_naive", "ets"), (r.champion, r.selection_reason)
    # The registry tags record the champion and every candidate's backtest metrics.
    tags = r.tags()
    assert tags["champion"] == r.champion and tags["selection_reason"]
    assert {f"backtest.{f}.wape" for f in CANDIDATES} <= set(tags)
    artifact = json.loads(r.model_json())
    assert artifact["family"] == r.champion and artifact["selection"]["champion"] == r.champion
    assert set(artifact["selection"]["backtest"]) == set(CANDIDATES)


def test_intermittent_series_picks_croston_or_tsb():
    rng = np.random.default_rng(5)
    n = 400
    y = np.where(rng.random(n) < 0.12, rng.poisson(4, n) + 1, 0).astype(float)
    h = pd.DataFrame({"ds": pd.date_range("2024-01-01", periods=n), "y": y})
    # Regression, prophet, the ensemble and croston are all within 2% of each other here. With
    # no default family among the near-ties, the cheapest of them wins: an intermittent method.
    r = train_series(h, auto_spec(metric="rmse", fallback="seasonal_naive"))
    assert r.status == TRAINED, r.reason
    assert r.champion in ("croston", "tsb"), (r.champion, r.selection_reason)
    _, yhat, lo, hi = forecast_arrays(json.loads(r.model_json()), 28)
    assert 0.3 < yhat.mean() < 1.3 and (hi > yhat).all()  # the demand rate is 0.12 * 5 = 0.6
    # With the default (the ensemble) kept on near-ties, it wins, and forecasts the same rate.
    r = train_series(h, auto_spec(metric="rmse"))
    assert r.champion == "ensemble" and r.selection_reason.startswith("default family"), r.selection_reason
    _, yhat, lo, hi = forecast_arrays(json.loads(r.model_json()), 28)
    assert 0.3 < yhat.mean() < 1.3 and (hi > yhat).all()


def price_driven(n=500, seed=11):
    rng = np.random.default_rng(seed)
    # Price changes every few days; demand has constant elasticity -2 and no seasonality.
    price = np.repeat(rng.choice([1.5, 2.0, 2.5, 3.0, 4.0], size=n // 5 + 1), 5)[:n]
    y = rng.poisson(40 * (price / 2.5) ** -2.0).astype(float)
    return pd.DataFrame({"ds": pd.date_range("2024-01-01", periods=n), "y": y, "price": price})


def test_regressors_pay_price_driven_series_champion_uses_price():
    h = price_driven()
    r = train_series(h, auto_spec(regressors=("price",)))
    assert r.status == TRAINED, r.reason
    assert r.champion in ("regression", "prophet", "arima", "ensemble"), (r.champion, r.selection_reason)
    # The same family without the regressor does much worse on the same holdout.
    blind = train_series(h, TrainSpec(r.champion, "D", 7, 28, 90, (), max_horizon=28))
    assert r.metrics["wape"] < 0.7 * blind.metrics["wape"], (r.metrics["wape"], blind.metrics["wape"])
    assert r.metrics["wape"] < r.metrics["naive_wape"]
    # Future prices move the forecast the right way.
    artifact = json.loads(r.model_json())
    _, cheap, _, _ = forecast_arrays(artifact, 7, {"price": np.full(7, 1.5)})
    _, dear, _, _ = forecast_arrays(artifact, 7, {"price": np.full(7, 4.0)})
    assert cheap.mean() > 2 * dear.mean()


def test_short_series_fall_back_and_are_still_calibrated():
    h = price_driven(n=100)
    r = train_series(h, auto_spec(regressors=("price",)))
    assert r.status == TRAINED and r.champion == "ensemble" and "too short" in r.selection_reason
    assert json.loads(r.model_json())["interval"]["residuals"] == 28  # the holdout


def _backtest(errors: dict[str, float], level: float = 100.0):
    """A hand-made 3-fold backtest: each family's forecast is off by a constant ``errors[f]``."""
    from mm_platform.forecasting.series import Backtest

    actual = [np.full(28, level)] * 3
    forecasts = {f: [a + e for a in actual] for f, e in errors.items()}
    return Backtest([(0, 28)] * 3, forecasts, actual, {}, 1.0)


def test_choose_keeps_the_default_on_near_ties_and_switches_when_another_is_clearly_better():
    from mm_platform.forecasting.series import choose

    cands = ("seasonal_naive", "regression", "prophet", "ensemble")
    # prophet is best, the ensemble within 2% of it: the default (ensemble) is kept.
    bt = _backtest({"seasonal_naive": 30.0, "regression": 12.0, "prophet": 10.0, "ensemble": 10.1})
    champion, reason = choose(bt, cands, "wape", 0.02, prefer="ensemble")
    assert champion == "ensemble" and reason.startswith("default family") and "prophet" in reason
    # Without a default, the cheapest of the near-ties wins (the old rule).
    assert choose(bt, cands, "wape", 0.02)[0] == "prophet"
    # Clearly better than the default (by more than the tolerance): the better family wins.
    bt = _backtest({"seasonal_naive": 30.0, "regression": 9.0, "prophet": 10.0, "ensemble": 10.1})
    champion, reason = choose(bt, cands, "wape", 0.02, prefer="ensemble")
    assert champion == "regression" and reason.startswith("lowest backtest wape 0.09")
    # The default is not among the near-ties: the cheapest of them wins.
    bt = _backtest({"seasonal_naive": 30.0, "regression": 10.1, "prophet": 10.0, "ensemble": 14.0})
    assert choose(bt, cands, "wape", 0.02, prefer="ensemble")[0] == "regression"


def _signal(ds) -> np.ndarray:
    days = np.asarray(ds, dtype="datetime64[D]").astype(np.int64)
    return 50.0 + 10.0 * np.sin(2 * np.pi * days / 7.0) + 0.02 * (days % 1000)


class _BiasedOracle:
    """A test family that knows the signal but is off by a factor: ``hi`` over-, ``lo``
    under-forecasts by 10%, so their equal-weight combination is right and beats both."""

    def __init__(self, name: str, factor: float):
        self.name, self.factor = name, factor

    def fit(self, history, ctx, init=None):
        return _OracleModel(self.name, self.factor)

    def load(self, payload):
        return _OracleModel(self.name, float(payload["factor"]))


class _OracleModel:
    def __init__(self, family: str, factor: float):
        self.family, self.factor = family, factor

    def predict(self, ds, regressors=None):
        return self.factor * _signal(ds)

    def to_dict(self):
        return {"factor": self.factor}

    @property
    def warm_start(self):
        return None


def test_auto_picks_the_combination_when_it_beats_its_members(monkeypatch):
    from mm_platform.forecasting import families

    monkeypatch.setitem(families.FAMILIES, "hi", _BiasedOracle("hi", 1.1))
    monkeypatch.setitem(families.FAMILIES, "lo", _BiasedOracle("lo", 0.9))
    rng = np.random.default_rng(4)
    ds = pd.date_range("2024-01-01", periods=400)
    h = pd.DataFrame({"ds": ds, "y": _signal(ds.to_numpy()) + rng.normal(0, 1.0, len(ds))})
    spec = auto_spec(
        candidates=("seasonal_naive", "hi", "lo", "ensemble"), fallback="hi", options={"ensemble": ["hi", "lo"]}
    )
    r = train_series(h, spec)
    assert r.status == TRAINED, r.reason
    assert r.champion == "ensemble" and r.selection_reason.startswith("lowest backtest"), r.selection_reason
    assert r.metrics["backtest.folds"] == 3
    assert r.metrics["backtest.ensemble.wape"] < 0.5 * min(r.metrics["backtest.hi.wape"], r.metrics["backtest.lo.wape"])
    artifact = json.loads(r.model_json())
    assert [m["family"] for m in artifact["model"]["members"]] == ["hi", "lo"]
    assert set(artifact["selection"]["backtest"]) == {"seasonal_naive", "hi", "lo", "ensemble"}
    ds_f, yhat, lo, hi = forecast_arrays(artifact, 14)
    np.testing.assert_allclose(yhat, _signal(ds_f), rtol=1e-9)  # the mean of +10% and -10%
    assert ((lo < yhat) & (yhat < hi)).all()


def test_evaluate_scores_auto_and_every_family_on_unseen_windows():
    from mm_platform.evaluate import compare_auto, evaluate_series, summarize

    spec = auto_spec(candidates=("seasonal_naive", "croston", "regression"), fallback="regression", folds=2)
    rng = np.random.default_rng(8)
    results = []
    for i in range(4):
        ds = pd.date_range("2024-01-01", periods=300)
        y = rng.poisson(20 + 5 * np.sin(2 * np.pi * np.arange(300) / 7) + i).astype(float)
        results.append(evaluate_series(f"s{i}", pd.DataFrame({"ds": ds, "y": y}), spec, 28, 2))
    assert all(r["status"] == "ok" and len(r["cuts"]) == 2 for r in results)
    methods = ["seasonal_naive", "croston", "regression"]
    report = summarize(results, ["auto", *methods], 0.9, 365)
    assert report["series_evaluated"] == 4 and report["cuts"] == 8
    auto = report["methods"]["auto"]
    assert sum(auto["mix"].values()) == 8 and set(auto["mix"]) <= set(methods)
    assert 0.7 <= auto["interval_coverage"] <= 1.0
    vs = compare_auto(results, methods)
    for m in methods:
        lo, hi = vs[m]["ci90"]
        assert lo <= vs[m]["wape_ratio"] <= hi
        assert vs[m]["wape_ratio"] == pytest.approx(auto["wape"] / report["methods"][m]["wape"], abs=1e-3)


# --- weekly, three keys with other names, revenue, boolean + numeric regressors -------------

RUN_DATE = date(2025, 12, 29)  # a Monday: weeks start on Mondays
PACKAGED = Path(__file__).resolve().parents[1] / "mm_platform" / "configs" / "weekly_multikey.yaml"


def weekly_revenue(seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    end = pd.Timestamp(RUN_DATE)
    frames = []
    combos = [(r, w, s) for r in ("north", "south") for w in ("WH-1", "WH-2") for s in ("A100", "B200", "C300")]
    for i, (region, wh, sku) in enumerate(combos):
        n = [160, 120, 70, 45, 20][i % 5]  # different lengths; the last is too short
        weeks = pd.date_range(end=end, periods=n, freq="7D")
        t = np.arange(n)
        price = np.round(rng.uniform(8, 12, n), 2)
        promo = rng.random(n) < 0.15
        units = rng.poisson(
            (50 + 10 * i) * (1 + 0.2 * np.sin(2 * np.pi * t / 52.18)) * (price / 10) ** -1.5 * (1 + 0.4 * promo)
        )
        frame = pd.DataFrame(
            {"week_start": weeks.date, "region": region, "warehouse": wh, "sku": sku,
             "revenue": units * price, "on_promo": promo, "unit_price": price}
        )
        missing = rng.random(n) < 0.05  # missing weeks
        missing[-1] = False
        frames.append(frame[~missing])
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def weekly_run(tmp_path_factory, spark):
    import sqlalchemy as sa

    from mm_platform.defs.dataset import Dataset

    home = tmp_path_factory.mktemp("weekly_home")
    raw = yaml.safe_load(PACKAGED.read_text())
    raw["source"]["url"] = f"sqlite:///{home}/weekly_source.db"
    raw["storage"] = {k: v.replace("${MM_HOME}", str(home)) for k, v in raw["storage"].items()}
    raw["spark"] = {"master": "local[2]", "shuffle_partitions": 2}
    raw["promotion"] = {"max_wape": None, "beats_seasonal_naive": False, "not_worse_than_production": False}
    path = home / "weekly.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    data = weekly_revenue()
    engine = sa.create_engine(cfg.source.url)
    with engine.begin() as conn:
        data.to_sql(cfg.source.table, conn, index=False)
    engine.dispose()
    graph = Dataset.from_file(path).definitions()  # weekly run-date partitions, on Mondays
    result = dg.materialize(list(graph.assets), partition_key=str(RUN_DATE), resources=graph.resources, raise_on_error=True)
    return cfg, data, result


def test_weekly_multikey_revenue_end_to_end(weekly_run):
    from mm_platform.stores.registry import training_registry
    from mm_platform.stores.warehouse import Warehouse

    cfg, data, result = weekly_run
    assert result.success
    assert cfg.keys == ["region", "warehouse", "sku"] and cfg.frequency == "weekly"
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    report = wh.read("SELECT * FROM training_report WHERE run_date = :r", r=RUN_DATE)
    assert len(report) == 12
    lengths = data.groupby(["region", "warehouse", "sku"]).size()
    assert set(report["status"]) == {"trained", "skipped"}
    assert (report["status"] == "skipped").sum() == int((lengths < cfg.min_history).sum())
    models = training_registry(cfg).latest_by_series(cfg.name)
    trained = report[report["status"] == "trained"]
    assert len(models) == len(trained)
    for _, row in trained.iterrows():
        mv = models[row["series_id"]]
        assert mv.tags["key.region"] == row["region"] and mv.tags["key.sku"] == row["sku"]
        artifact = training_registry(cfg).load_model(mv)
        assert artifact["freq"] == "W" and artifact["regressor_names"] == ["on_promo", "unit_price"]
        assert artifact["selection"]["champion"] == artifact["family"]
    preds = wh.read("SELECT * FROM predictions WHERE run_date = :r", r=RUN_DATE)
    counts = preds.groupby("series_id").size()
    assert set(counts.index) == set(trained["series_id"]) and (counts == cfg.horizon).all()
    ds = pd.to_datetime(preds["ds"])
    assert ds.min() == pd.Timestamp(RUN_DATE) + pd.Timedelta(days=7)
    assert set(ds.dt.dayofweek) == {0}  # weekly, on the data's Mondays
    assert (preds["yhat_lower"] <= preds["yhat"]).all() and (preds["yhat"] <= preds["yhat_upper"]).all()
    # Forecasts are on the revenue scale of each series.
    last = data.sort_values("week_start").groupby(["region", "warehouse", "sku"])["revenue"].apply(lambda s: s.tail(26).mean())
    for sid, g in preds.groupby("series_id"):
        keys = dict(kv.split("=") for kv in sid.split(","))
        level = last[(keys["region"], keys["warehouse"], keys["sku"])]
        assert 0.4 * level < g["yhat"].mean() < 2.0 * level, (sid, g["yhat"].mean(), level)
