"""Shared times of the hand-built cohort source (imported by conftest.py and the engine tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

T0 = datetime(2024, 1, 1, 8, 30, tzinfo=UTC)  # ICU admission of s1: the first grid hour is 09:00


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)
