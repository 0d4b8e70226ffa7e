"""Per-series training and forecasting: pure functions over pandas/numpy.

``train_series`` is the whole per-series training step: check the series, (for
``family="auto"``) backtest every candidate family with rolling origins on the training
window and pick the champion, fit on the training window, score the holdout against a
seasonal-naive baseline, calibrate the prediction interval on the out-of-sample residuals
(split conformal), refit on all data warm-started from the first fit, and return the
compact model with its metrics and a status/reason. ``forecast_arrays`` turns a compact
model into a forecast with numpy only. Spark and Dagster only wrap these.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import NormalDist

import numpy as np
import pandas as pd

from mm_platform.core.vocabulary import FAILED, SKIPPED, TRAINED
from mm_platform.forecasting.families import (
    FitContext,
    SeasonalNaive,
    cost_rank,
    get_family,
    load_model,
    preload,
)
from mm_platform.forecasting.metrics import all_metrics, conformal_half_width, naive_scale, selection_metric

AUTO = "auto"
# Default candidates of ``family="auto"`` (every family in families.FAMILIES may be listed).
# ETS is left out by default: on the retail data it was rarely best and cost most of auto's CPU.
DEFAULT_CANDIDATES = ("seasonal_naive", "croston", "tsb", "regression", "prophet", "ensemble")


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
    # Model selection (family="auto") and interval calibration.
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    folds: int = 6  # rolling-origin backtest folds of auto
    calibration_folds: int = 0  # single-family runs: backtest folds used only for interval calibration
    fold_length: int = 0  # periods per fold; 0 = holdout
    metric: str = "wape"
    tie_tolerance: float = 0.02  # relative: within it of the best, the fallback (else the cheaper) family wins
    fallback: str = "ensemble"  # auto's default: kept on near-ties, and used when a series is too short to backtest
    interval_method: str = "conformal"  # or "normal" (holdout RMSE times the normal quantile)
    max_horizon: int = 0  # periods forecast-path families store (at least holdout, fold_length, 2 seasons, 56)
    options: dict = field(default_factory=dict)  # family options, e.g. {"ensemble": [...]}
    # Pooled selection (auto): ``prior`` is the dataset-level choice, a family or an equal-weight
    # mean of up to ``combine`` families, picked by ``pooled_choice`` on every series' backtest.
    # A series keeps it unless one family's own backtest metric beats it by ``prior_margin``
    # (relative). Empty: each series chooses alone (``choose``).
    prior: tuple[str, ...] = ()
    prior_margin: float = 1.0
    combine: int = 3
    # Store the series' ``backtest_summary`` in its artifact (``selection.pooled_summary``, see
    # ``summary_record``): the next run's pooled stage reuses it while the data are unchanged.
    keep_summary: bool = False
    # Backtest only the dataset choice's families (and the ensemble's members): for a series
    # outside the pooled sample when ``prior_margin`` >= 1, since its own backtest of the other
    # candidates can never move it off the choice (set per series by the Spark training).
    prior_only: bool = False
    pooled_sample: frozenset[str] = frozenset()  # the series ids that backtest every candidate
    # Summary records the pooled stage computed (series id -> ``summary_record``), and the one of
    # this series: stored as is (``keep_summary``) instead of backtesting every candidate again.
    summaries: dict = field(default_factory=dict)
    summary_to_store: dict | None = None

    @property
    def fit_context(self) -> FitContext:
        return FitContext(
            self.freq,
            self.season_length,
            self.regressors,
            self.prophet,
            self.path_horizon,
            self.options or None,
        )

    @property
    def path_horizon(self) -> int:
        return max(self.max_horizon, self.holdout, self.fold_length, 2 * self.season_length, 56)

    @property
    def backtest_folds(self) -> int:
        return self.folds if self.family == AUTO else min(self.folds, self.calibration_folds)


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
    champion: str = ""  # the family that was fitted (auto: the selected one)
    selection_reason: str = ""  # auto: why the champion won

    def model_json(self) -> str:
        return json.dumps(self.model, separators=(",", ":")) if self.model is not None else ""

    def tags(self) -> dict[str, str]:
        """Registry tags for model selection: ``champion``, ``selection_reason`` and every
        ``backtest.<family>.<metric>`` / ``interval.*`` value (empty when not trained)."""
        if self.status != TRAINED:
            return {}
        out = {"champion": self.champion}
        if self.selection_reason:
            out["selection_reason"] = self.selection_reason[:250]
        for k, v in self.metrics.items():
            if k.startswith(("backtest.", "interval.")):
                out[k] = "" if v is None or v != v else f"{float(v):.6g}"
        return out


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
        return (
            SKIPPED,
            f"history of {int(observed.sum())} observations is shorter than min_history={spec.min_history}",
        )
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


def train_series(history: pd.DataFrame, spec: TrainSpec, previous: dict | None = None) -> TrainResult:
    """Train one series. ``history`` has columns ds, y and the regressors; never raises for bad data.

    ``previous`` is the artifact of the series' registered model (daily retraining of a series
    whose data changed): a fit of the same family starts from its parameters (warm start; the
    optimum, and so the forecast, is the same as a cold fit's to the solver's tolerance).
    """
    try:  # imports are per process, not per series: outside the time limit and fit_seconds
        names = {spec.family, *spec.candidates, spec.fallback, *spec.prior} if spec.family == AUTO else {spec.family}
        preload(names | set((spec.options or {}).get("ensemble", ())))
    except Exception:
        pass  # the fit itself reports the problem
    started = time.process_time()
    try:
        with time_limit(spec.fit_timeout_seconds):
            return _train_series(history, spec, started, previous)
    except Exception as exc:  # one bad series never fails the run: it is reported instead
        return TrainResult(
            FAILED, f"{type(exc).__name__}: {exc}"[:500], fit_seconds=time.process_time() - started
        )


def _train_series(history: pd.DataFrame, spec: TrainSpec, started: float, previous: dict | None = None) -> TrainResult:
    history = history[["ds", "y", *spec.regressors]].copy()
    # cache=False: pandas' cache check boxes a tenth of the dates one by one (1.3 ms a series).
    history["ds"] = pd.to_datetime(history["ds"], cache=False)
    problem = check_series(history, spec)
    fp = fingerprint(history.sort_values("ds"), ["ds", "y", *spec.regressors]) if len(history) else ""
    n_obs = int(np.isfinite(history["y"].to_numpy(dtype=np.float64)).sum())
    last = str(history["ds"].max().date()) if len(history) else None
    if problem:
        return TrainResult(problem[0], problem[1], n_obs, last, fp)
    history = regularize(history, spec.freq, spec.regressors)
    fits = fit_candidates(history, spec, warm=warm_starts(previous))
    champion = fits.champion
    metrics = dict(fits.holdout_metrics[champion]) | fits.naive_metrics | fits.backtest_metrics()
    metrics |= fits.interval_metrics(champion)
    model = fits.artifact(champion, refit=True)
    if spec.keep_summary and "selection" in model and spec.summary_to_store is not None:
        model["selection"]["pooled_summary"] = spec.summary_to_store
    elif spec.keep_summary and fits.backtest is not None and "selection" in model:
        model["selection"]["pooled_summary"] = summary_record(fits.backtest, spec, fp)
    return TrainResult(
        TRAINED, "", n_obs, last, fp, metrics, model, time.process_time() - started, champion, fits.reason
    )


def warm_starts(previous: dict | None) -> dict[str, dict]:
    """``{family: warm-start parameters}`` of a model artifact; empty when there is none or it
    cannot be read (the fit then starts cold)."""
    if not previous:
        return {}
    try:
        ws = load_model(previous).warm_start
    except Exception:
        return {}
    return {previous["family"]: ws} if ws is not None else {}


# --- backtesting, selection, calibration ---------------------------------------------------


@dataclass
class Backtest:
    """Rolling-origin backtest of the candidates on one training window."""

    folds: list[tuple[int, int]]  # (start, end) row positions of each fold's test window
    forecasts: dict[str, list[np.ndarray]]  # family -> forecast per fold
    actuals: list[np.ndarray]
    errors: dict[str, str]  # family -> why it failed
    scale: float  # seasonal-naive in-sample MAE (MASE)

    def pooled(self, family: str, metric: str) -> float:
        if family not in self.forecasts or not self.folds:
            return float("nan")
        a = np.concatenate(self.actuals)
        f = np.concatenate(self.forecasts[family])
        return selection_metric(metric, a, f, self.scale)

    def residuals(self, family: str) -> np.ndarray:
        if family not in self.forecasts:
            return np.zeros(0)
        return np.concatenate(
            [a - f for a, f in zip(self.actuals, self.forecasts[family], strict=True)] or [np.zeros(0)]
        )


def fold_windows(n: int, folds: int, fold_length: int, min_fit: int) -> list[tuple[int, int]]:
    """Test windows (start, end) of up to ``folds`` rolling origins ending at ``n``, newest
    first, each leaving at least ``min_fit`` periods to fit on."""
    out = []
    for i in range(folds):
        end = n - i * fold_length
        start = end - fold_length
        if start < min_fit:
            break
        out.append((start, end))
    return out


def _min_fit(spec: TrainSpec, fold_length: int) -> int:
    return max(2 * fold_length, 2 * min(spec.season_length, 26), 30)


def _forecast(fitted, frame: pd.DataFrame, regressors: tuple[str, ...]) -> np.ndarray:
    regs = {r: frame[r].to_numpy(dtype=np.float64) for r in regressors}
    return np.asarray(fitted.predict(frame["ds"].to_numpy(), regs), dtype=np.float64)


def fold_origins(train: pd.DataFrame, spec: TrainSpec, n_folds: int) -> list[str]:
    """The last training date (``YYYY-MM-DD``) of each backtest fold of ``train``, newest first:
    the keys of externally supplied backtest forecasts (``run_backtest(external=...)``)."""
    L = spec.fold_length or spec.holdout
    windows = fold_windows(len(train), n_folds, L, _min_fit(spec, L))
    return [str(pd.Timestamp(train["ds"].iloc[start - 1]).date()) for start, _ in windows]


def run_backtest(
    train: pd.DataFrame,
    spec: TrainSpec,
    families: tuple[str, ...],
    n_folds: int,
    external: dict[str, dict[str, np.ndarray]] | None = None,
) -> Backtest:
    """Fit each family on every rolling origin of ``train`` and forecast the next fold.
    A family that fails on a fold is dropped (its error kept). The ensemble, when its members
    are candidates too, is the mean of their fold forecasts (no extra fits).

    ``external`` (family -> {fold origin date: forecast of the fold}, see ``fold_origins``)
    supplies a family's backtest forecasts computed elsewhere, e.g. by the global model's
    own job, or by an earlier pass over the same folds: that family is not fitted here, and
    a fold it has no forecast for counts as a failure."""
    L = spec.fold_length or spec.holdout
    windows = fold_windows(len(train), n_folds, L, _min_fit(spec, L))
    external = external or {}
    ctx = spec.fit_context
    members = _ensemble_members(ctx)
    derived_ensemble = "ensemble" in families and all(m in families for m in members)
    forecasts: dict[str, list[np.ndarray]] = {f: [] for f in families}
    errors: dict[str, str] = {}
    actuals = []
    for start, end in windows:
        fit_part, test = train.iloc[:start], train.iloc[start:end]
        actuals.append(test["y"].to_numpy(dtype=np.float64))
        origin = str(pd.Timestamp(train["ds"].iloc[start - 1]).date()) if external else ""
        for name in families:
            if name in errors or (name == "ensemble" and derived_ensemble):
                continue
            try:
                if name in external:
                    if origin not in external[name]:
                        raise ValueError(f"no external backtest forecast for the fold after {origin}")
                    f = np.asarray(external[name][origin], dtype=np.float64)
                    if f.shape != (end - start,):
                        raise ValueError(f"external backtest forecast after {origin} has {f.shape[0]} values, fold {end - start}")
                else:
                    fitted = get_family(name).fit(fit_part, ctx)
                    f = _forecast(fitted, test, spec.regressors)
                if not np.isfinite(f).all():
                    raise ValueError("non-finite forecast")
                forecasts[name].append(f)
            except Exception as exc:  # a family that cannot fit this series is not a candidate
                errors[name] = f"{type(exc).__name__}: {exc}"[:200]
        if derived_ensemble:
            if any(m in errors for m in members):
                errors["ensemble"] = "a member failed"
            else:
                forecasts["ensemble"].append(np.mean([forecasts[m][-1] for m in members], axis=0))
    for name in errors:
        forecasts.pop(name, None)
    y_fit = train["y"].to_numpy(dtype=np.float64)
    return Backtest(windows, forecasts, actuals, errors, naive_scale(y_fit, spec.season_length))


def choose(
    bt: Backtest, candidates: tuple[str, ...], metric: str, tie_tolerance: float, prefer: str | None = None
) -> tuple[str, str]:
    """The champion and why: the lowest pooled backtest ``metric``; among those within
    ``tie_tolerance`` (relative) of the best, the ``prefer`` family (auto's default, the
    ``fallback``) if it is one of them, else the cheapest (``families.COST_ORDER``).

    Preferring the default on near-ties shrinks the choice toward a prior: a few weeks of
    backtest are noisy, so another family has to be clearly better to replace it."""
    scores = {f: bt.pooled(f, metric) for f in candidates if f in bt.forecasts}
    used = metric
    if not any(np.isfinite(v) for v in scores.values()):
        used = "rmse"  # e.g. WAPE is undefined when every backtest actual is zero
        scores = {f: bt.pooled(f, used) for f in scores}
    scores = {f: v for f, v in scores.items() if np.isfinite(v)}
    if not scores:
        raise ValueError(
            "no candidate family could be backtested: " + "; ".join(f"{k}: {v}" for k, v in bt.errors.items())
        )
    best = min(scores, key=lambda f: (scores[f], cost_rank(f)))
    near = [f for f, v in scores.items() if v <= scores[best] * (1 + tie_tolerance) + 1e-12]
    champion = prefer if prefer in near else min(near, key=cost_rank)
    ranked = sorted(scores, key=scores.get)
    n = len(bt.folds)
    if champion == best:
        runner = next((f for f in ranked if f != best), None)
        reason = f"lowest backtest {used} {scores[best]:.4g} over {n} folds"
        if runner:
            reason += f" (next: {runner} {scores[runner]:.4g})"
    elif champion == prefer:
        reason = (
            f"default family: backtest {used} {scores[champion]:.4g} within {tie_tolerance:.0%} of the best "
            f"({best} {scores[best]:.4g}) over {n} folds"
        )
    else:
        reason = (
            f"backtest {used} {scores[champion]:.4g} within {tie_tolerance:.0%} of the best "
            f"({best} {scores[best]:.4g}) over {n} folds, and cheaper"
        )
    return champion, reason


# --- combinations and the pooled (dataset-level) choice --------------------------------------

COMBO_SEP = "+"  # "regression+global_lgbm": the equal-weight mean of those families' forecasts


def combo_name(members) -> str:
    return COMBO_SEP.join(members)


def combo_members(name: str) -> tuple[str, ...]:
    return tuple(name.split(COMBO_SEP))


def is_combo(name: str) -> bool:
    return COMBO_SEP in name


def combo_weights(name: str, ctx: FitContext) -> dict[str, float]:
    """Base-family weights of the equal-weight mean ``name``; the ensemble family counts as its
    own members' mean, so ``regression+ensemble`` is 3/4 regression and 1/4 prophet."""
    out: dict[str, float] = {}
    members = combo_members(name)
    for m in members:
        parts = _ensemble_members(ctx) if m == "ensemble" else (m,)
        for p in parts:
            out[p] = out.get(p, 0.0) + 1.0 / len(members) / len(parts)
    return out


