"""Fixed-layout data capture of the first ImmunoSep set-up: daily assessments, outcome and adverse
events (trials defined with forms use ``immunostrat.trial.forms``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from immunostrat.errors import InputError
from immunostrat.scores.sofa import SOFA_COMPONENTS
from immunostrat.trial import audit, eligibility
from immunostrat.trial.audit import Actor
from immunostrat.trial.definition import AdverseEventRules
from immunostrat.trial.errors import Conflict, NotFound
from immunostrat.trial.models import (
    AdverseEvent,
    Assessment,
    Outcome,
    Participant,
    Trial,
    as_utc,
    utcnow,
)
from immunostrat.trial.schemas import (
    AdverseEventIn,
    AssessmentIn,
    OutcomeIn,
)
from immunostrat.trial.screening import participant_by_id, require_open
from immunostrat.trial.setup import trial_by_id

SOFA_FIELDS = tuple(f"sofa_{c}" for c in SOFA_COMPONENTS)
# concept id -> assessment column (canonical units of the concept dictionary)
ASSESSMENT_BIOMARKERS = {
    "ferritin": "ferritin_ng_ml",
    "mhla_dr": "hla_dr_abc",
    "crp": "crp_mg_l",
    "procalcitonin": "procalcitonin_ng_ml",
}

# --------------------------------------------------------------------------------------------
# data capture


def _randomized(
    session: Session, actor: Actor, trial_id: int, participant_id: int
) -> tuple[Trial, Participant]:
    trial = trial_by_id(session, trial_id)
    require_open(trial)
    p = participant_by_id(session, trial, participant_id, actor)
    if p.status not in ("randomized", "withdrawn"):
        raise Conflict(f"participant {p.pseudonym} is not randomized", field="participant_id")
    return trial, p


def row_dict(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(obj, n) for n in names}


ASSESSMENT_FIELDS = (
    "day",
    *SOFA_FIELDS,
    "sofa_total",
    *ASSESSMENT_BIOMARKERS.values(),
    "infection_status",
    "doses_given",
)


@dataclass(frozen=True)
class AssessmentWork:
    """The observations of a daily assessment converted to their columns (canonical units), worked
    out before the write transaction (on SQLite every write transaction holds the database's one
    write lock). ``weight_kg`` is the participant's weight the conversion used (per-kg units)."""

    weight_kg: float | None
    biomarkers: dict[str, float] = field(default_factory=dict)


def evaluate_assessment(data: AssessmentIn, weight_kg: float | None) -> AssessmentWork:
    """Convert the observations of ``data`` (any accepted unit) to the assessment's biomarker
    columns: no database. A concept the fixed layout does not record is an error naming it."""
    label = "assessment"  # the observations' patient label; nothing keeps it
    obs = eligibility.canonical_observations(
        label, [o.model_dump() for o in data.observations], weight_kg, source="observations"
    )
    biomarkers: dict[str, float] = {}
    for i, o in enumerate(obs):
        column = ASSESSMENT_BIOMARKERS.get(o.concept)
        if column is None:
            raise InputError(
                "concept not recorded in daily assessments",
                field=f"observations[{i}].concept",
                value=o.concept,
                expected="one of "
                + ", ".join(ASSESSMENT_BIOMARKERS)
                + " (a trial set up with forms scores SOFA from platelets and the other inputs)",
            )
        biomarkers[column] = o.value
    return AssessmentWork(weight_kg, biomarkers)


def assessment_weight(session: Session, actor: Actor, trial_id: int, participant_id: int) -> float | None:
    """The weight :func:`evaluate_assessment` needs, read (and access checked) before the write."""
    return _randomized(session, actor, trial_id, participant_id)[1].weight_kg


