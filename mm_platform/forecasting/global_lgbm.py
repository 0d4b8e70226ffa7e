"""A global family: one LightGBM model trained across the series of a dataset (or of one group
of a key), used per series like any local family.

Two parts, so that per-series lookup, batch scoring and serving stay per series:

- the **shared model** (:class:`GlobalModel`): the LightGBM booster (``model_to_string()``)
  plus its :class:`FeatureSpec` (lags, rolling means, calendar features, regressors, key
  columns and their category codes). Fitted once per training origin by :func:`fit_global`
  on every series' rows up to that date; serialised by :meth:`GlobalModel.to_json` and
  identified by the sha256 of that text.
- the **per-series model** (:class:`GlobalSeriesModel`, family ``global_lgbm``): a reference
  to the shared model's sha256, the series' key values, its scale and the recent history the
  lags need, plus where the shared artifact is stored (``shared_uri``). Its compact form
  is small; the reference is resolved through :func:`resolve_shared` on first use: models
  installed in the process (:func:`register_shared`), else a bounded LRU cache of models
  read through the resolver (by default ``stores.artifacts.read_verified`` on
  ``shared_uri``), always checked against the sha256.

Forecasts are **recursive**: one model predicts one step ahead from lags 1.., and each
forecast is fed back as the next step's lag. Chosen over direct forecasting (one model per
step, or lags >= horizon) because one model serves every horizon and every training origin,
the near steps use the most recent values, and the main drivers of these datasets (planned
prices, promotions, calendar) are known for every future step, so fed-back errors matter
less; the cost is ``horizon`` booster calls per forecast.

Targets are divided by each series' recent mean level (``FeatureSpec.scale_window``), so one
model fits series of any volume; the log of that level is a feature. Pure: numpy, pandas and
lightgbm only.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

FAMILY = "global_lgbm"

DEFAULT_PARAMS = {
    "objective": "l2",
    # 150 rounds at 0.07 instead of 300 at 0.05, and 63 histogram bins instead of 255: about
    # half the fit's CPU, WAPE within 1% on two seeds of two datasets (docs/forecast-quality.md).
    "learning_rate": 0.07,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "verbose": -1,
    "seed": 7,
    "deterministic": True,
    "force_row_wise": True,
    # One thread unless asked: on busy cores OpenMP threads spin-wait (measured 15x the CPU
    # time of one thread on a loaded 2-core machine).
    "num_threads": 1,
    "max_bin": 63,
}


@dataclass(frozen=True)
class FeatureSpec:
    """What the features of one row are: everything predict needs besides the booster."""

    freq: str  # "D" or "W"
    lags: tuple[int, ...]
    windows: tuple[int, ...]  # rolling means of the lagged target (lag 1 .. window)
    regressors: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    categories: dict[str, list[str]] = field(default_factory=dict)  # key -> known values (code = index)
    scale_window: int = 56
    max_train: int = 730  # periods per series before the origin used for training
    rounds: int = 150

    @classmethod
    def default(cls, freq: str, regressors=(), keys=(), **over) -> FeatureSpec:
        if freq == "W":
            base = {"lags": (1, 2, 3, 4, 8, 13, 26, 52), "windows": (4, 13, 52), "scale_window": 26, "max_train": 260}
        else:
            base = {"lags": (1, 2, 3, 4, 5, 6, 7, 14, 21, 28), "windows": (7, 28, 91), "scale_window": 56, "max_train": 730}
        return cls(freq=freq, regressors=tuple(regressors), keys=tuple(keys), **(base | over))

    @property
    def memory(self) -> int:
        """History periods a per-series model keeps: the longest lag or window."""
        return max(max(self.lags), max(self.windows))

    @property
    def step_days(self) -> int:
        return 7 if self.freq == "W" else 1

    def feature_names(self) -> list[str]:
        cal = ["week_of_year", "month"] if self.freq == "W" else ["day_of_week", "day_of_year", "month"]
        return [
            *(f"lag_{k}" for k in self.lags),
            *(f"mean_{w}" for w in self.windows),
            "log_scale",
            *cal,
            *(f"x_{r}" for r in self.regressors),
            *(f"rel_{r}" for r in self.regressors),
            *(f"key_{k}" for k in self.keys),
        ]

    def key_codes(self, key_values: dict) -> list[float]:
        out = []
        for k in self.keys:
            known = self.categories.get(k, [])
            v = str(key_values.get(k))
            out.append(float(known.index(v)) if v in known else np.nan)
        return out


def _calendar(ds: np.ndarray, freq: str) -> np.ndarray:
    """Calendar features in numpy (pandas' accessors cost more than the rest of a forecast):
    day of week (Monday 0), day of year and month; weekly: ISO week and month."""
    d = np.asarray(ds).astype("datetime64[D]")
    month = (d.astype("datetime64[M]").astype(np.int64) % 12 + 1).astype(np.float64)
    weekday = (d.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    if freq == "W":
        thursday = d - weekday + 3  # the ISO year is the year of the week's Thursday
        week = (thursday - thursday.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64) // 7 + 1
        return np.column_stack([week.astype(np.float64), month])
    doy = (d - d.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64) + 1
    return np.column_stack([weekday.astype(np.float64), doy.astype(np.float64), month])


def series_scale(y: np.ndarray, window: int) -> float:
    """The series' recent mean level (mean |y| over the last ``window`` observed periods, else
    over all): the unit of its target and lags."""
    y = np.asarray(y, dtype=np.float64)
    y = y[np.isfinite(y)]
    for part in (y[-window:], y):
        if len(part) and np.abs(part).mean() > 0:
            return float(np.abs(part).mean())
    return 1.0


def _lag_features(z: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Lag and rolling-mean columns for every position of the scaled series ``z`` (row t uses
    z[:t] only)."""
    n = len(z)
    cols = []
    for k in spec.lags:
        c = np.full(n, np.nan)
        if k < n:
            c[k:] = z[: n - k]
        cols.append(c)
    filled = np.where(np.isfinite(z), z, 0.0)
    seen = np.isfinite(z).astype(np.float64)
    cs = np.concatenate([[0.0], np.cumsum(filled)])
    cn = np.concatenate([[0.0], np.cumsum(seen)])
    t = np.arange(n)
    for w in spec.windows:
        lo = np.maximum(t - w, 0)
        num, den = cs[t] - cs[lo], cn[t] - cn[lo]
        cols.append(np.where(den > 0, num / np.maximum(den, 1), np.nan))
    return np.column_stack(cols)


