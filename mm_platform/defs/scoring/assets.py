from datetime import date

import dagster as dg
from dagster_pyspark import PySparkResource
from pyspark.sql import functions as F

from mm_platform.defs.partitions import run_dates
from mm_platform.defs.resources import DatasetResource, LakeResource, RegistryResource, WarehouseResource
from mm_platform.pipeline import production_models_frame
from mm_platform.plots import png_markdown, sample_forecasts_png
from mm_platform.spark_jobs import read_training_set, score_series


@dg.asset(
    deps=["promoted_models", "training_sets"],
    partitions_def=run_dates,
    group_name="scoring",
    kinds={"spark", "sql"},
    automation_condition=dg.AutomationCondition.eager(),
    description="Scores every series with its production model (found by tags in the production registry) "
    "for the configured horizon; the run date's rows in the warehouse `predictions` table are replaced atomically.",
)
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
    models, problems = production_models_frame(cfg, production_registry.registry())
    for p in problems:
        context.log.error(f"production model of {p['series_id']} not loaded: {p['reason']}")
    spark = pyspark.spark_session
    preds = score_series(spark, models, read_training_set(spark, lake.lake(), cfg, run_date), cfg)
    preds["scoring_run_id"] = context.run_id
    rows = warehouse.warehouse().replace_run("predictions", run_date, preds)
    sample = sorted(preds["series_id"].unique())[:4] if len(preds) else []
    history = (
        read_training_set(spark, lake.lake(), cfg, run_date).where(F.col("series_id").isin(sample)).select("series_id", "ds", "y").toPandas()
        if sample
        else None
    )
    return dg.MaterializeResult(
        metadata={
            "prediction_rows": rows,
            "series_scored": int(preds["series_id"].nunique()) if len(preds) else 0,
            "models_not_loaded": len(problems),
            "horizon": cfg.horizon,
            "warehouse_table": "predictions",
            "sample_forecasts": dg.MetadataValue.md(
                png_markdown(sample_forecasts_png(history, preds[preds["series_id"].isin(sample)]), "sample forecasts")
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
    "(v_latest_predictions, v_series_accuracy, v_run_summary, v_promotion_log).",
)
def forecast_metrics(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    row = warehouse.warehouse().refresh_metrics(date.fromisoformat(context.partition_key))
    return dg.MaterializeResult(metadata={k: v for k, v in row.items() if k not in ("dataset", "run_date") and v is not None})
