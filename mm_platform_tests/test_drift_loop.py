"""The loop closed (issue #20): generated data with a structural break (a level shift in a few
series after some date), the daily pipeline run over consecutive run dates with the actuals
arriving day by day. Drift flags exactly the broken series, the configured action (refit) is
taken the next run, the other series are left alone, and the realized-accuracy tables agree
with a hand computation. Plus fast unit tests (in-memory fakes) of how training honours refit
requests and how promotion treats a drift refit."""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from mm_platform.config import load_config, parse_config
from mm_platform.core.vocabulary import (
    DRIFT_REFIT,
    FALLBACK_PROMOTED,
    METRICS,
    PROMOTED,
    REGISTERED,
    ROLLBACK,
    TAG_DRIFT_REFIT,
    TAG_TIER,
    TAG_TRAINING_VERSION,
    TIER_CHAMPION,
    TIER_FALLBACK,
    TRAINED,
    UNCHANGED,
    format_metric,
    identity_tags,
    metric_tag,
    model_name,
)
from mm_platform.steps import train as train_step
from mm_platform.steps.promote import promote
from mm_platform.steps.train import train_and_register
from mm_platform_tests.conftest import write_config
from mm_platform_tests.fakes import FakeHistories, FakeRegistry, FakeWarehouse

D = date(2025, 12, 10)

# -- training honours refit requests (fakes) ------------------------------------------------------


class FakeTrainingSets:
    """``TrainingSetStore.train`` over fixed fingerprints: a series whose fingerprint is in
    ``known`` comes back unchanged, as the real store does; records what it was asked."""

    def __init__(self, fingerprints: dict[str, str]):
        self.fingerprints = fingerprints
        self.calls: list[dict] = []

    def train(self, spark, run_date, known=None, previous=None, only_series=None, artifacts=None):
        known, previous = known or {}, previous or {}
        self.calls.append({"known": dict(known), "previous": dict(previous)})
        rows = []
        for sid, fp in sorted(self.fingerprints.items()):
            item = int(sid.rsplit("=", 1)[1])
            same = known.get(sid) == fp
            rows.append({"store": 1, "item": item, "series_id": sid, "status": UNCHANGED if same else TRAINED,
                         "reason": "data unchanged since the registered model" if same else "", "n_obs": 100,
                         "last_date": str(run_date), "fingerprint": fp, **dict.fromkeys(METRICS, None if same else 0.2),
                         "fit_seconds": 0.0, "model_json": "" if same else json.dumps({"family": "seasonal_naive", "fp": fp})})
        return pd.DataFrame(rows)


def _flag(wh: FakeWarehouse, run_date: date, series: list[str], actions: str = DRIFT_REFIT) -> None:
    """What ``act_on_drift`` writes: drift_log rows of ``run_date``."""
    wh.append("drift_log", run_date, pd.DataFrame({"series_id": series, "actions": actions}))


