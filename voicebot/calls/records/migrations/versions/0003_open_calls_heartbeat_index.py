"""An index for the lost-calls sweep (calls/records/lost_calls.py): every gateway, every
heartbeat, looks for open records whose heartbeat is old, and for any open record of a
gateway still beating. Partial (`WHERE ended_at IS NULL`): it holds only the calls running
now, a handful of rows however many months of ended calls the table keeps, so the sweep
never scans the table. Both SQLite and PostgreSQL have partial indexes.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_OPEN = sa.text("ended_at IS NULL")


def upgrade() -> None:
    op.create_index("ix_calls_open_heartbeat", "calls", ["gateway", "heartbeat_at"],
                    postgresql_where=_OPEN, sqlite_where=_OPEN)  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_calls_open_heartbeat", table_name="calls")
