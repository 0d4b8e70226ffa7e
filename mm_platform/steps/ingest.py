"""Source database -> lake copy (the Data Factory step): incremental, idempotent, checked.

The ingestion contract (docs/ingestion.md has the long form):

* **Every row read ends in the lake or in quarantine, never nowhere.** A row that breaks a
  rule below is written to ``quarantine/<table>`` with its ``reason`` and counted in the
  asset's metadata (``quarantine_reasons``); quarantine is idempotent (a row already there
  with the same reason is not added again when a later copy reads it again).
* **Types are fixed at the first write** and stored in the lake manifest (``contract``):
  each key is ``int64`` or ``string`` (from ``ingest.key_types`` if declared, else from the
  lake's existing files, else the source column's declared SQL type, else the first values
  seen); the date is a timestamp (midnight), the target and regressors are ``float64``.
  Every later write is cast to that contract, old month files included, so one NULL or one
  odd value never changes a column's type. A key that is NULL or does not fit its type is
  quarantined; a declared type that contradicts the lake's is a ``ContractError``.
* **Dates are dates.** Native DATE/TIMESTAMP columns (not SQLite) are selected by SQL; text
  dates (any SQLite column, text columns elsewhere) are selected by SQL only where the text is
  an ISO ``YYYY-MM-DD...`` string (whose string order is date order), and every row whose text
  is not of that form (or NULL) is read too and parsed in Python (ISO 8601 only): unparsable or
  impossible dates (``31/12/2025``, ``2025-02-30``) are quarantined.
* **Targets** must be numeric, finite, not negative and at most ``ingest.max_abs_target``;
  an empty target is allowed in the history (a missing observation).
* **Duplicates**: identical rows for one (keys, date) are one row; rows for one (keys, date)
  that disagree are all quarantined (no silent last-wins) and the lake keeps what it had.
* **Planned rows are never history.** A row with an empty target dated after the newest
  actual (the newest date with a target, in the lake or this batch), or any row dated after
  the run date, only feeds the run date's future-regressor snapshot. The watermark is the
  newest date with a target, so actuals that arrive later for planned dates are copied.
* **Series that disappear from the source** (in the lake, no row left in the source) are
  listed in the manifest, the asset metadata and the warehouse view ``v_missing_series``;
  ``ingest.on_missing_series`` says whether scoring keeps scoring them from the lake's data
  (``keep_scoring``, the default) or skips them (``stop_scoring``).
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from mm_platform.config import DatasetConfig
from mm_platform.core.errors import SourceError
from mm_platform.core.vocabulary import series_id
from mm_platform.stores.lake import Lake
from mm_platform.stores.sql import source_engine

KEY_TYPES = ("int64", "string")
_INT64_MAX = 2**63 - 1
# ISO 8601 date prefix, per dialect: rows whose text matches compare correctly as strings.
_ISO_PATTERNS = {
    "sqlite": ("GLOB", "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*"),
    "postgresql": ("~", "^[0-9]{4}-[0-9]{2}-[0-9]{2}"),
    "mysql": ("REGEXP", "^[0-9]{4}-[0-9]{2}-[0-9]{2}"),
    "mariadb": ("REGEXP", "^[0-9]{4}-[0-9]{2}-[0-9]{2}"),
    "mssql": ("LIKE", "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]%"),
}


class SourceSchemaError(SourceError):
    """The source table does not have the configured columns."""


class ContractError(ValueError):
    """The configured types contradict the types the lake table was first written with."""


# -- reading the source ------------------------------------------------------------------------


def _source_columns(cfg: DatasetConfig, engine: sa.Engine) -> dict:
    """The configured columns' declared SQL types; a clear error if the table or a column is missing."""
    cols = cfg.columns
    wanted = [cols.date, cols.target, *cols.keys, *cols.regressors]
    inspector = sa.inspect(engine)
    if not inspector.has_table(cfg.source.table):
        raise SourceSchemaError(f"source table {cfg.source.table!r} not found at {engine.url.render_as_string(hide_password=True)}")
    present = {c["name"]: c["type"] for c in inspector.get_columns(cfg.source.table)}
    missing = [c for c in wanted if c not in present]
    if missing:
        raise SourceSchemaError(
            f"source table {cfg.source.table!r} lacks configured columns {missing}; it has {sorted(present)}"
        )
    return {c: present[c] for c in wanted}


