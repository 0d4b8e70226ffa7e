"""The Spark parts: group lake data into per-series training sets, train one model per
series with ``groupBy(keys).applyInPandas``, and score each series with its production
model. The per-series work itself is in ``mm_platform.forecasting`` (no Spark there)."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mm_platform.config import DatasetConfig, SparkConfig
from mm_platform.forecasting.series import TrainSpec, forecast_arrays, future_regressor_values, train_series
from mm_platform.lake import Lake

N_BUCKETS = 32  # training-set files are bucketed by series so one series is read from one bucket

logging.getLogger("py4j").setLevel(logging.WARNING)


def spark_conf(spark: SparkConfig) -> dict[str, str]:
    """Spark settings for dagster-pyspark's PySparkResource: master (or Connect URL) plus
    quiet, Arrow-enabled defaults; anything in ``spark.conf`` wins."""
    conf = {
        "spark.app.name": "mm_platform",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": str(spark.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        # The raw table is one file per month (132 for 11 years): list them in the driver, not
        # with a Spark job per read (the default above 32 paths), which cost ~2.5 core-s a run.
        "spark.sql.sources.parallelPartitionDiscovery.threshold": "100000",
        "spark.driver.extraJavaOptions": "-Dlog4j2.level=ERROR",
        # Per-series fits use small matrices: BLAS threads only contend with Spark's own parallelism.
        "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
        "spark.executorEnv.OMP_NUM_THREADS": "1",
    }
    if spark.preload_worker_modules:
        conf["spark.python.daemon.module"] = "mm_platform.spark_daemon"
    if spark.master.startswith("sc://"):
        conf["spark.remote"] = spark.master
    else:
        conf["spark.master"] = spark.master
        # Python workers must run this interpreter (the venv), whatever python3 is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        # Local-mode Python workers inherit the driver's environment, not executorEnv.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        conf["spark.pyspark.python"] = sys.executable
        conf["spark.pyspark.driver.python"] = sys.executable
        conf["spark.driver.memory"] = os.environ.get("MM_SPARK_DRIVER_MEMORY", "2g")
        if spark.master.startswith("local"):
            # In local mode the driver JVM is the executor, and on a local lake it only schedules
            # Python tasks and passes small Arrow batches: C2 compilation cost ~2 core-s a session
            # (4 at 10,000 series) for code that never runs long enough to repay it.
            conf["spark.driver.extraJavaOptions"] += " -XX:TieredStopAtLevel=1"
            conf["spark.driver.extraJavaOptions"] += _class_archive_option(spark)
    conf.update(spark.conf)
    return conf


def _class_archive_option(spark: SparkConfig) -> str:
    """The JVM option for the class-data-sharing archive (mm_platform.jvm_archive): record it
    when ``mm-platform jvm-archive`` asks, map it when it exists, else nothing."""
    from mm_platform import jvm_archive

    if os.environ.get("MM_JVM_ARCHIVE_RECORD"):
        return f" -XX:ArchiveClassesAtExit={os.environ['MM_JVM_ARCHIVE_RECORD']}"
    archive = jvm_archive.existing_archive() if spark.jvm_class_archive else None
    return f" -XX:SharedArchiveFile={archive}" if archive else ""


def get_session(spark: SparkConfig) -> SparkSession:
    connect = spark.master.startswith("sc://")
    # Settings a Spark Connect client cannot change (the server's own launch sets them).
    server_side = ("spark.master", "spark.ui.", "spark.driver.", "spark.pyspark.", "spark.executor.", "spark.python.")
    builder = SparkSession.builder
    for k, v in spark_conf(spark).items():
        if connect and k.startswith(server_side):
            continue
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    if not connect:  # no SparkContext on Spark Connect
        session.sparkContext.setLogLevel("ERROR")
    return session


def _series_id_col(keys: list[str]):
    return F.concat_ws(",", *[F.concat(F.lit(f"{k}="), F.col(k).cast("string")) for k in keys])


def training_set_uri(lake: Lake, cfg: DatasetConfig, run_date: date) -> str:
    return lake.uri("training_sets", cfg.name, f"run_date={run_date}")


def build_training_sets(spark: SparkSession, lake: Lake, cfg: DatasetConfig, run_date: date) -> dict:
    """Lake raw table -> per-series training data (keys, series_id, ds, y, regressors),
    bucketed by series (``pmod(xxhash64(series_id), 32)``) and sorted by series and date within
    each bucket, so reading one series touches one bucket.

    A local (or shared-volume) lake is built by Spark tasks with pyarrow (``_build_local``): a
    map stage splits the raw files by bucket, a reduce stage sorts each bucket. Any other lake
    (``abfs://``...), or partition keys whose text form Arrow and Spark do not share, goes
    through Spark SQL: read with pyarrow through fsspec in the driver where Spark cannot read
    the lake itself, grouped by Spark, written back through fsspec in the same layout (this
    Spark has no hadoop-azure connector; this works on every master, Spark Connect too).
    """
    manifest_files = sorted(lake.read_manifest(cfg.source.table)["files"].values())
    if not manifest_files:
        raise ValueError(f"the lake has no data for table {cfg.source.table!r}: materialize raw_sales first")
    if lake.is_local():
        raw_files = [lake.path("raw", cfg.source.table, rel) for rel in manifest_files]
        raw_schema = _raw_schema(raw_files)
        cols = cfg.columns
        missing = [c for c in [*cols.keys, cols.date, cols.target, *cols.regressors] if c not in raw_schema.names]
        if missing:
            raise ValueError(f"the lake's {cfg.source.table!r} table lacks configured columns {missing}; it has {raw_schema.names}")
        if all(_arrow_key_type(raw_schema.field(k).type) for k in cfg.keys):
            return _build_local(spark, lake, cfg, run_date, raw_files, raw_schema)
    cols = cfg.columns
    if lake.is_local():
        raw = spark.read.parquet(*[lake.uri("raw", cfg.source.table, rel) for rel in manifest_files])
    else:
        wanted = [cols.date, cols.target, *cols.keys, *cols.regressors]
        pdf = lake.read_raw(cfg.source.table, columns=wanted, filters=[(cols.date, "<=", pd.Timestamp(run_date))])
        pdf[cols.date] = pd.to_datetime(pdf[cols.date]).astype("datetime64[us]")
        raw = spark.createDataFrame(pdf)
    df = training_rows(raw, cfg, run_date)
    import pyarrow as pa
    import pyarrow.parquet as pq

    # The layout of _build_local (bucket=N/part-*.parquet, rows sorted by series and date, no
    # bucket column inside the files), written through fsspec.
    pdf = df.toPandas()
    folder = lake.path("training_sets", cfg.name, f"run_date={run_date}")
    if lake.fs.exists(folder):
        lake.fs.rm(folder, recursive=True)
    for bucket, part in pdf.groupby("bucket", sort=True):
        part = part.drop(columns="bucket").sort_values(["series_id", "ds"], kind="stable")
        path = f"{folder}/bucket={int(bucket)}/part-00000.parquet"
        lake.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        pq.write_table(
            pa.Table.from_pandas(part, preserve_index=False), path, filesystem=lake.fs,
            coerce_timestamps="us", allow_truncated_timestamps=True,
        )
    with lake.fs.open(f"{folder}/_SUCCESS", "wb"):
        pass
    return {"rows": len(pdf), "series": int(pdf["series_id"].nunique()), "path": training_set_uri(lake, cfg, run_date)}


def training_rows(raw: DataFrame, cfg: DatasetConfig, run_date: date) -> DataFrame:
    """The training-set rows of a raw table as a Spark DataFrame, with their ``bucket``: the
    definition ``_build_local`` implements in Arrow (and the tests hold it to)."""
    cols = cfg.columns
    return (
        raw.where(F.col(cols.date) <= F.lit(run_date).cast("timestamp"))
        .select(
            *[F.col(k) for k in cols.keys],
            _series_id_col(cols.keys).alias("series_id"),
            F.col(cols.date).cast("timestamp").alias("ds"),
            F.col(cols.target).cast("double").alias("y"),
            *[F.col(r).cast("double").alias(r) for r in cols.regressors],
        )
        .withColumn("bucket", F.pmod(F.xxhash64("series_id"), F.lit(N_BUCKETS)))
    )


# -- the Arrow build of a local lake's training sets ------------------------------------------
#
# Spark SQL's build (scan, shuffle, sort, partitioned write) cost ~2.2 core-s per million rows
# plus 4-5 core-s of JVM class loading, code generation and JIT in each new session; the same
# work in pyarrow inside Spark's Python workers (which training starts anyway) costs a third
# per row and little that is fixed. Spark still schedules the tasks.


def _raw_schema(files: list[str]):
    """One schema for all raw files (their footers only): int32 in one month and int64 in
    another become int64, as they would have to for Spark."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")


