"""Source database -> lake copy (the Data Factory step): incremental, idempotent, checked."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from mm_platform.config import DatasetConfig
from mm_platform.lake import Lake
from mm_platform.sql import create_engine


class SourceSchemaError(ValueError):
    """The source table does not have the configured columns."""


def _source_select(cfg: DatasetConfig, engine: sa.Engine, lo: date | None, hi: date) -> sa.Select:
    cols = cfg.columns
    wanted = [cols.date, cols.target, *cols.keys, *cols.regressors]
    inspector = sa.inspect(engine)
    if not inspector.has_table(cfg.source.table):
        raise SourceSchemaError(f"source table {cfg.source.table!r} not found at {engine.url.render_as_string(hide_password=True)}")
    present = {c["name"] for c in inspector.get_columns(cfg.source.table)}
    missing = [c for c in wanted if c not in present]
    if missing:
        raise SourceSchemaError(
            f"source table {cfg.source.table!r} lacks configured columns {missing}; it has {sorted(present)}"
        )
    table = sa.table(cfg.source.table, *(sa.column(c) for c in wanted))
    date_col = sa.column(cols.date, sa.Date)
    q = sa.select(*(table.c[c] for c in wanted)).where(date_col <= sa.bindparam("hi", hi, type_=sa.Date))
    if lo is not None:
        q = q.where(date_col > sa.bindparam("lo", lo, type_=sa.Date))
    return q


def split_valid(frame: pd.DataFrame, cfg: DatasetConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Typed good rows, and bad rows with a ``reason`` column (quarantined, not dropped)."""
    cols = cfg.columns
    reason = pd.Series("", index=frame.index, dtype=object)

    def flag(mask, why):
        nonlocal reason
        mask = mask & (reason == "")
        reason = reason.where(~mask, why)

    dates = pd.to_datetime(frame[cols.date], errors="coerce")
    flag(dates.isna(), f"unparsable or missing {cols.date}")
    for k in cols.keys:
        flag(frame[k].isna(), f"missing key {k}")
    target = pd.to_numeric(frame[cols.target], errors="coerce")
    flag(target.isna() & frame[cols.target].notna(), f"non-numeric {cols.target}")
    flag(target < 0, f"negative {cols.target}")
    regs = {}
    for r in cols.regressors:
        regs[r] = pd.to_numeric(frame[r], errors="coerce")
        flag(regs[r].isna(), f"missing or non-numeric regressor {r}")
    bad = reason != ""
    good = frame.loc[~bad, list(cols.keys)].copy()
    good[cols.date] = dates[~bad].dt.normalize().astype("datetime64[ns]")
    good[cols.target] = target[~bad].astype(np.float64)
    for r in cols.regressors:
        good[r] = regs[r][~bad].astype(np.float64)
    quarantined = frame.loc[bad].astype(str).assign(reason=reason[bad])
    return good, quarantined


def ingest(cfg: DatasetConfig, lake: Lake, source_url: str, run_date: date) -> dict:
    """Copy source rows up to ``run_date`` that are newer than the lake's watermark (minus a
    look-back for late corrections) into the lake, as an upsert on (keys, date)."""
    manifest = lake.read_manifest(cfg.source.table)
    watermark = date.fromisoformat(manifest["watermark"]) if manifest.get("watermark") else None
    lo = watermark - timedelta(days=cfg.ingest_lookback_days) if watermark else None
    engine = create_engine(source_url)
    try:
        with engine.connect() as conn:
            frame = pd.read_sql(_source_select(cfg, engine, lo, run_date), conn)
    finally:
        engine.dispose()
    good, bad = split_valid(frame, cfg)
    stats = {"rows_read": len(frame), "rows_quarantined": len(bad), "window_start": str(lo) if lo else None}
    if len(bad):
        lake.append_quarantine(cfg.source.table, bad.assign(run_date=str(run_date)))
    if len(good):
        stats |= lake.upsert_raw(cfg.source.table, good, list(cfg.keys), cfg.columns.date)
    else:
        stats |= {"inserted": 0, "updated": 0, "files_written": 0}
    stats["watermark"] = lake.read_manifest(cfg.source.table).get("watermark")
    if cfg.columns.regressors:
        stats["future_rows"] = copy_future_regressors(cfg, lake, source_url, run_date)
    return stats


def future_end(cfg: DatasetConfig, run_date: date) -> date:
    """The last date a forecast made on ``run_date`` covers."""
    return run_date + timedelta(days=cfg.horizon * (7 if cfg.frequency == "weekly" else 1))


def copy_future_regressors(cfg: DatasetConfig, lake: Lake, source_url: str, run_date: date) -> int:
    """Source rows dated after ``run_date`` within the forecast horizon carry the regressors'
    known future values (planned prices, promotions, holidays; their target is usually empty).
    They are checked like history rows (bad ones quarantined) and kept as the run date's
    snapshot in the lake, for batch scoring. Returns the number of rows kept."""
    cols = cfg.columns
    engine = create_engine(source_url)
    try:
        select = _source_select(cfg, engine, run_date, future_end(cfg, run_date))
        with engine.connect() as conn:
            frame = pd.read_sql(select, conn)
    finally:
        engine.dispose()
    good, bad = split_valid(frame, cfg)
    if len(bad):
        lake.append_quarantine(cfg.source.table, bad.assign(run_date=str(run_date), reason="future row: " + bad["reason"]))
    future = good[[*cols.keys, cols.date, *cols.regressors]].drop_duplicates([*cols.keys, cols.date], keep="last")
    lake.write_future(cfg.source.table, run_date, future)
    return len(future)
