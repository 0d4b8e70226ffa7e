"""Reliability: bad series, bad input, crashes and reruns lose nothing and duplicate nothing.

Fast parts run by default; the fault-injection runs that SIGKILL real processes mid-write
are marked slow."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform.forecasting.series import FAILED, TrainSpec, train_series
from mm_platform.steps.ingest import ingest
from mm_platform.steps.operations import failed_series, rollback
from mm_platform.steps.thresholds import ErrorThresholdExceeded
from mm_platform.steps.train import build_training_sets, train_and_register
from mm_platform.stores.artifacts import local_path
from mm_platform.stores.lake import Lake
from mm_platform.stores.registry import production_by_series, production_registry, training_registry
from mm_platform.stores.sql import create_engine
from mm_platform.stores.warehouse import Warehouse
from mm_platform_tests.conftest import write_config

RUN = date(2025, 12, 31)
ROOT = Path(__file__).resolve().parents[1]


def poisoned_sales(days: int = 200) -> pd.DataFrame:
    """Two healthy series plus one series per kind of poison (store 1, items 1..9)."""
    dates = pd.Series(pd.date_range(end="2025-12-31", periods=days, freq="D"))
    frames = []

    def series(item, units, d=dates):
        n = len(d)
        frames.append(pd.DataFrame({"date": d, "store": 1, "item": item, "units": units, "price": np.full(n, 2.0),
                                    "promo": 0, "holiday": 0}))

    n = len(dates)
    rng = np.random.default_rng(3)
    series(1, np.round(20 + 5 * np.sin(np.arange(n) * 2 * np.pi / 7) + rng.normal(0, 1, n)))
    series(2, rng.poisson(8, n).astype(float))
    series(3, np.full(n, np.nan))  # all missing
    series(4, np.full(n, 5.0))  # constant
    series(5, np.zeros(n))  # all zeros
    series(6, np.arange(30.0), dates[-30:])  # shorter than min_history
    return pd.concat(frames, ignore_index=True)


@pytest.fixture
def poisoned(tmp_path, spark):
    cfg = load_config(write_config(tmp_path, training={"max_failed_fraction": 1.0}))
    data = poisoned_sales()
    engine = create_engine(cfg.source.url)
    data.assign(date=data["date"].dt.date).to_sql("sales", engine, index=False)
    engine.dispose()
    lake = Lake(cfg.storage.lake_url)
    ingest(cfg, lake, cfg.source.url, RUN)
    build_training_sets(spark, lake, cfg, RUN)
    return cfg, lake


def test_bad_series_get_a_status_and_reason_and_never_fail_the_run(poisoned, spark):
    cfg, lake = poisoned
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    outcome = train_and_register(spark, lake, cfg, RUN, training_registry(cfg), wh, "t")
    report = outcome.report.set_index("item")
    assert report.loc[1, "status"] == "trained" and report.loc[2, "status"] == "trained"
    assert report.loc[3, "status"] == "skipped" and "missing" in report.loc[3, "reason"]
    assert report.loc[5, "status"] == "skipped" and "zero" in report.loc[5, "reason"]
    assert report.loc[6, "status"] == "skipped" and "min_history" in report.loc[6, "reason"]
    assert report.loc[4, "status"] == "trained"  # a constant series is a valid (flat) forecast
    stored = wh.read("SELECT series_id, status, reason FROM training_report")
    assert len(stored) == 6 and set(stored["status"]) == {"trained", "skipped"}


def test_per_series_failures_duplicated_dates_infinite_values_and_time_limit():
    spec = TrainSpec(family="prophet", freq="D", season_length=7, holdout=14, min_history=40, fit_timeout_seconds=30)
    ds = pd.date_range("2025-01-01", periods=120, freq="D")
    ok = pd.DataFrame({"ds": ds, "y": np.arange(120.0) % 7 + 10})
    assert train_series(ok, spec).status == "trained"
    dup = pd.concat([ok, ok.iloc[:5]])
    assert (train_series(dup, spec).status, train_series(dup, spec).reason) == (FAILED, "duplicated dates")
    inf = ok.assign(y=ok["y"].where(ok.index != 7, np.inf))
    assert train_series(inf, spec).reason == "infinite target values"
    slow = TrainSpec(**{**spec.__dict__, "fit_timeout_seconds": 1e-4, "family": "prophet_library"})
    r = train_series(ok, slow)
    assert r.status == FAILED and "time limit" in r.reason


def test_error_threshold_fails_with_a_clear_message_and_registers_nothing(poisoned, spark):
    cfg, lake = poisoned
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"fit_timeout_seconds": 1e-4, "max_failed_fraction": 0.1})})
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    with pytest.raises(ErrorThresholdExceeded, match=r"series failed to train, over the error threshold .*max_failed_fraction=0.1"):
        train_and_register(spark, lake, cfg, RUN, training_registry(cfg), wh, "t")
    assert training_registry(cfg).search(cfg.name) == []
    # the model set's registry run failed, and nothing its tasks wrote is left in it
    reg = training_registry(cfg)
    runs = reg.client.search_runs([reg._experiment_id()])
    assert runs and {r.info.status for r in runs} == {"FAILED"}
    assert not any(Path(local_path(r.info.artifact_uri), "models").exists() for r in runs)
    assert (wh.read("SELECT status FROM training_report")["status"] == "failed").sum() >= 3


def test_retrain_failed_retrains_only_the_failed_series(poisoned, spark):
    cfg, lake = poisoned
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    too_tight = cfg.model_copy(update={"training": cfg.training.model_copy(update={"fit_timeout_seconds": 1e-4})})
    train_and_register(spark, lake, too_tight, RUN, training_registry(cfg), wh, "first")
    run_date, failed = failed_series(wh)
    assert run_date == RUN and failed == [f"store=1,item={i}" for i in range(1, 7)]  # the limit hit every series
    assert training_registry(cfg).search(cfg.name) == []
    outcome = train_and_register(spark, lake, cfg, RUN, training_registry(cfg), wh, "retry", failed[:4])
    assert outcome.registered == 3 and outcome.skipped == 1 and len(outcome.report) == 4
    report = wh.read("SELECT series_id, status FROM training_report")
    assert len(report) == 6 and failed_series(wh)[1] == failed[4:]  # only the retried rows were replaced


def test_rollback_restores_the_previous_production_version_and_is_audited(small_dataset, tmp_path):
    from mm_platform.stores.registry import ModelRegistry

    _, _, base = small_dataset
    cfg = load_config(write_config(tmp_path))
    reg = ModelRegistry(cfg.storage.production_registry_uri, cfg.storage.production_artifact_root, "p")
    tags = {"dataset": cfg.name, "series_id": "store=1,item=1", "key.store": "1", "key.item": "1"}
    reg.register_many([("retail.store_1.item_1", b"{}", tags)], "r1", {}, alias="production")
    reg.register_many([("retail.store_1.item_1", b"{ }", tags)], "r2", {}, alias="production")
    assert production_by_series(reg, cfg.name)["store=1,item=1"].version == 2
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    log = rollback(cfg, reg, wh, ["store=1,item=1"])
    assert production_by_series(reg, cfg.name)["store=1,item=1"].version == 1
    # The registry's ORM query and MLflow's client API agree on which version is in production.
    assert reg.aliased_by_series(cfg.name) == reg._aliased_by_series_client(cfg.name, "production")
    assert reg.aliased_by_series("other_dataset") == {}
    assert log["action"].tolist() == ["rollback"]
    assert wh.read("SELECT action, production_version FROM promotion_log").values.tolist() == [["rollback", 1]]
    with pytest.raises(ValueError, match="no production version"):
        rollback(cfg, reg, wh, ["store=1,item=1"], to_version=7)
    with pytest.raises(ValueError, match="has no production model"):
        rollback(cfg, reg, wh, ["store=9,item=9"])


def test_training_and_scoring_cannot_write_to_production(small_dataset):
    _, _, cfg = small_dataset
    with pytest.raises(PermissionError, match="read-only"):
        production_registry(cfg).register_many([("x.y", b"{}", {})], "r", {})
    with pytest.raises(PermissionError, match="read-only"):
        production_registry(cfg).set_production(None)


def test_bad_cli_arguments_and_config_get_one_clear_line(tmp_path):
    exe = str(Path(sys.executable).parent / "mm-platform")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: retail\nsource: {url: 'sqlite:///x.db'}\nhorizon: -3\n")
    out = subprocess.run([exe, "run", "--config", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2 and "horizon" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([exe, "generate", "--stores", "0", "--items", "1", "--days", "1"], capture_output=True, text=True)
    assert out.returncode == 2 and "--stores" in out.stderr and "Traceback" not in out.stderr


# --- fault injection: real processes killed mid-write ----------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from datetime import date
    from mm_platform.config import load_config
    from mm_platform.stores.lake import Lake
    from mm_platform.steps.ingest import ingest
    from mm_platform.stores.warehouse import Warehouse
    import pandas as pd
    cfg = load_config(sys.argv[1])
    what = sys.argv[2]
    if what == "ingest":
        ingest(cfg, Lake(cfg.storage.lake_url), cfg.source.url, date.fromisoformat(sys.argv[3]))
    elif what == "predictions":
        wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
        n = int(sys.argv[3])
        rows = pd.DataFrame({"store": 1, "item": range(n), "series_id": [f"s{i}" for i in range(n)],
                             "ds": pd.Timestamp("2026-01-01").date(), "yhat": float(n)})
        wh.replace_run("predictions", date(2025, 12, 31), rows)
    """
)


