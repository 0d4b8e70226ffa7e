"""Realistic generated datasets, deterministic for a seed (``mm-platform generate --kind``):

- ``retail_daily`` (the default): store x item daily units with trend, weekly and yearly
  seasonality, price and promotion effects, holidays, intermittent slow movers and newly
  launched (short) series; generated store by store so the reference workload (10,000
  series x 4,000 days = 40M rows) never needs all rows in memory.
- ``price_weekly``: weekly revenue per region x product driven by a planned price through a
  constant elasticity per series, advertising with carry-over, seasonality, multiplicative
  noise and stock-outs (``configs/price_weekly.yaml``).
- ``weekly_multikey``: weekly revenue per region x warehouse x SKU (``configs/weekly_multikey.yaml``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import holidays as holiday_calendars
import numpy as np
import pandas as pd

DEFAULT_END_DATE = date(2025, 12, 31)


@dataclass(frozen=True)
class LevelShift:
    """A structural break for ``retail_daily``: from ``start`` on, the demand of ``items`` (in
    ``stores``, or every store) is ``factor`` times what it would have been (tests of drift)."""

    start: date
    factor: float
    items: tuple[int, ...]
    stores: tuple[int, ...] | None = None


def holiday_flags(dates: pd.DatetimeIndex) -> np.ndarray:
    years = range(dates.min().year, dates.max().year + 1)
    cal = holiday_calendars.country_holidays("US", years=years)
    days = {pd.Timestamp(d) for d in cal}
    return np.fromiter((d in days for d in dates), dtype=np.int8, count=len(dates))


def iter_sales_chunks(
    stores: int,
    items: int,
    days: int,
    seed: int = 42,
    end_date: date = DEFAULT_END_DATE,
    stores_per_chunk: int = 1,
    future_days: int = 0,
    level_shift: LevelShift | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield the sales table in chunks of whole stores (columns: date, store, item, units, price, promo, holiday).

    ``future_days`` > 0 adds that many days after ``end_date`` with planned prices,
    promotions and holidays but no units (NULL): the regressors' known future values.
    ``level_shift`` multiplies some series' demand from a date on (a structural break).
    """
    if stores < 1 or items < 1 or days < 1 or future_days < 0:
        raise ValueError(f"stores, items and days must be positive (got {stores}, {items}, {days}, future_days {future_days})")
    history_days, days = days, days + future_days
    dates = pd.date_range(end=pd.Timestamp(end_date) + pd.Timedelta(days=future_days), periods=days, freq="D")
    t = np.arange(days, dtype=np.float64)
    dow = dates.dayofweek.to_numpy()
    doy = dates.dayofyear.to_numpy().astype(np.float64)
    hol = holiday_flags(dates)

    # Item-level properties are shared by all stores (same product everywhere).
    rng_items = np.random.default_rng(seed)
    base = rng_items.lognormal(mean=1.6, sigma=1.0, size=items)  # units/day; low values -> slow movers
    base[rng_items.random(items) < 0.15] *= 0.08  # ~15% intermittent slow movers
    list_price = np.round(rng_items.uniform(1.0, 20.0, size=items), 2)
    elasticity = rng_items.uniform(0.5, 2.5, size=items)
    promo_lift = rng_items.uniform(0.2, 0.8, size=items)
    weekly_amp = rng_items.uniform(0.05, 0.35, size=items)
    weekly_phase = rng_items.integers(0, 7, size=items)
    yearly_amp = rng_items.uniform(0.0, 0.4, size=items)
    yearly_phase = rng_items.uniform(0, 2 * np.pi, size=items)
    trend = rng_items.normal(0.0, 0.15, size=items) / 365.0  # relative change per day
    # ~10% of items launched recently: short histories (some below the minimum history).
    launch = np.zeros(items, dtype=np.int64)
    new = rng_items.random(items) < 0.10
    launch[new] = history_days - rng_items.integers(30, max(31, min(history_days, 400)), size=new.sum())
    launch = np.clip(launch, 0, history_days - 1)

    weekly_shape = np.array([0.9, 0.85, 0.9, 1.0, 1.15, 1.35, 1.2])
    for first_store in range(0, stores, stores_per_chunk):
        frames = []
        for store in range(first_store, min(stores, first_store + stores_per_chunk)):
            rng = np.random.default_rng([seed, store + 1])
            store_size = rng.lognormal(0.0, 0.35)
            # Prices: list price with occasional discounts; promotions on ~8% of days.
            discount = np.where(rng.random((items, days)) < 0.1, rng.uniform(0.7, 0.95, (items, days)), 1.0)
            price = np.round(list_price[:, None] * discount, 2)
            promo = (rng.random((items, days)) < 0.08).astype(np.int8)
            week = weekly_shape[(dow[None, :] + weekly_phase[:, None]) % 7]
            week = 1.0 + weekly_amp[:, None] * (week - 1.0) / 0.25
            year = 1.0 + yearly_amp[:, None] * np.sin(2 * np.pi * doy[None, :] / 365.25 + yearly_phase[:, None])
            level = base[:, None] * store_size * np.exp(trend[:, None] * t[None, :])
            price_effect = (price / list_price[:, None]) ** (-elasticity[:, None])
            lam = level * week * year * price_effect * (1 + promo_lift[:, None] * promo) * (1 + 0.5 * hol[None, :])
            if level_shift is not None and (level_shift.stores is None or store + 1 in level_shift.stores):
                shifted = np.isin(np.arange(1, items + 1), level_shift.items)[:, None] & (dates >= pd.Timestamp(level_shift.start))[None, :]
                lam = np.where(shifted, lam * level_shift.factor, lam)
            units = rng.poisson(np.maximum(lam, 0.0)).astype(np.float64)
            units[:, history_days:] = np.nan  # the future: planned regressors, no sales yet
            alive = t[None, :] >= launch[:, None]
            item_idx, day_idx = np.nonzero(alive)
            frames.append(
                pd.DataFrame(
                    {
                        "date": dates.values[day_idx],
                        "store": np.full(len(item_idx), store + 1, dtype=np.int32),
                        "item": (item_idx + 1).astype(np.int32),
                        "units": units[item_idx, day_idx],
                        "price": price[item_idx, day_idx],
                        "promo": promo[item_idx, day_idx],
                        "holiday": hol[day_idx],
                    }
                )
            )
        yield pd.concat(frames, ignore_index=True)


