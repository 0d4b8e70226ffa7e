"""The lake: Parquet files in a folder or any fsspec URL (``abfs://container/path``).

Credentials never come from the config: for ``abfs://``/``abfss://``/``az://`` lakes (Azure
Data Lake Storage / Blob through adlfs) they are read from the environment, in this order:
``AZURE_STORAGE_CONNECTION_STRING``; ``AZURE_STORAGE_ACCOUNT_NAME`` (or the account in the URL,
``abfs://container@account.dfs.core.windows.net/path``) with ``AZURE_STORAGE_ACCOUNT_KEY`` or
``AZURE_STORAGE_SAS_TOKEN``; a service principal (``AZURE_STORAGE_CLIENT_ID``/``_SECRET``/
``TENANT_ID``); otherwise ``DefaultAzureCredential`` (managed identity, workload identity,
``az login``...).

Raw tables are stored one file per month and described by a small JSON manifest. A write
puts new month files beside the old ones and then replaces the manifest in one rename, so
a reader (or a run killed mid-copy) sees the table either as it was or fully updated,
never half. Upserts on (keys, date) make re-copying the same rows a no-op. Ingestion passes
the table's column types (the ingestion contract, kept in the manifest as ``contract``) and
every month file written, old rows included, is cast to them: one odd batch never changes a
column's type. Quarantined rows carry a ``row_hash`` so a row read again is kept once.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterable

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mm_platform.core.errors import UserError
from mm_platform.core.faults import fault_point

MANIFEST = "_manifest.json"
AZURE_PROTOCOLS = ("abfs", "abfss", "az")
_SECRET_MARKERS = ("accountkey=", "sharedaccesssignature=", "sig=", "client_secret=")


class LakeCredentialsError(UserError):
    """Credentials were put in the lake URL instead of the environment."""


def storage_options(url: str) -> dict:
    """Filesystem options for the lake at ``url``; credentials only from the environment."""
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    if protocol not in AZURE_PROTOCOLS:
        return {}
    if any(m in url.lower() for m in _SECRET_MARKERS):
        raise LakeCredentialsError(
            "the lake URL carries a credential; set AZURE_STORAGE_CONNECTION_STRING or "
            "AZURE_STORAGE_ACCOUNT_NAME/AZURE_STORAGE_ACCOUNT_KEY in the environment instead"
        )
    env = os.environ
    if env.get("AZURE_STORAGE_CONNECTION_STRING"):
        return {"connection_string": env["AZURE_STORAGE_CONNECTION_STRING"]}
    opts: dict = {}
    if env.get("AZURE_STORAGE_ACCOUNT_NAME"):
        opts["account_name"] = env["AZURE_STORAGE_ACCOUNT_NAME"]
    if env.get("AZURE_STORAGE_ACCOUNT_KEY"):
        opts["account_key"] = env["AZURE_STORAGE_ACCOUNT_KEY"]
    elif env.get("AZURE_STORAGE_SAS_TOKEN"):
        opts["sas_token"] = env["AZURE_STORAGE_SAS_TOKEN"]
    elif not env.get("AZURE_STORAGE_CLIENT_ID"):
        opts["anon"] = False  # adlfs then authenticates with DefaultAzureCredential
    return opts


# What a deployment sets on every executor for each scheme's credentials (docs/deploying.md).
_EXECUTOR_CREDENTIALS = {
    p: "AZURE_STORAGE_CONNECTION_STRING (or AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or "
       "AZURE_STORAGE_SAS_TOKEN)" for p in AZURE_PROTOCOLS
}


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def arrow_filesystem(fs):
    """The ``filesystem`` argument pyarrow should get for paths of ``fs``: None (pyarrow's own
    local I/O, faster than going through fsspec) for a local filesystem, else ``fs``."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return None if protocol in ("file", "local") else fs