def add_combination(bt: Backtest, name: str) -> bool:
    """Add the fold forecasts of the combination ``name`` to ``bt`` (the mean of its members'
    fold forecasts: no fits); False when a member has none."""
    if name in bt.forecasts:
        return True
    members = combo_members(name)
    if not all(m in bt.forecasts for m in members):
        return False
    bt.forecasts[name] = [np.mean(fs, axis=0) for fs in zip(*(bt.forecasts[m] for m in members), strict=True)]
    return True


def combinations_of(candidates, combine: int) -> list[tuple[str, ...]]:
    from itertools import combinations

    cands = tuple(dict.fromkeys(candidates))
    return [c for k in range(1, max(1, combine) + 1) for c in combinations(cands, k)]


def backtest_summary(bt: Backtest, candidates, combine: int = 3) -> dict[str, tuple[float, float]]:
    """One series' share of the pooled choice: for every family and every equal-weight mean of
    up to ``combine`` candidates, (sum of absolute errors, sum of absolute actuals) over the
    backtest folds. Sums add up over series, so a distributed job can reduce them with ``+``
    and hand the totals to ``pooled_choice``. Forecasts are clipped at zero for a non-negative
    series, as the served forecasts are."""
    if not bt.folds:
        return {}
    a = np.concatenate(bt.actuals)
    ok = np.isfinite(a)
    nonneg = bool((a[ok] >= 0).all())
    avail = {f: np.concatenate(bt.forecasts[f]) for f in dict.fromkeys(candidates) if f in bt.forecasts}
    if nonneg:
        avail = {f: np.maximum(v, 0.0) for f, v in avail.items()}
    act = float(np.abs(a[ok]).sum())
    out = {}
    for members in combinations_of([f for f in candidates if f in avail], combine):
        f = np.mean([avail[m] for m in members], axis=0)
        out[combo_name(members)] = (float(np.abs(a[ok] - f[ok]).sum()), act)
    return out