def generate_sales(
    stores: int, items: int, days: int, seed: int = 42, end_date: date = DEFAULT_END_DATE, future_days: int = 0,
    level_shift: LevelShift | None = None,
) -> pd.DataFrame:
    """The whole table in memory (small datasets and tests)."""
    chunks = iter_sales_chunks(stores, items, days, seed, end_date, future_days=future_days, level_shift=level_shift)
    return pd.concat(list(chunks), ignore_index=True)


# --- weekly, price-driven revenue (two keys) -------------------------------------------------

KINDS = ("retail_daily", "price_weekly", "weekly_multikey")


def _weeks(end_date: date, periods: int, future: int) -> pd.DatetimeIndex:
    """``periods + future`` Mondays, the last history week being the Monday on or before ``end_date``."""
    end = pd.Timestamp(end_date)
    end = end - pd.Timedelta(days=end.dayofweek)
    return pd.date_range(end=end + pd.Timedelta(weeks=future), periods=periods + future, freq="7D")


def _adstock(spend: np.ndarray, carry: np.ndarray) -> np.ndarray:
    """Advertising stock per row: a_t = spend_t + carry * a_{t-1} (geometric carry-over)."""
    from scipy.signal import lfilter

    return np.vstack([lfilter([1.0], [1.0, -c], s) for s, c in zip(spend, carry, strict=True)])


