"""Dagster as the operating surface (issue #19): `mm-platform run` records its run (as the
dataset's pipeline job), the six assets' materializations (keys prefixed with the dataset's
name) and the asset checks in the persistent instance of $DAGSTER_HOME; a
failed blocking check stops the run with one line and exit 2; `retrain --failed` and
`rollback` are Dagster jobs launched through the instance. Real Spark, SQLite, MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform.stores.registry import ModelRegistry, production_by_series
from mm_platform_tests.conftest import write_config

RUN_DATE = "2025-12-31"  # write_sales' default end date
ASSETS = ["raw_sales", "training_sets", "model_set", "promoted_models", "batch_predictions", "forecast_metrics"]
CHECKS = {"raw_sales_fresh", "every_series_reported", "share_beating_seasonal_naive",
          "promoted_series_have_production_models", "prediction_rows_match_horizon", "forecasts_finite_and_bounded",
          "no_drifting_series"}


def _cli(home: Path, *args: str, dagster_home: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MM_CONFIG", "DAGSTER_HOME", "MM_DEBUG")}
    env["MM_HOME"] = str(home)
    if dagster_home is not None:
        env["DAGSTER_HOME"] = str(dagster_home)
    return subprocess.run([sys.executable, "-m", "mm_platform.cli", *args], cwd=home, env=env,
                          capture_output=True, text=True, timeout=900)


def _evaluations(instance: dg.DagsterInstance, run_id: str) -> dict[str, object]:
    logs = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    return {e.dagster_event.event_specific_data.check_name: e.dagster_event.event_specific_data for e in logs}


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("surface")
    cfg_path = write_config(home, horizon=7)
    cfg = load_config(cfg_path)
    write_sales(cfg.source.url, cfg.source.table, stores=2, items=3, days=300, seed=5)
    dagster_home = home / "instance"  # does not exist yet: created with a dagster.yaml
    out = _cli(home, "run", "--config", str(cfg_path), "--run-date", RUN_DATE, dagster_home=dagster_home)
    assert out.returncode == 0, out.stderr[-3000:]
    return home, cfg_path, cfg, dagster_home, json.loads(out.stdout.strip().splitlines()[-1])


def test_run_lands_in_the_instance_with_materializations_and_checks(recorded_run):
    _, _, _, dagster_home, summary = recorded_run
    assert (dagster_home / "dagster.yaml").exists()
    assert summary["checks"] == dict.fromkeys(CHECKS, "passed"), summary
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        assert [r.run_id for r in runs] == [summary["dagster_run_id"]]
        run = runs[0]
        assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags["mm_platform/launched_by"] == "mm-platform run"
        assert run.job_name == summary["dagster_job"] == "retail_pipeline_job"  # a named job, not an ephemeral one
        # Tagged with the code location as Dagster's own launches are: the UI lists it on the job's page.
        assert run.tags[".dagster/repository"] == "__repository__@mm_platform"
        for asset in ASSETS:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(["retail", asset]), asset_partitions=[RUN_DATE]), limit=1
            ).records
            assert records and records[0].run_id == run.run_id, asset
        mat = instance.fetch_materializations(dg.AssetKey(["retail", "model_set"]), limit=1).records[0]
        assert mat.asset_materialization.metadata["series"].value == 6  # the metadata reaches the UI too
        evaluations = _evaluations(instance, run.run_id)
        assert set(evaluations) == CHECKS
        assert all(e.passed for e in evaluations.values())
        assert evaluations["prediction_rows_match_horizon"].metadata["expected_rows"].value == \
            summary["series_scored"] * 7 == summary["prediction_rows"]


def test_retrain_and_rollback_are_jobs_recorded_in_the_default_instance(recorded_run):
    home, cfg_path, cfg, _, _ = recorded_run
    # Without $DAGSTER_HOME the CLI records into $MM_HOME/dagster, the folder `make dev` opens.
    out = _cli(home, "retrain", "--failed", "--config", str(cfg_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout) == {"run_date": RUN_DATE, "retrained": 0, "note": "no failed series"}

    # A second production version of a promoted series, so that there is one to roll back from.
    prod = ModelRegistry(cfg.storage.production_registry_uri, cfg.storage.production_artifact_root, f"{cfg.name}-production")
    sid, current = sorted(production_by_series(prod, cfg.name).items())[0]
    prod.register_many([(current.name, prod.read_artifact(current), dict(current.tags))], "again", {}, alias="production")
    assert production_by_series(prod, cfg.name)[sid].version == current.version + 1
    out = _cli(home, "rollback", "--series", sid, "--config", str(cfg_path))
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout)
    assert row["series_id"] == sid and row["production_version"] == current.version
    assert production_by_series(prod, cfg.name)[sid].version == current.version

    # A user error inside the job: one line, exit 2, and a failed run in the event log.
    out = _cli(home, "rollback", "--series", "store=99,item=99", "--config", str(cfg_path))
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr[-3000:]
    assert "store=99,item=99" in out.stderr

    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = {(r.job_name, r.status) for r in instance.get_runs()}
        assert runs == {("retail_retrain_failed_job", dg.DagsterRunStatus.SUCCESS),
                        ("retail_rollback_job", dg.DagsterRunStatus.SUCCESS), ("retail_rollback_job", dg.DagsterRunStatus.FAILURE)}
        rollback_run = next(r for r in instance.get_runs()
                            if r.status == dg.DagsterRunStatus.SUCCESS and r.job_name == "retail_rollback_job")
        assert rollback_run.run_config["ops"]["rollback_series"]["config"]["series"] == [sid]
        observed = instance.all_logs(rollback_run.run_id, of_type=dg.DagsterEventType.ASSET_OBSERVATION)
        assert [e.dagster_event.asset_key for e in observed] == [dg.AssetKey(["retail", "promoted_models"])]


def test_a_failed_blocking_check_stops_the_run_with_one_line(tmp_path):
    cfg_path = write_config(tmp_path, horizon=7)
    cfg = load_config(cfg_path)
    write_sales(cfg.source.url, cfg.source.table, stores=1, items=2, days=200, seed=3)
    # Ten days after the newest actual: raw_sales is stale (checks.max_staleness_periods is 1).
    out = _cli(tmp_path, "run", "--config", str(cfg_path), "--run-date", "2026-01-10", dagster_home=tmp_path / "instance")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert "raw_sales_fresh" in lines[0] and "2025-12-31" in lines[0], lines[0]
    with dg.DagsterInstance.from_config(str(tmp_path / "instance")) as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert not _evaluations(instance, run.run_id)["raw_sales_fresh"].passed
        # Blocking: nothing downstream of raw_sales ran.
        assert not instance.fetch_materializations(dg.AssetKey(["retail", "model_set"]), limit=1).records
