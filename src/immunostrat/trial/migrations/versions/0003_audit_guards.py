"""Audit guards the first ones missed: TRUNCATE of the audit log (PostgreSQL: statement-level, which
the row triggers never see), and the head row, which may only move forward one row at a time onto
the hash of that row (never back, never deleted).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PG_HEAD_STEP = """
CREATE FUNCTION audit_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'audit_head has one row: it is only updated';
    END IF;
    IF NEW.id <> OLD.id OR NEW.seq <> OLD.seq + 1 THEN
        RAISE EXCEPTION 'audit_head moves forward one row at a time';
    END IF;
    RETURN NEW;
END $$
"""
# deferred to the commit: the new log row may be written after the head in the same transaction
_PG_HEAD_HASH = """
CREATE FUNCTION audit_head_on_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq AND hash = NEW.hash) THEN
        RAISE EXCEPTION 'audit_head must point at the hash of audit_log row %', NEW.seq;
    END IF;
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
        )
        op.execute(_PG_HEAD_STEP)
        op.execute(
            "CREATE TRIGGER audit_head_step BEFORE UPDATE OR DELETE OR INSERT ON audit_head "
            "FOR EACH ROW EXECUTE FUNCTION audit_head_forward()"
        )
        op.execute(
            "CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
        )
        op.execute(_PG_HEAD_HASH)
        op.execute(
            "CREATE CONSTRAINT TRIGGER audit_head_hash AFTER UPDATE ON audit_head "
            "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION audit_head_on_log()"
        )
    else:  # SQLite has no TRUNCATE: a DELETE without WHERE fires the row triggers of 0001
        op.execute(
            "CREATE TRIGGER audit_head_step BEFORE UPDATE ON audit_head "
            "WHEN NEW.id <> OLD.id OR NEW.seq <> OLD.seq + 1 "
            "BEGIN SELECT RAISE(ABORT, 'audit_head moves forward one row at a time'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head "
            "BEGIN SELECT RAISE(ABORT, 'audit_head has one row: it is only updated'); END"
        )
        op.execute(
            "CREATE TRIGGER audit_head_no_insert BEFORE INSERT ON audit_head "
            "BEGIN SELECT RAISE(ABORT, 'audit_head has one row: it is only updated'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_head_hash ON audit_head")
        op.execute("DROP FUNCTION IF EXISTS audit_head_on_log()")
        op.execute("DROP TRIGGER IF EXISTS audit_head_no_truncate ON audit_head")
        op.execute("DROP TRIGGER IF EXISTS audit_head_step ON audit_head")
        op.execute("DROP FUNCTION IF EXISTS audit_head_forward()")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
    else:
        for name in ("audit_head_step", "audit_head_no_delete", "audit_head_no_insert"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