def _file_schemas(manifest: dict, files: dict[str, str], new_files: dict[str, str], schemas) -> dict[str, str]:
    """The manifest's ``schemas`` (month file -> its schema) after a write: the new files'
    (``schemas``: one schema for all, or month -> schema), the kept files' as they were."""
    kept = {rel: text for rel, text in (manifest.get("schemas") or {}).items() if rel in files.values()}
    for m, rel in new_files.items():
        kept[rel] = _schema_text(_as_written(schemas if isinstance(schemas, pa.Schema) else schemas[m]))
    return kept


def read_concurrently(read, items: list) -> list:
    """``read`` of every item (a file's footer…), concurrently: on an object store each is a
    round trip."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(16, max(1, len(items)))) as pool:
        return list(pool.map(read, items))


def _schema_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.remove_metadata().serialize().to_pybytes()).decode()


def _schema_of(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def _as_written(schema: pa.Schema) -> pa.Schema:
    """The schema a month file has once written (``Lake._write_month`` stores timestamps in
    microseconds, the finest unit Spark reads)."""
    return pa.schema([f.with_type(pa.timestamp("us", f.type.tz)) if pa.types.is_timestamp(f.type) else f for f in schema])


def read_parquet(fs, paths, columns: list[str] | None = None) -> pa.Table:
    """Parquet files of ``fs`` (a path, or several read in order into one table). On an
    object store the files are fetched whole, concurrently, one request each, and parsed in
    memory: read through fsspec, pyarrow asks for each file's size, footer and column chunks
    separately (about ten requests a file, each a round trip to the store). The files of the
    data path are small enough for that: a raw month, a bucket's fragment, a bucket."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    if arrow_filesystem(fs) is None:
        return pq.read_table(paths if len(paths) > 1 else paths[0], columns=columns, partitioning=None, use_threads=False)
    blobs = fs.cat(paths) if len(paths) > 1 else {paths[0]: fs.cat_file(paths[0])}
    tables = [pq.read_table(pa.BufferReader(blobs[_cat_key(fs, p, blobs)]), columns=columns, use_threads=False) for p in paths]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")


def _cat_key(fs, path: str, blobs: dict) -> str:
    # fsspec's cat keys its result by the stripped path.
    return path if path in blobs else fs._strip_protocol(path)


class ParquetSink:
    """One Parquet file written a row group at a time: straight to a local path, or, on an
    object store, into memory and stored with one request when closed (no folder markers,
    no block list)."""

    def __init__(self, fs, path: str, schema: pa.Schema):
        self.fs, self.path = fs, path
        self.local = arrow_filesystem(fs) is None
        if self.local:
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self.buffer = None
            self.writer = pq.ParquetWriter(path, schema)
        else:
            self.buffer = pa.BufferOutputStream()
            self.writer = pq.ParquetWriter(self.buffer, schema)

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def close(self) -> None:
        self.writer.close()
        if self.buffer is not None:
            self.fs.pipe_file(self.path, self.buffer.getvalue().to_pybytes())
            self.buffer = None


def write_parquet(fs, path: str, table: pa.Table) -> None:
    """One Parquet file (``ParquetSink``'s requests)."""
    sink = ParquetSink(fs, path, table.schema)
    try:
        sink.write(table)
    finally:
        sink.close()


def task_filesystem(url: str):
    """``(fs, path)`` of a lake URL, opened inside a Spark task from the executor's own
    environment (credentials never travel from the driver). A missing filesystem package or
    credential raises a one-line ``UserError`` naming the scheme, what is missing and where to
    set it; the task returns it as a status row and the driver raises it."""
    from fsspec.registry import known_implementations

    scheme = _scheme(url)
    where = f"lake URL {url.split('?', 1)[0]}"
    try:
        fs, path = fsspec.core.url_to_fs(url, **storage_options(url))
    except ImportError:
        package = known_implementations.get(scheme, {}).get("class", scheme).split(".", 1)[0]
        raise UserError(
            f"{where}: the Spark executors cannot import {package}, the fsspec package for {scheme}://; install it in "
            "the executors' Python environment (the cluster's libraries, or spark.pyspark.python)"
        ) from None
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - e.g. adlfs without an account or credential
        raise UserError(_credentials_message(where, scheme, err)) from None
    if scheme in _EXECUTOR_CREDENTIALS:
        try:  # one request: bad credentials fail here, in the task's first line, not mid-write
            fs.exists(path)
        except Exception as err:  # noqa: BLE001
            raise UserError(_credentials_message(where, scheme, err)) from None
    return fs, path


