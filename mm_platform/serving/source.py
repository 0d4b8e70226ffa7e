"""Read-only access to the production registry for one dataset: find a series' production
model (``ModelRegistry.aliased_version``, confirmed by its identity tags), check which version
the ``production`` alias points at in batches (``aliased_versions``), and load a verified
artifact into a :class:`PreparedModel`. The registry module owns how those reads are done
(direct queries on SQL-backed registries, MLflow's client API otherwise). All of it is
blocking I/O; the cache runs it on a small thread pool.
"""

from __future__ import annotations

import json
import logging

from mm_platform.core.vocabulary import PRODUCTION_ALIAS, identity_tags, model_name, series_id
from mm_platform.serving.model import PreparedModel
from mm_platform.stores.registry import ModelRegistry, RegisteredModel

log = logging.getLogger(__name__)

CHECK_BATCH = 500  # registered models per version check (the cache's unit of work)


class ProductionSource:
    def __init__(self, registry: ModelRegistry, dataset: str, keys: list[str]):
        if registry.writable:
            raise ValueError("serving reads the production registry through a read-only handle")
        self.registry = registry
        self.dataset = dataset
        self.keys = list(keys)

    # -- which model ------------------------------------------------------------------------

    def lookup(self, keys: dict[str, str]) -> RegisteredModel | None:
        """The version the series' ``production`` alias points at, or None.

        The registered model's name follows ``registry.model_name`` (a direct lookup, no
        search); the version's tags (dataset, series id, key values) must confirm the series.
        """
        name = model_name(self.dataset, keys)
        model = self.registry.aliased_version(name, PRODUCTION_ALIAS)
        if model is None:
            return None
        expected = identity_tags(self.dataset, keys)
        mismatch = {k: model.tags.get(k) for k, v in expected.items() if model.tags.get(k) != v}
        if mismatch:
            log.warning("model %s v%s does not carry the tags of series %s: %s", name, model.version, series_id(keys), mismatch)
            return None
        return model

    def production_versions(self, names: list[str]) -> dict[str, int | None]:
        """Which version each registered model's ``production`` alias points at now (None: gone)."""
        return self.registry.aliased_versions(names, PRODUCTION_ALIAS)

    # -- loading --------------------------------------------------------------------------------
    def load(self, model: RegisteredModel) -> tuple[PreparedModel, int]:
        """The verified artifact (sha256 checked) as a PreparedModel, and the artifact's size."""
        data = self.registry.read_artifact(model)
        return PreparedModel(json.loads(data)), len(data)

    def warm_up(self) -> None:
        """Open the registry connection and import the model code (no model is loaded)."""
        import mm_platform.forecasting.prophet_fast  # noqa: F401  (scipy/pandas imports)

        self.production_versions([f"{self.dataset}.__warm_up__"])