def _arrow_key_type(t) -> bool:
    """Partition-key types whose Arrow text form equals Spark's ``cast(k as string)`` (so the
    series ids, and with them the buckets, are the same as Spark SQL's)."""
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_date(t)


def _bucket_of(series_ids: list[str]):
    """``pmod(xxhash64(series_id), N_BUCKETS)`` exactly as Spark computes it (XXH64, seed 42,
    over the UTF-8 bytes); 2**64 is a multiple of N_BUCKETS, so the unsigned remainder equals
    Spark's pmod of the signed hash."""
    import xxhash

    return np.fromiter((xxhash.xxh64_intdigest(s.encode(), seed=42) % N_BUCKETS for s in series_ids),
                       dtype=np.int32, count=len(series_ids))


def _training_table(table, cfg: DatasetConfig, run_date: date):
    """One raw Arrow table -> training rows (``training_rows`` in Arrow) and each row's bucket."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = cfg.columns
    # Dates become midnight; a zoned timestamp becomes its UTC wall time, as Spark's cast does
    # in the session time zone (UTC).
    ds = pc.cast(table[cols.date], pa.timestamp("us"), safe=False)
    keep = pc.less_equal(ds, pa.scalar(pd.Timestamp(run_date).to_pydatetime(), pa.timestamp("us")))
    table, ds = table.filter(keep), ds.filter(keep)
    parts = []
    for i, k in enumerate(cols.keys):
        parts += ["," if i else "", f"{k}=", pc.cast(table[k], pa.string())]
    series_id = pc.binary_join_element_wise(*parts, "") if len(cols.keys) else pa.array([""] * table.num_rows)
    encoded = pc.dictionary_encode(series_id).combine_chunks() if isinstance(series_id, pa.ChunkedArray) \
        else pc.dictionary_encode(series_id)
    bucket = _bucket_of(encoded.dictionary.to_pylist())[encoded.indices.to_numpy(zero_copy_only=False)]
    out = pa.table(
        [*[table[k] for k in cols.keys], series_id, ds, pc.cast(table[cols.target], pa.float64()),
         *[pc.cast(table[r], pa.float64()) for r in cols.regressors]],
        names=[*cols.keys, "series_id", "ds", "y", *cols.regressors],
    )
    return out, bucket


SPLIT_FLUSH_ROWS = 1_000_000  # rows a map task buffers before writing them out by bucket


def _split_raw_files(files: list[str], raw_schema, cfg: DatasetConfig, run_date: date, out: str, task: int) -> int:
    """Map stage: raw files -> one fragment per bucket (``out/bucket=N/part-<task>.parquet``).
    Rows are buffered up to ``SPLIT_FLUSH_ROWS`` and written one row group per bucket: a row
    group per raw file and bucket (4,224 for 132 files) cost more than the data itself."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = cfg.columns
    wanted = [*cols.keys, cols.date, cols.target, *cols.regressors]
    writers: dict[int, pq.ParquetWriter] = {}
    pending: list = []
    pending_buckets: list[np.ndarray] = []
    rows = 0

    def flush():
        table = pa.concat_tables(pending)
        bucket = np.concatenate(pending_buckets)
        pending.clear()
        pending_buckets.clear()
        order = np.argsort(bucket, kind="stable")
        table, bucket = table.take(order), bucket[order]
        bounds = np.flatnonzero(np.diff(bucket)) + 1
        for start, end in zip(np.r_[0, bounds], np.r_[bounds, len(bucket)], strict=True):
            b = int(bucket[start])
            if b not in writers:
                os.makedirs(f"{out}/bucket={b}", exist_ok=True)
                writers[b] = pq.ParquetWriter(f"{out}/bucket={b}/part-{task:05d}.parquet", table.schema)
            writers[b].write_table(table.slice(start, end - start))

    try:
        for path in files:
            table = pq.read_table(path, columns=wanted, partitioning=None, use_threads=False)
            table, bucket = _training_table(table.cast(pa.schema([raw_schema.field(n) for n in wanted])), cfg, run_date)
            if not table.num_rows:
                continue
            pending.append(table)
            pending_buckets.append(bucket)
            rows += table.num_rows
            if sum(t.num_rows for t in pending) >= SPLIT_FLUSH_ROWS:
                flush()
        if pending:
            flush()
    finally:
        for w in writers.values():
            w.close()
    return rows


