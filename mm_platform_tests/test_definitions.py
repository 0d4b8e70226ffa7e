"""The code location composes everything under ``defs/``: every module-level job, schedule,
sensor and asset there reaches the Definitions (no per-module lists that could drop one)."""

from __future__ import annotations

import importlib
import pkgutil

import dagster as dg

import mm_platform.defs
from mm_platform.definitions import defs


def _module_level(kind) -> set[str]:
    names = set()
    for info in pkgutil.walk_packages(mm_platform.defs.__path__, "mm_platform.defs."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, kind) and getattr(value, "__module__", module.__name__) in (module.__name__, None):
                names.add(value.name)
    return names


def test_every_module_level_definition_is_collected():
    d = defs()
    jobs = {j.name for j in d.jobs}
    assert _module_level(dg.SensorDefinition) <= {s.name for s in d.sensors}
    assert _module_level(dg.ScheduleDefinition) <= {s.name for s in d.schedules}
    assert {"daily_training_job", "promotion_job", "scoring_job"} <= jobs
    keys = [a.key.to_user_string() for a in d.assets]
    assert sorted(keys) == sorted(set(keys)), "an asset is collected twice"
    assert {"raw_sales", "training_sets", "model_set", "promoted_models", "batch_predictions", "forecast_metrics"} <= set(keys)


def test_no_defs_module_declares_its_own_definitions_list():
    for info in pkgutil.walk_packages(mm_platform.defs.__path__, "mm_platform.defs."):
        if info.name == "mm_platform.defs.resources":
            continue  # resources are not module-level definitions: Dagster's idiom is one @definitions there
        source = importlib.import_module(info.name).__file__
        assert "@dg.definitions" not in open(source).read(), info.name


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
