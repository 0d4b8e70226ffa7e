"""Model families behind one interface.

A family fits a history frame (columns ``ds``, ``y`` and the regressor columns) into a
fitted model that predicts from numpy arrays only and serializes to a small JSON-able
dict (its *compact form*): that dict is what the registry stores and what batch scoring
and the real-time service load. Adding a family is one class here plus a line in
``FAMILIES`` (and, for model selection's near-tie rule, a place in ``COST_ORDER``).

Families: ``seasonal_naive``; ``prophet`` (in-process MAP fit) and ``prophet_library``
(cmdstan); ``ets``, ``theta`` and ``arima`` (statsforecast AutoETS / AutoTheta / AutoARIMA;
ARIMA takes the regressors as X); ``regression`` (ridge on trend, Fourier terms and the
regressors, numpy); ``croston`` and ``tsb`` (intermittent demand, numpy); ``ensemble`` (mean
of member families). Every family that can use the configured regressors does (prophet,
arima, regression, and the ensemble through its members). ``global_lgbm`` is the per-series
side of one LightGBM model shared across series (``global_lgbm.py``).

ETS, Theta and ARIMA forecast from the end of their data, so their compact form stores the
point forecast path of ``FitContext.max_horizon`` steps (ARIMA: the path with X = 0 plus the
regression coefficients, as its forecast is linear in X); see :class:`PathModel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class FitContext:
    """What a family needs to know about the series beyond its values."""

    freq: str  # pandas frequency of the series: "D" or "W"
    season_length: int  # 7 for daily, 52 for weekly
    regressors: tuple[str, ...] = ()
    prophet: dict[str, Any] | None = None  # ProphetSpec fields
    max_horizon: int = 56  # periods a forecast-path family (ETS, ARIMA, Theta) stores
    options: dict[str, Any] | None = None  # family options, e.g. {"ensemble": ["prophet", "ets"]}


class FittedModel(Protocol):
    family: ClassVar[str]

    def predict(self, ds: np.ndarray, regressors: dict[str, np.ndarray] | None = None) -> np.ndarray: ...

    def to_dict(self) -> dict: ...

    @property
    def warm_start(self) -> dict | None: ...


class Family(Protocol):
    name: ClassVar[str]

    def fit(self, history: pd.DataFrame, ctx: FitContext, init: dict | None = None) -> FittedModel: ...

    def load(self, payload: dict) -> FittedModel: ...


# --- seasonal naive -------------------------------------------------------------------


@dataclass
class SeasonalNaiveModel:
    family: ClassVar[str] = "seasonal_naive"
    last_season: np.ndarray  # the last season_length observations, oldest first
    last_ds: np.datetime64
    step_days: int

    def predict(self, ds: np.ndarray, regressors: dict[str, np.ndarray] | None = None) -> np.ndarray:
        ds = np.asarray(ds, dtype="datetime64[D]")
        steps = ((ds - self.last_ds).astype(np.int64) // self.step_days) - 1
        if (steps < 0).any():
            raise ValueError("seasonal naive can only forecast dates after the last observation")
        return self.last_season[steps % len(self.last_season)].astype(np.float64)

    def to_dict(self) -> dict:
        return {
            "last_season": [float(v) for v in self.last_season],
            "last_ds": str(self.last_ds),
            "step_days": self.step_days,
        }

    @property
    def warm_start(self) -> dict | None:
        return None


class SeasonalNaive:
    name: ClassVar[str] = "seasonal_naive"

    def fit(self, history: pd.DataFrame, ctx: FitContext, init: dict | None = None) -> SeasonalNaiveModel:
        y = history["y"].to_numpy(dtype=np.float64)
        ds = history["ds"].to_numpy().astype("datetime64[D]")
        if len(y) == 0:
            raise ValueError("seasonal naive needs at least one observation")
        season = y[-ctx.season_length :]
        # Missing values in the last season fall back to the mean of what is there.
        if np.isnan(season).any():
            fill = np.nanmean(y) if np.isfinite(y).any() else 0.0
            season = np.where(np.isnan(season), fill, season)
        if len(season) < ctx.season_length:
            season = np.resize(season, ctx.season_length)
        return SeasonalNaiveModel(season, ds[-1], 7 if ctx.freq == "W" else 1)

    def load(self, payload: dict) -> SeasonalNaiveModel:
        return SeasonalNaiveModel(
            np.asarray(payload["last_season"], dtype=np.float64),
            np.datetime64(payload["last_ds"], "D"),
            int(payload["step_days"]),
        )


# --- prophet ----------------------------------------------------------------------------


@dataclass
class ProphetModel:
    family: ClassVar[str] = "prophet"
    compact: Any  # prophet_fast.CompactProphet

    def predict(self, ds: np.ndarray, regressors: dict[str, np.ndarray] | None = None) -> np.ndarray:
        return self.compact.predict(np.asarray(ds, dtype="datetime64[ns]"), regressors)

    def to_dict(self) -> dict:
        return self.compact.to_dict()

    @property
    def warm_start(self) -> dict | None:
        return self.compact.params


def _prophet_spec(ctx: FitContext):
    from mm_platform.forecasting.prophet_fast import ProphetSpec

    params = dict(ctx.prophet or {})
    if ctx.freq == "W":
        # Weekly data has no within-week pattern to learn.
        params["weekly_seasonality"] = False
    return ProphetSpec(regressors=tuple(ctx.regressors), **params)


class Prophet:
    """Prophet's model and priors, MAP-fitted in-process (no cmdstan process per series)."""

    name: ClassVar[str] = "prophet"

    def fit(self, history: pd.DataFrame, ctx: FitContext, init: dict | None = None) -> ProphetModel:
        from mm_platform.forecasting.prophet_fast import fit_prophet_fast

        return ProphetModel(fit_prophet_fast(history, _prophet_spec(ctx), init=init))

    def load(self, payload: dict) -> ProphetModel:
        from mm_platform.forecasting.prophet_fast import CompactProphet

        return ProphetModel(CompactProphet.from_dict(payload))


