"""The distributed backends of training: Spark tasks that hand each series to the pure
per-series loop (``mm_platform.forecasting.series.train_series``) and collect one result row
per series. Two ways in, chosen by the training-set store: whole bucket folders read by
each task (``train_buckets``), or any Spark DataFrame grouped by series (``train_grouped``)."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from mm_platform.config import DatasetConfig
from mm_platform.core.vocabulary import METRICS, TRAINED, UNCHANGED, model_name
from mm_platform.forecasting.series import TrainSpec, train_series
from mm_platform.spark.session import balanced_shares, task_count

RESULT_FIELDS = [
    ("series_id", T.StringType()),
    ("status", T.StringType()),
    ("reason", T.StringType()),
    ("n_obs", T.LongType()),
    ("last_date", T.StringType()),
    ("fingerprint", T.StringType()),
    *[(m, T.DoubleType()) for m in METRICS],
    ("fit_seconds", T.DoubleType()),
    # The model: its JSON, or (``artifacts`` given) where its task wrote it, its sha256 and its
    # selection record (the registry's tags), so that no model travels to the driver.
    ("model_json", T.StringType()),
    ("model_source", T.StringType()),
    ("model_sha256", T.StringType()),
    ("model_selection", T.StringType()),
]
# The result columns that carry the model (not the training report's).
MODEL_COLUMNS = ["model_json", "model_source", "model_sha256", "model_selection"]


# The status of a row a training task returns instead of results when it cannot read its
# buckets (a user error: missing fsspec package or credential); never stored.
TASK_ERROR = "task_error"


def train_spec(cfg: DatasetConfig, family: str | None = None) -> TrainSpec:
    auto = cfg.algorithm.auto
    return TrainSpec(
        family=family or cfg.algorithm.name,
        freq=cfg.pandas_freq,
        season_length=cfg.season_length,
        holdout=cfg.holdout,
        min_history=cfg.min_history,
        regressors=tuple(cfg.columns.regressors),
        prophet=cfg.algorithm.prophet.model_dump(exclude={"regressor_prior_scale"})
        | {"regressor_prior_scale": cfg.algorithm.prophet.regressor_prior_scale},
        interval_coverage=cfg.algorithm.interval_coverage,
        fit_timeout_seconds=cfg.training.fit_timeout_seconds,
        candidates=tuple(auto.candidates),
        folds=auto.folds,
        calibration_folds=cfg.algorithm.calibration_folds,
        fold_length=auto.fold_length or 0,
        metric=auto.metric,
        tie_tolerance=auto.tie_tolerance,
        fallback=auto.fallback,
        interval_method=cfg.algorithm.interval_method,
        max_horizon=cfg.horizon,
        options={"ensemble": list(auto.ensemble), "regression": cfg.algorithm.regression.model_dump()},
    )


def series_fingerprint(pdf: pd.DataFrame, regressors: tuple[str, ...]) -> str:
    """The same data fingerprint train_series records, without training."""
    from mm_platform.forecasting.series import fingerprint

    history = pdf[["ds", "y", *regressors]].copy()
    history["ds"] = pd.to_datetime(history["ds"])
    return fingerprint(history.sort_values("ds"), ["ds", "y", *regressors]) if len(history) else ""


def read_previous_model(ref: tuple[str, str] | None) -> dict | None:
    """The artifact ``(source URI, sha256)`` of a series' registered model, read in a Spark
    worker to warm-start its refit; None when it cannot be read or does not match its sha256
    (the fit then starts cold)."""
    if not ref:
        return None
    from mm_platform.stores.artifacts import read_verified

    try:
        return json.loads(read_verified(*ref))
    except Exception:  # noqa: BLE001 - a cold start is always possible
        return None


class ModelArtifacts:
    """A model set's run folder (``stores.artifacts.TaskArtifacts``) with the dataset's name:
    a task writes each trained model there under its registered model's name."""

    def __init__(self, dataset: str, folder):
        self.dataset, self.folder = dataset, folder

    def write(self, keys: dict, data: bytes):
        return self.folder.write(model_name(self.dataset, {k: _plain(v) for k, v in keys.items()}), data)


def _plain(v):
    """A key as the driver sees it after Arrow (a Python scalar, not numpy's)."""
    return v.item() if hasattr(v, "item") else v