def test_training_refits_the_series_drift_asked_for_once_even_with_unchanged_data(monkeypatch):
    cfg = parse_config({"name": "retail", "source": {"url": "sqlite:///unused.db"}, "columns": {"keys": ["store", "item"]},
                        "algorithm": {"name": "seasonal_naive"}})
    store = FakeTrainingSets({"store=1,item=1": "a", "store=1,item=2": "b"})
    monkeypatch.setattr(train_step, "training_set_store", lambda lake, c: store)
    registry, wh = FakeRegistry(), FakeWarehouse()

    def day(run_date):
        out = train_and_register(None, None, cfg, run_date, registry, wh, f"run-{run_date}")
        return out, out.report.set_index("series_id")

    first, _ = day(D)
    assert first.registered == 2
    _flag(wh, D, ["store=1,item=1"])  # drift flags item 1 after D's training (accuracy runs last)
    _flag(wh, D - timedelta(days=3), ["store=1,item=2"])  # an older request, consumed by D's training
    _flag(wh, D, ["store=1,item=2"], actions="rollback to version 1")  # not a refit request
    assert wh.refit_requests() == ["store=1,item=1"]

    # The next run date, same data: item 1 is refitted anyway (no warm start from the
    # drifting model) and registered with the drift_refit tag; item 2 is unchanged.
    second, report = day(D + timedelta(days=1))
    assert "store=1,item=1" not in store.calls[-1]["known"] and "store=1,item=1" not in store.calls[-1]["previous"]
    assert store.calls[-1]["known"] == {"store=1,item=2": "b"}
    assert second.registered == 1 and second.unchanged == 1
    assert report.loc["store=1,item=1", "registration"] == REGISTERED
    assert "refit requested by realized-accuracy drift" in report.loc["store=1,item=1", "reason"]
    assert report.loc["store=1,item=2", "registration"] == UNCHANGED
    latest = registry.latest_by_series("retail")
    assert latest["store=1,item=1"].version == 2 and latest["store=1,item=1"].tags[TAG_DRIFT_REFIT] == str(D + timedelta(days=1))
    assert TAG_DRIFT_REFIT not in latest["store=1,item=2"].tags

    # The request is consumed: the day after, nothing is refitted.
    assert wh.refit_requests() == []
    third, _ = day(D + timedelta(days=2))
    assert third.registered == 0 and third.unchanged == 2

    # A flag after a run date's training, then that run date rerun twice: refitted once.
    _flag(wh, D + timedelta(days=2), ["store=1,item=2"])
    assert day(D + timedelta(days=2))[0].registered == 1
    assert wh.refit_requests() == ["store=1,item=2"]  # (still the newest training run's date)
    assert day(D + timedelta(days=2))[0].registered == 0
    assert [m.version for m in registry.versions["retail.store_1.item_2"]] == [1, 2]


# -- promotion of a drift refit (fakes) -----------------------------------------------------------


def _register(registry, item, wape, naive, extra=None, alias=None):
    keys = {"store": 1, "item": item}
    tags = {**identity_tags("retail", keys), "algorithm": "prophet",
            **{metric_tag(m): format_metric({"wape": wape, "naive_wape": naive}.get(m)) for m in METRICS}, **(extra or {})}
    return registry.register_many([(model_name("retail", keys), json.dumps({"family": "seasonal_naive"}).encode(), tags)],
                                  run_name="t", run_tags={}, alias=alias)[0]


def test_a_drift_refit_is_not_held_to_the_drifting_models_estimate_and_never_keeps_it():
    """Both series' production models drifted (promotion-time WAPE 0.1). Item 1's refit (0.3,
    naive 0.5) would fail 'not worse than production', but passes: it becomes the champion.
    Item 2's refit fails max_wape: the drifting model is not kept, the fallback chain decides.
    Item 3's new model is an ordinary candidate: held to production's 0.1, rejected, kept."""
    cfg = parse_config({"name": "retail", "source": {"url": "sqlite:///unused.db"}, "columns": {"keys": ["store", "item"]},
                        "promotion": {"max_wape": 0.5}, "min_history": 56})
    run = date(2025, 12, 31)
    training, production, wh = FakeRegistry("sqlite:///t.db"), FakeRegistry(), FakeWarehouse()
    for item in (1, 2, 3):
        _register(production, item, 0.1, 0.4, {TAG_TIER: TIER_CHAMPION}, alias="production")
    _register(training, 1, 0.3, 0.5, {TAG_DRIFT_REFIT: str(run)})
    _register(training, 2, 0.7, 0.4, {TAG_DRIFT_REFIT: str(run)})
    _register(training, 3, 0.3, 0.5)
    ds = pd.date_range(end=pd.Timestamp(run), periods=60, freq="D")
    y = 20 + 5 * np.sin(2 * np.pi * np.arange(60) / 7)
    data = pd.concat([pd.DataFrame({"store": 1, "item": i, "series_id": f"store=1,item={i}", "ds": ds, "y": y})
                      for i in (1, 2, 3)], ignore_index=True)
    out = promote(cfg, run, training, production, wh, FakeHistories(data, cfg.keys), decided_by="test")

    log = out.decisions.set_index(["series_id", "action"])
    assert log.loc[("store=1,item=1", PROMOTED), "reasons"] == "" and pd.isna(log.loc[("store=1,item=1", PROMOTED), "production_wape"])
    assert "worse than production" in log.loc[("store=1,item=3", "rejected"), "reasons"]
    fallback = log.loc[("store=1,item=2", FALLBACK_PROMOTED), "reasons"]
    assert "drift refit of a drifting production model: wape 0.7000 > max_wape 0.5" in fallback
    prod = {sid: mv for sid, mv in production.aliased_by_series("retail").items()}
    assert prod["store=1,item=1"].tags[TAG_TIER] == TIER_CHAMPION and prod["store=1,item=1"].tags[TAG_TRAINING_VERSION] == "1"
    assert prod["store=1,item=2"].tags[TAG_TIER] == TIER_FALLBACK and prod["store=1,item=2"].version == 2
    assert prod["store=1,item=3"].version == 1  # the ordinary rejection keeps the production model


