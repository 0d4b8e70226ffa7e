"""Point-forecast accuracy metrics (pure numpy)."""

from __future__ import annotations

import numpy as np


def _clean(actual, forecast) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(actual, dtype=np.float64)
    f = np.asarray(forecast, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(f)
    return a[ok], f[ok]


def wape(actual, forecast) -> float:
    """Weighted absolute percentage error: sum|a-f| / sum|a| (NaN when the actuals sum to zero)."""
    a, f = _clean(actual, forecast)
    denom = np.abs(a).sum()
    return float(np.abs(a - f).sum() / denom) if denom > 0 else float("nan")


def mape(actual, forecast) -> float:
    """Mean absolute percentage error over the periods with non-zero actuals."""
    a, f = _clean(actual, forecast)
    nz = a != 0
    return float(np.mean(np.abs((a[nz] - f[nz]) / a[nz]))) if nz.any() else float("nan")


def rmse(actual, forecast) -> float:
    a, f = _clean(actual, forecast)
    return float(np.sqrt(np.mean((a - f) ** 2))) if len(a) else float("nan")


def all_metrics(actual, forecast, prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}mape": mape(actual, forecast),
        f"{prefix}wape": wape(actual, forecast),
        f"{prefix}rmse": rmse(actual, forecast),
    }


def mase(actual, forecast, scale: float) -> float:
    """Mean absolute scaled error: MAE over ``scale``, the in-sample MAE of the seasonal-naive
    forecast (see :func:`naive_scale`); NaN when the scale is zero or unknown."""
    a, f = _clean(actual, forecast)
    if not len(a) or not np.isfinite(scale) or scale <= 0:
        return float("nan")
    return float(np.mean(np.abs(a - f)) / scale)


def naive_scale(y, season_length: int) -> float:
    """In-sample MAE of the seasonal-naive forecast y[t] = y[t - m] (m = 1 if too short)."""
    y = np.asarray(y, dtype=np.float64)
    m = season_length if len(y) > season_length else 1
    d = np.abs(y[m:] - y[:-m])
    d = d[np.isfinite(d)]
    return float(d.mean()) if len(d) else float("nan")


def coverage(actual, lower, upper) -> float:
    """Share of actuals inside [lower, upper] (NaN actuals ignored)."""
    a = np.asarray(actual, dtype=np.float64)
    lo = np.asarray(lower, dtype=np.float64)
    hi = np.asarray(upper, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return float("nan")
    return float(np.mean((a[ok] >= lo[ok]) & (a[ok] <= hi[ok])))


def conformal_half_width(residuals, coverage_level: float) -> float:
    """Split-conformal half-width: the ceil((n + 1) * coverage)-th smallest absolute residual
    (the largest one when n is too small for that rank), so that a new error of the same kind
    falls within +/- the half-width with probability >= coverage."""
    r = np.abs(np.asarray(residuals, dtype=np.float64))
    r = np.sort(r[np.isfinite(r)])
    if not len(r):
        return 0.0
    rank = int(np.ceil((len(r) + 1) * coverage_level))
    return float(r[min(rank, len(r)) - 1])


SELECTION_METRICS = ("wape", "mase", "rmse", "mape")


def selection_metric(name: str, actual, forecast, scale: float = float("nan")) -> float:
    if name == "wape":
        return wape(actual, forecast)
    if name == "mase":
        return mase(actual, forecast, scale)
    if name == "rmse":
        return rmse(actual, forecast)
    if name == "mape":
        return mape(actual, forecast)
    raise ValueError(f"unknown metric {name!r}; known: {SELECTION_METRICS}")