def _regressor_features(frame_regs: dict[str, np.ndarray], means: dict[str, float], spec: FeatureSpec, n: int) -> np.ndarray:
    raw, rel = [], []
    for r in spec.regressors:
        v = np.asarray(frame_regs[r], dtype=np.float64).reshape(-1)
        if v.shape[0] != n:
            raise ValueError(f"regressor {r!r} has {v.shape[0]} values for {n} dates")
        raw.append(v)
        m = means.get(r, 0.0)
        # Relative to the series' own mean (e.g. a price against its usual price): comparable
        # across series of any price level.
        rel.append(v / m if m else np.full(n, np.nan))
    return np.column_stack(raw + rel) if raw else np.zeros((n, 0))


def _regressor_means(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, float]:
    # Column by column: selecting the columns as a frame first cost more than the rest of a
    # per-series global fit (the values are the same).
    return {r: float(np.nanmean(frame[r].to_numpy(dtype=np.float64))) for r in spec.regressors}


class _SeriesArrays:
    """One regularized series as numpy arrays, with what does not depend on the training
    origin (calendar features, key codes) computed once: the rows of several origins are
    slices of it (``rows``)."""

    def __init__(self, history: pd.DataFrame, key_values: dict, spec: FeatureSpec):
        self.spec = spec
        self.ds = history["ds"].to_numpy().astype("datetime64[D]")
        self.y = history["y"].to_numpy(dtype=np.float64)
        self.regs = {r: np.asarray(history[r].to_numpy(), dtype=np.float64).reshape(-1) for r in spec.regressors}
        self.calendar = _calendar(self.ds, spec.freq)
        self.codes = spec.key_codes(key_values) if spec.keys else []

    def end(self, origin) -> int:
        """Rows up to ``origin`` (a date; all when None)."""
        if origin is None:
            return len(self.y)
        return int(np.searchsorted(self.ds, np.datetime64(pd.Timestamp(origin).date(), "D"), side="right"))

    def rows(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(features, scaled target) of the first ``m`` rows, as ``training_rows`` defines them."""
        spec = self.spec
        y = self.y[:m]
        if not np.isfinite(y).any():
            return np.zeros((0, len(spec.feature_names()))), np.zeros(0)
        scale = series_scale(y, spec.scale_window)
        lo = max(0, m - spec.max_train)
        # as series_model computes them: over the last max_train rows
        means = {r: float(np.nanmean(v[lo:m])) for r, v in self.regs.items()}
        z = y / scale
        n = len(z)
        X = np.column_stack(
            [
                _lag_features(z, spec),
                np.full(n, np.log(scale)),
                self.calendar[:m],
                _regressor_features({r: v[:m] for r, v in self.regs.items()}, means, spec, n),
                np.tile(self.codes, (n, 1)) if spec.keys else np.zeros((n, 0)),
            ]
        )
        keep = np.isfinite(z) & np.isfinite(X[:, 0])  # a target and at least lag 1
        keep[:lo] = False
        return X[keep], z[keep]


def training_rows(history: pd.DataFrame, key_values: dict, spec: FeatureSpec, origin=None) -> tuple[np.ndarray, np.ndarray]:
    """(features, scaled target) of one regularized series' rows up to ``origin`` (a date; all
    rows when None), at most ``spec.max_train`` of them. Everything is computed from those rows."""
    a = _SeriesArrays(history, key_values, spec)
    return a.rows(a.end(origin))


class _FastPredictor:
    """LightGBM's single-row C entry point (``LGBM_BoosterPredictForMatSingleRowFast``):
    the recursive forecast calls the booster once per step and series, where
    ``Booster.predict``'s Python checks cost several times the trees' evaluation."""

    def __init__(self, booster, ncol: int):
        from lightgbm.basic import _LIB, _c_str, _safe_call

        self._lib, self._check = _LIB, _safe_call
        self._booster = booster  # the fast config refers to it: keep it alive
        self._handle = ctypes.c_void_p()
        _safe_call(
            _LIB.LGBM_BoosterPredictForMatSingleRowFastInit(
                booster._handle, ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(-1),
                ctypes.c_int(1), ctypes.c_int32(ncol), _c_str("num_threads=1"), ctypes.byref(self._handle),
            )
        )
        # Input and output buffers with their pointers made once (ctypes pointer objects cost
        # more than the trees): callers fill ``x`` and call ``run()`` holding ``lock``.
        self.x = np.zeros(ncol)
        self._x_ptr = self.x.ctypes.data_as(ctypes.c_void_p)
        self._out = np.zeros(1)
        self._out_ptr = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._len = ctypes.c_int64()
        self._len_ref = ctypes.byref(self._len)
        self._fn = _LIB.LGBM_BoosterPredictForMatSingleRowFast
        self.lock = threading.Lock()

    def run(self) -> float:
        if self._fn(self._handle, self._x_ptr, self._len_ref, self._out_ptr) != 0:
            self._check(-1)  # raises LightGBM's last error
        return float(self._out[0])

    def __call__(self, x: np.ndarray) -> float:
        with self.lock:
            self.x[:] = x
            return self.run()

    def __del__(self):
        try:
            self._lib.LGBM_FastConfigFree(self._handle)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


@dataclass
class GlobalModel:
    """The shared part: booster text and feature spec."""

    spec: FeatureSpec
    booster_text: str
    origin: str = ""  # last date of the training data
    n_series: int = 0
    n_rows: int = 0
    _booster: object = field(default=None, repr=False, compare=False)
    _fast: object = field(default=None, repr=False, compare=False)

    def to_json(self) -> str:
        spec = asdict(self.spec)
        payload = {
            "family": FAMILY,
            "spec": spec,
            "origin": self.origin,
            "n_series": self.n_series,
            "n_rows": self.n_rows,
            "booster": self.booster_text,
        }
        return json.dumps(payload, separators=(",", ":"), sort_keys=True)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> GlobalModel:
        p = json.loads(text)
        s = p["spec"]
        spec = FeatureSpec(
            freq=s["freq"],
            lags=tuple(s["lags"]),
            windows=tuple(s["windows"]),
            regressors=tuple(s["regressors"]),
            keys=tuple(s["keys"]),
            categories={k: list(v) for k, v in s["categories"].items()},
            scale_window=int(s["scale_window"]),
            max_train=int(s["max_train"]),
            rounds=int(s["rounds"]),
        )
        return cls(spec, p["booster"], p.get("origin", ""), int(p.get("n_series", 0)), int(p.get("n_rows", 0)))

    @property
    def booster(self):
        if self._booster is None:
            import lightgbm as lgb

            self._booster = lgb.Booster(model_str=self.booster_text)
        return self._booster

    def predict_rows(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(X, num_threads=1), dtype=np.float64)

    @property
    def fast(self) -> _FastPredictor:
        if self._fast is None:
            self._fast = _FastPredictor(self.booster, len(self.spec.feature_names()))
        return self._fast

    def predict_one(self, x: np.ndarray) -> float:
        return self.fast(x)


def fit_global(
    series: list[tuple[dict, pd.DataFrame]],
    spec: FeatureSpec,
    origin=None,
    params: dict | None = None,
    num_threads: int = 0,
) -> GlobalModel:
    """One LightGBM model on every series' rows up to ``origin``. ``series``: (key values,
    regularized history with ds, y and the regressors). Key categories come from ``series``."""
    model = fit_global_origins(series, spec, [origin], params, num_threads)[0]
    if model is None:
        raise ValueError("no training rows for the global model")
    return model


def fit_global_origins(
    series: list[tuple[dict, pd.DataFrame]],
    spec: FeatureSpec,
    origins: list,
    params: dict | None = None,
    num_threads: int = 0,
) -> list[GlobalModel | None]:
    """``fit_global`` at each of ``origins`` (None: no rows up to it), each model on the rows
    up to its origin only; each series' arrays and origin-free features are built once."""
    import lightgbm as lgb

    if spec.keys and not spec.categories:
        cats = {k: sorted({str(kv.get(k)) for kv, _ in series}) for k in spec.keys}
        spec = FeatureSpec(**{**asdict(spec), "categories": cats})
    arrays = [_SeriesArrays(h, kv, spec) for kv, h in series]
    names = spec.feature_names()
    cat = [names.index(f"key_{k}") for k in spec.keys]
    p = DEFAULT_PARAMS | (params or {}) | ({"num_threads": num_threads} if num_threads else {})
    out = []
    for origin in origins:
        Xs, zs = [], []
        for a in arrays:
            X, z = a.rows(a.end(origin))
            if len(z):
                Xs.append(X)
                zs.append(z)
        if not zs:
            out.append(None)
            continue
        X, z = np.vstack(Xs), np.concatenate(zs)
        data = lgb.Dataset(X, z, feature_name=names, categorical_feature=cat or "auto", free_raw_data=True)
        booster = lgb.train(p, data, num_boost_round=spec.rounds)
        out.append(GlobalModel(spec, booster.model_to_string(), str(origin or ""), len(Xs), len(z), booster))
        del X, z, Xs, zs, data
    return out




