from datetime import date

import dagster as dg
from dagster_pyspark import PySparkResource

from mm_platform.core.errors import user_errors_as_failures
from mm_platform.core.vocabulary import SCORED, SCORING_FAILED
from mm_platform.defs.dataset import Dataset
from mm_platform.defs.plots import png_markdown, sample_forecasts_png
from mm_platform.defs.resources import DatasetResource, LakeResource, RegistryResource, WarehouseResource
from mm_platform.steps.score import score_and_write
from mm_platform.stores.training_sets import training_set_store


@user_errors_as_failures
def batch_predictions(
    context: dg.AssetExecutionContext,
    dataset: DatasetResource,
    lake: LakeResource,
    pyspark: PySparkResource,
    production_registry: RegistryResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Scores every series with its production model (found by tags in the production registry) for the
    configured horizon; the run date's rows in the warehouse `predictions` and `scoring_report` tables are
    replaced in one transaction. A series whose model fails is reported, not fatal, up to the `scoring`
    error threshold."""
    cfg = dataset.config
    run_date = date.fromisoformat(context.partition_key)
    spark = pyspark.spark_session
    outcome = score_and_write(
        spark, lake.lake(), cfg, run_date, production_registry.registry(), warehouse.warehouse(), context.run_id
    )
    report = outcome.report
    for row in report[report["status"] == SCORING_FAILED].head(20).itertuples():
        context.log.error(f"series {row.series_id} not scored: {row.reason}")
    problems = report[report["status"] != SCORED][["series_id", "status", "tier", "reason"]]
    sample = sorted(report.loc[report["status"] == SCORED, "series_id"])[:4]
    preds = outcome.sample(sample)
    # (read with pyarrow: a Spark job only to draw a plot would cost seconds of JVM time)
    history = training_set_store(lake.lake(), cfg).history(run_date, sample) if sample else None
    return dg.MaterializeResult(
        metadata={
            "prediction_rows": outcome.rows_written,
            "series_scored": outcome.scored,
            "series_failed": outcome.failed,
            "series_skipped": outcome.skipped,
            # coverage: who forecast the series (v_coverage has each series and why)
            "series_scored_by_tier": dg.MetadataValue.json(outcome.by_tier()),
            "horizon": cfg.horizon,
            "warehouse_tables": "predictions, scoring_report",
            "sample_forecasts": dg.MetadataValue.md(
                png_markdown(sample_forecasts_png(history, preds), "sample forecasts")
            ),
            "not_scored": dg.MetadataValue.md(
                problems.head(50).to_markdown(index=False) if len(problems) else "every series was scored"
            ),
            "preview": dg.MetadataValue.md(preds.head(10).to_markdown(index=False) if len(preds) else "no rows"),
        }
    )


@user_errors_as_failures
def forecast_metrics(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """Aggregated accuracy, run and coverage metrics (`forecast_metrics`) and the BI views
    (v_latest_predictions, v_series_accuracy, v_scoring_report, v_run_summary, v_promotion_log,
    v_coverage)."""
    row = warehouse.warehouse().refresh_metrics(date.fromisoformat(context.partition_key))
    return dg.MaterializeResult(metadata={k: v for k, v in row.items() if k not in ("dataset", "run_date") and v is not None})


def dataset_defs(ds: Dataset) -> dg.Definitions:
    eager = dg.AutomationCondition.eager()  # follow each promotion (the scoring sensor evaluates it)
    return dg.Definitions(
        assets=[
            ds.asset(batch_predictions, deps=("promoted_models", "training_sets"), kinds={"spark", "sql"},
                     automation_condition=eager),
            ds.asset(forecast_metrics, deps=("batch_predictions",), kinds={"sql"}, automation_condition=eager),
        ],
    )