class ProphetLibrary(Prophet):
    """The reference approach: prophet's own fit through cmdstan, one process call per fit."""

    name: ClassVar[str] = "prophet_library"

    def fit(self, history: pd.DataFrame, ctx: FitContext, init: dict | None = None) -> ProphetModel:
        from mm_platform.forecasting.prophet_fast import CompactProphet, make_prophet

        m = make_prophet(_prophet_spec(ctx))
        kwargs = {"init": init} if init else {}  # prophet wants numpy arrays, as in CompactProphet.params
        m.fit(history, **kwargs)
        return ProphetModel(CompactProphet.from_prophet(m))


# --- shared helpers ----------------------------------------------------------------------


def _step_days(ctx_or_freq) -> int:
    freq = ctx_or_freq if isinstance(ctx_or_freq, str) else ctx_or_freq.freq
    return 7 if freq == "W" else 1


def _filled(y: np.ndarray) -> np.ndarray:
    """Missing targets linearly interpolated (ends carried), for models that need a gap-free series."""
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(y)
    if ok.all():
        return y
    if not ok.any():
        raise ValueError("no observed values")
    idx = np.arange(len(y))
    return np.interp(idx, idx[ok], y[ok])


def _tail(history: pd.DataFrame, max_periods: int | None) -> pd.DataFrame:
    if max_periods and len(history) > max_periods:
        history = history.iloc[-max_periods:]
    # Leading missing targets carry no information.
    first = np.flatnonzero(np.isfinite(history["y"].to_numpy(dtype=np.float64)))
    return history.iloc[first[0] :] if len(first) else history


def _steps(ds: np.ndarray, last_ds: np.datetime64, step_days: int) -> np.ndarray:
    """1-based number of periods of each date after ``last_ds``."""
    ds = np.asarray(ds, dtype="datetime64[D]")
    steps = (ds - last_ds).astype(np.int64) // step_days
    if (steps < 1).any():
        raise ValueError("this model can only forecast dates after its last observation")
    return steps


def _fourier(ds: np.ndarray, terms: list[tuple[float, int]]) -> np.ndarray:
    """sin/cos columns of each (period in days, order), on days since the epoch (like Prophet)."""
    days = np.asarray(ds, dtype="datetime64[D]").astype(np.int64).astype(np.float64)
    cols = []
    for period, order in terms:
        for k in range(1, int(order) + 1):
            arg = 2.0 * np.pi * k * days / float(period)
            cols += [np.sin(arg), np.cos(arg)]
    return np.column_stack(cols) if cols else np.zeros((len(days), 0))


def _regressor_matrix(names, regressors: dict[str, np.ndarray] | None, n: int) -> np.ndarray:
    if not names:
        return np.zeros((n, 0))
    regressors = regressors or {}
    cols = []
    for name in names:
        if name not in regressors:
            raise ValueError(f"regressor {name!r} missing: values are needed for every predicted date")
        v = np.asarray(regressors[name], dtype=np.float64).reshape(-1)
        if v.shape[0] != n:
            raise ValueError(f"regressor {name!r} has {v.shape[0]} values for {n} dates")
        cols.append(v)
    return np.column_stack(cols)


def _yearly_order(n_periods: int, freq: str, order: int) -> int:
    """Yearly Fourier terms only once the history spans about two years."""
    span_days = n_periods * (7 if freq == "W" else 1)
    return order if span_days >= 700 else 0


def _weekly_terms(ctx: FitContext, yearly: int) -> list[tuple[float, int]]:
    terms = []
    if ctx.freq != "W":
        terms.append((7.0, 3))
    if yearly:
        terms.append((365.25, yearly))
    return terms


def _quiet_statsforecast():
    import logging
    import os
    import warnings

    os.environ.setdefault("NIXTLA_ID_AS_COL", "1")
    warnings.filterwarnings("ignore", module="statsforecast")
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    logging.getLogger("statsforecast").setLevel(logging.ERROR)


# --- forecast-path models (ETS, ARIMA, Theta) --------------------------------------------


