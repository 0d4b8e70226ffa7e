"""The pipeline's steps as plain functions over typed handles (config, lake, registries,
warehouse, Spark). Dagster assets call these; so do the CLI and the benchmarks, so there
is one code path."""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd

from mm_platform.config import DatasetConfig
from mm_platform.errors import UserError
from mm_platform.forecasting.series import TRAINED
from mm_platform.lake import Lake
from mm_platform.promotion import evaluate
from mm_platform.registry import PRODUCTION_ALIAS, ModelRegistry, RegisteredModel, model_name
from mm_platform.warehouse import Warehouse

METRICS = ("mape", "wape", "rmse", "naive_mape", "naive_wape", "naive_rmse")


def training_registry(cfg: DatasetConfig) -> ModelRegistry:
    return ModelRegistry(cfg.storage.training_registry_uri, cfg.storage.training_artifact_root, f"{cfg.name}-training")


def production_registry(cfg: DatasetConfig, writable: bool = False) -> ModelRegistry:
    # Only the promotion step asks for a writable handle.
    return ModelRegistry(
        cfg.storage.production_registry_uri, cfg.storage.production_artifact_root, f"{cfg.name}-production", writable=writable
    )


def _selection_tags(model_json: str) -> dict[str, str]:
    """For ``algorithm: auto``: the champion, why it won, and every candidate's backtest metrics."""
    sel = json.loads(model_json).get("selection") if model_json else None
    if not sel:
        return {}
    tags = {"champion": str(sel.get("champion", "")), "selection_reason": str(sel.get("reason", ""))[:5000]}
    for family, metrics in (sel.get("backtest") or {}).items():
        for m, v in (metrics or {}).items():
            tags[f"backtest.{family}.{m}"] = _fmt(v) if isinstance(v, int | float) else str(v)
    return tags


def _fmt(v) -> str:
    return "" if v is None or (isinstance(v, float) and v != v) else f"{float(v):.6g}"


@dataclass
class TrainingOutcome:
    report: pd.DataFrame  # one row per series, with registration outcome
    registered: int
    unchanged: int
    failed: int
    skipped: int


def register_model_set(
    results: pd.DataFrame, cfg: DatasetConfig, registry: ModelRegistry, run_date: date, run_id: str,
    latest: dict[str, RegisteredModel] | None = None,
) -> TrainingOutcome:
    """Register every trained series' model in the training registry, except where the
    newest registered version already has the same data fingerprint and algorithm (a rerun
    creates no duplicate versions). ``latest`` is ``registry.latest_by_series`` when the
    caller already has it."""
    if latest is None:
        latest = registry.latest_by_series(cfg.name)
    report = results.drop(columns=["model_json"]).copy()
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
    entries, rows = [], []
    for pos, r in enumerate(results.to_dict("records")):
        if r["status"] not in (TRAINED, "unchanged"):
            continue
        keys = {k: r[k] for k in cfg.keys}
        name = model_name(cfg.name, keys)
        prev = latest.get(r["series_id"])
        if r["status"] == "unchanged" and prev is not None:
            # Not refitted: the registered model and its metrics stand.
            names[pos], versions[pos], registration[pos] = prev.name, prev.version, "unchanged"
            for m in METRICS:
                v = prev.metric(m)
                metrics[m][pos] = np.nan if v is None else v
            status[pos] = TRAINED
            continue
        if prev and prev.tags.get("data_fingerprint") == r["fingerprint"] and prev.tags.get("algorithm") == cfg.algorithm.name:
            names[pos], versions[pos], registration[pos] = prev.name, prev.version, "unchanged"
            continue
        tags = {
            "dataset": cfg.name,
            "series_id": r["series_id"],
            **{f"key.{k}": str(v) for k, v in keys.items()},
            "algorithm": cfg.algorithm.name,
            "data_fingerprint": r["fingerprint"],
            "run_date": str(run_date),
            "training_run_id": run_id,
            "n_obs": str(int(r["n_obs"])),
            **{f"metric.{m}": _fmt(r[m]) for m in METRICS},
        }
        tags |= _selection_tags(r["model_json"])
        entries.append((name, r["model_json"].encode(), tags))
        rows.append(pos)
    registered = registry.register_many(entries, run_name=f"{cfg.name}-model-set-{run_date}", run_tags={"run_date": str(run_date), "dagster_run_id": run_id})
    for pos, mv in zip(rows, registered, strict=True):
        names[pos], versions[pos], registration[pos] = mv.name, mv.version, "registered"
    report["status"] = pd.Series(status, index=report.index, dtype=object)
    for m in METRICS:
        report[m] = metrics[m]
    report["model_name"] = pd.Series(names, index=report.index, dtype=object)
    report["model_version"] = pd.Series(versions, index=report.index, dtype=object)
    report["registration"] = pd.Series(registration, index=report.index, dtype=object)
    return TrainingOutcome(
        report,
        registered=len(registered),
        unchanged=int((report["registration"] == "unchanged").sum()),
        failed=int((report["status"] == "failed").sum()),
        skipped=int((report["status"] == "skipped").sum()),
    )


