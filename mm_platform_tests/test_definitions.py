"""The code location: every dataset YAML of the datasets folder (by default the packaged
examples) becomes its own asset graph through the ForecastingDatasets component; every concern
module under ``defs/`` contributes to each dataset's graph (no per-module lists that could drop
one, and nothing defined once for a single dataset)."""

from __future__ import annotations

import importlib
import pkgutil

import dagster as dg

import mm_platform.defs
from mm_platform.config import load_datasets
from mm_platform.definitions import defs
from mm_platform.defs.dataset import Dataset

ASSETS = ["raw_sales", "training_sets", "model_set", "promoted_models", "batch_predictions", "forecast_metrics",
          "forecast_accuracy"]
JOBS = ["pipeline_job", "training_job", "promotion_job", "scoring_job", "retrain_failed_job", "rollback_job"]
SENSORS = ["promote_on_new_model_set", "scoring_after_promotion", "accuracy_after_scoring"]
DEFINITION_TYPES = (dg.AssetsDefinition, dg.AssetChecksDefinition, dg.JobDefinition, dg.SensorDefinition,
                    dg.ScheduleDefinition, dg.ResourceDefinition, dg.ConfigurableResource)


def _defs_modules():
    for info in pkgutil.walk_packages(mm_platform.defs.__path__, "mm_platform.defs."):
        yield info.name, importlib.import_module(info.name)


def test_the_code_location_holds_one_graph_per_packaged_dataset():
    d = defs()
    names = sorted(load_datasets())
    assert names == ["price_weekly", "retail", "weekly_revenue"]
    keys = [a.key.to_user_string() for a in d.assets]
    assert sorted(keys) == sorted(set(keys)), "an asset is collected twice"
    assert sorted(keys) == sorted(f"{n}/{a}" for n in names for a in ASSETS)
    assert {a.group_names_by_key[a.key] for a in d.assets} == set(names)
    assert {j.name for j in d.jobs} == {f"{n}_{j}" for n in names for j in JOBS}
    assert {s.name for s in d.sensors} == {f"{n}_{s}" for n in names for s in SENSORS}
    assert {s.name for s in d.schedules} == {f"{n}_training_schedule" for n in names}
    assert set(d.resources) == {f"{n}__{r}" for n in names for r in Dataset.named("retail").resources}
    checks = {(k.asset_key.to_user_string(), k.name) for c in d.asset_checks for k in c.check_keys}
    assert ("weekly_revenue/batch_predictions", "prediction_rows_match_horizon") in checks
    assert ("retail/raw_sales", "raw_sales_fresh") in checks
    # Dagster builds the implicit job over every asset (the UI's "materialize" across groups).
    d.resolve_implicit_global_asset_job_def()
    dg.Definitions.validate_loadable(d)
    # Each dataset's run dates follow its frequency; weekly ones fall on Mondays, as the weekly data.
    retail = d.resolve_job_def("retail_pipeline_job").partitions_def
    weekly = d.resolve_job_def("weekly_revenue_pipeline_job").partitions_def
    assert retail.get_first_partition_key() == "2015-01-01" and retail.has_partition_key("2025-12-31")
    assert weekly.get_first_partition_key() == "2015-01-05"
    assert weekly.has_partition_key("2025-12-29") and not weekly.has_partition_key("2025-12-31")
    # The pipeline job (what `mm-platform run` runs) holds its dataset's assets and their checks, only.
    job = d.resolve_job_def("weekly_revenue_pipeline_job")
    nodes = {n.name for n in job.graph.node_defs}
    assert {dg.AssetKey(["weekly_revenue", a]).to_python_identifier() for a in ASSETS} <= nodes
    assert "weekly_revenue__raw_sales_raw_sales_fresh" in nodes and not any(n.startswith("retail") for n in nodes)


def _names(d: dg.Definitions) -> set:
    return {*(a.key for a in d.assets or []), *(k for c in d.asset_checks or [] for k in c.check_keys),
            *(x.name for x in [*(d.jobs or []), *(d.sensors or []), *(d.schedules or [])])}


def test_every_concern_module_builds_per_dataset_definitions():
    built = Dataset.named("retail").definitions()
    for name, module in _defs_modules():
        # Nothing at module level: a definition made once would belong to no dataset.
        module_level = [k for k, v in vars(module).items() if isinstance(v, DEFINITION_TYPES)]
        assert not module_level, f"{name} defines {module_level} at module level"
        source = open(module.__file__).read()
        assert "@dg.definitions" not in source, name
        build = getattr(module, "dataset_defs", None)
        if build is not None:  # and what it builds reaches the dataset's definitions
            part = build(Dataset.named("retail"))
            assert _names(part) <= _names(built), (name, _names(part) - _names(built))


def test_the_warehouse_resource_shares_one_engine_per_step_and_disposes_it(tmp_path, monkeypatch):
    from mm_platform.defs.resources import WarehouseResource
    from mm_platform.stores.warehouse import Warehouse

    disposed = []
    monkeypatch.setattr(Warehouse, "dispose", lambda self: disposed.append(self))
    resource = WarehouseResource(url=f"sqlite:///{tmp_path}/w.db", dataset="d", partition_keys=["k"])
    with dg.build_resources({"warehouse": resource}) as built:
        first = built.warehouse.warehouse()
        assert built.warehouse.warehouse() is first
    assert disposed == [first]