def iter_price_weekly_chunks(
    regions: int,
    products: int,
    weeks: int,
    seed: int = 42,
    end_date: date = DEFAULT_END_DATE,
    future_weeks: int = 0,
) -> Iterator[pd.DataFrame]:
    """Weekly revenue per region x product, driven by a planned price, in chunks of one region.

    Columns: week (a Monday), region, product, revenue, units, price, advertising.
    Quantity follows a constant-elasticity demand curve per series, ``units ~ (price /
    list_price) ** elasticity``, with the elasticity drawn per product in [-3, -0.5] and varied
    by region (so pooling by product is informative); advertising acts through a geometric
    carry-over (adstock) with a saturating lift; yearly seasonality, a year-end peak and a
    small trend; multiplicative log-normal noise plus Poisson counts; occasional stock-outs
    (a week with a fraction of demand, sometimes none). ``revenue = price * units``.
    Prices and advertising are planned: ``future_weeks`` rows after the history carry them
    with NULL revenue and units. About 10% of series launched recently (short histories).
    """
    if regions < 1 or products < 1 or weeks < 1 or future_weeks < 0:
        raise ValueError(
            f"regions, products and weeks must be positive (got {regions}, {products}, {weeks}, future_weeks {future_weeks})"
        )
    dates = _weeks(end_date, weeks, future_weeks)
    n = len(dates)
    t = np.arange(n, dtype=np.float64)
    woy = dates.isocalendar().week.to_numpy().astype(np.float64)
    year_end = np.exp(-0.5 * ((np.minimum(woy, 53 - woy + 1) - 0) / 2.0) ** 2)  # peak around week 52/1

    rng_p = np.random.default_rng([seed, 0])
    base = rng_p.lognormal(mean=4.0, sigma=0.9, size=products)  # units/week at list price
    list_price = np.round(rng_p.uniform(2.0, 40.0, size=products), 2)
    product_elasticity = rng_p.uniform(-3.0, -0.5, size=products)
    yearly_amp = rng_p.uniform(0.0, 0.35, size=products)
    yearly_phase = rng_p.uniform(0, 2 * np.pi, size=products)
    peak = rng_p.uniform(0.0, 0.6, size=products)  # year-end lift
    for region in range(regions):
        rng = np.random.default_rng([seed, region + 1])
        size = rng.lognormal(0.0, 0.4)
        elasticity = np.clip(product_elasticity + rng.normal(0.0, 0.25, products), -3.5, -0.3)
        trend = rng.normal(0.0, 0.1, products) / 52.0  # relative change per week
        # Prices: a regular price that moves in steps (every 8-30 weeks, +-10%), and planned
        # promotional discounts of 10-35% on about 15% of weeks.
        regular = np.empty((products, n))
        for i in range(products):
            level, w = list_price[i], 0
            while w < n:
                span = int(rng.integers(8, 31))
                regular[i, w : w + span] = level
                level = list_price[i] * rng.uniform(0.9, 1.1)
                w += span
        promo = rng.random((products, n)) < 0.15
        price = np.round(regular * np.where(promo, 1.0 - rng.uniform(0.10, 0.35, (products, n)), 1.0), 2)
        # Advertising: campaigns of 2-6 weeks on about 20% of weeks, nothing otherwise.
        spend = np.zeros((products, n))
        budget = base * list_price * rng.uniform(0.02, 0.08, products)
        for i in range(products):
            w = int(rng.integers(0, 10))
            while w < n:
                length = int(rng.integers(2, 7))
                spend[i, w : w + length] = np.round(budget[i] * rng.lognormal(0.0, 0.4), 0)
                w += length + int(rng.integers(6, 26))
        carry = rng.uniform(0.3, 0.7, products)
        stock = _adstock(spend, carry)
        ad_scale = np.maximum(budget / (1.0 - carry), 1.0)
        ad_lift = 1.0 + rng.uniform(0.05, 0.35, products)[:, None] * (1.0 - np.exp(-stock / ad_scale[:, None]))
        season = 1.0 + yearly_amp[:, None] * np.sin(2 * np.pi * t[None, :] / 52.18 + yearly_phase[:, None])
        season = season * (1.0 + peak[:, None] * year_end[None, :])
        level = base[:, None] * size * np.exp(trend[:, None] * t[None, :])
        demand = level * season * ad_lift * (price / list_price[:, None]) ** elasticity[:, None]
        noise = rng.lognormal(0.0, rng.uniform(0.08, 0.25, products)[:, None], (products, n))
        units = rng.poisson(demand * noise).astype(np.float64)
        # Stock-outs: about 2% of weeks sell only part of the demand, a third of them nothing.
        out = rng.random((products, n)) < 0.02
        units = np.where(out, np.floor(units * rng.uniform(0.0, 0.5, (products, n)) * (rng.random((products, n)) > 0.33)), units)
        units[:, weeks:] = np.nan
        revenue = np.round(units * price, 2)
        launch = np.zeros(products, dtype=np.int64)
        new = rng.random(products) < 0.10
        launch[new] = weeks - rng.integers(10, max(11, min(weeks, 80)), size=new.sum())
        launch = np.clip(launch, 0, weeks - 1)
        alive = t[None, :] >= launch[:, None]
        p_idx, w_idx = np.nonzero(alive)
        yield pd.DataFrame(
            {
                "week": dates.values[w_idx],
                "region": np.full(len(p_idx), f"R{region + 1:02d}"),
                "product": np.char.add("P", np.char.zfill((p_idx + 1).astype(str), 3)),
                "revenue": revenue[p_idx, w_idx],
                "units": units[p_idx, w_idx],
                "price": price[p_idx, w_idx],
                "advertising": spend[p_idx, w_idx],
            }
        )


