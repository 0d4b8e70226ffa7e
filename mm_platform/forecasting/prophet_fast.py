"""Prophet's model, MAP-fitted in-process, and a compact numeric form to predict from.

Prophet (``prophet.Prophet``) finds its MAP estimate by writing the data to disk and running
a cmdstan executable; for many small models that process call dominates the cost of a fit.
This module keeps Prophet's model exactly -- the same features, the same priors and the same
likelihood as ``prophet.stan`` (linear growth) -- and maximises the same log posterior
in-process. It knows nothing of Spark, Dagster or MLflow.

The result is a :class:`CompactProphet`: plain floats and numpy arrays, enough to predict
with numpy alone (no pandas, no Prophet object), with a JSON-serialisable dict form.
:meth:`CompactProphet.from_prophet` converts a library-fitted Prophet into the same form; its
predictions equal ``Prophet.predict(...)["yhat"]`` to floating-point rounding.

Only linear growth is supported; holidays are expected as 0/1 regressor columns.

Features. For plain inputs (a tz-naive datetime64 ``ds`` and numeric columns) the features
are built by a numpy replica of ``Prophet.preprocess`` that is bitwise identical to it (the
tests check this) and about ten times cheaper; anything else goes through
``Prophet.preprocess`` itself.

Objective (``prophet.stan``; Stan's optimiser maximises it without a Jacobian term)::

    k ~ N(0, 5), m ~ N(0, 5), delta ~ Laplace(0, tau), sigma_obs ~ N+(0, 0.5), beta ~ N(0, sigmas)
    y ~ N(trend * (1 + X_m @ beta) + X_a @ beta, sigma_obs)
    trend = k * t + m + B @ delta,   B[i, j] = max(t_i - t_change_j, 0)

Optimiser. ``sigma_obs`` is profiled out exactly: for a residual sum of squares ``R`` its
optimum solves ``4 s^4 + T s^2 - R = 0``. The profiled objective is then minimised by
majorise-minimise steps, each an exact L1-penalised quadratic problem (feature-sign active-set
search, so the Laplace prior gives exact zeros, as at the true mode); the multiplicative model
uses Gauss-Newton steps with backtracking. This converges in a handful of linear solves, where
L-BFGS-B (also implemented here, as a cross-check and a safeguard) needs hundreds of
iterations on the badly conditioned changepoint basis and often stops early, as does Stan's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize

if TYPE_CHECKING:  # pragma: no cover
    from prophet import Prophet

__all__ = [
    "CompactProphet",
    "ProphetSpec",
    "fit_prophet_fast",
    "log_posterior",
    "make_prophet",
]

_FORMAT_VERSION = 1
_SIGMA_MIN = 1e-9
_NS_PER_DAY = 86_400_000_000_000
_MODES = ("additive", "multiplicative")


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProphetSpec:
    """The model configuration: the subset of Prophet's options this module supports."""

    seasonality_mode: str = "additive"  # or "multiplicative"
    yearly_seasonality: bool | int | str = "auto"  # like Prophet: "auto", True, False or a Fourier order
    weekly_seasonality: bool | int | str = "auto"
    daily_seasonality: bool | int | str = False
    changepoint_prior_scale: float = 0.05
    seasonality_prior_scale: float = 10.0
    n_changepoints: int = 25
    changepoint_range: float = 0.8
    regressors: tuple[str, ...] = ()  # standardized like add_regressor(standardize="auto")
    regressor_mode: str | None = None  # None -> seasonality_mode
    regressor_prior_scale: float = 10.0

    def __post_init__(self) -> None:
        if self.seasonality_mode not in _MODES:
            raise ValueError(f"seasonality_mode must be one of {_MODES}, got {self.seasonality_mode!r}")
        if self.regressor_mode is not None and self.regressor_mode not in _MODES:
            raise ValueError(f"regressor_mode must be None or one of {_MODES}, got {self.regressor_mode!r}")
        for name in ("changepoint_prior_scale", "seasonality_prior_scale", "regressor_prior_scale"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0.0 <= float(self.changepoint_range) <= 1.0:
            raise ValueError(f"changepoint_range must be in [0, 1], got {self.changepoint_range!r}")
        if int(self.n_changepoints) < 0:
            raise ValueError(f"n_changepoints must be >= 0, got {self.n_changepoints!r}")
        # Accept a list (e.g. from JSON/YAML) or a single name, but keep the dataclass hashable.
        if isinstance(self.regressors, str):
            object.__setattr__(self, "regressors", (self.regressors,))
        elif not isinstance(self.regressors, tuple):
            object.__setattr__(self, "regressors", tuple(self.regressors))
        if len(set(self.regressors)) != len(self.regressors):
            raise ValueError(f"duplicate regressor names in {self.regressors!r}")

    def prophet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``prophet.Prophet(...)``."""
        return {
            "growth": "linear",
            "n_changepoints": int(self.n_changepoints),
            "changepoint_range": float(self.changepoint_range),
            "yearly_seasonality": self.yearly_seasonality,
            "weekly_seasonality": self.weekly_seasonality,
            "daily_seasonality": self.daily_seasonality,
            "seasonality_mode": self.seasonality_mode,
            "seasonality_prior_scale": float(self.seasonality_prior_scale),
            "changepoint_prior_scale": float(self.changepoint_prior_scale),
        }


def _configure(m: Prophet, spec: ProphetSpec) -> Prophet:
    mode = spec.regressor_mode or spec.seasonality_mode
    for name in spec.regressors:
        m.add_regressor(name, prior_scale=float(spec.regressor_prior_scale), standardize="auto", mode=mode)
    return m


def make_prophet(spec: ProphetSpec, **prophet_kwargs: Any) -> Prophet:
    """A library ``prophet.Prophet`` configured identically to ``spec``.

    Extra keyword arguments (e.g. ``uncertainty_samples=0``) go to ``Prophet(...)``.
    """
    from prophet import Prophet

    return _configure(Prophet(**{**spec.prophet_kwargs(), **prophet_kwargs}), spec)


_PREPROCESSOR_CLS: type | None = None


def _make_preprocessor(spec: ProphetSpec) -> Prophet:
    """A Prophet used only for its preprocessing: it does not load the cmdstan backend."""
    global _PREPROCESSOR_CLS
    if _PREPROCESSOR_CLS is None:
        from prophet import Prophet

        class _InProcessProphet(Prophet):
            def _load_stan_backend(self, stan_backend: str | None) -> None:
                self.stan_backend = None

        _PREPROCESSOR_CLS = _InProcessProphet
    return _configure(_PREPROCESSOR_CLS(**spec.prophet_kwargs(), uncertainty_samples=0), spec)


# --------------------------------------------------------------------------------------
# The compact model
# --------------------------------------------------------------------------------------


def _as_ns(ds: Any) -> np.ndarray:
    """Dates as int64 nanoseconds since the epoch (numpy only)."""
    a = np.asarray(ds)
    if a.dtype != np.dtype("datetime64[ns]"):
        a = a.astype("datetime64[ns]")
    if np.isnat(a).any():
        raise ValueError("ds contains NaT")
    return a.view(np.int64).reshape(-1)


@dataclass(eq=False)
class CompactProphet:
    """Everything needed to predict, as plain numbers and numpy arrays.

    ``start_ns`` / ``t_scale_ns``: Prophet's ``start`` and ``t_scale`` in nanoseconds;
    ``y_scale`` and ``floor``: Prophet's scaling (``floor`` is 0 for the default absmax scaling);
    ``seasonalities``: ``(name, period_days, fourier_order, mode)`` in feature order;
    ``regressors``: ``(name, mu, std, mode)`` in feature order. The columns of ``beta`` are the
    seasonalities' sin/cos pairs, then the regressors (or a single placeholder column when there
    are neither, as in Prophet).
    """

    start_ns: int
    t_scale_ns: int
    y_scale: float
    changepoints_t: np.ndarray
    k: float
    m: float
    delta: np.ndarray
    beta: np.ndarray
    sigma_obs: float
    seasonalities: list[tuple[str, float, int, str]]
    regressors: list[tuple[str, float, float, str]]
    floor: float = 0.0
    # Precomputed layout (derived in __post_init__; not part of the serialized form).
    _freqs: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)
    _s_m: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)
    _s_a: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)
    _n_fourier: int = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.start_ns = int(self.start_ns)
        self.t_scale_ns = int(self.t_scale_ns)
        self.y_scale = float(self.y_scale)
        self.floor = float(self.floor)
        self.k = float(self.k)
        self.m = float(self.m)
        self.sigma_obs = float(self.sigma_obs)
        self.changepoints_t = np.asarray(self.changepoints_t, dtype=np.float64).reshape(-1)
        self.delta = np.asarray(self.delta, dtype=np.float64).reshape(-1)
        self.beta = np.asarray(self.beta, dtype=np.float64).reshape(-1)
        self.seasonalities = [(str(n), float(p), int(o), str(md)) for n, p, o, md in self.seasonalities]
        self.regressors = [(str(n), float(mu), float(sd), str(md)) for n, mu, sd, md in self.regressors]
        if self.t_scale_ns <= 0 or not (np.isfinite(self.y_scale) and self.y_scale > 0):
            raise ValueError(f"bad scaling: t_scale_ns={self.t_scale_ns}, y_scale={self.y_scale}")
        if self.delta.shape != self.changepoints_t.shape:
            raise ValueError(
                f"delta has {self.delta.size} entries but there are {self.changepoints_t.size} changepoints"
            )
        for name, _, order, mode in self.seasonalities:
            if mode not in _MODES or order < 1:
                raise ValueError(f"bad seasonality {name!r}: order {order}, mode {mode!r}")
        for name, _, sd, mode in self.regressors:
            if mode not in _MODES or not sd > 0:
                raise ValueError(f"bad regressor {name!r}: std {sd}, mode {mode!r}")
        freqs, modes = [], []
        for _, period, order, mode in self.seasonalities:
            for i in range(order):
                freqs.append((i + 1) / period)
                modes += [mode, mode]  # sin, cos
        self._freqs = np.asarray(freqs, dtype=np.float64)
        self._n_fourier = 2 * len(freqs)
        modes += [r[3] for r in self.regressors]
        k_expected = max(len(modes), 1)  # Prophet adds a zero placeholder column when empty
        if self.beta.size != k_expected:
            raise ValueError(f"beta has {self.beta.size} entries, the layout needs {k_expected}")
        if not modes:
            modes = ["placeholder"]
        self._s_m = np.asarray([md == "multiplicative" for md in modes], dtype=np.float64)
        self._s_a = np.asarray([md == "additive" for md in modes], dtype=np.float64)

    # ---- parameters -------------------------------------------------------------------

    @property
    def params(self) -> dict[str, Any]:
        """MAP parameters ``{"k", "m", "delta", "beta", "sigma_obs"}``; usable as ``init``."""
        return {
            "k": np.float64(self.k),
            "m": np.float64(self.m),
            "delta": self.delta.copy(),
            "beta": self.beta.copy(),
            "sigma_obs": np.float64(self.sigma_obs),
        }

    def to_prophet_params(self) -> dict[str, np.ndarray]:
        """Parameters shaped like ``Prophet.params`` after a MAP fit (each ``(1, n)``)."""
        return {
            "k": np.array([[self.k]]),
            "m": np.array([[self.m]]),
            "delta": self.delta.reshape(1, -1).copy(),
            "sigma_obs": np.array([[self.sigma_obs]]),
            "beta": self.beta.reshape(1, -1).copy(),
        }

    @property
    def start(self) -> np.datetime64:
        return np.datetime64(self.start_ns, "ns")

    @property
    def end(self) -> np.datetime64:
        """The last training date."""
        return np.datetime64(self.start_ns + self.t_scale_ns, "ns")

    @property
    def t_scale_days(self) -> float:
        return self.t_scale_ns / _NS_PER_DAY

    # ---- prediction -------------------------------------------------------------------

    def _features(self, ns: np.ndarray, regressors: dict[str, np.ndarray] | None) -> np.ndarray:
        n = ns.shape[0]
        X = np.empty((n, self.beta.size), dtype=np.float64)
        if self._n_fourier:
            # Exactly Prophet.fourier_series: days since the epoch, then 2*pi*t scaled per order.
            x_T = np.pi * 2 * (ns / 1_000_000_000 / (24 * 60 * 60))
            c = x_T[:, None] * self._freqs[None, :]
            X[:, 0 : self._n_fourier : 2] = np.sin(c)
            X[:, 1 : self._n_fourier : 2] = np.cos(c)
        if self.regressors:
            regressors = regressors or {}
            for j, (name, mu, sd, _) in enumerate(self.regressors):
                if name not in regressors:
                    raise ValueError(
                        f"regressor {name!r} missing: values are needed for every predicted date"
                    )
                v = np.asarray(regressors[name], dtype=np.float64).reshape(-1)
                if v.shape[0] != n:
                    raise ValueError(f"regressor {name!r} has {v.shape[0]} values for {n} dates")
                if np.isnan(v).any():
                    raise ValueError(f"regressor {name!r} has missing (NaN) values")
                X[:, self._n_fourier + j] = (v - mu) / sd
        elif not self.seasonalities:
            X[:, 0] = 0.0
        return X

    def _trend(self, t: np.ndarray) -> np.ndarray:
        # Exactly Prophet.piecewise_linear, then trend * y_scale + floor.
        cp = self.changepoints_t
        deltas_t = (cp[None, :] <= t[..., None]) * self.delta
        k_t = deltas_t.sum(axis=1) + self.k
        m_t = (deltas_t * -cp).sum(axis=1) + self.m
        return (k_t * t + m_t) * self.y_scale + self.floor

    def predict_components(
        self, ds: np.ndarray, regressors: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """``trend``, ``additive_terms``, ``multiplicative_terms`` and ``yhat`` (Prophet's meaning).

        Like Prophet, additive terms are in units of y and multiplicative terms are relative.
        Per-component columns (each seasonality and each regressor) are included too.
        """
        ns = _as_ns(ds)
        t = (ns - self.start_ns) / self.t_scale_ns
        trend = self._trend(t)
        X = self._features(ns, regressors)
        out: dict[str, np.ndarray] = {"trend": trend}
        col = 0
        blocks = [(name, 2 * order, mode) for name, _, order, mode in self.seasonalities]
        blocks += [(name, 1, mode) for name, _, _, mode in self.regressors]
        for name, width, mode in blocks:
            comp = X[:, col : col + width] @ self.beta[col : col + width]
            out[name] = comp * self.y_scale if mode == "additive" else comp
            col += width
        additive = (X @ (self.beta * self._s_a)) * self.y_scale
        multiplicative = X @ (self.beta * self._s_m)
        out["additive_terms"] = additive
        out["multiplicative_terms"] = multiplicative
        out["yhat"] = trend * (1 + multiplicative) + additive
        return out

    def predict(self, ds: np.ndarray, regressors: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Point forecast (Prophet's ``yhat``) for dates ``ds`` (datetime64 array), numpy only."""
        ns = _as_ns(ds)
        t = (ns - self.start_ns) / self.t_scale_ns
        trend = self._trend(t)
        X = self._features(ns, regressors)
        additive = (X @ (self.beta * self._s_a)) * self.y_scale
        multiplicative = X @ (self.beta * self._s_m)
        return trend * (1 + multiplicative) + additive

    # ---- serialization ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (ints, floats, strings and lists only).

        ``start`` is an ISO timestamp with nanosecond precision; ``t_scale_ns`` is an int.
        Floats survive ``json.dumps``/``json.loads`` exactly, so a round trip predicts identically.
        """
        return {
            "format": "prophet_compact",
            "version": _FORMAT_VERSION,
            "start": str(np.datetime64(self.start_ns, "ns")),
            "t_scale_ns": self.t_scale_ns,
            "y_scale": self.y_scale,
            "floor": self.floor,
            "changepoints_t": [float(v) for v in self.changepoints_t],
            "k": self.k,
            "m": self.m,
            "delta": [float(v) for v in self.delta],
            "beta": [float(v) for v in self.beta],
            "sigma_obs": self.sigma_obs,
            "seasonalities": [[n, p, o, md] for n, p, o, md in self.seasonalities],
            "regressors": [[n, mu, sd, md] for n, mu, sd, md in self.regressors],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompactProphet:
        """Inverse of :meth:`to_dict` (also accepts ``start_ns`` / ``t_scale_days``)."""
        version = int(d.get("version", _FORMAT_VERSION))
        if version > _FORMAT_VERSION:
            raise ValueError(
                f"compact Prophet format version {version} is newer than supported ({_FORMAT_VERSION})"
            )
        if "start_ns" in d:
            start_ns = int(d["start_ns"])
        else:
            start_ns = int(np.datetime64(d["start"], "ns").astype(np.int64))
        if "t_scale_ns" in d:
            t_scale_ns = int(d["t_scale_ns"])
        else:
            t_scale_ns = int(round(float(d["t_scale_days"]) * _NS_PER_DAY))
        return cls(
            start_ns=start_ns,
            t_scale_ns=t_scale_ns,
            y_scale=float(d["y_scale"]),
            changepoints_t=np.asarray(d["changepoints_t"], dtype=np.float64),
            k=float(d["k"]),
            m=float(d["m"]),
            delta=np.asarray(d["delta"], dtype=np.float64),
            beta=np.asarray(d["beta"], dtype=np.float64),
            sigma_obs=float(d["sigma_obs"]),
            seasonalities=[tuple(x) for x in d["seasonalities"]],
            regressors=[tuple(x) for x in d["regressors"]],
            floor=float(d.get("floor", 0.0)),
        )

    @classmethod
    def from_prophet(cls, m: Prophet) -> CompactProphet:
        """Convert a fitted library Prophet (linear growth, no holidays) into the compact form.

        With MAP fits the parameters are ``m.params[...][0]``; with MCMC fits they are the
        posterior means, which is what ``Prophet.predict`` uses for ``yhat`` too.
        """
        if m.history is None or not m.params:
            raise ValueError("the Prophet model has not been fitted")
        params = {name: np.nanmean(np.asarray(m.params[name], dtype=np.float64), axis=0) for name in m.params}
        return cls._from_fitted(m, params)

    @classmethod
    def _from_fitted(cls, m: Prophet, params: dict[str, Any]) -> CompactProphet:
        if m.growth != "linear":
            raise ValueError(f"only linear growth is supported, the model has {m.growth!r}")
        if m.holidays is not None or m.country_holidays is not None or m.train_holiday_names is not None:
            raise ValueError("holidays are not supported: pass them as 0/1 regressor columns")
        seasonalities, regressors = _layout_of(m)
        floor = 0.0 if m.scaling == "absmax" else float(m.y_min)
        compact = cls(
            start_ns=pd.Timestamp(m.start).as_unit("ns").value,
            t_scale_ns=pd.Timedelta(m.t_scale).as_unit("ns").value,
            y_scale=float(m.y_scale),
            changepoints_t=np.asarray(m.changepoints_t, dtype=np.float64),
            k=float(np.asarray(params["k"]).reshape(-1)[0]),
            m=float(np.asarray(params["m"]).reshape(-1)[0]),
            delta=np.asarray(params["delta"], dtype=np.float64).reshape(-1),
            beta=np.asarray(params["beta"], dtype=np.float64).reshape(-1),
            sigma_obs=float(np.asarray(params["sigma_obs"]).reshape(-1)[0]),
            seasonalities=seasonalities,
            regressors=regressors,
            floor=floor,
        )
        cols = getattr(m, "train_component_cols", None)
        if cols is not None and len(cols) == compact.beta.size:
            s_m = cols["multiplicative_terms"].to_numpy(dtype=np.float64)
            s_a = cols["additive_terms"].to_numpy(dtype=np.float64)
            if not (np.array_equal(s_m, compact._s_m) and np.array_equal(s_a, compact._s_a)):
                raise ValueError("the model's feature layout is not supported (unexpected component columns)")
        return compact


def _layout_of(m: Prophet) -> tuple[list, list]:
    seasonalities = []
    for name, props in m.seasonalities.items():
        if props.get("condition_name") is not None:
            raise ValueError(f"conditional seasonality {name!r} is not supported")
        seasonalities.append((name, float(props["period"]), int(props["fourier_order"]), props["mode"]))
    regressors = [
        (name, float(props["mu"]), float(props["std"]), props["mode"])
        for name, props in m.extra_regressors.items()
    ]
    return seasonalities, regressors


# --------------------------------------------------------------------------------------
# The MAP objective
# --------------------------------------------------------------------------------------


def log_posterior(inputs: Any, params: dict[str, Any]) -> float:
    """Prophet's Stan log density (linear growth, constants dropped) at ``params``.

    ``inputs`` is a ``prophet.models.ModelInputData`` (as returned by ``Prophet.preprocess``)
    or a dict with the same fields; ``params`` has ``k, m, delta, beta, sigma_obs`` (scalars,
    vectors or Prophet's ``(1, n)`` arrays). Equals Stan's ``lp__`` of the optimiser's output
    up to an additive constant, so it ranks two fits of the same data.
    """
    d = inputs if isinstance(inputs, dict) else dataclasses.asdict(inputs)
    X = np.asarray(d["X"], dtype=np.float64)
    y = np.asarray(d["y"], dtype=np.float64)
    t = np.asarray(d["t"], dtype=np.float64)
    t_change = np.asarray(d["t_change"], dtype=np.float64).reshape(-1)
    sigmas = np.asarray(d["sigmas"], dtype=np.float64)
    s_a = np.asarray(d["s_a"], dtype=np.float64)
    s_m = np.asarray(d["s_m"], dtype=np.float64)
    tau = float(d["tau"])
    k = float(np.asarray(params["k"]).reshape(-1)[0])
    m = float(np.asarray(params["m"]).reshape(-1)[0])
    delta = np.asarray(params["delta"], dtype=np.float64).reshape(-1)
    beta = np.asarray(params["beta"], dtype=np.float64).reshape(-1)
    sigma = float(np.asarray(params["sigma_obs"]).reshape(-1)[0])
    B = np.maximum(t[:, None] - t_change[None, :], 0.0)
    trend = k * t + m + B @ delta
    mu = trend * (1 + X @ (beta * s_m)) + X @ (beta * s_a)
    rss = float(np.sum((y - mu) ** 2))
    lp = -0.5 * (k / 5) ** 2 - 0.5 * (m / 5) ** 2 - np.sum(np.abs(delta)) / tau
    lp += -0.5 * (sigma / 0.5) ** 2 - 0.5 * float(np.sum((beta / sigmas) ** 2))
    lp += -y.size * math.log(sigma) - 0.5 * rss / sigma**2
    return float(lp)


class _Problem:
    """Prophet's negative log posterior (linear growth) with ``sigma_obs`` profiled out.

    The parameter vector is ``theta = [k, m, delta (S), beta (K)]``. For fixed ``theta`` the
    optimal ``sigma_obs`` solves ``4 s^4 + T s^2 - R = 0`` (``R`` the residual sum of squares),
    so the joint MAP is the minimum over ``theta`` of the profiled objective.
    """

    def __init__(self, X, y, t, t_change, sigmas, tau, s_a, s_m):
        T, K = X.shape
        S = t_change.size
        self.T, self.S, self.K = T, S, K
        self.P = 2 + S + K
        self.y = y
        self.lam = 1.0 / tau  # Laplace(0, tau) prior on delta
        self.prec = np.concatenate([[1 / 25.0, 1 / 25.0], np.zeros(S), 1.0 / np.asarray(sigmas) ** 2])
        self.pen = np.zeros(self.P, dtype=bool)
        self.pen[2 : 2 + S] = True
        self.s_a = s_a
        self.s_m = s_m
        self.multiplicative = bool(np.any(s_m != 0))
        Z = np.empty((T, self.P))  # [t, 1, B, X_a]: the design of the additive model
        Z[:, 0] = t
        Z[:, 1] = 1.0
        Z[:, 2 : 2 + S] = np.maximum(t[:, None] - t_change[None, :], 0.0)  # B = A .* (t - t_change)
        Z[:, 2 + S :] = X * s_a
        self.Z = Z
        self.Zt = Z[:, : 2 + S]
        self.Xa = Z[:, 2 + S :]
        self.X = X
        self._G = None  # additive: Z'Z
        self._JtJ = None  # multiplicative: J'J of the last Gauss-Newton refresh
        if self.multiplicative:
            self._J = np.empty((T, self.P))
            idx = np.flatnonzero(s_m != 0)
            contiguous = idx.size and idx[-1] - idx[0] + 1 == idx.size
            self._mult_cols = slice(2 + S + idx[0], 2 + S + idx[-1] + 1) if contiguous else 2 + S + idx
            self._Xmc = np.ascontiguousarray(X[:, idx])  # the multiplicative columns
            self._midx = idx

    # --- pieces ---

    def residual(self, th: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        if not self.multiplicative:
            return self.y - self.Z @ th, None, None
        S = self.S
        beta = th[2 + S :]
        trend = self.Zt @ th[: 2 + S]
        xm = self._Xmc @ beta[self._midx]
        return self.y - (trend * (1.0 + xm) + self.Xa @ beta), trend, xm

    def sigma2(self, rss: float) -> float:
        T = self.T
        rss = max(rss, 0.0)
        return max(2.0 * rss / (T + math.sqrt(T * T + 16.0 * rss)), _SIGMA_MIN**2)

    def penalty(self, th: np.ndarray) -> float:
        return 0.5 * float(th @ (th * self.prec)) + self.lam * float(np.abs(th[self.pen]).sum())

    def value_rss(self, th: np.ndarray, rss: float) -> float:
        s2 = self.sigma2(rss)
        return self.penalty(th) + 2.0 * s2 + 0.5 * self.T * math.log(s2) + 0.5 * rss / s2

    def value(self, th: np.ndarray) -> float:
        r = self.residual(th)[0]
        return self.value_rss(th, float(r @ r))

    def grad_rss(self, th: np.ndarray) -> tuple[float, np.ndarray]:
        """RSS and its gradient with respect to theta."""
        r, trend, xm = self.residual(th)
        if not self.multiplicative:
            return float(r @ r), -2.0 * (self.Z.T @ r)
        S = self.S
        g = np.empty(self.P)
        g[: 2 + S] = -2.0 * (self.Zt.T @ (r * (1.0 + xm)))
        g[2 + S :] = -2.0 * ((self.X.T @ (r * trend)) * self.s_m + (self.X.T @ r) * self.s_a)
        return float(r @ r), g

    def quadratic_model(
        self, th: np.ndarray, r, trend, xm, c: float, refresh: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(H, q) of the local model ``1/2 x'Hx - q'x`` of ``c * RSS + smooth priors`` around ``th``.

        The model's gradient at ``th`` is always exact. Its Hessian is exact for the additive
        model and the Gauss-Newton ``2c J'J`` (plus priors) for the multiplicative one; with
        ``refresh=False`` the ``J'J`` of the last refresh is reused (cheap late iterations).
        """
        S = self.S
        if not self.multiplicative:
            if self._G is None:
                self._G = self.Z.T @ self.Z
            g = (-2.0 * c) * (self.Z.T @ r)
            H = (2.0 * c) * self._G
        else:
            w = 1.0 + xm
            g = np.empty(self.P)
            g[: 2 + S] = -2.0 * c * (self.Zt.T @ (r * w))
            g[2 + S :] = -2.0 * c * ((self.X.T @ (r * trend)) * self.s_m + (self.X.T @ r) * self.s_a)
            if refresh or self._JtJ is None:
                J = self._J
                np.multiply(self.Zt, w[:, None], out=J[:, : 2 + S])
                J[:, 2 + S :] = self.Xa
                if isinstance(self._mult_cols, slice):
                    np.multiply(self._Xmc, trend[:, None], out=J[:, self._mult_cols])
                else:
                    J[:, self._mult_cols] = self._Xmc * trend[:, None]
                self._JtJ = J.T @ J
            H = (2.0 * c) * self._JtJ
        H[np.diag_indices_from(H)] += self.prec
        g += th * self.prec
        return H, H @ th - g


def _solve_sym(H: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.abs(np.diag(H)))
    d[d == 0] = 1.0
    d = 1.0 / d
    Hs = H * d[:, None] * d[None, :]
    try:
        return np.linalg.solve(Hs, rhs * d) * d
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(Hs, rhs * d, rcond=None)[0] * d


def _lasso_qp(H: np.ndarray, q: np.ndarray, lam: float, pen: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """argmin 1/2 x'Hx - q'x + lam * sum(|x[pen]|) by feature-sign search, warm-started at theta.

    H must be positive definite on the free and the active penalised coordinates. Each step
    solves the KKT system of the current active set with the current signs; a discrete line
    search over sign changes keeps the objective decreasing, so the search terminates with the
    exact solution (Lee, Battle, Raina & Ng 2007, extended to unpenalised coordinates).
    """
    n = q.size
    x = theta.copy()
    sgn = np.where(pen, np.sign(x), 0.0)
    free = ~pen
    # Activation tolerance: above the rounding error of the gradient H @ x - q.
    act_tol = max(1e-10 * max(lam, 1.0), 1e-13 * (np.abs(q).max() + np.abs(H).max() * np.abs(x).max()))

    def fval(v: np.ndarray) -> float:
        return 0.5 * float(v @ (H @ v)) - float(q @ v) + lam * float(np.abs(v[pen]).sum())

    step = True  # warm start: the active set is not known to be optimal yet
    for _ in range(20 * n + 100):
        if not step:
            g = H @ x - q
            viol = np.where(pen & (sgn == 0), np.abs(g) - lam, -np.inf)
            j = int(np.argmax(viol))
            if not viol[j] > act_tol:
                break
            sgn[j] = -np.sign(g[j])
        idx = np.flatnonzero(free | (sgn != 0))
        x_new = np.zeros(n)
        x_new[idx] = _solve_sym(H[np.ix_(idx, idx)], q[idx] - lam * sgn[idx])
        on = sgn != 0
        if np.all(x_new[on] * sgn[on] > 0):
            x = x_new
            step = False
            continue
        # Discrete line search from x to x_new over the points where a coefficient hits zero.
        d = x_new - x
        cross = pen & (x != 0) & (x * x_new <= 0)
        alphas = np.unique(np.concatenate([-x[cross] / d[cross], [1.0]]))
        alphas = alphas[(alphas > 0) & (alphas <= 1)]
        f0 = fval(x)
        best_a, best_f = None, f0
        for a in alphas:
            fa = fval(x + a * d)
            if fa < best_f:
                best_a, best_f = a, fa
        if best_a is None:
            break  # no further decrease is possible in floating point: x is the solution
        with np.errstate(divide="ignore", invalid="ignore"):
            a_j = np.where(cross, -x / d, np.inf)
        x = x + best_a * d
        # Coefficients that reach zero at best_a are set to exactly zero.
        x[cross & (np.abs(a_j - best_a) <= 1e-12)] = 0.0
        sgn = np.where(pen, np.sign(x), 0.0)
        step = True
    return x


def _minimise_newton(
    p: _Problem, theta0: np.ndarray, max_outer: int = 200, rel_tol: float = 1e-13
) -> np.ndarray:
    """Majorise-minimise over sigma with exact lasso sub-problems (Gauss-Newton when multiplicative).

    The profiled objective is ``penalty(theta) + h(RSS(theta))`` with ``h`` concave, so replacing
    ``h`` by its tangent ``h'(R0) * RSS`` (``h'(R0) = 1 / (2 sigma(R0)^2)``) gives a majoriser;
    for the additive model that is a lasso problem solved exactly, so every step decreases the
    objective. For the multiplicative model the RSS is linearised (Gauss-Newton) and steps are
    safeguarded by backtracking.
    """
    th = theta0.copy()
    r, trend, xm = p.residual(th)
    rss = float(r @ r)
    f = p.value_rss(th, rss)
    converged = False
    H = None
    refresh = True
    for _ in range(max_outer):
        c = 0.5 / p.sigma2(rss)
        H, q = p.quadratic_model(th, r, trend, xm, c, refresh=refresh)
        cand = _lasso_qp(H, q, p.lam, p.pen, th)
        step = cand - th
        a = 1.0
        while True:
            th_new = th + a * step if a < 1.0 else cand
            r_new, trend_new, xm_new = p.residual(th_new)
            rss_new = float(r_new @ r_new)
            f_new = p.value_rss(th_new, rss_new)
            if f_new <= f or a < 1e-8:
                break
            a *= 0.5
        if not f_new <= f:
            if not refresh:
                refresh = True  # the reused Gauss-Newton Hessian was too stale: retry with a fresh one
                continue
            # No decrease along the step. For the additive model (an exact majoriser) this only
            # happens at the optimum, to rounding; for Gauss-Newton check below.
            converged = not p.multiplicative
            break
        rel = (f - f_new) / max(1.0, abs(f_new))
        th, r, trend, xm, rss, f = th_new, r_new, trend_new, xm_new, rss_new, f_new
        if rel <= rel_tol:
            converged = True
            break
        # Late Gauss-Newton iterations move little: reuse J'J (the gradient stays exact).
        refresh = rel > 1e-8 or a < 1.0
    if not converged and H is not None and _predicted_gain(p, th, H) > 1e-6:
        # Safeguard (not needed in any case we know of): finish with L-BFGS-B from here.
        th2 = _minimise_lbfgsb(p, th)
        if p.value(th2) < p.value(th):
            th = th2
    return th


def _predicted_gain(p: _Problem, th: np.ndarray, H: np.ndarray) -> float:
    """How much the objective could still drop by moving single coordinates (Newton-scaled KKT).

    For each coordinate, the violation v of its optimality condition gives a predicted decrease
    v^2 / (2 H_ii); the maximum is a scale-free convergence measure in log-posterior units.
    """
    rss, g_rss = p.grad_rss(th)
    g = th * p.prec + (0.5 / p.sigma2(rss)) * g_rss
    viol = np.abs(g)
    d = th[p.pen]
    gd = g[p.pen]
    viol[p.pen] = np.where(d != 0, np.abs(gd + p.lam * np.sign(d)), np.maximum(np.abs(gd) - p.lam, 0.0))
    return float(np.max(viol**2 / (2.0 * np.maximum(np.diag(H), 1e-300))))


def _minimise_lbfgsb(p: _Problem, theta0: np.ndarray, maxiter: int = 20000) -> np.ndarray:
    """The same objective with scipy's L-BFGS-B, delta split into positive and negative parts."""
    S = p.S
    P = p.P

    def to_theta(x: np.ndarray) -> np.ndarray:
        th = np.empty(P)
        th[:2] = x[:2]
        th[2 : 2 + S] = x[2 : 2 + S] - x[2 + S : 2 + 2 * S]
        th[2 + S :] = x[2 + 2 * S :]
        return th

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        th = to_theta(x)
        rss, g_rss = p.grad_rss(th)
        s2 = p.sigma2(rss)
        f = 0.5 * float(th @ (th * p.prec)) + p.lam * float(x[2 : 2 + 2 * S].sum())
        f += 2.0 * s2 + 0.5 * p.T * math.log(s2) + 0.5 * rss / s2
        g_th = th * p.prec + (0.5 / s2) * g_rss  # envelope theorem: d/dtheta at the optimal sigma
        g = np.empty(P + S)
        g[:2] = g_th[:2]
        g[2 : 2 + S] = g_th[2 : 2 + S] + p.lam
        g[2 + S : 2 + 2 * S] = p.lam - g_th[2 : 2 + S]
        g[2 + 2 * S :] = g_th[2 + S :]
        return f, g

    d0 = theta0[2 : 2 + S]
    x0 = np.concatenate([theta0[:2], np.maximum(d0, 0.0), np.maximum(-d0, 0.0), theta0[2 + S :]])
    bounds = [(None, None)] * 2 + [(0.0, None)] * (2 * S) + [(None, None)] * p.K
    res = minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": maxiter, "maxfun": 2 * maxiter, "ftol": 1e-13, "gtol": 1e-9, "maxcor": 10},
    )
    return to_theta(res.x)


# --------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    """The model inputs of one history (what ``Prophet.preprocess`` produces) plus scaling."""

    X: np.ndarray
    y: np.ndarray  # y scaled
    t: np.ndarray
    t_change: np.ndarray
    sigmas: np.ndarray
    s_a: np.ndarray
    s_m: np.ndarray
    tau: float
    k0: float  # Prophet's initial values (linear_growth_init)
    m0: float
    start_ns: int
    t_scale_ns: int
    y_scale: float
    seasonalities: list[tuple[str, float, int, str]]
    regressors: list[tuple[str, float, float, str]]
    has_changepoints: bool  # False -> Prophet folds the dummy delta into k
    y_constant: bool  # True -> Prophet skips the optimiser


def _validate(spec: ProphetSpec) -> None:
    """Let Prophet validate the configuration (once per distinct spec)."""
    if spec not in _VALIDATED:
        _make_preprocessor(spec)
        if len(_VALIDATED) > 1024:
            _VALIDATED.clear()
        _VALIDATED.add(spec)


_VALIDATED: set[ProphetSpec] = set()


def _prepare_prophet(history: pd.DataFrame, spec: ProphetSpec) -> _Prepared:
    """Prophet's own preprocessing (``Prophet.preprocess`` and ``calculate_initial_params``)."""
    m = _make_preprocessor(spec)
    inputs = m.preprocess(history)
    default = m.calculate_initial_params(inputs.K)
    X = inputs.X
    X = np.asarray(X.to_numpy(dtype=np.float64) if hasattr(X, "to_numpy") else X, dtype=np.float64)
    seasonalities, regressors = _layout_of(m)
    y_hist = m.history["y"].to_numpy()
    return _Prepared(
        X=X,
        y=np.asarray(inputs.y, dtype=np.float64),
        t=np.asarray(inputs.t, dtype=np.float64),
        t_change=np.asarray(inputs.t_change, dtype=np.float64).reshape(-1),
        sigmas=np.asarray(inputs.sigmas, dtype=np.float64),
        s_a=np.asarray(inputs.s_a, dtype=np.float64),
        s_m=np.asarray(inputs.s_m, dtype=np.float64),
        tau=float(inputs.tau),
        k0=float(default.k),
        m0=float(default.m),
        start_ns=int(pd.Timestamp(m.start).as_unit("ns").value),
        t_scale_ns=int(pd.Timedelta(m.t_scale).as_unit("ns").value),
        y_scale=float(m.y_scale),
        seasonalities=seasonalities,
        regressors=regressors,
        has_changepoints=len(m.changepoints) > 0,
        y_constant=bool(y_hist.min() == y_hist.max()),
    )


def _seasonality_order(arg: Any, auto_disable: bool, default_order: int) -> int:
    # Prophet.parse_seasonality_args (no custom seasonalities here).
    if isinstance(arg, str) and arg == "auto":
        return 0 if auto_disable else default_order
    if arg is True:
        return default_order
    if arg is False:
        return 0
    return int(arg)


def _prepare_numpy(history: pd.DataFrame, spec: ProphetSpec) -> _Prepared | None:
    """A numpy replica of ``Prophet.preprocess`` for plain inputs (about 10x cheaper).

    Returns None when the input is not plain (``ds`` not a tz-naive datetime64 column, or
    non-numeric ``y`` / regressor columns): the caller then uses Prophet's own preprocessing.
    The replica follows ``Prophet.setup_dataframe``, ``initialize_scales``,
    ``set_auto_seasonalities``, ``make_all_seasonality_features``, ``set_changepoints`` and
    ``linear_growth_init`` operation by operation, so its output is bitwise identical (the test
    suite checks this against ``Prophet.preprocess``).
    """
    ds_col = history["ds"]
    if not (isinstance(ds_col.dtype, np.dtype) and ds_col.dtype.kind == "M"):
        return None
    y_col = history["y"]
    if not (isinstance(y_col.dtype, np.dtype) and y_col.dtype.kind in "fiu"):
        return None
    for name in spec.regressors:
        dt = history[name].dtype
        if not (isinstance(dt, np.dtype) and dt.kind in "fiu"):
            return None

    y_all = y_col.to_numpy(dtype=np.float64)
    keep = ~np.isnan(y_all)
    y = y_all[keep]
    if y.size < 2:
        raise ValueError("Dataframe has less than 2 non-NaN rows.")
    if np.isinf(y).any():
        raise ValueError("Found infinity in column y.")
    ns = ds_col.to_numpy().astype("datetime64[ns]")[keep]
    if np.isnat(ns).any():
        raise ValueError("Found NaN in column ds.")
    ns = ns.view(np.int64)
    regs = {}
    for name in spec.regressors:
        v = history[name].to_numpy(dtype=np.float64)[keep]
        if np.isnan(v).any():
            raise ValueError(f"Found NaN in column {name!r}")
        regs[name] = v

    order = np.argsort(ns, kind="mergesort")  # df.sort_values('ds', kind='mergesort')
    ns = ns[order]
    y = y[order]
    T = y.size
    start, last = int(ns[0]), int(ns[-1])
    t_scale = last - start
    if t_scale == 0:
        raise ValueError("history needs at least 2 distinct dates (ds) with non-NaN y")

    # initialize_scales (absmax scaling, floor 0)
    y_scale = float(np.abs(y).max())
    if y_scale == 0:
        y_scale = 1.0
    reg_mode = spec.regressor_mode or spec.seasonality_mode
    regressors = []
    for name in spec.regressors:
        v = pd.Series(regs[name][order])
        uniq = v.unique()
        standardize = len(uniq) >= 2 and set(uniq) != {1, 0}
        mu, sd = (float(v.mean()), float(v.std())) if standardize else (0.0, 1.0)
        regs[name] = (v.to_numpy() - mu) / sd
        regressors.append((name, mu, sd, reg_mode))
    t = (ns - start) / t_scale
    y_scaled = (y - 0.0) / y_scale

    # set_auto_seasonalities
    span = last - start
    dt = np.diff(ns)
    dt = dt[dt != 0]
    min_dt = int(dt.min())
    day = _NS_PER_DAY
    seasonalities = []
    for name, period, arg, disable, default_order in (
        ("yearly", 365.25, spec.yearly_seasonality, span < 730 * day, 10),
        ("weekly", 7, spec.weekly_seasonality, span < 14 * day or min_dt >= 7 * day, 3),
        ("daily", 1, spec.daily_seasonality, span < 2 * day or min_dt >= day, 4),
    ):
        fo = _seasonality_order(arg, disable, default_order)
        if fo > 0:
            seasonalities.append((name, float(period), fo, spec.seasonality_mode))

    # make_all_seasonality_features
    n_fourier = 2 * sum(fo for _, _, fo, _ in seasonalities)
    K = max(n_fourier + len(regressors), 1)
    X = np.zeros((T, K))
    sigmas = np.empty(K)
    modes = []
    if seasonalities:
        x_T = np.pi * 2 * (ns / 1_000_000_000 / (24 * 60 * 60))
        col = 0
        for _, period, fo, mode in seasonalities:
            for i in range(fo):
                c = (i + 1) / period * x_T
                X[:, col] = np.sin(c)
                X[:, col + 1] = np.cos(c)
                col += 2
            modes += [mode] * (2 * fo)
        sigmas[:n_fourier] = float(spec.seasonality_prior_scale)
    for j, (name, _, _, mode) in enumerate(regressors):
        X[:, n_fourier + j] = regs[name]
        sigmas[n_fourier + j] = float(spec.regressor_prior_scale)
        modes.append(mode)
    if not modes:
        sigmas[0] = 1.0  # Prophet's 'zeros' placeholder column
        modes = ["placeholder"]
    s_a = np.asarray([md == "additive" for md in modes], dtype=np.float64)
    s_m = np.asarray([md == "multiplicative" for md in modes], dtype=np.float64)

    # set_changepoints
    hist_size = int(np.floor(T * spec.changepoint_range))
    n_cp = int(spec.n_changepoints)
    if n_cp + 1 > hist_size:
        n_cp = hist_size - 1
    if n_cp > 0:
        cp_idx = np.linspace(0, hist_size - 1, n_cp + 1).round().astype(int)
        t_change = np.sort((ns[cp_idx[1:]] - start) / t_scale)
    else:
        t_change = np.zeros(1)

    # linear_growth_init: first index of the min and of the max date
    i1 = int(np.flatnonzero(ns == last)[0])
    k0 = (y_scaled[i1] - y_scaled[0]) / (t[i1] - t[0])
    m0 = y_scaled[0] - k0 * t[0]
    return _Prepared(
        X=X,
        y=y_scaled,
        t=t,
        t_change=t_change,
        sigmas=sigmas,
        s_a=s_a,
        s_m=s_m,
        tau=float(spec.changepoint_prior_scale),
        k0=float(k0),
        m0=float(m0),
        start_ns=start,
        t_scale_ns=t_scale,
        y_scale=y_scale,
        seasonalities=seasonalities,
        regressors=regressors,
        has_changepoints=n_cp > 0,
        y_constant=bool(y.min() == y.max()),
    )


def _init_vector(prep: _Prepared, init: dict[str, Any] | None) -> np.ndarray:
    """theta0 = [k, m, delta, beta]; like Prophet, init entries of the wrong shape fall back."""
    S, K = prep.t_change.size, prep.X.shape[1]
    k, m = prep.k0, prep.m0
    delta = np.zeros(S)
    beta = np.zeros(K)
    if init:
        try:
            k = float(np.asarray(init["k"], dtype=np.float64).reshape(-1)[0])
            m = float(np.asarray(init["m"], dtype=np.float64).reshape(-1)[0])
        except (KeyError, IndexError, TypeError, ValueError):
            k, m = prep.k0, prep.m0
        try:
            d = np.asarray(init.get("delta", ()), dtype=np.float64).reshape(-1)
            if d.shape == (S,):
                delta = d
            b = np.asarray(init.get("beta", ()), dtype=np.float64).reshape(-1)
            if b.shape == (K,):
                beta = b
        except (TypeError, ValueError):
            pass
    theta0 = np.concatenate([[k, m], delta, beta])
    if not np.all(np.isfinite(theta0)):
        theta0 = np.concatenate([[prep.k0, prep.m0], np.zeros(S + K)])
    return theta0


def fit_prophet_fast(history: pd.DataFrame, spec: ProphetSpec, init: dict | None = None) -> CompactProphet:
    """MAP-fit Prophet's model in-process and return its compact form.

    ``history`` has columns ``ds``, ``y`` and the regressor columns; rows with NaN ``y`` are
    dropped as Prophet does. ``init`` (e.g. ``CompactProphet.params`` of a previous fit)
    warm-starts the optimiser; entries whose shape does not match are ignored, as in Prophet.
    """
    return _fit(history, spec, init)


def _prepare(history: pd.DataFrame, spec: ProphetSpec, preprocess: str = "auto") -> _Prepared:
    if not isinstance(history, pd.DataFrame) or "ds" not in history or "y" not in history:
        raise ValueError('history must be a DataFrame with columns "ds" and "y"')
    missing = [r for r in spec.regressors if r not in history]
    if missing:
        raise ValueError(f"regressor column(s) {missing} missing from history")
    n_ok = int(pd.to_numeric(history["y"]).notna().sum()) if len(history) else 0
    if n_ok < 2:
        raise ValueError(f"Prophet needs at least 2 non-NaN values of y to fit; history has {n_ok}")
    _validate(spec)
    prep = _prepare_numpy(history, spec) if preprocess in ("auto", "numpy") else None
    if prep is None:
        if preprocess == "numpy":
            raise ValueError("input is not plain enough for the numpy preprocessing")
        prep = _prepare_prophet(history, spec)
    if prep.t_scale_ns <= 0:
        raise ValueError("history needs at least 2 distinct dates (ds) with non-NaN y")
    return prep


def _fit(
    history: pd.DataFrame,
    spec: ProphetSpec,
    init: dict | None = None,
    method: str = "newton",
    preprocess: str = "auto",
) -> CompactProphet:
    prep = _prepare(history, spec, preprocess)
    S, K = prep.t_change.size, prep.X.shape[1]
    if prep.y_constant:
        # Prophet skips the optimiser for a constant series.
        th = np.concatenate([[prep.k0, prep.m0], np.zeros(S + K)])
        sigma = _SIGMA_MIN
    else:
        p = _Problem(prep.X, prep.y, prep.t, prep.t_change, prep.sigmas, prep.tau, prep.s_a, prep.s_m)
        theta0 = _init_vector(prep, init)
        if method == "newton":
            th = _minimise_newton(p, theta0)
        elif method == "lbfgsb":
            th = _minimise_lbfgsb(p, theta0)
        else:
            raise ValueError(f"unknown method {method!r}")
        r = p.residual(th)[0]
        sigma = math.sqrt(p.sigma2(float(r @ r)))
    k = float(th[0])
    delta = th[2 : 2 + S].copy()
    if not prep.has_changepoints:
        # As Prophet does: no changepoints requested -> fold the dummy delta into k.
        k = float(k + delta.sum())
        delta = np.zeros_like(delta)
    return CompactProphet(
        start_ns=prep.start_ns,
        t_scale_ns=prep.t_scale_ns,
        y_scale=prep.y_scale,
        changepoints_t=prep.t_change,
        k=k,
        m=float(th[1]),
        delta=delta,
        beta=th[2 + S :].copy(),
        sigma_obs=sigma,
        seasonalities=prep.seasonalities,
        regressors=prep.regressors,
    )
