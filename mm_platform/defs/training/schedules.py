import dagster as dg

from mm_platform.defs.dataset import Dataset


def dataset_defs(ds: Dataset) -> dg.Definitions:
    training_job = dg.define_asset_job(
        ds.prefixed("training_job"),
        selection=ds.selection("raw_sales", "training_sets", "model_set"),
        partitions_def=ds.partitions,
        description=f"Dataset {ds.name}: ingest the new period's data and retrain the model set.",
        tags={"mm_platform/dataset": ds.name},
    )
    # Each new run date (every night for a daily dataset, once a week for a weekly one), at 02:00.
    schedule = dg.build_schedule_from_partitioned_job(
        training_job, name=ds.prefixed("training_schedule"), hour_of_day=2,
        description=f"Dataset {ds.name}: ingest the newest {ds.cfg.frequency} period and retrain.",
    )
    return dg.Definitions(jobs=[training_job], schedules=[schedule])
