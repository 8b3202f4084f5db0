"""Storage: engines for SQLite (WAL, the embedded default) and PostgreSQL, sessions, migrations.

SQLite write transactions start with ``BEGIN IMMEDIATE`` so that two writers never interleave
(allocation takes the next unused slot inside one such transaction); PostgreSQL uses row locks
(``SELECT ... FOR UPDATE``) in the same code paths. Both run the same Alembic migrations, which
ship inside this package (``immunostrat/trial/migrations``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from immunostrat.errors import InputError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

_ENGINES: dict[str, Engine] = {}
_READERS: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()
READ_ONLY = "immunostrat_read_only"
"""Execution option of the engines :func:`read_transaction` uses."""


def normalise_url(db_url: str) -> str:
    """Accept ``sqlite:///file.db``, ``postgresql://...`` (psycopg 3 is used) or a plain file path."""
    if "://" not in db_url:
        return f"sqlite:///{db_url}"
    if db_url.startswith("postgresql://") or db_url.startswith("postgres://"):
        return "postgresql+psycopg://" + db_url.split("://", 1)[1]
    return db_url


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(db_url: str, *, pool_size: int = 20) -> Engine:
    """A new engine for ``db_url``; SQLite gets WAL, foreign keys, a busy timeout and BEGIN IMMEDIATE."""
    url = make_url(normalise_url(db_url))
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise InputError(
                "in-memory SQLite cannot be shared between connections",
                field="db_url",
                value=str(url),
                expected="sqlite:///path/to/file.db",
            )
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 60},
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_timeout=120,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # a reader must not queue behind a writer for the write lock (WAL readers never block)
            conn.exec_driver_sql(
                "BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE"
            )

        return engine
    if url.get_backend_name() == "postgresql":
        return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_timeout=120)
    raise InputError(
        "unsupported database",
        field="db_url",
        value=url.get_backend_name(),
        expected="sqlite:///FILE or postgresql://USER@HOST/DB",
    )


def get_engine(db_url: str) -> Engine:
    """One shared engine per URL in this process."""
    key = normalise_url(db_url)
    engine = _ENGINES.get(key)
    if engine is None:
        engine = make_engine(key)
        _ENGINES[key] = engine
    return engine


def dispose_engines() -> None:
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Session]:
    """A unit of work that only reads: a deferred ``BEGIN`` on SQLite (it sees the last commit and
    does not wait for a writer), ``READ ONLY`` on PostgreSQL; a write in it is an error."""
    reader = _READERS.get(engine)
    if reader is None:
        options: dict[str, Any] = {READ_ONLY: True}
        if not is_sqlite(engine):
            options["postgresql_readonly"] = True
        reader = _READERS.setdefault(engine, engine.execution_options(**options))
    with Session(reader, expire_on_commit=False) as session, session.begin():
        yield session


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine_or_url: Engine | str, revision: str = "head") -> None:
    """Bring the database schema up to ``revision`` (same migrations on SQLite and PostgreSQL)."""
    from alembic import command

    engine = get_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    command.upgrade(_alembic_config(engine), revision)


def downgrade(engine_or_url: Engine | str, revision: str = "base") -> None:
    from alembic import command

    engine = get_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    command.downgrade(_alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def has_schema(engine: Engine) -> bool:
    return "trials" in inspect(engine).get_table_names()


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the PostgreSQL server of ``server_url``; returns its URL.

    (For SQLite a file is created on first connection: the URL of ``name`` as a file is returned.)"""
    url = make_url(normalise_url(server_url))
    if url.get_backend_name() == "sqlite":
        return f"sqlite:///{name}"
    if not name.replace("_", "").isalnum():
        raise InputError("database names are letters, digits and _", field="name", value=name)
    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=_null_pool())
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name`` (closing its connections first)."""
    url = make_url(normalise_url(server_url))
    if url.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm", ".sign-in", ".sign-in-wal", ".sign-in-shm"):  # with the throttle's
            Path(name + suffix).unlink(missing_ok=True)
        return
    for key in [k for k in _ENGINES if make_url(k).database == name]:
        _ENGINES.pop(key).dispose()
    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=_null_pool())
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        engine.dispose()


def _null_pool() -> Any:
    from sqlalchemy.pool import NullPool

    return NullPool


# Sign-in throttling's counts (immunostrat.api.throttle): one row per failed sign-in and key, in the
# service's own database (on SQLite a file beside it, DB.sign-in) so that every worker and process
# of one service shares them. The table is
# not part of the trial's record (no audit row, not in the migrations' metadata): rows older than the
# longest window are removed as new failures arrive, and losing them only resets the throttle.
SIGN_IN_FAILURES = "sign_in_failures"
_THROTTLE_METADATA = MetaData()
_SIGN_IN_FAILURES = Table(
    SIGN_IN_FAILURES,
    _THROTTLE_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(80), nullable=False),
    Column("at_s", Float, nullable=False),  # seconds since the epoch (shared by every process)
    Index("ix_sign_in_failures_key_at", "key", "at_s"),
)


class SignInFailureStore:
    """Failed sign-ins per key (a hashed username or an address) with their times, in ``engine``."""

    def __init__(self, engine: Engine) -> None:
        if is_sqlite(engine) and engine.url.database:
            # a file of its own beside the database: SQLite has one write lock per file, and a
            # failed sign-in must not wait for a long write (nor a read-only request for it)
            engine = get_engine(f"sqlite:///{engine.url.database}.sign-in")
        self.engine = engine
        for attempt in range(3):
            try:
                _THROTTLE_METADATA.create_all(engine, checkfirst=True)
                break
            except (IntegrityError, ProgrammingError, OperationalError):
                # two workers starting at once both create it: the loser sees it on the next look
                if attempt == 2:
                    raise

    def times_since(self, key: str, since_s: float) -> list[float]:
        """The failure times of ``key`` after ``since_s``, oldest first."""
        query = (
            select(_SIGN_IN_FAILURES.c.at_s)
            .where(_SIGN_IN_FAILURES.c.key == key, _SIGN_IN_FAILURES.c.at_s > since_s)
            .order_by(_SIGN_IN_FAILURES.c.at_s)
        )
        with read_transaction(self.engine) as session:
            return [float(t) for t in session.execute(query).scalars()]

    def add(self, keys: list[str], at_s: float, forget_before_s: float) -> None:
        """One failure at ``at_s`` for each key; rows older than ``forget_before_s`` are removed."""
        with transaction(self.engine) as session:
            session.execute(delete(_SIGN_IN_FAILURES).where(_SIGN_IN_FAILURES.c.at_s < forget_before_s))
            session.execute(insert(_SIGN_IN_FAILURES), [{"key": k, "at_s": at_s} for k in keys])

    def clear(self, key: str) -> None:
        with transaction(self.engine) as session:
            session.execute(delete(_SIGN_IN_FAILURES).where(_SIGN_IN_FAILURES.c.key == key))
