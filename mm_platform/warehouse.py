"""The SQL warehouse: predictions, training and promotion reports, metrics tables and the
views a BI tool reads. Any SQLAlchemy URL; SQLite under ``$MM_HOME`` by default.

Every write of a run replaces that run's rows inside one transaction, so readers never see
a half-written run and reruns never duplicate rows. On PostgreSQL (psycopg2) the rows are
bulk-loaded with ``COPY`` into a temporary staging table first and then moved with one
``INSERT ... SELECT`` in the same transaction as the delete; other databases get one
``executemany`` (SQL Server through pyodbc with ``fast_executemany``, see ``mm_platform.sql``).
"""

from __future__ import annotations

import io
import math
import uuid
from datetime import date, datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa

from mm_platform.faults import fault_point
from mm_platform.sql import create_engine

PREDICTION_COLUMNS = ["series_id", "ds", "yhat", "yhat_lower", "yhat_upper", "model_name", "model_version"]


def _key_type(dtype) -> sa.types.TypeEngine:
    return sa.BigInteger() if np.issubdtype(dtype, np.integer) else sa.String(200)


class Warehouse:
    def __init__(self, url: str, dataset: str, keys: list[str]):
        self.url = url
        self.dataset = dataset
        self.keys = keys
        self.engine = create_engine(url)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- tables ----------------------------------------------------------------------------------

    def _key_columns(self, sample: pd.DataFrame | None) -> list[sa.Column]:
        return [
            sa.Column(k, _key_type(sample[k].dtype) if sample is not None and k in sample else sa.String(200))
            for k in self.keys
        ]

    def _table(self, name: str, sample: pd.DataFrame | None = None) -> sa.Table:
        md = sa.MetaData()
        run = [sa.Column("dataset", sa.String(100), nullable=False), sa.Column("run_date", sa.Date, nullable=False)]
        if name == "predictions":
            cols = [
                *run,
                *self._key_columns(sample),
                sa.Column("series_id", sa.String(400), nullable=False),
                sa.Column("ds", sa.Date, nullable=False),
                sa.Column("yhat", sa.Float),
                sa.Column("yhat_lower", sa.Float),
                sa.Column("yhat_upper", sa.Float),
                sa.Column("model_name", sa.String(400)),
                sa.Column("model_version", sa.Integer),
                sa.Column("scoring_run_id", sa.String(64)),
            ]
            t = sa.Table(name, md, *cols)
            sa.Index("ix_predictions_run_series", t.c.dataset, t.c.run_date, t.c.series_id)
            return t
        if name == "training_report":
            cols = [
                *run,
                *self._key_columns(sample),
                sa.Column("series_id", sa.String(400), nullable=False),
                sa.Column("status", sa.String(20)),
                sa.Column("reason", sa.Text),
                sa.Column("n_obs", sa.Integer),
                sa.Column("last_date", sa.String(10)),
                sa.Column("fingerprint", sa.String(64)),
                *[sa.Column(m, sa.Float) for m in ("mape", "wape", "rmse", "naive_mape", "naive_wape", "naive_rmse")],
                sa.Column("fit_seconds", sa.Float),
                sa.Column("algorithm", sa.String(50)),
                sa.Column("model_name", sa.String(400)),
                sa.Column("model_version", sa.Integer),
                sa.Column("registration", sa.String(20)),
                sa.Column("training_run_id", sa.String(64)),
            ]
            return sa.Table(name, md, *cols)
        if name == "scoring_report":
            cols = [
                *run,
                *self._key_columns(sample),
                sa.Column("series_id", sa.String(400), nullable=False),
                sa.Column("status", sa.String(20)),  # scored / failed / skipped
                sa.Column("reason", sa.Text),
                sa.Column("model_name", sa.String(400)),
                sa.Column("model_version", sa.Integer),
                sa.Column("prediction_rows", sa.Integer),
                sa.Column("scoring_run_id", sa.String(64)),
            ]
            return sa.Table(name, md, *cols)
        if name == "promotion_log":
            cols = [
                *run,
                sa.Column("series_id", sa.String(400), nullable=False),
                sa.Column("model_name", sa.String(400)),
                sa.Column("training_version", sa.Integer),
                sa.Column("production_version", sa.Integer),
                sa.Column("action", sa.String(20)),  # promoted / rejected / rollback
                sa.Column("reasons", sa.Text),
                sa.Column("wape", sa.Float),
                sa.Column("mape", sa.Float),
                sa.Column("naive_wape", sa.Float),
                sa.Column("production_wape", sa.Float),
                sa.Column("decided_by", sa.String(200)),
                sa.Column("decided_at", sa.DateTime),
            ]
            return sa.Table(name, md, *cols)
        if name == "missing_series":
            # The series in the lake that the source no longer has, as of the newest copy
            # (replaced whole by each copy: a state, not a log). See mm_platform.ingestion.
            cols = [
                sa.Column("dataset", sa.String(100), nullable=False),
                sa.Column("detected_run_date", sa.Date, nullable=False),
                *self._key_columns(sample),
                sa.Column("series_id", sa.String(400), nullable=False),
                sa.Column("last_date", sa.String(10)),
                sa.Column("action", sa.String(20)),  # keep_scoring / stop_scoring
            ]
            return sa.Table(name, md, *cols)
        raise KeyError(name)

    def _records(self, table: sa.Table, run_date: date, rows: pd.DataFrame) -> pd.DataFrame:
        records = rows.assign(dataset=self.dataset, run_date=run_date)
        cols = [c.name for c in table.columns if c.name in records.columns]
        return records[cols].astype(object).where(records[cols].notna(), None)

    def replace_run(self, name: str, run_date: date, rows: pd.DataFrame) -> int:
        """Atomically replace this dataset's rows for ``run_date`` in table ``name``."""
        return self.replace_runs(run_date, {name: rows})[name]

    def replace_runs(self, run_date: date, tables: dict[str, pd.DataFrame]) -> dict[str, int]:
        """Replace this dataset's ``run_date`` rows in several tables in one transaction
        (e.g. predictions and their scoring report: readers see both old or both new)."""
        plan = []
        for name, rows in tables.items():
            table = self._table(name, rows)
            table.metadata.create_all(self.engine, checkfirst=True)
            plan.append((name, table, self._records(table, run_date, rows)))
        with self.engine.begin() as conn:
            for _, table, records in plan:
                staged = _stage(conn, table, records)  # bulk load first: the target is locked only briefly
                conn.execute(self.delete_run_statement(table, run_date))
                fault_point("warehouse.after_delete")  # old rows deleted, new ones not inserted, not committed
                _insert(conn, table, records, staged)
        return {name: len(records) for name, _, records in plan}

    def append(self, name: str, run_date: date, rows: pd.DataFrame) -> int:
        table = self._table(name, rows)
        table.metadata.create_all(self.engine, checkfirst=True)
        records = self._records(table, run_date, rows)
        with self.engine.begin() as conn:
            _insert(conn, table, records, _stage(conn, table, records))
        return len(records)

    def replace_missing_series(
        self, run_date: date, series: list[dict], action: str, key_types: dict[str, str] | None = None
    ) -> int:
        """Replace this dataset's ``missing_series`` rows (keys, series_id, last_date) and make
        sure ``v_missing_series`` exists; an empty list clears them. ``key_types`` (the lake's
        contract, ``int64``/``string``) types the key columns even when no series is missing."""
        rows = pd.DataFrame(series, columns=[*self.keys, "series_id", "last_date"]).assign(action=action)
        for k, t in (key_types or {}).items():
            if k in rows:
                rows[k] = rows[k].astype("int64" if t == "int64" else object)
        table = self._table("missing_series", rows)
        table.metadata.create_all(self.engine, checkfirst=True)
        records = rows.assign(dataset=self.dataset, detected_run_date=run_date)
        records = records[[c.name for c in table.columns]].astype(object).where(records.notna(), None)
        with self.engine.begin() as conn:
            staged = _stage(conn, table, records)
            conn.execute(table.delete().where(table.c.dataset == self.dataset))
            _insert(conn, table, records, staged)
            for stmt in view_statements(conn.dialect, "v_missing_series"):
                conn.execute(sa.text(stmt))
        return len(records)

    def delete_run_statement(self, table: sa.Table, run_date: date) -> sa.Delete:
        return table.delete().where(table.c.dataset == self.dataset, table.c.run_date == run_date)

    def read(self, sql: str, **params) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql(sa.text(sql), conn, params=params)

    def has_table(self, name: str) -> bool:
        return sa.inspect(self.engine).has_table(name)

    # -- BI tables and views ------------------------------------------------------------------------

    def refresh_metrics(self, run_date: date) -> dict:
        """Aggregate accuracy per run into ``forecast_metrics`` and (re)create the BI views."""
        fm = self._metrics_table()
        fm.metadata.create_all(self.engine, checkfirst=True)
        report = (
            self.read(METRIC_QUERIES["report"], d=self.dataset, r=run_date)
            if self.has_table("training_report")
            else pd.DataFrame(columns=["status", "wape", "mape", "naive_wape"])
        )
        trained = report[report["status"] == "trained"]
        promoted = (
            int(self.read(METRIC_QUERIES["promoted"], d=self.dataset, r=run_date)["n"].iloc[0])
            if self.has_table("promotion_log")
            else 0
        )
        pred_rows = (
            int(self.read(METRIC_QUERIES["prediction_rows"], d=self.dataset, r=run_date)["n"].iloc[0])
            if self.has_table("predictions")
            else 0
        )
        both = trained.dropna(subset=["wape", "naive_wape"])
        row = {
            "dataset": self.dataset,
            "run_date": run_date,
            "series": len(report),
            "trained": len(trained),
            "skipped": int((report["status"] == "skipped").sum()),
            "failed": int((report["status"] == "failed").sum()),
            "promoted": promoted,
            "prediction_rows": pred_rows,
            "median_wape": _median(trained["wape"]),
            "median_mape": _median(trained["mape"]),
            "median_naive_wape": _median(trained["naive_wape"]),
            "share_beating_naive": float((both["wape"] < both["naive_wape"]).mean()) if len(both) else None,
        }
        with self.engine.begin() as conn:
            conn.execute(self.delete_run_statement(fm, run_date))
            conn.execute(fm.insert(), [row])
            self._create_views(conn)
        return row

    @staticmethod
    def _metrics_table() -> sa.Table:
        return sa.Table(
            "forecast_metrics",
            sa.MetaData(),
            sa.Column("dataset", sa.String(100), nullable=False),
            sa.Column("run_date", sa.Date, nullable=False),
            sa.Column("series", sa.Integer),
            sa.Column("trained", sa.Integer),
            sa.Column("skipped", sa.Integer),
            sa.Column("failed", sa.Integer),
            sa.Column("promoted", sa.Integer),
            sa.Column("prediction_rows", sa.Integer),
            sa.Column("median_wape", sa.Float),
            sa.Column("median_mape", sa.Float),
            sa.Column("median_naive_wape", sa.Float),
            sa.Column("share_beating_naive", sa.Float),
        )

    def tables(self, sample: pd.DataFrame | None = None) -> list[sa.Table]:
        """Every table the warehouse writes (for DDL review, e.g. compiling for another dialect)."""
        return [*(self._table(n, sample) for n in ("predictions", "training_report", "scoring_report", "promotion_log")),
                self._metrics_table()]

    def _create_views(self, conn) -> None:
        existing = set(sa.inspect(conn).get_table_names())
        for name, base in VIEW_BASES.items():
            if base not in existing:
                continue
            for stmt in view_statements(conn.dialect, name):
                conn.execute(sa.text(stmt))


