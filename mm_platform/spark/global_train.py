"""Training the global family (``global_lgbm``, alone or as a candidate of ``auto``) in Spark,
without moving data rows through the driver.

Two Spark stages:

1. **Shared models, one task per group** (``fit_shared_models``): the run date's training set
   is grouped by the configured key (``algorithm.global_lgbm.group_by``; none: one group) with
   ``groupBy(...).applyInPandas``; the task of a group checks and regularizes each series as
   per-series training does, builds its lag/calendar/regressor features in numpy and fits one
   LightGBM model per *origin* on the rows up to it. Only the models' texts (a few hundred KB
   each) come back to the driver.
2. **Per-series training** (``spark.train.train_buckets``, as for every family): the tasks get
   the group's shared models with the job (installed once per task) and ``train_series`` runs
   unchanged: the global family's per-series ``fit`` takes the newest shared model fitted up to
   the end of the data it is given (never a later one: backtest and holdout scores do not see
   their own test data).

Origins: the final refit (the group's last date), the holdout fit (``holdout`` periods earlier)
and, when backtest folds run (``auto``, or conformal calibration folds), the earliest fold's
origin, which the later folds share: 1 to 3 LightGBM fits per group and run, where a model per
fold would cost ``folds`` more (a fold's forecast then comes from a model up to
``folds - 1`` fold lengths older than its origin: somewhat pessimistic for the global family's
backtest score, never optimistic). The final refit is left out when the holdout is a small
share of a series' training rows (``STALE_SHARE``: daily data); the series' final models then
refer to the holdout fit's model. One task builds each series' arrays once for all origins.

Limits: a group's rows (one double per value and column) and its feature matrix (about 30
doubles per row, at most ``FeatureSpec.max_train`` rows per series) must fit in one Python
worker's memory, and one task fits a group's models one after the other (one LightGBM
thread): a dataset of many thousands of long series wants ``group_by`` (as many tasks as
groups). A series whose data end more than ``holdout`` periods before its group's last date
has no shared model for its holdout fit (it fails, or ``auto`` drops the global candidate).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import date

import pandas as pd

from mm_platform.config import DatasetConfig
from mm_platform.forecasting.global_lgbm import FAMILY as GLOBAL
from mm_platform.forecasting.series import AUTO, TrainSpec

SHARED_SCHEMA = (
    "grp string, origin string, offset long, model string, n_series long, n_rows long, cpu_seconds double, error string"
)
_GROUP_COL = "_mm_global_group"
log = logging.getLogger(__name__)


def uses_global(cfg: DatasetConfig) -> bool:
    a = cfg.algorithm
    return a.name == GLOBAL or (a.name == AUTO and GLOBAL in a.auto.candidates)


# The final refit is skipped when the holdout is at most this share of the rows a series
# trains on: the holdout fit (one shared model fewer) then serves, and its booster misses
# only that share of recent rows (the per-series part always has them). Measured on
# evaluation data (docs/forecast-quality.md, 2026-12-03): daily, 28 of 730 rows (3.8%), WAPE
# the same (-0.7%, +0.2% on two seeds); weekly, 13 of about 100 rows, 4-8% worse: refitted.
STALE_SHARE = 0.05


def origin_offsets(spec: TrainSpec, train_rows: int | None = None) -> list[int]:
    """Periods before a group's last date at which shared models are fitted (see the module
    docstring). ``train_rows``: the rows a typical series of the group trains on (when known,
    the final refit is left out if the holdout is at most ``STALE_SHARE`` of them)."""
    offsets = [0, spec.holdout]
    if train_rows and spec.holdout <= STALE_SHARE * train_rows:
        offsets = [spec.holdout]
    folds = spec.backtest_folds if (spec.family == AUTO or spec.interval_method == "conformal") else 0
    if folds:
        offsets.append(spec.holdout + folds * (spec.fold_length or spec.holdout))
    return offsets


@dataclass
class SharedSetup:
    """What the per-series tasks need: every shared model's text, each group's models by
    origin, and where the final ones are stored."""

    group_by: str | None
    texts: list[str] = field(default_factory=list)
    models: dict[str, dict[str, str]] = field(default_factory=dict)  # group -> {origin: sha256}
    uris: dict[str, str] = field(default_factory=dict)  # sha256 -> stored artifact URI
    summary: dict = field(default_factory=dict)

    def options(self, pdf: pd.DataFrame, keys: list[str]) -> dict:
        """The global family's per-series options of one series' rows."""
        group = str(pdf[self.group_by].iloc[0]) if self.group_by else ""
        return {"models": self.models.get(group, {}), "uris": self.uris,
                "keys": {k: str(pdf[k].iloc[0]) for k in keys}}


def _fit_group_fn(spec: TrainSpec, keys: list[str], categories: dict[str, list[str]]):
    def fit(pdf: pd.DataFrame) -> pd.DataFrame:
        import numpy as np

        from mm_platform.forecasting.global_lgbm import FeatureSpec, fit_global_origins
        from mm_platform.forecasting.series import check_series, regularize

        group = str(pdf[_GROUP_COL].iloc[0])
        rows = []
        try:
            fspec = FeatureSpec.default(spec.freq, spec.regressors, tuple(keys), categories=categories)
            pdf = pdf.sort_values(["series_id", "ds"], kind="stable")
            series = []
            for _, g in pdf.groupby("series_id", sort=False):
                h = g[["ds", "y", *spec.regressors]].copy()
                h["ds"] = pd.to_datetime(h["ds"], cache=False)  # as train_series
                if check_series(h, spec) is not None:  # as per-series training: not trained
                    continue
                d = h["ds"].to_numpy().astype("datetime64[D]")
                if len(d) > 1 and (np.diff(d) == np.timedelta64(7 if spec.freq == "W" else 1, "D")).all():
                    h = h.reset_index(drop=True)  # sorted and regular: what regularize returns, without its cost
                else:
                    h = regularize(h, spec.freq, spec.regressors)
                series.append(({k: str(g[k].iloc[0]) for k in keys}, h))
            if not series:
                return pd.DataFrame([{"grp": group, "error": "no trainable series"}])
            last = max(h["ds"].iloc[-1] for _, h in series)
            step = pd.Timedelta(days=7 if spec.freq == "W" else 1)
            train_rows = int(np.median([min(len(h) - spec.holdout, fspec.max_train) for _, h in series]))
            offsets = origin_offsets(spec, train_rows)
            origins = [(last - off * step).date() for off in offsets]
            t0 = time.process_time()
            models = fit_global_origins(series, fspec, origins)
            cpu = (time.process_time() - t0) / len(origins)
            for off, origin, model in zip(offsets, origins, models, strict=True):
                if model is None:  # no rows before this origin
                    continue
                rows.append({"grp": group, "origin": str(origin), "offset": off, "model": model.to_json(),
                             "n_series": model.n_series, "n_rows": model.n_rows,
                             "cpu_seconds": cpu, "error": None})
        except Exception as exc:  # noqa: BLE001 - reported in the driver as one line
            return pd.DataFrame([{"grp": group, "error": f"{type(exc).__name__}: {exc}"[:500]}])
        return pd.DataFrame(rows, columns=["grp", "origin", "offset", "model", "n_series", "n_rows", "cpu_seconds", "error"])

    return fit


def fit_shared_models(spark, training_set, cfg: DatasetConfig, spec: TrainSpec, categories: dict[str, list[str]]) -> list[dict]:
    """Stage 1: one task per group fits the group's shared models; their rows (group,
    origin, offset, model JSON, series, rows, CPU seconds, error)."""
    from pyspark.sql import functions as F

    group_by = cfg.algorithm.global_lgbm.group_by
    df = training_set.withColumn(_GROUP_COL, F.col(group_by).cast("string") if group_by else F.lit(""))
    fn = _fit_group_fn(spec, list(cfg.keys), categories)
    return [r.asDict() for r in df.groupBy(_GROUP_COL).applyInPandas(fn, SHARED_SCHEMA).collect()]


def fit_shared_from_buckets(spark, buckets: list[str], cfg: DatasetConfig, spec: TrainSpec,
                            categories: dict[str, list[str]]) -> list[dict]:
    """Stage 1 without a group key on a bucketed training set: one task reads every bucket
    folder itself (as training tasks do) and fits the single group's models. No JVM scan or
    shuffle of the rows (at 1,000 x 1,000 that was about 6 core-s)."""
    fit = _fit_group_fn(spec, list(cfg.keys), categories)

    def run(batches):
        from mm_platform.spark.train import _read_bucket

        for _ in batches:  # one task, one id
            pass
        pdf = pd.concat([_read_bucket(b) for b in buckets], ignore_index=True)
        yield fit(pdf.assign(**{_GROUP_COL: ""}))

    return [r.asDict() for r in spark.range(0, 1, 1, 1).mapInPandas(run, SHARED_SCHEMA).collect()]


def categories_of(series: pd.DataFrame, keys: list[str]) -> dict[str, list[str]]:
    """Each key's known values (their category codes are the positions), from the set's series list."""
    return {k: sorted({str(v) for v in series[k]}) for k in keys}


def prepare_shared(spark, store, cfg: DatasetConfig, run_date: date, registry, spec: TrainSpec, run_id: str = "") -> SharedSetup:
    """Fit the run's shared models in Spark and store the final ones (one artifact per group,
    sha256-named) in the training registry's artifact store, once per training run."""
    from mm_platform.core.errors import UserError
    from mm_platform.stores.training_sets import FsspecTrainingSets

    started = time.perf_counter()
    categories = categories_of(store.series(run_date), list(cfg.keys))
    if cfg.algorithm.global_lgbm.group_by is None and type(store).train is FsspecTrainingSets.train:
        buckets = sorted({store.lake.uri_of(f.rsplit("/", 1)[0]) for f, _ in store._bucket_files(run_date)})
        rows = fit_shared_from_buckets(spark, buckets, cfg, spec, categories)
    else:
        rows = fit_shared_models(spark, store.dataframe(spark, run_date), cfg, spec, categories)
    errors = [r for r in rows if r.get("error")]
    good = [r for r in rows if not r.get("error")]
    if errors and not good:
        raise UserError(f"the global family's shared model could not be fitted: group {errors[0]['grp']!r}: {errors[0]['error']}")
    import hashlib

    setup = SharedSetup(cfg.algorithm.global_lgbm.group_by)
    newest = {}  # group -> its newest model: the one series' final models refer to
    for r in good:
        sha = hashlib.sha256(r["model"].encode()).hexdigest()
        setup.texts.append(r["model"])
        setup.models.setdefault(r["grp"], {})[r["origin"]] = sha
        if r["grp"] not in newest or r["offset"] < newest[r["grp"]]["offset"]:
            newest[r["grp"]] = r
    final = [r["model"] for r in newest.values()]
    setup.uris = registry.store_shared(final, run_name=f"{cfg.name}-global-{run_date}",
                                       run_tags={"run_date": str(run_date), "dagster_run_id": run_id, "family": GLOBAL})
    setup.summary = {
        "groups": len({r["grp"] for r in good}),
        "groups_failed": {r["grp"]: r["error"] for r in errors},
        "models": len(good),
        "stored": len(setup.uris),
        "fit_cpu_seconds": round(sum(r["cpu_seconds"] or 0.0 for r in good), 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    log.info("global_lgbm shared models for %s %s: %s", cfg.name, run_date, setup.summary)
    return setup


def train_with_shared(spark, store, cfg: DatasetConfig, run_date: date, registry, run_id: str = "",
                      known=None, previous=None, only_series=None, artifacts=None) -> pd.DataFrame:
    """The model set's per-series results; with the global family among the families, its
    shared models are fitted and stored first, then every series trains as usual with them.
    With ``algorithm: auto`` the dataset-level choice is made before per-series training
    (``spark.pooled``: backtest sums of a sample of series, reduced in the driver) and every
    series trains with it as ``TrainSpec.prior``. Other configs: exactly ``store.train``.
    ``artifacts``: where the per-series tasks write their models (``store.train``)."""
    from mm_platform.spark.pooled import sample_size

    pooled = cfg.algorithm.name == AUTO and sample_size(cfg) > 0
    if not uses_global(cfg) and not pooled:
        return store.train(spark, run_date, known=known, previous=previous, only_series=only_series, artifacts=artifacts)
    from mm_platform.spark.train import train_spec

    spec = train_spec(cfg)
    setup = prepare_shared(spark, store, cfg, run_date, registry, spec, run_id) if uses_global(cfg) else None
    if pooled:
        from mm_platform.spark.pooled import pooled_prior, sample_series, sample_size

        # Computed every run, over the run date's data: a series refitted later (changed
        # data, incremental retraining) gets the current choice; unchanged ones keep their model.
        choice, info = pooled_prior(spark, store, cfg, run_date, spec, shared=setup, known=known, previous=previous)
        # The sampled series store the summaries stage 1 just computed, for the next run's
        # stage 1; every series backtests only the choice (TrainSpec.prior_only).
        sample = frozenset(sample_series(store.series(run_date)["series_id"], sample_size(cfg)))
        spec = replace(spec, prior=choice, keep_summary=True, prior_only=True, pooled_sample=sample,
                       summaries=info.get("records", {}))
    return store.train(spark, run_date, known=known, previous=previous, only_series=only_series, spec=spec, shared=setup,
                       artifacts=artifacts)
