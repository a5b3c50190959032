"""The embedded broker: kombu's SQLAlchemy transport on SQLite, polling fast enough for a demo.

kombu hands every transport option to ``create_engine``, so ``polling_interval`` cannot travel as
an option (create_engine rejects it); it is a class attribute of this subclass instead. The class is
named explicitly through Celery's ``broker_transport`` (never through the URL scheme, which kombu
restricts to its alias table), with the broker URL given as a plain SQLAlchemy URL.
"""

from __future__ import annotations

from kombu.transport import sqlalchemy as kombu_sqla

SQLA_PREFIXES = ("sqla+", "sqlalchemy+")
TRANSPORT_PATH = "moecomp.worker.broker:SQLiteTransport"


class SQLiteTransport(kombu_sqla.Transport):
    """kombu's SQLAlchemy transport, polling every 0.2 s instead of every second."""

    polling_interval = 0.2


def split_sqla_url(url: str) -> tuple[str, str | None]:
    """``sqla+sqlite:///x`` -> (``sqlite:///x``, our transport path); other URLs pass unchanged."""
    for prefix in SQLA_PREFIXES:
        if url.startswith(prefix):
            return url[len(prefix) :], TRANSPORT_PATH
    return url, None
