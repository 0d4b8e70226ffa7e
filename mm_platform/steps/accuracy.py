"""Realized accuracy: the forecasts that were published (warehouse ``predictions``) against the
actuals that arrived in the lake afterwards, per series and forecast run date, beside the
same numbers for seasonal naive; and drift that acts on them (docs/accuracy.md).

Everything is recomputed for the forecast run dates of the last ``accuracy.lookback_days``
and those run dates' rows of ``forecast_accuracy`` are replaced: late actuals and reruns
change the numbers, never duplicate them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd

from mm_platform.config import DatasetConfig
from mm_platform.core.vocabulary import DRIFT_REFIT, DRIFT_ROLLBACK
from mm_platform.steps.operations import rollback
from mm_platform.stores.lake import Lake
from mm_platform.stores.registry import production_by_series

ACCURACY_COLUMNS = [
    "run_date", "series_id", "tier", "model_name", "model_version", "pairs", "first_ds", "last_ds", "max_step",
    "actual_sum", "abs_error", "error_sum", "inside", "naive_abs_error", "wape", "bias", "interval_coverage",
    "naive_wape", "estimated_wape", "evaluated_at",
]


@dataclass
class AccuracyOutcome:
    rows: pd.DataFrame  # forecast_accuracy rows written (one per series and forecast run date)
    run_dates: list[date]  # forecast run dates (re)evaluated
    drift: pd.DataFrame = field(default_factory=pd.DataFrame)  # drift_log rows written
    summary: dict = field(default_factory=dict)


def actuals(lake: Lake, cfg: DatasetConfig, first: date, last: date) -> pd.DataFrame:
    """``series_id, ds, y`` of the lake's raw table between ``first`` and ``last`` (inclusive)."""
    cols = cfg.columns
    # Only the window's rows are read (Parquet statistics skip the other months): the driver's
    # memory follows the window, not the table's history (issue #18).
    window = [(cols.date, ">=", pd.Timestamp(first)), (cols.date, "<", pd.Timestamp(last) + pd.Timedelta(days=1))]
    raw = lake.read_raw(cfg.source.table, columns=[*cols.keys, cols.date, cols.target], filters=window)
    if not len(raw):
        return pd.DataFrame(columns=["series_id", "ds", "y"])
    ds = pd.to_datetime(raw[cols.date]).dt.normalize()
    raw = raw[(ds >= pd.Timestamp(first)) & (ds <= pd.Timestamp(last))]
    sid = None
    for k in cols.keys:  # series_id() vectorized: "store=1,item=2"
        part = f"{k}=" + raw[k].astype(str)
        sid = part if sid is None else sid + "," + part
    out = pd.DataFrame({"series_id": sid, "ds": ds[raw.index], "y": pd.to_numeric(raw[cols.target], errors="coerce")})
    return out.dropna(subset=["y"]).drop_duplicates(["series_id", "ds"], keep="last").reset_index(drop=True)


