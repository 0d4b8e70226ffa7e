from datetime import date

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import functions as F

from mm_platform.defs.partitions import run_dates
from mm_platform.defs.resources import DatasetResource, LakeResource, RegistryResource, WarehouseResource
from mm_platform.errors import user_errors_as_failures
from mm_platform.plots import png_markdown, sample_forecasts_png
from mm_platform.scoring import score_and_write
from mm_platform.spark_jobs import read_training_set


@dg.asset(
    deps=["promoted_models", "training_sets"],
    partitions_def=run_dates,
    group_name="scoring",
    kinds={"spark", "sql"},
    automation_condition=dg.AutomationCondition.eager(),
    description="Scores every series with its production model (found by tags in the production registry) "
    "for the configured horizon; the run date's rows in the warehouse `predictions` and `scoring_report` "
    "tables are replaced in one transaction. A series whose model fails is reported, not fatal, up to "
    "the `scoring` error threshold.",
)
@user_errors_as_failures
def batch_predictions(
    context: dg.AssetExecutionContext,
    dataset: DatasetResource,
    lake: LakeResource,
    pyspark: PySparkResource,
    production_registry: RegistryResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    cfg = dataset.config
    run_date = date.fromisoformat(context.partition_key)
    spark = pyspark.spark_session
    outcome = score_and_write(
        spark, lake.lake(), cfg, run_date, production_registry.registry(), warehouse.warehouse(), context.run_id
    )
    preds, report = outcome.predictions, outcome.report
    for row in report[report["status"] == "failed"].head(20).itertuples():
        context.log.error(f"series {row.series_id} not scored: {row.reason}")
    problems = report[report["status"] != "scored"][["series_id", "status", "reason"]]
    sample = sorted(preds["series_id"].unique())[:4] if len(preds) else []
    history = (
        read_training_set(spark, lake.lake(), cfg, run_date).where(F.col("series_id").isin(sample)).select("series_id", "ds", "y").toPandas()
        if sample
        else None
    )
    return dg.MaterializeResult(
        metadata={
            "prediction_rows": outcome.rows_written,
            "series_scored": outcome.scored,
            "series_failed": outcome.failed,
            "series_skipped": outcome.skipped,
            "horizon": cfg.horizon,
            "warehouse_tables": "predictions, scoring_report",
            "sample_forecasts": dg.MetadataValue.md(
                png_markdown(sample_forecasts_png(history, preds[preds["series_id"].isin(sample)]), "sample forecasts")
            ),
            "not_scored": dg.MetadataValue.md(
                problems.head(50).to_markdown(index=False) if len(problems) else "every series was scored"
            ),
            "preview": dg.MetadataValue.md(preds.head(10).to_markdown(index=False) if len(preds) else "no rows"),
        }
    )


@dg.asset(
    deps=["batch_predictions"],
    partitions_def=run_dates,
    group_name="scoring",
    kinds={"sql"},
    automation_condition=dg.AutomationCondition.eager(),
    description="Aggregated accuracy and run metrics (`forecast_metrics`) and the BI views "
    "(v_latest_predictions, v_series_accuracy, v_scoring_report, v_run_summary, v_promotion_log).",
)
@user_errors_as_failures
def forecast_metrics(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    row = warehouse.warehouse().refresh_metrics(date.fromisoformat(context.partition_key))
    return dg.MaterializeResult(metadata={k: v for k, v in row.items() if k not in ("dataset", "run_date") and v is not None})
