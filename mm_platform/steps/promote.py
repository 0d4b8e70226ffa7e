"""The promotion step: business rules decide which new models go to the production registry,
and every series with enough history ends up with a production model (coverage).

A series whose new model passes the rules gets it (tier ``champion``). A series whose model
fails keeps its current production model; when it has none (or only an older fallback), the
first applicable entry of ``promotion.fallback.chain`` becomes its production model (tier
``fallback``): its own model if that beats seasonal naive, croston/TSB if it is intermittent,
else seasonal naive, fitted here from the run date's training set. Fallbacks are registered
under the series' usual model name and identity tags, so serving and scoring find them
unchanged. Series below ``min_history`` are reported as not forecast, with the reason.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Protocol

import pandas as pd

from mm_platform.config import DatasetConfig
from mm_platform.core.redaction import redact
from mm_platform.core.vocabulary import (
    FALLBACK_INTERMITTENT,
    FALLBACK_OWN_MODEL,
    FALLBACK_PROMOTED,
    FALLBACK_SEASONAL_NAIVE,
    METRICS,
    NOT_FORECAST,
    PRODUCTION_ALIAS,
    PROMOTED,
    REJECTED,
    TAG_ALGORITHM,
    TAG_CHAMPION,
    TAG_DRIFT_REFIT,
    TAG_N_OBS,
    TAG_PROMOTED_AT,
    TAG_PROMOTION_RUN_DATE,
    TAG_RUN_DATE,
    TAG_SHA256,
    TAG_TIER,
    TAG_TIER_REASON,
    TAG_TRAINING_REGISTRY,
    TAG_TRAINING_VERSION,
    TIER_CHAMPION,
    TIER_FALLBACK,
    format_metric,
    identity_tags,
    metric_tag,
    model_name,
)
from mm_platform.forecasting.fallback import (
    FallbackFit,
    fit_intermittent,
    fit_seasonal_naive,
    observations,
    zero_share,
)
from mm_platform.steps.interfaces import Registry, RegistryReader, ReportStore
from mm_platform.steps.rules import evaluate
from mm_platform.stores.registry import RegisteredModel, production_by_series

COVERAGE_COLUMNS = ["series_id", "tier", "family", "reason", "model_name", "production_version"]


class SeriesHistories(Protocol):
    """What promotion reads of the run date's training set (``stores.training_sets.TrainingSetStore``)."""

    def series(self, run_date: date) -> pd.DataFrame: ...  # keys and series_id, one row per series

    def history(self, run_date: date, series_ids: list[str]) -> pd.DataFrame: ...  # series_id, ds, y


@dataclass
class PromotionOutcome:
    decisions: pd.DataFrame
    promoted: int
    rejected: int
    already: int
    # one row per series of the run date's training set: tier champion / fallback / not_forecast
    coverage: pd.DataFrame
    fallbacks: int = 0  # fallback models registered by this run

    # (series not forecast are in ``coverage`` only: the log records decisions that changed a model)

    def coverage_counts(self) -> dict[str, int]:
        c = self.coverage
        return {tier: int((c["tier"] == tier).sum()) if len(c) else 0 for tier in (TIER_CHAMPION, TIER_FALLBACK, NOT_FORECAST)}


def tier_of(model: RegisteredModel) -> str:
    """A production model's tier (models promoted before tiers existed were champions)."""
    return model.tags.get(TAG_TIER) or TIER_CHAMPION


