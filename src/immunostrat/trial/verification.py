"""Audit verification: the hash chain, then every data row against its last audit row."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from immunostrat.trial import audit
from immunostrat.trial.capture import AE_FIELDS, ASSESSMENT_FIELDS, OUTCOME_FIELDS, row_dict
from immunostrat.trial.models import (
    AdverseEvent,
    Allocation,
    Assessment,
    AuditRow,
    Outcome,
)

# --------------------------------------------------------------------------------------------
# audit verification: the chain, then the data tables against it


def _last_audit_rows(session: Session, entity: str) -> dict[str, AuditRow]:
    """The latest audit row of each ``entity`` id (create or update)."""
    rows = session.scalars(
        select(AuditRow)
        .where(AuditRow.entity == entity, AuditRow.action.in_(("create", "update")))
        .order_by(AuditRow.seq)
    )
    return {r.entity_id: r for r in rows}


def _record_problems(session: Session) -> tuple[int, str] | None:
    """(audit seq, problem) of the first data row that differs from what its audit rows say."""
    tables: list[tuple[str, Any, tuple[str, ...]]] = [
        ("assessment", Assessment, ASSESSMENT_FIELDS),
        ("outcome", Outcome, OUTCOME_FIELDS),
        ("adverse_event", AdverseEvent, AE_FIELDS),
    ]
    for entity, model, names in tables:
        logged = _last_audit_rows(session, entity)
        for row in session.scalars(select(model).order_by(model.id)):
            last = logged.get(str(row.id))
            if last is None:
                return 0, f"{entity} {row.id} has no audit row (written outside the service)"
            logged_new = json.loads(last.new or "null")
            if isinstance(logged_new, dict):  # an update also carries its reason
                logged_new = {k: v for k, v in logged_new.items() if k in names}
            if logged_new != json.loads(audit.canonical(row_dict(row, names)) or "null"):
                return last.seq, f"{entity} {row.id} differs from its audit row {last.seq} (edited)"
    logged = _last_audit_rows(session, "allocation")
    for alloc in session.scalars(select(Allocation).order_by(Allocation.id)):
        last = logged.get(str(alloc.id))
        if last is None:
            return 0, f"allocation {alloc.id} has no audit row (written outside the service)"
        entry = json.loads(last.new or "{}")
        if (
            alloc.arm != alloc.kit.arm
            or entry.get("kit_number") != alloc.kit.kit_number
            or entry.get("sequence") != alloc.sequence
        ):
            return (
                last.seq,
                f"allocation {alloc.id} differs from its kit or its audit row {last.seq} (edited)",
            )
    return None


def verify_audit(session: Session) -> audit.AuditVerification:
    """The hash chain (:func:`~immunostrat.trial.audit.verify_chain`), then every assessment,
    outcome, adverse event and allocation against its last audit row: an edit made in the database
    behind the service's back (a SOFA value, an allocation's arm) is named too."""
    chain = audit.verify_chain(session)
    if not chain.ok:
        return chain
    problem = _record_problems(session)
    if problem is None:
        return chain
    seq, text = problem
    return audit.AuditVerification(False, chain.rows_checked, seq or None, text)
