"""Alembic's environment for the call-records schema: run by `records.database.migrate`
on a connection it hands over (`config.attributes["connection"]`), never from a CLI ini."""

from __future__ import annotations

from alembic import context

from voicebot.calls.records.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying tables
)
with context.begin_transaction():
    context.run_migrations()
