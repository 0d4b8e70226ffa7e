"""The training-set store: each run date's per-series training data in the lake — keys,
``series_id``, ``ds``, ``y`` and the regressors — bucketed by series (Spark's
``pmod(xxhash64(series_id), 32)``) and sorted by series and date in each bucket, so one series
is read from one bucket, and from one file of it (a large bucket is several files, cut between
series: training deals files, not buckets, to its tasks).

One data path for every lake fsspec can open (``FsspecTrainingSets``): Spark tasks read the
raw month files, write the bucket fragments and the sorted buckets, and training tasks read
their buckets, each through fsspec opened in the executor from its own environment
(``lake.task_filesystem``). The driver handles only the manifest, file lists, footers and
per-series results — never data rows. What differs by filesystem is only how a new set
replaces the old one:

* a local folder or a volume every executor mounts at the same path: built in a staging
  folder and swapped in by two folder renames (atomic per rename);
* an object store (``abfs://``…), where a "rename" is a copy of every blob: the set is written
  to a new ``run_date=…/v=<uuid>`` folder and then a one-blob pointer (``run_date=…/_CURRENT``)
  is switched to it, a single PUT that readers see before or after, never half-way; older
  versions are deleted after the switch.

``storage.lake_io: spark`` (``SparkTrainingSets``) keeps the layout and the swap but has
Spark's own Parquet reader and writer move the rows, for clusters with a connector for the lake
(hadoop-azure on Databricks and Synapse).
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
from mm_platform.core.errors import UserError, one_line
from mm_platform.spark import train as spark_train
from mm_platform.spark.session import task_count
from mm_platform.stores.lake import (
    Lake,
    ParquetSink,
    arrow_filesystem,
    read_concurrently,
    read_parquet,
    task_filesystem,
    write_parquet,
)

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
            raise UserError(f"the lake has no data for table {self.cfg.source.table!r}: materialize raw_sales first")
        return files

    @abstractmethod
    def build(self, spark: SparkSession, run_date: date) -> dict:
        """Build (or rebuild) the run date's set from the lake's raw table: ``{rows, series, path}``."""

    @abstractmethod
    def dataframe(self, spark: SparkSession, run_date: date) -> DataFrame:
        """The run date's set as a Spark DataFrame."""

    @abstractmethod
    def train(self, spark: SparkSession, run_date: date, known: dict[str, str] | None = None,
              previous: dict[str, tuple[str, str]] | None = None, only_series: list[str] | None = None,
              spec=None, shared=None, artifacts=None) -> pd.DataFrame:
        """One model per series of the run date's set (or of ``only_series``): one result row each.
        ``spec``: a ``TrainSpec`` other than the config's (e.g. with auto's pooled prior);
        ``shared``: the global family's shared models (``spark.global_train.SharedSetup``);
        ``artifacts``: the folder the tasks write the models into (``stores.artifacts.TaskArtifacts``)."""

    def _dataset(self, run_date: date):
        import pyarrow as pa
        import pyarrow.dataset as pads

        folder = self.folder(run_date)
        if not self.lake.fs.exists(folder):
            raise UserError(f"no training set for {run_date} at {self.lake.uri('training_sets', self.cfg.name)}: "
                             "materialize training_sets first")
        partitioning = pads.partitioning(pa.schema([("bucket", pa.int32())]), flavor="hive")
        # (files starting with "_" or ".", like _SUCCESS, are skipped by default)
        return pads.dataset(folder, filesystem=self.lake.fs, format="parquet", partitioning=partitioning)

    def series(self, run_date: date) -> pd.DataFrame:
        """The partition keys and series ids the run date's set holds (one row each), read with
        pyarrow, not a Spark job: each bucket's series index (one request per bucket), or, for
        a bucket without one (a set built before the index, or by Spark's writer), only those
        columns of its files."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = [*self.cfg.keys, "series_id"]
        fs = self.lake.fs
        fragments = list(self._dataset(run_date).get_fragments())
        folders = sorted({f.path.rsplit("/", 1)[0] for f in fragments})

        def index(folder):
            try:
                return read_parquet(fs, f"{folder}/{SERIES_INDEX}", columns=columns)
            except FileNotFoundError:
                return None

        indexes = dict(zip(folders, read_concurrently(index, folders), strict=True))
        parts = [t for t in indexes.values() if t is not None]
        # One batch of one file at a time (a series is in one bucket): the driver holds a
        # batch's keys and the distinct series, whatever the length of the histories.
        for f in fragments:
            if indexes[f.path.rsplit("/", 1)[0]] is not None:
                continue
            with f.filesystem.open_input_file(f.path) as source:
                for batch in pq.ParquetFile(source).iter_batches(batch_size=65_536, columns=columns, use_threads=False):
                    parts.append(pa.Table.from_batches([batch]).group_by(columns).aggregate([]))
        if not parts:
            return pd.DataFrame(columns=columns)
        return pa.concat_tables(parts).group_by(columns).aggregate([]).to_pandas()[columns]

    def history(self, run_date: date, series_ids: list[str]) -> pd.DataFrame:
        """``series_id, ds, y`` of a few series (plots), read with pyarrow, not Spark."""
        import pyarrow.dataset as pads

        # Only the buckets holding these series are opened (a series is in one bucket).
        buckets = sorted({int(b) for b in _bucket_of(list(series_ids))})
        table = self._dataset(run_date).to_table(
            columns=["series_id", "ds", "y"],
            filter=pads.field("bucket").isin(buckets) & pads.field("series_id").isin(list(series_ids)))
        return table.to_pandas()


def training_set_store(lake: Lake, cfg: DatasetConfig) -> TrainingSetStore:
    """The store for this lake: one data path for every fsspec lake, or Spark's own Parquet
    I/O when the config says the cluster has a connector for it (``storage.lake_io: spark``)."""
    if cfg.storage.lake_io == "spark":
        return SparkTrainingSets(lake, cfg)
    return FsspecTrainingSets(lake, cfg)


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


def _raw_schema(lake: Lake, table: str):
    """One schema for all raw files (the manifest's record of them, or their footers): int32
    in one month and int64 in another become int64, as they would have to for Spark."""
    import pyarrow as pa

    return pa.unify_schemas(lake.raw_schemas(table), promote_options="permissive")


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
POINTER = "_CURRENT"  # object stores: names the run date's current version folder


def _split_raw_files(fs, files: list[str], raw_schema, cfg: DatasetConfig, run_date: date, out: str, task: int
                     ) -> tuple[int, list[int]]:
    """Map stage: raw files -> one fragment per bucket (``out/bucket=N/part-<task>.parquet``)
    on ``fs``; the rows kept and the buckets written. Rows are buffered up to
    ``SPLIT_FLUSH_ROWS`` and written one row group per bucket: a row group per raw file and
    bucket (4,224 for 132 files) cost more than the data itself."""
    import pyarrow as pa

    cols = cfg.columns
    wanted = [*cols.keys, cols.date, cols.target, *cols.regressors]
    writers: dict[int, ParquetSink] = {}
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
                writers[b] = ParquetSink(fs, f"{out}/bucket={b}/part-{task:05d}.parquet", table.schema)
            writers[b].write(table.slice(start, end - start))

    try:
        for path in files:
            table = read_parquet(fs, path, columns=wanted)
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
    return rows, sorted(writers)


# Rows of a bucket file: a bucket larger than this is written as several files, cut between
# series, so training can deal a large set to more tasks than there are buckets.
BUCKET_FILE_ROWS = 1_000_000
# Each bucket's series (keys and id, one row each; a Parquet file), written by the build beside
# its files: the driver lists a set's series from these, not by reading the ids of every row.
# Not data: pyarrow's datasets and Spark's reader skip "_" files, and a "*.parquet" glob misses it.
SERIES_INDEX = "_series_index"


def _sort_bucket(fs, fragments: list[str], out: str, file_rows: int, keys: list[str]) -> tuple[int, int]:
    """Reduce stage: one bucket's fragments -> its files (on ``fs``), sorted by series and
    date, each of at most ``file_rows`` rows unless one series has more (a series is never
    cut), and its series index (``SERIES_INDEX``: the keys and id of each series, one row
    each); its rows and series (a series is in one bucket, so the counts add up across
    buckets)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = read_parquet(fs, sorted(fragments))
    # Sort by (rank of the series id, date): integers sort at half the cost of the strings.
    series = pc.dictionary_encode(table["series_id"]).combine_chunks()
    rank = pc.rank(series.dictionary, sort_keys="ascending", tiebreaker="dense").to_numpy()
    ranks = rank[series.indices.to_numpy()]
    order = np.lexsort((table["ds"].combine_chunks().cast(pa.int64()).to_numpy(), ranks))
    table, ranks = table.take(order), ranks[order]
    firsts = _series_starts(ranks)
    for i, (start, end) in enumerate(_file_bounds(firsts, len(ranks), file_rows)):
        write_parquet(fs, f"{out}/part-{i:05d}.parquet", table.slice(start, end - start))
    write_parquet(fs, f"{out}/{SERIES_INDEX}", table.select([*keys, "series_id"]).take(firsts))
    return table.num_rows, len(series.dictionary)


def _series_starts(sorted_series: np.ndarray) -> np.ndarray:
    """The first row of each series, over rows sorted by series."""
    if not len(sorted_series):
        return np.array([], dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_series[1:] != sorted_series[:-1]])


