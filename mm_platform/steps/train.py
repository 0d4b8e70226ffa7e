"""The training steps: build the run date's training set, train every series, check the
error threshold, register the model set, write the training report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from mm_platform.config import DatasetConfig
from mm_platform.core.vocabulary import (
    FAILED,
    METRICS,
    REGISTERED,
    SKIPPED,
    TAG_ALGORITHM,
    TAG_CHAMPION,
    TAG_DATASET,
    TAG_DATASET_CHOICE,
    TAG_DRIFT_REFIT,
    TAG_FINGERPRINT,
    TAG_N_OBS,
    TAG_RUN_DATE,
    TAG_SELECTION_REASON,
    TAG_SERIES_ID,
    TAG_SHA256,
    TAG_TRAINING_RUN_ID,
    TRAINED,
    UNCHANGED,
    backtest_tag,
    format_metric,
    key_tag,
    metric_tag,
    model_name,
)
from mm_platform.spark.global_train import train_with_shared
from mm_platform.spark.session import runs_beside_driver
from mm_platform.spark.train import MODEL_COLUMNS
from mm_platform.steps.interfaces import Registry, ReportStore
from mm_platform.steps.thresholds import ErrorThresholdExceeded, threshold_exceeded
from mm_platform.stores.artifacts import StoredArtifact
from mm_platform.stores.lake import Lake
from mm_platform.stores.registry import ModelSetRun, RegisteredModel
from mm_platform.stores.training_sets import training_set_store


def build_training_sets(spark, lake: Lake, cfg: DatasetConfig, run_date: date) -> dict:
    """The training_sets step: the run date's per-series training set, built from the lake."""
    return training_set_store(lake, cfg).build(spark, run_date)


def _selection_tags(model_json: str) -> dict[str, str]:
    """For ``algorithm: auto``: the champion, why it won, and every candidate's backtest metrics."""
    sel = json.loads(model_json).get("selection") if model_json else None
    if not sel:
        return {}
    tags = {TAG_CHAMPION: str(sel.get("champion", "")), TAG_SELECTION_REASON: str(sel.get("reason", ""))[:5000]}
    if sel.get("dataset_choice"):
        tags[TAG_DATASET_CHOICE] = str(sel["dataset_choice"])
    for family, metrics in (sel.get("backtest") or {}).items():
        for m, v in (metrics or {}).items():
            tags[backtest_tag(family, m)] = format_metric(v) if isinstance(v, int | float) else str(v)
    return tags


@dataclass
class TrainingOutcome:
    report: pd.DataFrame  # one row per series, with registration outcome
    registered: int
    unchanged: int
    failed: int
    skipped: int


def _model_set_run(cfg: DatasetConfig, run_date: date, run_id: str) -> tuple[str, dict]:
    """The name and tags of the registry run a model set is registered in."""
    return f"{cfg.name}-model-set-{run_date}", {"run_date": str(run_date), "dagster_run_id": run_id}


