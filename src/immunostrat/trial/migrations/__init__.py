"""Alembic migrations of the trial schema (shipped with the package)."""