def _sort_bucket(fragments: str, out: str) -> tuple[int, int]:
    """Reduce stage: one bucket's fragments -> one file sorted by series and date; its rows
    and series (a series is in one bucket, so the counts add up across buckets)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted(os.path.join(fragments, f) for f in os.listdir(fragments) if f.endswith(".parquet"))
    table = pq.read_table(files, partitioning=None, use_threads=False)
    # Sort by (rank of the series id, date): integers sort at half the cost of the strings.
    series = pc.dictionary_encode(table["series_id"]).combine_chunks()
    rank = pc.rank(series.dictionary, sort_keys="ascending", tiebreaker="dense").to_numpy()
    order = np.lexsort((table["ds"].combine_chunks().cast(pa.int64()).to_numpy(), rank[series.indices.to_numpy()]))
    os.makedirs(out, exist_ok=True)
    pq.write_table(table.take(order), f"{out}/part-00000.parquet")
    return table.num_rows, len(series.dictionary)


def _build_local(spark: SparkSession, lake: Lake, cfg: DatasetConfig, run_date: date, raw_files: list[str], raw_schema) -> dict:
    """Build the run date's training set in a staging folder with two stages of Spark tasks,
    then swap it in: readers see the previous set or the new one, never a partial one."""
    import shutil
    import uuid

    final = lake.path("training_sets", cfg.name, f"run_date={run_date}")
    staging = lake.path("training_sets", cfg.name, f".building-run_date={run_date}-{uuid.uuid4().hex[:12]}")
    rows = int(lake.read_manifest(cfg.source.table).get("rows") or 0)
    try:
        split = _split_task_fn(raw_files, raw_schema, cfg, run_date, f"{staging}/map")
        spark.range(0, len(raw_files), 1, task_count(spark, len(raw_files), rows)).mapInPandas(split, "rows long").collect()
        buckets = sorted(int(d.split("=", 1)[1]) for d in os.listdir(f"{staging}/map")) if os.path.isdir(f"{staging}/map") else []
        stats = [(0, 0)]
        if buckets:
            sort = _sort_task_fn(buckets, f"{staging}/map", f"{staging}/out")
            stats += [(r.rows, r.series) for r in spark.range(0, len(buckets), 1, task_count(spark, len(buckets), rows))
                      .mapInPandas(sort, "rows long, series long").collect()]
        os.makedirs(f"{staging}/out", exist_ok=True)
        open(f"{staging}/out/_SUCCESS", "wb").close()
        # Two renames: a crash between them leaves no set for the run date (a rebuild makes it
        # again from the raw table), never a mix of old and new files.
        old = f"{staging}/old"
        if os.path.exists(final):
            os.rename(final, old)
        os.rename(f"{staging}/out", final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"rows": sum(r for r, _ in stats), "series": sum(s for _, s in stats), "path": training_set_uri(lake, cfg, run_date)}


ROWS_PER_TASK = 2_000_000


def task_count(spark: SparkSession, items: int, rows: int) -> int:
    """Spark tasks for ``items`` units of work (files, buckets) holding ``rows`` rows in all:
    one per ``ROWS_PER_TASK`` rows, at least one per core, at most ``spark.sql.shuffle.partitions``
    and ``items``. A task costs ~0.05 core-s of JVM and Python overhead, which a small input
    would otherwise pay eight times over for work it could do in two."""
    most = int(spark.conf.get("spark.sql.shuffle.partitions", "8"))
    try:
        cores = spark.sparkContext.defaultParallelism
    except Exception:  # Spark Connect has no SparkContext: the configured partitions then
        cores = most
    return max(1, min(items, most, max(cores, -(-rows // ROWS_PER_TASK))))


def _split_task_fn(files: list[str], raw_schema, cfg: DatasetConfig, run_date: date, out: str):
    def run(batches):
        ids = [int(i) for batch in batches for i in batch["id"]]
        if ids:
            yield pd.DataFrame({"rows": [_split_raw_files([files[i] for i in ids], raw_schema, cfg, run_date, out, ids[0])]})

    return run


def _sort_task_fn(buckets: list[int], fragments: str, out: str):
    def run(batches):
        for batch in batches:
            for i in batch["id"]:
                b = buckets[int(i)]
                rows, series = _sort_bucket(f"{fragments}/bucket={b}", f"{out}/bucket={b}")
                yield pd.DataFrame({"rows": [rows], "series": [series]})

    return run


def read_training_set(spark: SparkSession, lake: Lake, cfg: DatasetConfig, run_date: date) -> DataFrame:
    if lake.is_local():
        return spark.read.parquet(training_set_uri(lake, cfg, run_date))
    import pyarrow as pa
    import pyarrow.dataset as pads

    folder = lake.path("training_sets", cfg.name, f"run_date={run_date}")
    partitioning = pads.partitioning(pa.schema([("bucket", pa.int32())]), flavor="hive")
    # (files starting with "_" or ".", like _SUCCESS, are skipped by default)
    table = pads.dataset(folder, filesystem=lake.fs, format="parquet", partitioning=partitioning).to_table()
    pdf = table.to_pandas()
    pdf["ds"] = pd.to_datetime(pdf["ds"]).astype("datetime64[us]")
    return spark.createDataFrame(pdf)


def training_set_series(lake: Lake, cfg: DatasetConfig, run_date: date) -> pd.DataFrame:
    """The partition keys and series ids the run date's training set holds (one row each),
    read with pyarrow: only those columns, dictionary-encoded, a fraction of a second even for
    tens of millions of rows, where a Spark job costs seconds of JVM time."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    folder = lake.path("training_sets", cfg.name, f"run_date={run_date}")
    if not lake.fs.exists(folder):
        raise ValueError(f"no training set for {run_date} at {lake.uri('training_sets', cfg.name)}: materialize training_sets first")
    partitioning = pads.partitioning(pa.schema([("bucket", pa.int32())]), flavor="hive")
    dataset = pads.dataset(folder, filesystem=lake.fs, format="parquet", partitioning=partitioning)
    columns = [*cfg.keys, "series_id"]
    return dataset.to_table(columns=columns).group_by(columns).aggregate([]).to_pandas()[columns]


