"""Source databases on real servers: the same generated sales copied incrementally from
PostgreSQL and MariaDB (127.0.0.1) with ``mm_platform.steps.ingest.ingest`` give the same lake
as from SQLite. Only ``source.url`` differs."""

from __future__ import annotations

import uuid
from datetime import date

import pandas as pd
import pytest
import sqlalchemy as sa

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform.steps.ingest import ingest
from mm_platform.stores.lake import Lake
from mm_platform_tests.conftest import write_config
from mm_platform_tests.test_prod_support import MARIADB_URL, PG_URL, require_mariadb, require_postgres

DATA = {"stores": 3, "items": 4, "days": 150, "seed": 11}
FIRST, LAST = date(2025, 11, 30), date(2025, 12, 31)
CORRECTED = date(2025, 11, 27)  # inside the 7-day look-back of the second copy

# datagen.write_sales quotes identifiers with double quotes, which MariaDB/MySQL read as string
# literals unless ANSI_QUOTES is on: the test writes through a session with ANSI_QUOTES and
# ingests through the plain URL (ingestion itself quotes per dialect).
pytestmark = pytest.mark.services

MARIADB_WRITE_URL = (
    sa.make_url(MARIADB_URL)
    .update_query_dict({"init_command": "SET SESSION sql_mode=CONCAT(@@sql_mode, ',ANSI_QUOTES')"})
    .render_as_string(hide_password=False)
)


def _copy(tmp_path, name: str, write_url: str, read_url: str, table: str) -> tuple[pd.DataFrame, list[dict]]:
    home = tmp_path / name
    home.mkdir()
    cfg = load_config(write_config(home, source={"url": read_url, "table": table}))
    written = write_sales(write_url, table, **DATA)
    lake = Lake(cfg.storage.lake_url)
    stats = [ingest(cfg, lake, read_url, FIRST)]
    engine = sa.create_engine(read_url)
    try:
        t = sa.table(table, sa.column("units"), sa.column("store"), sa.column("item"), sa.column("date"))
        with engine.begin() as conn:  # a late correction in the source
            conn.execute(
                t.update()
                .where(t.c.store == 1, t.c.item == 1, t.c.date == sa.bindparam("d", CORRECTED, type_=sa.Date))
                .values(units=999)
            )
    finally:
        engine.dispose()
    stats += [ingest(cfg, lake, read_url, LAST), ingest(cfg, lake, read_url, LAST)]
    raw = lake.read_raw(table).sort_values(["store", "item", "date"]).reset_index(drop=True)
    assert len(raw) == written  # every source row is in the lake once (the data ends on LAST)
    return raw, [{k: v for k, v in s.items() if k != "files_written"} for s in stats]


def _drop(url: str, table: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {engine.dialect.identifier_preparer.quote(table)}"))
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def sqlite_copy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sqlite_source")
    url = f"sqlite:///{tmp}/source.db"
    return _copy(tmp, "sqlite", url, url, "sales")


@pytest.mark.parametrize(
    "name, write_url, read_url, require",
    [
        ("postgresql", PG_URL, PG_URL, require_postgres),
        ("mariadb", MARIADB_WRITE_URL, MARIADB_URL, require_mariadb),
    ],
    ids=["postgresql", "mariadb"],
)
def test_incremental_copy_equals_sqlite(tmp_path, sqlite_copy, name, write_url, read_url, require):
    require()
    table = f"mm_sales_{uuid.uuid4().hex[:10]}"
    try:
        raw, stats = _copy(tmp_path, name, write_url, read_url, table)
    finally:
        _drop(read_url, table)
    expected_raw, expected_stats = sqlite_copy
    # Incremental: the first copy reads up to FIRST, the second only the look-back window and
    # newer rows (and picks up the correction), the third changes nothing.
    assert stats == expected_stats
    assert stats[0]["window_start"] is None and stats[1]["window_start"] == "2025-11-23"
    assert stats[1]["updated"] == 1 and stats[2]["inserted"] == stats[2]["updated"] == 0
    assert stats[1]["rows_read"] < stats[0]["rows_read"]
    pd.testing.assert_frame_equal(raw, expected_raw)
    row = raw[(raw.store == 1) & (raw.item == 1) & (raw.date == pd.Timestamp(CORRECTED))]
    assert row["units"].tolist() == [999.0]
    assert not raw.duplicated(["store", "item", "date"]).any()
