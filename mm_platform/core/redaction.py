"""Secrets never reach logs, metadata or tags."""

from __future__ import annotations

import sqlalchemy as sa


def redact(url: str) -> str:
    """``url`` with any password hidden (SQLAlchemy URLs, and other ``scheme://user:pw@host`` URIs)."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL (http://, file paths...)
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            return f"{scheme}://***@{rest.split('@', 1)[1]}"
        return url