# --- the shared models a process knows --------------------------------------------------------
#
# Two tiers: models installed by the code that fitted or received them (``register_shared``:
# a training or evaluation process, a scoring task), kept until ``forget_shared``; and models
# read through the resolver (serving, scoring without the texts, a notebook), in an LRU cache
# of at most ``SHARED_CACHE_SIZE`` models, so a long-running server holds a bounded number of
# boosters whatever the number of series or training runs it has seen. Reads of one sha256 are
# single-flight: concurrent first requests (serving's load threads) share one read.

SHARED_CACHE_SIZE = 8

_PINNED: dict[str, GlobalModel] = {}
_CACHE: OrderedDict[str, GlobalModel] = OrderedDict()
_LOCK = threading.Lock()
_LOADING: dict[str, threading.Lock] = {}
_resolver: Callable[[str, str | None], str] | None = None


def register_shared(model: GlobalModel) -> str:
    """Make ``model`` resolvable in this process by its sha256 (kept until ``forget_shared``);
    returns the sha256."""
    sha = model.sha256
    with _LOCK:
        _PINNED[sha] = model
    return sha


def install_shared_texts(texts, replace: bool = False) -> list[str]:
    """Install shared models from their JSON texts (e.g. handed to a Spark task); their
    sha256s. ``replace``: drop the other installed models first (a reused Spark worker)."""
    shas = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    if replace:
        with _LOCK:
            for sha in set(_PINNED) - set(shas):
                del _PINNED[sha]
    for sha, t in zip(shas, texts, strict=True):
        if sha not in _PINNED:
            model = GlobalModel.from_json(t)
            with _LOCK:
                _PINNED[sha] = model  # by the text's sha256: what per-series models refer to
    return shas


