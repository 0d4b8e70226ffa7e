"""The batch_predictions step as a plain function: production models (found by tags, verified
by checksum) -> Spark forecast per series -> predictions and a per-series scoring report,
written to the warehouse together in one transaction. The Dagster asset, the CLI and the
benchmark all call ``score_and_write``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mm_platform.config import DatasetConfig
from mm_platform.core.vocabulary import (
    SCORED,
    SCORING_FAILED,
    SCORING_SKIPPED,
    TAG_SHA256,
    TAG_TIER,
    TIER_CHAMPION,
    key_tag,
    series_id,
)
from mm_platform.spark.score import score_series
from mm_platform.steps.ingest import stopped_series
from mm_platform.steps.interfaces import RegistryReader, ReportStore
from mm_platform.steps.thresholds import threshold_exceeded
from mm_platform.stores.lake import Lake
from mm_platform.stores.registry import production_by_series
from mm_platform.stores.training_sets import training_set_store


@dataclass
class ScoringOutcome:
    predictions: pa.Table  # compact (dictionary-encoded strings); ``sample`` gives a few series as pandas
    report: pd.DataFrame  # one row per series: status scored / failed / skipped, reason
    rows_written: int

    def sample(self, series: list[str]) -> pd.DataFrame:
        """The predictions of ``series`` as a DataFrame."""
        if not len(self.predictions) or not series:
            return self.predictions.slice(0, 0).to_pandas()
        mask = pc.is_in(self.predictions["series_id"].cast(pa.string()), value_set=pa.array(series, pa.string()))
        return self.predictions.filter(mask).to_pandas()

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

    def by_tier(self) -> dict[str, int]:
        """Series scored per production-model tier (champion / fallback)."""
        scored = self.report[self.report["status"] == SCORED] if len(self.report) else self.report
        return {str(t): int(n) for t, n in scored["tier"].value_counts().items()} if len(scored) else {}


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


def production_models_frame(cfg: DatasetConfig, production: RegistryReader) -> pd.DataFrame:
    """Each series' production model as a reference for scoring: keys, series id, name,
    version, ``tier``, and where its artifact is with its sha256. The scoring tasks read and
    verify the artifacts themselves (and the shared models they refer to), so the driver
    holds a few strings per series, never the models."""
    rows = []
    for sid, mv in production_by_series(production, cfg.name, [TAG_TIER, TAG_SHA256, *(key_tag(k) for k in cfg.keys)]).items():
        rows.append({**{k: mv.tags.get(key_tag(k)) for k in cfg.keys}, "series_id": sid, "model_name": mv.name,
                     "model_version": mv.version,
                     # models promoted before tiers existed were champions
                     "tier": mv.tags.get(TAG_TIER) or TIER_CHAMPION,
                     "model_source": mv.source, "model_sha256": mv.tags.get(TAG_SHA256)})
    return pd.DataFrame(rows, columns=[*cfg.keys, "series_id", "model_name", "model_version", "tier", "model_source",
                                       "model_sha256"])


def score_and_write(
    spark, lake: Lake, cfg: DatasetConfig, run_date: date, production: RegistryReader, warehouse: ReportStore, run_id: str
) -> ScoringOutcome:
    """Score every series with its production model and replace the run date's
    ``predictions`` and ``scoring_report`` rows in one transaction.

    A model that cannot be loaded (missing artifact, checksum mismatch) or whose forecast
    raises or is not finite fails its series only: it keeps the run date's previous
    predictions, if any (a rerun does not erase a forecast it could not replace). Past the
    ``scoring`` error threshold the same is written, then ``ErrorThresholdExceeded`` is raised.
    """
    models = production_models_frame(cfg, production)
    # ingest.on_missing_series: stop_scoring skips series deleted at the source (docs/ingestion.md).
    stopped = stopped_series(cfg, lake)
    models = models[~models["series_id"].isin(stopped)] if stopped and len(models) else models
    models = with_future_regressors(models, lake.read_future(cfg.source.table, run_date) if cfg.columns.regressors else None, cfg)
    scored = score_series(spark, models, training_set_store(lake, cfg).series(run_date), cfg, origin=str(run_date))
    # Each prediction and report row says which tier of model made it (one model per series).
    tiers = dict(zip(models["series_id"], models["tier"], strict=True)) if len(models) else {}
    report = scored.report.assign(tier=scored.report["series_id"].map(tiers).astype(object))
    report["tier"] = report["tier"].where(report["tier"].notna(), None)
    if stopped:
        gone = report["series_id"].isin(stopped)
        report.loc[gone, "status"] = SCORING_SKIPPED
        report.loc[gone, "reason"] = "series missing from the source (ingest.on_missing_series: stop_scoring)"
    report = report.sort_values("series_id").reset_index(drop=True).assign(scoring_run_id=run_id)
    predictions = _with_run_and_tier(scored.predictions, run_id, tiers)
    failed = report[report["status"] == SCORING_FAILED]
    attempted = int(report["status"].isin([SCORED, SCORING_FAILED]).sum())
    err = threshold_exceeded(
        failed, attempted, cfg.scoring, "scoring", "score",
        f"the {int((report['status'] == SCORED).sum())} series that scored were written, "
        "the failed ones keep the run date's previous predictions",
    )
    if err is not None:
        # Past the threshold the step still fails (the run is flagged, metrics are not refreshed),
        # but good series are refreshed: each forecast depends only on its own verified model.
        _write(warehouse, run_date, predictions, report, failed)
        raise err
    return ScoringOutcome(predictions, report, _write(warehouse, run_date, predictions, report, failed))


def _with_run_and_tier(predictions: pa.Table, run_id: str, tiers: dict[str, str]) -> pa.Table:
    """The predictions with their scoring run and each series' model tier, both
    dictionary-encoded (the tier looked up once per series, not per row)."""
    sid = predictions["series_id"].combine_chunks()
    if not isinstance(sid, pa.DictionaryArray):
        sid = sid.dictionary_encode()
    tier = pc.take(pa.array([tiers.get(s) for s in sid.dictionary.to_pylist()], pa.string()), sid.indices).dictionary_encode()
    run = pa.DictionaryArray.from_arrays(pa.array([0] * len(predictions), pa.int32()), pa.array([run_id]))
    return predictions.append_column("scoring_run_id", run).append_column("tier", tier)


def _write(warehouse: ReportStore, run_date: date, predictions: pa.Table, report: pd.DataFrame, failed: pd.DataFrame) -> int:
    """Predictions and report in one transaction; failed series keep the run date's previous predictions."""
    written = warehouse.replace_runs(run_date, {"predictions": predictions, "scoring_report": report},
                                     keep={"predictions": sorted(failed["series_id"])})
    return written["predictions"]