# -- the structural-break loop (real Spark, MLflow, SQLite) ---------------------------------------

BREAK = date(2025, 12, 20)  # from this day on, items 1 and 5 sell three times as much
BROKEN = ["store=1,item=1", "store=1,item=5"]
FIRST, LAST = date(2025, 12, 16), date(2025, 12, 24)
DRIFT = {"window_days": 7, "min_actuals": 5, "factor": 2.0, "worse_than_naive": False, "actions": [DRIFT_REFIT]}


def _source(cfg) -> pd.DataFrame:
    engine = sa.create_engine(cfg.source.url)
    with engine.connect() as conn:
        src = pd.read_sql(sa.text(f"SELECT date, store, item, units FROM {cfg.source.table}"), conn)
    engine.dispose()
    src["series_id"] = "store=" + src["store"].astype(str) + ",item=" + src["item"].astype(str)
    src["date"] = pd.to_datetime(src["date"]).dt.date
    return src


def _by_hand(predictions: pd.DataFrame, source: pd.DataFrame, as_of: date, season: int = 7) -> dict:
    """Realized accuracy of each (forecast run date, series) with plain loops: the published
    forecast for each date after the run date up to ``as_of`` against the actual; seasonal
    naive repeats the last ``season`` days up to the run date (a missing day counts 0)."""
    actual = {(r.series_id, r.date): float(r.units) for r in source.itertuples() if r.units == r.units}
    sums: dict = {}
    for p in predictions.itertuples():
        run, ds = pd.Timestamp(p.run_date).date(), pd.Timestamp(p.ds).date()
        if not run < ds <= as_of or (p.series_id, ds) not in actual:
            continue
        y, k = actual[(p.series_id, ds)], (ds - run).days
        naive = actual.get((p.series_id, run - timedelta(days=season - 1 - (k - 1) % season)), 0.0)
        s = sums.setdefault((run, p.series_id), {"n": 0, "y": 0.0, "err": 0.0, "bias": 0.0, "inside": 0, "naive": 0.0})
        s["n"] += 1
        s["y"] += abs(y)
        s["err"] += abs(y - p.yhat)
        s["bias"] += p.yhat - y
        s["inside"] += int(p.yhat_lower <= y <= p.yhat_upper)
        s["naive"] += abs(y - naive)
    return sums


def _broken_dataset(home):
    """Six generated series, items 1 and 5 with a level shift (x3) from BREAK on."""
    from mm_platform.datagen import LevelShift, write_sales

    path = write_config(home, columns={"date": "date", "target": "units", "keys": ["store", "item"], "regressors": []},
                        algorithm={"name": "regression"}, horizon=7, holdout=14, min_history=56,
                        accuracy={"lookback_days": 14, "drift": DRIFT})
    cfg = load_config(path)
    # Items 2 and 4 are intermittent slow movers (fallback-covered), 3 is noisy, 6 is regular.
    write_sales(cfg.source.url, cfg.source.table, stores=1, items=6, days=150, seed=2, end_date=date(2025, 12, 31),
                level_shift=LevelShift(BREAK, 3.0, (1, 5)))
    return path, cfg


