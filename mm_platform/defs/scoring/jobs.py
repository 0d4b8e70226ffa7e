import dagster as dg

from mm_platform.defs.partitions import run_dates

scoring_job = dg.define_asset_job(
    "scoring_job", selection=["batch_predictions", "forecast_metrics"], partitions_def=run_dates,
    description="Batch scoring and BI metrics (also triggered declaratively after promotion).",
)
