"""Several datasets, one deployment (issue #19): every dataset YAML of the datasets folder
($MM_DATASETS) is its own asset graph in the one code location -- keys prefixed with the
dataset name, its own group, run-date partitions, schedule, sensors, jobs and resources -- and
`mm-platform run --dataset NAME` runs one of them as its named pipeline job, into its own home.
Real Spark, SQLite, MLflow; two small datasets, one daily and one weekly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mm_platform.config import PACKAGED_DATASETS, StorageConfig, load_config
from mm_platform.datagen import write_sales
from mm_platform.stores.warehouse import Warehouse
from mm_platform_tests.conftest import write_config

ASSETS = ["raw_sales", "training_sets", "model_set", "promoted_models", "batch_predictions", "forecast_metrics",
          "forecast_accuracy"]
DAILY_RUN, WEEKLY_RUN = "2025-12-31", "2025-12-29"  # the generators' last day, and the Monday of its week


def _datasets(root: Path) -> Path:
    """A datasets folder with a daily store x item dataset ``shop`` and a weekly region x
    warehouse x SKU dataset ``wk``, each writing to a home of its own."""
    folder = root / "datasets"
    folder.mkdir()
    shop_home, wk_home = root / "shop_home", root / "wk_home"
    shop_home.mkdir()
    shutil.move(write_config(shop_home, name="shop", horizon=7), folder / "shop.yaml")
    wk = yaml.safe_load((PACKAGED_DATASETS / "weekly_multikey.yaml").read_text())
    wk.update(name="wk", horizon=4, algorithm={"name": "prophet"}, spark={"master": "local[2]", "shuffle_partitions": 2},
              storage=StorageConfig.embedded(wk_home))
    wk["source"]["url"] = f"sqlite:///{wk_home}/source.db"
    (folder / "weekly.yaml").write_text(yaml.safe_dump(wk))
    return folder


def _cli(root: Path, folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MM_CONFIG", "MM_DEBUG")}
    env.update(MM_DATASETS=str(folder), MM_HOME=str(root / "mm_home"), DAGSTER_HOME=str(root / "instance"))
    return subprocess.run([sys.executable, "-m", "mm_platform.cli", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)


def test_each_yaml_of_the_folder_is_its_own_graph(tmp_path, monkeypatch):
    from mm_platform.definitions import defs

    folder = _datasets(tmp_path)
    monkeypatch.setenv("MM_DATASETS", str(folder))
    d = defs()
    assert sorted(a.key.to_user_string() for a in d.assets) == sorted(f"{n}/{a}" for n in ("shop", "wk") for a in ASSETS)
    groups = {a.key.path[0]: a.group_names_by_key[a.key] for a in d.assets}
    assert groups == {"shop": "shop", "wk": "wk"}
    checks = {(k.asset_key.to_user_string(), k.name) for c in d.asset_checks for k in c.check_keys}
    assert {("shop/raw_sales", "raw_sales_fresh"), ("wk/raw_sales", "raw_sales_fresh"),
            ("wk/model_set", "every_series_reported"), ("shop/batch_predictions", "forecasts_finite_and_bounded")} <= checks
    assert {s.name: s.cron_schedule for s in d.schedules} == {"shop_training_schedule": "0 2 * * *",
                                                              "wk_training_schedule": "0 2 * * 1"}  # weekly: Mondays
    sensors = {s.name: s for s in d.sensors}
    assert set(sensors) == {f"{n}_{s}" for n in ("shop", "wk")
                            for s in ("promote_on_new_model_set", "scoring_after_promotion", "accuracy_after_scoring")}
    assert sensors["wk_promote_on_new_model_set"].asset_key == dg.AssetKey(["wk", "model_set"])
    assert {k for k in d.resources if k.endswith("__warehouse")} == {"shop__warehouse", "wk__warehouse"}
    assert {j.name for j in d.jobs} >= {"shop_pipeline_job", "wk_pipeline_job", "wk_rollback_job", "shop_retrain_failed_job"}
    d.resolve_implicit_global_asset_job_def()
    # Each dataset's resources are its own: the warehouse of one is not the other's.
    assert d.resources["shop__warehouse"].url != d.resources["wk__warehouse"].url

    # Adding a dataset is adding a file; two files naming one dataset are refused, naming both files.
    shutil.copy(folder / "weekly.yaml", folder / "weekly_again.yml")
    with pytest.raises(Exception) as err:
        defs()
    cause = err.value.__cause__ or err.value  # (Dagster wraps it with the component tree)
    assert "weekly.yaml and weekly_again.yml both name dataset 'wk'" in str(cause)


def test_two_datasets_run_by_name_each_into_its_own_home(tmp_path):
    folder = _datasets(tmp_path)
    shop, wk = load_config(folder / "shop.yaml"), load_config(folder / "weekly.yaml")
    write_sales(shop.source.url, shop.source.table, stores=2, items=2, days=200, seed=5)
    write_sales(wk.source.url, wk.source.table, stores=1, items=2, days=100, seed=5, kind="weekly_multikey")

    # Checked before anything runs: a weekly dataset's run dates are its Mondays; names are looked up.
    out = _cli(tmp_path, folder, "run", "--dataset", "wk", "--run-date", DAILY_RUN)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Monday" in out.stderr, out.stderr[-2000:]
    out = _cli(tmp_path, folder, "run", "--dataset", "nope")
    assert out.returncode == 2 and "shop (shop.yaml), wk (weekly.yaml)" in out.stderr, out.stderr[-2000:]

    summaries = {}
    for name in ("shop", "weekly"):  # by dataset name, or by file name
        out = _cli(tmp_path, folder, "run", "--dataset", name)
        assert out.returncode == 0, out.stderr[-3000:]
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        summaries[summary["dataset"]] = summary
    assert summaries["shop"]["run_date"] == DAILY_RUN and summaries["wk"]["run_date"] == WEEKLY_RUN
    for name, cfg in (("shop", shop), ("wk", wk)):
        s = summaries[name]
        assert s["dagster_job"] == f"{name}_pipeline_job" and s["prediction_rows"] == s["series_scored"] * cfg.horizon > 0
        # Every check ran for each dataset; only the warning-level model-quality check may fail on such short data.
        assert len(s["checks"]) == 7 and {c for c, v in s["checks"].items() if v != "passed"} <= {"share_beating_seasonal_naive"}
        home = tmp_path / f"{name}_home"
        assert s["warehouse_url"] == f"sqlite:///{home}/warehouse.db" and (home / "lake").is_dir()
        report = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys).read("SELECT DISTINCT dataset FROM training_report")
        assert report["dataset"].tolist() == [name]  # nothing of the other dataset in this home
    assert not (tmp_path / "mm_home" / "lake").exists()  # $MM_HOME is not where these datasets write

    with dg.DagsterInstance.from_config(str(tmp_path / "instance")) as instance:
        runs = {r.job_name: r for r in instance.get_runs()}
        assert set(runs) == {"shop_pipeline_job", "wk_pipeline_job"}
        for name, run_date in (("shop", DAILY_RUN), ("wk", WEEKLY_RUN)):
            assert runs[f"{name}_pipeline_job"].status == dg.DagsterRunStatus.SUCCESS
            assert runs[f"{name}_pipeline_job"].run_id == summaries[name]["dagster_run_id"]
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey([name, "model_set"]), asset_partitions=[run_date]), limit=1
            ).records
            assert records and records[0].run_id == summaries[name]["dagster_run_id"]
        assert not instance.fetch_materializations(dg.AssetKey("model_set"), limit=1).records  # no unprefixed key
