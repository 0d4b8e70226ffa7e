"""Accuracy report: backtest the configured forecasting setup on the data, for ``auto`` and
for every single family.

``mm-platform evaluate [--config FILE] [--families a,b,...] [--series N] [--folds K] --json``

Data come from the lake when it holds the source table, otherwise straight from the source
database (pandas). Each series is cut at K outer origins (the last K x ``horizon`` periods);
for each cut the production code path runs on the data before it -- ``fit_candidates`` (the
same backtest, selection, holdout and conformal calibration as ``train_series``) and the
artifacts' ``forecast_arrays`` with the actual future regressor values -- and the forecast
is scored on the ``horizon`` periods after it, which no step of the training saw.

Reported per method (``auto`` and each family): overall WAPE (pooled over all series and
cuts), MASE (mean over series of MAE / in-sample seasonal-naive MAE), median per-series
MAPE, empirical interval coverage (pooled, and the share of series within +/-10 pp),
``share_beating_seasonal_naive`` (series whose absolute error is below seasonal naive's),
and for ``auto`` the mix of chosen families. Single families get their intervals calibrated
on the same backtest residuals as ``auto``'s. ``auto_vs`` gives auto's overall WAPE over each
family's with a 90% paired bootstrap interval over series.

Beside the families: ``least_squares`` (per-series OLS of y on the regressors and an
intercept, no seasonality: the baseline any model with regressors should beat) and, when the
global LightGBM family is among the candidates (by default; ``--no-global`` leaves it out),
its shared models fitted once per training origin across the evaluated series (or per group,
``--global-by KEY``), and ``auto_local``: auto's choice among the local families only (what
training picks today). With ``algorithm.regression.pool_by`` the per-series elasticities are
pooled by that key before the per-series fits (``elasticity_priors``).

``auto`` is the pooled choice (``--no-pooled``: each series alone, as before): a first pass
backtests every candidate on every series at each cut (``backtest_series``), the sums of
``series.backtest_summary`` give the dataset-level choice per cut (``series.pooled_choice``:
the family or equal-weight mean of up to ``--combine`` families with the lowest pooled
backtest WAPE), and the second pass reuses those backtest forecasts (``external``) and keeps
the dataset choice per series unless a family beats it on the series' own backtest by
``--prior-margin``. Neither pass sees the test windows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd

from mm_platform.config import DatasetConfig, load_config
from mm_platform.core.errors import UserError
from mm_platform.forecasting.metrics import coverage, mape, naive_scale
from mm_platform.forecasting.series import (
    AUTO,
    TrainSpec,
    check_series,
    fit_candidates,
    forecast_arrays,
    regularize,
)

AUTO_LABEL = "auto"
AUTO_LOCAL = "auto_local"  # auto without the global family: what training picks today
LEAST_SQUARES = "least_squares"  # per-series OLS of y on the regressors (a baseline, not a candidate)


# -- data -----------------------------------------------------------------------------------


def load_frame(cfg: DatasetConfig) -> pd.DataFrame:
    """The configured columns of the dataset: from the lake if it has the table, else the source."""
    cols = cfg.columns
    wanted = [cols.date, cols.target, *cols.keys, *cols.regressors]
    frame = None
    try:
        from mm_platform.stores.lake import Lake

        lake = Lake(cfg.storage.lake_url)
        if lake.raw_files(cfg.source.table):
            frame = lake.read_raw(cfg.source.table, columns=wanted)
    except Exception:  # no lake (yet): read the source
        frame = None
    if frame is None or frame.empty:
        import sqlalchemy as sa

        from mm_platform.stores.sql import check_source, source_engine

        # Checked first, and opened read-only: a wrong source is one line and creates nothing.
        check_source(cfg.source.url, cfg.source.table, wanted)
        engine = source_engine(cfg.source.url)
        try:
            table = sa.table(cfg.source.table, *(sa.column(c) for c in wanted))
            with engine.connect() as conn:
                frame = pd.read_sql(sa.select(*(table.c[c] for c in wanted)), conn)
        finally:
            engine.dispose()
    frame[cols.date] = pd.to_datetime(frame[cols.date])
    frame[cols.target] = pd.to_numeric(frame[cols.target], errors="coerce")
    for r in cols.regressors:
        frame[r] = pd.to_numeric(frame[r], errors="coerce").astype(np.float64)
    return frame


def series_frames(
    cfg: DatasetConfig, frame: pd.DataFrame, limit: int | None
) -> list[tuple[str, pd.DataFrame]]:
    return [(sid, h) for sid, _, h in keyed_series_frames(cfg, frame, limit)]


def keyed_series_frames(
    cfg: DatasetConfig, frame: pd.DataFrame, limit: int | None
) -> list[tuple[str, dict, pd.DataFrame]]:
    """(series id, key values, history) of the first ``limit`` series."""
    cols = cfg.columns
    out = []
    for key, g in frame.groupby(list(cols.keys), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        sid = ",".join(f"{k}={v}" for k, v in zip(cols.keys, key, strict=True))
        h = g.rename(columns={cols.date: "ds", cols.target: "y"})[["ds", "y", *cols.regressors]]
        out.append((sid, dict(zip(cols.keys, key, strict=True)), h.sort_values("ds").reset_index(drop=True)))
        if limit and len(out) >= limit:
            break
    return out


def prepared(history: pd.DataFrame, spec: TrainSpec, horizon: int, outer_folds: int):
    """(regularized history, cut positions) of one series, or (None, (status, reason))."""
    h = history[["ds", "y", *spec.regressors]].copy()
    h["ds"] = pd.to_datetime(h["ds"])
    problem = check_series(h, spec)
    if problem:
        return None, problem
    h = regularize(h, spec.freq, spec.regressors)
    cuts = []
    for i in range(outer_folds, 0, -1):
        cut = len(h) - i * horizon
        if cut > 0 and check_series(h.iloc[:cut], spec) is None:
            cuts.append(cut)
    if not cuts:
        return None, ("skipped", "too short to cut a test window")
    return h, cuts


def fit_origins(h: pd.DataFrame, cuts: list[int], spec: TrainSpec) -> set[str]:
    """Dates whose data a per-series fit of ``fit_candidates`` ends on, over every cut: the
    backtest folds, the holdout fit and the final refit (the global family needs a shared
    model fitted up to each)."""
    from mm_platform.forecasting.series import _min_fit, fold_windows

    L = spec.fold_length or spec.holdout
    out = set()
    for cut in cuts:
        train = h.iloc[:cut]
        inner = train.iloc[: -spec.holdout]
        ends = [cut, len(inner)] + [start for start, _ in fold_windows(len(inner), spec.folds, L, _min_fit(spec, L))]
        out |= {str(h["ds"].iloc[e - 1].date()) for e in ends if e > 0}
    return out


def least_squares(train: pd.DataFrame, test: pd.DataFrame, regressors: tuple[str, ...]) -> np.ndarray:
    """The baseline: ordinary least squares of y on the regressors and an intercept, per series
    (no trend, no seasonality); clipped at zero for a non-negative target."""
    y = train["y"].to_numpy(dtype=np.float64)
    ok = np.isfinite(y)
    X = np.column_stack([np.ones(len(y)), train[list(regressors)].to_numpy(dtype=np.float64)])
    beta = np.linalg.lstsq(X[ok], y[ok], rcond=None)[0]
    Xt = np.column_stack([np.ones(len(test)), test[list(regressors)].to_numpy(dtype=np.float64)])
    f = Xt @ beta
    return np.maximum(f, 0.0) if (y[ok] >= 0).all() else f


# -- one series -----------------------------------------------------------------------------


def backtest_series(sid: str, history: pd.DataFrame, spec: TrainSpec, horizon: int, outer_folds: int) -> dict:
    """The first pass of the pooled choice: every candidate's backtest at each cut (the same
    folds ``fit_candidates`` uses, before the cut's holdout), as external forecasts for the
    second pass and as ``backtest_summary`` sums (all candidates, and local ones only) for
    ``pooled_choice``. Cuts are numbered from the newest (0)."""
    from mm_platform.forecasting.global_lgbm import FAMILY as GLOBAL
    from mm_platform.forecasting.series import backtest_summary, run_backtest

    h, cuts = prepared(history, spec, horizon, outer_folds)
    if h is None:
        return {"series_id": sid, "cuts": {}, "cpu_seconds": 0.0}
    started = time.process_time()
    candidates = tuple(dict.fromkeys(spec.candidates))
    local = tuple(f for f in candidates if f != GLOBAL)
    out = {}
    for back, cut in enumerate(reversed(cuts)):
        train = h.iloc[:cut].iloc[: -spec.holdout]
        bt = run_backtest(train, spec, candidates, spec.folds)
        origins = [str(train["ds"].iloc[start - 1].date()) for start, _ in bt.folds]
        out[back] = {
            "external": {f: dict(zip(origins, fs, strict=True)) for f, fs in bt.forecasts.items()},
            "failed": list(bt.errors),
            "summary": backtest_summary(bt, candidates, spec.combine),
            "summary_local": backtest_summary(bt, local, spec.combine),
        }
    return {"series_id": sid, "cuts": out, "cpu_seconds": time.process_time() - started}


def _backtest_one(args):
    return backtest_series(*args)


def evaluate_series(
    sid: str,
    history: pd.DataFrame,
    spec: TrainSpec,
    horizon: int,
    outer_folds: int,
    pooled: dict | None = None,
    first_pass: dict | None = None,
) -> dict:
    """Forecasts of auto and every candidate at ``outer_folds`` cuts, with the actuals; also
    the least-squares baseline (with regressors) and ``auto`` restricted to the local families
    (``champion_local``: what auto picks without ``global_lgbm``). ``pooled`` maps a cut
    (numbered from the newest) to its dataset-level choices ``{"all": (...), "local": (...)}``;
    ``first_pass`` is this series' ``backtest_series`` result (its forecasts are reused)."""
    from mm_platform.forecasting.global_lgbm import FAMILY as GLOBAL
    from mm_platform.forecasting.series import (
        choose,
        choose_with_prior,
        combo_members,
        combo_name,
    )

    h, cuts = prepared(history, spec, horizon, outer_folds)
    if h is None:
        return {"series_id": sid, "status": cuts[0], "reason": cuts[1]}
    n_obs = int(np.isfinite(h["y"].to_numpy(dtype=np.float64)).sum())
    local = tuple(f for f in dict.fromkeys(spec.candidates) if f != GLOBAL)
    results = []
    started = time.process_time()
    for back, cut in zip(range(len(cuts) - 1, -1, -1), cuts, strict=True):
        choice = (pooled or {}).get(back) or {}
        cut_spec = TrainSpec(**{**spec.__dict__, "prior": tuple(choice.get("all") or ())})
        external = ((first_pass or {}).get("cuts") or {}).get(back, {}).get("external")
        train, test = h.iloc[:cut], h.iloc[cut : cut + horizon]
        fits = fit_candidates(train, cut_spec, every=True, external=external)
        regs = {r: test[r].to_numpy(dtype=np.float64) for r in spec.regressors}
        actual = test["y"].to_numpy(dtype=np.float64)
        forecasts = {}
        for fam in fits.holdout_forecasts:
            artifact = fits.artifact(fam)
            _, yhat, lo, hi = forecast_arrays(artifact, len(test), regs)
            forecasts[fam] = (yhat, lo, hi)
        forecasts[AUTO_LABEL] = forecasts[fits.champion]
        if spec.regressors:
            f = least_squares(train, test, spec.regressors)
            forecasts[LEAST_SQUARES] = (f, np.full(len(f), np.nan), np.full(len(f), np.nan))
        # auto without the global family: the same rule over the local candidates, its
        # forecast the mean of the chosen members' forecasts (no interval of its own).
        champion_local = fits.champion
        if GLOBAL in spec.candidates:
            bt = fits.backtest
            prior_local = tuple(choice.get("local") or ())
            picked = None
            if bt is not None and bt.folds and prior_local:
                picked = choose_with_prior(bt, local, prior_local, spec.prior_margin, spec.metric)
            if picked is not None:
                champion_local = picked[0]
            elif bt is not None and bt.folds and any(f in bt.forecasts for f in local):
                champion_local = choose(bt, local, spec.metric, spec.tie_tolerance, spec.fallback)[0]
            else:
                champion_local = combo_name(prior_local) if prior_local else spec.fallback
            members = combo_members(champion_local)
            if all(m in forecasts for m in members):
                yl = np.mean([forecasts[m][0] for m in members], axis=0)
                nan = np.full(len(yl), np.nan)
                forecasts[AUTO_LOCAL] = forecasts[champion_local] if len(members) == 1 else (yl, nan, nan)
        results.append(
            {
                "actual": actual,
                "scale": naive_scale(train["y"].to_numpy(dtype=np.float64), spec.season_length),
                "forecasts": forecasts,
                "champion": fits.champion,
                "champion_local": champion_local,
                "backtested": bool(fits.backtest is not None and fits.backtest.folds),
                "backtest": {f: fits.backtest.pooled(f, spec.metric) for f in fits.backtest.forecasts}
                if fits.backtest is not None
                else {},
                # For offline analysis of selection rules (--dump): every candidate's fold forecasts.
                "backtest_folds": {
                    "actuals": fits.backtest.actuals,
                    "forecasts": fits.backtest.forecasts,
                }
                if fits.backtest is not None
                else None,
            }
        )
    first_cpu = float((first_pass or {}).get("cpu_seconds") or 0.0)
    return {
        "series_id": sid,
        "status": "ok",
        "n_obs": n_obs,
        "cuts": results,
        "cpu_seconds": time.process_time() - started + first_cpu,
    }