def test_a_level_shift_is_flagged_refitted_and_nothing_else_is_touched(tmp_path, spark):
    """The daily pipeline as its steps (the asset graph's order, without Dagster): fast enough
    for the default suite. test_the_daily_cli_run_closes_the_loop runs the real CLI."""
    from mm_platform.steps.accuracy import act_on_drift, evaluate_accuracy
    from mm_platform.steps.ingest import ingest
    from mm_platform.steps.score import score_and_write
    from mm_platform.steps.train import build_training_sets
    from mm_platform.stores.lake import Lake
    from mm_platform.stores.registry import production_by_series, production_registry, training_registry
    from mm_platform.stores.training_sets import training_set_store
    from mm_platform.stores.warehouse import Warehouse

    _, cfg = _broken_dataset(tmp_path)
    lake, wh = Lake(cfg.storage.lake_url), Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    training, production = training_registry(cfg), production_registry(cfg, writable=True)

    flagged, requests, production_before = {}, {}, {}
    for run in pd.date_range(FIRST, LAST).date:  # the daily pipeline, in asset-graph order
        ingest(cfg, lake, cfg.source.url, run)  # the source has rows up to the run date: the day's actuals
        build_training_sets(spark, lake, cfg, run)
        requests[run] = wh.refit_requests()
        train_and_register(spark, lake, cfg, run, training, wh, f"run-{run}")
        production_before[run] = {sid: mv.version for sid, mv in production_by_series(production, cfg.name).items()}
        promote(cfg, run, training, production, wh, training_set_store(lake, cfg), decided_by="test")
        score_and_write(spark, lake, cfg, run, production, wh, f"run-{run}")
        outcome = evaluate_accuracy(lake, cfg, run, wh, production)
        flags = act_on_drift(cfg, run, outcome.rows, production, wh, decided_by="test drift")
        flagged[run] = sorted(flags["series_id"]) if len(flags) else []
        wh.refresh_metrics(run)
    _assert_the_loop(cfg, wh, training, production, flagged, requests, production_before)


def _assert_the_loop(cfg, wh, training, production, flagged, requests, production_before) -> None:
    from mm_platform.stores.registry import production_by_series

    # Exactly the broken series are flagged, once each, as soon as a production model has
    # min_actuals post-break forecast/actual pairs; never before the break, never the others.
    flag_day = date(2025, 12, 22)
    assert {d: s for d, s in flagged.items() if s} == {flag_day: BROKEN}
    log = wh.read("SELECT * FROM v_drift_log ORDER BY series_id")
    assert log["series_id"].tolist() == BROKEN and (log["actions"] == DRIFT_REFIT).all()
    assert (log["realized_wape"] > DRIFT["factor"] * log["estimated_wape"]).all() and (log["pairs"] >= DRIFT["min_actuals"]).all()

    # The action: the next run's training refits them (request read before it, consumed after),
    # registered with the drift_refit tag, and promotion picks their new production model.
    next_day = flag_day + timedelta(days=1)
    assert requests[next_day] == BROKEN and all(not r for d, r in requests.items() if d != next_day)
    assert wh.refit_requests() == []
    report = wh.read("SELECT series_id, reason, model_version FROM training_report WHERE run_date = :r", r=next_day)
    refit = report[report["reason"].fillna("").str.contains("refit requested by realized-accuracy drift")]
    assert sorted(refit["series_id"]) == BROKEN
    tagged = {(mv.tags.get("series_id"), mv.tags[TAG_DRIFT_REFIT]) for mvs in _all_versions(training, cfg.name) for mv in mvs
              if TAG_DRIFT_REFIT in mv.tags}
    assert tagged == {(sid, str(next_day)) for sid in BROKEN}
    prod = production_by_series(production, cfg.name)
    decided = wh.read("SELECT series_id, action, production_wape FROM promotion_log WHERE run_date = :r", r=next_day)
    for sid in BROKEN:
        assert prod[sid].version > production_before[next_day][sid]  # a new production model, champion or fallback
        row = decided[(decided["series_id"] == sid) & decided["action"].isin([PROMOTED, FALLBACK_PROMOTED])]
        assert len(row) == 1 and row["production_wape"].isna().all()  # not held to the drifting model's estimate
    # The others are left alone: no flag, no forced refit, no rollback.
    assert not (wh.read("SELECT action FROM promotion_log")["action"] == ROLLBACK).any()

    # Realized accuracy (as of the last run date) agrees with a hand computation.
    predictions = wh.read("SELECT run_date, series_id, ds, yhat, yhat_lower, yhat_upper FROM predictions")
    source = _source(cfg)
    hand = _by_hand(predictions, source, LAST)
    acc = wh.read("SELECT * FROM forecast_accuracy")
    acc["run_date"] = pd.to_datetime(acc["run_date"]).dt.date
    assert set(zip(acc["run_date"], acc["series_id"], strict=True)) == set(hand)
    for r in acc.itertuples():
        s = hand[(r.run_date, r.series_id)]
        assert r.pairs == s["n"] and 1 <= r.max_step <= cfg.horizon
        assert r.wape == _ratio(s["err"], s["y"]) and r.bias == _ratio(s["bias"], s["y"])
        assert r.naive_wape == _ratio(s["naive"], s["y"]) and r.interval_coverage == _ratio(s["inside"], s["n"])
    over_time = wh.read("SELECT * FROM v_accuracy_over_time")
    for (run, tier), g in over_time.assign(run_date=pd.to_datetime(over_time["run_date"]).dt.date).groupby(["run_date", "tier"]):
        sids = acc[(acc["run_date"] == run) & (acc["tier"] == tier)]["series_id"]
        pooled = {k: sum(hand[(run, sid)][k] for sid in sids) for k in ("y", "err", "naive", "inside", "n")}
        assert g["series"].iloc[0] == len(sids) and g["pairs"].iloc[0] == pooled["n"]
        assert g["wape"].iloc[0] == _ratio(pooled["err"], pooled["y"]) and g["naive_wape"].iloc[0] == _ratio(pooled["naive"], pooled["y"])
        assert g["interval_coverage"].iloc[0] == _ratio(pooled["inside"], pooled["n"])

    # The drift numbers too: as of the flag day, each broken series' production model pooled
    # over the forecast run dates of the window.
    as_of_flag = _by_hand(predictions, source, flag_day)
    for f in log.itertuples():
        runs = [(run, f.series_id) for (run, sid) in as_of_flag if sid == f.series_id
                and run >= flag_day - timedelta(days=DRIFT["window_days"]) and _version_of(wh, run, sid) == f.model_version]
        pooled = [as_of_flag[k] for k in runs]
        assert f.pairs == sum(s["n"] for s in pooled)
        assert f.realized_wape == pytest.approx(sum(s["err"] for s in pooled) / sum(s["y"] for s in pooled))


