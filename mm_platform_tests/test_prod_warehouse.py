"""The SQL warehouse on a real PostgreSQL (127.0.0.1, database ``test``, one fresh schema per
test selected only by the URL's ``search_path``), and every statement compiled for SQL Server."""

from __future__ import annotations

from datetime import date, datetime

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.schema import CreateIndex, CreateTable

from mm_platform.config import load_config
from mm_platform.datagen import write_sales
from mm_platform.stores.warehouse import METRIC_QUERIES, VIEWS, Warehouse, view_statements
from mm_platform_tests.conftest import write_config
from mm_platform_tests.test_end_to_end import RUN_DATE, materialize_all
from mm_platform_tests.test_prod_support import pg_schema, require_postgres

TABLES = ("predictions", "training_report", "scoring_report", "promotion_log", "promotion_coverage", "forecast_accuracy",
          "drift_log", "forecast_metrics")


def sql_server_2019() -> sa.Dialect:
    """The ``mssql+pyodbc`` dialect as it configures itself after connecting to SQL Server 2019
    (DATE, VARCHAR(max)); pyodbc itself is not needed to compile."""
    from sqlalchemy.dialects.mssql.pyodbc import MSDialect_pyodbc

    dialect = MSDialect_pyodbc(deprecate_large_types=True, paramstyle="qmark")
    dialect.server_version_info = (15, 0, 2000)
    return dialect


@pytest.fixture
def pg_warehouse_url():
    require_postgres()
    with pg_schema("mm_wh") as (_, url):
        yield url


@pytest.fixture
def statements():
    """Every SQL statement the warehouse sends, as (statement, executemany)."""
    seen: list[tuple[str, bool]] = []

    def listen(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, executemany))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", listen)
    yield seen
    sa.event.remove(sa.engine.Engine, "before_cursor_execute", listen)


def _awkward_rows() -> pd.DataFrame:
    # Text that needs escaping in COPY, empty strings vs NULLs, NaN/inf, integers with gaps.
    return pd.DataFrame(
        {
            "store": [1, 2, 3],
            "item": ["a\tb", "c\\d", "e\nf"],
            "series_id": ["s1", "s2", 'q"x,y'],
            "status": ["trained", "", None],
            "reason": ["", None, "r\r\n\\N"],
            "n_obs": [10, 20, 30],
            "mape": [1.5, np.nan, np.inf],
            "last_date": ["2025-01-01"] * 3,
            "model_version": [1, None, 3],
        }
    )


@pytest.mark.services
def test_postgres_bulk_load_keeps_every_value(pg_warehouse_url, statements):
    wh = Warehouse(pg_warehouse_url, "ds", ["store", "item"])
    try:
        rows = _awkward_rows()
        assert wh.replace_run("training_report", date(2025, 1, 1), rows) == 3
        assert wh.replace_run("training_report", date(2025, 1, 1), rows) == 3  # replaces, no duplicates
        copies = [s for s, _ in statements if s.startswith("INSERT INTO training_report") and "FROM mm_stage_" in s]
        assert len(copies) == 2, "the PostgreSQL path stages with COPY and inserts from the staging table"
        out = wh.read("SELECT * FROM training_report ORDER BY store")
        assert len(out) == 3
        assert out["item"].tolist() == rows["item"].tolist() and out["series_id"].tolist() == rows["series_id"].tolist()
        assert out["status"].tolist() == ["trained", "", None]
        assert out["reason"].tolist() == ["", None, "r\r\n\\N"]
        assert out["mape"].iloc[0] == 1.5 and np.isnan(out["mape"].iloc[1]) and np.isinf(out["mape"].iloc[2])
        assert out["model_version"].iloc[0] == 1 and np.isnan(out["model_version"].iloc[1])
        log = pd.DataFrame({"series_id": ["s1"], "action": ["promoted"], "training_version": [3],
                            "decided_at": [datetime(2025, 1, 2, 3, 4, 5, 123456)]})
        wh.append("promotion_log", date(2025, 1, 1), log)
        back = wh.read("SELECT * FROM promotion_log")
        assert back["decided_at"].iloc[0] == pd.Timestamp("2025-01-02 03:04:05.123456")
        metrics = wh.refresh_metrics(date(2025, 1, 1))
        assert metrics["series"] == 3 and metrics["promoted"] == 1
        wh.refresh_metrics(date(2025, 1, 1))  # views are re-created, not duplicated
        assert len(wh.read("SELECT * FROM v_series_accuracy")) == 3
        assert len(wh.read("SELECT * FROM v_run_summary")) == 1
    finally:
        wh.dispose()