@dataclass
class PathModel:
    """A forecast stored as its point path for ``len(path)`` periods after ``last_ds``.

    State-space models (ETS, ARIMA, Theta) forecast from the end of their data, so the compact
    form is the point forecast of ``max_horizon`` steps (``FitContext.max_horizon``) plus, for
    ARIMA with exogenous regressors, the regression coefficients: the prediction is
    ``path[h] + sum_j beta_j * x_j[h]`` (statsforecast's ARIMA forecast is linear in X, and
    ``path`` is its forecast with X = 0). Dates past the stored path repeat the path's last
    season (documented limitation: retrain, or raise ``horizon``, for longer forecasts).
    """

    family: str
    path: np.ndarray
    last_ds: np.datetime64
    step_days: int
    season_length: int
    regressor_names: tuple[str, ...] = ()
    beta: np.ndarray | None = None  # one per regressor name
    fourier_terms: tuple[tuple[float, int], ...] = ()
    fourier_beta: np.ndarray | None = None
    spec: str = ""  # e.g. "ETS(A,N,A)" or "ARIMA(1,0,1)(0,1,1)[7]": for humans

    def predict(self, ds: np.ndarray, regressors: dict[str, np.ndarray] | None = None) -> np.ndarray:
        steps = _steps(ds, self.last_ds, self.step_days)
        n = len(self.path)
        idx = steps - 1
        over = idx >= n
        if over.any():
            m = max(1, min(self.season_length, n))
            idx = np.where(over, n - m + (idx - n) % m, idx)
        out = self.path[idx].astype(np.float64)
        if self.regressor_names:
            out = out + _regressor_matrix(self.regressor_names, regressors, len(out)) @ self.beta
        if self.fourier_terms:
            out = out + _fourier(ds, list(self.fourier_terms)) @ self.fourier_beta
        return out

    def to_dict(self) -> dict:
        return {
            "path": [float(v) for v in self.path],
            "last_ds": str(self.last_ds),
            "step_days": self.step_days,
            "season_length": self.season_length,
            "regressors": list(self.regressor_names),
            "beta": [float(v) for v in self.beta] if self.beta is not None else [],
            "fourier": [[float(p), int(o)] for p, o in self.fourier_terms],
            "fourier_beta": [float(v) for v in self.fourier_beta] if self.fourier_beta is not None else [],
            "spec": self.spec,
        }

    @classmethod
    def from_dict(cls, family: str, payload: dict) -> PathModel:
        return cls(
            family,
            np.asarray(payload["path"], dtype=np.float64),
            np.datetime64(payload["last_ds"], "D"),
            int(payload["step_days"]),
            int(payload.get("season_length", 1)),
            tuple(payload.get("regressors", ())),
            np.asarray(payload.get("beta", []), dtype=np.float64),
            tuple((float(p), int(o)) for p, o in payload.get("fourier", [])),
            np.asarray(payload.get("fourier_beta", []), dtype=np.float64),
            str(payload.get("spec", "")),
        )

    @property
    def warm_start(self) -> dict | None:
        return None


class _PathFamily:
    name: ClassVar[str] = ""
    max_train: ClassVar[dict[str, int]] = {"D": 730, "W": 520}

    def load(self, payload: dict) -> PathModel:
        return PathModel.from_dict(self.name, payload)

    def _series(self, history: pd.DataFrame, ctx: FitContext) -> tuple[pd.DataFrame, np.ndarray]:
        h = _tail(history, self.max_train.get(ctx.freq))
        return h, _filled(h["y"].to_numpy(dtype=np.float64))


class ETS(_PathFamily):
    """statsforecast AutoETS (error/trend/season chosen by AICc); no exogenous regressors."""

    name: ClassVar[str] = "ets"

    def fit(self, history: pd.DataFrame, ctx: FitContext, init: dict | None = None) -> PathModel:
        _quiet_statsforecast()
        from statsforecast.models import AutoETS

        h, y = self._series(history, ctx)
        m = ctx.season_length if ctx.season_length <= 24 and len(y) >= 2 * ctx.season_length else 1
        model = AutoETS(season_length=m).fit(y)
        path = np.asarray(model.predict(ctx.max_horizon)["mean"], dtype=np.float64)
        last = h["ds"].to_numpy().astype("datetime64[D]")[-1]
        return PathModel(self.name, path, last, _step_days(ctx), m, spec=str(model.model_.get("method", "")))


class Theta(_PathFamily):
    """statsforecast AutoTheta; no exogenous regressors."""

    name: ClassVar[str] = "theta"

    def fit(self, history: pd.DataFrame, ctx: FitContext, init: dict | None = None) -> PathModel:
        _quiet_statsforecast()
        from statsforecast.models import AutoTheta

        h, y = self._series(history, ctx)
        m = ctx.season_length if len(y) >= 2 * ctx.season_length else 1
        if m > 1 and (y <= 0).any():
            decomposition = "additive"
        else:
            decomposition = "multiplicative"
        model = AutoTheta(season_length=m, decomposition_type=decomposition).fit(y)
        path = np.asarray(model.predict(ctx.max_horizon)["mean"], dtype=np.float64)
        last = h["ds"].to_numpy().astype("datetime64[D]")[-1]
        return PathModel(self.name, path, last, _step_days(ctx), m, spec=f"Theta({decomposition})")