def promote(
    cfg: DatasetConfig,
    run_date: date,
    training: RegistryReader,
    production: Registry,
    warehouse: ReportStore,
    histories: SeriesHistories | None,
    decided_by: str | None = None,
) -> PromotionOutcome:
    """Evaluate each series' newest training model against the rules, copy the ones that
    qualify into the production registry, give fallbacks to the series left without a
    production model, and log each decision once (``promotion_log``) and the run's coverage
    (``promotion_coverage``). ``histories`` reads the run date's training set (None: no
    fallbacks and no coverage report, e.g. promoting from a registry alone)."""
    decided_by = decided_by or f"mm_platform promotion ({getpass.getuser()})"
    candidates = training.latest_by_series(cfg.name)
    current = production_by_series(production, cfg.name)
    decided = warehouse.decided_promotions()
    rows, already = [], 0
    entries, logged = [], []  # (name, data, tags) to register; the log row of each entry
    failed_rules: dict[str, str] = {}  # series whose candidate was rejected: why
    drifting: set[str] = set()  # drift refits rejected: the drifting production model is not kept
    now = datetime.now(UTC).replace(tzinfo=None)
    for sid, cand in sorted(candidates.items()):
        prod = current.get(sid)
        if (prod and prod.tags.get(TAG_TRAINING_VERSION) == str(cand.version)) or (sid, cand.version) in decided:
            already += 1
            continue
        metrics = {m: cand.metric(m) for m in METRICS}
        # A refit drift asked for is not held to the production model's promotion-time WAPE:
        # realized accuracy has shown that estimate no longer holds (docs/accuracy.md).
        drift_refit = bool(cand.tags.get(TAG_DRIFT_REFIT))
        prod_metrics = {"wape": prod.metric("wape")} if prod and not drift_refit else None
        d = evaluate(metrics, cfg.promotion, prod_metrics)
        row = {
            "series_id": sid,
            "model_name": cand.name,
            "training_version": cand.version,
            "production_version": None,
            "action": PROMOTED if d.promote else REJECTED,
            "reasons": "; ".join(d.reasons),
            **{k: d.values.get(k) for k in ("wape", "mape", "naive_wape", "production_wape")},
            "tier": TIER_CHAMPION if d.promote else None,
            "family": cand.tags.get(TAG_CHAMPION) or cand.tags.get(TAG_ALGORITHM),
            "decided_by": decided_by,
            "decided_at": now,
        }
        if d.promote:
            entries.append(_copy_entry(training, cand, run_date, now, TIER_CHAMPION, "passed the promotion rules"))
            logged.append(row)
        else:
            failed_rules[sid] = row["reasons"]
            if drift_refit and prod is not None:
                drifting.add(sid)
                failed_rules[sid] = f"drift refit of a drifting production model: {row['reasons']}"
        rows.append(row)
    champions = {row["series_id"] for row in logged}

    coverage: dict[str, dict] = {}
    fallback_rows: list[dict] = []
    if histories is not None:
        present = histories.series(run_date)
        need = []
        for r in present.to_dict("records"):
            sid = r["series_id"]
            prod = current.get(sid)
            if sid in champions:
                coverage[sid] = _cov(sid, TIER_CHAMPION, cand_family(candidates.get(sid)), "passed the promotion rules")
            elif prod is not None and not _refresh(prod, run_date) and sid not in drifting:
                coverage[sid] = _cov(sid, tier_of(prod), prod.tags.get(TAG_CHAMPION) or prod.tags.get(TAG_ALGORITHM),
                                     prod.tags.get(TAG_TIER_REASON, "current production model"), prod)
            else:
                need.append(r)
        fb = cfg.promotion.fallback
        if need and not fb.enabled:
            for r in need:
                sid = r["series_id"]
                why = failed_rules.get(sid) or "no model passed the promotion rules"
                coverage[sid] = _cov(sid, NOT_FORECAST, None, f"no production model ({why}); promotion.fallback.enabled is false")
        elif need:
            from mm_platform.spark.train import train_spec  # (imports pyspark types only)

            spec = train_spec(cfg)
            for r, h in _histories_in_batches(histories, run_date, need):
                sid = r["series_id"]
                prod = current.get(sid)
                n = observations(h)
                if n < cfg.min_history:
                    reason = f"{n} observations, fewer than min_history {cfg.min_history}"
                    if prod is not None:  # an older fallback keeps forecasting
                        coverage[sid] = _cov(sid, tier_of(prod), prod.tags.get(TAG_CHAMPION), prod.tags.get(TAG_TIER_REASON, ""), prod)
                        continue
                    coverage[sid] = _cov(sid, NOT_FORECAST, None, reason)
                    continue
                keys = {k: r[k] for k in cfg.keys}
                why = failed_rules.get(sid) or ("kept fallback refreshed" if prod is not None else "no model passed the promotion rules")
                choice = _fallback(cfg, sid, keys, h, spec, candidates.get(sid), prod, training, run_date, now, why)
                if choice is None:
                    reason = f"no production model ({why}); no fallback applies (promotion.fallback.chain {fb.chain})"
                    coverage[sid] = _cov(sid, NOT_FORECAST, None, reason)
                    continue
                if choice == "keep":  # the current fallback already is the chain's answer
                    coverage[sid] = _cov(sid, TIER_FALLBACK, prod.tags.get(TAG_CHAMPION), prod.tags.get(TAG_TIER_REASON, ""), prod)
                    continue
                entry, family, reason, metrics, training_version = choice
                entries.append(entry)
                row = _log_row(sid, entry[0], training_version, FALLBACK_PROMOTED, reason, metrics, decided_by, now, family)
                logged.append(row)
                fallback_rows.append(row)
                coverage[sid] = _cov(sid, TIER_FALLBACK, family, reason)
                coverage[sid]["model_name"] = entry[0]

    # Champions and fallbacks are copied and their production aliases moved in one registry
    # transaction (on database-backed registries): a failure leaves every series on its old model.
    registered = production.register_many(entries, run_name=f"{cfg.name}-promotion-{run_date}", run_tags={}, alias=PRODUCTION_ALIAS)
    for row, mv in zip(logged, registered, strict=True):
        row["production_version"] = mv.version
        if row["series_id"] in coverage:
            coverage[row["series_id"]]["production_version"] = mv.version
    decisions = pd.DataFrame(rows + fallback_rows)
    if len(decisions):
        warehouse.append("promotion_log", run_date, decisions)
    cov = pd.DataFrame(list(coverage.values()), columns=COVERAGE_COLUMNS).sort_values("series_id").reset_index(drop=True)
    if histories is not None:
        warehouse.replace_run("promotion_coverage", run_date, cov)
    promoted = len(champions)
    return PromotionOutcome(decisions, promoted, len(rows) - promoted, already, cov,
                            fallbacks=sum(1 for r in fallback_rows if r["action"] == FALLBACK_PROMOTED))