def add_summaries(total: dict, summary: dict) -> dict:
    """``total`` += ``summary`` (the reduce step of the pooled choice), plus a series count."""
    for k, (e, a) in summary.items():
        te, ta, n = total.get(k, (0.0, 0.0, 0))
        total[k] = (te + e, ta + a, n + 1)
    return total


# Bump when a change of code changes backtest forecasts: stored summaries then stop matching.
SUMMARY_FORMAT = 1
# TrainSpec fields that do not change a series' backtest (selection and interval settings,
# the dataset choice itself, the time limit): left out of ``summary_key``.
_NOT_IN_BACKTEST = frozenset({
    "prior", "prior_margin", "keep_summary", "prior_only", "pooled_sample", "summaries", "summary_to_store",
    "tie_tolerance", "fallback", "metric", "interval_coverage", "interval_method", "calibration_folds",
    "fit_timeout_seconds",
})


def summary_key(spec: TrainSpec) -> str:
    """What a series' ``backtest_summary`` depends on besides its data: the backtest's settings
    (candidates, folds, combinations, family options: with the global family, its shared
    models' sha256s; not the run's artifact URIs of them) and the code version."""
    from dataclasses import fields

    d = {f.name: getattr(spec, f.name) for f in fields(spec) if f.name not in _NOT_IN_BACKTEST}
    d["options"] = {fam: {k: v for k, v in o.items() if k != "uris"} if isinstance(o, dict) else o
                    for fam, o in (spec.options or {}).items()}
    d["code"] = [_code_version(), SUMMARY_FORMAT]
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:32]