class ARIMA(_PathFamily):
    """statsforecast AutoARIMA (small stepwise search) with the configured regressors as X
    (regression with ARIMA errors). Weekly data: non-seasonal ARIMA plus yearly Fourier terms in X."""

    name: ClassVar[str] = "arima"
    max_train: ClassVar[dict[str, int]] = {"D": 365, "W": 260}

    def fit(self, history: pd.DataFrame, ctx: FitContext, init: dict | None = None) -> PathModel:
        _quiet_statsforecast()
        from statsforecast.models import AutoARIMA

        h, y = self._series(history, ctx)
        ds = h["ds"].to_numpy().astype("datetime64[D]")
        regs = tuple(r for r in ctx.regressors if np.ptp(h[r].to_numpy(dtype=np.float64)) > 0)
        X = h[list(regs)].to_numpy(dtype=np.float64) if regs else np.zeros((len(y), 0))
        m = ctx.season_length if ctx.season_length <= 24 and len(y) >= 3 * ctx.season_length else 1
        terms: tuple[tuple[float, int], ...] = ()
        if ctx.freq == "W" and _yearly_order(len(y), "W", 1):
            terms = ((365.25, 3),)
            X = np.column_stack([X, _fourier(ds, list(terms))])
        model = AutoARIMA(
            season_length=m, max_p=2, max_q=2, max_P=1, max_Q=1, max_order=4, nmodels=6, approximation=True
        )
        model.fit(y, X=X if X.shape[1] else None)
        coef = model.model_["coef"]
        ex = np.asarray([float(coef.get(f"ex_{j + 1}", 0.0)) for j in range(X.shape[1])])
        zero = np.zeros((ctx.max_horizon, X.shape[1])) if X.shape[1] else None
        path = np.asarray(model.predict(ctx.max_horizon, X=zero)["mean"], dtype=np.float64)
        p, q, P, Q, s, d, D = model.model_["arma"]
        return PathModel(
            self.name,
            path,
            ds[-1],
            _step_days(ctx),
            m,
            regs,
            ex[: len(regs)],
            terms,
            ex[len(regs) :],
            spec=f"ARIMA({p},{d},{q})({P},{D},{Q})[{s}]",
        )


# --- regression with trend, Fourier seasonality and regressors ---------------------------


@dataclass
class RegressionModel:
    family: ClassVar[str] = "regression"
    origin: np.datetime64  # t = 0
    t_scale: float  # days per unit of t
    fourier_terms: tuple[tuple[float, int], ...]
    regressor_names: tuple[str, ...]
    x_mean: np.ndarray
    x_std: np.ndarray
    coef: np.ndarray  # [intercept, trend, fourier..., regressors..., (log price)]
    log: bool  # fitted on log1p(y)
    # Constant-elasticity mode: log(demand) on log(price) (the last coefficient is the price
    # elasticity); demand is y, or y / price for a revenue target (then y = price * demand).
    price: str = ""
    revenue: bool = False
    log_price_mean: float = 0.0

    def design(self, ds: np.ndarray, regressors: dict[str, np.ndarray] | None) -> np.ndarray:
        ds = np.asarray(ds, dtype="datetime64[D]")
        t = (ds - self.origin).astype(np.int64) / self.t_scale
        X = [np.ones_like(t), t, _fourier(ds, list(self.fourier_terms))]
        if self.regressor_names:
            R = _regressor_matrix(self.regressor_names, regressors, len(t))
            X.append((R - self.x_mean) / self.x_std)
        if self.price:
            X.append(np.log(self._price(regressors, len(t))) - self.log_price_mean)
        return np.column_stack(X)

    def _price(self, regressors: dict[str, np.ndarray] | None, n: int) -> np.ndarray:
        p = _regressor_matrix((self.price,), regressors, n)[:, 0]
        if not (p > 0).all():
            raise ValueError(f"regressor {self.price!r} must be positive for the price elasticity model")
        return p

    @property
    def elasticity(self) -> float | None:
        return float(self.coef[-1]) if self.price else None

    def predict(self, ds: np.ndarray, regressors: dict[str, np.ndarray] | None = None) -> np.ndarray:
        out = self.design(ds, regressors) @ self.coef
        if self.price:
            demand = np.exp(out)
            return demand * self._price(regressors, len(out)) if self.revenue else demand
        return np.expm1(out) if self.log else out

    def to_dict(self) -> dict:
        out = {
            "origin": str(self.origin),
            "t_scale": self.t_scale,
            "fourier": [[float(p), int(o)] for p, o in self.fourier_terms],
            "regressors": list(self.regressor_names),
            "x_mean": [float(v) for v in self.x_mean],
            "x_std": [float(v) for v in self.x_std],
            "coef": [float(v) for v in self.coef],
            "log": self.log,
        }
        if self.price:  # only then: artifacts of the plain model keep their form
            out |= {"price": self.price, "revenue": self.revenue, "log_price_mean": self.log_price_mean}
        return out

    @property
    def warm_start(self) -> dict | None:
        return None


