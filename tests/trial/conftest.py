"""Databases for the trial tests: a SQLite file per test, and one PostgreSQL database per session
(created under a unique name on the server of IMMUNOSTRAT_TEST_PG, dropped at the end)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from immunostrat.trial.db import create_database, drop_database, get_engine, migrate

PG_SERVER = os.environ.get("IMMUNOSTRAT_TEST_PG", "postgresql+psycopg://postgres@localhost:5432/test")


def _pg_available() -> str | None:
    try:
        engine = create_engine(PG_SERVER, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_SERVER}: {exc.__class__.__name__}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    reason = _pg_available()
    if reason:
        pytest.skip(reason)
    yield PG_SERVER


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for one test."""
    name = f"immunostrat_t_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    url = create_database(pg_server, name)
    migrate(get_engine(url))
    yield url
    drop_database(pg_server, name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'trial.db'}"
    migrate(get_engine(url))
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))