def _file_bounds(starts: np.ndarray, n: int, most: int) -> list[tuple[int, int]]:
    """``(start, end)`` row ranges of at most ``most`` rows over ``n`` rows sorted by series
    whose series begin at ``starts``, cut only where the series changes (a longer series is
    one range of its own)."""
    if n <= most:
        return [(0, n)]
    bounds, start = [], 0
    while start < n:
        # the last series start at or before start + most that is past start; else the next one
        i = np.searchsorted(starts, start + most, side="right") - 1
        end = int(starts[i]) if starts[i] > start else (int(starts[i + 1]) if i + 1 < len(starts) else n)
        if start + most >= n:
            end = n
        bounds.append((start, end))
        start = end
    return bounds


# Spark tasks report a user error (missing fsspec package, missing credentials) as a status
# row with ``error`` set: the driver raises it as one line, not as a worker traceback.
SPLIT_SCHEMA = "task long, rows long, buckets array<int>, error string"
SORT_SCHEMA = "rows long, series long, error string"


def _guarded(run, columns: list[str]):
    def guarded(batches):
        try:
            yield from run(batches)
        except UserError as err:
            yield pd.DataFrame({c: pd.Series([None], dtype=object) for c in columns} | {"error": [one_line(err)]})

    return guarded


def _split_task_fn(url: str, files: list[str], raw_schema, cfg: DatasetConfig, run_date: date, out: str):
    def run(batches):
        ids = [int(i) for batch in batches for i in batch["id"]]
        if ids:
            fs, _ = task_filesystem(url)
            rows, buckets = _split_raw_files(fs, [files[i] for i in ids], raw_schema, cfg, run_date, out, ids[0])
            yield pd.DataFrame({"task": [ids[0]], "rows": [rows], "buckets": [buckets], "error": [None]})

    return _guarded(run, ["task", "rows", "buckets", "error"])


