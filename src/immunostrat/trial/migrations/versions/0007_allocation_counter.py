"""The trial counts its allocations: the next sequence number is read and advanced in the one
statement that takes the trial's row lock, instead of counting the allocations under it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("trials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allocations_made", sa.Integer(), nullable=False, server_default="0"))
    op.execute(
        sa.text(
            "UPDATE trials SET allocations_made = "
            "(SELECT count(*) FROM allocations WHERE allocations.trial_id = trials.id)"
        )
    )


def downgrade() -> None:
    # in place on both (SQLite >= 3.35): a batch copy of `trials` would break the keys that refer to it
    op.execute(sa.text("ALTER TABLE trials DROP COLUMN allocations_made"))
