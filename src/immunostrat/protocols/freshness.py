"""Is a measurement fresh enough to decide at a given time? One rule for the CLI, the API and CDS Hooks.

A value measured at ``t`` decides at time ``T`` when ``0 <= T - t <= window``. A value measured
after ``T`` is not known at ``T`` and never decides. The window is the protocol's ``freshness_hours``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class Freshness:
    """A measurement's age at the decision time and whether the protocol's window accepts it."""

    measured_at: datetime
    decided_at: datetime
    window_hours: float

    @property
    def age(self) -> timedelta:
        return self.decided_at - self.measured_at

    @property
    def age_hours(self) -> float:
        return self.age.total_seconds() / 3600.0

    @property
    def after_decision(self) -> bool:
        return self.age < timedelta(0)

    @property
    def fresh(self) -> bool:
        return not self.after_decision and self.age <= timedelta(hours=self.window_hours)

    def note(self) -> str:
        """What a clinician reads when the value is too old (or too new) to decide."""
        window = f"the protocol accepts values up to {describe_hours(self.window_hours)} old"
        if self.after_decision:
            return f"measured {describe_age(-self.age)} after the decision time; {window}"
        return f"measured {describe_age(self.age)} before the decision time; {window}"


def freshness(measured_at: datetime, decided_at: datetime, window_hours: float) -> Freshness:
    """The freshness of a value measured at ``measured_at`` for a decision at ``decided_at``."""
    if window_hours <= 0:
        raise ValueError(f"a freshness window must be positive, not {window_hours!r} h")
    return Freshness(measured_at, decided_at, float(window_hours))


def describe_hours(hours: float) -> str:
    return f"{hours:g} h"


def describe_age(age: timedelta) -> str:
    """An age in the unit a clinician would use: minutes, hours, days or years (one decimal)."""
    seconds = age.total_seconds()
    minutes = seconds / 60.0
    if minutes < 60:
        return f"{minutes:.0f} min"
    hours = minutes / 60.0
    if hours < 48:
        return f"{hours:.1f} h".replace(".0 h", " h")
    days = hours / 24.0
    if days < 2 * _DAYS_PER_YEAR:
        return f"{days:.1f} days".replace(".0 days", " days")
    return f"{days / _DAYS_PER_YEAR:.1f} years"
