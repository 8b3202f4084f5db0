"""Migrations and storage on SQLite (WAL) and PostgreSQL: same migrations, same schema."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from immunostrat.errors import InputError
from immunostrat.trial.audit import SYSTEM, append
from immunostrat.trial.db import (
    current_revision,
    downgrade,
    get_engine,
    make_engine,
    migrate,
    normalise_url,
    transaction,
)
from immunostrat.trial.models import Base


def test_migrations_create_exactly_the_model(db_url: str) -> None:
    engine = get_engine(db_url)
    assert current_revision(engine) == "0007"
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_downgrade_and_upgrade_again(db_url: str) -> None:
    engine = get_engine(db_url)
    downgrade(engine, "base")
    assert "trials" not in inspect(engine).get_table_names()
    migrate(engine)
    assert "trials" in inspect(engine).get_table_names()
    with transaction(engine) as s:
        head = s.execute(text("SELECT seq, hash FROM audit_head")).one()
    assert head == (0, "0" * 64)


def test_sqlite_runs_in_wal_mode(sqlite_url: str) -> None:
    with get_engine(sqlite_url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_audit_log_refuses_update_and_delete(db_url: str) -> None:
    engine = get_engine(db_url)
    with transaction(engine) as s:
        append(s, SYSTEM, "create", "thing", 1, new={"x": 1})
    for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), transaction(engine) as s:
            s.execute(text(statement))
    with transaction(engine) as s:
        assert s.execute(text("SELECT count(*) FROM audit_log")).scalar() == 1


def test_urls_and_in_memory_sqlite() -> None:
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("trial.db") == "sqlite:///trial.db"
    with pytest.raises(InputError) as err:
        make_engine("sqlite://")
    assert err.value.field == "db_url"
    with pytest.raises(InputError):
        make_engine("mysql://x@y/z")
