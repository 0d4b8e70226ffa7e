"""Per-series training and forecasting: pure functions over pandas/numpy.

``train_series`` is the whole per-series training step: check the series, fit on the
training window, score the holdout against a seasonal-naive baseline, refit on all data
warm-started from the first fit, and return the compact model with its metrics and a
status/reason. ``forecast_series`` turns a compact model into a forecast frame. Spark and
Dagster only wrap these.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import pandas as pd

from mm_platform.forecasting.families import FitContext, SeasonalNaive, get_family, load_model
from mm_platform.forecasting.metrics import all_metrics

TRAINED, SKIPPED, FAILED = "trained", "skipped", "failed"


@dataclass(frozen=True)
class TrainSpec:
    """Everything per-series training needs, as plain values (picklable into Spark workers)."""

    family: str
    freq: str  # "D" or "W"
    season_length: int
    holdout: int
    min_history: int
    regressors: tuple[str, ...] = ()
    prophet: dict = field(default_factory=dict)
    interval_coverage: float = 0.9
    fit_timeout_seconds: float | None = None

    @property
    def fit_context(self) -> FitContext:
        return FitContext(self.freq, self.season_length, self.regressors, self.prophet)


@dataclass
class TrainResult:
    status: str
    reason: str = ""
    n_obs: int = 0
    last_date: str | None = None
    fingerprint: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    model: dict | None = None  # compact form
    fit_seconds: float = 0.0

    def model_json(self) -> str:
        return json.dumps(self.model, separators=(",", ":")) if self.model is not None else ""


def fingerprint(history: pd.DataFrame, columns: list[str]) -> str:
    """A stable hash of a series' data: same data, same fingerprint, no duplicate model."""
    h = hashlib.sha256()
    for col in columns:
        values = history[col].to_numpy()
        if np.issubdtype(values.dtype, np.datetime64):
            values = values.astype("datetime64[D]").astype(np.int64)
        h.update(col.encode())
        h.update(np.ascontiguousarray(values.astype(np.float64)).tobytes())
    return h.hexdigest()[:32]


def regularize(history: pd.DataFrame, freq: str, regressors: tuple[str, ...]) -> pd.DataFrame:
    """Sort, put the series on a regular calendar (missing periods get NaN targets, regressors
    carried forward) so seasonal lags and holdout windows mean what they say."""
    h = history.sort_values("ds")
    ds = pd.DatetimeIndex(h["ds"])
    if freq == "W":
        full = pd.date_range(ds[0], ds[-1], freq=pd.Timedelta(days=7))
    else:
        full = pd.date_range(ds[0], ds[-1], freq="D")
    h = h.set_index("ds").reindex(full)
    if regressors:
        h[list(regressors)] = h[list(regressors)].ffill().bfill()
    return h.rename_axis("ds").reset_index()


def check_series(history: pd.DataFrame, spec: TrainSpec) -> tuple[str, str] | None:
    """Why a series cannot be trained, as (status, reason), or None when it can."""
    if history["ds"].duplicated().any():
        return FAILED, "duplicated dates"
    y = history["y"].to_numpy(dtype=np.float64)
    if np.isinf(y).any():
        return FAILED, "infinite target values"
    observed = np.isfinite(y)
    if not observed.any():
        return SKIPPED, "all target values missing"
    if (y[observed] == 0).all():
        return SKIPPED, "all target values are zero"
    if observed.sum() < spec.min_history:
        return SKIPPED, f"history of {int(observed.sum())} observations is shorter than min_history={spec.min_history}"
    for r in spec.regressors:
        v = history[r].to_numpy(dtype=np.float64)
        if not np.isfinite(v).all():
            return FAILED, f"regressor {r} has missing or infinite values"
    return None


def _interval_sigma(actual: np.ndarray, forecast: np.ndarray) -> float:
    ok = np.isfinite(actual) & np.isfinite(forecast)
    if not ok.any():
        return 0.0
    return float(np.sqrt(np.mean((actual[ok] - forecast[ok]) ** 2)))


class FitTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float | None):
    """Raise FitTimeout in the main thread after ``seconds`` (a no-op elsewhere or when None)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise FitTimeout(f"fit exceeded the per-series time limit of {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def train_series(history: pd.DataFrame, spec: TrainSpec) -> TrainResult:
    """Train one series. ``history`` has columns ds, y and the regressors; never raises for bad data."""
    started = time.process_time()
    try:
        with time_limit(spec.fit_timeout_seconds):
            return _train_series(history, spec, started)
    except Exception as exc:  # one bad series never fails the run: it is reported instead
        return TrainResult(FAILED, f"{type(exc).__name__}: {exc}"[:500], fit_seconds=time.process_time() - started)


def _train_series(history: pd.DataFrame, spec: TrainSpec, started: float) -> TrainResult:
    history = history[["ds", "y", *spec.regressors]].copy()
    history["ds"] = pd.to_datetime(history["ds"])
    problem = check_series(history, spec)
    fp = fingerprint(history.sort_values("ds"), ["ds", "y", *spec.regressors]) if len(history) else ""
    n_obs = int(np.isfinite(history["y"].to_numpy(dtype=np.float64)).sum())
    last = str(history["ds"].max().date()) if len(history) else None
    if problem:
        return TrainResult(problem[0], problem[1], n_obs, last, fp)
    history = regularize(history, spec.freq, spec.regressors)
    train, test = history.iloc[: -spec.holdout], history.iloc[-spec.holdout :]
    ctx = spec.fit_context
    family = get_family(spec.family)

    test_ds = test["ds"].to_numpy()
    test_regs = {r: test[r].to_numpy(dtype=np.float64) for r in spec.regressors}
    actual = test["y"].to_numpy(dtype=np.float64)

    first = family.fit(train, ctx)
    holdout_forecast = first.predict(test_ds, test_regs)
    naive_forecast = SeasonalNaive().fit(train, ctx).predict(test_ds)
    metrics = all_metrics(actual, holdout_forecast) | all_metrics(actual, naive_forecast, prefix="naive_")

    # One training pass: the holdout fit warm-starts the final fit on all data.
    final = family.fit(history, ctx, init=first.warm_start)
    # The model artifact: the family's compact form plus what forecasting needs to know.
    model = {"family": spec.family, "model": final.to_dict()}
    model["interval_sigma"] = _interval_sigma(actual, holdout_forecast)
    model["interval_coverage"] = spec.interval_coverage
    model["freq"] = spec.freq
    model["last_ds"] = str(history["ds"].iloc[-1].date())
    model["regressor_names"] = list(spec.regressors)
    model["last_regressors"] = {r: float(history[r].iloc[-1]) for r in spec.regressors}
    return TrainResult(TRAINED, "", n_obs, last, fp, metrics, model, time.process_time() - started)


def future_dates(last_ds: str, horizon: int, freq: str) -> np.ndarray:
    step = np.timedelta64(7 if freq == "W" else 1, "D")
    start = np.datetime64(last_ds, "D")
    return start + step * np.arange(1, horizon + 1)


def forecast_arrays(
    model: dict, horizon: int, regressors: dict[str, np.ndarray] | None = None, nonnegative: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(dates, yhat, lower, upper) for ``horizon`` periods after the model's last date, numpy only.

    Future regressor values default to the last observed ones carried forward.
    """
    fitted = load_model(model)
    ds = future_dates(model["last_ds"], horizon, model.get("freq", "D"))
    regs = {}
    for name in model.get("regressor_names", []):
        if regressors and name in regressors:
            regs[name] = np.asarray(regressors[name], dtype=np.float64)[:horizon]
            if len(regs[name]) < horizon:
                raise ValueError(f"regressor {name} has {len(regs[name])} future values, horizon is {horizon}")
        else:
            regs[name] = np.full(horizon, float(model.get("last_regressors", {}).get(name, 0.0)))
    yhat = fitted.predict(ds, regs)
    z = NormalDist().inv_cdf(0.5 + model.get("interval_coverage", 0.9) / 2)
    half = z * float(model.get("interval_sigma", 0.0))
    lower, upper = yhat - half, yhat + half
    if nonnegative:
        yhat, lower, upper = np.maximum(yhat, 0), np.maximum(lower, 0), np.maximum(upper, 0)
    return ds, yhat, lower, upper
