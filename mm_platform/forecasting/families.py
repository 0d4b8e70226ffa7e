"""Model families behind one interface.

A family fits a history frame (columns ``ds``, ``y`` and the regressor columns) into a
fitted model that predicts from numpy arrays only and serializes to a small JSON-able
dict (its *compact form*): that dict is what the registry stores and what batch scoring
and the real-time service load. Adding a family is one class here plus a line in
``FAMILIES``.
"""

from __future__ import annotations

from dataclasses import dataclass
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


FAMILIES: dict[str, Family] = {f.name: f for f in (Prophet(), ProphetLibrary(), SeasonalNaive())}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None


def load_model(artifact: dict) -> FittedModel:
    """Rebuild a fitted model from a model artifact ``{"family": ..., "model": <compact form>, ...}``."""
    return get_family(artifact["family"]).load(artifact["model"])