class Regression:
    """Ridge regression on a linear trend, Fourier seasonal terms (weekly for daily data,
    yearly once two years are there) and the configured regressors, in numpy. Non-negative
    series without many zeros are fitted on log1p(y) (multiplicative effects, e.g. price
    elasticity and promotion lifts); the trend slope is shrunk harder than the other terms."""

    name: ClassVar[str] = "regression"
    max_train: ClassVar[dict[str, int]] = {"D": 730, "W": 260}
    ridge: ClassVar[float] = 1.0
    trend_ridge: ClassVar[float] = 10.0

    def fit(self, history: pd.DataFrame, ctx: FitContext, init: dict | None = None) -> RegressionModel:
        opts = elasticity_options(ctx)
        if opts is not None:
            model = self.fit_elasticity(history, ctx, opts)
            if model is not None:
                return model
        h = _tail(history, self.max_train.get(ctx.freq))
        y = h["y"].to_numpy(dtype=np.float64)
        ok = np.isfinite(y)
        if ok.sum() < 3:
            raise ValueError("regression needs at least 3 observations")
        ds = h["ds"].to_numpy().astype("datetime64[D]")
        regs = tuple(r for r in ctx.regressors if np.ptp(h[r].to_numpy(dtype=np.float64)[ok]) > 0)
        R = h[list(regs)].to_numpy(dtype=np.float64) if regs else np.zeros((len(y), 0))
        x_mean = R[ok].mean(axis=0) if regs else np.zeros(0)
        x_std = R[ok].std(axis=0) if regs else np.zeros(0)
        x_std = np.where(x_std > 0, x_std, 1.0)
        yo = y[ok]
        log = bool((yo >= 0).all() and (yo == 0).mean() < 0.1 and yo.mean() >= 2.0)
        origin = ds[ok][-1]
        t_scale = float(max((ds[ok][-1] - ds[ok][0]).astype(np.int64), 1))
        yearly = _yearly_order(len(h), ctx.freq, 6 if ctx.freq == "W" else 8)
        terms = tuple(_weekly_terms(ctx, yearly))
        model = RegressionModel(origin, t_scale, terms, regs, x_mean, x_std, np.zeros(2), log)
        X = model.design(ds[ok], {r: R[ok, j] for j, r in enumerate(regs)})
        target = np.log1p(yo) if log else yo
        scale = np.std(target) or 1.0
        pen = np.full(X.shape[1], self.ridge)
        pen[0] = 0.0
        pen[1] = self.trend_ridge
        A = X.T @ X + np.diag(pen * len(yo) / 100.0)
        coef = np.linalg.solve(A, X.T @ (target / scale)) * scale
        model.coef = coef
        return model

    # Constant-elasticity mode needs this many periods with positive demand, and at most this
    # share of zero periods (below that, e.g. intermittent demand, the plain model is fitted).
    min_positive: ClassVar[int] = 10
    max_zero_share: ClassVar[float] = 0.3

    def fit_elasticity(self, history: pd.DataFrame, ctx: FitContext, opts: dict) -> RegressionModel | None:
        """log(demand) = intercept + trend + Fourier + other regressors + elasticity * log(price),
        fitted on the periods with positive demand (a stock-out week says nothing about the
        demand curve), so the forecast is the median demand under multiplicative noise.

        Ridge penalties as in the plain model, except on the elasticity: unpenalized, or, with
        a prior ``(elasticity_prior, elasticity_prior_var)`` (the group's estimate and the
        between-series variance of elasticities in the group), shrunk toward the prior with
        weight residual variance / prior variance -- the empirical-Bayes posterior mean, so a
        short or flat-priced series takes the group's elasticity. None when the series cannot
        take this model (then the plain regression is fitted)."""
        price_name = opts["price_column"]
        h = _tail(history, self.max_train.get(ctx.freq))
        y = h["y"].to_numpy(dtype=np.float64)
        price = h[price_name].to_numpy(dtype=np.float64)
        if not (np.isfinite(price) & (price > 0))[np.isfinite(y)].all():
            return None
        revenue = opts.get("target_kind") == "revenue"
        demand = y / price if revenue else y
        seen = np.isfinite(demand)
        ok = seen & (demand > 0)
        if ok.sum() < self.min_positive or (demand[seen] <= 0).mean() > self.max_zero_share:
            return None
        ds = h["ds"].to_numpy().astype("datetime64[D]")
        regs = tuple(
            r for r in ctx.regressors if r != price_name and np.ptp(h[r].to_numpy(dtype=np.float64)[ok]) > 0
        )
        R = h[list(regs)].to_numpy(dtype=np.float64) if regs else np.zeros((len(y), 0))
        x_mean = R[ok].mean(axis=0) if regs else np.zeros(0)
        x_std = R[ok].std(axis=0) if regs else np.zeros(0)
        x_std = np.where(x_std > 0, x_std, 1.0)
        # Weekly: 3 yearly Fourier orders, not 6: with about two years of data the price and
        # its elasticity explain much of the variation, and order 6 overfitted (price_weekly
        # data, seeds 42 and 7, confirmed on seed 11: docs/forecast-quality.md).
        yearly = _yearly_order(len(h), ctx.freq, 3 if ctx.freq == "W" else 8)
        model = RegressionModel(
            ds[ok][-1],
            float(max((ds[ok][-1] - ds[ok][0]).astype(np.int64), 1)),
            tuple(_weekly_terms(ctx, yearly)),
            regs,
            x_mean,
            x_std,
            np.zeros(0),
            False,
            price_name,
            revenue,
            float(np.mean(np.log(price[ok]))),
        )
        regs_ok = {r: R[ok, j] for j, r in enumerate(regs)} | {price_name: price[ok]}
        X = model.design(ds[ok], regs_ok)
        target = np.log(demand[ok])
        n = len(target)
        pen = np.full(X.shape[1], self.ridge * n / 100.0 * max(np.var(target), 1e-6))
        pen[0] = 0.0
        pen[1] *= self.trend_ridge / self.ridge
        pen[-1] = 0.0
        prior = np.zeros(X.shape[1])
        coef = _penalized_lstsq(X, target, pen, prior)
        e0, tau2 = opts.get("elasticity_prior"), opts.get("elasticity_prior_var")
        if e0 is not None and tau2:
            resid = target - X @ coef
            sigma2 = float(resid @ resid) / max(n - X.shape[1], 1)
            pen[-1] = sigma2 / float(tau2)
            prior[-1] = float(e0)
            coef = _penalized_lstsq(X, target, pen, prior)
        model.coef = coef
        return model

    def load(self, payload: dict) -> RegressionModel:
        return RegressionModel(
            np.datetime64(payload["origin"], "D"),
            float(payload["t_scale"]),
            tuple((float(p), int(o)) for p, o in payload["fourier"]),
            tuple(payload["regressors"]),
            np.asarray(payload["x_mean"], dtype=np.float64),
            np.asarray(payload["x_std"], dtype=np.float64),
            np.asarray(payload["coef"], dtype=np.float64),
            bool(payload["log"]),
            str(payload.get("price", "")),
            bool(payload.get("revenue", False)),
            float(payload.get("log_price_mean", 0.0)),
        )


