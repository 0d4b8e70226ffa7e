from datetime import date

import dagster as dg

from mm_platform.core.errors import user_errors_as_failures
from mm_platform.core.vocabulary import NOT_FORECAST, TIER_CHAMPION, TIER_FALLBACK
from mm_platform.defs.dataset import Dataset
from mm_platform.defs.resources import DatasetResource, LakeResource, RegistryResource, WarehouseResource
from mm_platform.steps.promote import promote
from mm_platform.stores.training_sets import training_set_store


@user_errors_as_failures
def promoted_models(
    context: dg.AssetExecutionContext,
    dataset: DatasetResource,
    lake: LakeResource,
    training_registry: RegistryResource,
    production_registry: RegistryResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Applies the promotion rules to each series' newest trained model and copies those that qualify into
    the separate production registry (tier champion); a series left without a production model gets the
    first applicable model of promotion.fallback.chain (tier fallback). Every decision is logged with its
    rule values (promotion_log), the run's coverage in promotion_coverage."""
    cfg = dataset.config
    outcome = promote(
        cfg,
        date.fromisoformat(context.partition_key),
        training_registry.registry(),
        production_registry.registry(writable=True),
        warehouse.warehouse(),
        training_set_store(lake.lake(), cfg),
        decided_by=f"dagster run {context.run_id}",
    )
    d = outcome.decisions
    shown = d[["series_id", "action", "tier", "reasons", "wape", "naive_wape"]].head(50) if len(d) else d
    cov = outcome.coverage
    counts = outcome.coverage_counts()
    uncovered = cov[cov["tier"] == NOT_FORECAST][["series_id", "reason"]] if len(cov) else cov
    return dg.MaterializeResult(
        metadata={
            "promoted": outcome.promoted,
            "rejected": outcome.rejected,
            "already_decided": outcome.already,
            "fallbacks_registered": outcome.fallbacks,
            "coverage_champion": counts[TIER_CHAMPION],
            "coverage_fallback": counts[TIER_FALLBACK],
            "coverage_not_forecast": counts[NOT_FORECAST],
            "not_forecast": dg.MetadataValue.md(
                uncovered.head(50).to_markdown(index=False) if len(uncovered) else "every series has a production model"
            ),
            "rules": dg.MetadataValue.json(cfg.promotion.model_dump()),
            "decisions": dg.MetadataValue.md(shown.to_markdown(index=False) if len(d) else "no new candidates"),
            "production_registry": production_registry.tracking_uri,
        }
    )


def dataset_defs(ds: Dataset) -> dg.Definitions:
    return dg.Definitions(assets=[ds.asset(promoted_models, deps=("model_set", "training_sets"), kinds={"mlflow"})])