def _evaluate_one(args):
    return evaluate_series(*args)


def pooled_choices(first_pass) -> tuple[dict, dict]:
    """The dataset-level choice per cut (all candidates, and local ones only) from the first
    pass's sums: ``({cut: {"all": members, "local": members}}, a JSON-able summary)``."""
    from mm_platform.forecasting.series import add_summaries, combo_name, pooled_choice

    totals: dict = {}
    for r in first_pass:
        for back, c in r["cuts"].items():
            t = totals.setdefault(back, {"all": {}, "local": {}})
            add_summaries(t["all"], c["summary"])
            add_summaries(t["local"], c["summary_local"])
    choices = {back: {k: pooled_choice(v) for k, v in t.items()} for back, t in totals.items()}
    summary = {}
    for back, t in sorted(totals.items()):
        best = choices[back]["all"]
        key = combo_name(best) if best else None
        e, a, n = t["all"].get(key, (np.nan, np.nan, 0)) if key else (np.nan, np.nan, 0)
        single = {k: _r(v[0] / v[1]) for k, v in t["all"].items() if "+" not in k and v[1] > 0}
        summary[f"cut_{back}"] = {
            "choice": key,
            "choice_local": combo_name(choices[back]["local"]) if choices[back]["local"] else None,
            "backtest_wape": _r(e / a) if a else None,
            "series": n,
            "single_family_backtest_wape": dict(sorted(single.items(), key=lambda kv: kv[1] or 9)),
        }
    return choices, summary