RESULT_FIELDS = [
    ("series_id", T.StringType()),
    ("status", T.StringType()),
    ("reason", T.StringType()),
    ("n_obs", T.LongType()),
    ("last_date", T.StringType()),
    ("fingerprint", T.StringType()),
    *[(m, T.DoubleType()) for m in ("mape", "wape", "rmse", "naive_mape", "naive_wape", "naive_rmse")],
    ("fit_seconds", T.DoubleType()),
    ("model_json", T.StringType()),
]


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
        options={"ensemble": list(auto.ensemble)},
    )


UNCHANGED = "unchanged"


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
    import hashlib
    import json
    from urllib.parse import unquote, urlparse

    source, sha = ref
    try:
        if source.startswith("file://") or (os.path.isabs(source) and "://" not in source):
            with open(unquote(urlparse(source).path) if "://" in source else source, "rb") as f:
                data = f.read()
        else:
            import tempfile
            from pathlib import Path

            from mlflow.artifacts import download_artifacts

            with tempfile.TemporaryDirectory() as tmp:
                data = Path(download_artifacts(artifact_uri=source, dst_path=tmp)).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:
            return None
        return json.loads(data)
    except Exception:
        return None


def _train_row_fn(
    spec: TrainSpec, keys: list[str], known: dict[str, str] | None = None, previous: dict[str, tuple[str, str]] | None = None
):
    """One series' result row. ``known`` maps series id -> fingerprint of its registered model: a series whose data
    has not changed is not refitted (daily incremental retraining). ``previous`` maps series
    id -> (artifact URI, sha256) of that model: a changed series' fit is warm-started from it."""
    metric_names = ("mape", "wape", "rmse", "naive_mape", "naive_wape", "naive_rmse")
    known = known or {}
    previous = previous or {}

    def train_row(pdf: pd.DataFrame) -> dict:
        sid = pdf["series_id"].iloc[0]
        if sid in known and series_fingerprint(pdf, spec.regressors) == known[sid]:
            row = {k: pdf[k].iloc[0] for k in keys}
            row |= {"series_id": sid, "status": UNCHANGED, "reason": "data unchanged since the registered model",
                    "n_obs": int(pdf["y"].notna().sum()), "last_date": str(pd.to_datetime(pdf["ds"]).max().date()),
                    "fingerprint": known[sid], **dict.fromkeys(metric_names), "fit_seconds": 0.0, "model_json": ""}
            return row
        r = train_series(pdf, spec, previous=read_previous_model(previous.get(sid)))
        row = {k: pdf[k].iloc[0] for k in keys}
        row |= {
            "series_id": pdf["series_id"].iloc[0],
            "status": r.status,
            "reason": r.reason,
            "n_obs": r.n_obs,
            "last_date": r.last_date,
            "fingerprint": r.fingerprint,
            **{m: r.metrics.get(m) for m in metric_names},
            "fit_seconds": r.fit_seconds,
            "model_json": r.model_json(),
        }
        return row

    return train_row


