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