# -- aggregation ----------------------------------------------------------------------------


def summarize(results: list[dict], methods: list[str], coverage_level: float, min_history_long: int) -> dict:
    ok = [r for r in results if r["status"] == "ok"]
    out: dict = {
        "series": len(results),
        "series_evaluated": len(ok),
        "series_not_evaluated": Counter(_why(r["reason"]) for r in results if r["status"] != "ok"),
        "cuts": sum(len(r["cuts"]) for r in ok),
        "methods": {},
    }
    for method in methods:
        abs_err = abs_act = 0.0
        mases, mapes, covs, per_cov = [], [], [], []
        beats = beats_long = n_long = compared = 0
        mix: Counter = Counter()
        for r in ok:
            s_err = s_naive = 0.0
            a_all, lo_all, hi_all = [], [], []
            for c in r["cuts"]:
                fam = _method_family(c, method)
                if fam not in c["forecasts"] or "seasonal_naive" not in c["forecasts"]:
                    continue
                if method in (AUTO_LABEL, AUTO_LOCAL):
                    mix[_mix_label(c, method)] += 1
                yhat, lo, hi = c["forecasts"][fam]
                a = c["actual"]
                okm = np.isfinite(a)
                a, yhat, lo, hi = a[okm], yhat[okm], lo[okm], hi[okm]
                naive = c["forecasts"]["seasonal_naive"][0][okm]
                err = np.abs(a - yhat)
                abs_err += err.sum()
                abs_act += np.abs(a).sum()
                s_err += err.sum()
                s_naive += np.abs(a - naive).sum()
                if np.isfinite(c["scale"]) and c["scale"] > 0 and len(a):
                    mases.append(err.mean() / c["scale"])
                mapes.append(mape(a, yhat))
                a_all.append(a)
                lo_all.append(lo)
                hi_all.append(hi)
            if not a_all:
                continue
            compared += 1
            a, lo, hi = np.concatenate(a_all), np.concatenate(lo_all), np.concatenate(hi_all)
            if np.isfinite(lo).all() and np.isfinite(hi).all():  # the least-squares baseline has no interval
                covs.append((np.sum((a >= lo) & (a <= hi)), len(a)))
                per_cov.append(coverage(a, lo, hi))
            better = s_err < s_naive
            beats += better
            if r["n_obs"] >= min_history_long:
                n_long += 1
                beats_long += better
        hit = sum(c[0] for c in covs)
        total = sum(c[1] for c in covs)
        per_cov = np.asarray(per_cov, dtype=np.float64)
        m = {
            "series": compared,
            "wape": _r(abs_err / abs_act) if abs_act > 0 else None,
            "mase": _r(np.mean(mases)) if mases else None,
            "median_mase": _r(np.median(mases)) if mases else None,
            "median_mape": _r(np.nanmedian(mapes)) if np.isfinite(mapes).any() else None,
            "interval_coverage": _r(hit / total) if total else None,
            "median_series_coverage": _r(np.nanmedian(per_cov)) if len(per_cov) else None,
            "share_series_coverage_within_10pp": _r(np.mean(np.abs(per_cov - coverage_level) <= 0.10))
            if len(per_cov)
            else None,
            "share_beating_seasonal_naive": _r(beats / compared) if compared else None,
            f"share_beating_seasonal_naive_history_ge_{min_history_long}": _r(beats_long / n_long)
            if n_long
            else None,
        }
        if method in (AUTO_LABEL, AUTO_LOCAL):
            m["mix"] = dict(mix.most_common())
            n_mix = sum(mix.values())
            m["mix_share"] = {f: _r(k / n_mix) for f, k in mix.most_common()} if n_mix else {}
        out["methods"][method] = m
    return out


