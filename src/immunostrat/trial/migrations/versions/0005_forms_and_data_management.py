"""Trials as data: form records with their change history, data queries, visit signatures, and
adverse events with a MedDRA code, ICH E2A seriousness criteria and the expedited-report clock.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "form_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column("visit_id", sa.String(length=32), nullable=False),
        sa.Column("form_id", sa.String(length=64), nullable=False),
        sa.Column("study_day", sa.Integer(), nullable=True),
        sa.Column("visit_date", sa.Date(), nullable=True),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("entered", sa.JSON(), nullable=False),
        sa.Column("derived", sa.JSON(), nullable=False),
        sa.Column("not_done", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["participant_id"], ["participants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("participant_id", "visit_id", "form_id", name="uq_form_records_visit_form"),
    )
    op.create_index("ix_form_records_participant_id", "form_records", ["participant_id"])
    op.create_table(
        "form_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("field", sa.String(length=64), nullable=False),
        sa.Column("old", sa.Text(), nullable=True),
        sa.Column("new", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("changed_by", sa.String(length=64), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["record_id"], ["form_records.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_form_changes_record_id", "form_changes", ["record_id"])
    op.create_table(
        "data_queries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.Column("field", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("raised_by", sa.String(length=64), nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["record_id"], ["form_records.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_data_queries_record_id", "data_queries", ["record_id"])
    op.create_table(
        "signatures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("participant_id", sa.Integer(), nullable=False),
        sa.Column("visit_id", sa.String(length=32), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("full_name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("meaning", sa.Text(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["participant_id"], ["participants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_signatures_participant_id", "signatures", ["participant_id"])
    with op.batch_alter_table("adverse_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("meddra_code", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("seriousness", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("aware_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("report_due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("report_reference", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("adverse_events", schema=None) as batch_op:
        for name in (
            "report_reference",
            "reported_at",
            "report_due_at",
            "aware_at",
            "seriousness",
            "meddra_code",
        ):
            batch_op.drop_column(name)
    for table in ("signatures", "data_queries", "form_changes", "form_records"):
        op.drop_index(
            f"ix_{table}_{'participant_id' if table in ('signatures', 'form_records') else 'record_id'}"
        )
        op.drop_table(table)
