"""SQLAlchemy helpers shared by the source database and the warehouse."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa


def create_engine(url: str) -> sa.Engine:
    """An engine for ``url``; SQLite files get their folder created and a busy timeout."""
    parsed = sa.make_url(url)
    kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 60}
    elif parsed.get_backend_name() == "mssql":
        kwargs["fast_executemany"] = True
    return sa.create_engine(url, **kwargs)


def redact(url: str) -> str:
    """The URL with any password hidden, for logs and metadata."""
    return sa.make_url(url).render_as_string(hide_password=True)
