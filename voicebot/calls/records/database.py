"""The records database: one async SQLAlchemy engine for SQLite or PostgreSQL, migrated by
Alembic when the gateway starts.

Place in the flow: the call manager opens it at start-up (`open_database`); the record
writer, the webhook sender and the REST API share its engine. SQLite runs in WAL mode with
foreign keys on (erasing a call cascades to its turns and events); on PostgreSQL an
advisory lock lets several gateways start against one store without racing the migration.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.schema import Table

log = logging.getLogger("voicebot.records")
MIGRATIONS = resources.files("voicebot.calls.records").joinpath("migrations")
_MIGRATION_LOCK = 0x766F6963  # "voic": the advisory lock id held while migrating


def _sqlite_file(url: str) -> Path | None:
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and url[len(prefix) :] not in ("", ":memory:"):
        return Path(url[len(prefix) :])
    return None


def create_engine(url: str) -> AsyncEngine:
    """An engine for `url` (sqlite+aiosqlite:/// or postgresql+asyncpg://); a SQLite file's
    directory is created."""
    path = _sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        # A server connection can drop (restart, idle timeout): checked on checkout. A
        # SQLite file's cannot, and the check cost a round trip on every transaction.
        kwargs.update(pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=5)
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()
            # SQLite's own lower() folds ASCII only: transcript search ignores case in any
            # language, as PostgreSQL's does.
            dbapi_connection.create_function("lower", 1, _lower, deterministic=True)

    return engine


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK})
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (a no-op when it is there)."""
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)


async def open_database(url: str) -> AsyncEngine:
    """Connect and migrate; raises if the database cannot be reached at start-up."""
    engine = create_engine(url)
    try:
        await migrate(engine)
    except Exception:
        await engine.dispose()
        raise
    log.info("call records in %s", engine.url.render_as_string(hide_password=True))
    return engine


def insert_ignoring_duplicates(table: Table, dialect: str) -> Insert:
    """INSERT that skips rows whose primary key exists: a batch retried after a commit
    whose answer was lost must not fail on what it already wrote."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()
