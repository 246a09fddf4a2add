"""Call variables: what the caller's side knew of the call (calls/variables.py).

One JSON column on `calls`, the normalised name -> text map; rows from before it read as
no variables (NULL, given out as `{}`). Adding a nullable column is a plain ALTER TABLE on
both SQLite and PostgreSQL (no table copy, no rewrite of existing rows).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("calls", sa.Column("variables", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch:
        batch.drop_column("variables")
