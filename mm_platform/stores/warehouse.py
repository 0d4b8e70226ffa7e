"""The SQL warehouse: predictions, training and promotion reports, metrics tables and the
views a BI tool reads. Any SQLAlchemy URL; SQLite under ``$MM_HOME`` by default.

Every write of a run replaces that run's rows inside one transaction, so readers never see
a half-written run and reruns never duplicate rows. On PostgreSQL (psycopg2) the rows are
bulk-loaded with ``COPY`` into a temporary staging table first and then moved with one
``INSERT ... SELECT`` in the same transaction as the delete; other databases get one
``executemany`` (SQL Server through pyodbc with ``fast_executemany``, see ``mm_platform.stores.sql``).
"""

from __future__ import annotations

import io
import math
import uuid
from datetime import date, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from mm_platform.core.faults import fault_point
from mm_platform.core.vocabulary import (
    DRIFT_REFIT,
    FAILED,
    METRICS,
    NOT_FORECAST,
    PROMOTED,
    REJECTED,
    SCORED,
    SKIPPED,
    TIER_CHAMPION,
    TIER_FALLBACK,
    TRAINED,
)
from mm_platform.stores.sql import create_engine

PREDICTION_COLUMNS = ["series_id", "ds", "yhat", "yhat_lower", "yhat_upper", "model_name", "model_version", "tier"]


def _key_type(dtype) -> sa.types.TypeEngine:
    return sa.BigInteger() if np.issubdtype(dtype, np.integer) else sa.String(200)