def _date_mode(engine: sa.Engine, declared) -> str:
    """native: the database enforces dates, SQL comparison is date comparison. text: ISO text
    compares as dates, other text must be read and parsed. scan: no safe SQL filter at all."""
    if engine.dialect.name != "sqlite" and isinstance(declared, sa.Date | sa.DateTime):
        return "native"  # (SQLite stores any text in a DATE column)
    if engine.dialect.name == "sqlite" or isinstance(declared, sa.String | sa.types.NullType):
        return "text" if engine.dialect.name in _ISO_PATTERNS else "scan"
    return "scan"


def _iso_text(engine: sa.Engine, column) -> sa.ColumnElement:
    op, pattern = _ISO_PATTERNS[engine.dialect.name]
    if op == "LIKE":
        return column.like(pattern)
    return column.op(op)(sa.literal(pattern))


def _select(cfg: DatasetConfig, engine: sa.Engine, declared: dict, lo: date | None, hi: date) -> sa.Select:
    cols = cfg.columns
    wanted = [cols.date, cols.target, *cols.keys, *cols.regressors]
    table = sa.table(cfg.source.table, *(sa.column(c) for c in wanted))
    q = sa.select(*(table.c[c] for c in wanted))
    mode = _date_mode(engine, declared[cols.date])
    if mode == "scan":
        return q
    # Half-open bounds on whole days: '2025-12-31 10:00' and a TIMESTAMP at 10:00 are on the 31st.
    start, stop = (lo + timedelta(days=1) if lo else None), hi + timedelta(days=1)
    if mode == "native":
        d = sa.column(cols.date, sa.Date)
        cond = d < sa.bindparam("stop", stop, type_=sa.Date)
        if start:
            cond = cond & (d >= sa.bindparam("start", start, type_=sa.Date))
        return q.where(cond | d.is_(None))
    d = sa.column(cols.date, sa.String)
    cond = d < sa.bindparam("stop", stop.isoformat(), type_=sa.String)
    if start:
        cond = cond & (d >= sa.bindparam("start", start.isoformat(), type_=sa.String))
    return q.where((cond & _iso_text(engine, d)) | d.is_(None) | sa.not_(_iso_text(engine, d)))


# Rows fetched from the source per chunk: the driver holds one chunk, one month of the
# window and the quarantined and future rows, never the whole window (issue #18).
SOURCE_CHUNK_ROWS = 50_000
_NO_DATE = "none"  # the spill group of rows whose date does not parse (all quarantined)


def _read_source_chunks(cfg: DatasetConfig, source_url: str, lo: date | None, hi: date, declared_out: dict):
    """The source rows of the window in chunks of ``SOURCE_CHUNK_ROWS``, streamed with a
    server-side cursor (``stream_results``) where the driver has one (PostgreSQL, MySQL);
    ``declared_out`` receives the source's declared column types."""
    engine = source_engine(source_url)
    try:
        declared_out.update(_source_columns(cfg, engine))
        with engine.connect().execution_options(stream_results=True, max_row_buffer=SOURCE_CHUNK_ROWS) as conn:
            yield from pd.read_sql(_select(cfg, engine, declared_out, lo, hi), conn, chunksize=SOURCE_CHUNK_ROWS)
    finally:
        engine.dispose()


