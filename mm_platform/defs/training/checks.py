"""Quality gates on training: every series is accounted for, and the models beat the baseline."""

from datetime import date

import dagster as dg

from mm_platform.defs.dataset import Dataset
from mm_platform.defs.resources import DatasetResource, LakeResource, WarehouseResource
from mm_platform.stores.training_sets import training_set_store

SHOWN = 20  # series ids listed in the metadata


def every_series_reported(
    context: dg.AssetCheckExecutionContext, dataset: DatasetResource, lake: LakeResource, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """Every series of the run date's training set has a row in the warehouse training_report (trained,
    skipped or failed): a series that silently vanished would never be promoted or scored."""
    cfg = dataset.config
    run_date = date.fromisoformat(context.partition_key)
    expected = set(training_set_store(lake.lake(), cfg).series(run_date)["series_id"])
    wh = warehouse.warehouse()  # (the resource disposes it when the step ends)
    reported = set(wh.series_of_run("training_report", run_date))
    missing = sorted(expected - reported)
    return dg.AssetCheckResult(
        passed=not missing,
        severity=dg.AssetCheckSeverity.ERROR,
        description=None if not missing else (
            f"{len(missing)} of {len(expected)} series of the training set have no training_report row for "
            f"{run_date} (e.g. {', '.join(missing[:3])})"
        ),
        metadata={"training_set_series": len(expected), "reported_series": len(reported), "missing": len(missing),
                  "missing_ids": dg.MetadataValue.json(missing[:SHOWN])},
    )


def share_beating_seasonal_naive(
    context: dg.AssetCheckExecutionContext, dataset: DatasetResource, warehouse: WarehouseResource
) -> dg.AssetCheckResult:
    """The share of trained series whose holdout WAPE beats the seasonal-naive baseline is at least
    checks.min_share_beating_naive (a warning by default; severity error stops promotion)."""
    cfg = dataset.config
    run_date = date.fromisoformat(context.partition_key)
    wh = warehouse.warehouse()  # (the resource disposes it when the step ends)
    total, beating = wh.naive_comparison(run_date)
    share = beating / total if total else None
    minimum = cfg.checks.min_share_beating_naive
    # No comparable series (nothing trained, e.g. all unchanged and skipped) is nothing to judge.
    passed = share is None or share >= minimum
    severity = dg.AssetCheckSeverity.ERROR if cfg.checks.share_beating_naive_severity == "error" else dg.AssetCheckSeverity.WARN
    return dg.AssetCheckResult(
        passed=passed,
        severity=severity,
        description=None if passed else (
            f"{beating} of {total} trained series ({share:.0%}) beat seasonal naive on {run_date}, below "
            f"checks.min_share_beating_naive {minimum:.0%}"
        ),
        metadata={"series_compared": total, "series_beating_naive": beating,
                  "share_beating_naive": share if share is not None else dg.MetadataValue.null(), "minimum": minimum},
    )


def dataset_defs(ds: Dataset) -> dg.Definitions:
    return dg.Definitions(
        asset_checks=[
            ds.asset_check(every_series_reported, asset="model_set", blocking=True),
            # blocking, but stops promotion only when checks.share_beating_naive_severity is error
            ds.asset_check(share_beating_seasonal_naive, asset="model_set", blocking=True),
        ],
    )
