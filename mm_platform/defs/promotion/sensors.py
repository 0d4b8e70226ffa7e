import dagster as dg

from mm_platform.defs.dataset import Dataset


def dataset_defs(ds: Dataset) -> dg.Definitions:
    promotion_job = dg.define_asset_job(
        ds.prefixed("promotion_job"), selection=ds.selection("promoted_models"), partitions_def=ds.partitions,
        description=f"Dataset {ds.name}: promote qualifying models.", tags={"mm_platform/dataset": ds.name},
    )

    @dg.asset_sensor(
        asset_key=ds.key("model_set"),
        job=promotion_job,
        name=ds.prefixed("promote_on_new_model_set"),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Runs promotion for the run date of each new {ds.name}/model_set materialization.",
    )
    def promote_on_new_model_set(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
        partition = asset_event.dagster_event.partition if asset_event.dagster_event else None
        yield dg.RunRequest(run_key=f"{asset_event.run_id}:{partition}", partition_key=partition)

    return dg.Definitions(jobs=[promotion_job], sensors=[promote_on_new_model_set])