class _Spill:
    """The window's rows, spilled to local disk by month (of the parsed date) as they stream
    in; every rule of the contract that looks at several rows (duplicates on keys and date)
    looks within one date, so one month at a time is enough."""

    def __init__(self, folder: str, cfg: DatasetConfig, lo: date | None, end: date):
        self.folder, self.cfg, self.lo, self.end = folder, cfg, lo, end
        self.rows_read = self.outside = 0
        self.newest_actual = None
        self.value_types: dict[str, set[str]] = {k: set() for k in cfg.keys}
        self.parts: dict[str, int] = {}

    def add(self, chunk: pd.DataFrame) -> None:
        cols, lo = self.cfg.columns, self.lo
        self.rows_read += len(chunk)
        dates = parse_dates(chunk[cols.date])
        in_window = dates.isna() | ((dates > pd.Timestamp(lo)) if lo else True) & (dates <= pd.Timestamp(self.end))
        self.outside += int((~in_window).sum())  # parseable text dates read only because they are not ISO
        chunk, dates = chunk[in_window], dates[in_window]
        actual = dates[pd.to_numeric(chunk[cols.target], errors="coerce").notna()].dropna()
        if len(actual) and (self.newest_actual is None or actual.max() > self.newest_actual):
            self.newest_actual = actual.max()
        for k in self.cfg.keys:
            if chunk[k].notna().any():  # an all-NULL chunk says nothing of the key's type
                self.value_types[k].add(_type_from_values(chunk[k]))
        # One stable sort by month and contiguous slices: a chunk of series-ordered rows spans
        # every month, and label lookups per month (loc, a lambda per row) cost more than the
        # pickles themselves (docs/ingestion.md).
        ym = (dates.dt.year * 100 + dates.dt.month).to_numpy(dtype=float, na_value=np.nan)
        label = np.where(np.isnan(ym), -1, ym).astype(np.int64)
        order = np.argsort(label, kind="stable")
        chunk, label = chunk.assign(__date=dates).iloc[order], label[order]
        bounds = np.flatnonzero(np.diff(label)) + 1
        for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(label)], strict=True):
            if a == b:
                continue
            m = _NO_DATE if label[a] < 0 else f"{int(label[a]):06d}"
            n = self.parts.get(m, 0)
            self.parts[m] = n + 1
            chunk.iloc[a:b].to_pickle(f"{self.folder}/{m}-{n:06d}.pkl")

    def key_types(self) -> dict[str, str]:
        """What ``_type_from_values`` gives for the whole window's key columns."""
        return {k: "int64" if v == {"int64"} else "string" for k, v in self.value_types.items()}

    def months(self):
        """(rows, parsed dates) of each month of the window (and of the rows without a date)."""
        for m in sorted(self.parts):
            frame = pd.concat([pd.read_pickle(f"{self.folder}/{m}-{n:06d}.pkl") for n in range(self.parts[m])],
                              ignore_index=True)
            dates = frame.pop("__date")
            yield frame, dates


def parse_dates(values: pd.Series) -> pd.Series:
    """Dates by date semantics: native dates/timestamps as they are, text only as ISO 8601
    (``31/12/2025`` is ambiguous and ``2025-02-30`` impossible: both NaT). Zoned values become
    their UTC wall time, as Spark's cast does; midnight of the day."""
    kind = pd.api.types.infer_dtype(values, skipna=True)  # C speed; the per-value path is for mixed columns
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        out = values
    elif kind in ("string", "empty"):
        out = pd.to_datetime(values.str.strip(), format="ISO8601", errors="coerce", utc=True)
    else:
        is_text = values.map(lambda v: isinstance(v, str))
        out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
        if is_text.any():
            out[is_text] = pd.to_datetime(values[is_text].str.strip(), format="ISO8601", errors="coerce", utc=True)
        other = ~is_text & values.notna()
        if other.any():
            out[other] = pd.to_datetime(values[other], errors="coerce", utc=True)
    if getattr(out.dt, "tz", None) is not None:
        out = out.dt.tz_convert("UTC").dt.tz_localize(None)
    return out.dt.normalize().astype("datetime64[ns]")


def newest_actual_date(cfg: DatasetConfig, source_url: str | None = None) -> date | None:
    """The newest date with a target in the source, by date semantics (not string order);
    rows whose date does not parse are ignored here (ingestion quarantines them)."""
    cols = cfg.columns
    engine = source_engine(source_url or cfg.source.url)
    try:
        declared = _source_columns(cfg, engine)
        mode = _date_mode(engine, declared[cols.date])
        table = sa.table(cfg.source.table, sa.column(cols.date), sa.column(cols.target))
        has_target = table.c[cols.target].is_not(None)
        with engine.connect() as conn:
            if mode == "native":
                value = conn.execute(sa.select(sa.func.max(table.c[cols.date])).where(has_target)).scalar()
                return None if value is None else parse_dates(pd.Series([value], dtype=object)).iloc[0].date()
            # Text: newest ISO-looking values first (their string order is date order), parsed
            # until one is a real date; without a safe pattern, every distinct value is parsed.
            d = sa.column(cols.date, sa.String)
            q = sa.select(d).select_from(table).where(has_target).distinct()
            if mode == "text":
                q = q.where(_iso_text(engine, d)).order_by(d.desc())
                offset, batch = 0, 200
                while True:
                    values = [r[0] for r in conn.execute(q.limit(batch).offset(offset))]
                    if not values:
                        return None
                    parsed = parse_dates(pd.Series(values, dtype=object)).dropna()
                    if len(parsed):
                        return parsed.max().date()
                    offset += batch
            parsed = parse_dates(pd.Series([r[0] for r in conn.execute(q)], dtype=object)).dropna()
            return parsed.max().date() if len(parsed) else None
    finally:
        engine.dispose()


