"""The training-set store: each run date's per-series training data in the lake — keys,
``series_id``, ``ds``, ``y`` and the regressors — bucketed by series (Spark's
``pmod(xxhash64(series_id), 32)``) and sorted by series and date in each bucket, so one series
is read from one bucket. How a set is built, read and trained from depends on where the lake
is; that strategy is chosen once, from the lake (``training_set_store``):

* ``LocalTrainingSets`` (a folder, or a volume every executor mounts at the same path): Spark
  tasks split the raw files by bucket and sort each bucket with pyarrow, in a staging folder
  swapped in by rename; training tasks read whole bucket folders (no shuffle).
* ``DriverTrainingSets`` (any other fsspec URL, ``abfs://``…): the driver reads the raw table
  through fsspec, Spark groups it, the driver writes the buckets back in the same layout.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from datetime import date

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mm_platform.config import DatasetConfig
from mm_platform.spark import train as spark_train
from mm_platform.spark.session import task_count
from mm_platform.lake import Lake  # (moves to stores/ with the layout)

N_BUCKETS = 32  # training-set files are bucketed by series so one series is read from one bucket


class TrainingSetStore(ABC):
    """The run dates' training sets of one dataset in one lake."""

    def __init__(self, lake: Lake, cfg: DatasetConfig):
        self.lake, self.cfg = lake, cfg

    def folder(self, run_date: date) -> str:
        return self.lake.path("training_sets", self.cfg.name, f"run_date={run_date}")

    def uri(self, run_date: date) -> str:
        return self.lake.uri("training_sets", self.cfg.name, f"run_date={run_date}")

    def _manifest_files(self) -> list[str]:
        files = sorted(self.lake.read_manifest(self.cfg.source.table)["files"].values())
        if not files:
            raise ValueError(f"the lake has no data for table {self.cfg.source.table!r}: materialize raw_sales first")
        return files

    @abstractmethod
    def build(self, spark: SparkSession, run_date: date) -> dict:
        """Build (or rebuild) the run date's set from the lake's raw table: ``{rows, series, path}``."""

    @abstractmethod
    def dataframe(self, spark: SparkSession, run_date: date) -> DataFrame:
        """The run date's set as a Spark DataFrame."""

    @abstractmethod
    def train(self, spark: SparkSession, run_date: date, known: dict[str, str] | None = None,
              previous: dict[str, tuple[str, str]] | None = None, only_series: list[str] | None = None) -> pd.DataFrame:
        """One model per series of the run date's set (or of ``only_series``): one result row each."""

    def _dataset(self, run_date: date):
        import pyarrow as pa
        import pyarrow.dataset as pads

        folder = self.folder(run_date)
        if not self.lake.fs.exists(folder):
            raise ValueError(f"no training set for {run_date} at {self.lake.uri('training_sets', self.cfg.name)}: "
                             "materialize training_sets first")
        partitioning = pads.partitioning(pa.schema([("bucket", pa.int32())]), flavor="hive")
        # (files starting with "_" or ".", like _SUCCESS, are skipped by default)
        return pads.dataset(folder, filesystem=self.lake.fs, format="parquet", partitioning=partitioning)

    def series(self, run_date: date) -> pd.DataFrame:
        """The partition keys and series ids the run date's set holds (one row each), read with
        pyarrow: only those columns, a fraction of a second even for tens of millions of rows,
        where a Spark job costs seconds of JVM time."""
        columns = [*self.cfg.keys, "series_id"]
        return self._dataset(run_date).to_table(columns=columns).group_by(columns).aggregate([]).to_pandas()[columns]

    def history(self, run_date: date, series_ids: list[str]) -> pd.DataFrame:
        """``series_id, ds, y`` of a few series (plots), read with pyarrow, not Spark."""
        import pyarrow.dataset as pads

        table = self._dataset(run_date).to_table(columns=["series_id", "ds", "y"],
                                                  filter=pads.field("series_id").isin(list(series_ids)))
        return table.to_pandas()


def training_set_store(lake: Lake, cfg: DatasetConfig) -> TrainingSetStore:
    """The strategy for this lake, chosen once."""
    return LocalTrainingSets(lake, cfg) if lake.is_local() else DriverTrainingSets(lake, cfg)


def _series_id_col(keys: list[str]):
    return F.concat_ws(",", *[F.concat(F.lit(f"{k}="), F.col(k).cast("string")) for k in keys])


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