def _credentials_message(where: str, scheme: str, err: BaseException) -> str:
    from mm_platform.core.errors import one_line

    needed = _EXECUTOR_CREDENTIALS.get(scheme, "the credentials of its fsspec package")
    present = sorted(k for k in os.environ if k.startswith("AZURE_STORAGE_"))
    state = f"the executors have {', '.join(present)} but access failed" if present else "no credential is set on the executors"
    return (f"{where}: {scheme}:// needs {needed} in every Spark executor's environment and {state} "
            f"({one_line(err)[:200]}); set it with spark.executorEnv.<VAR> in spark.conf or the cluster's "
            "environment (docs/deploying.md)")


_CONTAINERS_SEEN: set[str] = set()


def _driver_memory_pool() -> None:
    """Arrow memory of the process that opens a ``Lake`` (the driver, the dashboard) comes
    from the system allocator. pyarrow's default pool keeps freed pages, so the driver's peak
    RSS grew with the size of every file it had read keys or footers from (+26 MB from 400 to
    4,000 days per series in ``TrainingSetStore.series`` alone, docs/performance.md); malloc
    gives them back. Spark's Python workers, which do the bulk Arrow work, keep the default."""
    if pa.default_memory_pool().backend_name != "system":
        pa.set_memory_pool(pa.system_memory_pool())