def forget_shared(shas=None) -> None:
    """Drop installed (and cached) shared models: ``shas``, or all."""
    with _LOCK:
        for sha in list(_PINNED if shas is None else shas):
            _PINNED.pop(sha, None)
            _CACHE.pop(sha, None)
        if shas is None:
            _CACHE.clear()


def set_resolver(fn: Callable[[str, str | None], str] | None) -> None:
    """``fn(sha256, uri) -> the shared model's JSON text``; ``uri`` is where the per-series
    model says the shared artifact is stored (None if it does not say). The text is checked
    against the sha256 before use. None restores the default (``stores.artifacts.read_verified``
    on the URI)."""
    global _resolver
    _resolver = fn


def _default_resolver(sha: str, uri: str | None) -> str:
    if not uri:
        raise ValueError(f"shared global model {sha[:12]} is not available in this process and has no stored location")
    # The artifact store's reader (local paths without MLflow); it checks the sha256 itself.
    from mm_platform.stores.artifacts import read_verified

    return read_verified(uri, sha, f"shared global model {sha[:12]}").decode()


def resolve_shared(sha: str, uri: str | None = None) -> GlobalModel:
    with _LOCK:
        model = _PINNED.get(sha) or _CACHE.get(sha)
        if model is not None:
            if sha in _CACHE:
                _CACHE.move_to_end(sha)
            return model
        loading = _LOADING.setdefault(sha, threading.Lock())
    with loading:
        with _LOCK:
            model = _PINNED.get(sha) or _CACHE.get(sha)
        if model is not None:
            return model
        text = (_resolver or _default_resolver)(sha, uri)
        if hashlib.sha256(text.encode()).hexdigest() != sha:
            raise ValueError(f"shared global model {sha[:12]}: content does not match its sha256")
        model = GlobalModel.from_json(text)
        with _LOCK:
            _CACHE[sha] = model
            while len(_CACHE) > SHARED_CACHE_SIZE:
                _CACHE.popitem(last=False)
            _LOADING.pop(sha, None)
        return model