def register_model_set(
    results: pd.DataFrame, cfg: DatasetConfig, registry: Registry, run_date: date, run_id: str,
    latest: dict[str, RegisteredModel] | None = None, force: set[str] | frozenset[str] = frozenset(),
    run: ModelSetRun | None = None,
) -> TrainingOutcome:
    """Register every trained series' model in the training registry, except where the
    newest registered version already has the same data fingerprint and algorithm (a rerun
    creates no duplicate versions). ``latest`` is ``registry.latest_by_series`` when the
    caller already has it. Series in ``force`` (refits drift asked for) are registered even
    with an unchanged fingerprint, tagged ``drift_refit``. ``run``: the registry run the
    training tasks wrote the models into (rows with a ``model_source``), from ``begin_run``."""
    if latest is None:
        latest = registry.latest_by_series(cfg.name)
    report = results.drop(columns=[c for c in MODEL_COLUMNS if c in results]).copy()
    report["algorithm"] = cfg.algorithm.name
    report["model_name"] = None
    report["model_version"] = None
    report["registration"] = None
    report["training_run_id"] = run_id
    # The report's new values, by position, assigned as whole columns at the end.
    n = len(report)
    names, versions, registration = [None] * n, [None] * n, [None] * n
    status = report["status"].to_numpy(dtype=object, copy=True)
    metrics = {m: report[m].to_numpy(dtype=np.float64, copy=True) for m in METRICS}
    rows: list[int] = []

    def entries():
        # A generator over slices of the results: register_many consumes it a chunk at a
        # time, so no per-series list of tags and artifacts exists at once in the driver.
        for start in range(0, n, 1000):
            for pos, r in enumerate(results.iloc[start : start + 1000].to_dict("records"), start):
                if r["status"] not in (TRAINED, UNCHANGED):
                    continue
                keys = {k: r[k] for k in cfg.keys}
                name = model_name(cfg.name, keys)
                prev = latest.get(r["series_id"])
                if r["status"] == UNCHANGED and prev is not None:
                    # Not refitted: the registered model and its metrics stand.
                    names[pos], versions[pos], registration[pos] = prev.name, prev.version, UNCHANGED
                    for m in METRICS:
                        v = prev.metric(m)
                        metrics[m][pos] = np.nan if v is None else v
                    status[pos] = TRAINED
                    continue
                forced = r["series_id"] in force
                if not forced and prev and prev.tags.get(TAG_FINGERPRINT) == r["fingerprint"] and prev.tags.get(TAG_ALGORITHM) == cfg.algorithm.name:
                    names[pos], versions[pos], registration[pos] = prev.name, prev.version, UNCHANGED
                    continue
                tags = {
                    TAG_DATASET: cfg.name,
                    TAG_SERIES_ID: r["series_id"],
                    **{key_tag(k): str(v) for k, v in keys.items()},
                    TAG_ALGORITHM: cfg.algorithm.name,
                    TAG_FINGERPRINT: r["fingerprint"],
                    TAG_RUN_DATE: str(run_date),
                    TAG_TRAINING_RUN_ID: run_id,
                    TAG_N_OBS: str(int(r["n_obs"])),
                    **{metric_tag(m): format_metric(r[m]) for m in METRICS},
                }
                source = r.get("model_source") if isinstance(r.get("model_source"), str) else None
                tags |= _selection_tags(r.get("model_selection") if source else r["model_json"])
                if forced:
                    tags[TAG_DRIFT_REFIT] = str(run_date)
                rows.append(pos)
                yield name, StoredArtifact(source, r["model_sha256"]) if source else r["model_json"].encode(), tags
    run_name, run_tags = _model_set_run(cfg, run_date, run_id)
    registered = registry.register_many(entries(), run_name=run_name, run_tags=run_tags, run=run)
    for pos, mv in zip(rows, registered, strict=True):
        names[pos], versions[pos], registration[pos] = mv.name, mv.version, REGISTERED
    report["status"] = pd.Series(status, index=report.index, dtype=object)
    for m in METRICS:
        report[m] = metrics[m]
    report["model_name"] = pd.Series(names, index=report.index, dtype=object)
    report["model_version"] = pd.Series(versions, index=report.index, dtype=object)
    report["registration"] = pd.Series(registration, index=report.index, dtype=object)
    return TrainingOutcome(
        report,
        registered=len(registered),
        unchanged=int((report["registration"] == UNCHANGED).sum()),
        failed=int((report["status"] == FAILED).sum()),
        skipped=int((report["status"] == SKIPPED).sum()),
    )


def check_error_threshold(results: pd.DataFrame, cfg: DatasetConfig) -> None:
    err = threshold_exceeded(results[results["status"] == FAILED], len(results), cfg.training, "training", "train", "nothing was registered")
    if err is not None:
        raise err


