"""A production model made ready to answer requests with numpy only.

:class:`PreparedModel` is built once per loaded model version from the artifact (the
registry's compact JSON): it keeps the fitted model object (``families.load_model``) and
precomputes what ``forecast_arrays`` recomputes on every call (the date step, the interval
half-width, the default future regressor values). Its forecast equals
``mm_platform.forecasting.series.forecast_arrays`` on the same artifact.
"""

from __future__ import annotations

import sys
from statistics import NormalDist

import numpy as np

from mm_platform.forecasting.families import load_model


class ForecastInputError(ValueError):
    """The request does not fit this model (e.g. a start date before its last observation).

    ``field`` names the request field at fault.
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class PreparedModel:
    __slots__ = ("fitted", "family", "freq", "step_days", "last_ds", "coverage", "half_width", "regressor_names", "defaults")

    def __init__(self, artifact: dict):
        self.fitted = load_model(artifact)
        prepare = getattr(self.fitted, "prepare", None)
        if prepare is not None:
            # The global family: its shared model is read and sha256-checked now, once per
            # process (a bounded cache of shared models), so a bad one fails the load (503).
            prepare()
        self.family = str(artifact["family"])
        self.freq = str(artifact.get("freq", "D"))
        self.step_days = 7 if self.freq == "W" else 1
        self.last_ds = np.datetime64(artifact["last_ds"], "D")
        self.coverage = float(artifact.get("interval_coverage", 0.9))
        # Exactly forecast_arrays' interval: yhat -/+ z * sigma.
        z = NormalDist().inv_cdf(0.5 + self.coverage / 2)
        self.half_width = z * float(artifact.get("interval_sigma", 0.0))
        self.regressor_names = tuple(artifact.get("regressor_names", []))
        last = artifact.get("last_regressors", {}) or {}
        self.defaults = {name: float(last.get(name, 0.0)) for name in self.regressor_names}

    def start_offset(self, start: np.datetime64 | None, max_offset: int) -> int:
        """Periods from the model's last date to ``start`` (1 = the period right after it)."""
        if start is None:
            return 1
        days = int((np.datetime64(start, "D") - self.last_ds).astype(np.int64))
        if days <= 0:
            raise ForecastInputError("start", f"start must be after the model's last date {self.last_ds}")
        if days % self.step_days:
            raise ForecastInputError("start", f"start must fall on the model's weekly calendar (last date {self.last_ds})")
        offset = days // self.step_days
        if offset > max_offset:
            raise ForecastInputError("start", f"start is more than {max_offset} periods after the model's last date {self.last_ds}")
        return offset

    def dates(self, horizon: int, offset: int = 1) -> np.ndarray:
        return self.last_ds + np.timedelta64(self.step_days, "D") * np.arange(offset, offset + horizon)

    def forecast(
        self, horizon: int, regressors: dict[str, list[float]] | None = None, offset: int = 1, nonnegative: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(dates, yhat, lower, upper); future regressors not given carry the last observed value forward."""
        ds = self.dates(horizon, offset)
        regs = {}
        for name in self.regressor_names:
            values = regressors.get(name) if regressors else None
            if values is not None:
                if len(values) != horizon:
                    raise ForecastInputError("regressors", f"regressor {name} has {len(values)} values, horizon is {horizon}")
                regs[name] = np.asarray(values, dtype=np.float64)
            else:
                regs[name] = np.full(horizon, self.defaults[name])
        yhat = self.fitted.predict(ds, regs)
        lower, upper = yhat - self.half_width, yhat + self.half_width
        if nonnegative:
            yhat, lower, upper = np.maximum(yhat, 0), np.maximum(lower, 0), np.maximum(upper, 0)
        return ds, yhat, lower, upper


def deep_sizeof(obj, _seen: set[int] | None = None) -> int:
    """Approximate bytes held by ``obj`` and everything it references (numpy data included)."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        size = sys.getsizeof(obj)
        if obj.base is not None:  # a view: count the data it keeps alive
            size += deep_sizeof(obj.base, seen)
        return size
    size = sys.getsizeof(obj)
    if isinstance(obj, str | bytes | int | float | bool | np.generic) or obj is None:
        return size
    if isinstance(obj, dict):
        return size + sum(deep_sizeof(k, seen) + deep_sizeof(v, seen) for k, v in obj.items())
    if isinstance(obj, list | tuple | set | frozenset):
        return size + sum(deep_sizeof(v, seen) for v in obj)
    if hasattr(obj, "__dict__"):
        size += deep_sizeof(vars(obj), seen)
    for cls in type(obj).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if hasattr(obj, slot):
                size += deep_sizeof(getattr(obj, slot), seen)
    return size