def series_errors(results: list[dict], method: str) -> tuple[np.ndarray, np.ndarray]:
    """Per series: (sum of absolute errors of ``method``, sum of absolute actuals), over its cuts."""
    err, act = [], []
    for r in results:
        if r["status"] != "ok":
            continue
        e = a = 0.0
        for c in r["cuts"]:
            fam = _method_family(c, method)
            if fam not in c["forecasts"]:
                e = float("nan")
                break
            ok = np.isfinite(c["actual"])
            e += float(np.abs(c["actual"][ok] - c["forecasts"][fam][0][ok]).sum())
            a += float(np.abs(c["actual"][ok]).sum())
        err.append(e)
        act.append(a)
    return np.asarray(err), np.asarray(act)


def compare_auto(results: list[dict], methods: list[str], n_boot: int = 2000, seed: int = 0) -> dict:
    """``auto``'s overall WAPE relative to each method's (below 1: auto is better), with a 90%
    paired bootstrap interval over series: how much of the difference is series sampling noise."""
    auto_err, _ = series_errors(results, AUTO_LABEL)
    out = {}
    if not len(auto_err):
        return out
    idx = np.random.default_rng(seed).integers(0, len(auto_err), size=(n_boot, len(auto_err)))
    for m in methods:
        err, _ = series_errors(results, m)
        ok = np.isfinite(err) & np.isfinite(auto_err)
        if not ok.any() or err[ok].sum() <= 0:
            continue
        a, b = np.where(ok, auto_err, 0.0), np.where(ok, err, 0.0)
        boot = a[idx].sum(axis=1) / np.maximum(b[idx].sum(axis=1), 1e-12)
        out[m] = {
            "wape_ratio": _r(a.sum() / b.sum()),
            "ci90": [_r(np.quantile(boot, 0.05)), _r(np.quantile(boot, 0.95))],
        }
    return out