def shared_refs(artifact) -> list[dict]:
    """Every reference to a shared model in a model artifact (any nesting, e.g. an ensemble
    member): the dicts holding ``shared_sha256`` (and ``shared_uri``), in place."""
    out = []
    stack = [artifact]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if "shared_sha256" in v and "private_model" not in v:
                out.append(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return out


# --- the per-series model and the family ------------------------------------------------------


@dataclass
class GlobalSeriesModel:
    family: ClassVar[str] = FAMILY
    shared_sha: str
    key_values: dict
    scale: float
    tail: np.ndarray  # the last spec.memory scaled targets (NaN where missing)
    last_ds: np.datetime64
    regressor_means: dict
    private: GlobalModel | None = None  # a model of this series alone, stored inline
    shared_uri: str | None = None  # where the shared artifact is stored (registry artifact store)

    @property
    def shared(self) -> GlobalModel:
        return self.private if self.private is not None else resolve_shared(self.shared_sha, self.shared_uri)

    def prepare(self) -> None:
        """Resolve (read and verify) the shared model now, e.g. when a server loads the model."""
        _ = self.shared

    def predict(self, ds: np.ndarray, regressors: dict[str, np.ndarray] | None = None) -> np.ndarray:
        shared = self.shared
        spec = shared.spec
        ds = np.asarray(ds, dtype="datetime64[D]")
        steps = (ds - self.last_ds).astype(np.int64) // spec.step_days
        if len(steps) and (steps < 1).any():
            raise ValueError("the global model can only forecast dates after its last observation")
        if not len(steps):
            return np.zeros(0)
        horizon = int(steps.max())
        all_ds = self.last_ds + np.timedelta64(spec.step_days, "D") * np.arange(1, horizon + 1)
        regressors = regressors or {}
        # Regressor values on every step up to the furthest requested date (the last given one
        # carried to steps that were not asked for).
        regs = {}
        for r in spec.regressors:
            if r not in regressors:
                raise ValueError(f"regressor {r!r} missing: values are needed for every predicted date")
            v = np.asarray(regressors[r], dtype=np.float64).reshape(-1)
            if v.shape[0] != len(ds):
                raise ValueError(f"regressor {r!r} has {v.shape[0]} values for {len(ds)} dates")
            if len(steps) == horizon and (steps == np.arange(1, horizon + 1)).all():
                regs[r] = v  # every step asked for (the usual case)
                continue
            full = np.full(horizon, np.nan)
            full[steps - 1] = v
            ok = np.isfinite(full)
            last = np.maximum.accumulate(np.where(ok, np.arange(horizon), 0))
            full = np.where(ok, full, full[last])  # carried forward
            regs[r] = np.where(np.isfinite(full), full, full[ok][0] if ok.any() else np.nan)  # and back
        static = np.column_stack(
            [
                np.full(horizon, np.log(self.scale)),
                _calendar(all_ds, spec.freq),
                _regressor_features(regs, self.regressor_means, spec, horizon),
                np.tile(spec.key_codes(self.key_values), (horizon, 1)) if spec.keys else np.zeros((horizon, 0)),
            ]
        )
        # The lag and rolling-mean features of each step exactly as _lag_features computes
        # them on training rows, kept up to date step by step (running sums of the observed
        # values) instead of recomputed: each forecast is fed back as the next lag.
        n0 = len(self.tail)
        z = np.concatenate([self.tail, np.zeros(horizon)])
        seen = np.concatenate([np.isfinite(self.tail).astype(np.float64), np.ones(horizon)])
        filled = np.where(np.isfinite(z), z, 0.0)
        cs = np.concatenate([[0.0], np.cumsum(filled)])
        cn = np.concatenate([[0.0], np.cumsum(seen)])
        lags, windows = spec.lags, spec.windows
        n_lags = len(lags)
        n_lag = n_lags + len(windows)
        out = np.empty(horizon)
        fast = shared.fast
        x = fast.x
        with fast.lock:
            for h in range(horizon):
                t = n0 + h
                for j, k in enumerate(lags):
                    x[j] = z[t - k] if t >= k else np.nan
                for j, w in enumerate(windows):
                    lo = t - w if t > w else 0
                    den = cn[t] - cn[lo]
                    x[n_lags + j] = (cs[t] - cs[lo]) / den if den > 0 else np.nan
                x[n_lag:] = static[h]
                out[h] = v = fast.run()
                z[t] = v
                cs[t + 1] = cs[t] + v
        return out[steps - 1] * self.scale

    def to_dict(self) -> dict:
        return {
            "shared_sha256": self.shared_sha,
            **({"shared_uri": self.shared_uri} if self.shared_uri else {}),
            "keys": {k: str(v) for k, v in self.key_values.items()},
            "scale": self.scale,
            "tail": [None if not np.isfinite(v) else float(v) for v in self.tail],
            "last_ds": str(self.last_ds),
            "regressor_means": {k: float(v) for k, v in self.regressor_means.items()},
            **({"private_model": self.private.to_json()} if self.private is not None else {}),
        }

    @property
    def warm_start(self) -> dict | None:
        return None


def series_model(shared: GlobalModel, sha: str, history: pd.DataFrame, key_values: dict, uri: str | None = None) -> GlobalSeriesModel:
    """The per-series model of one series (regularized history ending at the forecast origin)."""
    spec = shared.spec
    h = history.iloc[-spec.max_train :]
    y = h["y"].to_numpy(dtype=np.float64)
    if not np.isfinite(y).any():
        raise ValueError("no observed values")
    scale = series_scale(y, spec.scale_window)
    tail = (y / scale)[-spec.memory :]
    return GlobalSeriesModel(
        sha,
        dict(key_values),
        scale,
        tail,
        np.datetime64(pd.Timestamp(h["ds"].iloc[-1]).date(), "D"),
        _regressor_means(h, spec),
        shared_uri=uri,
    )


def model_for_origin(models: dict[str, str], origin: str) -> tuple[str, str] | None:
    """(origin, sha256) of the newest shared model fitted on data up to ``origin`` or earlier:
    a fit ending on a date never uses a model that saw data after it (no leak into backtests
    or holdout scores); None when there is none."""
    eligible = [o for o in models if o <= origin]
    if not eligible:
        return None
    best = max(eligible)
    return best, models[best]


class GlobalLGBM:
    """The per-series side of the global family. ``fit`` fits nothing: it takes the shared
    model fitted on every series up to the history's last date (or the newest one before it),
    from ``FitContext.options["global_lgbm"]``: ``{"models": {origin date: sha256}, "keys":
    {key: value}, "uris": {sha256: stored location}}`` (per series), and keeps what the
    series' forecasts need. Without that option (e.g. a caller that fits no shared models) it
    fits a private model on the series alone and stores it inline: correct everywhere, but a
    LightGBM fit per series and fold."""

    name: ClassVar[str] = FAMILY

    # Rounds of the private model of one series (no shared model set up): small data.
    private_rounds: ClassVar[int] = 100

    def fit(self, history: pd.DataFrame, ctx, init: dict | None = None) -> GlobalSeriesModel:
        opts = (ctx.options or {}).get(FAMILY)
        if not opts or "models" not in opts:
            # No shared models were set up (a single series, or a caller that does not fit
            # them): a model of this series alone, stored inline in its compact form.
            spec = FeatureSpec.default(ctx.freq, ctx.regressors, (), rounds=self.private_rounds)
            own = fit_global([({}, history)], spec, None, params={"min_data_in_leaf": 10})
            model = series_model(own, own.sha256, history, {})
            model.private = own
            return model
        origin = str(pd.Timestamp(history["ds"].iloc[-1]).date())
        found = model_for_origin(opts["models"], origin)
        if found is None:
            raise ValueError(f"no shared global model fitted up to {origin}")
        sha = found[1]
        shared = resolve_shared(sha, (opts.get("uris") or {}).get(sha))
        return series_model(shared, sha, history, opts.get("keys") or {}, (opts.get("uris") or {}).get(sha))

    def load(self, payload: dict) -> GlobalSeriesModel:
        tail = np.asarray([np.nan if v is None else v for v in payload["tail"]], dtype=np.float64)
        return GlobalSeriesModel(
            str(payload["shared_sha256"]),
            dict(payload.get("keys", {})),
            float(payload["scale"]),
            tail,
            np.datetime64(payload["last_ds"], "D"),
            dict(payload.get("regressor_means", {})),
            GlobalModel.from_json(payload["private_model"]) if "private_model" in payload else None,
            payload.get("shared_uri"),
        )