class ErrorThresholdExceeded(UserError):
    """Too many series failed: the run stops (a user error: the data or models are bad, the
    message names the counts and the config fields)."""


def threshold_exceeded(
    failed: pd.DataFrame, total: int, limits, section: str, what: str, consequence: str
) -> ErrorThresholdExceeded | None:
    """The error to raise when ``failed`` (rows with a ``reason``) is over ``limits``'
    max_failed_count, or over max_failed_fraction with at least min_failed_count failures
    (config section ``section``), else None. The minimum keeps the share rule meaningful on
    small sets: 1 failure of 4 is 25% but says nothing about the run."""
    n = len(failed)
    over_count = limits.max_failed_count is not None and n > limits.max_failed_count
    over_share = (
        limits.max_failed_fraction is not None and total and n >= limits.min_failed_count
        and n / total > limits.max_failed_fraction
    )
    if not (over_count or over_share):
        return None
    reasons = failed["reason"].value_counts().head(5)
    top = "; ".join(f"{cnt}x {why}" for why, cnt in reasons.items())
    return ErrorThresholdExceeded(
        f"{n} of {total} series failed to {what}, over the error threshold "
        f"({section}.max_failed_fraction={limits.max_failed_fraction} from {section}.min_failed_count={limits.min_failed_count} "
        f"failures on, {section}.max_failed_count={limits.max_failed_count}); "
        f"{consequence}. "
        f"Most common reasons: {top}"
    )


def check_error_threshold(results: pd.DataFrame, cfg: DatasetConfig) -> None:
    err = threshold_exceeded(results[results["status"] == "failed"], len(results), cfg.training, "training", "train", "nothing was registered")
    if err is not None:
        raise err


def train_and_register(
    spark, lake: Lake, cfg: DatasetConfig, run_date: date, registry: ModelRegistry, warehouse: Warehouse, run_id: str,
    only_series: list[str] | None = None,
) -> TrainingOutcome:
    """The model_set step: train every series of the run date's training set (or only
    ``only_series``), check the error threshold, register, and write the training report."""
    from pyspark.sql import functions as F

    from mm_platform.spark_jobs import read_training_set, train_local_buckets, train_model_set

    # Series whose data did not change keep their registered model (same algorithm only);
    # the others' fits start from that model's parameters (warm start).
    latest = registry.latest_by_series(cfg.name)
    same = {sid: mv for sid, mv in latest.items() if mv.tags.get("algorithm") == cfg.algorithm.name}
    known = {sid: mv.tags.get("data_fingerprint", "") for sid, mv in same.items()}
    previous = {sid: (mv.source, mv.tags.get("artifact_sha256", "")) for sid, mv in same.items()}
    if lake.is_local():
        # Spark's workers read the bucketed training set themselves: no shuffle (same results).
        results = train_local_buckets(spark, lake, cfg, run_date, known=known, previous=previous, only_series=only_series)
    else:
        training_set = read_training_set(spark, lake, cfg, run_date)
        if only_series is not None:
            training_set = training_set.where(F.col("series_id").isin(list(only_series)))
        results = train_model_set(training_set, cfg, known=known, previous=previous)
    try:
        check_error_threshold(results, cfg)
    except ErrorThresholdExceeded:
        report = results.drop(columns=["model_json"]).assign(algorithm=cfg.algorithm.name, training_run_id=run_id)
        _write_report(warehouse, run_date, report, only_series)
        raise
    outcome = register_model_set(results, cfg, registry, run_date, run_id, latest)
    _write_report(warehouse, run_date, outcome.report, only_series)
    return outcome