@pytest.mark.services
def test_postgres_replace_is_one_transaction(pg_warehouse_url):
    wh = Warehouse(pg_warehouse_url, "ds", ["store", "item"])
    try:
        wh.replace_run("training_report", date(2025, 1, 1), _awkward_rows())
        broken = _awkward_rows().assign(series_id=["x", None, "z"])  # violates NOT NULL in the COPY
        with pytest.raises(sa.exc.IntegrityError):
            wh.replace_run("training_report", date(2025, 1, 1), broken)
        out = wh.read("SELECT series_id FROM training_report")
        assert sorted(out["series_id"]) == sorted(_awkward_rows()["series_id"])  # the old run is intact
    finally:
        wh.dispose()


@pytest.mark.parametrize("dialect", [sql_server_2019(), postgresql.dialect(), mysql.dialect()], ids=lambda d: d.name)
def test_every_warehouse_statement_compiles(dialect):
    """Compile DDL, the run replace (delete + executemany insert), the metric queries and the
    views for SQL Server (and PostgreSQL/MySQL); no server needed."""
    wh = Warehouse("sqlite://", "retail", ["store", "item"])
    try:
        sample = pd.DataFrame({"store": np.array([1], dtype=np.int64), "item": ["a"]})
        compiled = []
        for table in wh.tables(sample):
            compiled.append(str(CreateTable(table).compile(dialect=dialect)))
            compiled += [str(CreateIndex(ix).compile(dialect=dialect)) for ix in table.indexes]
            compiled.append(str(wh.delete_run_statement(table, date(2025, 1, 1)).compile(dialect=dialect)))
            compiled.append(str(table.insert().compile(dialect=dialect)))
        compiled += [str(sa.text(q).compile(dialect=dialect)) for q in METRIC_QUERIES.values()]
        for name in VIEWS:
            compiled += view_statements(dialect, name)
    finally:
        wh.dispose()
    text = "\n".join(compiled)
    if dialect.name == "mssql":
        assert "CREATE OR ALTER VIEW v_latest_predictions AS" in text and "DROP VIEW" not in text
        assert "store BIGINT" in text and "reason VARCHAR(max)" in text and "run_date DATE NOT NULL" in text
        assert "DELETE FROM training_report WHERE training_report.dataset = ? AND training_report.run_date = ?" in text
    elif dialect.name == "postgresql":
        assert "DROP VIEW IF EXISTS v_run_summary" in text and "CREATE VIEW v_run_summary AS" in text
    else:
        assert "CREATE OR REPLACE VIEW v_promotion_log AS" in text
    assert text.count("CREATE TABLE") == len(TABLES)


@pytest.mark.services
def test_pipeline_with_postgres_warehouse(tmp_path, pg_warehouse_url, spark, statements):
    """The whole asset graph with ``storage.warehouse_url`` on PostgreSQL: exact row counts, no
    duplicates when the same run date is materialized again, BI views readable."""
    path = write_config(tmp_path, storage={"warehouse_url": pg_warehouse_url}, horizon=7)
    cfg = load_config(path)
    write_sales(cfg.source.url, cfg.source.table, stores=2, items=4, days=400, seed=3)
    assert materialize_all(cfg, path, spark).success
    wh = Warehouse(cfg.storage.warehouse_url, cfg.name, cfg.keys)
    try:
        counts = {t: len(wh.read(f"SELECT * FROM {t}")) for t in TABLES}
        report = wh.read("SELECT * FROM training_report")
        # (a series whose model failed the rules is forecast by a fallback: docs/accuracy.md)
        log = wh.read("SELECT series_id, action FROM promotion_log")
        promoted = log[log["action"].isin(["promoted", "fallback"])]
        assert counts["training_report"] == 8 and counts["forecast_metrics"] == 1
        assert log["action"].isin(["promoted", "rejected"]).sum() == (report["status"] == "trained").sum()
        assert counts["predictions"] == cfg.horizon * len(promoted) > 0
        assert any("FROM mm_stage_predictions_" in s for s, _ in statements), "predictions were bulk-loaded with COPY"

        assert materialize_all(cfg, path, spark).success  # the same run date again
        assert {t: len(wh.read(f"SELECT * FROM {t}")) for t in TABLES} == counts
        preds = wh.read("SELECT * FROM predictions")
        assert not preds.duplicated(["dataset", "run_date", "series_id", "ds"]).any()
        assert len(wh.read("SELECT * FROM v_latest_predictions")) == counts["predictions"]
        assert len(wh.read("SELECT * FROM v_series_accuracy")) == 8
        summary = wh.read("SELECT * FROM v_run_summary WHERE run_date = :r", r=RUN_DATE)
        assert summary["prediction_rows"].tolist() == [counts["predictions"]]
    finally:
        wh.dispose()