class Warehouse:
    def __init__(self, url: str, dataset: str, keys: list[str]):
        self.url = url
        self.dataset = dataset
        self.keys = keys
        self.engine = create_engine(url)
        self._ensured: set[str] = set()  # tables whose columns ensure_table has checked

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
                sa.Column("tier", sa.String(20)),  # champion / fallback (docs/accuracy.md)
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
                *[sa.Column(m, sa.Float) for m in METRICS],
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
                sa.Column("tier", sa.String(20)),  # the production model's tier: champion / fallback
            ]
            return sa.Table(name, md, *cols)
        if name == "promotion_log":
            cols = [
                *run,
                sa.Column("series_id", sa.String(400), nullable=False),
                sa.Column("model_name", sa.String(400)),
                sa.Column("training_version", sa.Integer),
                sa.Column("production_version", sa.Integer),
                # promoted / rejected / rollback / fallback / not_forecast / drift
                sa.Column("action", sa.String(20)),
                sa.Column("reasons", sa.Text),
                sa.Column("wape", sa.Float),
                sa.Column("mape", sa.Float),
                sa.Column("naive_wape", sa.Float),
                sa.Column("production_wape", sa.Float),
                sa.Column("decided_by", sa.String(200)),
                sa.Column("decided_at", sa.DateTime),
                sa.Column("tier", sa.String(20)),  # of the model this row put in production: champion / fallback
                sa.Column("family", sa.String(50)),
            ]
            return sa.Table(name, md, *cols)
        if name == "promotion_coverage":
            # What forecasts each series of the run date's training set after promotion.
            cols = [
                *run,
                sa.Column("series_id", sa.String(400), nullable=False),
                sa.Column("tier", sa.String(20)),  # champion / fallback / not_forecast
                sa.Column("family", sa.String(50)),
                sa.Column("reason", sa.Text),
                sa.Column("model_name", sa.String(400)),
                sa.Column("production_version", sa.Integer),
            ]
            return sa.Table(name, md, *cols)
        if name == "forecast_accuracy":
            # Realized accuracy of the forecasts published on run_date, once actuals arrived
            # (mm_platform.steps.accuracy): one row per series and forecast run date.
            cols = [
                *run,
                sa.Column("series_id", sa.String(400), nullable=False),
                sa.Column("tier", sa.String(20)),
                sa.Column("model_name", sa.String(400)),
                sa.Column("model_version", sa.Integer),
                sa.Column("pairs", sa.Integer),  # forecast dates with an actual
                sa.Column("first_ds", sa.Date),
                sa.Column("last_ds", sa.Date),
                sa.Column("max_step", sa.Integer),  # furthest horizon step evaluated
                sa.Column("actual_sum", sa.Float),
                sa.Column("abs_error", sa.Float),
                sa.Column("error_sum", sa.Float),  # sum of forecast - actual
                sa.Column("inside", sa.Integer),  # actuals inside [yhat_lower, yhat_upper]
                sa.Column("naive_abs_error", sa.Float),
                sa.Column("wape", sa.Float),
                sa.Column("bias", sa.Float),
                sa.Column("interval_coverage", sa.Float),
                sa.Column("naive_wape", sa.Float),
                sa.Column("estimated_wape", sa.Float),  # the holdout WAPE the model was promoted on
                sa.Column("evaluated_at", sa.DateTime),
            ]
            return sa.Table(name, md, *cols)
        if name == "drift_log":
            # Series whose realized accuracy was flagged, the numbers, and the action taken.
            cols = [
                *run,
                sa.Column("series_id", sa.String(400), nullable=False),
                sa.Column("model_name", sa.String(400)),
                sa.Column("model_version", sa.Integer),
                sa.Column("window_start", sa.Date),
                sa.Column("pairs", sa.Integer),
                sa.Column("realized_wape", sa.Float),
                sa.Column("estimated_wape", sa.Float),
                sa.Column("naive_wape", sa.Float),
                sa.Column("factor", sa.Float),
                sa.Column("reasons", sa.Text),
                sa.Column("actions", sa.Text),
                sa.Column("decided_at", sa.DateTime),
            ]
            return sa.Table(name, md, *cols)
        if name == "missing_series":
            # The series in the lake that the source no longer has, as of the newest copy
            # (replaced whole by each copy: a state, not a log). See mm_platform.steps.ingest.
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

    def _records(self, table: sa.Table, run_date: date, rows: pd.DataFrame | pa.Table) -> _Records:
        extra = {"dataset": self.dataset, "run_date": run_date}
        have = {*(rows.column_names if isinstance(rows, pa.Table) else rows.columns), *extra}
        return _Records(rows, [c.name for c in table.columns if c.name in have], extra)

    def replace_run(self, name: str, run_date: date, rows: pd.DataFrame) -> int:
        """Atomically replace this dataset's rows for ``run_date`` in table ``name``."""
        return self.replace_runs(run_date, {name: rows})[name]

    def replace_runs(
        self, run_date: date, tables: dict[str, pd.DataFrame], keep: dict[str, list[str]] | None = None
    ) -> dict[str, int]:
        """Replace this dataset's ``run_date`` rows in several tables in one transaction
        (e.g. predictions and their scoring report: readers see both old or both new).
        ``keep``: per table, series whose existing ``run_date`` rows stay as they are."""
        keep = keep or {}
        plan = []
        for name, rows in tables.items():
            table = self._table(name, rows.slice(0, 1).to_pandas() if isinstance(rows, pa.Table) else rows)
            self.ensure_table(table)
            plan.append((name, table, self._records(table, run_date, rows)))
        with self.engine.begin() as conn:
            for name, table, records in plan:
                staged = _stage(conn, table, records)  # bulk load first: the target is locked only briefly
                delete = self.delete_run_statement(table, run_date)
                if keep.get(name):
                    delete = delete.where(table.c.series_id.not_in(keep[name]))
                conn.execute(delete)
                fault_point("warehouse.after_delete")  # old rows deleted, new ones not inserted, not committed
                _insert(conn, table, records, staged)
        return {name: len(records) for name, _, records in plan}

    def replace_series(self, name: str, run_date: date, rows: pd.DataFrame, series: list[str]) -> int:
        """Replace only ``series``' rows of ``run_date`` in table ``name``, in one transaction
        (a retrain of some series)."""
        table = self._table(name, rows)
        self.ensure_table(table)
        records = self._records(table, run_date, rows)
        with self.engine.begin() as conn:
            staged = _stage(conn, table, records)
            conn.execute(self.delete_run_statement(table, run_date).where(table.c.series_id.in_(list(series))))
            _insert(conn, table, records, staged)
        return len(records)

    def newest_run_date(self, name: str) -> date | None:
        """The newest run date of this dataset in table ``name`` (None: no run yet)."""
        if not self.has_table(name):
            return None
        table = self._table(name)
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(sa.func.max(table.c.run_date)).where(table.c.dataset == self.dataset)).scalar()
        return None if value is None else value if isinstance(value, date) else date.fromisoformat(str(value)[:10])

    def series_with_status(self, name: str, run_date: date, status: str) -> list[str]:
        """Series ids of ``run_date`` in report table ``name`` with ``status``."""
        if not self.has_table(name):
            return []
        table = self._table(name)
        query = sa.select(table.c.series_id).where(
            table.c.dataset == self.dataset, table.c.run_date == run_date, table.c.status == status
        )
        with self.engine.connect() as conn:
            return sorted(r[0] for r in conn.execute(query))

    def decided_promotions(self) -> set[tuple[str, int]]:
        """(series id, training version) pairs the promotion step has already decided on."""
        if not self.has_table("promotion_log"):
            return set()
        table = self._table("promotion_log")
        query = sa.select(table.c.series_id, table.c.training_version).where(
            table.c.dataset == self.dataset, table.c.action.in_([PROMOTED, REJECTED])
        )
        with self.engine.connect() as conn:
            return {(sid, int(v)) for sid, v in conn.execute(query)}

    # -- reads for the asset checks (mm_platform/defs/*/checks.py) ---------------------------------

    def series_of_run(self, name: str, run_date: date) -> list[str]:
        """Every series id of ``run_date`` in report table ``name``, whatever its status."""
        if not self.has_table(name):
            return []
        table = self._table(name)
        query = sa.select(table.c.series_id).where(table.c.dataset == self.dataset, table.c.run_date == run_date)
        with self.engine.connect() as conn:
            return sorted({r[0] for r in conn.execute(query)})

    def series_with_action(self, actions: list[str], until: date | None = None) -> list[str]:
        """Series ids with a ``promotion_log`` row of one of ``actions`` (on or before ``until``)."""
        if not self.has_table("promotion_log"):
            return []
        table = self._table("promotion_log")
        query = sa.select(table.c.series_id).where(table.c.dataset == self.dataset, table.c.action.in_(list(actions)))
        if until is not None:
            query = query.where(table.c.run_date <= until)
        with self.engine.connect() as conn:
            return sorted({r[0] for r in conn.execute(query)})

    def naive_comparison(self, run_date: date) -> tuple[int, int]:
        """(trained series with both holdout WAPEs, those beating seasonal naive) of ``run_date``'s
        training report: the same share ``refresh_metrics`` records as share_beating_naive."""
        if not self.has_table("training_report"):
            return 0, 0
        t = self._table("training_report")
        both = sa.and_(t.c.wape.is_not(None), t.c.naive_wape.is_not(None))
        query = sa.select(
            sa.func.count(), sa.func.coalesce(sa.func.sum(sa.case((t.c.wape < t.c.naive_wape, 1), else_=0)), 0)
        ).where(t.c.dataset == self.dataset, t.c.run_date == run_date, t.c.status == TRAINED, both)
        with self.engine.connect() as conn:
            total, beating = conn.execute(query).one()
        return int(total), int(beating)

    def prediction_stats(self, run_date: date) -> dict:
        """Over ``run_date``'s predictions of the series its scoring report marks scored (not the
        rows a failed series keeps from an earlier scoring): scored series, rows, series with
        rows, and per value column the missing count, minimum and maximum (in SQL: no rows are
        read into memory)."""
        columns = ("yhat", "yhat_lower", "yhat_upper")
        stats = {"scored_series": 0, "rows": 0, "series_with_rows": 0,
                 **{f"{c}_{k}": None for c in columns for k in ("missing", "min", "max")}}
        if not self.has_table("scoring_report"):
            return stats
        s = self._table("scoring_report")
        run = sa.and_(s.c.dataset == self.dataset, s.c.run_date == run_date, s.c.status == SCORED)
        with self.engine.connect() as conn:
            stats["scored_series"] = int(conn.execute(sa.select(sa.func.count()).where(run)).scalar() or 0)
            if not self.has_table("predictions"):
                return stats
            p = self._table("predictions")
            joined = p.join(s, sa.and_(s.c.dataset == p.c.dataset, s.c.run_date == p.c.run_date, s.c.series_id == p.c.series_id))
            aggregates = [sa.func.count().label("rows"), sa.func.count(sa.distinct(p.c.series_id)).label("series_with_rows")]
            for c in columns:
                aggregates += [sa.func.coalesce(sa.func.sum(sa.case((p.c[c].is_(None), 1), else_=0)), 0).label(f"{c}_missing"),
                               sa.func.min(p.c[c]).label(f"{c}_min"), sa.func.max(p.c[c]).label(f"{c}_max")]
            row = conn.execute(sa.select(*aggregates).select_from(joined).where(p.c.dataset == self.dataset,
                                                                                 p.c.run_date == run_date, run)).one()
        stats.update({k: (None if v is None else float(v) if k.endswith(("_min", "_max")) else int(v))
                      for k, v in row._mapping.items()})
        return stats

    def append(self, name: str, run_date: date, rows: pd.DataFrame) -> int:
        table = self._table(name, rows)
        self.ensure_table(table)
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
        records = _Records(rows, [c.name for c in table.columns], {"dataset": self.dataset, "detected_run_date": run_date})
        with self.engine.begin() as conn:
            staged = _stage(conn, table, records)
            conn.execute(table.delete().where(table.c.dataset == self.dataset))
            _insert(conn, table, records, staged)
            for stmt in view_statements(conn.dialect, "v_missing_series"):
                conn.execute(sa.text(stmt))
        return len(records)

    def ensure_table(self, table: sa.Table) -> None:
        """Create ``table`` if missing, and add the (nullable) columns a newer mm_platform
        defines that an existing table lacks (e.g. ``tier``): upgrading needs no migration."""
        if table.name in self._ensured:
            return
        table.metadata.create_all(self.engine, checkfirst=True)
        have = {c["name"] for c in sa.inspect(self.engine).get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in have]
        if missing:
            with self.engine.begin() as conn:
                q = conn.dialect.identifier_preparer.quote
                add = "ADD" if conn.dialect.name == "mssql" else "ADD COLUMN"
                for c in missing:
                    conn.execute(sa.text(f"ALTER TABLE {q(table.name)} {add} {q(c.name)} {c.type.compile(dialect=conn.dialect)}"))
        self._ensured.add(table.name)

    def replace_run_dates(self, name: str, rows: pd.DataFrame, run_dates: list[date]) -> int:
        """Replace this dataset's rows of every date in ``run_dates`` in table ``name`` with
        ``rows`` (which carry their own ``run_date``), in one transaction, and refresh the
        BI views (e.g. realized accuracy re-evaluated over a window of forecast run dates)."""
        table = self._table(name, rows)
        self.ensure_table(table)
        records = _Records(rows, [c.name for c in table.columns if c.name in {*rows.columns, "dataset"}], {"dataset": self.dataset})
        with self.engine.begin() as conn:
            staged = _stage(conn, table, records)
            if run_dates:
                conn.execute(table.delete().where(table.c.dataset == self.dataset, table.c.run_date.in_(list(run_dates))))
            _insert(conn, table, records, staged)
            self._create_views(conn)
        return len(records)

    def published_forecasts(self, first: date, last: date) -> pd.DataFrame:
        """The predictions of the run dates ``first``..``last`` (series_id, run_date, ds, yhat,
        yhat_lower, yhat_upper, model_name, model_version, tier): what was published."""
        cols = ["run_date", "series_id", "ds", "yhat", "yhat_lower", "yhat_upper", "model_name", "model_version", "tier"]
        if not self.has_table("predictions"):
            return pd.DataFrame(columns=cols)
        table = self._table("predictions")
        self.ensure_table(table)  # (tables written before tiers existed get the column)
        query = sa.select(*(table.c[c] for c in cols)).where(
            table.c.dataset == self.dataset, table.c.run_date >= first, table.c.run_date <= last
        )
        with self.engine.connect() as conn:
            return pd.read_sql(query, conn)

    def refit_requests(self) -> list[str]:
        """Series that realized-accuracy drift asked to refit (``drift_log`` actions with
        ``refit``) since the newest training run: the marker a training run honours."""
        if not self.has_table("drift_log"):
            return []
        table = self._table("drift_log")
        newest = self.newest_run_date("training_report")
        query = sa.select(table.c.series_id).where(table.c.dataset == self.dataset, table.c.actions.like(f"%{DRIFT_REFIT}%"))
        if newest is not None:
            query = query.where(table.c.run_date >= newest)
        with self.engine.connect() as conn:
            return sorted({r[0] for r in conn.execute(query)})

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
        self.ensure_table(fm)
        report = (
            self.read(METRIC_QUERIES["report"], d=self.dataset, r=run_date)
            if self.has_table("training_report")
            else pd.DataFrame(columns=["status", "wape", "mape", "naive_wape"])
        )
        trained = report[report["status"] == TRAINED]
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
        coverage = (
            self.read(METRIC_QUERIES["coverage"], d=self.dataset, r=run_date)
            if self.has_table("scoring_report") and "tier" in {c["name"] for c in sa.inspect(self.engine).get_columns("scoring_report")}
            else pd.DataFrame(columns=["status", "tier", "n"])
        )
        scored = coverage[coverage["status"] == SCORED]
        row = {
            "dataset": self.dataset,
            "run_date": run_date,
            "series": len(report),
            "trained": len(trained),
            "skipped": int((report["status"] == SKIPPED).sum()),
            "failed": int((report["status"] == FAILED).sum()),
            "promoted": promoted,
            "prediction_rows": pred_rows,
            "median_wape": _median(trained["wape"]),
            "median_mape": _median(trained["mape"]),
            "median_naive_wape": _median(trained["naive_wape"]),
            "share_beating_naive": float((both["wape"] < both["naive_wape"]).mean()) if len(both) else None,
            # coverage: series forecast by a champion, by a fallback, and not forecast (v_coverage says why)
            "forecast_champion": int(scored.loc[scored["tier"] == TIER_CHAMPION, "n"].sum()),
            "forecast_fallback": int(scored.loc[scored["tier"] == TIER_FALLBACK, "n"].sum()),
            "not_forecast": int(coverage.loc[coverage["status"] != SCORED, "n"].sum()),
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
            sa.Column("forecast_champion", sa.Integer),
            sa.Column("forecast_fallback", sa.Integer),
            sa.Column("not_forecast", sa.Integer),
        )

    def tables(self, sample: pd.DataFrame | None = None) -> list[sa.Table]:
        """Every table the warehouse writes (for DDL review, e.g. compiling for another dialect)."""
        return [*(self._table(n, sample) for n in ("predictions", "training_report", "scoring_report", "promotion_log",
                                                   "promotion_coverage", "forecast_accuracy", "drift_log")),
                self._metrics_table()]

    def _create_views(self, conn) -> None:
        existing = set(sa.inspect(conn).get_table_names())
        for name, base in VIEW_BASES.items():
            if not set((base,) if isinstance(base, str) else base) <= existing:
                continue
            for stmt in view_statements(conn.dialect, name):
                conn.execute(sa.text(stmt))