def _write_report(warehouse: Warehouse, run_date: date, report: pd.DataFrame, only_series: list[str] | None) -> None:
    if only_series is None:
        warehouse.replace_run("training_report", run_date, report)
        return
    # A retrain of some series replaces just their rows, in one transaction.
    table = warehouse._table("training_report", report)
    table.metadata.create_all(warehouse.engine, checkfirst=True)
    records = warehouse._records(table, run_date, report)
    with warehouse.engine.begin() as conn:
        conn.execute(
            table.delete().where(
                table.c.dataset == warehouse.dataset, table.c.run_date == run_date, table.c.series_id.in_(list(only_series))
            )
        )
        if len(records):
            conn.execute(table.insert(), records.to_dict("records"))


def failed_series(warehouse: Warehouse, run_date: date | None = None) -> tuple[date | None, list[str]]:
    """The series that failed in the newest training run (or in ``run_date``'s)."""
    if not warehouse.has_table("training_report"):
        return None, []
    if run_date is None:
        last = warehouse.read("SELECT MAX(run_date) AS r FROM training_report WHERE dataset = :d", d=warehouse.dataset)["r"].iloc[0]
        if last is None:
            return None, []
        run_date = date.fromisoformat(str(last)[:10])
    rows = warehouse.read(
        "SELECT series_id FROM training_report WHERE dataset = :d AND run_date = :r AND status = 'failed'",
        d=warehouse.dataset, r=run_date,
    )
    return run_date, sorted(rows["series_id"])


def rollback(
    cfg: DatasetConfig, production: ModelRegistry, warehouse: Warehouse, series: list[str], to_version: int | None = None,
    decided_by: str | None = None,
) -> pd.DataFrame:
    """Point each series' production alias back at an earlier version (the previous one, or
    ``to_version``) and record it in the promotion log."""
    current = production_by_series(production, cfg.name)
    rows = []
    now = datetime.now(UTC).replace(tzinfo=None)
    for sid in series:
        cur = current.get(sid)
        if cur is None:
            raise UserError(f"series {sid!r} has no production model in {production.tracking_uri}")
        versions = sorted(v.version for v in production.search(cfg.name, f"tags.series_id = '{sid}'"))
        target = to_version if to_version is not None else max((v for v in versions if v < cur.version), default=None)
        if target is None or target not in versions:
            raise UserError(f"series {sid!r}: no production version {to_version or 'before ' + str(cur.version)} to roll back to; versions: {versions}")
        production.client.set_registered_model_alias(cur.name, PRODUCTION_ALIAS, str(target))
        rows.append({"series_id": sid, "model_name": cur.name, "training_version": None, "production_version": target,
                     "action": "rollback", "reasons": f"rolled back from version {cur.version}",
                     "decided_by": decided_by or f"mm-platform rollback ({getpass.getuser()})", "decided_at": now})
    log = pd.DataFrame(rows)
    if len(log):
        warehouse.append("promotion_log", now.date(), log)
    return log


@dataclass
class PromotionOutcome:
    decisions: pd.DataFrame
    promoted: int
    rejected: int
    already: int


