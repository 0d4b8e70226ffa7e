"""Fill a production registry directly, the way promotion leaves it (for the serving
benchmark and tests): trained artifacts registered with promotion's tags, and the
``production`` alias set on each new version."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime

from mm_platform.core.vocabulary import model_name, series_id
from mm_platform.stores.registry import ModelRegistry, RegisteredModel

METRICS = ("mape", "wape", "rmse", "naive_mape", "naive_wape", "naive_rmse")


def production_tags(dataset: str, keys: dict, algorithm: str, metrics: dict[str, float] | None = None,
                    run_date: date | None = None, **extra: str) -> dict[str, str]:
    """Tags like those ``pipeline.promote`` puts on a production version."""
    metrics = metrics or {}
    now = datetime.now(UTC).replace(tzinfo=None)
    return {
        "dataset": dataset,
        "series_id": series_id(keys),
        **{f"key.{k}": str(v) for k, v in keys.items()},
        "algorithm": algorithm,
        "run_date": str(run_date or now.date()),
        **{f"metric.{m}": "" if metrics.get(m) is None or metrics[m] != metrics[m] else f"{float(metrics[m]):.6g}" for m in METRICS},
        "training_version": "1",
        "promoted_at": now.isoformat(),
        **{k: str(v) for k, v in extra.items()},
    }


def register_production(
    registry: ModelRegistry,
    dataset: str,
    models: Iterable[tuple[dict, bytes, dict[str, str]]],
    chunk: int = 500,
    progress: Callable[[int], None] | None = None,
) -> list[RegisteredModel]:
    """Register (keys, artifact bytes, tags) as new versions and point ``production`` at each."""
    out: list[RegisteredModel] = []
    batch: list[tuple[str, bytes, dict[str, str]]] = []

    def flush() -> None:
        registered = registry.register_many(batch, run_name=f"{dataset}-serving-seed", run_tags={})
        for mv in registered:
            registry.set_production(mv)
        out.extend(registered)
        if progress:
            progress(len(registered))
        batch.clear()

    for keys, data, tags in models:
        batch.append((model_name(dataset, keys), data, tags))
        if len(batch) >= chunk:
            flush()
    if batch:
        flush()
    return out


@contextlib.contextmanager
def fast_sqlite_writes() -> Iterator[None]:
    """While building a throwaway registry: SQLite without fsync and in WAL mode (much faster
    bulk registration; WAL also lets a server read while this process writes)."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def on_connect(dbapi_connection, _record) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            cur = dbapi_connection.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=OFF")
            cur.close()

    event.listen(Engine, "connect", on_connect)
    try:
        yield
    finally:
        event.remove(Engine, "connect", on_connect)
