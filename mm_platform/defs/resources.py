"""Typed resources, built from one dataset's config (see ``dataset.py`` for how each dataset's
are bound under keys of their own).

Every URL can point at a real service; the defaults are files under ``$MM_HOME``.
"""

from __future__ import annotations

from functools import cached_property

import dagster as dg
from dagster_pyspark import PySparkResource
from pydantic import PrivateAttr

from mm_platform.config import DatasetConfig, load_config
from mm_platform.spark.session import spark_conf, warm_executors
from mm_platform.stores.lake import Lake
from mm_platform.stores.registry import ModelRegistry
from mm_platform.stores.warehouse import Warehouse


class DatasetResource(dg.ConfigurableResource):
    """The dataset/run configuration file; empty means ``$MM_CONFIG`` or the packaged example."""

    config_path: str = ""

    @cached_property
    def config(self) -> DatasetConfig:
        return load_config(self.config_path or None)


class LakeResource(dg.ConfigurableResource):
    url: str

    def lake(self) -> Lake:
        return Lake(self.url)


class SourceDatabaseResource(dg.ConfigurableResource):
    url: str
    table: str


class SparkResource(PySparkResource):
    """dagster-pyspark's session, whose executors on a cluster start warming (their Python
    workers, the lake's filesystem) as soon as the session exists: in ``mm-platform run`` while
    the driver ingests, in a step while it reads the registries."""

    warm_executors: bool = False  # the dataset's spark.warm_executors
    lake_url: str = ""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        super().setup_for_execution(context)
        if self.warm_executors:
            warm_executors(self.spark_session, self.lake_url or None)


class RegistryResource(dg.ConfigurableResource):
    """An MLflow registry. ``role`` is training or production; a production handle is
    read-only unless the step asks for write access (only promotion does)."""

    tracking_uri: str
    artifact_root: str
    experiment: str
    role: str = "training"

    def registry(self, writable: bool = False) -> ModelRegistry:
        return ModelRegistry(self.tracking_uri, self.artifact_root, self.experiment, writable=writable or self.role == "training")


class WarehouseResource(dg.ConfigurableResource):
    """One warehouse (one connection pool) per step execution, disposed when the step ends."""

    url: str
    dataset: str
    partition_keys: list[str]
    _warehouse: Warehouse | None = PrivateAttr(default=None)

    def warehouse(self) -> Warehouse:
        if self._warehouse is None:
            self._warehouse = Warehouse(self.url, self.dataset, self.partition_keys)
        return self._warehouse

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._warehouse is not None:
            self._warehouse.dispose()
            self._warehouse = None


def build_resources(cfg: DatasetConfig, config_path: str = "") -> dict:
    """The resources of dataset ``cfg`` (read from ``config_path``) under their plain keys."""
    s = cfg.storage
    return {
        "dataset": DatasetResource(config_path=config_path),
        "pyspark": SparkResource(spark_config=spark_conf(cfg.spark), warm_executors=cfg.spark.warm_executors,
                                 lake_url=s.lake_url),
        "lake": LakeResource(url=s.lake_url),
        "source_db": SourceDatabaseResource(url=cfg.source.url, table=cfg.source.table),
        "training_registry": RegistryResource(
            tracking_uri=s.training_registry_uri, artifact_root=s.training_artifact_root, experiment=f"{cfg.name}-training"
        ),
        "production_registry": RegistryResource(
            tracking_uri=s.production_registry_uri,
            artifact_root=s.production_artifact_root,
            experiment=f"{cfg.name}-production",
            role="production",
        ),
        "warehouse": WarehouseResource(url=s.warehouse_url, dataset=cfg.name, partition_keys=cfg.keys),
    }
