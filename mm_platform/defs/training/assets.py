from datetime import date

import dagster as dg
from dagster_pyspark import PySparkResource

from mm_platform.core.errors import user_errors_as_failures
from mm_platform.core.vocabulary import TRAINED
from mm_platform.defs.dataset import Dataset
from mm_platform.defs.plots import accuracy_histogram_png, png_markdown
from mm_platform.defs.resources import DatasetResource, LakeResource, RegistryResource, WarehouseResource
from mm_platform.steps.train import build_training_sets, train_and_register


@user_errors_as_failures
def training_sets(
    context: dg.AssetExecutionContext, dataset: DatasetResource, lake: LakeResource, pyspark: PySparkResource
) -> dg.MaterializeResult:
    """Groups the lake data by the partition keys into per-series training sets (Parquet, bucketed and
    sorted by series so one series is read without scanning all). On a local or shared-volume lake Spark
    tasks split the raw files by bucket and sort each bucket with pyarrow; the new set replaces the old in
    a rename."""
    cfg = dataset.config
    stats = build_training_sets(pyspark.spark_session, lake.lake(), cfg, date.fromisoformat(context.partition_key))
    return dg.MaterializeResult(
        metadata={"rows": stats["rows"], "series": stats["series"], "path": dg.MetadataValue.path(stats["path"]),
                  "partition_keys": ", ".join(cfg.keys)}
    )


@user_errors_as_failures
def model_set(
    context: dg.AssetExecutionContext,
    dataset: DatasetResource,
    lake: LakeResource,
    pyspark: PySparkResource,
    training_registry: RegistryResource,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    """Trains one model per series in parallel (Spark tasks over the series buckets on a local lake,
    groupBy(keys).applyInPandas elsewhere) with holdout metrics against a seasonal-naive baseline; series
    whose data is unchanged keep their model, changed ones are warm-started from it. Each new model is
    registered in the training MLflow registry with tags."""
    cfg = dataset.config
    run_date = date.fromisoformat(context.partition_key)
    outcome = train_and_register(
        pyspark.spark_session, lake.lake(), cfg, run_date, training_registry.registry(), warehouse.warehouse(), context.run_id
    )
    trained = outcome.report[outcome.report["status"] == TRAINED]
    problems = outcome.report[outcome.report["status"] != TRAINED][["series_id", "status", "reason"]]
    summary = trained[["wape", "mape", "rmse", "naive_wape", "naive_mape"]].describe().T[["mean", "50%", "min", "max"]]
    return dg.MaterializeResult(
        metadata={
            "series": len(outcome.report),
            "models_trained": len(trained),
            "models_registered": outcome.registered,
            "models_unchanged": outcome.unchanged,
            "models_failed": outcome.failed,
            "series_skipped": outcome.skipped,
            "algorithm": cfg.algorithm.name,
            "median_wape": float(trained["wape"].median()) if len(trained) else None,
            "median_naive_wape": float(trained["naive_wape"].median()) if len(trained) else None,
            "accuracy_summary": dg.MetadataValue.md(summary.to_markdown(floatfmt=".4f") if len(trained) else "no models"),
            "accuracy_distribution": dg.MetadataValue.md(
                png_markdown(accuracy_histogram_png(outcome.report), "holdout WAPE, ours vs seasonal naive")
            ),
            "not_trained": dg.MetadataValue.md(problems.head(50).to_markdown(index=False) if len(problems) else "none"),
            "training_registry": training_registry.tracking_uri,
        }
    )


def dataset_defs(ds: Dataset) -> dg.Definitions:
    return dg.Definitions(
        assets=[
            ds.asset(training_sets, deps=("raw_sales",), kinds={"spark", "parquet"}),
            ds.asset(model_set, deps=("training_sets",), kinds={"spark", "mlflow", "prophet"}),
        ],
    )
