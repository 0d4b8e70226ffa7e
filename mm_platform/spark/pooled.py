"""The pooled choice of ``algorithm: auto`` in Spark training (stage 1 of two).

Stage 1 (``pooled_prior``): Spark tasks backtest every candidate on a deterministic sample
of the run's series (the same folds per-series training uses, before each series'
holdout) and reduce each series' backtest to ``series.backtest_summary`` sums; a task adds
its series' sums up and only those sums (a few hundred numbers per task) come back to the
driver, which adds the tasks' totals and picks ``series.pooled_choice``. Stage 2 is the usual
per-series training with ``TrainSpec.prior`` = that choice (``spark.global_train.train_with_shared``).

Sample: up to ``algorithm.auto.pooled_sample`` series, those with the smallest sha256 of their series id.
The same series are drawn every run (the choice changes only when their data do) and
the cost of stage 1 is bounded whatever the dataset's size (at 1,000 series it is a fifth of
the backtests training runs anyway); the evaluation used 77-100 series per dataset and the
choice was stable across its seeds. Stage 1 does not reuse per-series training's backtests
(``external=``): passing fold forecasts from stage 1 to stage 2 would mean storing or
shipping them per series, for a fifth of the series only.

Reuse across runs: stage 2 stores each series' summary in its artifact
(``TrainSpec.keep_summary``, ``series.summary_record``: its sums, its data fingerprint and the
``summary_key`` of the backtest settings). In a later run, a sampled series whose registered
model has the fingerprint its data have now (``known``) gets its summary from that model's
artifact (``previous``: URI and sha256, read and verified in the task) instead of a new
backtest, if the summary was stored for the same fingerprint and key. Only changed, new or
otherwise unmatched sampled series are backtested: a daily retrain pays for those, plus
reading the buckets and the sampled series' artifacts. A reused summary is the bytes of the
recomputed one (same backtest, floats stored exactly), so the choice is the same. With the
global family among the candidates the key holds its group's shared models' sha256s: as those
are refitted on every run, a changed series changes its group's models and no summary of that
group is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging

import pandas as pd

from mm_platform.forecasting.series import TrainSpec


def sample_size(cfg) -> int:
    """``algorithm.auto.pooled_sample`` (0: no pooled stage, each series chooses alone as before)."""
    return cfg.algorithm.auto.pooled_sample
SUMMARY_SCHEMA = "total string, series long, reused long, error string, records string"
log = logging.getLogger(__name__)


def sample_series(series_ids, n: int) -> list[str]:
    """Up to ``n`` series ids: those with the smallest sha256 (deterministic, independent of order)."""
    ids = sorted({str(s) for s in series_ids}, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    return sorted(ids[:n])


def series_summary(pdf: pd.DataFrame, spec: TrainSpec) -> dict | None:
    """One series' ``backtest_summary`` over the folds before its holdout, as
    ``fit_candidates`` backtests it (None: the series is not trained, or too short to backtest)."""
    return series_summary_record(pdf, spec)[0]


def series_summary_record(pdf: pd.DataFrame, spec: TrainSpec) -> tuple[dict | None, dict | None]:
    """``series_summary`` and the same as the record per-series training stores
    (``series.summary_record``): stage 2 stores it as is instead of backtesting every candidate
    again."""
    from mm_platform.forecasting.series import (
        backtest_summary,
        check_series,
        regularize,
        run_backtest,
        summary_record,
        time_limit,
    )

    history = pdf[["ds", "y", *spec.regressors]].copy()
    history["ds"] = pd.to_datetime(history["ds"])
    if check_series(history, spec) is not None:
        return None, None
    history = regularize(history.sort_values("ds"), spec.freq, spec.regressors)
    candidates = tuple(dict.fromkeys(spec.candidates))
    with time_limit(spec.fit_timeout_seconds):  # as training's limit: a series that hangs is left out
        bt = run_backtest(history.iloc[: -spec.holdout], spec, candidates, spec.folds)
    summary = backtest_summary(bt, candidates, spec.combine) or None
    return summary, summary_record(bt, spec, data_fingerprint(pdf, spec.regressors))


def _add_totals(total: dict, other: dict) -> dict:
    """``total`` += ``other``, both ``add_summaries`` totals (sums and series counts)."""
    for k, (e, a, n) in other.items():
        te, ta, tn = total.get(k, (0.0, 0.0, 0))
        total[k] = (te + e, ta + a, tn + n)
    return total


def data_fingerprint(pdf: pd.DataFrame, regressors: tuple[str, ...]) -> str:
    """``spark.train.series_fingerprint`` (what training records), without its copy, date
    parsing and sort when the rows are already in strictly increasing date order, as both
    stage-1 paths hand them: at 200 series that was half of a retrain's stage-1 CPU."""
    import numpy as np

    from mm_platform.forecasting.series import fingerprint
    from mm_platform.spark.train import series_fingerprint

    ds = pdf["ds"].to_numpy()
    if len(ds) and np.issubdtype(ds.dtype, np.datetime64) and bool((ds[1:] > ds[:-1]).all()):
        return fingerprint(pdf, ["ds", "y", *regressors])
    return series_fingerprint(pdf, regressors)


