"""The SQL warehouse: predictions, training and promotion reports, metrics tables and the
views a BI tool reads. Any SQLAlchemy URL; SQLite under ``$MM_HOME`` by default.

Every write of a run replaces that run's rows inside one transaction, so readers never see
a half-written run and reruns never duplicate rows.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import sqlalchemy as sa

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
        raise KeyError(name)

    def replace_run(self, name: str, run_date: date, rows: pd.DataFrame) -> int:
        """Atomically replace this dataset's rows for ``run_date`` in table ``name``."""
        table = self._table(name, rows)
        table.metadata.create_all(self.engine, checkfirst=True)
        records = rows.assign(dataset=self.dataset, run_date=run_date)
        cols = [c.name for c in table.columns if c.name in records.columns]
        records = records[cols].astype(object).where(records[cols].notna(), None)
        with self.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.dataset == self.dataset, table.c.run_date == run_date))
            if len(records):
                conn.execute(table.insert(), records.to_dict("records"))
        return len(records)

    def append(self, name: str, run_date: date, rows: pd.DataFrame) -> int:
        table = self._table(name, rows)
        table.metadata.create_all(self.engine, checkfirst=True)
        records = rows.assign(dataset=self.dataset, run_date=run_date)
        cols = [c.name for c in table.columns if c.name in records.columns]
        records = records[cols].astype(object).where(records[cols].notna(), None)
        with self.engine.begin() as conn:
            if len(records):
                conn.execute(table.insert(), records.to_dict("records"))
        return len(records)

    def read(self, sql: str, **params) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql(sa.text(sql), conn, params=params)

    def has_table(self, name: str) -> bool:
        return sa.inspect(self.engine).has_table(name)

    # -- BI tables and views ------------------------------------------------------------------------

    def refresh_metrics(self, run_date: date) -> dict:
        """Aggregate accuracy per run into ``forecast_metrics`` and (re)create the BI views."""
        md = sa.MetaData()
        fm = sa.Table(
            "forecast_metrics",
            md,
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
        md.create_all(self.engine, checkfirst=True)
        report = self.read(
            "SELECT status, wape, mape, naive_wape FROM training_report WHERE dataset = :d AND run_date = :r",
            d=self.dataset,
            r=run_date,
        ) if self.has_table("training_report") else pd.DataFrame(columns=["status", "wape", "mape", "naive_wape"])
        trained = report[report["status"] == "trained"]
        promoted = (
            int(self.read(
                "SELECT COUNT(*) AS n FROM promotion_log WHERE dataset = :d AND run_date = :r AND action = 'promoted'",
                d=self.dataset, r=run_date,
            )["n"].iloc[0])
            if self.has_table("promotion_log")
            else 0
        )
        pred_rows = (
            int(self.read(
                "SELECT COUNT(*) AS n FROM predictions WHERE dataset = :d AND run_date = :r", d=self.dataset, r=run_date
            )["n"].iloc[0])
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
            conn.execute(fm.delete().where(fm.c.dataset == self.dataset, fm.c.run_date == run_date))
            conn.execute(fm.insert(), [row])
            self._create_views(conn)
        return row

    def _create_views(self, conn) -> None:
        views = {
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
            "v_run_summary": "SELECT * FROM forecast_metrics",
            "v_promotion_log": "SELECT * FROM promotion_log",
        }
        existing = set(sa.inspect(conn).get_table_names())
        needed = {"v_latest_predictions": "predictions", "v_series_accuracy": "training_report", "v_promotion_log": "promotion_log"}
        for name, body in views.items():
            if needed.get(name, "forecast_metrics") not in existing:
                continue
            conn.execute(sa.text(f"DROP VIEW IF EXISTS {name}"))
            conn.execute(sa.text(f"CREATE VIEW {name} AS {body}"))


def _median(s: pd.Series) -> float | None:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.median()) if len(s) else None