def train_and_register(
    spark, lake: Lake, cfg: DatasetConfig, run_date: date, registry: Registry, warehouse: ReportStore,
    run_id: str, only_series: list[str] | None = None,
) -> TrainingOutcome:
    """The model_set step: train every series of the run date's training set (or only
    ``only_series``), check the error threshold, register, and write the training report."""
    # Series whose data did not change keep their registered model (same algorithm only);
    # the others' fits start from that model's parameters (warm start). Series that
    # realized-accuracy drift asked to refit are fitted afresh whatever their data: this
    # run's training report consumes the request (Warehouse.refit_requests), and a rerun of
    # the run date does not refit again (its version carries the drift_refit tag).
    latest = registry.latest_by_series(cfg.name)
    refit = {sid for sid in warehouse.refit_requests()
             if sid not in latest or latest[sid].tags.get(TAG_DRIFT_REFIT) != str(run_date)}
    if only_series is not None:
        refit &= set(only_series)
    same = {sid: mv for sid, mv in latest.items() if mv.tags.get(TAG_ALGORITHM) == cfg.algorithm.name and sid not in refit}
    known = {sid: mv.tags.get(TAG_FINGERPRINT, "") for sid, mv in same.items()}
    previous = {sid: (mv.source, mv.tags.get(TAG_SHA256, "")) for sid, mv in same.items()}
    # The registry run exists before the models: where the training tasks can reach its
    # artifact store, they write the models into it and return references, not models.
    run = registry.begin_run(*_model_set_run(cfg, run_date, run_id))
    artifacts = run.task_artifacts()  # None: a store the tasks cannot write to (not a path)
    if artifacts is not None and not _tasks_write_models(spark, cfg):
        artifacts = None
    try:
        # (with the global family: its shared models are fitted and stored first, spark/global_train.py)
        results = train_with_shared(spark, training_set_store(lake, cfg), cfg, run_date, registry, run_id,
                                    known=known, previous=previous, only_series=only_series, artifacts=artifacts)
        check_error_threshold(results, cfg)
    except ErrorThresholdExceeded:
        _end_failed(registry, run)
        report = results.drop(columns=MODEL_COLUMNS, errors="ignore").assign(algorithm=cfg.algorithm.name, training_run_id=run_id)
        _write_report(warehouse, run_date, report, only_series)
        raise
    except BaseException:
        _end_failed(registry, run)
        raise
    outcome = register_model_set(results, cfg, registry, run_date, run_id, latest, force=refit, run=run)
    _mark_refits(outcome.report, refit)
    _write_report(warehouse, run_date, outcome.report, only_series)
    return outcome


def _end_failed(registry: Registry, run: ModelSetRun) -> None:
    """Mark the model set's run failed and drop what its tasks wrote, without hiding the error
    that got here (a registry that cannot be reached leaves the run RUNNING, as a killed run does)."""
    import logging

    try:
        registry.end_run(run, failed=True)
    except Exception as err:  # noqa: BLE001
        logging.getLogger(__name__).warning("could not mark registry run %s failed: %s", run.run_id, err)


def _tasks_write_models(spark, cfg: DatasetConfig) -> bool:
    """``storage.model_artifacts``: tasks (a training artifact root every executor mounts), the
    driver, or auto: the tasks when they run on the driver's host (local mode)."""
    mode = cfg.storage.model_artifacts
    return mode == "tasks" or (mode == "auto" and runs_beside_driver(spark))


def _mark_refits(report: pd.DataFrame, refit: set[str]) -> None:
    """Say in the training report which series were refitted because drift asked."""
    if not refit or not len(report):
        return
    mask = report["series_id"].isin(refit) & (report["registration"] == REGISTERED)
    note = "refit requested by realized-accuracy drift (drift_log)"
    reason = report["reason"].astype(object)
    report["reason"] = reason.where(~mask, [f"{r}; {note}" if isinstance(r, str) and r else note for r in reason])


def _write_report(warehouse: ReportStore, run_date: date, report: pd.DataFrame, only_series: list[str] | None) -> None:
    if only_series is None:
        warehouse.replace_run("training_report", run_date, report)
    else:  # a retrain of some series replaces just their rows
        warehouse.replace_series("training_report", run_date, report, list(only_series))