def record_assessment(
    session: Session,
    actor: Actor,
    trial_id: int,
    participant_id: int,
    data: AssessmentIn,
    work: AssessmentWork | None = None,
) -> Assessment:
    """Create or change one study day (SOFA components, biomarkers in any accepted unit, infection
    status, doses given). A change to a saved day keeps what is not sent (never nulls it), asks
    ``data.reason`` and audits old and new values with it; an unchanged resubmission writes nothing.
    ``work`` from :func:`evaluate_assessment` (done before the transaction) is used when the
    weight it used is still the participant's."""
    _, p = _randomized(session, actor, trial_id, participant_id)
    if work is None or work.weight_kg != p.weight_kg:
        work = evaluate_assessment(data, p.weight_kg)
    values: dict[str, Any] = {f: getattr(data, f) for f in SOFA_FIELDS if getattr(data, f) is not None}
    values.update(work.biomarkers)
    for name in ("infection_status", "doses_given"):
        if getattr(data, name) is not None:
            values[name] = getattr(data, name)
    row = session.scalars(
        select(Assessment).where(Assessment.participant_id == p.id, Assessment.day == data.day)
    ).one_or_none()
    old = row_dict(row, ASSESSMENT_FIELDS) if row is not None else {}
    merged = {**{k: v for k, v in old.items() if k != "day"}, **values}
    components = [merged.get(f) for f in SOFA_FIELDS]
    total = data.sofa_total if data.sofa_total is not None else merged.get("sofa_total")
    if all(c is not None for c in components):
        summed = sum(int(c) for c in components if c is not None)
        if data.sofa_total is not None and data.sofa_total != summed:
            raise InputError(
                "sofa_total differs from the sum of the components",
                field="sofa_total",
                value=data.sofa_total,
                expected=str(summed),
            )
        total = summed
    elif any(c is not None for c in components) and data.sofa_total is None:
        total = sum(int(c) for c in components if c is not None)  # missing systems count 0 (sofa.py)
    merged["sofa_total"] = total
    if row is None:
        row = Assessment(
            participant_id=p.id, day=data.day, entered_by=actor.username, entered_at=utcnow(), **merged
        )
        session.add(row)
        session.flush()
        audit.append(session, actor, "create", "assessment", row.id, new=row_dict(row, ASSESSMENT_FIELDS))
        return row
    changed = sorted(k for k, v in merged.items() if old.get(k) != v)
    if not changed:
        return row
    if data.reason is None:
        raise InputError(
            f"day {data.day} is saved: a change needs a reason",
            field="reason",
            expected=f"why {', '.join(changed)} changed (21 CFR 11.10(e))",
        )
    for k in changed:
        setattr(row, k, merged[k])
    row.entered_by = actor.username
    row.entered_at = utcnow()
    session.flush()
    audit.append(
        session,
        actor,
        "update",
        "assessment",
        row.id,
        old={k: old.get(k) for k in changed},
        new={**row_dict(row, ASSESSMENT_FIELDS), "reason": data.reason},
    )
    return row


def assessment_view(row: Assessment) -> dict[str, Any]:
    out = row_dict(row, ASSESSMENT_FIELDS)
    out["id"] = row.id
    out["entered_by"] = row.entered_by
    return out


def list_assessments(session: Session, actor: Actor, trial_id: int, participant_id: int) -> list[Assessment]:
    trial = trial_by_id(session, trial_id)
    p = participant_by_id(session, trial, participant_id, actor)
    return list(
        session.scalars(select(Assessment).where(Assessment.participant_id == p.id).order_by(Assessment.day))
    )


OUTCOME_FIELDS = (
    "death_day",
    "last_contact_day",
    "discharge_day",
    "infection_status_day15",
    "ferritin_day15_ng_ml",
    "hla_dr_day15_abc",
)


def record_outcome(
    session: Session, actor: Actor, trial_id: int, participant_id: int, data: OutcomeIn
) -> Outcome:
    _, p = _randomized(session, actor, trial_id, participant_id)
    values = data.model_dump()
    row = session.scalars(select(Outcome).where(Outcome.participant_id == p.id)).one_or_none()
    if row is None:
        row = Outcome(participant_id=p.id, recorded_by=actor.username, recorded_at=utcnow(), **values)
        session.add(row)
        session.flush()
        audit.append(session, actor, "create", "outcome", row.id, new=values)
    else:
        old = row_dict(row, OUTCOME_FIELDS)
        for k, v in values.items():
            setattr(row, k, v)
        row.recorded_by = actor.username
        row.recorded_at = utcnow()
        session.flush()
        audit.append(session, actor, "update", "outcome", row.id, old=old, new=values)
    return row


