"""Alembic environment: run with the engine handed over by ``immunostrat.trial.db.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, create_engine

from immunostrat.trial.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine: Engine | None = config.attributes.get("engine")
    if engine is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # two servers starting on a fresh database must not migrate it twice at once
                # (SQLite is already serialised by BEGIN IMMEDIATE)
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(742190001)")
            context.run_migrations()
        connection.commit()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
