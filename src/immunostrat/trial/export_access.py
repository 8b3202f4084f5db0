"""Who may take which export: the blinded export for every exporting role, the unblinded one for
the statistician only and only after the database lock. One rule for the API, the pages and the
analysis report built from the unblinded export."""

from __future__ import annotations

from immunostrat.trial.audit import Actor
from immunostrat.trial.errors import Conflict, Forbidden
from immunostrat.trial.models import Trial

UNBLINDED_EXPORTERS: frozenset[str] = frozenset({"statistician"})
"""The roles that may take the unblinded export (after the lock)."""


def unblinded_refusal(trial: Trial, role: str) -> str | None:
    """Why ``role`` may not take the unblinded export of ``trial`` now; None when it may."""
    if role not in UNBLINDED_EXPORTERS:
        return "the unblinded export is for the statistician only"
    if trial.status != "locked":
        return "the unblinded export needs the database lock first"
    return None


def check_export(trial: Trial, actor: Actor, blinded: bool) -> None:
    """Raise :class:`Forbidden` or :class:`Conflict` (the API's 403 and 409) when ``actor`` may
    not take this export of ``trial``."""
    if blinded:
        return
    if actor.role not in UNBLINDED_EXPORTERS:
        raise Forbidden("the unblinded export is for the statistician only", field="blinded")
    if trial.status != "locked":
        raise Conflict("the unblinded export needs the database lock first", field="blinded")