def _write_buckets(lake: Lake, folder: str, rows: DataFrame) -> dict:
    """``training_rows`` collected in the driver and written through fsspec in the layout of
    the Arrow build (bucket=N/part-*.parquet, sorted by series and date, no bucket column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pdf = rows.toPandas()
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
    return {"rows": len(pdf), "series": int(pdf["series_id"].nunique())}


class LocalTrainingSets(TrainingSetStore):
    """A lake every Spark worker reads at the same path (a folder, a shared volume)."""

    def build(self, spark: SparkSession, run_date: date) -> dict:
        cfg, lake = self.cfg, self.lake
        raw_files = [lake.path("raw", cfg.source.table, rel) for rel in self._manifest_files()]
        raw_schema = _raw_schema(raw_files)
        cols = cfg.columns
        missing = [c for c in [*cols.keys, cols.date, cols.target, *cols.regressors] if c not in raw_schema.names]
        if missing:
            raise ValueError(f"the lake's {cfg.source.table!r} table lacks configured columns {missing}; it has {raw_schema.names}")
        if all(_arrow_key_type(raw_schema.field(k).type) for k in cfg.keys):
            return self._build_arrow(spark, run_date, raw_files, raw_schema)
        # Keys whose text form Arrow and Spark do not share: Spark SQL defines the series ids.
        raw = spark.read.parquet(*[lake.uri("raw", cfg.source.table, rel) for rel in self._manifest_files()])
        stats = _write_buckets(lake, self.folder(run_date), training_rows(raw, cfg, run_date))
        return stats | {"path": self.uri(run_date)}

    def dataframe(self, spark: SparkSession, run_date: date) -> DataFrame:
        return spark.read.parquet(self.uri(run_date))

    def train(self, spark, run_date, known=None, previous=None, only_series=None) -> pd.DataFrame:
        import pyarrow.parquet as pq
        from pyspark.sql.pandas.types import from_arrow_type

        fs, folder = self.lake.fs, self.folder(run_date)
        buckets = sorted(p for p in fs.ls(folder, detail=False) if p.rsplit("/", 1)[-1].startswith("bucket="))
        files = sorted(f for b in buckets for f in fs.ls(b, detail=False) if f.endswith(".parquet"))
        if not files:
            return pd.DataFrame(columns=[*self.cfg.keys, *(n for n, _ in spark_train.RESULT_FIELDS)])
        # The key types as the groupBy path has them, from one footer (not a Spark job).
        sample = pq.read_schema(files[0])
        key_schema = [(k, from_arrow_type(sample.field(k).type)) for k in self.cfg.keys]
        rows = sum(pq.read_metadata(f).num_rows for f in files)
        return spark_train.train_buckets(spark, buckets, key_schema, rows, self.cfg, known=known, previous=previous,
                                         only_series=only_series)

    def _build_arrow(self, spark: SparkSession, run_date: date, raw_files: list[str], raw_schema) -> dict:
        """Build the run date's training set in a staging folder with two stages of Spark tasks,
        then swap it in: readers see the previous set or the new one, never a partial one."""
        import shutil
        import uuid

        cfg, lake = self.cfg, self.lake
        final = self.folder(run_date)
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
        return {"rows": sum(r for r, _ in stats), "series": sum(s for _, s in stats), "path": self.uri(run_date)}


class DriverTrainingSets(TrainingSetStore):
    """Any other fsspec lake (``abfs://``…): this Spark has no connector for it, so rows pass
    through the driver, read and written with pyarrow through fsspec (every master, Spark
    Connect too)."""

    def build(self, spark: SparkSession, run_date: date) -> dict:
        cfg, lake = self.cfg, self.lake
        self._manifest_files()  # (raises when the raw table is empty)
        cols = cfg.columns
        wanted = [cols.date, cols.target, *cols.keys, *cols.regressors]
        pdf = lake.read_raw(cfg.source.table, columns=wanted, filters=[(cols.date, "<=", pd.Timestamp(run_date))])
        pdf[cols.date] = pd.to_datetime(pdf[cols.date]).astype("datetime64[us]")
        stats = _write_buckets(lake, self.folder(run_date), training_rows(spark.createDataFrame(pdf), cfg, run_date))
        return stats | {"path": self.uri(run_date)}

    def dataframe(self, spark: SparkSession, run_date: date) -> DataFrame:
        pdf = self._dataset(run_date).to_table().to_pandas()
        pdf["ds"] = pd.to_datetime(pdf["ds"]).astype("datetime64[us]")
        return spark.createDataFrame(pdf)

    def train(self, spark, run_date, known=None, previous=None, only_series=None) -> pd.DataFrame:
        training_set = self.dataframe(spark, run_date)
        if only_series is not None:
            training_set = training_set.where(F.col("series_id").isin(list(only_series)))
        return spark_train.train_grouped(training_set, self.cfg, known=known, previous=previous)