def _train_row_fn(
    spec: TrainSpec, keys: list[str], known: dict[str, str] | None = None, previous: dict[str, tuple[str, str]] | None = None,
    shared=None, artifacts: ModelArtifacts | None = None,
):
    """One series' result row. ``known`` maps series id -> fingerprint of its registered model: a series whose data
    has not changed is not refitted (daily incremental retraining). ``previous`` maps series
    id -> (artifact URI, sha256) of that model: a changed series' fit is warm-started from it.
    ``shared`` (``spark.global_train.SharedSetup``): the global family's shared models, whose
    per-series options each series' fit gets (the models are installed by the caller).
    ``artifacts``: where the task writes each trained model (the row then carries its reference)."""
    known = known or {}
    previous = previous or {}
    none = dict.fromkeys(MODEL_COLUMNS, "")

    def train_row(pdf: pd.DataFrame) -> dict:
        sid = pdf["series_id"].iloc[0]
        if sid in known and series_fingerprint(pdf, spec.regressors) == known[sid]:
            row = {k: pdf[k].iloc[0] for k in keys}
            row |= {"series_id": sid, "status": UNCHANGED, "reason": "data unchanged since the registered model",
                    "n_obs": int(pdf["y"].notna().sum()), "last_date": str(pd.to_datetime(pdf["ds"]).max().date()),
                    "fingerprint": known[sid], **dict.fromkeys(METRICS), "fit_seconds": 0.0, **none}
            return row
        s = spec
        if spec.prior_only and sid in spec.pooled_sample:
            # A pooled-sample series keeps its summary for the next run's pooled stage: the one
            # the pooled stage just computed, or (none: it reused an older one, or failed) it
            # backtests every candidate again. The others backtest only the dataset choice.
            record = spec.summaries.get(sid)
            s = replace(s, summary_to_store=record) if record is not None else replace(s, prior_only=False)
        elif spec.prior_only:
            s = replace(s, keep_summary=False)
        if shared is not None:
            from mm_platform.forecasting.global_lgbm import FAMILY as GLOBAL

            s = replace(s, options={**(s.options or {}), GLOBAL: shared.options(pdf, keys)})
        r = train_series(pdf, s, previous=read_previous_model(previous.get(sid)))
        row = {k: pdf[k].iloc[0] for k in keys}
        row |= {
            "series_id": pdf["series_id"].iloc[0],
            "status": r.status,
            "reason": r.reason,
            "n_obs": r.n_obs,
            "last_date": r.last_date,
            "fingerprint": r.fingerprint,
            **{m: r.metrics.get(m) for m in METRICS},
            "fit_seconds": r.fit_seconds,
            **none,
        }
        if artifacts is not None and r.status == TRAINED and r.model is not None:
            stored = artifacts.write({k: row[k] for k in keys}, r.model_json().encode())
            selection = r.model.get("selection")
            row |= {"model_source": stored.source, "model_sha256": stored.sha256,
                    "model_selection": json.dumps({"selection": selection}, separators=(",", ":")) if selection else ""}
        else:
            row["model_json"] = r.model_json()
        return row

    return train_row


def _train_group_fn(
    spec: TrainSpec, keys: list[str], known: dict[str, str] | None = None, previous: dict[str, tuple[str, str]] | None = None,
    shared=None, artifacts: ModelArtifacts | None = None,
):
    """One series' result row as a DataFrame (``applyInPandas``)."""
    train_row = _train_row_fn(spec, keys, known, previous, shared, artifacts)
    installed = []

    def train_group(pdf):
        if shared is not None and not installed:
            # Once per task; replaces the models an earlier task left in this reused worker.
            from mm_platform.forecasting.global_lgbm import install_shared_texts

            installed.extend(install_shared_texts(shared.texts, replace=True))
        return pd.DataFrame([train_row(pdf)])

    return train_group


def train_grouped(
    training_set: DataFrame, cfg: DatasetConfig, spec: TrainSpec | None = None, known: dict[str, str] | None = None,
    previous: dict[str, tuple[str, str]] | None = None, shared=None, artifacts=None,
) -> pd.DataFrame:
    """One model per series of any training-set DataFrame (``groupBy(keys).applyInPandas``);
    one result row per series.
    Series whose fingerprint equals ``known[series_id]`` come back with status ``unchanged``;
    the others are warm-started from ``previous[series_id]`` (artifact URI, sha256) if given.
    ``artifacts`` (``stores.artifacts.TaskArtifacts``): the tasks write the models there and
    return their references (``model_source``, ``model_sha256``), not the models."""
    spec = spec or train_spec(cfg)
    keys = cfg.keys
    key_fields = [training_set.schema[k] for k in keys]
    schema = T.StructType([T.StructField(f.name, f.dataType) for f in key_fields] + [T.StructField(n, t) for n, t in RESULT_FIELDS])
    fn = _train_group_fn(spec, keys, known, previous, shared, _model_artifacts(cfg, artifacts))
    result = training_set.groupBy(*keys, "series_id").applyInPandas(fn, schema=schema)
    return result.toPandas()


def _model_artifacts(cfg: DatasetConfig, folder) -> ModelArtifacts | None:
    return ModelArtifacts(cfg.name, folder) if folder is not None else None


def _read_bucket(url: str) -> pd.DataFrame:
    """One bucket folder of a training set, or one file of a bucket (a local path or any
    fsspec URL, opened from this executor's environment; either holds whole series) as Spark
    hands it to ``applyInPandas``: naive UTC ``datetime64[ns]`` dates (the session time zone
    is UTC), rows sorted by series and date as written."""
    from mm_platform.stores.lake import read_parquet, task_filesystem

    fs, path = task_filesystem(url)
    if path.endswith(".parquet"):
        files = [path]
    else:
        files = sorted(
            f for f in fs.ls(path, detail=False)
            if f.endswith(".parquet") and not f.rsplit("/", 1)[-1].startswith(("_", "."))
        )
    pdf = read_parquet(fs, files).to_pandas()
    ds = pdf["ds"]
    if getattr(ds.dtype, "tz", None) is not None:
        ds = ds.dt.tz_convert("UTC").dt.tz_localize(None)
    pdf["ds"] = ds.astype("datetime64[ns]")
    return pdf.sort_values(["series_id", "ds"], kind="stable").reset_index(drop=True)