class Lake:
    def __init__(self, url: str):
        _driver_memory_pool()
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options(self.url))
        if self.url.split("://", 1)[0].lower() in AZURE_PROTOCOLS:
            self._ensure_container()

    def _ensure_container(self) -> None:
        # Blob storage has no folders: writes under a missing container fail, and adlfs'
        # makedirs does not create one (mkdir does). Checked once per container and process.
        container = self.root.split("/", 1)[0]
        key = f"{self.url.split('://', 1)[0]}://{container}"
        if key in _CONTAINERS_SEEN:
            return
        try:
            if not self.fs.exists(container):
                self.fs.mkdir(container)
        except Exception:  # noqa: BLE001 - e.g. no account-level rights; the container must then exist
            return
        _CONTAINERS_SEEN.add(key)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def uri(self, *parts: str) -> str:
        """A URI other engines (Spark, a Spark task's fsspec) can open."""
        return self.uri_of(self.path(*parts))

    def uri_of(self, path: str) -> str:
        """The URI of a path of this lake's filesystem (``self.path(...)``, ``fs.ls``)."""
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return path if protocol in ("file", "local") else f"{protocol}://{path}"

    def spark_uri(self, path: str) -> str:
        """The URL Spark's own reader and writer open for a path of this lake: the configured
        URL's form (``abfss://container@account.dfs.core.windows.net/…``, which hadoop-azure
        needs, where ``uri_of`` gives fsspec's ``abfs://container/…``)."""
        if path != self.root and not path.startswith(self.root.rstrip("/") + "/"):
            raise ValueError(f"{path} is not under the lake root {self.root}")
        return self.url + path[len(self.root.rstrip("/")):]

    def is_local(self) -> bool:
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return protocol in ("file", "local")

    # -- raw tables ------------------------------------------------------------------------

    def read_manifest(self, table: str) -> dict:
        path = self.path("raw", table, MANIFEST)
        if not self.fs.exists(path):
            return {"version": 0, "files": {}, "watermark": None, "rows": 0}
        with self.fs.open(path, "r") as f:
            return json.load(f)

    def _write_manifest(self, table: str, manifest: dict) -> None:
        final = self.path("raw", table, MANIFEST)
        tmp = self.path("raw", table, f".{MANIFEST}.{uuid.uuid4().hex}")
        with self.fs.open(tmp, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        self.fs.mv(tmp, final)  # the commit point

    def raw_files(self, table: str) -> list[str]:
        return [self.path("raw", table, rel) for rel in sorted(self.read_manifest(table)["files"].values())]

    def read_raw(self, table: str, columns: list[str] | None = None, filters=None) -> pd.DataFrame:
        files = self.raw_files(table)
        if not files:
            return pd.DataFrame(columns=columns or [])
        t = pq.read_table(files, filesystem=self.fs, columns=columns, filters=filters, partitioning=None)
        return t.to_pandas()

    def raw_schema(self, table: str) -> pa.Schema | None:
        """The schema of the table's newest month file, or None if empty."""
        manifest = self.read_manifest(table)
        files = manifest["files"]
        return self._file_schemas(table, manifest, [files[max(files)]])[0] if files else None

    def raw_schemas(self, table: str) -> list[pa.Schema]:
        """The schema of every month file of the table."""
        manifest = self.read_manifest(table)
        return self._file_schemas(table, manifest, sorted(manifest["files"].values()))

    def _file_schemas(self, table: str, manifest: dict, rels: list[str]) -> list[pa.Schema]:
        """The schemas of month files ``rels``: from the manifest, which records each file's
        schema as it is written, or (files written before it did) from their footers."""
        stored = manifest.get("schemas") or {}
        missing = [r for r in rels if r not in stored]
        read = dict(zip(missing, read_concurrently(
            lambda r: pq.read_schema(self.path("raw", table, r), filesystem=self.fs), missing), strict=True))
        return [_schema_of(stored[r]) if r in stored else read[r] for r in rels]

    def conform_raw(self, table: str, schema: pa.Schema) -> int:
        """Rewrite every month file whose column types differ from ``schema`` (e.g. a key
        written as double by a NULL before types were fixed) and swap the manifest once.
        Returns the number of files rewritten."""
        manifest = self.read_manifest(table)
        files = dict(manifest["files"])
        new_files: dict[str, str] = {}
        for m, rel in sorted(files.items()):
            current = pq.read_schema(self.path("raw", table, rel), filesystem=self.fs)
            if all(f.name in current.names and current.field(f.name).type == f.type for f in schema):
                continue
            data = pq.read_table(self.path("raw", table, rel), filesystem=self.fs)
            new_files[m] = self._write_month(table, m, data.select(schema.names).cast(schema))
        if new_files:
            superseded = [files[m] for m in new_files]
            files.update(new_files)
            self._write_manifest(table, {**manifest, "version": manifest["version"] + 1, "files": files,
                                         "schemas": _file_schemas(manifest, files, new_files, schema)})
            self._delete(table, superseded)
        return len(new_files)

    def update_manifest(self, table: str, **fields) -> bool:
        """Set manifest ``fields`` (one atomic swap) if any differs; True if written."""
        manifest = self.read_manifest(table)
        if all(manifest.get(k) == v for k, v in fields.items()):
            return False
        self._write_manifest(table, {**manifest, **fields, "version": manifest["version"] + 1})
        return True

    def series_last_dates(self, table: str, keys: list[str], date_col: str) -> pd.DataFrame:
        """Each series' (keys) newest date in the lake: ``keys`` and ``last_date``. Reads the
        key and date columns file by file, so memory stays at one month."""
        parts = []
        for f in self.raw_files(table):
            t = pq.read_table(f, filesystem=self.fs, columns=[*keys, date_col], partitioning=None)
            parts.append(t.group_by(keys).aggregate([(date_col, "max")]).to_pandas())
        if not parts:
            return pd.DataFrame(columns=[*keys, "last_date"])
        both = pd.concat(parts, ignore_index=True)
        return both.groupby(keys, as_index=False)[f"{date_col}_max"].max().rename(columns={f"{date_col}_max": "last_date"})

    def newest_date_with_value(self, table: str, date_col: str, value_col: str) -> pd.Timestamp | None:
        """The newest ``date_col`` among rows whose ``value_col`` is not null (file by file)."""
        import pyarrow.compute as pc

        newest = None
        for f in self.raw_files(table):
            t = pq.read_table(f, filesystem=self.fs, columns=[date_col, value_col], partitioning=None)
            d = pc.max(t.filter(pc.is_valid(t[value_col]))[date_col]).as_py()
            if d is not None:
                d = pd.Timestamp(d)
                newest = d if newest is None or d > newest else newest
        return newest

    def _write_month(self, table: str, month: str, data: pa.Table) -> str:
        rel = f"month={month}/part-{uuid.uuid4().hex[:12]}.parquet"
        self.fs.makedirs(self.path("raw", table, f"month={month}"), exist_ok=True)
        pq.write_table(
            data,
            self.path("raw", table, rel),
            filesystem=self.fs,
            coerce_timestamps="us",  # Spark cannot read nanosecond timestamps
            allow_truncated_timestamps=True,
        )
        return rel

    def upsert_raw(
        self,
        table: str,
        rows: pd.DataFrame | Iterable[pd.DataFrame],
        keys: list[str],
        date_col: str,
        *,
        watermark: str | None = None,
        schema: pa.Schema | None = None,
        extra: dict | None = None,
    ) -> dict:
        """Insert or replace rows on (keys, date). Returns counts of inserted/updated rows.

        ``schema`` (the ingestion contract) is the type of every column written: old rows of a
        rewritten month are cast to it too, so one write can never change a column's type.
        ``watermark`` (default: the newest date in ``rows``) and ``extra`` fields are stored in
        the manifest. ``rows`` may be an iterable of frames (ingestion streams the source month
        by month): a month must then be in one frame; the manifest is still swapped once."""
        manifest = self.read_manifest(table)
        files = dict(manifest["files"])
        new_files: dict[str, str] = {}
        written: dict[str, pa.Schema] = {}  # month -> the schema of its new file
        inserted = updated = 0
        key_cols = [*keys, date_col]
        newest = None
        for m, chunk in self._months(rows, date_col):
            top = chunk[date_col].max()
            newest = top if newest is None or top > newest else newest
            old_rel = files.get(m)
            if old_rel:
                old_t = pq.read_table(self.path("raw", table, old_rel), filesystem=self.fs)
                if schema is not None:
                    old_t = old_t.select(schema.names).cast(schema)
                old = old_t.to_pandas()
                if schema is not None:
                    chunk = chunk.astype(old.dtypes.to_dict())  # same dtypes: the no-op test compares values
                merged = pd.concat([old, chunk], ignore_index=True)
                dup = merged.duplicated(key_cols, keep="last")
                changed_old = dup.iloc[: len(old)]
                # Rows that come back unchanged are no-ops; changed values count as updates.
                replaced = old[changed_old.to_numpy()]
                merged = merged[~dup]
                inserted += len(merged) - len(old)
                if len(replaced):
                    same = replaced.merge(chunk, how="inner", on=list(chunk.columns))
                    updated += len(replaced) - len(same)
            else:
                merged = chunk.drop_duplicates(key_cols, keep="last")
                inserted += len(merged)
            merged = merged.sort_values([*keys, date_col]).reset_index(drop=True)
            if schema is not None:
                data = pa.Table.from_pandas(merged[schema.names], preserve_index=False).cast(schema)
            else:
                data = pa.Table.from_pandas(merged, preserve_index=False)
            new_files[m] = self._write_month(table, m, data)
            written[m] = data.schema
        if not new_files:
            return {"inserted": 0, "updated": 0, "files_written": 0}
        if inserted == 0 and updated == 0:
            # Nothing changed: drop the new files, keep the manifest as it is.
            self._delete(table, new_files.values())
            return {"inserted": 0, "updated": 0, "files_written": 0}
        if watermark is None:
            watermark = str(newest.date())
            if manifest.get("watermark") and manifest["watermark"] > watermark:
                watermark = manifest["watermark"]
        fault_point("lake.before_manifest")  # new files written, manifest not yet swapped
        superseded = [files[m] for m in new_files if m in files]
        files.update(new_files)
        self._write_manifest(
            table,
            {
                **manifest,
                **(extra or {}),
                "version": manifest["version"] + 1,
                "files": files,
                "schemas": _file_schemas(manifest, files, new_files, written),
                "watermark": watermark,
                "rows": manifest.get("rows", 0) + inserted,
            },
        )
        self._delete(table, superseded)
        return {"inserted": inserted, "updated": updated, "files_written": len(new_files)}

    @staticmethod
    def _months(rows, date_col: str):
        """(month, rows of that month) of one frame or of each frame of an iterable."""
        for frame in [rows] if isinstance(rows, pd.DataFrame) else rows:
            d = frame[date_col].dt
            ym = d.year * 100 + d.month  # integer arithmetic: strftime on millions of rows is slow
            month = ym.map({v: f"{v // 100:04d}-{v % 100:02d}" for v in ym.unique()})
            yield from frame.groupby(month, sort=True)

    def _delete(self, table: str, rels: Iterable[str]) -> None:
        for rel in rels:
            try:
                self.fs.rm(self.path("raw", table, rel))
            except FileNotFoundError:
                pass

    # -- known future regressor values ------------------------------------------------------

    def write_future(self, table: str, run_date, rows: pd.DataFrame) -> str:
        """Replace the run date's snapshot of future regressor values (planned prices,
        promotions) with ``rows``."""
        return self._write_parquet(self.path("future", table), f"run_date={run_date}.parquet", rows)

    def read_future(self, table: str, run_date) -> pd.DataFrame | None:
        path = self.path("future", table, f"run_date={run_date}.parquet")
        if not self.fs.exists(path):
            return None
        return pq.read_table(path, filesystem=self.fs).to_pandas()

    # -- quarantine --------------------------------------------------------------------------

    def append_quarantine(self, table: str, rows: pd.DataFrame) -> str:
        """Bad source rows, with the reason, kept for inspection (one file per write)."""
        return self._write_parquet(self.path("quarantine", table), f"part-{uuid.uuid4().hex[:12]}.parquet", rows)

    def _write_parquet(self, folder: str, name: str, rows: pd.DataFrame) -> str:
        """``rows`` as ``folder/name``: written to a temporary file, then renamed into place,
        so a reader sees the old file or the new one, never half of one."""
        self.fs.makedirs(folder, exist_ok=True)
        path = f"{folder}/{name}"
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}"
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp, filesystem=self.fs)
        self.fs.mv(tmp, path)
        return path

    def quarantine_hashes(self, table: str) -> set[str]:
        """The ``row_hash`` of every quarantined row (files written before hashes had none)."""
        folder = self.path("quarantine", table)
        if not self.fs.exists(folder):
            return set()
        seen: set[str] = set()
        for f in self.fs.ls(folder, detail=False):
            if f.rsplit("/", 1)[-1].startswith("part-") and "row_hash" in pq.read_schema(f, filesystem=self.fs).names:
                seen.update(pq.read_table(f, filesystem=self.fs, columns=["row_hash"])["row_hash"].to_pylist())
        return seen

    def read_quarantine(self, table: str) -> pd.DataFrame:
        folder = self.path("quarantine", table)
        if not self.fs.exists(folder):
            return pd.DataFrame()
        files = [f for f in self.fs.ls(folder, detail=False) if f.rsplit("/", 1)[-1].startswith("part-")]
        return pd.concat([pq.read_table(f, filesystem=self.fs).to_pandas() for f in files], ignore_index=True) if files else pd.DataFrame()
