"""Call records, turns, events and the webhook outbox.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("gateway", sa.String(200), nullable=False),
        sa.Column("transport", sa.String(32), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("from_uri", sa.Text),
        sa.Column("to_uri", sa.Text),
        sa.Column("info", sa.JSON, nullable=False),
        sa.Column("started_at", _TZ, nullable=False),
        sa.Column("answered_at", _TZ),
        sa.Column("ended_at", _TZ),
        sa.Column("end_reason", sa.String(64)),
        sa.Column("duration_s", sa.Float),
        sa.Column("transfer_target", sa.Text),
        sa.Column("dtmf", sa.String(256), nullable=False),
        sa.Column("turns", sa.Integer, nullable=False),
        sa.Column("summary", sa.JSON),
        sa.Column("recording_path", sa.Text),
        sa.Column("recording_bytes", sa.Integer),
        sa.Column("heartbeat_at", _TZ),
    )
    op.create_index("ix_calls_started_at", "calls", ["started_at", "id"])
    op.create_index("ix_calls_open", "calls", ["gateway", "ended_at"])
    op.create_table(
        "turns",
        sa.Column("call_id", sa.String(200), sa.ForeignKey("calls.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("speaker", sa.String(8), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("heard", sa.Text, nullable=False),
        sa.Column("start_s", sa.Float),
        sa.Column("end_s", sa.Float),
        sa.Column("interrupted", sa.Boolean, nullable=False),
        sa.Column("latency", sa.JSON),
    )
    op.create_table(
        "call_events",
        sa.Column("call_id", sa.String(200), sa.ForeignKey("calls.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("t", sa.Float, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_table(
        "webhook_outbox",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("call_id", sa.String(200), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("next_attempt_at", _TZ, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("delivered_at", _TZ),
        sa.Column("last_error", sa.Text),
        sa.Column("locked_by", sa.String(200)),
        sa.Column("locked_until", _TZ),
    )
    op.create_index("ix_outbox_due", "webhook_outbox", ["status", "next_attempt_at"])
    op.create_index("ix_outbox_order", "webhook_outbox", ["url", "call_id", "seq"])


def downgrade() -> None:
    for table in ("webhook_outbox", "call_events", "turns", "calls"):
        op.drop_table(table)