def iter_weekly_multikey_chunks(
    regions: int, skus: int, weeks: int, seed: int = 42, end_date: date = DEFAULT_END_DATE, future_weeks: int = 0
) -> Iterator[pd.DataFrame]:
    """The packaged ``weekly_multikey.yaml`` dataset: weekly revenue per region x warehouse (2)
    x SKU, with a promotion flag and a unit price; series of different lengths and about 5%
    missing weeks. Columns: week_start, region, warehouse, sku, revenue, on_promo, unit_price."""
    if regions < 1 or skus < 1 or weeks < 1 or future_weeks < 0:
        raise ValueError(f"regions, skus and weeks must be positive (got {regions}, {skus}, {weeks})")
    dates = _weeks(end_date, weeks, future_weeks)
    n = len(dates)
    t = np.arange(n, dtype=np.float64)
    for region in range(regions):
        rng = np.random.default_rng([seed, 1000 + region])
        frames = []
        for wh in ("WH-1", "WH-2"):
            for s in range(skus):
                length = min(weeks, int(rng.choice([weeks, weeks, int(0.75 * weeks), int(0.45 * weeks), 20])))
                price = np.round(rng.uniform(8, 12) * rng.uniform(0.85, 1.15, n), 2)
                promo = rng.random(n) < 0.15
                lam = (
                    rng.lognormal(3.8, 0.6)
                    * (1 + rng.uniform(0.0, 0.3) * np.sin(2 * np.pi * t / 52.18 + rng.uniform(0, 2 * np.pi)))
                    * (price / 10) ** -rng.uniform(0.8, 2.2)
                    * (1 + rng.uniform(0.1, 0.6) * promo)
                )
                units = rng.poisson(lam).astype(np.float64)
                units[weeks:] = np.nan
                keep = (t >= weeks - length) & ((rng.random(n) >= 0.05) | (t >= weeks - 1))
                frames.append(
                    pd.DataFrame(
                        {
                            "week_start": dates.values[keep],
                            "region": f"region{region + 1}",
                            "warehouse": wh,
                            "sku": f"SKU{s + 1:04d}",
                            "revenue": np.round(units * price, 2)[keep],
                            "on_promo": promo[keep].astype(np.int8),
                            "unit_price": price[keep],
                        }
                    )
                )
        yield pd.concat(frames, ignore_index=True)


def iter_dataset_chunks(
    kind: str, first: int, second: int, periods: int, seed: int = 42, end_date: date = DEFAULT_END_DATE, future: int = 0,
    level_shift: LevelShift | None = None,
) -> Iterator[pd.DataFrame]:
    """Chunks of a generated dataset of ``kind`` (``KINDS``): ``first`` x ``second`` series
    (stores x items, regions x products, regions x SKUs) of ``periods`` days or weeks."""
    if level_shift is not None and kind != "retail_daily":
        raise ValueError(f"level_shift is implemented for retail_daily only, not {kind!r}")
    if kind == "retail_daily":
        return iter_sales_chunks(first, second, periods, seed, end_date, future_days=future, level_shift=level_shift)
    if kind == "price_weekly":
        return iter_price_weekly_chunks(first, second, periods, seed, end_date, future_weeks=future)
    if kind == "weekly_multikey":
        return iter_weekly_multikey_chunks(first, second, periods, seed, end_date, future_weeks=future)
    raise ValueError(f"unknown dataset kind {kind!r}; known: {list(KINDS)}")


def generate_dataset(kind: str, first: int, second: int, periods: int, seed: int = 42, end_date: date = DEFAULT_END_DATE, future: int = 0) -> pd.DataFrame:
    return pd.concat(list(iter_dataset_chunks(kind, first, second, periods, seed, end_date, future)), ignore_index=True)


DATE_COLUMNS = {"retail_daily": "date", "price_weekly": "week", "weekly_multikey": "week_start"}
_CONFIGS = Path(__file__).parent / "configs"
# The packaged config that reads each kind (its default source URL and table).
KIND_CONFIGS = {
    "retail_daily": _CONFIGS / "retail_daily.yaml",
    "price_weekly": _CONFIGS / "price_weekly.yaml",
    "weekly_multikey": _CONFIGS / "weekly_multikey.yaml",
}


def write_sales(
    url: str,
    table: str,
    stores: int,
    items: int,
    days: int,
    seed: int = 42,
    end_date: date = DEFAULT_END_DATE,
    progress=None,
    future_days: int = 0,
    kind: str = "retail_daily",
    level_shift: LevelShift | None = None,
) -> int:
    """Replace ``table`` in the database at ``url`` with a generated dataset of ``kind``
    (default the daily retail sales; for the weekly kinds ``stores`` x ``items`` are regions x
    products / SKUs and ``days`` / ``future_days`` count weeks); returns the row count."""
    import sqlalchemy as sa

    from mm_platform.stores.sql import create_engine

    chunks = iter_dataset_chunks(kind, stores, items, days, seed, end_date, future_days, level_shift=level_shift)
    date_col = DATE_COLUMNS[kind]
    engine = create_engine(url)
    quoted = engine.dialect.identifier_preparer.quote(table)  # MySQL reads "x" as a string
    rows = 0
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {quoted}"))
        for chunk in chunks:
            chunk = chunk.assign(**{date_col: chunk[date_col].dt.date})
            chunk.to_sql(table, conn, if_exists="append", index=False, chunksize=50_000, method="multi" if engine.dialect.name != "sqlite" else None)
            rows += len(chunk)
            if progress:
                progress(len(chunk))
        target = sa.Table(table, sa.MetaData(), autoload_with=conn)
        sa.Index(f"ix_{table}_date", target.c[date_col]).create(conn, checkfirst=True)
    engine.dispose()
    return rows

