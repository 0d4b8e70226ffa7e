"""Quality gate on ingestion: the lake holds actuals recent enough for the run date."""

from datetime import date, timedelta

import dagster as dg

from mm_platform.defs.dataset import Dataset
from mm_platform.defs.resources import DatasetResource, LakeResource


def raw_sales_fresh(
    context: dg.AssetCheckExecutionContext, dataset: DatasetResource, lake: LakeResource
) -> dg.AssetCheckResult:
    """The lake's newest actual (a row with a target) is at most checks.max_staleness_periods periods
    before the run date: training on stale data would promote and score yesterday's models as today's."""
    cfg = dataset.config
    run_date = date.fromisoformat(context.partition_key)
    newest = lake.lake().newest_date_with_value(cfg.source.table, cfg.columns.date, cfg.columns.target)
    period_days = 1 if cfg.frequency == "daily" else 7
    allowed = cfg.checks.max_staleness_periods
    oldest_fresh = run_date - timedelta(days=allowed * period_days)
    newest_day = newest.date() if newest is not None else None
    passed = newest_day is not None and newest_day >= oldest_fresh
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if passed else (
            f"table {cfg.source.table}: newest actual in the lake is {newest_day or 'none'}, older than {oldest_fresh} "
            f"({allowed} {cfg.frequency} period(s) before run date {run_date}; checks.max_staleness_periods)"
        ),
        metadata={"newest_actual": str(newest_day), "run_date": str(run_date), "max_staleness_periods": allowed},
    )


def dataset_defs(ds: Dataset) -> dg.Definitions:
    return dg.Definitions(asset_checks=[ds.asset_check(raw_sales_fresh, asset="raw_sales", blocking=True)])
