"""Dagster in production mode: ``deploy/dagster.yaml`` (PostgreSQL run/event/schedule storage
from ``DAGSTER_PG_*`` env vars) in a fresh database, ``dagster-daemon run`` on the repo's
``workspace.yaml`` serving a datasets folder ($MM_DATASETS) of one dataset; materializing its
``retail/model_set`` makes the daemon's sensor launch ``retail_promotion_job`` by itself."""

from __future__ import annotations

import shutil
import time

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus, RunsFilter

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform.stores.registry import production_by_series, production_registry
from mm_platform_tests.conftest import write_config
from mm_platform_tests.test_prod_support import (
    ROOT,
    VENV_BIN,
    pg_database,
    require_postgres,
    run_cli,
    server,
    subprocess_env,
    tail,
)

pytestmark = [pytest.mark.slow, pytest.mark.services]

PARTITION = "2025-12-31"
SENSOR = "retail_promote_on_new_model_set"
PROMOTION_JOB = "retail_promotion_job"
LAUNCH_TIMEOUT = 600  # seconds for the sensor tick + queued run + promotion on a busy machine


@pytest.fixture
def pg_instance(tmp_path, monkeypatch):
    """A DAGSTER_HOME with deploy/dagster.yaml on a fresh PostgreSQL database."""
    require_postgres()
    with pg_database("mm_dagster") as db:
        home = tmp_path / "dagster_home"
        home.mkdir()
        shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
        env = {
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": "5432",
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "",  # trust auth on this machine
            "DAGSTER_PG_DB": db,
        }
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        instance = dg.DagsterInstance.from_config(str(home))
        try:
            yield instance, env
        finally:
            instance.dispose()


def test_sensor_launches_promotion_through_the_daemon(tmp_path, pg_instance):
    instance, dagster_env = pg_instance
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    mm_home = tmp_path / "mm_home"
    mm_home.mkdir()
    config_path = write_config(mm_home, horizon=7)
    cfg = load_config(config_path)
    write_sales(cfg.source.url, cfg.source.table, stores=2, items=4, days=400, seed=3)
    datasets = tmp_path / "datasets"  # the code location serves the datasets of this folder
    datasets.mkdir()
    shutil.copy(config_path, datasets / "retail.yaml")
    env = subprocess_env(**dagster_env, MM_DATASETS=str(datasets), MM_HOME=str(mm_home), SPARK_LOCAL_IP="127.0.0.1")

    log = tmp_path / "daemon.log"
    with server([str(VENV_BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], log, env=env, cwd=ROOT):
        run_cli([VENV_BIN / "dagster", "sensor", "start", SENSOR, "-w", "workspace.yaml"], env, 300)
        run_cli(
            [VENV_BIN / "dagster", "asset", "materialize", "-m", "mm_platform.definitions", "-a", "defs",
             "--select", "retail/raw_sales,retail/training_sets,retail/model_set", "--partition", PARTITION],
            env, 900,
        )
        materialized = instance.get_latest_materialization_event(dg.AssetKey(["retail", "model_set"]))
        assert materialized is not None and materialized.dagster_event.partition == PARTITION

        deadline = time.time() + LAUNCH_TIMEOUT
        run = None
        while time.time() < deadline:
            runs = instance.get_runs(RunsFilter(job_name=PROMOTION_JOB))
            if runs and runs[0].status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
                run = runs[0]
                break
            time.sleep(5)
        assert run is not None, f"the sensor launched no finished {PROMOTION_JOB} in {LAUNCH_TIMEOUT}s:\n{tail(log)}"
        assert run.status == DagsterRunStatus.SUCCESS, tail(log)
        # Every promotion run came from the sensor (nothing else starts the promotion job here).
        assert {r.tags.get("dagster/sensor_name") for r in instance.get_runs(RunsFilter(job_name=PROMOTION_JOB))} == {SENSOR}
        assert run.tags.get("dagster/sensor_name") == SENSOR
        assert run.tags.get("dagster/partition") == PARTITION
        assert run.tags.get("dagster/run_key", "").startswith(materialized.run_id)
    # The sensor-launched run really promoted into the production registry.
    assert production_by_series(production_registry(cfg), cfg.name)
    assert instance.get_latest_materialization_event(dg.AssetKey(["retail", "promoted_models"])).run_id == run.run_id