def outcome_view(row: Outcome) -> dict[str, Any]:
    out = row_dict(row, OUTCOME_FIELDS)
    out["participant_id"] = row.participant_id
    return out


AE_FIELDS = ("day", "term", "meddra_code", "serious", "seriousness", "severity", "related", "outcome")


def record_adverse_event(
    session: Session, actor: Actor, trial_id: int, participant_id: int, data: AdverseEventIn
) -> AdverseEvent:
    """An adverse event with its term (and MedDRA code), CTCAE grade (stored as ``severity``),
    seriousness criteria and, for a serious one, the time its expedited report is due."""
    trial, p = _randomized(session, actor, trial_id, participant_id)
    # trials set up before the setting existed get the default clock (AdverseEventRules)
    hours = AdverseEventRules.model_validate(trial.config.get("adverse_events") or {}).expedited_report_hours
    aware = data.aware_at or utcnow()
    row = AdverseEvent(
        participant_id=p.id,
        day=data.day,
        term=data.term,
        meddra_code=data.meddra_code,
        serious=data.serious,
        seriousness=list(data.seriousness) if data.serious else None,
        severity=data.ctcae_grade,
        related=data.related,
        outcome=data.outcome,
        aware_at=aware,
        report_due_at=aware + timedelta(hours=hours) if data.serious else None,
        entered_by=actor.username,
        entered_at=utcnow(),
    )
    session.add(row)
    session.flush()
    audit.append(session, actor, "create", "adverse_event", row.id, new=row_dict(row, AE_FIELDS))
    return row


def report_adverse_event(
    session: Session, actor: Actor, trial_id: int, ae_id: int, reported_at: datetime, reference: str | None
) -> AdverseEvent:
    """Record that a serious adverse event was reported to the sponsor (stops its clock)."""
    trial = trial_by_id(session, trial_id)
    row = session.get(AdverseEvent, ae_id)
    if row is None:
        raise NotFound(f"adverse event {ae_id} not found", field="ae_id")
    participant_by_id(session, trial, row.participant_id, actor)
    if not row.serious:
        raise Conflict("only serious adverse events have an expedited report", field="ae_id")
    row.reported_at = reported_at
    row.report_reference = reference
    session.flush()
    audit.append(
        session,
        actor,
        "report",
        "adverse_event",
        row.id,
        new={"reported_at": reported_at.isoformat(), "reference": reference},
    )
    return row


def adverse_event_view(
    row: AdverseEvent, pseudonym: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    out = row_dict(row, AE_FIELDS)
    out["ctcae_grade"] = row.severity
    out["id"] = row.id
    out["participant_id"] = row.participant_id
    out["aware_at"] = as_utc(row.aware_at)
    out["report_due_at"] = as_utc(row.report_due_at)
    out["reported_at"] = as_utc(row.reported_at)
    due = as_utc(row.report_due_at)
    if due is None:
        out["report_state"] = None
    elif row.reported_at is not None:
        out["report_state"] = "reported late" if (as_utc(row.reported_at) or due) > due else "reported"
    else:
        out["report_state"] = "overdue" if (now or utcnow()) > due else "due"
    if pseudonym is not None:
        out["pseudonym"] = pseudonym
    return out


def list_adverse_events(session: Session, actor: Actor, trial_id: int) -> list[dict[str, Any]]:
    trial = trial_by_id(session, trial_id)
    stmt = (
        select(AdverseEvent, Participant.pseudonym)
        .join(Participant, Participant.id == AdverseEvent.participant_id)
        .where(Participant.trial_id == trial.id)
        .order_by(AdverseEvent.id)
    )
    if actor.role == "investigator" and actor.site_id is not None:
        stmt = stmt.where(Participant.site_id == actor.site_id)
    return [adverse_event_view(ae, pseudonym) for ae, pseudonym in session.execute(stmt)]
