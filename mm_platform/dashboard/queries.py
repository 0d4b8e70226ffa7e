"""Server-side reads for the dashboard, through the warehouse's BI views.

Every function either aggregates in SQL (counts, histograms, per-key averages) or returns
one page of rows, so what a page carries is bounded whatever the number of series. Queries
are built with SQLAlchemy Core, so paging and binning compile for any warehouse dialect.
History (actuals) is not in the warehouse: :meth:`DashboardQueries.series_history` reads
one series from the lake with pyarrow filters on the partition keys.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from mm_platform.config import DatasetConfig
from mm_platform.core.vocabulary import METRICS, NOT_FORECAST, TIER_CHAMPION, TIER_FALLBACK, TRAINED
from mm_platform.stores.lake import Lake
from mm_platform.stores.sql import create_engine

VIEWS = ("v_series_accuracy", "v_latest_predictions", "v_promotion_log", "v_run_summary", "v_scoring_report",
         "v_forecast_accuracy", "v_drift_log", "v_coverage")
COVERAGE_COLUMNS = ("dataset", "run_date", "series_id", "coverage", "family", "reason")
ACCURACY_COLUMNS = (
    "dataset", "run_date", "series_id", "status", "reason", "n_obs", "last_date", *METRICS,
    "fit_seconds", "algorithm", "model_name", "model_version", "registration", "training_run_id",
)
PREDICTION_COLUMNS = (
    "dataset", "run_date", "series_id", "ds", "yhat", "yhat_lower", "yhat_upper", "model_name", "model_version",
    "scoring_run_id",
)
PROMOTION_COLUMNS = (
    "dataset", "run_date", "series_id", "model_name", "training_version", "production_version", "action", "reasons",
    "wape", "mape", "naive_wape", "production_wape", "decided_by", "decided_at",
)
RUN_COLUMNS = (
    "dataset", "run_date", "series", "trained", "skipped", "failed", "promoted", "prediction_rows",
    "median_wape", "median_mape", "median_naive_wape", "share_beating_naive",
)
# v_forecast_accuracy: realized accuracy per series and forecast run date (stores.warehouse).
REALIZED_COLUMNS = (
    "dataset", "run_date", "series_id", "tier", "model_name", "model_version", "pairs", "actual_sum", "abs_error",
    "error_sum", "inside", "naive_abs_error", "wape", "naive_wape", "estimated_wape",
)
DRIFT_COLUMNS = (
    "dataset", "run_date", "series_id", "model_name", "model_version", "window_start", "pairs", "realized_wape",
    "estimated_wape", "naive_wape", "factor", "reasons", "actions", "decided_at",
)
TIERS = (TIER_CHAMPION, TIER_FALLBACK)
SERIES_SORTS = {"keys": "partition keys", "wape_desc": "worst WAPE first", "wape_asc": "best WAPE first"}
MAX_PAGE_SIZE = 200
METRIC_CAP = 2.0  # histograms put everything above 200 % error into their last bin
HISTORY_DAYS = 3 * 366  # the explorer shows at most this much history before the series' last date


@dataclass
class Page:
    """One page of rows plus the total count of the filtered query."""

    rows: list[dict]
    total: int
    page: int
    size: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.size))

    @property
    def first(self) -> int:
        return 0 if not self.rows else (self.page - 1) * self.size + 1

    @property
    def last(self) -> int:
        return (self.page - 1) * self.size + len(self.rows)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "total": self.total, "page": self.page, "size": self.size, "pages": self.pages}


def _escape_like(s: str) -> str:
    return s.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def search_conditions(column, q: str | None, keys: list[str]) -> list:
    """Conditions matching a search text against a ``series_id`` column (``k1=v1,k2=v2``).

    The text is split on spaces and commas and every token must match: ``key=value`` with a
    partition key matches that key exactly (``item=3`` does not match ``item=30``); any other
    token matches as a case-insensitive substring. A pasted series id therefore finds itself.
    """
    conds = []
    lowered = sa.func.lower(column)
    by_lower = {k.lower(): k for k in keys}
    tokens = [t for t in re.split(r"[\s,;]+", (q or "").strip()) if t][:10]
    for tok in tokens:
        tok = tok[:100].lower()
        name, sep, value = tok.partition("=")
        if sep and value and name in by_lower:
            exact = f"{by_lower[name]}={value}".lower()
            e = _escape_like(exact)
            conds.append(
                sa.or_(
                    lowered == exact,
                    lowered.like(f"{e},%", escape="!"),
                    lowered.like(f"%,{e}", escape="!"),
                    lowered.like(f"%,{e},%", escape="!"),
                )
            )
        else:
            conds.append(lowered.like(f"%{_escape_like(tok)}%", escape="!"))
    return conds


def _upper_bound(vmax, cap: float) -> float:
    """A round upper edge for a metric axis: the largest value, capped, rounded up."""
    if vmax is None or not math.isfinite(float(vmax)) or float(vmax) <= 0:
        return 1.0
    hi = min(float(vmax), cap)
    step = 0.05 if hi >= 0.5 else 0.01 if hi >= 0.05 else 0.001
    return round(max(step, math.ceil(hi / step - 1e-9) * step), 10)


def _clamp_page(page, size) -> tuple[int, int]:
    try:
        size = int(size)
    except (TypeError, ValueError):
        size = 25
    try:
        page = int(page)
    except (TypeError, ValueError):
        page = 1
    return max(1, page), min(max(1, size), MAX_PAGE_SIZE)


def _arrow_value(value, typ: pa.DataType):
    """A key value from the warehouse, converted to the lake column's type for a pyarrow filter."""
    if pa.types.is_integer(typ):
        return int(value)
    if pa.types.is_floating(typ):
        return float(value)
    if pa.types.is_boolean(typ):
        return str(value).lower() in ("1", "true")
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        return pd.Timestamp(value).to_pydatetime()
    return str(value)


