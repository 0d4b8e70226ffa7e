"""One dataset's asset graph: every name prefixed with the dataset's, so that several datasets
live side by side in one code location (``components.py`` builds one per YAML of the datasets
folder).

The concerns (ingestion/, training/, promotion/, scoring/, accuracy/, operations/) write their
asset and check bodies as plain functions with typed resource parameters, and each module has
``dataset_defs(ds) -> dg.Definitions`` that turns them into one dataset's definitions through
:meth:`Dataset.asset` and :meth:`Dataset.asset_check`. :meth:`Dataset.definitions` collects every
such function under ``mm_platform.defs`` (no list of modules to forget one in).

Names, for a dataset called ``retail``:

- asset keys ``retail/raw_sales`` ..., all in group ``retail``; checks keep their names;
- jobs ``retail_pipeline_job`` (the whole graph, what ``mm-platform run`` runs),
  ``retail_training_job``, ``retail_promotion_job``, ``retail_scoring_job``,
  ``retail_retrain_failed_job``, ``retail_rollback_job``; schedule, sensors likewise prefixed;
- resource keys ``retail__warehouse`` .... Dagster requires one definition per resource key in a
  code location (assets carrying their own ``resource_defs`` under a shared key make the implicit
  asset job fail to build), so the assets' resources are bound under prefixed keys and
  :meth:`Dataset.asset` hands them to the body under its parameter names.
"""

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Any

import dagster as dg

from mm_platform.config import DatasetConfig, config_path, find_dataset, load_config

PIPELINE_JOB = "pipeline_job"
# Parameters of a step body that are not resources.
_NOT_RESOURCES = {"context", "config"}


class Dataset:
    """Names, partitions and resources of one dataset's definitions."""

    def __init__(self, cfg: DatasetConfig, path: str | Path):
        self.cfg = cfg
        self.config_path = str(Path(path).expanduser().resolve())

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> "Dataset":
        """From a config file (default: ``$MM_CONFIG`` or the packaged retail example)."""
        path = config_path(path)
        return cls(load_config(path), path)

    @classmethod
    def named(cls, name: str, folder: str | Path | None = None) -> "Dataset":
        """The dataset called ``name`` in the datasets folder (``$MM_DATASETS``)."""
        cfg, path = find_dataset(name, folder)
        return cls(cfg, path)

    @property
    def name(self) -> str:
        return self.cfg.name

    def key(self, asset: str) -> dg.AssetKey:
        return dg.AssetKey([self.name, asset])

    def prefixed(self, name: str) -> str:
        """A job, schedule or sensor name of this dataset's."""
        return f"{self.name}_{name}"

    def resource_key(self, resource: str) -> str:
        return f"{self.name}__{resource}"

    def selection(self, *assets: str) -> dg.AssetSelection:
        return dg.AssetSelection.assets(*(self.key(a) for a in assets))

    @cached_property
    def partitions(self) -> dg.TimeWindowPartitionsDefinition:
        """Run dates. Series are Spark groups inside one run, not Dagster partitions; the run date
        (the last day of data a run uses) is the partition, so backfills work from the UI. A weekly
        dataset's run dates are one a week, on the weekday of its start_date."""
        if self.cfg.frequency == "daily":
            return dg.DailyPartitionsDefinition(start_date=self.cfg.start_date)
        start = date.fromisoformat(self.cfg.start_date)
        return dg.WeeklyPartitionsDefinition(start_date=self.cfg.start_date, day_offset=(start.weekday() + 1) % 7)

    @cached_property
    def resources(self) -> dict[str, Any]:
        """The dataset's resources under their plain keys (as the step bodies name them)."""
        from mm_platform.defs.resources import build_resources

        return build_resources(self.cfg, self.config_path)

    # (No `from __future__ import annotations` here: Dagster reads the context annotations below.)
    def _bind(self, fn: Callable) -> tuple[list[str], set[str]]:
        names = [p for p in inspect.signature(fn).parameters if p not in _NOT_RESOURCES]
        unknown = sorted(set(names) - set(self.resources))
        if unknown:
            raise TypeError(f"{fn.__name__}: parameters {unknown} are not resources of a dataset ({sorted(self.resources)})")
        return names, {self.resource_key(n) for n in names}

    def _resolved(self, context, names: list[str]) -> dict[str, Any]:
        return {n: getattr(context.resources, self.resource_key(n)) for n in names}

    def asset(self, fn: Callable, *, deps: tuple[str, ...] = (), **kwargs) -> dg.AssetsDefinition:
        """``fn(context, <resources>...)`` as this dataset's asset ``<name>/<fn name>`` (run-date
        partitioned, in the dataset's group; the description is the docstring)."""
        names, keys = self._bind(fn)

        @dg.asset(
            key=self.key(fn.__name__),
            deps=[self.key(d) for d in deps],
            partitions_def=self.partitions,
            group_name=self.name,
            required_resource_keys=keys,
            description=inspect.getdoc(fn),
            **kwargs,
        )
        def _asset(context: dg.AssetExecutionContext):
            return fn(context, **self._resolved(context, names))

        return _asset

    def asset_check(self, fn: Callable, *, asset: str, **kwargs) -> dg.AssetChecksDefinition:
        """``fn(context, <resources>...)`` as the check ``<fn name>`` on this dataset's ``asset``."""
        names, keys = self._bind(fn)

        @dg.asset_check(
            asset=self.key(asset),
            name=fn.__name__,
            partitions_def=self.partitions,
            required_resource_keys=keys,
            description=inspect.getdoc(fn),
            **kwargs,
        )
        def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
            return fn(context, **self._resolved(context, names))

        return _check

    def definitions(self) -> dg.Definitions:
        """Every concern's definitions for this dataset, its resources (prefixed keys) and the
        pipeline job over its whole graph."""
        pipeline = dg.define_asset_job(
            self.prefixed(PIPELINE_JOB),
            selection=dg.AssetSelection.groups(self.name),
            partitions_def=self.partitions,
            description=f"Dataset {self.name}, all of it for one run date: ingest, train, promote, score, the BI "
            "metrics and realized accuracy, with every asset check (what `mm-platform run` runs).",
            tags={"mm_platform/dataset": self.name},
        )
        return dg.Definitions.merge(
            *(build(self) for build in _concerns()),
            dg.Definitions(jobs=[pipeline], resources={self.resource_key(k): v for k, v in self.resources.items()}),
        )


def _concerns() -> list[Callable[["Dataset"], dg.Definitions]]:
    """``dataset_defs`` of every module under mm_platform.defs."""
    import mm_platform.defs

    found = []
    for info in pkgutil.walk_packages(mm_platform.defs.__path__, "mm_platform.defs."):
        build = getattr(importlib.import_module(info.name), "dataset_defs", None)
        if callable(build):
            found.append(build)
    return found