@lru_cache(maxsize=1)
def _code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mm_platform")
    except PackageNotFoundError:
        return ""


def summary_record(bt: Backtest, spec: TrainSpec, data_fingerprint: str) -> dict:
    """A series' ``backtest_summary`` as stored in its artifact, with what it is valid for (its
    data fingerprint and ``summary_key``). Compact (it is in every artifact): the candidates
    backtested, the sum of actuals (the same for every combination) and the errors in the
    order of ``combinations_of``. Floats go through JSON exactly (shortest repr), so a reused
    summary adds up to the same totals as a recomputed one."""
    candidates = tuple(dict.fromkeys(spec.candidates))
    summary = backtest_summary(bt, candidates, spec.combine)
    families = [f for f in candidates if f in bt.forecasts] if summary else []
    actual = next(iter(summary.values()))[1] if summary else 0.0
    return {"fingerprint": data_fingerprint, "key": summary_key(spec), "families": families, "actual": actual,
            "errors": [summary[combo_name(c)][0] for c in combinations_of(families, spec.combine)]}


def summary_from_record(record, spec: TrainSpec, data_fingerprint: str) -> dict | None:
    """The ``backtest_summary`` a ``summary_record`` holds, or None when it was stored for other
    data or other backtest settings (or is not one)."""
    if not isinstance(record, dict) or record.get("fingerprint") != data_fingerprint or record.get("key") != summary_key(spec):
        return None
    families, errors, actual = record.get("families"), record.get("errors"), record.get("actual")
    if not isinstance(families, list) or not isinstance(errors, list) or not isinstance(actual, int | float):
        return None
    names = [combo_name(c) for c in combinations_of(families, spec.combine)]
    if len(names) != len(errors):
        return None
    return {k: (float(e), float(actual)) for k, e in zip(names, errors, strict=True)}