# -- the contract ------------------------------------------------------------------------------


def _type_from_sql(t) -> str | None:
    if isinstance(t, sa.Integer | sa.types.Boolean):
        return "int64"
    if isinstance(t, sa.String | sa.Enum):
        return "string"
    if isinstance(t, sa.types.NullType):
        return None  # SQLite without a declared type: decide from the values
    return "string"  # dates, decimals...: their text is the key


def _type_from_arrow(t: pa.DataType) -> str | None:
    if pa.types.is_integer(t):
        return "int64"
    if pa.types.is_floating(t):
        return "int64"  # written by the pre-contract code after a NULL key (1.0): integers really
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    return None


def _type_from_values(values: pd.Series) -> str:
    v = values.dropna()
    if pd.api.types.is_bool_dtype(v.dtype) or pd.api.types.is_integer_dtype(v.dtype):
        return "int64"
    if pd.api.types.is_float_dtype(v.dtype) and len(v) and bool((v == np.floor(v)).all()):
        return "int64"
    return "string"


def resolve_contract(cfg: DatasetConfig, lake: Lake, manifest: dict, declared: dict, frame: pd.DataFrame | None,
                     value_types: dict[str, str] | None = None) -> dict:
    """The table's contract: the manifest's if written, else fixed now (see the module doc).
    ``value_types``: each key's type from its values, when the rows were streamed (``frame``
    None)."""
    cols = cfg.columns
    stored = manifest.get("contract")
    wanted = dict(cfg.ingest.key_types)
    if stored:
        for k, t in wanted.items():
            if stored["keys"].get(k) not in (None, t):
                raise ContractError(
                    f"ingest.key_types.{k} is {t} but the lake table {cfg.source.table!r} was first written with "
                    f"{k} as {stored['keys'][k]} (fix the config, or start a new lake)"
                )
        missing = [k for k in cols.keys if k not in stored["keys"]]
        if not missing and set(stored.get("regressors", {})) >= set(cols.regressors):
            return stored
    schema = lake.raw_schema(cfg.source.table)
    keys = {}
    for k in cols.keys:
        if stored and k in stored["keys"]:
            keys[k] = stored["keys"][k]
        elif k in wanted:
            keys[k] = wanted[k]
        elif schema is not None and k in schema.names and _type_from_arrow(schema.field(k).type):
            keys[k] = _type_from_arrow(schema.field(k).type)
        else:
            keys[k] = _type_from_sql(declared[k]) or (value_types[k] if frame is None else _type_from_values(frame[k]))
    return {
        "keys": keys,
        "date": "timestamp",
        "target": "float64",
        "regressors": {r: "float64" for r in cols.regressors},
    }


def contract_schema(cfg: DatasetConfig, contract: dict) -> pa.Schema:
    """The Arrow schema of the lake's raw files under ``contract`` (column order of the writes)."""
    cols = cfg.columns
    arrow = {"int64": pa.int64(), "string": pa.string()}
    return pa.schema(
        [
            *(pa.field(k, arrow[contract["keys"][k]]) for k in cols.keys),
            pa.field(cols.date, pa.timestamp("us")),
            pa.field(cols.target, pa.float64()),
            *(pa.field(r, pa.float64()) for r in cols.regressors),
        ]
    )