def stored_summary(pdf: pd.DataFrame, spec: TrainSpec, known: dict[str, str], previous: dict[str, tuple[str, str]]) -> dict | None:
    """The summary stored in the series' registered model (empty: too short to backtest), or
    None when it must be backtested: no registered model, data changed since (``known``: its
    fingerprint), the artifact cannot be read or fails its sha256, or its summary was stored
    for other data or backtest settings (``series.summary_from_record``)."""
    from mm_platform.forecasting.series import summary_from_record
    from mm_platform.spark.train import read_previous_model

    sid = str(pdf["series_id"].iloc[0])
    if sid not in known or not previous.get(sid):
        return None
    fp = data_fingerprint(pdf, spec.regressors)
    if fp != known[sid]:  # changed: not worth reading the artifact
        return None
    artifact = read_previous_model(previous[sid])
    record = ((artifact or {}).get("selection") or {}).get("pooled_summary")
    return summary_from_record(record, spec, fp)


def _summarize_fn(spec: TrainSpec, keys: list[str], shared=None, known=None, previous=None):
    """Rows of series -> one JSON total (``add_summaries``) of their summaries, the number of
    series summarized and how many of them came from stored summaries (``stored_summary``)."""
    from dataclasses import replace

    known, previous = known or {}, previous or {}

    def summarize(groups) -> tuple[dict, int, int, str | None, dict]:
        from mm_platform.forecasting.series import add_summaries

        total: dict = {}
        records: dict = {}  # series id -> the record of a summary computed here
        n, reused, error = 0, 0, None
        for pdf in groups:
            s = spec
            if shared is not None:
                from mm_platform.forecasting.global_lgbm import FAMILY as GLOBAL

                s = replace(spec, options={**(spec.options or {}), GLOBAL: shared.options(pdf, keys)})
            try:
                summary = stored_summary(pdf, s, known, previous)
                if summary is not None:
                    reused += bool(summary)
                else:
                    summary, record = series_summary_record(pdf, s)
                    if record is not None:
                        records[str(pdf["series_id"].iloc[0])] = record
            except Exception as exc:  # noqa: BLE001 - a series that cannot be backtested is left out
                error = f"{type(exc).__name__}: {exc}"[:300]
                continue
            if summary:
                add_summaries(total, summary)
                n += 1
        return total, n, reused, error, records

    return summarize


def _row(total: dict, n: int, reused: int, error: str | None, records: dict | None = None) -> pd.DataFrame:
    return pd.DataFrame([{"total": json.dumps({k: list(v) for k, v in total.items()}), "series": n,
                          "reused": reused, "error": error, "records": json.dumps(records or {})}])


