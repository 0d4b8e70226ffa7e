"""The distributed backend of batch scoring: one Spark stage over the series, each forecast
with its production model's compact form (``mm_platform.forecasting.series.forecast_arrays``)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from mm_platform.config import DatasetConfig
from mm_platform.core.vocabulary import SCORED, SCORING_FAILED, SCORING_SKIPPED
from mm_platform.forecasting.series import forecast_arrays, future_regressor_values, periods_after

PREDICTION_FIELDS = [
    ("series_id", T.StringType()),
    ("ds", T.DateType()),
    ("yhat", T.DoubleType()),
    ("yhat_lower", T.DoubleType()),
    ("yhat_upper", T.DoubleType()),
    ("model_name", T.StringType()),
    ("model_version", T.LongType()),
]
# Scoring emits, besides prediction rows, one report row per series (ds null, status set).
SCORING_STATUS_FIELDS = [("status", T.StringType()), ("reason", T.StringType()), ("prediction_rows", T.LongType())]


def forecast_or_reason(model_json: str, horizon: int, nonnegative: bool, future_json: str | None = None,
                       origin: str | None = None):
    """One series' forecast arrays, or the reason it could not be forecast (never raises).
    ``future_json``: the series' known future regressor values, if the source has them.
    ``origin``: the run date; the ``horizon`` periods after it are forecast even when the
    model was trained on data ending earlier (a production model kept over several runs)."""
    try:
        model = json.loads(model_json)
        gap = periods_after(model["last_ds"], origin, model.get("freq", "D"))
        n = horizon + gap
        regressors = future_regressor_values(model, n, json.loads(future_json) if isinstance(future_json, str) else None)
        ds, yhat, lo, hi = (a[gap:] for a in forecast_arrays(model, n, regressors, nonnegative=nonnegative))
    except Exception as exc:  # one bad model fails its series only
        return None, f"forecast raised {type(exc).__name__}: {str(exc)[:300]}"
    if not (np.isfinite(yhat).all() and np.isfinite(lo).all() and np.isfinite(hi).all()):
        return None, "forecast has non-finite values"
    return (ds, yhat, lo, hi), None


def load_or_reason(source: str, sha: str | None, what: str):
    """A production model's artifact, read and checked against its sha256 in the scoring
    task, with every shared model it refers to (global family; each read and checked once per
    Python worker, ``global_lgbm.resolve_shared``): ``(model JSON, None)`` or ``(None, why)``."""
    from mm_platform.stores.artifacts import read_verified

    try:
        text = read_verified(source, sha, what).decode()
    except Exception as exc:  # noqa: BLE001 - one unreadable model fails its series only
        return None, f"production model not loaded: {type(exc).__name__}: {exc}"
    if '"shared_sha256"' in text:
        from mm_platform.forecasting.global_lgbm import resolve_shared, shared_refs

        try:
            for ref in shared_refs(json.loads(text)):
                resolve_shared(str(ref["shared_sha256"]), ref.get("shared_uri"))
        except Exception as exc:  # noqa: BLE001
            return None, f"production model not loaded: shared model: {type(exc).__name__}: {exc}"
    return text, None


def _score_fn(keys: list[str], horizon: int, nonnegative: bool, columns: list[str], origin: str | None = None):
    value_cols = ("ds", "yhat", "yhat_lower", "yhat_upper")
    meta_cols = (*keys, "series_id", "model_name", "model_version")

    def score(batches):
        from mm_platform.forecasting.global_lgbm import forget_shared

        # Shared models are read and verified again by each task (once per task, cached for
        # its series), never taken from an earlier job in this reused Python worker.
        forget_shared()
        # Numpy per series, one DataFrame per Arrow batch: no pandas round trip per series.
        for pdf in batches:
            cols: dict[str, list] = {c: [] for c in value_cols}
            meta: dict[str, list] = {c: [] for c in meta_cols}
            report: list[dict] = []
            for row in pdf.itertuples(index=False):
                ident = {c: getattr(row, c) for c in meta_cols}
                if not isinstance(row.model_source, str):
                    report.append(ident | {"status": SCORING_SKIPPED, "reason": "no production model", "prediction_rows": 0})
                    continue
                if not row.in_data:
                    report.append(ident | {"status": SCORING_SKIPPED, "reason": "not in the run date's training set",
                                           "prediction_rows": 0})
                    continue
                model_json, why = load_or_reason(row.model_source, row.model_sha256,
                                                 f"artifact of {row.model_name} v{row.model_version}")
                if model_json is None:
                    report.append(ident | {"status": SCORING_FAILED, "reason": why, "prediction_rows": 0})
                    continue
                arrays, why = forecast_or_reason(model_json, horizon, nonnegative, row.future_regressors, origin)
                if arrays is None:
                    report.append(ident | {"status": SCORING_FAILED, "reason": why, "prediction_rows": 0})
                    continue
                report.append(ident | {"status": SCORED, "reason": "", "prediction_rows": len(arrays[0])})
                for c, v in zip(value_cols, arrays, strict=True):
                    cols[c].append(v)
                for c in meta:
                    meta[c].append(ident[c])
            if cols["ds"]:
                n = [len(d) for d in cols["ds"]]
                out = {c: np.repeat(np.asarray(v, dtype=object if c in keys or c in ("series_id", "model_name") else None), n)
                       for c, v in meta.items()}
                out["ds"] = np.concatenate(cols["ds"]).astype("datetime64[D]").astype(object)
                for c in ("yhat", "yhat_lower", "yhat_upper"):
                    out[c] = np.concatenate(cols[c])
                frame = pd.DataFrame(out)
                frame["model_version"] = frame["model_version"].astype("int64")
                # (typed nulls for the report columns: Arrow cannot cast all-NaN floats to strings)
                frame["status"] = frame["reason"] = pd.Series([None] * len(frame), dtype=object)
                frame["prediction_rows"] = pd.array([None] * len(frame), dtype="Int64")
                yield frame[columns]
            if report:
                frame = pd.DataFrame(report)
                frame["model_version"] = frame["model_version"].astype("Int64")
                frame["prediction_rows"] = frame["prediction_rows"].astype("int64")
                frame["ds"] = pd.Series([None] * len(frame), dtype=object)
                for c in ("yhat", "yhat_lower", "yhat_upper"):
                    frame[c] = np.nan
                yield frame[columns]

    return score


def _spark_type(dtype) -> T.DataType:
    if pd.api.types.is_integer_dtype(dtype):
        return T.LongType()
    if pd.api.types.is_float_dtype(dtype):
        return T.DoubleType()
    if pd.api.types.is_bool_dtype(dtype):
        return T.BooleanType()
    return T.StringType()


@dataclass
class ScoredSeries:
    predictions: pa.Table  # keys, series_id, ds, yhat, yhat_lower, yhat_upper, model_name, model_version
    report: pd.DataFrame  # keys, series_id, model_name, model_version, status, reason, prediction_rows


def score_series(spark: SparkSession, models: pd.DataFrame, present: pd.DataFrame, cfg: DatasetConfig,
                 origin: str | None = None) -> ScoredSeries:
    """Forecast ``cfg.horizon`` periods (after ``origin``, the run date, when given) for every series that has a production model and is
    ``present`` in the run date's data (keys and series_id, see ``training_set_series``), with
    one report row per series: scored, failed (with the reason: one bad model never fails the
    others) or skipped (no production model, or no data).

    ``models`` holds keys, series_id, model_name, model_version, the model's artifact
    location and sha256 (``model_source``, ``model_sha256``: each task reads and verifies
    its series' models) and optionally ``future_regressors`` (JSON of the series' known
    future regressor values).
    The join of models and data is done here, in pandas (one row per series), so the Spark
    job is one stage without a shuffle, sliced over the cluster's cores.
    """
    keys = cfg.keys
    key_fields = [T.StructField(k, _spark_type(present[k].dtype)) for k in keys]
    model_schema = T.StructType(
        [T.StructField(f.name, f.dataType) for f in key_fields]
        + [
            T.StructField("series_id", T.StringType()),
            T.StructField("model_name", T.StringType()),
            T.StructField("model_version", T.LongType()),
            T.StructField("model_source", T.StringType()),
            T.StructField("model_sha256", T.StringType()),
            T.StructField("future_regressors", T.StringType()),
        ]
    )
    models = models.copy() if len(models) else pd.DataFrame(columns=[f.name for f in model_schema.fields])
    if "future_regressors" not in models:
        models["future_regressors"] = None
    for f in key_fields:  # registry tags are strings; match the data's key types
        if isinstance(f.dataType, T.IntegralType):
            models[f.name] = models[f.name].astype("int64")
        elif isinstance(f.dataType, T.StringType):
            models[f.name] = models[f.name].astype(str)
    todo = models[[f.name for f in model_schema.fields]].merge(
        present, on="series_id", how="outer", suffixes=("", "_data"), indicator=True
    )
    for k in keys:  # series without a model take their keys from the data
        todo[k] = todo[k].where(todo[k].notna(), todo[f"{k}_data"])
    todo["in_data"] = todo["_merge"] != "left_only"
    todo = todo[[*(f.name for f in model_schema.fields), "in_data"]]
    for f in key_fields:
        if isinstance(f.dataType, T.IntegralType):
            todo[f.name] = todo[f.name].astype("int64")
    todo["model_version"] = todo["model_version"].astype("Int64")
    todo_schema = T.StructType([*model_schema.fields, T.StructField("in_data", T.BooleanType())])
    out_schema = T.StructType(
        [T.StructField(f.name, f.dataType) for f in key_fields]
        + [T.StructField(n, t) for n, t in PREDICTION_FIELDS]
        + [T.StructField(n, t) for n, t in SCORING_STATUS_FIELDS]
    )
    result = spark.createDataFrame(todo, schema=todo_schema).mapInPandas(
        _score_fn(keys, cfg.horizon, True, out_schema.fieldNames(), origin), schema=out_schema
    )
    # Through Arrow: the report (one row per series) as pandas; the predictions stay an Arrow
    # table with the repeated strings (series id, model name) dictionary-encoded, so the
    # driver holds a few bytes per prediction, not Python objects (the warehouse writes them
    # a chunk at a time).
    result = result.toArrow()
    is_report = pc.is_valid(result["status"])
    report_cols = [*keys, "series_id", "model_name", "model_version", "status", "reason", "prediction_rows"]
    report = result.filter(is_report).select(report_cols).to_pandas()
    report = report.sort_values("series_id").reset_index(drop=True)
    predictions = result.filter(pc.invert(is_report)).select([*keys, *(n for n, _ in PREDICTION_FIELDS)])
    del result
    for name in ("series_id", "model_name"):
        i = predictions.schema.get_field_index(name)
        predictions = predictions.set_column(i, name, pc.dictionary_encode(predictions[name]))
    return ScoredSeries(predictions, report)
