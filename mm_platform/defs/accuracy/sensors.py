import dagster as dg

# Evaluates forecast_accuracy's eager automation condition: realized accuracy (and drift) is
# refreshed after each scoring run and each new ingestion of actuals; toggleable in the UI.
accuracy_automation = dg.AutomationConditionSensorDefinition(
    "accuracy_after_scoring",
    target=dg.AssetSelection.groups("accuracy"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs forecast_accuracy after new predictions or new actuals.",
)
