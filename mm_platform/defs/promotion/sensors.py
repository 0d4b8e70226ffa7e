import dagster as dg

promotion_job = dg.define_asset_job("promotion_job", selection=["promoted_models"], description="Promote qualifying models.")


@dg.asset_sensor(
    asset_key=dg.AssetKey("model_set"),
    job=promotion_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs promotion for the run date of each new model_set materialization.",
)
def promote_on_new_model_set(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry):
    partition = asset_event.dagster_event.partition if asset_event.dagster_event else None
    yield dg.RunRequest(run_key=f"{asset_event.run_id}:{partition}", partition_key=partition)