def _shipped(spark: SparkSession, value):
    """``value`` as a Spark broadcast where the session has a SparkContext (each executor
    fetches it once, instead of every task unpickling it with its function: 18.5 MB of
    fingerprints and model references at 100,000 series); the value itself on Spark Connect."""
    try:
        return spark.sparkContext.broadcast(value)
    except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext
        return value


def _train_buckets_fn(
    spec: TrainSpec, keys: list[str], columns: list[str], buckets: list[str], shares: list[list[int]],
    known_previous, only: frozenset[str] | None, shared=None, artifacts: ModelArtifacts | None = None,
):
    """Task ``i`` trains the series of ``buckets[j]`` for each ``j`` in ``shares[i]``.
    ``known_previous``: ``(known, previous)``, or a broadcast of it (``_shipped``)."""

    def run(batches):
        from mm_platform.core.errors import UserError, one_line

        known, previous = getattr(known_previous, "value", known_previous)
        train_row = _train_row_fn(spec, keys, known, previous, shared, artifacts)
        installed = []
        try:
            if shared is not None:
                # The global family's shared models, once per task (Python workers are reused:
                # they are dropped when the task ends).
                from mm_platform.forecasting.global_lgbm import install_shared_texts

                installed = install_shared_texts(shared.texts)
            yield from train(batches, train_row)
        except UserError as err:  # e.g. no credential on this executor: one line for the driver
            yield pd.DataFrame([dict.fromkeys(columns) | {"status": TASK_ERROR, "reason": one_line(err)}], columns=columns)
        finally:
            if installed:
                from mm_platform.forecasting.global_lgbm import forget_shared

                forget_shared(installed)

    def train(batches, train_row):
        import numpy as np

        for j in (j for batch in batches for i in batch["id"] for j in shares[int(i)]):
            pdf = _read_bucket(buckets[j])
            if only is not None:
                pdf = pdf[pdf["series_id"].isin(only)].reset_index(drop=True)
            if pdf.empty:
                continue
            sid = pdf["series_id"].to_numpy()
            starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
            ends = np.r_[starts[1:], len(sid)]
            yield pd.DataFrame([train_row(pdf.iloc[a:b]) for a, b in zip(starts, ends, strict=True)], columns=columns)

    return run


def train_buckets(
    spark: SparkSession, buckets: list[str], key_schema: list[tuple[str, T.DataType]], rows: int, cfg: DatasetConfig,
    spec: TrainSpec | None = None, known: dict[str, str] | None = None, previous: dict[str, tuple[str, str]] | None = None,
    only_series: list[str] | None = None, shared=None, sizes: list[int] | None = None, artifacts=None,
) -> pd.DataFrame:
    """``train_grouped`` without its shuffle, for a training set already bucketed by series
    (a series is in one bucket, and in one file of it): each Spark task reads whole parts of
    the set (``buckets``: bucket folders or bucket files, local paths or fsspec URLs its
    workers can open) and trains every series in them. ``key_schema``: the keys' Spark types;
    ``rows``: the set's row count (it sets the task count); ``sizes``: each part's rows, by
    which the parts are dealt to the tasks (``balanced_shares``; equal if not given). Same
    rows as ``train_grouped``, sorted by series id. ``shared``: the global family's shared
    models (``spark.global_train``); ``artifacts``: as for ``train_grouped``."""
    spec = spec or train_spec(cfg)
    keys = cfg.keys
    schema = T.StructType([T.StructField(k, t) for k, t in key_schema] + [T.StructField(n, t) for n, t in RESULT_FIELDS])
    if not buckets:
        return pd.DataFrame(columns=schema.fieldNames())
    only = frozenset(only_series) if only_series is not None else None
    state = (known or {}, previous or {})
    shipped = _shipped(spark, state) if state[0] or state[1] else state
    # As many tasks as the data needs (at most spark.sql.shuffle.partitions, as the groupBy
    # path has), each given parts of about the same number of rows.
    shares = balanced_shares(sizes or [1] * len(buckets), task_count(spark, len(buckets), rows))
    fn = _train_buckets_fn(spec, keys, schema.fieldNames(), buckets, shares, shipped, only, shared,
                           _model_artifacts(cfg, artifacts))
    try:
        result = spark.range(0, len(shares), 1, len(shares)).mapInPandas(fn, schema=schema).toPandas()
    finally:
        if shipped is not state:
            shipped.unpersist()
    failed = result[result["status"] == TASK_ERROR]
    if len(failed):
        from mm_platform.core.errors import UserError

        raise UserError(failed["reason"].iloc[0])
    return result.sort_values("series_id", kind="stable").reset_index(drop=True)