# The queries refresh_metrics runs (plain SQL every supported dialect accepts).
METRIC_QUERIES = {
    "report": "SELECT status, wape, mape, naive_wape FROM training_report WHERE dataset = :d AND run_date = :r",
    "promoted": f"SELECT COUNT(*) AS n FROM promotion_log WHERE dataset = :d AND run_date = :r AND action = '{PROMOTED}'",
    "prediction_rows": "SELECT COUNT(*) AS n FROM predictions WHERE dataset = :d AND run_date = :r",
    "coverage": "SELECT status, tier, COUNT(*) AS n FROM scoring_report WHERE dataset = :d AND run_date = :r GROUP BY status, tier",
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
    # Coverage of every scoring run, per series: forecast by a champion, a fallback, or not
    # forecast, and why (promotion's reason, e.g. too short, else scoring's).
    "v_coverage": f"""
        SELECT s.dataset, s.run_date, s.series_id, s.status,
               CASE WHEN s.status = '{SCORED}' THEN s.tier ELSE '{NOT_FORECAST}' END AS coverage,
               c.family,
               CASE WHEN s.status = '{SCORED}' THEN c.reason
                    ELSE COALESCE(CASE WHEN c.tier = '{NOT_FORECAST}' THEN c.reason END, s.reason) END AS reason,
               s.model_name, s.model_version
        FROM scoring_report s
        LEFT JOIN promotion_coverage c
          ON c.dataset = s.dataset AND c.run_date = s.run_date AND c.series_id = s.series_id""",
    # Realized accuracy per series and forecast run date, and pooled per run date over time
    # (realized against the holdout estimate the models were promoted on).
    "v_forecast_accuracy": "SELECT * FROM forecast_accuracy",
    "v_accuracy_over_time": """
        SELECT dataset, run_date, tier, COUNT(*) AS series, SUM(pairs) AS pairs,
               SUM(abs_error) / NULLIF(SUM(actual_sum), 0) AS wape,
               SUM(error_sum) / NULLIF(SUM(actual_sum), 0) AS bias,
               1.0 * SUM(inside) / NULLIF(SUM(pairs), 0) AS interval_coverage,
               SUM(naive_abs_error) / NULLIF(SUM(actual_sum), 0) AS naive_wape,
               AVG(estimated_wape) AS mean_estimated_wape
        FROM forecast_accuracy GROUP BY dataset, run_date, tier""",
    "v_drift_log": "SELECT * FROM drift_log",
}
VIEW_BASES = {
    "v_latest_predictions": "predictions",
    "v_series_accuracy": "training_report",
    "v_scoring_report": "scoring_report",
    "v_run_summary": "forecast_metrics",
    "v_promotion_log": "promotion_log",
    "v_missing_series": "missing_series",
    "v_coverage": ("scoring_report", "promotion_coverage"),
    "v_forecast_accuracy": "forecast_accuracy",
    "v_accuracy_over_time": "forecast_accuracy",
    "v_drift_log": "drift_log",
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


def _stage(conn, table: sa.Table, records: _Records) -> str | None:
    """On PostgreSQL/psycopg2: COPY ``records`` into a temporary table like ``table`` (dropped at
    commit) and return its name. Elsewhere: nothing to do (``None``)."""
    if not len(records) or not _is_psycopg2(conn):
        return None
    q = conn.dialect.identifier_preparer.quote
    stage = f"mm_stage_{table.name}_{uuid.uuid4().hex[:8]}"
    conn.execute(sa.text(f"CREATE TEMPORARY TABLE {q(stage)} (LIKE {q(table.name)} INCLUDING DEFAULTS) ON COMMIT DROP"))
    cols = ", ".join(q(c) for c in records.columns)
    # The DBAPI cursor of this SQLAlchemy connection: same session, same transaction.
    copy = f"COPY {q(stage)} ({cols}) FROM STDIN"
    dbapi = conn.dialect.loaded_dbapi
    try:
        with conn.connection.driver_connection.cursor() as cur:
            for part in records.chunks():
                cur.copy_expert(copy, io.StringIO(_copy_text(part, table)))
    except dbapi.Error as exc:  # raise it as SQLAlchemy would (IntegrityError, DataError...)
        raise sa.exc.DBAPIError.instance(copy, None, exc, dbapi.Error) from exc
    return stage


INSERT_CHUNK = 20_000  # rows converted to Python objects and sent at a time


class _Records:
    """Rows to write (a DataFrame, or an Arrow table such as scoring's predictions) with
    constant ``extra`` columns, as Python values (None for missing) ``INSERT_CHUNK`` rows at a
    time: the driver never holds a Python object per value of a whole prediction set."""

    def __init__(self, rows: pd.DataFrame | pa.Table, columns: list[str], extra: dict):
        self.rows, self.columns, self.extra = rows, columns, extra

    def __len__(self) -> int:
        return len(self.rows)

    def chunks(self):
        for i in range(0, len(self.rows), INSERT_CHUNK):
            if isinstance(self.rows, pa.Table):
                part = self.rows.slice(i, INSERT_CHUNK).to_pandas()
            else:
                part = self.rows.iloc[i : i + INSERT_CHUNK]
            part = part.assign(**self.extra)[self.columns]
            yield part.astype(object).where(part.notna(), None)


def _insert(conn, table: sa.Table, records: _Records, staged: str | None) -> None:
    if not len(records):
        return
    if staged is not None:
        q = conn.dialect.identifier_preparer.quote
        cols = ", ".join(q(c) for c in records.columns)
        conn.execute(sa.text(f"INSERT INTO {q(table.name)} ({cols}) SELECT {cols} FROM {q(staged)}"))
        return
    # One executemany per chunk; SQLAlchemy batches it (insertmanyvalues) and pyodbc uses fast_executemany.
    for part in records.chunks():
        conn.execute(table.insert(), part.to_dict("records"))


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
