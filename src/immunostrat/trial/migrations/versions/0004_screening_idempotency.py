"""Screening idempotency: the client's Idempotency-Key and the SHA-256 of what it sent, one
participant per key within a trial (a blind retry after a lost answer registers nobody twice).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("request_sha256", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(
            "uq_participants_trial_idempotency_key", ["trial_id", "idempotency_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.drop_constraint("uq_participants_trial_idempotency_key", type_="unique")
        batch_op.drop_column("request_sha256")
        batch_op.drop_column("idempotency_key")