def pooled_choice(total: dict, min_share: float = 0.95) -> tuple[str, ...]:
    """The dataset-level choice: the family or combination with the lowest WAPE pooled over every
    series' backtest folds (``total``: the sums of ``backtest_summary`` by ``add_summaries``).
    Only choices backtested on at least ``min_share`` of the series that have the most count
    (a family that fails on many series is not chosen for all of them). Ties go to fewer members."""
    if not total:
        return ()
    most = max(n for _, _, n in total.values())
    scored = {k: e / a for k, (e, a, n) in total.items() if n >= min_share * most and a > 0}
    if not scored:
        return ()
    best = min(scored, key=lambda k: (round(scored[k], 12), len(combo_members(k)), k))
    return combo_members(best)


def choose_with_prior(
    bt: Backtest, candidates: tuple[str, ...], prior: tuple[str, ...], margin: float, metric: str
) -> tuple[str, str] | None:
    """Shrink toward the dataset-level choice ``prior``: a series keeps it unless one of its
    candidate families has a backtest ``metric`` lower by more than ``margin`` (relative).
    None when the prior cannot be scored on this series (a member failed)."""
    name = combo_name(prior)
    if not add_combination(bt, name):
        return None
    own = bt.pooled(name, metric)
    if not np.isfinite(own):
        return None
    scores = {f: bt.pooled(f, metric) for f in candidates if f in bt.forecasts and not is_combo(f)}
    scores = {f: v for f, v in scores.items() if np.isfinite(v)}
    n = len(bt.folds)
    if scores:
        best = min(scores, key=lambda f: (scores[f], cost_rank(f)))
        if best != name and scores[best] < own * (1 - margin):
            return best, (
                f"own backtest {metric} {scores[best]:.4g} beats the dataset choice {name} ({own:.4g}) "
                f"by more than {margin:.0%} over {n} folds"
            )
        runner = f" (best own family: {best} {scores[best]:.4g})" if best != name else ""
        return name, f"dataset choice: backtest {metric} {own:.4g} over {n} folds{runner}"
    return name, f"dataset choice: backtest {metric} {own:.4g} over {n} folds"