class DashboardQueries:
    """Read-only access to one dataset's warehouse views (and, for history, its lake)."""

    def __init__(self, cfg: DatasetConfig):
        self.cfg = cfg
        self.dataset = cfg.name
        self.keys = list(cfg.keys)
        self.engine = create_engine(cfg.storage.warehouse_url)
        self.lake = Lake(cfg.storage.lake_url)
        keys = [sa.column(k) for k in self.keys]
        self.acc = sa.table("v_series_accuracy", *[sa.column(c) for c in ACCURACY_COLUMNS], *keys)
        self.pred = sa.table("v_latest_predictions", *[sa.column(c) for c in PREDICTION_COLUMNS], *[sa.column(k) for k in self.keys])
        self.promo = sa.table("v_promotion_log", *[sa.column(c) for c in PROMOTION_COLUMNS])
        self.runs_view = sa.table("v_run_summary", *[sa.column(c) for c in RUN_COLUMNS])
        self.scoring = sa.table("v_scoring_report", *[sa.column(c) for c in ("dataset", "run_date", "status")])
        self.realized = sa.table("v_forecast_accuracy", *[sa.column(c) for c in REALIZED_COLUMNS])
        self.drift = sa.table("v_drift_log", *[sa.column(c) for c in DRIFT_COLUMNS])
        self.cov = sa.table("v_coverage", *[sa.column(c) for c in COVERAGE_COLUMNS])

    def dispose(self) -> None:
        self.engine.dispose()

    # -- plumbing ------------------------------------------------------------------------------

    def _rows(self, stmt) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]

    def _first(self, stmt) -> dict | None:
        rows = self._rows(stmt)
        return rows[0] if rows else None

    def _scalar(self, stmt):
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar()

    def available(self) -> set[str]:
        """Which of the BI views exist (they appear after the first ``forecast_metrics`` run)."""
        insp = sa.inspect(self.engine)
        return set(VIEWS) & set(insp.get_view_names())

    def _bin(self, col, hi: float, nbins: int):
        """SQL bin index 0..nbins-1 of a non-negative metric on [0, hi]; values >= hi land in the last bin."""
        scaled = col / sa.literal(hi / nbins, sa.Float)
        floor = sa.cast(scaled, sa.Integer) if self.engine.dialect.name == "sqlite" else sa.func.floor(scaled)
        return sa.case((col >= sa.literal(hi, sa.Float), nbins - 1), else_=floor)

    def _trained(self):
        return [self.acc.c.dataset == self.dataset, self.acc.c.status == TRAINED]

    # -- overview ------------------------------------------------------------------------------

    def overview(self) -> dict:
        """Counts and run dates for the overview cards."""
        have = self.available()
        out: dict = {"views": sorted(have), "status": {}, "registration": {}, "series": 0, "training_run_date": None,
                     "scoring_run_date": None, "in_production": 0, "prediction_rows": 0, "promotion_run_date": None,
                     "last_decision_at": None, "decisions": {}, "latest_run": None, "scoring": {}}
        if "v_series_accuracy" in have:
            a = self.acc
            rows = self._rows(
                sa.select(a.c.status, sa.func.count().label("n"), sa.func.max(a.c.run_date).label("run_date"))
                .where(a.c.dataset == self.dataset).group_by(a.c.status)
            )
            out["status"] = {r["status"]: int(r["n"]) for r in rows}
            out["series"] = sum(out["status"].values())
            out["training_run_date"] = max((r["run_date"] for r in rows), default=None)
            reg = self._rows(
                sa.select(a.c.registration, sa.func.count().label("n"))
                .where(a.c.dataset == self.dataset, a.c.registration.isnot(None)).group_by(a.c.registration)
            )
            out["registration"] = {r["registration"]: int(r["n"]) for r in reg}
        if "v_latest_predictions" in have:
            p = self.pred
            r = self._first(
                sa.select(sa.func.max(p.c.run_date).label("run_date"), sa.func.count(sa.distinct(p.c.series_id)).label("series"),
                          sa.func.count().label("rows")).where(p.c.dataset == self.dataset)
            )
            out["scoring_run_date"], out["in_production"], out["prediction_rows"] = r["run_date"], int(r["series"] or 0), int(r["rows"] or 0)
        if "v_scoring_report" in have:
            sr = self.scoring
            rows = self._rows(sa.select(sr.c.status, sa.func.count().label("n")).where(sr.c.dataset == self.dataset).group_by(sr.c.status))
            out["scoring"] = {r["status"]: int(r["n"]) for r in rows}
        if "v_promotion_log" in have:
            pl = self.promo
            r = self._first(
                sa.select(sa.func.max(pl.c.run_date).label("run_date"), sa.func.max(pl.c.decided_at).label("at"))
                .where(pl.c.dataset == self.dataset)
            )
            out["promotion_run_date"], out["last_decision_at"] = r["run_date"], r["at"]
            if r["run_date"] is not None:
                rows = self._rows(
                    sa.select(pl.c.action, sa.func.count().label("n"))
                    .where(pl.c.dataset == self.dataset, pl.c.run_date == r["run_date"]).group_by(pl.c.action)
                )
                out["decisions"] = {x["action"]: int(x["n"]) for x in rows}
        if "v_run_summary" in have:
            runs = self.runs(limit=1)
            out["latest_run"] = runs[-1] if runs else None
        out["coverage"] = self.coverage() if "v_coverage" in have else None
        return out

    def coverage(self, limit: int = 20) -> dict:
        """The newest scoring run's coverage (``v_coverage``): series forecast by a champion, by a
        fallback, and not forecast, with the first ``limit`` not-forecast series and why."""
        c = self.cov
        mine = c.c.dataset == self.dataset
        run_date = self._scalar(sa.select(sa.func.max(c.c.run_date)).where(mine))
        out = {"run_date": run_date, "counts": {TIER_CHAMPION: 0, TIER_FALLBACK: 0, NOT_FORECAST: 0}, "not_forecast": []}
        if run_date is None:
            return out
        newest = [mine, c.c.run_date == run_date]
        for r in self._rows(sa.select(c.c.coverage, sa.func.count().label("n")).where(*newest).group_by(c.c.coverage)):
            out["counts"][r["coverage"]] = int(r["n"])
        out["not_forecast"] = self._rows(sa.select(c.c.series_id, c.c.reason).where(*newest, c.c.coverage == NOT_FORECAST)
                                         .order_by(c.c.series_id).limit(limit))
        return out

    def runs(self, limit: int = 90) -> list[dict]:
        """The newest ``limit`` rows of ``v_run_summary``, oldest first."""
        if "v_run_summary" not in self.available():
            return []
        r = self.runs_view
        rows = self._rows(sa.select(*[r.c[c] for c in RUN_COLUMNS]).where(r.c.dataset == self.dataset)
                          .order_by(r.c.run_date.desc()).limit(limit))
        return rows[::-1]

    def accuracy_distribution(self, metric: str = "wape", nbins: int | None = None, cap: float = METRIC_CAP) -> dict:
        """Histogram counts of ``metric`` for our models and for the seasonal-naive baseline,
        on shared bins (computed with GROUP BY in SQL)."""
        if metric not in ("wape", "mape", "rmse"):
            raise ValueError(f"unknown metric {metric!r}")
        ours, naive = self.acc.c[metric], self.acc.c[f"naive_{metric}"]
        base = self._trained()
        s = self._first(sa.select(sa.func.count(ours).label("n"), sa.func.max(ours).label("max_ours"),
                                  sa.func.count(naive).label("n_naive"), sa.func.max(naive).label("max_naive")).where(*base))
        n = int(s["n"] or 0)
        vmax = max((float(v) for v in (s["max_ours"], s["max_naive"]) if v is not None), default=None)
        hi = _upper_bound(vmax, cap)
        nbins = nbins or int(min(30, max(8, math.ceil(2 * math.sqrt(max(n, 1))))))
        width = hi / nbins
        out = {"metric": metric, "n": n, "n_naive": int(s["n_naive"] or 0), "hi": hi, "nbins": nbins,
               "edges": [round(i * width, 10) for i in range(nbins + 1)], "capped": vmax is not None and vmax > hi}
        for name, col in (("ours", ours), ("naive", naive)):
            sub = sa.select(self._bin(col, hi, nbins).label("b")).where(*base, col.isnot(None)).subquery()
            counts = [0] * nbins
            for r in self._rows(sa.select(sub.c.b, sa.func.count().label("n")).group_by(sub.c.b)):
                counts[min(max(int(r["b"]), 0), nbins - 1)] += int(r["n"])
            out[name] = counts
            out[f"over_{name}"] = int(self._scalar(sa.select(sa.func.count()).where(*base, col > hi)) or 0)
        return out

    def naive_comparison(self, metric: str = "wape", grid: int = 40, cap: float = METRIC_CAP) -> dict:
        """Ours versus the seasonal-naive baseline as a binned scatter: a grid of cells over
        (naive, ours) with the number of series in each, split by who is better."""
        ours, naive = self.acc.c[metric], self.acc.c[f"naive_{metric}"]
        base = [*self._trained(), ours.isnot(None), naive.isnot(None)]
        better = sa.case((ours < naive, 1), else_=0)
        s = self._first(sa.select(sa.func.count().label("n"), sa.func.max(ours).label("a"), sa.func.max(naive).label("b"),
                                  sa.func.sum(better).label("better"),
                                  sa.func.sum(sa.case((ours == naive, 1), else_=0)).label("ties")).where(*base))
        n = int(s["n"] or 0)
        vmax = max((float(v) for v in (s["a"], s["b"]) if v is not None), default=None)
        hi = _upper_bound(vmax, cap)
        w = hi / grid
        sub = sa.select(self._bin(naive, hi, grid).label("bx"), self._bin(ours, hi, grid).label("by"),
                        better.label("better")).where(*base).subquery()
        cells = [
            {"x": (min(max(int(r["bx"]), 0), grid - 1) + 0.5) * w, "y": (min(max(int(r["by"]), 0), grid - 1) + 0.5) * w,
             "better": bool(r["better"]), "n": int(r["n"])}
            for r in self._rows(sa.select(sub.c.bx, sub.c.by, sub.c.better, sa.func.count().label("n"))
                                .group_by(sub.c.bx, sub.c.by, sub.c.better))
        ]
        nb, nt = int(s["better"] or 0), int(s["ties"] or 0)
        return {"metric": metric, "n": n, "better": nb, "ties": nt, "worse": n - nb - nt, "hi": hi, "grid": grid,
                "capped": vmax is not None and vmax > hi, "cells": cells}

    def accuracy_by_key(self, key: str, metric: str = "wape", limit: int = 30) -> dict:
        """Mean holdout ``metric`` (ours and naive) and series counts per value of one partition
        key; keys with more than ``limit`` values show the ``limit`` worst."""
        if key not in self.keys:
            raise ValueError(f"{key!r} is not a partition key of {self.dataset}")
        col, ours, naive = self.acc.c[key], self.acc.c[metric], self.acc.c[f"naive_{metric}"]
        base = [*self._trained(), ours.isnot(None)]
        n_values = int(self._scalar(sa.select(sa.func.count(sa.distinct(col))).where(*base)) or 0)
        stmt = (
            sa.select(col.label("value"), sa.func.count().label("series"), sa.func.avg(ours).label("ours"),
                      sa.func.avg(naive).label("naive"), sa.func.sum(sa.case((ours < naive, 1), else_=0)).label("better"))
            .where(*base).group_by(col)
        )
        worst = n_values > limit
        stmt = stmt.order_by(sa.func.avg(ours).desc(), col) if worst else stmt.order_by(col)
        rows = self._rows(stmt.limit(limit))
        return {"key": key, "metric": metric, "n_values": n_values, "worst_only": worst, "limit": limit, "rows": rows}

    # -- series explorer -------------------------------------------------------------------------

    def search_series(self, q: str = "", page: int = 1, size: int = 25, sort: str = "keys") -> Page:
        """One page of the newest training run's series matching ``q`` (see :func:`search_conditions`),
        with the production model version of those that have a current forecast."""
        page, size = _clamp_page(page, size)
        have = self.available()
        if "v_series_accuracy" not in have:
            return Page([], 0, 1, size)
        a = self.acc
        where = [a.c.dataset == self.dataset, *search_conditions(a.c.series_id, q, self.keys)]
        total = int(self._scalar(sa.select(sa.func.count()).select_from(a).where(*where)) or 0)
        page = min(page, max(1, math.ceil(total / size)))
        if sort == "wape_desc":
            order = [sa.case((a.c.wape.is_(None), 1), else_=0), a.c.wape.desc()]
        elif sort == "wape_asc":
            order = [sa.case((a.c.wape.is_(None), 1), else_=0), a.c.wape.asc()]
        else:
            order = []
        order += [*(a.c[k] for k in self.keys), a.c.series_id]
        cols = [*(a.c[k] for k in self.keys), a.c.series_id, a.c.status, a.c.reason, a.c.wape, a.c.naive_wape, a.c.mape,
                a.c.model_name, a.c.model_version]
        rows = self._rows(sa.select(*cols).where(*where).order_by(*order).limit(size).offset((page - 1) * size))
        prod = {}
        if rows and "v_latest_predictions" in have:
            p = self.pred
            prod = {
                r["series_id"]: r["v"]
                for r in self._rows(
                    sa.select(p.c.series_id, sa.func.max(p.c.model_version).label("v"))
                    .where(p.c.dataset == self.dataset, p.c.series_id.in_([r["series_id"] for r in rows]))
                    .group_by(p.c.series_id)
                )
            }
        for r in rows:
            r["production_version"] = prod.get(r["series_id"])
        return Page(rows, total, page, size)

    def series_detail(self, series_id: str) -> dict | None:
        """Accuracy, current production forecast and promotion decisions of one series."""
        have = self.available()
        acc = preds = promos = None
        if "v_series_accuracy" in have:
            a = self.acc
            acc = self._first(sa.select(*[a.c[c] for c in (*self.keys, *ACCURACY_COLUMNS)])
                              .where(a.c.dataset == self.dataset, a.c.series_id == series_id))
        if "v_latest_predictions" in have:
            p = self.pred
            preds = self._rows(
                sa.select(*[p.c[k] for k in self.keys], p.c.run_date, p.c.ds, p.c.yhat, p.c.yhat_lower, p.c.yhat_upper,
                          p.c.model_name, p.c.model_version)
                .where(p.c.dataset == self.dataset, p.c.series_id == series_id).order_by(p.c.ds)
            )
        if "v_promotion_log" in have:
            pl = self.promo
            promos = self._rows(
                sa.select(*[pl.c[c] for c in PROMOTION_COLUMNS if c != "dataset"])
                .where(pl.c.dataset == self.dataset, pl.c.series_id == series_id)
                .order_by(pl.c.decided_at.desc(), pl.c.run_date.desc()).limit(20)
            )
        if not acc and not preds:
            return None
        src = acc or preds[0]
        return {
            "series_id": series_id,
            "keys": {k: src[k] for k in self.keys},
            "accuracy": acc,
            "forecast": preds or [],
            "production_version": preds[0]["model_version"] if preds else None,
            "production_model": preds[0]["model_name"] if preds else None,
            "scoring_run_date": preds[0]["run_date"] if preds else None,
            "promotions": promos or [],
        }

    def series_history(self, keys: dict, until=None, days: int | None = HISTORY_DAYS) -> pd.DataFrame:
        """Actuals (``ds``, ``y``) of one series from the lake's raw table, read with pyarrow
        filters on the partition keys (and on the date, so older month files are skipped)."""
        table, cols = self.cfg.source.table, self.cfg.columns
        files = self.lake.raw_files(table)
        if not files:
            return pd.DataFrame({"ds": pd.Series(dtype="datetime64[ns]"), "y": pd.Series(dtype=float)})
        schema = pq.read_schema(files[-1], filesystem=self.lake.fs)
        filters = [(k, "==", _arrow_value(v, schema.field(k).type)) for k, v in keys.items()]
        if until is not None and days:
            since = pd.Timestamp(str(until)[:10]) - timedelta(days=days)
            filters.append((cols.date, ">=", _arrow_value(since, schema.field(cols.date).type)))
        df = self.lake.read_raw(table, columns=[cols.date, cols.target], filters=filters)
        df = df.rename(columns={cols.date: "ds", cols.target: "y"})
        df["ds"] = pd.to_datetime(df["ds"])
        return df.sort_values("ds").reset_index(drop=True)

    # -- promotion log -------------------------------------------------------------------------

    def promotion_page(self, action: str = "", q: str = "", run_date: str = "", page: int = 1, size: int = 25) -> Page:
        """One page of promotion decisions, newest first, filtered by action, series search and run date."""
        page, size = _clamp_page(page, size)
        if "v_promotion_log" not in self.available():
            return Page([], 0, 1, size)
        pl = self.promo
        where = [pl.c.dataset == self.dataset, *search_conditions(pl.c.series_id, q, self.keys)]
        if action:
            where.append(pl.c.action == action)
        if run_date:
            where.append(pl.c.run_date == date.fromisoformat(str(run_date)[:10]))
        total = int(self._scalar(sa.select(sa.func.count()).select_from(pl).where(*where)) or 0)
        page = min(page, max(1, math.ceil(total / size)))
        rows = self._rows(
            sa.select(*[pl.c[c] for c in PROMOTION_COLUMNS if c != "dataset"]).where(*where)
            .order_by(pl.c.decided_at.desc(), pl.c.run_date.desc(), pl.c.series_id)
            .limit(size).offset((page - 1) * size)
        )
        return Page(rows, total, page, size)

    def promotion_facets(self, max_dates: int = 60) -> dict:
        """Decision counts per action and the newest run dates, for the filters."""
        if "v_promotion_log" not in self.available():
            return {"actions": {}, "run_dates": []}
        pl = self.promo
        actions = self._rows(sa.select(pl.c.action, sa.func.count().label("n")).where(pl.c.dataset == self.dataset)
                             .group_by(pl.c.action).order_by(pl.c.action))
        dates = self._rows(sa.select(pl.c.run_date).where(pl.c.dataset == self.dataset).group_by(pl.c.run_date)
                           .order_by(pl.c.run_date.desc()).limit(max_dates))
        return {"actions": {r["action"]: int(r["n"]) for r in actions}, "run_dates": [str(r["run_date"])[:10] for r in dates]}

    def promotions_by_run(self, max_dates: int = 60) -> list[dict]:
        """Decision counts per (run date, action) for the newest ``max_dates`` run dates."""
        dates = self.promotion_facets(max_dates)["run_dates"]
        if not dates:
            return []
        pl = self.promo
        return self._rows(
            sa.select(pl.c.run_date, pl.c.action, sa.func.count().label("n"))
            .where(pl.c.dataset == self.dataset, pl.c.run_date >= date.fromisoformat(dates[-1]))
            .group_by(pl.c.run_date, pl.c.action).order_by(pl.c.run_date, pl.c.action)
        )

    # -- realized accuracy over time -------------------------------------------------------------

    def accuracy_over_time(self, tier: str = "", q: str = "", limit: int = 180) -> list[dict]:
        """Per forecast run date (the newest ``limit``, oldest first), pooled in SQL over the
        series matching ``tier`` and ``q``: realized WAPE, bias and interval coverage of the
        published forecasts, seasonal naive's realized WAPE, and the holdout WAPE the models were
        promoted on, weighted by each series' actuals (the pooled WAPE if every model did as
        well as on its holdout)."""
        if "v_forecast_accuracy" not in self.available():
            return []
        a = self.realized
        where = [a.c.dataset == self.dataset, *search_conditions(a.c.series_id, q, self.keys)]
        if tier in TIERS:
            where.append(a.c.tier == tier)
        actual = sa.func.sum(a.c.actual_sum)
        with_estimate = sa.func.sum(sa.case((a.c.estimated_wape.isnot(None), a.c.actual_sum)))

        def ratio(num, den):
            return sa.cast(num, sa.Float) / sa.func.nullif(den, 0)

        stmt = (
            sa.select(
                a.c.run_date, sa.func.count().label("series"), sa.func.sum(a.c.pairs).label("pairs"),
                ratio(sa.func.sum(a.c.abs_error), actual).label("wape"),
                ratio(sa.func.sum(a.c.naive_abs_error), actual).label("naive_wape"),
                ratio(sa.func.sum(a.c.estimated_wape * a.c.actual_sum), with_estimate).label("estimated_wape"),
                ratio(sa.func.sum(a.c.error_sum), actual).label("bias"),
                ratio(sa.func.sum(a.c.inside), sa.func.sum(a.c.pairs)).label("interval_coverage"),
                sa.func.sum(sa.case((a.c.tier == TIER_FALLBACK, 1), else_=0)).label("fallback_series"),
            )
            .where(*where).group_by(a.c.run_date).order_by(a.c.run_date.desc()).limit(limit)
        )
        rows = self._rows(stmt)[::-1]
        for r in rows:
            r["run_date"] = str(r["run_date"])[:10]
        return rows

    def drift_flags(self, q: str = "", limit: int = 50) -> list[dict]:
        """The newest ``limit`` drift flags (v_drift_log), with the numbers and actions taken."""
        if "v_drift_log" not in self.available():
            return []
        d = self.drift
        where = [d.c.dataset == self.dataset, *search_conditions(d.c.series_id, q, self.keys)]
        return self._rows(sa.select(*[d.c[c] for c in DRIFT_COLUMNS if c != "dataset"]).where(*where)
                          .order_by(d.c.run_date.desc(), d.c.series_id).limit(limit))
