import dagster as dg

from mm_platform.defs.partitions import run_dates

daily_training_job = dg.define_asset_job(
    "daily_training_job",
    selection=["raw_sales", "training_sets", "model_set"],
    partitions_def=run_dates,
    description="Ingest the day's data and retrain the model set.",
)

daily_training_schedule = dg.build_schedule_from_partitioned_job(
    daily_training_job, hour_of_day=2, description="Every night: ingest yesterday's data and retrain."
)