def _penalized_lstsq(X: np.ndarray, z: np.ndarray, pen: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """argmin ||X b - z||^2 + sum_j pen_j (b_j - prior_j)^2."""
    A = X.T @ X + np.diag(pen)
    return np.linalg.lstsq(A, X.T @ z + pen * prior, rcond=None)[0]


def elasticity_options(ctx: FitContext) -> dict | None:
    """The regression family's price-elasticity options (``FitContext.options["regression"]``)
    when they name a price column that is one of the series' regressors, else None."""
    opts = (ctx.options or {}).get("regression") or {}
    price = opts.get("price_column")
    return opts if price and price in ctx.regressors else None


def series_elasticity(history: pd.DataFrame, ctx: FitContext) -> tuple[float, float] | None:
    """(elasticity, its sampling variance) of one series' constant-elasticity fit without a
    prior; None when the series cannot take the model or its price never moves."""
    opts = elasticity_options(ctx)
    if opts is None:
        return None
    opts = {k: v for k, v in opts.items() if k not in ("elasticity_prior", "elasticity_prior_var")}
    reg = Regression()
    model = reg.fit_elasticity(history, ctx, opts)
    if model is None:
        return None
    h = _tail(history, reg.max_train.get(ctx.freq))
    y = h["y"].to_numpy(dtype=np.float64)
    price = h[opts["price_column"]].to_numpy(dtype=np.float64)
    demand = y / price if model.revenue else y
    ok = np.isfinite(demand) & (demand > 0)
    regs = {r: h[r].to_numpy(dtype=np.float64)[ok] for r in (*model.regressor_names, model.price)}
    X = model.design(h["ds"].to_numpy()[ok], regs)
    if np.ptp(X[:, -1]) <= 0:
        return None
    resid = np.log(demand[ok]) - X @ model.coef
    sigma2 = float(resid @ resid) / max(len(resid) - X.shape[1], 1)
    try:
        var = sigma2 * float(np.linalg.inv(X.T @ X)[-1, -1])
    except np.linalg.LinAlgError:
        return None
    if not np.isfinite(var) or var <= 0:
        return None
    return float(model.coef[-1]), var


def pooled_elasticities(estimates: dict, min_series: int = 2) -> dict:
    """Group priors from per-series estimates ``{group: [(elasticity, variance), ...]}``:
    ``{group: (prior elasticity, between-series variance)}``. The prior is the precision-weighted
    mean; the between-series variance is the method-of-moments estimate (spread of the estimates
    beyond their sampling variance), floored at 0.01 so no series is pinned to the group."""
    out = {}
    for group, items in estimates.items():
        if len(items) < min_series:
            continue
        e = np.array([i[0] for i in items])
        v = np.array([i[1] for i in items])
        tau2 = max(float(np.var(e) - np.mean(v)), 0.01)
        for _ in range(3):  # weights depend on tau2 and tau2 on the weighted mean
            w = 1.0 / (v + tau2)
            mean = float(w @ e / w.sum())
            tau2 = max(float(np.sum(w * (e - mean) ** 2) / w.sum() - np.average(v, weights=w)), 0.01)
        out[group] = (mean, tau2)
    return out


# --- intermittent demand: Croston (optimized) and TSB ------------------------------------


@dataclass
class ConstantModel:
    """A flat forecast (intermittent-demand methods forecast a constant demand rate)."""

    family: str
    level: float
    last_ds: np.datetime64
    step_days: int
    params: dict = field(default_factory=dict)

    def predict(self, ds: np.ndarray, regressors: dict[str, np.ndarray] | None = None) -> np.ndarray:
        steps = _steps(ds, self.last_ds, self.step_days)
        return np.full(len(steps), self.level, dtype=np.float64)

    def to_dict(self) -> dict:
        return {
            "level": self.level,
            "last_ds": str(self.last_ds),
            "step_days": self.step_days,
            "params": self.params,
        }

    @property
    def warm_start(self) -> dict | None:
        return None


_ALPHAS = np.round(np.arange(0.05, 0.51, 0.05), 2)


def _smooth(x: np.ndarray, alpha: float, start: float) -> np.ndarray:
    """Exponential smoothing as a linear filter: the level after each value of ``x``
    (level += alpha * (v - level)), starting from ``start``."""
    from scipy.signal import lfilter

    if not len(x):
        return np.zeros(0)
    return lfilter([alpha], [1.0, alpha - 1.0], x, zi=[(1.0 - alpha) * start])[0]


def _ses(x: np.ndarray, alpha: float) -> tuple[float, float]:
    """Simple exponential smoothing: (final level, in-sample one-step MSE)."""
    if len(x) < 2:
        return (float(x[0]) if len(x) else 0.0), 0.0
    levels = np.concatenate([[x[0]], _smooth(x[1:], alpha, x[0])])
    err = x[1:] - levels[:-1]
    return float(levels[-1]), float(err @ err) / (len(x) - 1)


def _best_ses(x: np.ndarray) -> tuple[float, float]:
    if len(x) < 2:
        return float(x[0]) if len(x) else 0.0, float(_ALPHAS[0])
    fits = [_ses(x, a) for a in _ALPHAS]
    best = int(np.argmin([mse for _, mse in fits]))
    return fits[best][0], float(_ALPHAS[best])


class _ConstantFamily:
    name: ClassVar[str] = ""

    def load(self, payload: dict) -> ConstantModel:
        return ConstantModel(
            self.name,
            float(payload["level"]),
            np.datetime64(payload["last_ds"], "D"),
            int(payload["step_days"]),
            dict(payload.get("params", {})),
        )

    @staticmethod
    def _y(history: pd.DataFrame) -> tuple[np.ndarray, np.datetime64]:
        y = history["y"].to_numpy(dtype=np.float64)
        y = np.maximum(np.nan_to_num(y, nan=0.0), 0.0)  # missing periods count as no demand
        return y, history["ds"].to_numpy().astype("datetime64[D]")[-1]


class Croston(_ConstantFamily):
    """Croston's method with smoothing constants chosen separately for demand sizes and
    inter-demand intervals by in-sample MSE (like statsforecast's CrostonOptimized), in numpy."""

    name: ClassVar[str] = "croston"

    def fit(self, history: pd.DataFrame, ctx: FitContext, init: dict | None = None) -> ConstantModel:
        y, last = self._y(history)
        nz = np.flatnonzero(y > 0)
        if len(nz) == 0:
            return ConstantModel(self.name, 0.0, last, _step_days(ctx))
        sizes = y[nz]
        intervals = np.diff(np.concatenate([[-1], nz])).astype(np.float64)
        z, a_z = _best_ses(sizes)
        p, a_p = _best_ses(intervals)
        return ConstantModel(
            self.name, float(z / max(p, 1.0)), last, _step_days(ctx), {"alpha_z": a_z, "alpha_p": a_p}
        )


class TSB(_ConstantFamily):
    """Teunter-Syntetos-Babai: smoothed demand probability (updated every period) times
    smoothed demand size (updated on demand); both constants by in-sample MSE, in numpy."""

    name: ClassVar[str] = "tsb"
    grid: ClassVar[np.ndarray] = np.array([0.02, 0.05, 0.1, 0.2, 0.3])

    @staticmethod
    def _run(y: np.ndarray, a_d: float, a_p: float) -> tuple[float, float]:
        """(final forecast, in-sample SSE) for one pair of smoothing constants: the one-step
        forecast before period t is prob_t * z_t (probability smoothed every period, size on
        demand only). Both are exponential smoothing, so they run as linear filters."""
        occurred = y > 0
        sizes = y[occurred]
        z0 = float(sizes[0]) if len(sizes) else 0.0
        p0 = float(occurred.mean())
        prob_after = _smooth(occurred.astype(np.float64), a_p, p0)
        prob = np.concatenate([[p0], prob_after[:-1]])
        z_after = _smooth(sizes, a_d, z0)
        before = np.cumsum(occurred) - occurred  # demands before period t
        z = np.where(before > 0, z_after[np.maximum(before - 1, 0)] if len(sizes) else z0, z0)
        err = y - prob * z
        final = prob_after[-1] * (z_after[-1] if len(sizes) else z0) if len(y) else 0.0
        return float(final), float(err @ err)

    def fit(self, history: pd.DataFrame, ctx: FitContext, init: dict | None = None) -> ConstantModel:
        y, last = self._y(history)
        y = y[-730:]
        best = None
        if not len(y):
            for a_d in self.grid:
                for a_p in self.grid:
                    level, sse = self._run(y, a_d, a_p)
                    if best is None or sse < best[0]:
                        best = (sse, level, float(a_d), float(a_p))
        else:
            # _run's arithmetic, with each constant's smoothing done once (5 + 5 filters instead
            # of 25 + 25: TSB was the dearest local candidate of auto after Prophet).
            occurred = y > 0
            sizes = y[occurred]
            z0 = float(sizes[0]) if len(sizes) else 0.0
            p0 = float(occurred.mean())
            before = np.cumsum(occurred) - occurred
            probs = {}
            for a_p in self.grid:
                after = _smooth(occurred.astype(np.float64), a_p, p0)
                probs[a_p] = (np.concatenate([[p0], after[:-1]]), after[-1])
            for a_d in self.grid:
                z_after = _smooth(sizes, a_d, z0)
                z = np.where(before > 0, z_after[np.maximum(before - 1, 0)] if len(sizes) else z0, z0)
                z_last = z_after[-1] if len(sizes) else z0
                for a_p in self.grid:
                    prob, p_last = probs[a_p]
                    err = y - prob * z
                    sse = float(err @ err)
                    if best is None or sse < best[0]:
                        best = (sse, float(p_last * z_last), float(a_d), float(a_p))
        return ConstantModel(
            self.name, float(best[1]), last, _step_days(ctx), {"alpha_d": best[2], "alpha_p": best[3]}
        )


# --- ensemble ----------------------------------------------------------------------------


@dataclass
class EnsembleModel:
    family: ClassVar[str] = "ensemble"
    members: list  # fitted models
    weights: np.ndarray

    def predict(self, ds: np.ndarray, regressors: dict[str, np.ndarray] | None = None) -> np.ndarray:
        preds = np.vstack([m.predict(ds, regressors) for m in self.members])
        return self.weights @ preds

    def to_dict(self) -> dict:
        return {
            "members": [{"family": m.family, "model": m.to_dict()} for m in self.members],
            "weights": [float(w) for w in self.weights],
        }

    @property
    def warm_start(self) -> dict | None:
        return {m.family: m.warm_start for m in self.members}


DEFAULT_ENSEMBLE = ("prophet", "regression")


class Ensemble:
    """Equal-weight mean of member families (``FitContext.options["ensemble"]``, default
    prophet + regression). Combinations are usually more accurate than their members."""

    name: ClassVar[str] = "ensemble"

    def fit(self, history: pd.DataFrame, ctx: FitContext, init: dict | None = None) -> EnsembleModel:
        names = tuple((ctx.options or {}).get("ensemble", DEFAULT_ENSEMBLE))
        init = init or {}
        members = [get_family(n).fit(history, ctx, init=init.get(n)) for n in names]
        return EnsembleModel(members, np.full(len(members), 1.0 / len(members)))

    def load(self, payload: dict) -> EnsembleModel:
        members = [get_family(m["family"]).load(m["model"]) for m in payload["members"]]
        return EnsembleModel(members, np.asarray(payload["weights"], dtype=np.float64))


# --- the registry -------------------------------------------------------------------------

# The global family's per-series side (its shared LightGBM model is fitted across series,
# outside any one series' fit: mm_platform/forecasting/global_lgbm.py).
from mm_platform.forecasting.global_lgbm import GlobalLGBM  # noqa: E402

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Prophet(),
        ProphetLibrary(),
        SeasonalNaive(),
        ETS(),
        ARIMA(),
        Theta(),
        Regression(),
        Croston(),
        TSB(),
        Ensemble(),
        GlobalLGBM(),
    )
}

