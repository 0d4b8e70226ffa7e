"""Two MLflow tracking servers (training and production) on 127.0.0.1, each with its own fresh
PostgreSQL backend store and its artifact root in a (temporary) lake folder; the pipeline
reaches them only through ``storage.training_registry_uri``/``production_registry_uri``.
The production server is written by promotion and nothing else."""

from __future__ import annotations

import contextlib
from pathlib import Path

import dagster as dg
import pytest
from mlflow import MlflowClient

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform.defs.dataset import Dataset
from mm_platform.defs.resources import build_resources
from mm_platform.stores.registry import (
    ReadOnlyRegistryError,
    production_by_series,
    production_registry,
    training_registry,
)
from mm_platform.stores.warehouse import Warehouse
from mm_platform_tests.conftest import write_config
from mm_platform_tests.test_end_to_end import RUN_DATE
from mm_platform_tests.test_prod_support import (
    PG_SERVER,
    VENV_BIN,
    free_port,
    pg_database,
    require_postgres,
    server,
    wait_port,
)

pytestmark = [pytest.mark.slow, pytest.mark.services]

TRAINING_ASSETS = ["raw_sales", "training_sets", "model_set"]
PROMOTION_AND_SCORING = ["promoted_models", "batch_predictions", "forecast_metrics"]


@contextlib.contextmanager
def mlflow_server(tmp: Path, name: str, artifact_root: Path):
    """``mlflow server`` on a fresh PostgreSQL database; artifacts go straight to the lake
    folder (``--default-artifact-root``), which clients write too (``--no-serve-artifacts``)."""
    with pg_database(f"mm_mlflow_{name}") as db:
        port = free_port()
        artifact_root.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(VENV_BIN / "mlflow"), "server",
            "--backend-store-uri", f"{PG_SERVER}/{db}",
            "--default-artifact-root", artifact_root.as_uri(),
            "--no-serve-artifacts",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ]
        log = tmp / f"mlflow-{name}.log"
        with server(cmd, log, env=None, cwd=tmp) as proc:
            yield f"http://127.0.0.1:{port}", port, proc, log


def _materialize(cfg, path, selection):
    ds = Dataset.from_file(path)
    graph = ds.definitions()
    return dg.materialize(
        list(graph.assets), selection=[ds.key(a) for a in selection], partition_key=str(RUN_DATE),
        resources=graph.resources, raise_on_error=True,
    )


def test_pipeline_on_two_mlflow_servers(tmp_path, spark):
    require_postgres()
    lake = tmp_path / "lake"
    with (
        mlflow_server(tmp_path, "training", lake / "mlflow" / "training") as (training_uri, t_port, t_proc, t_log),
        mlflow_server(tmp_path, "production", lake / "mlflow" / "production") as (production_uri, p_port, p_proc, p_log),
    ):
        wait_port(t_port, 300, t_proc, t_log)  # migrations of a fresh backend store first
        wait_port(p_port, 300, p_proc, p_log)
        path = write_config(
            tmp_path,
            horizon=7,
            promotion={"fallback": {"enabled": False}},  # every production version is a promoted training version
            storage={
                "lake_url": str(lake),
                "training_registry_uri": training_uri,
                "training_artifact_root": str(lake / "mlflow" / "training"),
                "production_registry_uri": production_uri,
                "production_artifact_root": str(lake / "mlflow" / "production"),
            },
        )
        cfg = load_config(path)
        write_sales(cfg.source.url, cfg.source.table, stores=2, items=4, days=400, seed=3)
        prod_client = MlflowClient(tracking_uri=production_uri, registry_uri=production_uri)

        # Training writes the training server only; steps other than promotion get a
        # read-only handle on production.
        _materialize(cfg, path, TRAINING_ASSETS)
        trained = training_registry(cfg).latest_by_series(cfg.name)
        assert len(trained) >= 4
        assert all(m.source.startswith((lake / "mlflow" / "training").as_uri()) for m in trained.values())
        assert prod_client.search_model_versions("") == [] and prod_client.search_registered_models() == []
        read_only = build_resources(cfg, str(path))["production_registry"].registry()
        with pytest.raises(ReadOnlyRegistryError):
            read_only.register_many([("retail.x", b"{}", {"dataset": "retail"})], "not allowed", {})
        with pytest.raises(ReadOnlyRegistryError):
            read_only.set_production(next(iter(trained.values())))
        assert prod_client.search_model_versions("") == []

        _materialize(cfg, path, PROMOTION_AND_SCORING)
        wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
        try:
            promoted = wh.read("SELECT * FROM promotion_log WHERE action = 'promoted'")
            preds = wh.read("SELECT * FROM predictions")
        finally:
            wh.dispose()
        versions = prod_client.search_model_versions("")
        assert len(versions) == len(promoted) > 0
        for mv in versions:  # every production version is a promotion of a training version
            assert mv.tags["training_version"] == str(trained[mv.tags["series_id"]].version)
            assert mv.tags["training_registry"] == training_uri
            assert "promot" in prod_client.get_run(mv.run_id).info.run_name  # the run the promotion step made
            assert mv.source.startswith((lake / "mlflow" / "production").as_uri())
        prod = production_by_series(production_registry(cfg), cfg.name)
        assert set(prod) == set(promoted["series_id"]) == set(preds["series_id"])
        assert len(preds) == cfg.horizon * len(prod)
        # The artifacts live in the lake folders, byte-identical between the registries.
        sid, mv = next(iter(prod.items()))
        assert production_registry(cfg).read_artifact(mv) == training_registry(cfg).read_artifact(trained[sid])
        assert list((lake / "mlflow" / "production").rglob("*.json"))

        # A rerun for the same date neither retrains nor re-promotes anything.
        _materialize(cfg, path, TRAINING_ASSETS + PROMOTION_AND_SCORING)
        assert len(prod_client.search_model_versions("")) == len(versions)
        assert len(training_registry(cfg).search(cfg.name)) == len(trained)
