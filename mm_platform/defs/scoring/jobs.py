import dagster as dg

from mm_platform.defs.dataset import Dataset


def dataset_defs(ds: Dataset) -> dg.Definitions:
    scoring_job = dg.define_asset_job(
        ds.prefixed("scoring_job"), selection=ds.selection("batch_predictions", "forecast_metrics"),
        partitions_def=ds.partitions, tags={"mm_platform/dataset": ds.name},
        description=f"Dataset {ds.name}: batch scoring and BI metrics (also triggered declaratively after promotion).",
    )
    return dg.Definitions(jobs=[scoring_job])