# Relative fitting cost, cheapest first: near-ties in model selection go to the cheaper family.
COST_ORDER: tuple[str, ...] = (
    "seasonal_naive",
    "croston",
    "tsb",
    "regression",
    "theta",
    "ets",
    "prophet",
    "global_lgbm",
    "arima",
    "ensemble",
    "prophet_library",
)


# Families whose first fit in a process imports statsforecast (seconds: statsmodels, scipy.stats).
STATSFORECAST_FAMILIES = frozenset({"ets", "arima", "theta"})


def preload(names) -> None:
    """Import what ``names`` need up front, so a per-series time limit never pays for imports."""
    names = set(names)
    if "ensemble" in names:
        names |= set(DEFAULT_ENSEMBLE)
    if names & STATSFORECAST_FAMILIES:
        _quiet_statsforecast()
        import statsforecast.models  # noqa: F401
    if names & {"prophet", "prophet_library"}:
        import mm_platform.forecasting.prophet_fast  # noqa: F401


def cost_rank(name: str) -> int:
    return COST_ORDER.index(name) if name in COST_ORDER else len(COST_ORDER)


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None


def load_model(artifact: dict) -> FittedModel:
    """Rebuild a fitted model from a model artifact ``{"family": ..., "model": <compact form>, ...}``."""
    return get_family(artifact["family"]).load(artifact["model"])