def _child(cfg_path, *args, fault=None):
    env = {**os.environ}
    env.pop("MM_FAULT_POINT", None)
    if fault:
        env["MM_FAULT_POINT"] = fault
    return subprocess.run([sys.executable, "-c", CHILD, str(cfg_path), *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_ingestion_killed_before_the_manifest_swap_leaves_the_lake_as_before(tmp_path):
    path = write_config(tmp_path)
    cfg = load_config(path)
    write_sales(cfg.source.url, "sales", 3, 4, 150, seed=2)
    assert _child(path, "ingest", "2025-11-30").returncode == 0
    lake = Lake(cfg.storage.lake_url)
    before = lake.read_raw("sales").sort_values(["store", "item", "date"]).reset_index(drop=True)
    killed = _child(path, "ingest", "2025-12-31", fault="lake.before_manifest")
    assert killed.returncode == -9
    pd.testing.assert_frame_equal(lake.read_raw("sales").sort_values(["store", "item", "date"]).reset_index(drop=True), before)
    assert _child(path, "ingest", "2025-12-31").returncode == 0  # the rerun completes the copy
    clean_home = tmp_path / "clean"
    clean_home.mkdir()
    clean_cfg = load_config(write_config(clean_home, source={"url": cfg.source.url, "table": "sales"}))
    ingest(clean_cfg, Lake(clean_cfg.storage.lake_url), cfg.source.url, date(2025, 12, 31))
    a = lake.read_raw("sales").sort_values(["store", "item", "date"]).reset_index(drop=True)
    b = Lake(clean_cfg.storage.lake_url).read_raw("sales").sort_values(["store", "item", "date"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_warehouse_write_killed_mid_transaction_keeps_the_old_run(tmp_path):
    path = write_config(tmp_path)
    cfg = load_config(path)
    assert _child(path, "predictions", "50").returncode == 0
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    assert len(wh.read("SELECT * FROM predictions")) == 50
    assert _child(path, "predictions", "80", fault="warehouse.after_delete").returncode == -9
    rows = wh.read("SELECT yhat FROM predictions")
    assert len(rows) == 50 and set(rows["yhat"]) == {50.0}
    assert _child(path, "predictions", "80").returncode == 0
    assert _child(path, "predictions", "80").returncode == 0  # a rerun yields the same row count
    assert len(wh.read("SELECT * FROM predictions")) == 80


@pytest.mark.slow
def test_promotion_killed_mid_registry_transaction_leaves_series_on_their_old_models(small_dataset, tmp_path):
    from mm_platform.stores.registry import ModelRegistry

    cfg = load_config(write_config(tmp_path))
    code = textwrap.dedent(
        f"""
        from mm_platform.stores.registry import ModelRegistry
        reg = ModelRegistry({cfg.storage.production_registry_uri!r}, {cfg.storage.production_artifact_root!r}, "p")
        entries = [(f"retail.store_1.item_{{i}}", b"v", {{"dataset": "retail", "series_id": f"store=1,item={{i}}"}}) for i in range(5)]
        reg.register_many(entries, "r", {{}}, alias="production")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "MM_FAULT_POINT"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
    killed = subprocess.run([sys.executable, "-c", code], env={**env, "MM_FAULT_POINT": "registry.before_commit"})
    assert killed.returncode == -9
    reg = ModelRegistry(cfg.storage.production_registry_uri, cfg.storage.production_artifact_root, "p", writable=False)
    prod = production_by_series(reg, "retail")
    assert len(prod) == 5 and {m.version for m in prod.values()} == {1}
    assert len(reg.search("retail")) == 5  # no half-registered versions


def _production_entry(cfg, item: int, artifact: bytes):
    from mm_platform.core.vocabulary import model_name

    keys = {"store": 1, "item": item}
    tags = {"dataset": cfg.name, "series_id": f"store=1,item={item}", "key.store": "1", "key.item": str(item)}
    return model_name(cfg.name, keys), artifact, tags


def test_one_bad_production_model_fails_its_series_only_and_the_scoring_report_says_why(poisoned, spark):
    import json

    from mm_platform.spark.train import train_spec
    from mm_platform.steps.score import score_and_write

    cfg, lake = poisoned
    data = poisoned_sales().rename(columns={"date": "ds", "units": "y"})
    spec = train_spec(cfg)
    good = {i: train_series(data[data["item"] == i].reset_index(drop=True), spec).model_json().encode() for i in (1, 2)}
    broken = json.loads(good[1])
    broken["family"] = "no_such_family"  # loads, then fails to forecast
    nonfinite = json.loads(good[2])
    nonfinite["interval_sigma"] = float("inf")  # forecasts, but not finite
    prod = production_registry(cfg, writable=True)
    (_, _, tampered, *_) = prod.register_many(
        [
            _production_entry(cfg, 1, good[1]),
            _production_entry(cfg, 2, good[2]),
            _production_entry(cfg, 4, good[1]),  # checksum broken below: never loaded
            _production_entry(cfg, 5, json.dumps(broken).encode()),
            _production_entry(cfg, 6, json.dumps(nonfinite).encode()),
            _production_entry(cfg, 42, good[1]),  # a model for a series absent from the data
        ],
        "promotion", {}, alias="production",
    )
    with open(tampered.source.removeprefix("file://"), "ab") as f:
        f.write(b" ")
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    relaxed = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"max_failed_fraction": 1.0})})
    outcome = score_and_write(spark, lake, relaxed, RUN, production_registry(cfg), wh, "s1")

    report = wh.read("SELECT item, status, reason, prediction_rows FROM scoring_report").set_index("item")
    assert report.loc[[1, 2], "status"].tolist() == ["scored", "scored"]
    assert report.loc[[1, 2], "prediction_rows"].tolist() == [cfg.horizon, cfg.horizon]
    assert report.loc[4, "status"] == "failed" and "sha256" in report.loc[4, "reason"]
    assert report.loc[5, "status"] == "failed" and "no_such_family" in report.loc[5, "reason"]
    assert report.loc[6, "status"] == "failed" and "non-finite" in report.loc[6, "reason"]
    assert report.loc[3, "status"] == "skipped" and report.loc[3, "reason"] == "no production model"
    assert report.loc[42, "status"] == "skipped" and "not in the run date's training set" in report.loc[42, "reason"]
    preds = wh.read("SELECT item, COUNT(*) AS n FROM predictions GROUP BY item")
    assert dict(zip(preds["item"], preds["n"], strict=True)) == {1: cfg.horizon, 2: cfg.horizon}
    assert outcome.scored == 2 and outcome.failed == 3

    # With the default threshold (20%, from 3 failures on) three failures out of five fail the
    # run and name the section; the two good series are still refreshed (ScoringConfig) and the
    # report says what happened.
    with pytest.raises(ErrorThresholdExceeded, match=r"3 of 5 series failed to score.*scoring\.max_failed_fraction=0\.2"):
        score_and_write(spark, lake, cfg, RUN, production_registry(cfg), wh, "s2")
    refreshed = wh.read("SELECT item, scoring_run_id, COUNT(*) AS n FROM predictions GROUP BY item, scoring_run_id")
    assert refreshed.values.tolist() == [[1, "s2", cfg.horizon], [2, "s2", cfg.horizon]]
    assert wh.read("SELECT DISTINCT scoring_run_id FROM scoring_report")["scoring_run_id"].tolist() == ["s2"]