# The queries refresh_metrics runs (plain SQL every supported dialect accepts).
METRIC_QUERIES = {
    "report": "SELECT status, wape, mape, naive_wape FROM training_report WHERE dataset = :d AND run_date = :r",
    "promoted": "SELECT COUNT(*) AS n FROM promotion_log WHERE dataset = :d AND run_date = :r AND action = 'promoted'",
    "prediction_rows": "SELECT COUNT(*) AS n FROM predictions WHERE dataset = :d AND run_date = :r",
}

# The BI views and the table each one reads.
VIEWS = {
    # The newest scoring run's forecast for each series.
    "v_latest_predictions": """
        SELECT p.* FROM predictions p
        JOIN (SELECT dataset, MAX(run_date) AS run_date FROM predictions GROUP BY dataset) m
          ON p.dataset = m.dataset AND p.run_date = m.run_date""",
    # Holdout accuracy of the newest training run, one row per series.
    "v_series_accuracy": """
        SELECT t.* FROM training_report t
        JOIN (SELECT dataset, MAX(run_date) AS run_date FROM training_report GROUP BY dataset) m
          ON t.dataset = m.dataset AND t.run_date = m.run_date""",
    # Per-series outcome of the newest scoring run (scored / failed / skipped, with the reason).
    "v_scoring_report": """
        SELECT s.* FROM scoring_report s
        JOIN (SELECT dataset, MAX(run_date) AS run_date FROM scoring_report GROUP BY dataset) m
          ON s.dataset = m.dataset AND s.run_date = m.run_date""",
    "v_run_summary": "SELECT * FROM forecast_metrics",
    "v_promotion_log": "SELECT * FROM promotion_log",
    # Series in the lake with no row left in the source (newest copy), and what scoring does.
    "v_missing_series": "SELECT * FROM missing_series",
}
VIEW_BASES = {
    "v_latest_predictions": "predictions",
    "v_series_accuracy": "training_report",
    "v_scoring_report": "scoring_report",
    "v_run_summary": "forecast_metrics",
    "v_promotion_log": "promotion_log",
    "v_missing_series": "missing_series",
}