def _sort_task_fn(url: str, fragments: dict[int, list[str]], out: str, keys: list[str]):
    buckets = sorted(fragments)
    file_rows = BUCKET_FILE_ROWS  # the driver's setting, shipped with the function

    def run(batches):
        fs = None
        for batch in batches:
            for i in batch["id"]:
                fs = fs or task_filesystem(url)[0]
                b = buckets[int(i)]
                rows, series = _sort_bucket(fs, fragments[b], f"{out}/bucket={b}", file_rows, keys)
                yield pd.DataFrame({"rows": [rows], "series": [series], "error": [None]})

    return _guarded(run, ["rows", "series", "error"])


def _read_files_fn(url: str, files: list[tuple[str, int]], columns: list[str]):
    """A task reading whole training-set files (``dataframe``), with their bucket."""
    def run(batches):

        fs = None
        for batch in batches:
            for i in batch["id"]:
                fs = fs or task_filesystem(url)[0]
                path, bucket = files[int(i)]
                pdf = read_parquet(fs, path).to_pandas()
                yield pdf.assign(bucket=np.int32(bucket))[columns]

    return run


def _run_tasks(spark: SparkSession, n: int, rows: int, fn, schema: str) -> list:
    """Run ``fn`` over ``range(n)`` in Spark tasks; its status rows, or the first task's user
    error raised here as one line."""
    result = spark.range(0, n, 1, task_count(spark, n, rows)).mapInPandas(fn, schema).collect()
    errors = [r.error for r in result if r.error]
    if errors:
        raise UserError(errors[0])
    return result