HISTORY_BATCH = 10  # series whose histories the driver holds at once for fallbacks (issue #18)


def _histories_in_batches(histories, run_date: date, need: list[dict]):
    """``(row, history)`` of each series in ``need``, in order, read ``HISTORY_BATCH`` series
    at a time: the driver's memory follows a batch's history, not every fallback series'."""
    for i in range(0, len(need), HISTORY_BATCH):
        part = need[i : i + HISTORY_BATCH]
        hist = histories.history(run_date, [r["series_id"] for r in part])
        by_series = dict(tuple(hist.groupby("series_id", sort=False))) if len(hist) else {}
        for r in part:
            yield r, by_series.get(r["series_id"], pd.DataFrame(columns=["series_id", "ds", "y"]))


def cand_family(cand: RegisteredModel | None) -> str | None:
    return None if cand is None else cand.tags.get(TAG_CHAMPION) or cand.tags.get(TAG_ALGORITHM)


def _refresh(prod: RegisteredModel, run_date: date) -> bool:
    """A fallback is re-chosen (and refitted on the newer data) once per run date; champions stay."""
    return tier_of(prod) == TIER_FALLBACK and prod.tags.get(TAG_PROMOTION_RUN_DATE) != str(run_date)


def _cov(sid, tier, family, reason, model: RegisteredModel | None = None) -> dict:
    return {"series_id": sid, "tier": tier, "family": family, "reason": reason,
            "model_name": model.name if model else None, "production_version": model.version if model else None}


def _log_row(sid, name, training_version, action, reason, metrics, decided_by, now, family=None) -> dict:
    return {"series_id": sid, "model_name": name, "training_version": training_version, "production_version": None,
            "action": action, "reasons": reason, **{k: metrics.get(k) for k in ("wape", "mape", "naive_wape")},
            "production_wape": None, "tier": TIER_FALLBACK if action == FALLBACK_PROMOTED else None, "family": family,
            "decided_by": decided_by, "decided_at": now}


def _copy_entry(training: RegistryReader, cand: RegisteredModel, run_date: date, now: datetime, tier: str, reason: str):
    data = training.read_artifact(cand)
    tags = {**cand.tags, TAG_TRAINING_VERSION: str(cand.version), TAG_TRAINING_REGISTRY: redact(training.tracking_uri),
            TAG_PROMOTED_AT: now.isoformat(), TAG_PROMOTION_RUN_DATE: str(run_date), TAG_TIER: tier,
            TAG_TIER_REASON: reason[:250]}
    tags.pop(TAG_SHA256, None)  # the production copy gets its own
    return cand.name, data, tags


def _fallback(cfg, sid, keys, history, spec, cand, prod, training, run_date, now, why):
    """The first applicable entry of the fallback chain: ``(entry, family, reason, metrics,
    training_version)``, ``"keep"`` when the current fallback already is it, or None."""
    slack = 1.0 + cfg.promotion.tolerance
    for step in cfg.promotion.fallback.chain:
        if step == FALLBACK_OWN_MODEL:
            if cand is None:
                continue
            wape, naive = cand.metric("wape"), cand.metric("naive_wape")
            if wape is None or naive is None or wape > naive * slack:
                continue
            if prod is not None and prod.tags.get(TAG_TRAINING_VERSION) == str(cand.version):
                return "keep"
            reason = f"fallback: own model beats seasonal naive (wape {wape:.4f} <= {naive:.4f}); champion rules failed: {why}"
            metrics = {m: cand.metric(m) for m in METRICS}
            return _copy_entry(training, cand, run_date, now, TIER_FALLBACK, reason), cand_family(cand), reason, metrics, cand.version
        if step == FALLBACK_INTERMITTENT:
            share = zero_share(history)
            if share < cfg.promotion.fallback.intermittent_zero_share:
                continue
            fit = fit_intermittent(history, spec, share)
        elif step == FALLBACK_SEASONAL_NAIVE:
            fit = fit_seasonal_naive(history, spec)
        else:  # the config only allows the names above
            continue
        reason = f"fallback: {fit.reason}; champion rules failed: {why}"
        return _fitted_entry(cfg, sid, keys, history, fit, run_date, now, reason), fit.family, reason, fit.metrics, None
    return None


def _fitted_entry(cfg, sid, keys, history, fit: FallbackFit, run_date, now, reason):
    tags = {
        **identity_tags(cfg.name, keys),
        TAG_ALGORITHM: fit.family,
        TAG_CHAMPION: fit.family,
        TAG_RUN_DATE: str(run_date),
        TAG_N_OBS: str(observations(history)),
        **{metric_tag(m): format_metric(fit.metrics.get(m)) for m in METRICS},
        TAG_PROMOTED_AT: now.isoformat(),
        TAG_PROMOTION_RUN_DATE: str(run_date),
        TAG_TIER: TIER_FALLBACK,
        TAG_TIER_REASON: reason[:250],
    }
    data = json.dumps(fit.artifact, separators=(",", ":")).encode()
    return model_name(cfg.name, keys), data, tags
