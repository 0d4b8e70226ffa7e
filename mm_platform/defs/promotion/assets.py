from datetime import date

import dagster as dg

from mm_platform.defs.partitions import run_dates
from mm_platform.defs.resources import DatasetResource, RegistryResource, WarehouseResource
from mm_platform.errors import user_errors_as_failures
from mm_platform.pipeline import promote


@dg.asset(
    deps=["model_set"],
    partitions_def=run_dates,
    group_name="promotion",
    kinds={"mlflow"},
    description="Applies the promotion rules to each series' newest trained model and copies those that "
    "qualify into the separate production registry; every decision is logged with its rule values.",
)
@user_errors_as_failures
def promoted_models(
    context: dg.AssetExecutionContext,
    dataset: DatasetResource,
    training_registry: RegistryResource,
    production_registry: RegistryResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    cfg = dataset.config
    outcome = promote(
        cfg,
        date.fromisoformat(context.partition_key),
        training_registry.registry(),
        production_registry.registry(writable=True),
        warehouse.warehouse(),
        decided_by=f"dagster run {context.run_id}",
    )
    d = outcome.decisions
    shown = d[["series_id", "action", "reasons", "wape", "naive_wape"]].head(50) if len(d) else d
    return dg.MaterializeResult(
        metadata={
            "promoted": outcome.promoted,
            "rejected": outcome.rejected,
            "already_decided": outcome.already,
            "rules": dg.MetadataValue.json(cfg.promotion.model_dump()),
            "decisions": dg.MetadataValue.md(shown.to_markdown(index=False) if len(d) else "no new candidates"),
            "production_registry": production_registry.tracking_uri,
        }
    )
