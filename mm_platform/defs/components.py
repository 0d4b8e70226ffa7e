"""Dataset YAMLs as Dagster Components: each dataset becomes its own asset graph (see dataset.py).

``defs/datasets/defs.yaml`` instantiates :class:`ForecastingDatasets` over the datasets folder
(``$MM_DATASETS``, default the packaged examples), so adding a dataset means adding a YAML file
there. :class:`ForecastingDataset` is the same for one file anywhere, in a ``defs.yaml`` of its
own (``dg scaffold defs mm_platform.defs.components.ForecastingDataset <folder>``, then set
``config:``); its dataset is then not one ``mm-platform --dataset`` finds (use ``--config``).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from mm_platform.config import load_datasets
from mm_platform.defs.dataset import Dataset


def _relative_to(context: dg.ComponentLoadContext, path: str) -> Path:
    """A path written in a defs.yaml is relative to that file's folder."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else context.path / p


class ForecastingDataset(dg.Component, dg.Model, dg.Resolvable):
    """One dataset YAML as its own asset graph: asset keys prefixed with the dataset name, its group,
    run-date partitions (daily or weekly), asset checks, schedule, sensors, jobs and resources."""

    config: str = Field(description="the dataset YAML (mm_platform/config.py), relative to this defs.yaml's folder")

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return Dataset.from_file(_relative_to(context, self.config)).definitions()


class ForecastingDatasets(dg.Component, dg.Model, dg.Resolvable):
    """Every dataset YAML (``*.yaml``, ``*.yml``) of a folder, each as its own asset graph
    (:class:`ForecastingDataset`), all in this code location."""

    folder: str | None = Field(
        None, description="folder of dataset YAMLs, relative to this defs.yaml's folder; unset: $MM_DATASETS, "
        "else the packaged examples (the folder `mm-platform run --dataset NAME` looks in)",
    )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        folder = _relative_to(context, self.folder) if self.folder else None
        graphs = [Dataset(cfg, path).definitions() for cfg, path in load_datasets(folder).values()]
        return dg.Definitions.merge(*graphs) if graphs else dg.Definitions()
