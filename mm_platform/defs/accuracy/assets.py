from datetime import date

import dagster as dg

from mm_platform.core.errors import user_errors_as_failures
from mm_platform.defs.dataset import Dataset
from mm_platform.defs.resources import DatasetResource, LakeResource, RegistryResource, WarehouseResource
from mm_platform.steps.accuracy import act_on_drift, evaluate_accuracy

DRIFT_CHECK = "no_drifting_series"


@user_errors_as_failures
def forecast_accuracy(
    context: dg.AssetExecutionContext,
    dataset: DatasetResource,
    lake: LakeResource,
    production_registry: RegistryResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Realized accuracy: the forecasts published on the run dates of the last accuracy.lookback_days
    against the actuals that have arrived in the lake since, per series and forecast run date (WAPE, bias,
    interval coverage, seasonal naive's WAPE) in the warehouse table forecast_accuracy (views
    v_forecast_accuracy, v_accuracy_over_time). Series whose realized WAPE drifted are flagged in
    drift_log and the configured actions (accuracy.drift.actions) taken."""
    cfg = dataset.config
    as_of = date.fromisoformat(context.partition_key)
    wh = warehouse.warehouse()
    outcome = evaluate_accuracy(lake.lake(), cfg, as_of, wh, production_registry.registry())
    flags = act_on_drift(cfg, as_of, outcome.rows, production_registry.registry(writable=True), wh,
                         decided_by=f"dagster run {context.run_id} (drift)")
    shown = flags[["series_id", "model_version", "realized_wape", "estimated_wape", "naive_wape", "reasons", "actions"]] \
        if len(flags) else flags
    return dg.MaterializeResult(
        metadata={
            "forecast_run_dates_evaluated": len(outcome.run_dates),
            **{k: v for k, v in outcome.summary.items() if v is not None},
            "drifting_series": len(flags),
        },
        check_results=[dg.AssetCheckResult(
            check_name=DRIFT_CHECK,
            passed=not len(flags),
            severity=dg.AssetCheckSeverity.WARN,
            description=None if not len(flags) else f"{len(flags)} series drifted; actions: {cfg.accuracy.drift.actions}",
            metadata={"drifting_series": len(flags),
                      "flags": dg.MetadataValue.md(shown.head(50).to_markdown(index=False) if len(flags) else "none")},
        )],
    )


def dataset_defs(ds: Dataset) -> dg.Definitions:
    drift = dg.AssetCheckSpec(DRIFT_CHECK, asset=ds.key("forecast_accuracy"),
                              description="No production model's realized accuracy drifted (accuracy.drift).")
    return dg.Definitions(
        assets=[
            # eager: refreshed after each scoring run and each new ingestion of actuals
            ds.asset(forecast_accuracy, deps=("raw_sales", "batch_predictions"), kinds={"sql"},
                     automation_condition=dg.AutomationCondition.eager(), check_specs=[drift]),
        ],
    )
