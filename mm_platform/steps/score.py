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
from mm_platform.core.vocabulary import (
    SCORED,
    SCORING_FAILED,
    SCORING_SKIPPED,
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


def production_models_frame(cfg: DatasetConfig, production: RegistryReader) -> tuple[pd.DataFrame, list[dict]]:
    """Verified production models as a frame for scoring (with each model's ``tier``), plus
    the series whose model could not be loaded."""
    rows, problems = [], []
    for sid, mv in production_by_series(production, cfg.name).items():
        tier = mv.tags.get(TAG_TIER) or TIER_CHAMPION  # models promoted before tiers existed were champions
        try:
            data = production.read_artifact(mv)
        except Exception as exc:  # a bad artifact skips that series only
            problems.append({**{k: mv.tags.get(key_tag(k)) for k in cfg.keys}, "series_id": sid, "model_name": mv.name,
                             "model_version": mv.version, "tier": tier, "reason": f"{type(exc).__name__}: {exc}"})
            continue
        keys = {k: mv.tags.get(key_tag(k)) for k in cfg.keys}
        rows.append({**keys, "series_id": sid, "model_name": mv.name, "model_version": mv.version, "tier": tier,
                     "model_json": data.decode()})
    return pd.DataFrame(rows), problems


def shared_models(models: pd.DataFrame, problems: list[dict]) -> tuple[pd.DataFrame, list[str]]:
    """The global family's shared models the production models refer to, each read and
    checked against its sha256 once here (not once per series): their texts go to the scoring
    tasks with the job. A series whose shared model cannot be read or fails its check joins
    ``problems`` (failed, with the reason) and leaves ``models``."""
    from mm_platform.forecasting.global_lgbm import shared_refs
    from mm_platform.stores.artifacts import read_verified

    if not len(models):
        return models, []
    refs: dict[str, list[tuple[str, str | None]]] = {}  # series -> (sha256, uri) of its shared models
    for sid, text in zip(models["series_id"], models["model_json"], strict=True):
        if '"shared_sha256"' in text:
            refs[sid] = [(str(r["shared_sha256"]), r.get("shared_uri")) for r in shared_refs(json.loads(text))]
    texts: dict[str, str] = {}
    failed: dict[str, str] = {}  # sha256 -> why
    for sha, uri in {ref for rs in refs.values() for ref in rs}:
        if sha in texts or sha in failed:
            continue
        try:
            if not uri:
                raise ValueError("the model does not say where its shared model is stored")
            texts[sha] = read_verified(uri, sha, f"shared global model {sha[:12]}").decode()
        except Exception as exc:  # noqa: BLE001 - fails the series that use it only
            failed[sha] = f"{type(exc).__name__}: {exc}"
    bad = {sid: next(failed[sha] for sha, _ in rs if sha in failed) for sid, rs in refs.items()
           if any(sha in failed for sha, _ in rs)}
    if bad:
        gone = models[models["series_id"].isin(bad)]
        for r in gone.to_dict("records"):
            problems.append({**{k: r[k] for k in r if k not in ("model_json", "future_regressors")},
                             "reason": "shared model: " + bad[r["series_id"]]})
        models = models[~models["series_id"].isin(bad)].reset_index(drop=True)
    return models, list(texts.values())


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
    models, problems = production_models_frame(cfg, production)
    models, shared_texts = shared_models(models, problems)
    # ingest.on_missing_series: stop_scoring skips series deleted at the source (docs/ingestion.md).
    stopped = stopped_series(cfg, lake)
    models = models[~models["series_id"].isin(stopped)] if stopped and len(models) else models
    problems = [p for p in problems if p.get("series_id") not in stopped]
    models = with_future_regressors(models, lake.read_future(cfg.source.table, run_date) if cfg.columns.regressors else None, cfg)
    scored = score_series(spark, models, training_set_store(lake, cfg).series(run_date), cfg, shared_texts=shared_texts,
                          origin=str(run_date))
    # Each prediction and report row says which tier of model made it (one model per series).
    tiers = dict(zip(models["series_id"], models["tier"], strict=True)) if len(models) else {}
    tiers |= {p["series_id"]: p["tier"] for p in problems}
    report = scored.report.assign(tier=scored.report["series_id"].map(tiers).astype(object))
    report["tier"] = report["tier"].where(report["tier"].notna(), None)
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
    predictions = scored.predictions.assign(scoring_run_id=run_id, tier=scored.predictions["series_id"].map(tiers).astype(object))
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
        _write(warehouse, run_date, predictions, report, failed)
        raise err
    return ScoringOutcome(predictions, report, _write(warehouse, run_date, predictions, report, failed))


def _write(warehouse: ReportStore, run_date: date, predictions: pd.DataFrame, report: pd.DataFrame, failed: pd.DataFrame) -> int:
    """Predictions and report in one transaction; failed series keep the run date's previous predictions."""
    written = warehouse.replace_runs(run_date, {"predictions": predictions, "scoring_report": report},
                                     keep={"predictions": sorted(failed["series_id"])})
    return written["predictions"]
