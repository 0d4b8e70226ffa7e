"""Fallback models for coverage: pure per-series functions (no Spark, no stores).

A series whose own model fails the promotion rules and that has no production model still
gets a forecast from a simple, robust method: croston/TSB for intermittent demand, seasonal
naive otherwise. Each is fitted like a trained model (holdout scored against seasonal naive,
interval calibrated on its out-of-sample residuals, refitted on all data), so its artifact
is served and scored exactly like a champion's and its holdout metrics become its tags.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from mm_platform.forecasting.series import TrainSpec, fit_candidates, regularize

INTERMITTENT_FAMILIES = ("croston", "tsb")


@dataclass
class FallbackFit:
    family: str
    artifact: dict  # the model artifact (as training registers it)
    metrics: dict[str, float]  # holdout metrics of the family and of seasonal naive (METRICS names)
    reason: str


def observations(history: pd.DataFrame) -> int:
    return int(np.isfinite(history["y"].to_numpy(dtype=np.float64)).sum())


def zero_share(history: pd.DataFrame) -> float:
    """Share of the observed values that are zero (missing periods are not counted)."""
    y = history["y"].to_numpy(dtype=np.float64)
    y = y[np.isfinite(y)]
    return float((y == 0).mean()) if len(y) else 0.0


def fit_family(history: pd.DataFrame, spec: TrainSpec, family: str) -> tuple[dict, dict[str, float]]:
    """``family`` fitted on one series' ``ds, y`` history: (artifact, holdout metrics).
    Regressors are not used: the fallback families do not take them."""
    spec = replace(spec, family=family, regressors=(), fit_timeout_seconds=None)
    frame = history[["ds", "y"]].copy()
    frame["ds"] = pd.to_datetime(frame["ds"])
    frame = regularize(frame.sort_values("ds"), spec.freq, ())
    fits = fit_candidates(frame, spec)
    metrics = {k: _num(v) for k, v in (fits.holdout_metrics[family] | fits.naive_metrics).items()}
    return fits.artifact(family, refit=True), metrics


def fit_intermittent(history: pd.DataFrame, spec: TrainSpec, share: float) -> FallbackFit:
    """Croston and TSB, the one with the lower holdout WAPE (croston on a tie or when neither has one)."""
    fits = {f: fit_family(history, spec, f) for f in INTERMITTENT_FAMILIES}
    scores = {f: m.get("wape") for f, (_, m) in fits.items()}
    best = min(INTERMITTENT_FAMILIES, key=lambda f: (scores[f] is None, scores[f] if scores[f] is not None else 0.0))
    shown = ", ".join(f"{f} {_fmt(w)}" for f, w in scores.items())
    artifact, metrics = fits[best]
    return FallbackFit(best, artifact, metrics, f"intermittent ({share:.0%} zeros): {best} had the lower holdout wape ({shown})")


def fit_seasonal_naive(history: pd.DataFrame, spec: TrainSpec) -> FallbackFit:
    artifact, metrics = fit_family(history, spec, "seasonal_naive")
    return FallbackFit("seasonal_naive", artifact, metrics, f"seasonal naive (holdout wape {_fmt(metrics.get('wape'))})")


def _num(v) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"
