import dagster as dg

from mm_platform.defs.dataset import Dataset


def dataset_defs(ds: Dataset) -> dg.Definitions:
    # Evaluates forecast_accuracy's eager automation condition: realized accuracy (and drift) is
    # refreshed after each scoring run and each new ingestion of actuals; toggleable in the UI.
    sensor = dg.AutomationConditionSensorDefinition(
        ds.prefixed("accuracy_after_scoring"),
        target=ds.selection("forecast_accuracy"),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Dataset {ds.name}: runs forecast_accuracy after new predictions or new actuals.",
    )
    return dg.Definitions(sensors=[sensor])