def realized_accuracy(forecasts: pd.DataFrame, actual: pd.DataFrame, season_length: int, step_days: int) -> pd.DataFrame:
    """Pure: per (run_date, series_id), the published forecasts scored against the actuals.

    WAPE = sum|y - yhat| / sum|y|; bias = sum(yhat - y) / sum|y| (positive: over-forecast);
    interval coverage = share of actuals inside [yhat_lower, yhat_upper]; naive WAPE: the
    seasonal-naive forecast as of the run date (the value one season before, repeated, as
    ``families.SeasonalNaive`` forecasts), a period with no recorded actual counting as 0.
    Only forecast dates with an actual count.
    """
    if not len(forecasts) or not len(actual):
        return pd.DataFrame(columns=ACCURACY_COLUMNS)
    f = forecasts.copy()
    f["run_date"] = pd.to_datetime(f["run_date"]).dt.normalize()
    f["ds"] = pd.to_datetime(f["ds"]).dt.normalize()
    a = actual[["series_id", "ds", "y"]].copy()
    a["ds"] = pd.to_datetime(a["ds"]).dt.normalize()
    pairs = f[f["ds"] > f["run_date"]].merge(a, on=["series_id", "ds"], how="inner")
    if not len(pairs):
        return pd.DataFrame(columns=ACCURACY_COLUMNS)
    step = ((pairs["ds"] - pairs["run_date"]).dt.days // step_days).astype("int64")
    pairs["step"] = step
    # Seasonal naive as of the run date: last_season[(k - 1) % L], the last season ending on the run date.
    back = (season_length - 1 - (step - 1) % season_length) * step_days
    pairs["naive_ds"] = pairs["run_date"] - pd.to_timedelta(back, unit="D")
    naive = a.rename(columns={"ds": "naive_ds", "y": "naive"})
    pairs = pairs.merge(naive, on=["series_id", "naive_ds"], how="left")
    pairs["naive"] = pairs["naive"].fillna(0.0)
    y, yhat = pairs["y"].to_numpy(float), pairs["yhat"].to_numpy(float)
    pairs["abs_y"] = np.abs(y)
    pairs["abs_error"] = np.abs(y - yhat)
    pairs["error"] = yhat - y
    pairs["inside"] = ((pairs["yhat_lower"] <= pairs["y"]) & (pairs["y"] <= pairs["yhat_upper"])).astype("int64")
    pairs["naive_abs_error"] = np.abs(y - pairs["naive"].to_numpy(float))
    g = pairs.groupby(["run_date", "series_id"], sort=True)
    out = g.agg(
        tier=("tier", "last"), model_name=("model_name", "last"), model_version=("model_version", "last"),
        pairs=("y", "size"), first_ds=("ds", "min"), last_ds=("ds", "max"), max_step=("step", "max"),
        actual_sum=("abs_y", "sum"), abs_error=("abs_error", "sum"), error_sum=("error", "sum"),
        inside=("inside", "sum"), naive_abs_error=("naive_abs_error", "sum"),
    ).reset_index()
    denom = out["actual_sum"].where(out["actual_sum"] > 0)
    out["wape"] = out["abs_error"] / denom
    out["bias"] = out["error_sum"] / denom
    out["interval_coverage"] = out["inside"] / out["pairs"]
    out["naive_wape"] = out["naive_abs_error"] / denom
    for c in ("run_date", "first_ds", "last_ds"):
        out[c] = out[c].dt.date
    out["estimated_wape"] = np.nan
    out["evaluated_at"] = None
    return out[ACCURACY_COLUMNS]


def evaluate_accuracy(lake: Lake, cfg: DatasetConfig, as_of: date, warehouse, production=None) -> AccuracyOutcome:
    """Score the forecasts published on the run dates of the last ``accuracy.lookback_days``
    up to ``as_of`` against the lake's actuals up to ``as_of``, and replace those run dates'
    rows of ``forecast_accuracy``. ``production`` (the production registry) adds each model's
    promotion-time holdout WAPE as ``estimated_wape``."""
    first = as_of - timedelta(days=cfg.accuracy.lookback_days)
    forecasts = warehouse.published_forecasts(first, as_of)
    step_days = 7 if cfg.frequency == "weekly" else 1
    lo = first - timedelta(days=cfg.season_length * step_days)  # the naive forecast looks one season back
    actual = actuals(lake, cfg, lo, as_of) if len(forecasts) else pd.DataFrame(columns=["series_id", "ds", "y"])
    rows = realized_accuracy(forecasts, actual, cfg.season_length, step_days)
    if production is not None and len(rows):
        estimated = {(mv.name, mv.version): mv.metric("wape") for mv in production.search(cfg.name)}
        rows["estimated_wape"] = [estimated.get((n, int(v))) for n, v in zip(rows["model_name"], rows["model_version"], strict=True)]
    rows["evaluated_at"] = datetime.now(UTC).replace(tzinfo=None)
    run_dates = sorted({d.date() if isinstance(d, datetime) else d for d in pd.to_datetime(forecasts["run_date"]).dt.date}) if len(forecasts) else []
    warehouse.replace_run_dates("forecast_accuracy", rows, run_dates)
    return AccuracyOutcome(rows, run_dates, summary=summarize(rows))


def summarize(rows: pd.DataFrame) -> dict:
    """Pooled realized numbers over every evaluated series and run date."""
    if not len(rows) or not rows["actual_sum"].sum():
        return {"series_run_dates": len(rows)}
    total = float(rows["actual_sum"].sum())
    return {
        "series_run_dates": len(rows),
        "pairs": int(rows["pairs"].sum()),
        "wape": float(rows["abs_error"].sum()) / total,
        "bias": float(rows["error_sum"].sum()) / total,
        "interval_coverage": float(rows["inside"].sum()) / float(rows["pairs"].sum()),
        "naive_wape": float(rows["naive_abs_error"].sum()) / total,
    }


# -- drift ---------------------------------------------------------------------------------------


def _pooled(rows: pd.DataFrame) -> pd.DataFrame:
    g = rows.groupby(["series_id", "model_name", "model_version"], sort=True)
    out = g[["pairs", "actual_sum", "abs_error", "naive_abs_error"]].sum().reset_index()
    denom = out["actual_sum"].where(out["actual_sum"] > 0)
    out["realized_wape"] = out["abs_error"] / denom
    out["naive_wape"] = out["naive_abs_error"] / denom
    return out


def detect_drift(cfg: DatasetConfig, rows: pd.DataFrame, current: dict, as_of: date) -> pd.DataFrame:
    """Pure: the series whose current production model's realized WAPE, pooled over the forecast
    run dates of the last ``accuracy.drift.window_days``, is worse than ``factor`` x its
    promotion-time holdout WAPE, or (``worse_than_naive``) worse than seasonal naive's over
    the same dates; one row each with the numbers. ``current``: series id -> production model."""
    d = cfg.accuracy.drift
    cols = ["series_id", "model_name", "model_version", "window_start", "pairs", "realized_wape", "estimated_wape",
            "naive_wape", "factor", "reasons"]
    start = as_of - timedelta(days=d.window_days)
    if not len(rows):
        return pd.DataFrame(columns=cols)
    recent = rows[pd.to_datetime(rows["run_date"]) >= pd.Timestamp(start)]
    flags = []
    for r in _pooled(recent).itertuples(index=False):
        mv = current.get(r.series_id)
        if mv is None or mv.version != int(r.model_version) or r.pairs < d.min_actuals or pd.isna(r.realized_wape):
            continue  # only the model in production now, on enough evidence
        estimated = mv.metric("wape")
        reasons = []
        if estimated is not None and r.realized_wape > d.factor * estimated:
            reasons.append(f"realized wape {r.realized_wape:.4f} > {d.factor} x promotion-time wape {estimated:.4f}")
        if d.worse_than_naive and not pd.isna(r.naive_wape) and r.realized_wape > r.naive_wape:
            reasons.append(f"realized wape {r.realized_wape:.4f} > seasonal naive's {r.naive_wape:.4f}")
        if reasons:
            flags.append({"series_id": r.series_id, "model_name": r.model_name, "model_version": int(r.model_version),
                          "window_start": start, "pairs": int(r.pairs), "realized_wape": float(r.realized_wape),
                          "estimated_wape": estimated, "naive_wape": None if pd.isna(r.naive_wape) else float(r.naive_wape),
                          "factor": d.factor, "reasons": "; ".join(reasons)})
    return pd.DataFrame(flags, columns=cols)


def act_on_drift(cfg: DatasetConfig, as_of: date, rows: pd.DataFrame, production, warehouse,
                 decided_by: str = "mm_platform drift") -> pd.DataFrame:
    """Flag drifting series and take the configured actions; the flags, with their numbers and
    the actions taken, replace ``as_of``'s rows of ``drift_log``.

    ``rollback``: back to the previous production version when its realized WAPE (pooled over
    the evaluated window) was better; ``refit``: recorded in ``drift_log`` as a request the
    next training run honours (``Warehouse.refit_requests``, ``steps.train.train_and_register``),
    and promotion then judges the refit without the drifting model's estimate."""
    d = cfg.accuracy.drift
    if not d.enabled:
        return pd.DataFrame()
    current = production_by_series(production, cfg.name)
    flags = detect_drift(cfg, rows, current, as_of)
    pooled = _pooled(rows) if len(rows) else pd.DataFrame(columns=["series_id", "model_version", "realized_wape"])
    actions = []
    for f in flags.itertuples(index=False):
        taken = []
        if DRIFT_ROLLBACK in d.actions:
            prev = pooled[(pooled["series_id"] == f.series_id) & (pooled["model_version"] < f.model_version)]
            prev = prev.sort_values("model_version").tail(1)
            if len(prev) and not pd.isna(prev["realized_wape"].iloc[0]) and prev["realized_wape"].iloc[0] < f.realized_wape:
                to = int(prev["model_version"].iloc[0])
                rollback(cfg, production, warehouse, [f.series_id], to_version=to, decided_by=decided_by)
                taken.append(f"{DRIFT_ROLLBACK} to version {to} (realized wape {prev['realized_wape'].iloc[0]:.4f})")
        if DRIFT_REFIT in d.actions:
            taken.append(DRIFT_REFIT)
        actions.append(", ".join(taken))
    flags = flags.assign(actions=actions, decided_at=datetime.now(UTC).replace(tzinfo=None))
    warehouse.replace_run_dates("drift_log", flags.assign(run_date=as_of), [as_of])  # (and the BI views)
    return flags
