"""Realistic generated retail sales: store x item daily units with trend, weekly and yearly
seasonality, price and promotion effects, holidays, intermittent slow movers and newly
launched (short) series. Deterministic for a seed; generated store by store so the
reference workload (10,000 series x 4,000 days = 40M rows) never needs all rows in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import holidays as holiday_calendars
import numpy as np
import pandas as pd

DEFAULT_END_DATE = date(2025, 12, 31)


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
) -> Iterator[pd.DataFrame]:
    """Yield the sales table in chunks of whole stores (columns: date, store, item, units, price, promo, holiday).

    ``future_days`` > 0 adds that many days after ``end_date`` with planned prices,
    promotions and holidays but no units (NULL): the regressors' known future values.
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
    stores: int, items: int, days: int, seed: int = 42, end_date: date = DEFAULT_END_DATE, future_days: int = 0
) -> pd.DataFrame:
    """The whole table in memory (small datasets and tests)."""
    return pd.concat(list(iter_sales_chunks(stores, items, days, seed, end_date, future_days=future_days)), ignore_index=True)


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
) -> int:
    """Replace ``table`` in the database at ``url`` with generated sales; returns the row count."""
    import sqlalchemy as sa

    from mm_platform.sql import create_engine

    engine = create_engine(url)
    quoted = engine.dialect.identifier_preparer.quote(table)  # MySQL reads "x" as a string
    rows = 0
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {quoted}"))
        for chunk in iter_sales_chunks(stores, items, days, seed, end_date, future_days=future_days):
            chunk = chunk.assign(date=chunk["date"].dt.date)
            chunk.to_sql(table, conn, if_exists="append", index=False, chunksize=50_000, method="multi" if engine.dialect.name != "sqlite" else None)
            rows += len(chunk)
            if progress:
                progress(len(chunk))
        target = sa.Table(table, sa.MetaData(), autoload_with=conn)
        sa.Index(f"ix_{table}_date", target.c["date"]).create(conn, checkfirst=True)
    engine.dispose()
    return rows