def _ratio(a: float, b: float):
    """``a / b`` to compare with; a series that sold nothing on the evaluated dates has no WAPE."""
    return pytest.approx(a / b) if b else pytest.approx(np.nan, nan_ok=True)


def _all_versions(registry, dataset):
    return [registry.versions_of(dataset, sid) for sid in registry.latest_by_series(dataset)]


def _version_of(wh, run, sid) -> int:
    v = wh.read("SELECT DISTINCT model_version FROM predictions WHERE run_date = :r AND series_id = :s", r=run, s=sid)
    return int(v["model_version"].iloc[0])


@pytest.mark.slow
def test_the_daily_cli_run_closes_the_loop(tmp_path, monkeypatch, capsys):
    """The same structural break through `mm-platform run --run-date D` for consecutive D (the
    Dagster asset graph with its checks, in-process): about a minute per run date."""
    from mm_platform.cli import main
    from mm_platform.stores.registry import production_by_series, production_registry, training_registry
    from mm_platform.stores.warehouse import Warehouse

    path, cfg = _broken_dataset(tmp_path)
    monkeypatch.setenv("MM_HOME", str(tmp_path))
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    training, production = training_registry(cfg), production_registry(cfg, writable=True)
    flagged, requests, production_before, checks = {}, {}, {}, {}
    for run in pd.date_range(FIRST, LAST).date:
        requests[run] = wh.refit_requests()
        production_before[run] = {sid: mv.version for sid, mv in production_by_series(production, cfg.name).items()}
        assert main(["run", "--config", str(path), "--run-date", str(run), "--ephemeral"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        checks[run] = summary["checks"]["no_drifting_series"]
        log = wh.read("SELECT series_id FROM drift_log WHERE run_date = :r", r=run) if wh.has_table("drift_log") else []
        flagged[run] = sorted(log["series_id"]) if len(log) else []
    # Training of the flag day ran before its drift flags: production_before of the next day
    # is the state promotion started from, as in the step-by-step test.
    _assert_the_loop(cfg, wh, training, production, flagged, requests, production_before)
    assert {d for d, c in checks.items() if c == "failed"} == {date(2025, 12, 22)}  # the asset check warns that day