def _method_family(cut: dict, method: str) -> str:
    """The key of ``method``'s forecast in a cut (older dumps: auto's champion family)."""
    if method in cut["forecasts"]:
        return method
    if method == AUTO_LABEL:
        return cut["champion"]
    if method == AUTO_LOCAL:
        return cut.get("champion_local", cut["champion"])
    return method


def _mix_label(cut: dict, method: str) -> str:
    return cut.get("champion_local", cut["champion"]) if method == AUTO_LOCAL else cut["champion"]


def _why(reason: str) -> str:
    return "shorter than min_history" if "min_history" in reason else reason[:60]


def _r(v) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


# -- pooled elasticities and the global family ------------------------------------------------

GLOBAL_FAMILY = "global_lgbm"


def series_spec(spec: TrainSpec, options: dict | None) -> TrainSpec:
    """``spec`` with per-series family options (an elasticity prior, the global models) merged in."""
    if not options:
        return spec
    merged = dict(spec.options)
    for k, v in options.items():
        merged[k] = {**(merged.get(k) or {}), **v}
    return TrainSpec(**{**spec.__dict__, "options": merged})


def elasticity_priors(keyed, spec: TrainSpec, pool_by: str, horizon: int, outer_folds: int, per_series: dict) -> dict:
    """Pool the per-series price elasticities by the ``pool_by`` key: each series' estimate is
    taken on its data before its first test window (the test windows stay unseen), the groups'
    priors are their precision-weighted means with the between-series variance, and every
    series of a group of at least two gets its group's prior in its regression options (the
    fit shrinks toward it: empirical Bayes). A series' own estimate is part of its group's
    prior; with a handful of series per group that matters little."""
    from mm_platform.forecasting.families import pooled_elasticities, series_elasticity

    ctx = spec.fit_context
    estimates: dict = {}
    member: dict = {}
    for sid, kv, history in keyed:
        h, cuts = prepared(history, spec, horizon, outer_folds)
        if h is None:
            continue
        est = series_elasticity(h.iloc[: cuts[0]], ctx)
        group = str(kv[pool_by])
        member[sid] = group
        if est is not None:
            estimates.setdefault(group, []).append(est)
    priors = pooled_elasticities(estimates)
    for sid, group in member.items():
        if group in priors:
            e0, tau2 = priors[group]
            per_series.setdefault(sid, {})["regression"] = {"elasticity_prior": e0, "elasticity_prior_var": tau2}
    values = [p[0] for p in priors.values()]
    return {
        "pool_by": pool_by,
        "groups": len(priors),
        "series_with_prior": sum(1 for g in member.values() if g in priors),
        "median_group_elasticity": _r(np.median(values)) if values else None,
        "median_between_series_sd": _r(np.median([np.sqrt(p[1]) for p in priors.values()])) if priors else None,
    }


