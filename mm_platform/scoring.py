"""The batch_predictions step as a plain function: production models (found by tags, verified
by checksum) -> Spark forecast per series -> predictions and a per-series scoring report,
written to the warehouse together in one transaction. The Dagster asset, the CLI and the
benchmark all call ``score_and_write``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date

import pandas as pd

from mm_platform.config import DatasetConfig
from mm_platform.ingestion import stopped_series
from mm_platform.lake import Lake
from mm_platform.pipeline import production_models_frame, threshold_exceeded
from mm_platform.registry import ModelRegistry, series_id
from mm_platform.spark_jobs import SCORED, SCORING_FAILED, SCORING_SKIPPED, score_series, training_set_series
from mm_platform.warehouse import Warehouse


@dataclass
class ScoringOutcome:
    predictions: pd.DataFrame
    report: pd.DataFrame  # one row per series: status scored / failed / skipped, reason
    rows_written: int

    def count(self, status: str) -> int:
        return int((self.report["status"] == status).sum()) if len(self.report) else 0

    @property
    def scored(self) -> int:
        return self.count(SCORED)

    @property
    def failed(self) -> int:
        return self.count(SCORING_FAILED)

    @property
    def skipped(self) -> int:
        return self.count(SCORING_SKIPPED)


def with_future_regressors(models: pd.DataFrame, future: pd.DataFrame | None, cfg: DatasetConfig) -> pd.DataFrame:
    """``models`` plus a ``future_regressors`` column: each series' known future regressor
    values from the source (the run date's snapshot written by ingestion), as JSON
    ``{"ds": [...], "<regressor>": [...]}``, or None where the source has none."""
    models = models.assign(future_regressors=None)
    if future is None or not len(future) or not len(models):
        return models
    cols = cfg.columns
    future = future.sort_values(cols.date)
    future["series_id"] = [series_id(dict(zip(cols.keys, ks, strict=True))) for ks in future[cols.keys].itertuples(index=False)]
    future["ds"] = pd.to_datetime(future[cols.date]).dt.strftime("%Y-%m-%d")
    by_series = {
        sid: json.dumps({"ds": g["ds"].tolist(), **{r: g[r].tolist() for r in cols.regressors}})
        for sid, g in future.groupby("series_id", sort=False)
    }
    models["future_regressors"] = models["series_id"].map(by_series).astype(object).where(lambda s: s.notna(), None)
    return models


def score_and_write(
    spark, lake: Lake, cfg: DatasetConfig, run_date: date, production: ModelRegistry, warehouse: Warehouse, run_id: str
) -> ScoringOutcome:
    """Score every series with its production model and replace the run date's
    ``predictions`` and ``scoring_report`` rows in one transaction.

    A model that cannot be loaded (missing artifact, checksum mismatch) or whose forecast
    raises or is not finite fails its series only: it keeps the run date's previous
    predictions, if any (a rerun does not erase a forecast it could not replace). Past the
    ``scoring`` error threshold the same is written, then ``ErrorThresholdExceeded`` is raised.
    """
    models, problems = production_models_frame(cfg, production)
    # ingest.on_missing_series: stop_scoring skips series deleted at the source (docs/ingestion.md).
    stopped = stopped_series(cfg, lake)
    models = models[~models["series_id"].isin(stopped)] if stopped and len(models) else models
    problems = [p for p in problems if p.get("series_id") not in stopped]
    models = with_future_regressors(models, lake.read_future(cfg.source.table, run_date) if cfg.columns.regressors else None, cfg)
    scored = score_series(spark, models, training_set_series(lake, cfg, run_date), cfg)
    report = scored.report
    if problems:
        # Those series have data but no loadable model: failed, not "no production model".
        unloadable = pd.DataFrame(problems).assign(status=SCORING_FAILED, prediction_rows=0)
        unloadable["reason"] = "production model not loaded: " + unloadable["reason"]
        for k in cfg.keys:  # registry tags are strings; match the data's key types
            if pd.api.types.is_integer_dtype(report[k].dtype):
                unloadable[k] = unloadable[k].astype("int64")
        report = pd.concat(
            [report[~report["series_id"].isin(unloadable["series_id"])], unloadable[report.columns]], ignore_index=True
        )
    if stopped:
        gone = report["series_id"].isin(stopped)
        report.loc[gone, "status"] = SCORING_SKIPPED
        report.loc[gone, "reason"] = "series missing from the source (ingest.on_missing_series: stop_scoring)"
    report = report.sort_values("series_id").reset_index(drop=True).assign(scoring_run_id=run_id)
    predictions = scored.predictions.assign(scoring_run_id=run_id)
    failed = report[report["status"] == SCORING_FAILED]
    attempted = int(report["status"].isin([SCORED, SCORING_FAILED]).sum())
    err = threshold_exceeded(
        failed, attempted, cfg.scoring, "scoring", "score",
        f"the {len(predictions['series_id'].unique()) if len(predictions) else 0} series that scored were written, "
        "the failed ones keep the run date's previous predictions",
    )
    if err is not None:
        # Past the threshold the step still fails (the run is flagged, metrics are not refreshed),
        # but good series are refreshed: each forecast depends only on its own verified model.
        write_keeping(warehouse, run_date, predictions, report, sorted(failed["series_id"]))
        raise err
    written = write_keeping(warehouse, run_date, predictions, report, sorted(failed["series_id"]))
    return ScoringOutcome(predictions, report, written)


def write_keeping(
    warehouse: Warehouse, run_date: date, predictions: pd.DataFrame, report: pd.DataFrame, kept: list[str]
) -> int:
    """Like ``replace_runs`` for predictions and scoring_report, in one transaction, except that
    the run date's predictions of the ``kept`` series (those that failed) are left as they were."""
    from mm_platform.warehouse import _insert, _stage

    plan = []
    for name, rows in (("predictions", predictions), ("scoring_report", report)):
        table = warehouse._table(name, rows)
        table.metadata.create_all(warehouse.engine, checkfirst=True)
        plan.append((name, table, warehouse._records(table, run_date, rows)))
    with warehouse.engine.begin() as conn:
        for name, table, records in plan:
            staged = _stage(conn, table, records)
            delete = warehouse.delete_run_statement(table, run_date)
            if name == "predictions" and kept:
                delete = delete.where(table.c.series_id.not_in(kept))
            conn.execute(delete)
            _insert(conn, table, records, staged)
    return len(plan[0][2])
