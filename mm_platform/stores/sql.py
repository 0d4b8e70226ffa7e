"""SQLAlchemy helpers shared by the source database and the warehouse."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa

from mm_platform.core.errors import SourceError, one_line


def create_engine(url: str) -> sa.Engine:
    """An engine for a store the platform writes (warehouse, generated source); SQLite files get
    their folder created and a busy timeout. A source that is only read uses ``source_engine``."""
    parsed = sa.make_url(url)
    kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 60}
    elif parsed.get_backend_name() == "mssql":
        kwargs["fast_executemany"] = True
    return sa.create_engine(url, **kwargs)


def source_engine(url: str) -> sa.Engine:
    """An engine that only reads an existing source database. A SQLite source must already
    exist: it is opened read-only and neither it nor its folder is ever created (a typo in
    ``source.url`` must not leave an empty database behind)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return create_engine(url)
    if parsed.database.startswith("file:"):  # already a SQLite URI: the caller chose its mode
        return sa.create_engine(url, connect_args={"timeout": 60})
    path = Path(parsed.database).resolve()
    if not path.is_file():
        raise SourceError(f"source database {parsed.database} does not exist (source.url {redact(url)})")
    # mode=ro: SQLite then refuses to create or write, whatever happens later.
    readonly = parsed.set(database=f"file:{quote(str(path))}?mode=ro", query={**parsed.query, "uri": "true"})
    return sa.create_engine(readonly, connect_args={"timeout": 60})


def missing_sqlite_file(url: str) -> str | None:
    """The file of a SQLite ``url`` when it does not exist (else None, also for other databases)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    if parsed.database.startswith("file:"):
        return None
    return None if Path(parsed.database).is_file() else parsed.database


def check_source(url: str, table: str, columns: list[str]) -> None:
    """Raise ``SourceError`` (one line) unless the source database can be opened and ``table``
    has every one of ``columns``. Creates nothing."""
    engine = source_engine(url)
    try:
        try:
            inspector = sa.inspect(engine)
            if not inspector.has_table(table):
                raise SourceError(f"source table {table!r} not found in {_where(url)}")
            present = [c["name"] for c in inspector.get_columns(table)]
        except sa.exc.DBAPIError as err:
            reason = one_line(err.orig) if err.orig is not None else one_line(err)
            raise SourceError(f"cannot read source database {_where(url)}: {reason}") from None
    finally:
        engine.dispose()
    missing = [c for c in columns if c not in present]
    if missing:
        raise SourceError(f"source table {table!r} lacks configured column(s) {missing}; it has {sorted(present)}")


def _where(url: str) -> str:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return parsed.database  # the file as the user wrote it
    return redact(url)


def redact(url: str) -> str:
    """The URL with any password hidden, for logs and metadata."""
    return sa.make_url(url).render_as_string(hide_password=True)