def promote(
    cfg: DatasetConfig,
    run_date: date,
    training: ModelRegistry,
    production: ModelRegistry,
    warehouse: Warehouse,
    decided_by: str | None = None,
) -> PromotionOutcome:
    """Evaluate each series' newest training model against the rules and copy the ones that
    qualify into the production registry. Each decision is logged once."""
    decided_by = decided_by or f"mm_platform promotion ({getpass.getuser()})"
    candidates = training.latest_by_series(cfg.name)
    current = production_by_series(production, cfg.name)
    decided = set()
    if warehouse.has_table("promotion_log"):
        log = warehouse.read(
            "SELECT series_id, training_version FROM promotion_log WHERE dataset = :d AND action IN ('promoted','rejected')",
            d=cfg.name,
        )
        decided = set(zip(log["series_id"], log["training_version"].astype(int), strict=True))
    rows, already = [], 0
    to_copy, promoted_rows = [], {}
    now = datetime.now(UTC).replace(tzinfo=None)
    for sid, cand in sorted(candidates.items()):
        prod = current.get(sid)
        if (prod and prod.tags.get("training_version") == str(cand.version)) or (sid, cand.version) in decided:
            already += 1
            continue
        metrics = {m: cand.metric(m) for m in METRICS}
        prod_metrics = {"wape": prod.metric("wape")} if prod else None
        d = evaluate(metrics, cfg.promotion, prod_metrics)
        row = {
            "series_id": sid,
            "model_name": cand.name,
            "training_version": cand.version,
            "production_version": None,
            "action": "promoted" if d.promote else "rejected",
            "reasons": "; ".join(d.reasons),
            **{k: d.values.get(k) for k in ("wape", "mape", "naive_wape", "production_wape")},
            "decided_by": decided_by,
            "decided_at": now,
        }
        if d.promote:
            data = training.read_artifact(cand)
            tags = {**cand.tags, "training_version": str(cand.version), "training_registry": _redact(training.tracking_uri),
                    "promoted_at": now.isoformat(), "promotion_run_date": str(run_date)}
            tags.pop("artifact_sha256", None)
            to_copy.append((cand.name, data, tags))
            promoted_rows[cand.name] = row
        rows.append(row)
    # All qualifying models are copied and their production aliases moved in one registry
    # transaction (on database-backed registries): a failure leaves every series on its old model.
    for mv in production.register_many(to_copy, run_name=f"{cfg.name}-promotion-{run_date}", run_tags={}, alias=PRODUCTION_ALIAS):
        promoted_rows[mv.name]["production_version"] = mv.version
    decisions = pd.DataFrame(rows)
    if len(decisions):
        warehouse.append("promotion_log", run_date, decisions)
    promoted = int((decisions["action"] == "promoted").sum()) if len(decisions) else 0
    return PromotionOutcome(decisions, promoted, len(decisions) - promoted, already)


def production_by_series(production: ModelRegistry, dataset: str) -> dict[str, RegisteredModel]:
    """Each series' production model: the version its ``production`` alias points at."""
    return production.aliased_by_series(dataset, PRODUCTION_ALIAS)


def production_models_frame(cfg: DatasetConfig, production: ModelRegistry) -> tuple[pd.DataFrame, list[dict]]:
    """Verified production models as a frame for scoring, plus the series whose model could not be loaded."""
    rows, problems = [], []
    for sid, mv in production_by_series(production, cfg.name).items():
        try:
            data = production.read_artifact(mv)
        except Exception as exc:  # a bad artifact skips that series only
            problems.append({**{k: mv.tags.get(f"key.{k}") for k in cfg.keys}, "series_id": sid, "model_name": mv.name,
                             "model_version": mv.version, "reason": f"{type(exc).__name__}: {exc}"})
            continue
        keys = {k: mv.tags.get(f"key.{k}") for k in cfg.keys}
        rows.append({**keys, "series_id": sid, "model_name": mv.name, "model_version": mv.version, "model_json": data.decode()})
    return pd.DataFrame(rows), problems


def _redact(uri: str) -> str:
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri


def summary_json(**kw) -> str:
    return json.dumps(kw, default=str)
