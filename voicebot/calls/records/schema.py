"""The call-records tables (SQLAlchemy Core), one definition for SQLite and PostgreSQL.

Place in the flow: the record writer inserts into these as calls happen, the REST API and
the webhook sender read them, Alembic's migrations (`migrations/versions`) create them at
start-up. Times are UTC (`timestamp with time zone` on PostgreSQL); `t`, `start_s` and
`end_s` are seconds of call audio, the agent's clock.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

calls = Table(
    "calls",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("gateway", String(200), nullable=False),
    Column("transport", String(32), nullable=False),
    Column("direction", String(16), nullable=False, default="inbound"),
    Column("from_uri", Text),
    Column("to_uri", Text),
    Column("info", JSON, nullable=False, default=dict),
    # Call variables (calls/variables.py): normalised name -> text; NULL in rows from before
    # migration 0002, read as {}.
    Column("variables", JSON, default=dict),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("answered_at", DateTime(timezone=True)),
    Column("ended_at", DateTime(timezone=True)),
    Column("end_reason", String(64)),
    Column("duration_s", Float),
    Column("transfer_target", Text),
    Column("dtmf", String(256), nullable=False, default=""),
    Column("turns", Integer, nullable=False, default=0),
    Column("summary", JSON),
    Column("recording_path", Text),
    Column("recording_bytes", Integer),
    # Refreshed while the call runs: a record left open by a gateway that died can be
    # told from one that is still going (and closed as `gateway_lost`).
    Column("heartbeat_at", DateTime(timezone=True)),
    Index("ix_calls_started_at", "started_at", "id"),
    Index("ix_calls_open", "gateway", "ended_at"),
    # The lost-calls sweep's (migration 0003): open calls only, by gateway and heartbeat.
    Index("ix_calls_open_heartbeat", "gateway", "heartbeat_at",
          postgresql_where=text("ended_at IS NULL"), sqlite_where=text("ended_at IS NULL")),
)

turns = Table(
    "turns",
    metadata,
    Column("call_id", String(200), ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("speaker", String(8), nullable=False),  # "user" | "bot"
    Column("text", Text, nullable=False),
    # The bot's words the caller heard (all of `text` unless interrupted); users: = text.
    Column("heard", Text, nullable=False),
    Column("start_s", Float),
    Column("end_s", Float),
    Column("interrupted", Boolean, nullable=False, default=False),
    # Bot turns answering a caller: the `turn_latency` stage times (DESIGN.md section 2).
    Column("latency", JSON),
)

events = Table(
    "call_events",
    metadata,
    Column("call_id", String(200), ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("type", String(32), nullable=False),
    Column("t", Float, nullable=False),
    Column("data", JSON, nullable=False),
)

# Webhook deliveries to make, written in the same transaction as the events they carry
# (a transactional outbox): one row per event and receiver URL.
outbox = Table(
    "webhook_outbox",
    metadata,
    Column("id", String(64), primary_key=True),  # the webhook-id: the same on every retry
    Column("url", Text, nullable=False),
    Column("call_id", String(200), nullable=False),
    Column("seq", Integer, nullable=False),  # order within (url, call_id)
    Column("type", String(32), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("status", String(12), nullable=False, default="pending"),  # delivered | dead
    Column("delivered_at", DateTime(timezone=True)),
    Column("last_error", Text),
    # A lease: the gateway sending it now, and until when (several gateways share a store).
    Column("locked_by", String(200)),
    Column("locked_until", DateTime(timezone=True)),
    Index("ix_outbox_due", "status", "next_attempt_at"),
    Index("ix_outbox_order", "url", "call_id", "seq"),
)
