"""The token signing key leaves the database: it comes from the environment or a key file. A key
that an earlier version generated and kept in ``service_settings`` is no longer accepted, but it is
still a secret in the database: delete it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(sa.text("DELETE FROM service_settings WHERE key = 'jwt_signing_key'"))


def downgrade() -> None:
    """Nothing to restore: a deleted key is not brought back."""