def _split(pdf: pd.DataFrame):
    import numpy as np

    sid = pdf["series_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    ends = np.r_[starts[1:], len(sid)]
    for a, b in zip(starts, ends, strict=True):
        yield pdf.iloc[a:b]


def summaries_from_buckets(spark, buckets: list[str], spec: TrainSpec, keys: list[str], sample: list[str], shared=None,
                           known=None, previous=None) -> list[dict]:
    """Stage 1 on a bucketed training set: each task reads whole bucket folders (as training
    tasks do), keeps the sampled series and returns one row: the JSON total of their sums."""
    from mm_platform.spark.session import task_count

    only = frozenset(sample)
    summarize = _summarize_fn(spec, keys, shared, known, previous)

    def run(batches):
        from mm_platform.spark.train import _read_bucket

        installed = []
        try:
            if shared is not None:
                from mm_platform.forecasting.global_lgbm import install_shared_texts

                installed = install_shared_texts(shared.texts)

            def groups():
                for batch in batches:
                    for i in batch["id"]:
                        pdf = _read_bucket(buckets[int(i)])
                        pdf = pdf[pdf["series_id"].isin(only)].reset_index(drop=True)
                        if len(pdf):
                            yield from _split(pdf)

            yield _row(*summarize(groups()))
        except Exception as exc:  # noqa: BLE001 - e.g. no credential on this executor: one line for the driver
            yield _row({}, 0, 0, f"{type(exc).__name__}: {exc}"[:300])
        finally:
            if installed:
                from mm_platform.forecasting.global_lgbm import forget_shared

                forget_shared(installed)

    n_tasks = task_count(spark, len(buckets), 0)  # one task per core: the sample is small
    return [r.asDict() for r in spark.range(0, len(buckets), 1, n_tasks).mapInPandas(run, SUMMARY_SCHEMA).collect()]


def summaries_grouped(training_set, spec: TrainSpec, keys: list[str], sample: list[str], shared=None,
                      known=None, previous=None) -> list[dict]:
    """Stage 1 on any training-set DataFrame: the sampled series grouped by series
    (``applyInPandas``), one row of sums per series."""
    from pyspark.sql import functions as F

    summarize = _summarize_fn(spec, keys, shared, known, previous)
    installed = []

    def one(pdf: pd.DataFrame) -> pd.DataFrame:
        if shared is not None and not installed:
            from mm_platform.forecasting.global_lgbm import install_shared_texts

            installed.extend(install_shared_texts(shared.texts, replace=True))
        return _row(*summarize([pdf.sort_values("ds", kind="stable")]))

    data = training_set.where(F.col("series_id").isin(list(sample)))
    return [r.asDict() for r in data.groupBy(*keys, "series_id").applyInPandas(one, SUMMARY_SCHEMA).collect()]


def pooled_totals(spark, store, cfg, run_date, spec: TrainSpec, shared=None, n: int | None = None,
                  known: dict[str, str] | None = None, previous: dict[str, tuple[str, str]] | None = None,
                  ) -> tuple[dict, list[dict], int]:
    """Stage 1's reduction: the ``add_summaries`` totals of the sampled series, the tasks' rows
    and the sample's size. ``known`` / ``previous``: the registered models' fingerprints and
    (artifact URI, sha256) by series id, as per-series training gets them: stored summaries of
    unchanged series are reused (``stored_summary``)."""
    from mm_platform.stores.training_sets import FsspecTrainingSets

    sample = sample_series(store.series(run_date)["series_id"], sample_size(cfg) if n is None else n)
    if not sample:
        return {}, [], 0
    keys = list(cfg.keys)
    # Only the sampled series' entries travel with the tasks.
    known = {s: known[s] for s in sample if s in known} if known else {}
    previous = {s: previous[s] for s in sample if s in previous} if previous else {}
    if type(store).train is FsspecTrainingSets.train:
        buckets = sorted({store.lake.uri_of(f.rsplit("/", 1)[0]) for f, _ in store._bucket_files(run_date)})
        rows = summaries_from_buckets(spark, buckets, spec, keys, sample, shared, known, previous)
    else:
        rows = summaries_grouped(store.dataframe(spark, run_date), spec, keys, sample, shared, known, previous)
    total: dict = {}
    for r in rows:
        _add_totals(total, {k: tuple(v) for k, v in json.loads(r["total"] or "{}").items()})
    return total, rows, len(sample)


def pooled_prior(spark, store, cfg, run_date, spec: TrainSpec, shared=None, n: int | None = None,
                 known: dict[str, str] | None = None, previous: dict[str, tuple[str, str]] | None = None,
                 ) -> tuple[tuple[str, ...], dict]:
    """Stage 1: the dataset-level choice of the run date's training set (``()`` when no
    sampled series could be backtested: each series then chooses alone) and a JSON-able summary.
    ``known`` / ``previous``: see ``pooled_totals``."""
    import time

    from mm_platform.forecasting.series import combo_name, pooled_choice

    started = time.perf_counter()
    total, rows, sampled = pooled_totals(spark, store, cfg, run_date, spec, shared, n, known, previous)
    if not sampled:
        return (), {"series_sampled": 0}
    choice = pooled_choice(total)
    name = combo_name(choice) if choice else None
    e, a, _ = total.get(name, (float("nan"), float("nan"), 0)) if name else (float("nan"),) * 2 + (0,)
    errors = [r["error"] for r in rows if r.get("error")]
    summary = {
        "choice": name,
        "backtest_wape": round(e / a, 6) if a else None,
        "series_sampled": sampled,
        "series_backtested": int(sum(r["series"] or 0 for r in rows)),
        "series_reused": int(sum(r["reused"] or 0 for r in rows)),
        "errors": errors[:3],
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    log.info("auto's pooled choice for %s %s: %s", cfg.name, run_date, summary)
    # The sampled series' freshly computed summaries (series id -> summary record, a KB each):
    # per-series training stores them instead of backtesting every candidate again.
    summary["records"] = {k: v for r in rows for k, v in json.loads(r.get("records") or "{}").items()}
    return choice, summary