@dataclass
class CandidateFits:
    """What training one series produced: backtest, champion, holdout scores and calibration."""

    spec: TrainSpec
    history: pd.DataFrame
    train: pd.DataFrame
    test: pd.DataFrame
    backtest: Backtest | None
    champion: str
    reason: str
    holdout_forecasts: dict[str, np.ndarray]
    holdout_metrics: dict[str, dict[str, float]]
    naive_metrics: dict[str, float]
    first_fits: dict[str, object]
    final_fits: dict[str, object] = field(default_factory=dict)

    def residuals(self, family: str) -> np.ndarray:
        actual = self.test["y"].to_numpy(dtype=np.float64)
        parts = [actual - self.holdout_forecasts[family]]
        if self.backtest is not None:
            parts.insert(0, self.backtest.residuals(family))
        r = np.concatenate(parts)
        return r[np.isfinite(r)]

    def backtest_metrics(self) -> dict[str, float]:
        if self.backtest is None or not self.backtest.folds:
            return {}
        out: dict[str, float] = {"backtest.folds": float(len(self.backtest.folds))}
        metrics = dict.fromkeys(("wape", "mase", self.spec.metric))
        for fam in self.backtest.forecasts:
            if is_combo(fam):  # registry tag keys stay family names
                continue
            for m in metrics:
                out[f"backtest.{fam}.{m}"] = self.backtest.pooled(fam, m)
        return out

    def interval_metrics(self, family: str) -> dict[str, float]:
        r = self.residuals(family)
        half = conformal_half_width(r, self.spec.interval_coverage)
        inside = float(np.mean(np.abs(r) <= half)) if len(r) else float("nan")
        return {
            "interval.half_width": half,
            "interval.residuals": float(len(r)),
            "interval.insample_coverage": inside,
        }

    def artifact(self, family: str, refit: bool = True) -> dict:
        """The model artifact of ``family``: refitted on all data (warm-started from the
        holdout fit), with its interval calibrated on its out-of-sample residuals."""
        spec, history = self.spec, self.history
        first = self.first_fits[family]
        if not refit:
            final = first
        elif family in self.final_fits:
            final = self.final_fits[family]
        else:
            final = _fit_or_combine(family, history, spec.fit_context, self.final_fits, init=first.warm_start)
            self.final_fits[family] = final
        model = {"family": "ensemble" if is_combo(family) else family, "model": final.to_dict()}
        z = NormalDist().inv_cdf(0.5 + spec.interval_coverage / 2)
        actual = self.test["y"].to_numpy(dtype=np.float64)
        if spec.interval_method == "conformal":
            half = conformal_half_width(self.residuals(family), spec.interval_coverage)
            # forecast_arrays (and the serving layer) compute the half-width as z * interval_sigma.
            model["interval_sigma"] = half / z
            model["interval"] = {
                "method": "conformal",
                "half_width": half,
                "residuals": int(len(self.residuals(family))),
            }
        else:
            model["interval_sigma"] = _interval_sigma(actual, self.holdout_forecasts[family])
        model["interval_coverage"] = spec.interval_coverage
        model["freq"] = spec.freq
        model["last_ds"] = str(history["ds"].iloc[-1].date())
        model["regressor_names"] = list(spec.regressors)
        model["last_regressors"] = {r: float(history[r].iloc[-1]) for r in spec.regressors}
        if spec.family == AUTO and self.backtest is not None:
            model["selection"] = {
                "champion": self.champion,
                "reason": self.reason,
                "metric": spec.metric,
                "folds": len(self.backtest.folds),
                "backtest": {
                    fam: {
                        m: _round(self.backtest.pooled(fam, m))
                        for m in dict.fromkeys(("wape", "mase", spec.metric))
                    }
                    for fam in self.backtest.forecasts
                    if not is_combo(fam)
                },
                "failed": dict(self.backtest.errors),
            }
            if spec.prior:
                model["selection"]["dataset_choice"] = combo_name(spec.prior)
            if is_combo(self.champion):
                model["selection"]["combination"] = {
                    "members": list(combo_members(self.champion)),
                    "weights": {k: _round(v) for k, v in combo_weights(self.champion, spec.fit_context).items()},
                    "backtest": {
                        m: _round(self.backtest.pooled(self.champion, m))
                        for m in dict.fromkeys(("wape", "mase", spec.metric))
                    },
                }
        return model


