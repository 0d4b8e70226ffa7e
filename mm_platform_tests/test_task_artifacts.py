"""Training tasks write the models into the model set's registry run themselves, and the
driver registers their references: no model travels to the driver (issue #18)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from mm_platform.config import load_config
from mm_platform.core.vocabulary import METRICS, TAG_SHA256, TAG_TRAINING_RUN_ID, TRAINED
from mm_platform.datagen import write_sales
from mm_platform.spark.train import MODEL_COLUMNS
from mm_platform.steps.ingest import ingest
from mm_platform.steps.train import build_training_sets, train_and_register
from mm_platform.stores.artifacts import TaskArtifacts, local_path, read_verified
from mm_platform.stores.lake import Lake
from mm_platform.stores.registry import training_registry
from mm_platform.stores.training_sets import training_set_store
from mm_platform.stores.warehouse import Warehouse
from mm_platform_tests.conftest import write_config

RUN = date(2025, 12, 31)


def _setup(tmp_path, spark, **over):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = load_config(write_config(tmp_path, **over))
    write_sales(cfg.source.url, "sales", 2, 4, 220, seed=21)
    lake = Lake(cfg.storage.lake_url)
    ingest(cfg, lake, cfg.source.url, RUN)
    build_training_sets(spark, lake, cfg, RUN)
    return cfg, lake


def _models(registry, dataset: str) -> dict[str, bytes]:
    return {m.series_id: registry.read_artifact(m) for m in registry.latest_by_series(dataset).values()}


def test_tasks_write_the_models_and_the_driver_registers_references(tmp_path, spark, monkeypatch):
    cfg, lake = _setup(tmp_path / "tasks", spark)
    seen = []
    import mm_platform.steps.train as train_step

    real = train_step.train_with_shared

    def spy(*args, **kwargs):
        seen.append(out := real(*args, **kwargs))
        return out

    monkeypatch.setattr(train_step, "train_with_shared", spy)
    registry = training_registry(cfg)
    outcome = train_and_register(spark, lake, cfg, RUN, registry, Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys), "r1")
    (results,) = seen
    trained = results[results["status"] == TRAINED]
    assert outcome.registered == len(trained) >= 3
    # what came back to the driver: references, no model
    assert (trained["model_json"] == "").all() and trained["model_source"].str.endswith(".json").all()
    run_ids = set()
    for m in registry.latest_by_series(cfg.name).values():
        path = Path(local_path(m.source))
        assert path.parent.name == "models" and path.parent.parent.name == "artifacts"  # the run's own folder
        run_ids.add(m.run_id)
        assert json.loads(read_verified(m.source, m.tags[TAG_SHA256]))
    assert len(run_ids) == 1
    assert registry.client.get_run(run_ids.pop()).info.status == "FINISHED"
    # one file a registered model, nothing else
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(Path(local_path(m.source)).name
                                                                 for m in registry.latest_by_series(cfg.name).values())
    # the report holds no model column
    report = outcome.report
    assert not set(MODEL_COLUMNS) & set(report.columns)

    # the same models as when the driver writes them
    cfg2, lake2 = _setup(tmp_path / "driver", spark, storage={"model_artifacts": "driver"})
    registry2 = training_registry(cfg2)
    seen.clear()
    train_and_register(spark, lake2, cfg2, RUN, registry2, Warehouse(cfg2.storage.warehouse_url, cfg2.name, cfg2.keys), "r2")
    assert (seen[0].loc[seen[0]["status"] == TRAINED, "model_json"] != "").all()
    assert _models(registry, cfg.name) == _models(registry2, cfg2.name)
    # tags equal apart from the run
    a = {m.series_id: m.tags for m in registry.latest_by_series(cfg.name).values()}
    b = {m.series_id: m.tags for m in registry2.latest_by_series(cfg2.name).values()}
    drop = (TAG_TRAINING_RUN_ID,)
    assert {s: {k: v for k, v in t.items() if k not in drop} for s, t in a.items()} == \
           {s: {k: v for k, v in t.items() if k not in drop} for s, t in b.items()}


def test_a_failed_model_set_run_drops_what_its_tasks_wrote(tmp_path, spark):
    cfg, lake = _setup(tmp_path, spark)
    registry = training_registry(cfg)
    run = registry.begin_run("t", {})
    results = training_set_store(lake, cfg).train(spark, RUN, artifacts=run.task_artifacts())
    folder = Path(run.task_artifacts().folder)
    assert len(list(folder.glob("*.json"))) == (results["status"] == TRAINED).sum() >= 3
    registry.end_run(run, failed=True)  # as train_and_register does over the error threshold
    assert not folder.exists()
    assert registry.client.get_run(run.run_id).info.status == "FAILED"
    assert registry.latest_by_series(cfg.name) == {}


def test_task_artifacts_only_on_a_path():
    assert TaskArtifacts.under("mlflow-artifacts:/1/abc/artifacts") is None
    assert TaskArtifacts.under("file:///tmp/x/artifacts").folder == "/tmp/x/artifacts/models"
    with pytest.raises(ValueError):
        TaskArtifacts("abfs://c/x")


def test_results_without_model_references_still_register(tmp_path):
    """Results with only ``model_json`` (the driver's path, and fakes) register as before."""
    from mm_platform.steps.train import register_model_set
    from mm_platform_tests.fakes import FakeRegistry

    cfg = load_config(write_config(tmp_path))
    results = pd.DataFrame([{"store": 1, "item": 1, "series_id": "store=1,item=1", "status": TRAINED, "reason": "",
                             "n_obs": 10, "last_date": "2025-12-31", "fingerprint": "f", **dict.fromkeys(METRICS, 0.1),
                             "fit_seconds": 0.0, "model_json": json.dumps({"family": "x"})}])
    reg = FakeRegistry()
    out = register_model_set(results, cfg, reg, RUN, "r")
    assert out.registered == 1
