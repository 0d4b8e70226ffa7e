import dagster as dg

from mm_platform.defs.dataset import Dataset


def dataset_defs(ds: Dataset) -> dg.Definitions:
    # Evaluates the scoring assets' eager automation conditions, so batch scoring and the BI
    # metrics follow each promotion by themselves; on by default, toggleable in the UI.
    sensor = dg.AutomationConditionSensorDefinition(
        ds.prefixed("scoring_after_promotion"),
        target=ds.selection("batch_predictions", "forecast_metrics"),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Dataset {ds.name}: runs batch_predictions and forecast_metrics after each new promotion.",
    )
    return dg.Definitions(sensors=[sensor])