def _cast_key(values: pd.Series, kind: str) -> tuple[pd.Series, pd.Series]:
    """``values`` cast to ``kind`` and a mask of the non-null values that do not fit."""
    present = values.notna()
    if kind == "int64":
        num = pd.to_numeric(values, errors="coerce")
        fits = num.notna() & np.isfinite(num) & (num == np.floor(num)) & (num.abs() <= _INT64_MAX)
        if values.dtype == object:  # True/1.5/'1e3' are not integer keys even if numeric
            fits &= values.map(lambda v: isinstance(v, int | np.integer) and not isinstance(v, bool)
                               or isinstance(v, str) and v.strip().lstrip("+-").isdigit()
                               or isinstance(v, float) and math.isfinite(v) and v.is_integer())
        out = num.where(fits).astype("Int64")
        return out, present & ~fits
    out = values.astype(object)
    if pd.api.types.is_float_dtype(values.dtype):  # an integer column that had a NULL: 1.0 -> "1"
        whole = present & (values == np.floor(values))
        out = out.where(~whole, values[whole].astype("Int64").astype(str) if whole.any() else out)
    out = out.where(~present, out[present].astype(str) if present.any() else out)
    return out, pd.Series(False, index=values.index)


def split_valid(
    frame: pd.DataFrame, cfg: DatasetConfig, contract: dict | None = None, dates: pd.Series | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Typed good rows, and bad rows with a ``reason`` column (quarantined, not dropped).
    ``dates``: the date column already parsed (``parse_dates``)."""
    cols = cfg.columns
    contract = contract or {"keys": {k: _type_from_values(frame[k]) for k in cols.keys}}
    reason = pd.Series("", index=frame.index, dtype=object)

    def flag(mask, why):
        nonlocal reason
        mask = mask & (reason == "")
        reason = reason.where(~mask, why)

    if dates is None:
        dates = parse_dates(frame[cols.date])
    flag(dates.isna(), f"unparsable or missing {cols.date}")
    keys = {}
    for k in cols.keys:
        flag(frame[k].isna(), f"missing key {k}")
        keys[k], misfit = _cast_key(frame[k], contract["keys"][k])
        if misfit.any():
            for i in frame.index[misfit & (reason == "")]:
                flag(frame.index == i, f"key {k} value {frame.at[i, k]!r} does not fit its type {contract['keys'][k]}")
    target = pd.to_numeric(frame[cols.target], errors="coerce")
    flag(target.isna() & frame[cols.target].notna(), f"non-numeric {cols.target}")
    finite = np.isfinite(target.astype(np.float64))
    flag(target.notna() & ~finite, f"non-finite {cols.target}")
    flag(target < 0, f"negative {cols.target}")
    bound = cfg.ingest.max_abs_target
    flag(target.abs() > bound, f"{cols.target} beyond ingest.max_abs_target ({bound:g})")
    regs = {}
    for r in cols.regressors:
        regs[r] = pd.to_numeric(frame[r], errors="coerce")
        flag(regs[r].isna() | ~np.isfinite(regs[r].astype(np.float64)), f"missing or non-numeric regressor {r}")
    bad = reason != ""
    good = pd.DataFrame({k: keys[k][~bad] for k in cols.keys}, index=frame.index[~bad])
    for k in cols.keys:
        good[k] = good[k].astype("int64" if contract["keys"][k] == "int64" else object)
    good[cols.date] = dates[~bad].astype("datetime64[ns]")
    good[cols.target] = target[~bad].astype(np.float64)
    for r in cols.regressors:
        good[r] = regs[r][~bad].astype(np.float64)
    # Rows for one (keys, date): identical ones are one row; disagreeing ones are all suspect.
    key_cols = [*cols.keys, cols.date]
    good = good.drop_duplicates()
    conflict = good.duplicated(key_cols, keep=False)
    if conflict.any():
        why = f"conflicting duplicate rows for ({', '.join(key_cols)})"
        clash = frame.index.isin(good.index[conflict])
        # every source row of those (keys, date), not only the first of each identical pair
        keyed = good.loc[conflict, key_cols].drop_duplicates()
        all_rows = pd.DataFrame({k: keys[k] for k in cols.keys}).assign(**{cols.date: dates})
        hit = all_rows.reset_index().merge(keyed, on=key_cols, how="inner")["index"]
        clash |= frame.index.isin(hit) & ~bad.to_numpy()
        reason = reason.where(~clash, why)
        bad = reason != ""
        good = good[~good.index.isin(frame.index[clash])]
    quarantined = frame.loc[bad].astype(str).assign(reason=reason[bad])
    return good.reset_index(drop=True), quarantined


# -- the copy -----------------------------------------------------------------------------------


def _row_hashes(rows: pd.DataFrame) -> pd.Series:
    """A content hash per quarantined row (values and reason, not the run date): a row read by
    several copies is quarantined once."""
    cols = sorted(c for c in rows.columns if c not in ("run_date", "row_hash"))
    text = rows[cols].astype(str).agg("\x1f".join, axis=1) if len(rows) else pd.Series([], dtype=str)
    return text.map(lambda s: hashlib.sha256(s.encode()).hexdigest()[:32])


def _quarantine(lake: Lake, table: str, rows: pd.DataFrame, run_date: date) -> int:
    if not len(rows):
        return 0
    rows = rows.assign(run_date=str(run_date))
    rows["row_hash"] = _row_hashes(rows).to_numpy()
    rows = rows.drop_duplicates("row_hash")
    rows = rows[~rows["row_hash"].isin(lake.quarantine_hashes(table))]
    if len(rows):
        lake.append_quarantine(table, rows)
    return len(rows)


def _source_series(cfg: DatasetConfig, source_url: str, contract: dict) -> set[str]:
    """Series ids present in the source (any row, any date), keys cast to the contract."""
    keys = cfg.keys
    engine = source_engine(source_url)
    try:
        t = sa.table(cfg.source.table, *(sa.column(k) for k in keys))
        q = sa.select(*(t.c[k] for k in keys)).distinct()
        with engine.connect() as conn:
            frame = pd.read_sql(q, conn)
    finally:
        engine.dispose()
    cast = {}
    ok = pd.Series(True, index=frame.index)
    for k in keys:
        cast[k], misfit = _cast_key(frame[k], contract["keys"][k])
        ok &= cast[k].notna() & ~misfit
    return {series_id(dict(zip(keys, row, strict=True))) for row in zip(*(cast[k][ok] for k in keys), strict=True)} \
        if ok.any() else set()


def missing_series(cfg: DatasetConfig, lake: Lake, source_url: str, contract: dict) -> list[dict]:
    """Series in the lake with no row left in the source: keys, series_id and last lake date."""
    in_lake = lake.series_last_dates(cfg.source.table, cfg.keys, cfg.columns.date)
    if in_lake.empty:
        return []
    in_lake["series_id"] = [series_id(dict(zip(cfg.keys, ks, strict=True))) for ks in in_lake[cfg.keys].itertuples(index=False)]
    gone = in_lake[~in_lake["series_id"].isin(_source_series(cfg, source_url, contract))].sort_values("series_id")
    return [
        {**{k: (int(r[k]) if contract["keys"][k] == "int64" else str(r[k])) for k in cfg.keys},
         "series_id": r["series_id"], "last_date": str(pd.Timestamp(r["last_date"]).date())}
        for _, r in gone.iterrows()
    ]


def stopped_series(cfg: DatasetConfig, lake: Lake) -> set[str]:
    """Series scoring must skip: missing from the source when ``ingest.on_missing_series`` is
    ``stop_scoring`` (as of the last copy), else none."""
    if cfg.ingest.on_missing_series != "stop_scoring":
        return set()
    return {m["series_id"] for m in lake.read_manifest(cfg.source.table).get("missing_series", [])}


def ingest(cfg: DatasetConfig, lake: Lake, source_url: str, run_date: date) -> dict:
    """Copy source rows up to ``run_date`` that are newer than the lake's watermark (minus a
    look-back for late corrections) into the lake, as an upsert on (keys, date), under the
    contract in the module doc. Rows after the run date within the forecast horizon (and
    planned rows) become the run date's future-regressor snapshot."""
    cols, table = cfg.columns, cfg.source.table
    manifest = lake.read_manifest(table)
    legacy = bool(manifest.get("files")) and not manifest.get("contract")
    if legacy:  # written before the contract: its watermark may be a planned date, not an actual
        newest_lake = lake.newest_date_with_value(table, cols.date, cols.target)
        manifest["watermark"] = str(newest_lake.date()) if newest_lake is not None else None
    watermark = date.fromisoformat(manifest["watermark"]) if manifest.get("watermark") else None
    lo = watermark - timedelta(days=cfg.ingest_lookback_days) if watermark else None
    end = max(future_end(cfg, run_date), run_date)
    with tempfile.TemporaryDirectory(prefix="mm-ingest-") as spill_dir:
        spill, declared = _Spill(spill_dir, cfg, lo, end), {}
        for chunk in _read_source_chunks(cfg, source_url, lo, end, declared):  # history and future in one read
            spill.add(chunk)
        contract = resolve_contract(cfg, lake, manifest, declared, None, value_types=spill.key_types())
        schema = contract_schema(cfg, contract)
        if legacy:
            lake.conform_raw(table, schema)  # a pre-contract lake: its files take the contract's types
        # The newest actual: the newest date with a target, in this batch or already in the lake.
        candidates = [*([spill.newest_actual] if spill.newest_actual is not None else []),
                      *([pd.Timestamp(watermark)] if watermark else [])]
        newest = max(candidates, default=None)
        stats = {
            "rows_read": spill.rows_read,
            "rows_outside_window": spill.outside,
            "rows_planned": 0,
            "window_start": str(lo) if lo else None,
            "contract": contract,
        }
        bads, futures, goods = [], [], []
        new_watermark = manifest.get("watermark")
        for frame, dates in spill.months():
            after_run = dates > pd.Timestamp(run_date)
            planned = ~after_run & frame[cols.target].isna() & dates.notna() & ((dates > newest) if newest is not None else True)
            stats["rows_planned"] += int(planned.sum())
            history = frame[~after_run & ~planned]
            futures.append((frame[after_run | planned], dates[after_run | planned]))
            good, bad = split_valid(history, cfg, contract, dates[history.index])
            bads.append(bad)
            has_target = good[cols.target].notna()
            if has_target.any():
                newest_good = str(good.loc[has_target, cols.date].max().date())
                new_watermark = max(filter(None, [new_watermark, newest_good]))
            if len(good):  # spilled again: the lake's upsert then reads one month at a time
                goods.append(f"{spill_dir}/good-{len(goods):06d}.pkl")
                good.to_pickle(goods[-1])
        bad = pd.concat(bads, ignore_index=True) if bads else pd.DataFrame()
        reasons = bad["reason"].value_counts().to_dict() if len(bad) else {}
        quarantined = len(bad)
        if goods:
            stats |= lake.upsert_raw(table, (pd.read_pickle(f) for f in goods), list(cfg.keys), cols.date,
                                     watermark=new_watermark, schema=schema, extra={"contract": contract})
        else:
            stats |= {"inserted": 0, "updated": 0, "files_written": 0}
    if cfg.columns.regressors:
        future = pd.concat([f for f, _ in futures], ignore_index=True) if futures else pd.DataFrame(columns=frame_columns(cfg))
        future_dates = pd.concat([d for _, d in futures], ignore_index=True) if futures else pd.Series([], dtype="datetime64[ns]")
        fgood, fbad = split_valid(future.assign(**{cols.target: np.nan}), cfg, contract, future_dates)
        fbad = fbad.assign(reason="future row: " + fbad["reason"])
        fbad[cols.target] = future.loc[fbad.index, cols.target].astype(str)
        bad = pd.concat([bad, fbad])
        for why, n in fbad["reason"].value_counts().items():
            reasons[why] = reasons.get(why, 0) + n
        quarantined += len(fbad)
        snapshot = fgood[[*cols.keys, cols.date, *cols.regressors]]
        lake.write_future(table, run_date, snapshot)
        stats["future_rows"] = len(snapshot)
    stats["rows_quarantined"] = quarantined
    stats["quarantine_reasons"] = {str(k): int(v) for k, v in reasons.items()}
    stats["rows_newly_quarantined"] = _quarantine(lake, table, bad, run_date)

    gone = missing_series(cfg, lake, source_url, contract)
    lake.update_manifest(table, contract=contract, missing_series=gone, watermark=new_watermark)
    stats["missing_series"] = [m["series_id"] for m in gone]
    stats["missing_series_detail"] = gone
    stats["watermark"] = lake.read_manifest(table).get("watermark")
    return stats


def frame_columns(cfg: DatasetConfig) -> list[str]:
    """The columns ingestion selects from the source, in order."""
    cols = cfg.columns
    return [cols.date, cols.target, *cols.keys, *cols.regressors]


def future_end(cfg: DatasetConfig, run_date: date) -> date:
    """The last date a forecast made on ``run_date`` covers."""
    return run_date + timedelta(days=cfg.horizon * (7 if cfg.frequency == "weekly" else 1))

