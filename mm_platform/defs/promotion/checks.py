"""Quality gate on promotion: a series promoted is a series with a production model."""

from datetime import date

import dagster as dg

from mm_platform.core.vocabulary import FALLBACK_PROMOTED, PROMOTED
from mm_platform.defs.dataset import Dataset
from mm_platform.defs.resources import DatasetResource, RegistryResource, WarehouseResource
from mm_platform.stores.registry import production_by_series

SHOWN = 20


def promoted_series_have_production_models(
    context: dg.AssetCheckExecutionContext,
    dataset: DatasetResource,
    production_registry: RegistryResource,
    warehouse: WarehouseResource,
) -> dg.AssetCheckResult:
    """Every series the promotion log says was promoted (up to the run date) has a model under the
    production alias in the production registry: scoring would otherwise drop it without a word."""
    cfg = dataset.config
    run_date = date.fromisoformat(context.partition_key)
    wh = warehouse.warehouse()  # (the resource disposes it when the step ends)
    promoted = set(wh.series_with_action([PROMOTED, FALLBACK_PROMOTED], until=run_date))
    in_production = set(production_by_series(production_registry.registry(), cfg.name))
    orphaned = sorted(promoted - in_production)
    return dg.AssetCheckResult(
        passed=not orphaned,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if not orphaned else (
            f"{len(orphaned)} promoted series have no production model in {production_registry.tracking_uri} "
            f"(e.g. {', '.join(orphaned[:3])})"
        ),
        metadata={"promoted_series": len(promoted), "series_in_production": len(in_production),
                  "without_production_model": dg.MetadataValue.json(orphaned[:SHOWN])},
    )


def dataset_defs(ds: Dataset) -> dg.Definitions:
    return dg.Definitions(
        asset_checks=[ds.asset_check(promoted_series_have_production_models, asset="promoted_models", blocking=True)]
    )