def global_models(keyed, spec: TrainSpec, horizon: int, outer_folds: int, group_by: str | None, per_series: dict):
    """Fit the global family's shared models: one LightGBM model per training origin (every
    date a per-series fit of the evaluation ends on: the backtest folds, the holdout fit and
    the final refit of every cut), on every evaluated series' rows up to that date, or one per
    group of ``group_by``. Registers them in this process and returns (a summary, their JSON
    texts for the worker processes); ``per_series`` gets each series' {origin: sha256}."""
    from mm_platform.forecasting.global_lgbm import FeatureSpec, fit_global, register_shared

    prepared_series, origins = [], set()
    for sid, kv, history in keyed:
        h, cuts = prepared(history, spec, horizon, outer_folds)
        if h is None:
            continue
        prepared_series.append((sid, kv, h))
        origins |= fit_origins(h, cuts, spec)
    groups: dict = {}
    for sid, kv, h in prepared_series:
        groups.setdefault(str(kv[group_by]) if group_by else "", []).append((sid, kv, h))
    keys = tuple(kv for kv in (keyed[0][1] if keyed else {}))
    feature_spec = FeatureSpec.default(spec.freq, spec.regressors, keys)
    texts, cpu, fitted = [], 0.0, 0
    started = time.process_time()
    for origin in sorted(origins):
        for members in groups.values():
            try:
                model = fit_global([(kv, h) for _, kv, h in members], feature_spec, origin)
            except ValueError:  # no rows before this origin in this group
                continue
            sha = register_shared(model)
            texts.append(model.to_json())
            fitted += 1
            for sid, _, _ in members:
                per_series.setdefault(sid, {}).setdefault(GLOBAL_FAMILY, {"models": {}})["models"][origin] = sha
    cpu = time.process_time() - started
    for sid, kv, _ in prepared_series:
        if sid in per_series and GLOBAL_FAMILY in per_series[sid]:
            per_series[sid][GLOBAL_FAMILY]["keys"] = {k: str(v) for k, v in kv.items()}
    summary = {
        "models_fitted": fitted,
        "origins": len(origins),
        "groups": len(groups),
        "group_by": group_by,
        "fit_cpu_seconds": round(cpu, 1),
        "fit_cpu_seconds_per_series_per_origin": _r(cpu / max(len(origins), 1) / max(len(prepared_series), 1)),
        "features": feature_spec.feature_names(),
    }
    return summary, texts


def install_shared(texts: list[str]) -> None:
    """Worker-process initializer: make the shared global models resolvable here."""
    from mm_platform.forecasting.global_lgbm import GlobalModel, register_shared

    for t in texts:
        register_shared(GlobalModel.from_json(t))


# -- cost -----------------------------------------------------------------------------------


