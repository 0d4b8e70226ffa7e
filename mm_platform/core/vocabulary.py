"""Each name of the domain, defined once: metric names, per-series statuses, registry tag
keys and aliases, series ids and registered model names."""

from __future__ import annotations

import re
from collections.abc import Mapping

# -- holdout metrics (ours and the seasonal-naive baseline's), as columns and as tags ------------
METRICS = ("mape", "wape", "rmse", "naive_mape", "naive_wape", "naive_rmse")

# -- what happened to a series --------------------------------------------------------------------
TRAINED, SKIPPED, FAILED = "trained", "skipped", "failed"  # training (forecasting.series)
UNCHANGED = "unchanged"  # not refitted: its data fingerprint equals the registered model's
REGISTERED = "registered"  # registration outcome beside UNCHANGED
SCORED, SCORING_FAILED, SCORING_SKIPPED = "scored", "failed", "skipped"  # batch scoring
PROMOTED, REJECTED, ROLLBACK = "promoted", "rejected", "rollback"  # promotion_log actions
FALLBACK_PROMOTED = "fallback"  # promotion_log action: a fallback model became the series' production model
NOT_FORECAST = "not_forecast"  # promotion_log action and coverage tier: the series gets no forecast
DRIFT_FLAGGED = "drift"  # promotion_log action: realized accuracy flagged the series (drift_log has the numbers)

# -- coverage tiers: what kind of production model forecasts a series -----------------------------
TIER_CHAMPION, TIER_FALLBACK = "champion", "fallback"
# fallback chain entries (config promotion.fallback.chain)
FALLBACK_OWN_MODEL, FALLBACK_INTERMITTENT, FALLBACK_SEASONAL_NAIVE = "own_model_if_beats_naive", "intermittent", "seasonal_naive"
# drift actions (config accuracy.drift.actions)
DRIFT_REFIT, DRIFT_ROLLBACK = "refit", "rollback"

# -- registry tags --------------------------------------------------------------------------------
TAG_DATASET = "dataset"
TAG_SERIES_ID = "series_id"
TAG_ALGORITHM = "algorithm"
TAG_FINGERPRINT = "data_fingerprint"
TAG_SHA256 = "artifact_sha256"
TAG_RUN_DATE = "run_date"
TAG_TRAINING_RUN_ID = "training_run_id"
TAG_N_OBS = "n_obs"
TAG_CHAMPION = "champion"
TAG_SELECTION_REASON = "selection_reason"
TAG_DATASET_CHOICE = "dataset_choice"  # auto: the pooled choice the series was trained with
# production copies also carry where they came from
TAG_TRAINING_VERSION = "training_version"
TAG_TRAINING_REGISTRY = "training_registry"
TAG_PROMOTED_AT = "promoted_at"
TAG_PROMOTION_RUN_DATE = "promotion_run_date"
# coverage: the production model's tier (champion / fallback) and why it was chosen
TAG_TIER = "tier"
TAG_TIER_REASON = "tier_reason"
# a training version registered because realized-accuracy drift asked for a refit (value: run date)
TAG_DRIFT_REFIT = "drift_refit"
PRODUCTION_ALIAS = "production"


def key_tag(key: str) -> str:
    """The tag holding a partition key's value."""
    return f"key.{key}"


def metric_tag(metric: str) -> str:
    return f"metric.{metric}"


def backtest_tag(family: str, metric: str) -> str:
    return f"backtest.{family}.{metric}"


def is_identity_tag(tag: str) -> bool:
    """Tags that identify a series; registered models (not only versions) carry them."""
    return tag in (TAG_DATASET, TAG_SERIES_ID) or tag.startswith("key.")


def series_id(keys: Mapping) -> str:
    """``store=3,item=17``: a series' id from its partition key values, in configured order."""
    return ",".join(f"{k}={v}" for k, v in keys.items())


def model_name(dataset: str, keys: Mapping) -> str:
    """A series' registered model name: ``<dataset>.<key>_<value>…`` (MLflow-safe characters)."""
    parts = [f"{k}_{re.sub(r'[^A-Za-z0-9_-]', '_', str(v))}" for k, v in keys.items()]
    return ".".join([dataset, *parts])


def identity_tags(dataset: str, keys: Mapping) -> dict[str, str]:
    """The tags that tie a registered model to its series (checked by serving on every lookup)."""
    return {TAG_DATASET: dataset, TAG_SERIES_ID: series_id(keys), **{key_tag(k): str(v) for k, v in keys.items()}}


def format_metric(v) -> str:
    """A metric as a tag value ("" when missing)."""
    return "" if v is None or (isinstance(v, float) and v != v) else f"{float(v):.6g}"