def _round(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(f"{v:.6g}")


def _ensemble_members(ctx: FitContext) -> tuple[str, ...]:
    from mm_platform.forecasting.families import DEFAULT_ENSEMBLE

    return tuple((ctx.options or {}).get("ensemble", DEFAULT_ENSEMBLE))


def _fit_or_combine(name: str, frame: pd.DataFrame, ctx: FitContext, fitted: dict, init: dict | None = None):
    """Fit ``name`` on ``frame``; the ensemble reuses members already fitted on the same frame.
    A combination (``a+b``) is one flat EnsembleModel over its base families (``combo_weights``),
    each fitted once (or reused from ``fitted``) and warm-started from ``init[family]``."""
    if is_combo(name):
        from mm_platform.forecasting.families import EnsembleModel

        weights = combo_weights(name, ctx)
        models = []
        for m in weights:
            if m not in fitted:
                fitted[m] = get_family(m).fit(frame, ctx, init=(init or {}).get(m))
            models.append(fitted[m])
        return EnsembleModel(models, np.asarray(list(weights.values()), dtype=np.float64))
    if name == "ensemble":
        members = _ensemble_members(ctx)
        if all(m in fitted for m in members):
            from mm_platform.forecasting.families import EnsembleModel

            return EnsembleModel([fitted[m] for m in members], np.full(len(members), 1.0 / len(members)))
    return get_family(name).fit(frame, ctx, init=init)


def _warm_for(name: str, warm: dict[str, dict] | None) -> dict | None:
    """The warm start of ``name`` from the previous model's (a combination was stored as an
    ensemble: its warm start is per base family)."""
    warm = warm or {}
    if not is_combo(name):
        return warm.get(name)
    return {**(warm.get("ensemble") or {}), **{f: v for f, v in warm.items() if f != "ensemble"}}


def fit_candidates(
    history: pd.DataFrame,
    spec: TrainSpec,
    every: bool = False,
    warm: dict[str, dict] | None = None,
    external: dict[str, dict[str, np.ndarray]] | None = None,
) -> CandidateFits:
    """Backtest, select, fit on the training window and score the holdout.

    ``history`` is regularized. With ``every`` (used by the accuracy report) every candidate
    gets its holdout fit, not just the champion, so each can be turned into an artifact.
    ``warm`` (family -> parameters of the series' previous model) warm-starts holdout fits.
    ``external`` supplies backtest forecasts computed elsewhere (see ``run_backtest``).
    """
    train, test = history.iloc[: -spec.holdout], history.iloc[-spec.holdout :]
    ctx = spec.fit_context
    if spec.family == AUTO:
        candidates = tuple(dict.fromkeys(spec.candidates))
        prior = tuple(spec.prior)
        tested = tuple(dict.fromkeys((*candidates, *(m for m in prior if m not in candidates))))
        picked = None
        if spec.prior_only and prior and spec.prior_margin >= 1:
            members = _ensemble_members(ctx) if "ensemble" in prior else ()
            bt = run_backtest(train, spec, tuple(dict.fromkeys((*prior, *members))), spec.folds, external)
            if bt.folds:
                picked = choose_with_prior(bt, (), prior, spec.prior_margin, spec.metric)
            if picked is None:  # the choice cannot be scored here: every candidate after all
                bt = run_backtest(train, spec, tested, spec.folds, external)
        else:
            bt = run_backtest(train, spec, tested, spec.folds, external)
        if picked is None and bt.folds and prior:
            picked = choose_with_prior(bt, candidates, prior, spec.prior_margin, spec.metric)
        if picked is not None:
            champion, reason = picked
        elif bt.folds:
            champion, reason = choose(bt, candidates, spec.metric, spec.tie_tolerance, spec.fallback)
            if prior:
                reason = f"dataset choice {combo_name(prior)} not backtested here; " + reason
        elif prior:
            champion, reason = combo_name(prior), "series too short to backtest: the dataset choice"
        else:
            champion, reason = spec.fallback, "series too short to backtest: fallback family"
        todo = [f for f in candidates if f in bt.forecasts or not bt.folds] if every else []
        todo = list(dict.fromkeys([*todo, champion]))
    else:
        candidates = (spec.family,)
        n = spec.backtest_folds if spec.interval_method == "conformal" else 0
        bt = run_backtest(train, spec, candidates, n) if n else None
        champion, reason, todo = spec.family, "", [spec.family]
    actual = test["y"].to_numpy(dtype=np.float64)
    holdout_forecasts, holdout_metrics, first_fits = {}, {}, {}
    # Members first: the ensemble and combinations reuse their fits.
    todo = sorted(todo, key=lambda f: f == "ensemble" or is_combo(f))
    for name in todo:
        try:
            first = _fit_or_combine(name, train, ctx, first_fits, init=_warm_for(name, warm))
        except Exception:
            if name == champion or not every:
                raise
            continue
        first_fits[name] = first
        holdout_forecasts[name] = _forecast(first, test, spec.regressors)
        holdout_metrics[name] = all_metrics(actual, holdout_forecasts[name])
    naive_forecast = SeasonalNaive().fit(train, ctx).predict(test["ds"].to_numpy())
    naive_metrics = all_metrics(actual, naive_forecast, prefix="naive_")
    return CandidateFits(
        spec,
        history,
        train,
        test,
        bt,
        champion,
        reason,
        holdout_forecasts,
        holdout_metrics,
        naive_metrics,
        first_fits,
    )


def future_dates(last_ds: str, horizon: int, freq: str) -> np.ndarray:
    step = np.timedelta64(7 if freq == "W" else 1, "D")
    start = np.datetime64(last_ds, "D")
    return start + step * np.arange(1, horizon + 1)


def periods_after(last_ds: str, origin: str | None, freq: str) -> int:
    """Whole periods from a model's last date to ``origin`` (0 when ``origin`` is not later):
    a kept production model forecasts that many extra periods, so what it publishes starts
    after the run date, not after the day it was trained."""
    if origin is None:
        return 0
    days = int((np.datetime64(origin, "D") - np.datetime64(last_ds, "D")).astype(int))
    return max(0, days // (7 if freq == "W" else 1))


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
                raise ValueError(
                    f"regressor {name} has {len(regs[name])} future values, horizon is {horizon}"
                )
        else:
            regs[name] = np.full(horizon, float(model.get("last_regressors", {}).get(name, 0.0)))
    yhat = fitted.predict(ds, regs)
    z = NormalDist().inv_cdf(0.5 + model.get("interval_coverage", 0.9) / 2)
    half = z * float(model.get("interval_sigma", 0.0))
    lower, upper = yhat - half, yhat + half
    if nonnegative:
        yhat, lower, upper = np.maximum(yhat, 0), np.maximum(lower, 0), np.maximum(upper, 0)
    return ds, yhat, lower, upper


def future_regressor_values(model: dict, horizon: int, known: dict | None) -> dict[str, np.ndarray]:
    """Each regressor's values for the ``horizon`` periods after the model's last date:
    the known future values (``known``: ``{"ds": [dates], name: [values]}``, e.g. planned
    prices from the source) where given, otherwise the latest earlier value carried forward
    (starting from the last observed one)."""
    ds = future_dates(model["last_ds"], horizon, model.get("freq", "D"))
    known = known or {}
    position = {d: i for i, d in enumerate(np.asarray(known.get("ds", []), dtype="datetime64[D]"))}
    out = {}
    for name in model.get("regressor_names", []):
        given = known.get(name)
        value = float(model.get("last_regressors", {}).get(name, 0.0))
        values = np.empty(horizon)
        for j, d in enumerate(ds):
            i = position.get(d)
            if given is not None and i is not None and given[i] is not None and np.isfinite(given[i]):
                value = float(given[i])
            values[j] = value
        out[name] = values
    return out