def view_statements(dialect: sa.Dialect, name: str) -> list[str]:
    """SQL that (re)creates view ``name`` on ``dialect``.

    SQL Server: ``CREATE OR ALTER VIEW`` (2016 SP1+; keeps grants, no moment without the
    view). MySQL/MariaDB: ``CREATE OR REPLACE VIEW``. PostgreSQL cannot ``CREATE OR REPLACE``
    a view whose columns changed, so it drops and creates, which is atomic there because
    DDL is transactional. SQLite and others: drop and create.
    """
    quoted = dialect.identifier_preparer.quote(name)
    body = VIEWS[name]
    if dialect.name == "mssql":
        return [f"CREATE OR ALTER VIEW {quoted} AS {body}"]
    if dialect.name in ("mysql", "mariadb"):
        return [f"CREATE OR REPLACE VIEW {quoted} AS {body}"]
    return [f"DROP VIEW IF EXISTS {quoted}", f"CREATE VIEW {quoted} AS {body}"]


# -- bulk load -----------------------------------------------------------------------------------


def _is_psycopg2(conn) -> bool:
    return conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg2"


def _stage(conn, table: sa.Table, records: pd.DataFrame) -> str | None:
    """On PostgreSQL/psycopg2: COPY ``records`` into a temporary table like ``table`` (dropped at
    commit) and return its name. Elsewhere: nothing to do (``None``)."""
    if not len(records) or not _is_psycopg2(conn):
        return None
    q = conn.dialect.identifier_preparer.quote
    stage = f"mm_stage_{table.name}_{uuid.uuid4().hex[:8]}"
    conn.execute(sa.text(f"CREATE TEMPORARY TABLE {q(stage)} (LIKE {q(table.name)} INCLUDING DEFAULTS) ON COMMIT DROP"))
    cols = ", ".join(q(c) for c in records.columns)
    buf = io.StringIO(_copy_text(records, table))
    # The DBAPI cursor of this SQLAlchemy connection: same session, same transaction.
    copy = f"COPY {q(stage)} ({cols}) FROM STDIN"
    dbapi = conn.dialect.loaded_dbapi
    try:
        with conn.connection.driver_connection.cursor() as cur:
            cur.copy_expert(copy, buf)
    except dbapi.Error as exc:  # raise it as SQLAlchemy would (IntegrityError, DataError...)
        raise sa.exc.DBAPIError.instance(copy, None, exc, dbapi.Error) from exc
    return stage