def _train_group_fn(
    spec: TrainSpec, keys: list[str], known: dict[str, str] | None = None, previous: dict[str, tuple[str, str]] | None = None
):
    """One series' result row as a DataFrame (``applyInPandas``)."""
    train_row = _train_row_fn(spec, keys, known, previous)
    return lambda pdf: pd.DataFrame([train_row(pdf)])


def train_model_set(
    training_set: DataFrame, cfg: DatasetConfig, spec: TrainSpec | None = None, known: dict[str, str] | None = None,
    previous: dict[str, tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """One model per series, trained in parallel; returns one result row per series.
    Series whose fingerprint equals ``known[series_id]`` come back with status ``unchanged``;
    the others are warm-started from ``previous[series_id]`` (artifact URI, sha256) if given."""
    spec = spec or train_spec(cfg)
    keys = cfg.keys
    key_fields = [training_set.schema[k] for k in keys]
    schema = T.StructType([T.StructField(f.name, f.dataType) for f in key_fields] + [T.StructField(n, t) for n, t in RESULT_FIELDS])
    result = training_set.groupBy(*keys, "series_id").applyInPandas(_train_group_fn(spec, keys, known, previous), schema=schema)
    return result.toPandas()


def _read_bucket(path: str) -> pd.DataFrame:
    """One bucket folder of a local training set as Spark hands it to ``applyInPandas``:
    naive UTC ``datetime64[ns]`` dates (the session time zone is UTC), rows sorted by series
    and date as written."""
    import pyarrow.dataset as pads

    files = sorted(
        os.path.join(path, f) for f in os.listdir(path) if f.endswith(".parquet") and not f.startswith(("_", "."))
    )
    pdf = pads.dataset(files, format="parquet").to_table().to_pandas()
    ds = pdf["ds"]
    if getattr(ds.dtype, "tz", None) is not None:
        ds = ds.dt.tz_convert("UTC").dt.tz_localize(None)
    pdf["ds"] = ds.astype("datetime64[ns]")
    return pdf.sort_values(["series_id", "ds"], kind="stable").reset_index(drop=True)


def _train_buckets_fn(
    spec: TrainSpec, keys: list[str], columns: list[str], buckets: list[str], known: dict[str, str] | None,
    previous: dict[str, tuple[str, str]] | None, only: frozenset[str] | None,
):
    train_row = _train_row_fn(spec, keys, known, previous)

    def run(batches):
        import numpy as np

        for batch in batches:
            for i in batch["id"]:
                pdf = _read_bucket(buckets[int(i)])
                if only is not None:
                    pdf = pdf[pdf["series_id"].isin(only)].reset_index(drop=True)
                if pdf.empty:
                    continue
                sid = pdf["series_id"].to_numpy()
                starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
                ends = np.r_[starts[1:], len(sid)]
                yield pd.DataFrame([train_row(pdf.iloc[a:b]) for a, b in zip(starts, ends, strict=True)], columns=columns)

    return run


def train_local_buckets(
    spark: SparkSession, lake: Lake, cfg: DatasetConfig, run_date: date, spec: TrainSpec | None = None,
    known: dict[str, str] | None = None, previous: dict[str, tuple[str, str]] | None = None,
    only_series: list[str] | None = None,
) -> pd.DataFrame:
    """``train_model_set(read_training_set(...))`` for a local (or shared-volume) lake, without
    its shuffle: the training set is already bucketed by series, so each Spark task reads whole
    bucket folders with pyarrow and trains every series in them (a series is in one bucket).
    Same rows as ``train_model_set``, sorted by series id."""
    spec = spec or train_spec(cfg)
    keys = cfg.keys
    folder = lake.path("training_sets", cfg.name, f"run_date={run_date}")
    buckets = sorted(p for p in lake.fs.ls(folder, detail=False) if p.rsplit("/", 1)[-1].startswith("bucket="))
    files = sorted(f for b in buckets for f in lake.fs.ls(b, detail=False) if f.endswith(".parquet"))
    if not files:
        return pd.DataFrame(columns=[*keys, *(n for n, _ in RESULT_FIELDS)])
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import from_arrow_type

    # The key types as the groupBy path has them, from one footer (not a Spark job).
    sample = pq.read_schema(files[0])
    schema = T.StructType([T.StructField(k, from_arrow_type(sample.field(k).type)) for k in keys]
                          + [T.StructField(n, t) for n, t in RESULT_FIELDS])
    only = frozenset(only_series) if only_series is not None else None
    fn = _train_buckets_fn(spec, keys, schema.fieldNames(), buckets, known, previous, only)
    # Each task takes a contiguous run of bucket indices; as many tasks as the data needs
    # (at most spark.sql.shuffle.partitions, as the groupBy path has).
    rows = sum(pq.read_metadata(f).num_rows for f in files)
    result = spark.range(0, len(buckets), 1, task_count(spark, len(buckets), rows)).mapInPandas(fn, schema=schema).toPandas()
    return result.sort_values("series_id", kind="stable").reset_index(drop=True)


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
SCORED, SCORING_FAILED, SCORING_SKIPPED = "scored", "failed", "skipped"


def forecast_or_reason(model_json: str, horizon: int, nonnegative: bool, future_json: str | None = None):
    """One series' forecast arrays, or the reason it could not be forecast (never raises).
    ``future_json``: the series' known future regressor values, if the source has them."""
    try:
        model = json.loads(model_json)
        regressors = future_regressor_values(model, horizon, json.loads(future_json) if isinstance(future_json, str) else None)
        ds, yhat, lo, hi = forecast_arrays(model, horizon, regressors, nonnegative=nonnegative)
    except Exception as exc:  # one bad model fails its series only
        return None, f"forecast raised {type(exc).__name__}: {str(exc)[:300]}"
    if not (np.isfinite(yhat).all() and np.isfinite(lo).all() and np.isfinite(hi).all()):
        return None, "forecast has non-finite values"
    return (ds, yhat, lo, hi), None


def _score_fn(keys: list[str], horizon: int, nonnegative: bool, columns: list[str]):
    value_cols = ("ds", "yhat", "yhat_lower", "yhat_upper")
    meta_cols = (*keys, "series_id", "model_name", "model_version")

    def score(batches):
        # Numpy per series, one DataFrame per Arrow batch: no pandas round trip per series.
        for pdf in batches:
            cols: dict[str, list] = {c: [] for c in value_cols}
            meta: dict[str, list] = {c: [] for c in meta_cols}
            report: list[dict] = []
            for row in pdf.itertuples(index=False):
                ident = {c: getattr(row, c) for c in meta_cols}
                if not isinstance(row.model_json, str):
                    report.append(ident | {"status": SCORING_SKIPPED, "reason": "no production model", "prediction_rows": 0})
                    continue
                if not row.in_data:
                    report.append(ident | {"status": SCORING_SKIPPED, "reason": "not in the run date's training set",
                                           "prediction_rows": 0})
                    continue
                arrays, why = forecast_or_reason(row.model_json, horizon, nonnegative, row.future_regressors)
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
    predictions: pd.DataFrame  # keys, series_id, ds, yhat, yhat_lower, yhat_upper, model_name, model_version
    report: pd.DataFrame  # keys, series_id, model_name, model_version, status, reason, prediction_rows


def score_series(spark: SparkSession, models: pd.DataFrame, present: pd.DataFrame, cfg: DatasetConfig) -> ScoredSeries:
    """Forecast ``cfg.horizon`` periods for every series that has a production model and is
    ``present`` in the run date's data (keys and series_id, see ``training_set_series``), with
    one report row per series: scored, failed (with the reason: one bad model never fails the
    others) or skipped (no production model, or no data).

    ``models`` holds keys, series_id, model_name, model_version, the verified model JSON and
    optionally ``future_regressors`` (JSON of the series' known future regressor values).
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
            T.StructField("model_json", T.StringType()),
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
        _score_fn(keys, cfg.horizon, True, out_schema.fieldNames()), schema=out_schema
    ).toPandas()
    is_report = result["status"].notna()
    predictions = result.loc[~is_report, [*keys, *(n for n, _ in PREDICTION_FIELDS)]].reset_index(drop=True)
    report_cols = [*keys, "series_id", "model_name", "model_version", "status", "reason", "prediction_rows"]
    report = result.loc[is_report, report_cols].sort_values("series_id").reset_index(drop=True)
    return ScoredSeries(predictions, report)