def measure_cost(
    series: list[tuple[str, pd.DataFrame]], spec: TrainSpec, families: list[str], prior: tuple[str, ...] = ()
) -> dict:
    """CPU seconds (time.process_time) of ``train_series`` per series, for auto and each given
    family; with ``prior``, also ``auto_pooled``: auto given that dataset-level choice."""
    from mm_platform.forecasting.series import train_series

    out = {}
    runs = [(AUTO, AUTO, ()), *((f, f, ()) for f in families)]
    if prior:
        runs.append(("auto_pooled", AUTO, tuple(prior)))
    for label, fam, p in runs:
        s = TrainSpec(**{**spec.__dict__, "family": fam, "fit_timeout_seconds": None, "prior": p})
        train_series(series[0][1], s)  # imports and first-call set-up outside the timing
        started = time.process_time()
        for _, h in series:
            train_series(h, s)
        out[label] = round((time.process_time() - started) / len(series), 3)
    return out


# -- command ----------------------------------------------------------------------------------


def run(args) -> dict:
    from mm_platform.spark.train import train_spec

    cfg = load_config(args.config)
    base = train_spec(cfg, AUTO)
    candidates = list(base.candidates)
    if args.families:
        candidates = [f.strip() for f in args.families.split(",") if f.strip()]
    from mm_platform.forecasting.families import FAMILIES

    bad = [f for f in candidates if f not in FAMILIES]
    if bad:
        raise UserError(f"--families: unknown families {bad}; known: {sorted(FAMILIES)}")
    if "seasonal_naive" not in candidates:
        candidates = ["seasonal_naive", *candidates]  # the MASE / beating-naive baseline
    global_by = getattr(args, "global_by", None)
    if global_by and global_by not in cfg.columns.keys:
        raise UserError(f"--global-by: {global_by!r} is not a key column of {cfg.name} (keys: {cfg.columns.keys})")
    if not args.families and not getattr(args, "no_global", False) and GLOBAL_FAMILY not in candidates:
        candidates.append(GLOBAL_FAMILY)  # evaluate only: training cannot fit the shared model yet
    spec = TrainSpec(
        **{
            **base.__dict__,
            "candidates": tuple(candidates),
            "fit_timeout_seconds": None,
            "prior_margin": getattr(args, "prior_margin", 1.0),
            "combine": getattr(args, "combine", 3),
        }
    )
    started = time.time()
    frame = load_frame(cfg)
    keyed = keyed_series_frames(cfg, frame, args.series)
    series = [(sid, h) for sid, _, h in keyed]
    horizon = cfg.horizon
    per_series: dict[str, dict] = {}
    extra: dict = {}
    pool_by = (spec.options.get("regression") or {}).get("pool_by")
    if pool_by:
        extra["elasticity_priors"] = elasticity_priors(keyed, spec, pool_by, horizon, args.folds, per_series)
    shared_texts: list[str] = []
    if GLOBAL_FAMILY in candidates:
        extra["global"], shared_texts = global_models(keyed, spec, horizon, args.folds, global_by, per_series)
    specs = {sid: series_spec(spec, per_series.get(sid)) for sid, _ in series}
    workers = max(1, min(args.workers, len(series)))
    pool = None
    if workers > 1:
        # Each worker process gets the shared global models once, not with every series.
        pool = ProcessPoolExecutor(workers, initializer=install_shared, initargs=(shared_texts,))
    mapper = pool.map if pool is not None else map
    try:
        pooled, first = {}, {}
        if not getattr(args, "no_pooled", False):
            # Pass 1: every series' backtests, reduced to the dataset-level choice per cut.
            tasks1 = [(sid, h, specs[sid], horizon, args.folds) for sid, h in series]
            first = {r["series_id"]: r for r in mapper(_backtest_one, tasks1)}
            pooled, extra["pooled_choice"] = pooled_choices(first.values())
        tasks = [
            (sid, h, specs[sid], horizon, args.folds, pooled, first.get(sid)) for sid, h in series
        ]
        results = list(mapper(_evaluate_one, tasks))
    finally:
        if pool is not None:
            pool.shutdown()
    if args.dump:
        import pickle

        with open(args.dump, "wb") as f:
            pickle.dump(results, f)
    long_history = 365 if cfg.frequency == "daily" else 104
    methods = [AUTO_LABEL, *([AUTO_LOCAL] if GLOBAL_FAMILY in candidates else []), *candidates]
    if spec.regressors:
        methods.append(LEAST_SQUARES)
    report = {
        "config": cfg.name,
        "frequency": cfg.frequency,
        "horizon": horizon,
        "outer_folds": args.folds,
        "selection": {
            "metric": spec.metric,
            "folds": spec.folds,
            "fold_length": spec.fold_length or spec.holdout,
            "tie_tolerance": spec.tie_tolerance,
            "default": spec.fallback,
            "candidates": list(spec.candidates),
            "pooled": not getattr(args, "no_pooled", False),
            "prior_margin": spec.prior_margin,
            "combine": spec.combine,
        },
        "interval_coverage_nominal": spec.interval_coverage,
        **summarize(results, methods, spec.interval_coverage, long_history),
        "auto_vs": compare_auto(results, [m for m in methods if m != AUTO_LABEL]),
        **extra,
    }
    ok = [r for r in results if r["status"] == "ok"]
    report["evaluate_cpu_seconds_per_series"] = _r(np.mean([r["cpu_seconds"] for r in ok])) if ok else None
    if args.cost_sample:
        sample = [s for s in series if check_series(s[1], spec) is None][: args.cost_sample]
        if sample:
            # Training's auto (without the global family, whose shared models training cannot fit yet).
            local = TrainSpec(**{**spec.__dict__, "candidates": tuple(f for f in spec.candidates if f != GLOBAL_FAMILY)})
            newest = (pooled or {}).get(0, {}).get("local", ())
            report["train_cpu_seconds_per_series"] = measure_cost(
                sample, local, args.cost_families.split(","), newest
            )
            report["train_cost_sample"] = len(sample)
    report["wall_seconds"] = round(time.time() - started, 1)
    return report