def _write_buckets(lake: Lake, folder: str, rows: DataFrame) -> dict:
    """``training_rows`` collected in the driver and written in the layout of the Arrow build
    (bucket=N/part-*.parquet, sorted by series and date, no bucket column). Only for keys whose
    text form Arrow and Spark do not share (not int64/string, which ingestion writes) on a
    local lake: Spark SQL then defines the series ids."""
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


class FsspecTrainingSets(TrainingSetStore):
    """Any lake fsspec opens: a folder, a shared volume, ``abfs://``… (see the module docstring).
    ``object_store`` (default: the lake is not local) selects the version-and-pointer swap and
    the executor-side ``dataframe``; tests force it on a local folder."""

    def __init__(self, lake: Lake, cfg: DatasetConfig, *, object_store: bool | None = None):
        super().__init__(lake, cfg)
        self.object_store = (not lake.is_local()) if object_store is None else object_store

    def _run_folder(self, run_date: date) -> str:
        return self.lake.path("training_sets", self.cfg.name, f"run_date={run_date}")

    def folder(self, run_date: date) -> str:
        base = self._run_folder(run_date)
        if not self.object_store:
            return base
        try:
            version = self.lake.fs.cat_file(f"{base}/{POINTER}").decode().strip()
        except FileNotFoundError:
            return base  # no set yet (or one written before versions: bucket folders right here)
        return f"{base}/{version}"

    def uri(self, run_date: date) -> str:
        return self.lake.uri_of(self.folder(run_date))

    def _bucket_files(self, run_date: date) -> list[tuple[str, int]]:
        """(file, bucket) of every file of the run date's set (a listing, no data)."""
        fs, folder = self.lake.fs, self.folder(run_date)
        if not fs.exists(folder):
            raise UserError(f"no training set for {run_date} at {self.lake.uri('training_sets', self.cfg.name)}: "
                            "materialize training_sets first")
        buckets = sorted(p for p in fs.ls(folder, detail=False) if p.rsplit("/", 1)[-1].startswith("bucket="))
        return sorted((f, int(b.rsplit("=", 1)[1])) for b in buckets for f in fs.ls(b, detail=False)
                      if f.endswith(".parquet") and not f.rsplit("/", 1)[-1].startswith(("_", ".")))

    def build(self, spark: SparkSession, run_date: date) -> dict:
        cfg, lake = self.cfg, self.lake
        raw_files = [lake.path("raw", cfg.source.table, rel) for rel in self._manifest_files()]
        raw_schema = _raw_schema(lake, cfg.source.table)
        cols = cfg.columns
        missing = [c for c in [*cols.keys, cols.date, cols.target, *cols.regressors] if c not in raw_schema.names]
        if missing:
            raise UserError(f"the lake's {cfg.source.table!r} table lacks configured columns {missing}; it has {raw_schema.names}")
        odd = [k for k in cfg.keys if not _arrow_key_type(raw_schema.field(k).type)]
        if not odd:
            return self._build(spark, run_date, raw_files, raw_schema)
        if self.object_store:
            raise UserError(f"the lake's {cfg.source.table!r} table has keys {odd} of type "
                            f"{[str(raw_schema.field(k).type) for k in odd]}; training sets need int64 or string keys "
                            "(ingestion writes them so: re-copy the source into a new lake)")
        # Keys whose text form Arrow and Spark do not share, in a lake written before the
        # ingestion contract: Spark SQL defines the series ids (local lakes only).
        raw = spark.read.parquet(*[lake.uri_of(f) for f in raw_files])
        stats = _write_buckets(lake, self.folder(run_date), training_rows(raw, cfg, run_date))
        return stats | {"path": self.uri(run_date)}

    def _build(self, spark: SparkSession, run_date: date, raw_files: list[str], raw_schema) -> dict:
        """Build the run date's set with two stages of Spark tasks (split raw files by bucket,
        sort each bucket), then make it current: readers see the previous set or the new one,
        never a partial one."""
        import uuid

        cfg, lake, fs = self.cfg, self.lake, self.lake.fs
        tag = uuid.uuid4().hex[:12]
        base = self._run_folder(run_date)
        staging = lake.path("training_sets", cfg.name, f".building-run_date={run_date}-{tag}")
        out = f"{base}/v={tag}" if self.object_store else f"{staging}/out"
        rows = int(lake.read_manifest(cfg.source.table).get("rows") or 0)
        committed = False
        try:
            split = _split_task_fn(lake.url, raw_files, raw_schema, cfg, run_date, f"{staging}/map")
            written = _run_tasks(spark, len(raw_files), rows, split, SPLIT_SCHEMA)
            # The fragment files follow from what each task reports: no listing of the store.
            fragments: dict[int, list[str]] = {}
            for r in written:
                for b in r.buckets or []:
                    fragments.setdefault(int(b), []).append(f"{staging}/map/bucket={b}/part-{r.task:05d}.parquet")
            stats = [(0, 0)]
            if fragments:
                sort = _sort_task_fn(lake.url, fragments, out, list(cfg.keys))
                stats += [(r.rows, r.series) for r in _run_tasks(spark, len(fragments), rows, sort, SORT_SCHEMA)]
            fs.makedirs(out, exist_ok=True)
            with fs.open(f"{out}/_SUCCESS", "wb"):
                pass
            self._commit(run_date, out)
            committed = True
        finally:
            self._remove_leftovers(fs, staging, out, committed)
        return {"rows": sum(r for r, _ in stats), "series": sum(s for _, s in stats), "path": self.uri(run_date)}

    def _remove_leftovers(self, fs, staging: str, out: str, committed: bool) -> None:
        """After a build (either store): the staging folder, and on an object store the new
        set's folder too unless it was committed."""
        for leftover in [staging] + ([] if committed or not self.object_store else [out]):
            try:
                fs.rm(leftover, recursive=True)
            except FileNotFoundError:
                pass

    def _commit(self, run_date: date, out: str) -> None:
        fs, final = self.lake.fs, self._run_folder(run_date)
        if not self.object_store:
            # A local or mounted folder renames atomically. Two renames: a crash between them
            # leaves no set for the run date (a rebuild makes it again), never a mix.
            old = f"{out}.old"
            if os.path.exists(final):
                os.rename(final, old)
            os.rename(out, final)
            return
        # Object stores: one PUT of the pointer is the commit point; then older versions (and
        # bucket folders of a set written before versions) are deleted.
        version = out.rsplit("/", 1)[1]
        fs.pipe_file(f"{final}/{POINTER}", version.encode())
        for p in fs.ls(final, detail=False):
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if name not in (version, POINTER):
                fs.rm(p, recursive=True)

    def dataframe(self, spark: SparkSession, run_date: date) -> DataFrame:
        if not self.object_store:
            return spark.read.parquet(self.uri(run_date))
        # Spark here has no connector for the object store: tasks read the files through fsspec.
        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyspark.sql.pandas.types import from_arrow_schema

        files = self._bucket_files(run_date)
        if not files:
            raise UserError(f"the training set for {run_date} at {self.uri(run_date)} is empty")
        schema = pq.read_schema(files[0][0], filesystem=arrow_filesystem(self.lake.fs))
        schema = pa.schema([*(f for f in schema if f.name != "bucket"), pa.field("bucket", pa.int32())])
        spark_schema = from_arrow_schema(schema)
        fn = _read_files_fn(self.lake.url, files, schema.names)
        return spark.range(0, len(files), 1, len(files)).mapInPandas(fn, spark_schema)

    def train(self, spark, run_date, known=None, previous=None, only_series=None, spec=None, shared=None,
              artifacts=None) -> pd.DataFrame:
        import pyarrow.parquet as pq
        from pyspark.sql.pandas.types import from_arrow_type

        files = self._bucket_files(run_date)
        if not files:
            return pd.DataFrame(columns=[*self.cfg.keys, *(n for n, _ in spark_train.RESULT_FIELDS)])
        afs = arrow_filesystem(self.lake.fs)
        footers = read_concurrently(lambda f: pq.read_metadata(f, filesystem=afs), [f for f, _ in files])
        # The key types as the groupBy path has them, from a footer (not a Spark job).
        sample = footers[0].schema.to_arrow_schema()
        key_schema = [(k, from_arrow_type(sample.field(k).type)) for k in self.cfg.keys]
        # Each file holds whole series: the tasks get files, dealt by their rows.
        return spark_train.train_buckets(spark, [self.lake.uri_of(f) for f, _ in files], key_schema,
                                         sum(m.num_rows for m in footers), self.cfg, spec=spec, known=known,
                                         previous=previous, only_series=only_series, shared=shared,
                                         sizes=[m.num_rows for m in footers], artifacts=artifacts)


