import dagster as dg

# Evaluates the scoring assets' eager automation conditions, so batch scoring and the BI
# metrics follow each promotion by themselves; on by default, toggleable in the UI.
scoring_automation = dg.AutomationConditionSensorDefinition(
    "scoring_after_promotion",
    target=dg.AssetSelection.groups("scoring"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs batch_predictions and forecast_metrics after each new promotion.",
)