def _print_table(report: dict) -> None:
    cols = ["wape", "mase", "median_mape", "interval_coverage", "share_beating_seasonal_naive"]
    print(f"{'method':<16}" + "".join(f"{c:>30}" for c in cols))
    for method, m in report["methods"].items():
        print(f"{method:<16}" + "".join(f"{str(m.get(c)):>30}" for c in cols))
    print("auto mix:", report["methods"][AUTO_LABEL].get("mix"))
    if AUTO_LOCAL in report["methods"]:
        print("auto_local mix:", report["methods"][AUTO_LOCAL].get("mix"))
    for method, c in report.get("auto_vs", {}).items():
        print(f"auto WAPE / {method} WAPE: {c['wape_ratio']} (90% bootstrap over series: {c['ci90']})")


def cmd_evaluate(args) -> int:
    report = run(args)
    if args.json:
        print(json.dumps(report, default=lambda o: dict(o) if isinstance(o, Counter) else str(o)))
    else:
        _print_table(report)
    return 0


def add_commands(subparsers) -> None:
    e = subparsers.add_parser(
        "evaluate", help="backtest auto and every model family on the data; print accuracy"
    )
    e.add_argument(
        "--config", help="dataset config YAML (default: $MM_CONFIG or the packaged retail example)"
    )
    e.add_argument(
        "--families", help="comma-separated families to compare (default: the config's auto candidates)"
    )
    e.add_argument("--series", type=int, help="evaluate the first N series only")
    e.add_argument(
        "--folds", type=int, default=1, help="outer test windows of `horizon` periods per series (default 1)"
    )
    e.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (default 2)")
    e.add_argument(
        "--cost-sample", type=int, default=0, help="also time train_series (CPU s/series) on N series"
    )
    e.add_argument("--cost-families", default="prophet", help="families timed beside auto (default prophet)")
    e.add_argument(
        "--no-global", action="store_true",
        help="leave the global LightGBM family out of the default candidates",
    )
    e.add_argument("--global-by", help="fit one global model per value of this key column (default: one for all)")
    e.add_argument(
        "--no-pooled", action="store_true",
        help="auto chooses per series alone (no dataset-level choice from every series' backtest)",
    )
    e.add_argument(
        "--prior-margin", type=float, default=1.0,
        help="a series leaves the dataset-level choice only if one family's backtest beats it by this (relative; "
        "default 1: never)",
    )
    e.add_argument(
        "--combine", type=int, default=3, help="largest number of families auto may average (default 3)"
    )
    e.add_argument("--dump", help=argparse.SUPPRESS)  # pickle of the per-series results (analysis)
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_evaluate)


if __name__ == "__main__":  # pragma: no cover
    from mm_platform.cli import main

    sys.exit(main(["evaluate", *sys.argv[1:]]))