class SparkTrainingSets(FsspecTrainingSets):
    """``storage.lake_io: spark``: the layout, the swap and the driver's part (manifest,
    pointer, listings, footers) of ``FsspecTrainingSets``, with every data row read and
    written by Spark's own Parquet I/O on the configured lake URL (``Lake.spark_uri``) — for
    clusters that ship a connector, as Databricks and Synapse ship hadoop-azure for
    ``abfss://``. The executors then need no fsspec package or credential of their own; the
    driver still opens the lake with fsspec for the manifest and the pointer."""

    def build(self, spark: SparkSession, run_date: date) -> dict:
        import uuid

        cfg, lake, fs = self.cfg, self.lake, self.lake.fs
        raw_files = [lake.path("raw", cfg.source.table, rel) for rel in self._manifest_files()]
        raw = spark.read.parquet(*[lake.spark_uri(f) for f in raw_files])
        cols = cfg.columns
        missing = [c for c in [*cols.keys, cols.date, cols.target, *cols.regressors] if c not in raw.columns]
        if missing:
            raise UserError(f"the lake's {cfg.source.table!r} table lacks configured columns {missing}; it has {raw.columns}")
        tag = uuid.uuid4().hex[:12]
        base = self._run_folder(run_date)
        staging = lake.path("training_sets", cfg.name, f".building-run_date={run_date}-{tag}")
        out = f"{base}/v={tag}" if self.object_store else f"{staging}/out"
        rows = int(lake.read_manifest(cfg.source.table).get("rows") or 0)
        committed = False
        try:
            # The Arrow build's layout: bucket=N/ folders, one file per bucket (each bucket goes
            # to one partition), sorted by series and date; naive timestamps as pyarrow writes them.
            data = training_rows(raw, cfg, run_date).withColumn("ds", F.col("ds").cast("timestamp_ntz"))
            (data.repartition(task_count(spark, N_BUCKETS, rows), "bucket")
             .sortWithinPartitions("bucket", "series_id", "ds")
             .write.partitionBy("bucket").mode("overwrite").parquet(lake.spark_uri(out)))
            # Two numbers back to the driver (a Spark job over the written series ids).
            stats = spark.read.parquet(lake.spark_uri(out)).agg(
                F.count(F.lit(1)).alias("rows"), F.countDistinct("series_id").alias("series")).first()
            self._commit(run_date, out)
            committed = True
        finally:
            self._remove_leftovers(fs, staging, out, committed)
        return {"rows": int(stats["rows"]), "series": int(stats["series"]), "path": self.uri(run_date)}

    def dataframe(self, spark: SparkSession, run_date: date) -> DataFrame:
        folder = self.folder(run_date)
        if not self.lake.fs.exists(folder):
            raise UserError(f"no training set for {run_date} at {self.lake.uri('training_sets', self.cfg.name)}: "
                            "materialize training_sets first")
        return spark.read.parquet(self.lake.spark_uri(folder))

    def train(self, spark, run_date, known=None, previous=None, only_series=None, spec=None, shared=None,
              artifacts=None) -> pd.DataFrame:
        # Spark's reader splits files as it likes, so series are grouped by a shuffle
        # (``train_grouped``): the same rows as reading whole buckets (test_training_paths.py).
        data = self.dataframe(spark, run_date)
        if only_series is not None:
            data = data.where(F.col("series_id").isin(list(only_series)))
        result = spark_train.train_grouped(data, self.cfg, spec=spec, known=known, previous=previous, shared=shared,
                                           artifacts=artifacts)
        return result.sort_values("series_id", kind="stable").reset_index(drop=True)


# The name the local lake's store had before one path served every lake.
LocalTrainingSets = FsspecTrainingSets
