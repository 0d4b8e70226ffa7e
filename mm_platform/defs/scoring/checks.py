"""Quality gates on batch scoring: complete and plausible forecasts before the BI metrics."""

import math
from datetime import date

import dagster as dg

from mm_platform.defs.dataset import Dataset
from mm_platform.defs.resources import DatasetResource, WarehouseResource

VALUES = ("yhat", "yhat_lower", "yhat_upper")


def _stats(warehouse: WarehouseResource, run_date: date) -> dict:
    wh = warehouse.warehouse()  # (the resource disposes it when the step ends)
    return wh.prediction_stats(run_date)


def prediction_rows_match_horizon(
    context: dg.AssetCheckExecutionContext, dataset: DatasetResource, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """The run date's predictions hold exactly horizon rows for every series the scoring report marks
    scored: no series half-written, none duplicated."""
    cfg = dataset.config
    run_date = date.fromisoformat(context.partition_key)
    s = _stats(warehouse, run_date)
    expected = s["scored_series"] * cfg.horizon
    passed = s["rows"] == expected and s["series_with_rows"] == s["scored_series"]
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if passed else (
            f"table predictions, run date {run_date}: {s['rows']} rows for {s['series_with_rows']} series, expected "
            f"{s['scored_series']} scored series x horizon {cfg.horizon} = {expected}"
        ),
        metadata={"prediction_rows": s["rows"], "scored_series": s["scored_series"], "horizon": cfg.horizon,
                  "expected_rows": expected},
    )


def forecasts_finite_and_bounded(
    context: dg.AssetCheckExecutionContext, dataset: DatasetResource, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """Every forecast value (yhat and its interval) is present and finite, |value| is at most
    checks.max_abs_forecast (default ingest.max_abs_target), and yhat is at least checks.min_forecast if
    set."""
    cfg = dataset.config
    run_date = date.fromisoformat(context.partition_key)
    s = _stats(warehouse, run_date)
    limit = cfg.checks.max_abs_forecast or cfg.ingest.max_abs_target
    problems = []
    for c in VALUES:
        if s[f"{c}_missing"]:
            problems.append(f"{s[f'{c}_missing']} {c} values missing (NaN or null)")
        for k in ("min", "max"):
            v = s[f"{c}_{k}"]
            if v is not None and not math.isfinite(v):
                problems.append(f"{c} {k} is {v}")
            elif v is not None and abs(v) > limit:
                problems.append(f"{c} {k} {v:g} beyond +-{limit:g}")
    lowest = s["yhat_min"]
    if cfg.checks.min_forecast is not None and lowest is not None and lowest < cfg.checks.min_forecast:
        problems.append(f"yhat min {lowest:g} below checks.min_forecast {cfg.checks.min_forecast:g}")
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if not problems else f"table predictions, run date {run_date}: " + "; ".join(problems),
        metadata={
            "max_abs_forecast": limit,
            "min_forecast": cfg.checks.min_forecast if cfg.checks.min_forecast is not None else dg.MetadataValue.null(),
            **{f"{c}_{k}": (s[f"{c}_{k}"] if s[f"{c}_{k}"] is not None and math.isfinite(s[f"{c}_{k}"])
                             else dg.MetadataValue.text(str(s[f"{c}_{k}"])))
               for c in VALUES for k in ("min", "max")},
        },
    )


def dataset_defs(ds: Dataset) -> dg.Definitions:
    return dg.Definitions(
        asset_checks=[
            ds.asset_check(prediction_rows_match_horizon, asset="batch_predictions", blocking=True),
            ds.asset_check(forecasts_finite_and_bounded, asset="batch_predictions", blocking=True),
        ],
    )