def _insert(conn, table: sa.Table, records: pd.DataFrame, staged: str | None) -> None:
    if not len(records):
        return
    if staged is not None:
        q = conn.dialect.identifier_preparer.quote
        cols = ", ".join(q(c) for c in records.columns)
        conn.execute(sa.text(f"INSERT INTO {q(table.name)} ({cols}) SELECT {cols} FROM {q(staged)}"))
        return
    # One executemany; SQLAlchemy batches it (insertmanyvalues) and pyodbc uses fast_executemany.
    conn.execute(table.insert(), records.to_dict("records"))


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_value(v, integer: bool = False) -> str:
    """One value in PostgreSQL's COPY text format (``integer``: the column is an integer type,
    so integral floats, as pandas makes of integer columns with missing values, lose their ``.0``)."""
    if v is None:
        return "\\N"
    if isinstance(v, bool | np.bool_):
        return "t" if v else "f"
    if isinstance(v, float | np.floating):
        v = float(v)
        if math.isnan(v):
            return "\\N"
        if integer and v.is_integer():
            return str(int(v))
        return repr(v)  # 'inf'/'-inf' are valid float input since PostgreSQL 12
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, datetime | date):
        return v.isoformat()
    return str(v).translate(_COPY_ESCAPES)


def _copy_text(records: pd.DataFrame, table: sa.Table) -> str:
    columns = [
        [_copy_value(v, isinstance(table.c[c].type, sa.Integer)) for v in records[c].tolist()] for c in records.columns
    ]
    return "".join("\t".join(row) + "\n" for row in zip(*columns, strict=True))


def _median(s: pd.Series) -> float | None:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.median()) if len(s) else None
