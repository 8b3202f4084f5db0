"""Data capture from the trial's form definitions: a form of a visit is checked field by field
(unknown field, wrong unit, out of range, missing required value, visit outside its window: an
error naming the form, field, value and what was expected, and nothing written), converted into each
field's unit, scored (derived fields from ``immunostrat.scores``), edit-checked, and saved with its
history: every change after the first save asks a reason and keeps old and new values.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

import polars as pl
from sqlalchemy import select
from sqlalchemy.orm import Session

from immunostrat.concepts import UnitError, conversion_for, load_concepts
from immunostrat.errors import InputError
from immunostrat.scores import hscore, mex_sledai, qsofa, sledai_2k, sofa
from immunostrat.trial import audit
from immunostrat.trial.audit import Actor
from immunostrat.trial.definition import CheckDef, FieldDef, FormDef, Visit, holds
from immunostrat.trial.errors import Conflict, NotFound
from immunostrat.trial.models import (
    Allocation,
    DataQuery,
    FormChange,
    FormRecord,
    Participant,
    Signature,
    Trial,
    as_utc,
    utcnow,
)
from immunostrat.trial.schemas import FormIn, TrialSpec
from immunostrat.trial.screening import participant_by_id, require_open
from immunostrat.trial.setup import trial_by_id

MAX_TEXT_CHARS = 2000

_SCORES = {"sofa": sofa, "mex-sledai": mex_sledai, "sledai-2k": sledai_2k, "hscore": hscore, "qsofa": qsofa}


@lru_cache(maxsize=64)
def _parse_definition(text: str) -> TrialSpec:
    return TrialSpec.model_validate(json.loads(text))


def trial_spec_from_json(text: str) -> TrialSpec:
    return _parse_definition(text)


def trial_definition(trial: Trial) -> TrialSpec:
    """The trial file the trial was set up from (stored with the trial at set-up)."""
    raw = (trial.config or {}).get("definition")
    if raw is None:
        raise Conflict(f"trial {trial.code} was set up without forms", field="trial_id")
    return _parse_definition(json.dumps(raw, sort_keys=True))


def has_forms(trial: Trial) -> bool:
    return bool(((trial.config or {}).get("definition") or {}).get("forms"))


def form_definition(spec: TrialSpec, form_id: str) -> FormDef:
    form = spec.forms.get(form_id)
    if form is None:
        raise InputError("unknown form", field="form", value=form_id, expected=", ".join(spec.forms))
    return form


@dataclass
class CheckedForm:
    """A form's values after checking: ``values`` in each field's unit, ``entered`` as typed."""

    values: dict[str, Any]
    entered: dict[str, Any]
    derived: dict[str, Any]
    not_done: dict[str, str]
    warnings: list[tuple[str, str]] = field(default_factory=list)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(form_id: str, f: FieldDef, raw: Any, weight_kg: float | None) -> tuple[float, Any]:
    """(value in the field's unit, what was entered)."""
    where = f"{form_id}.{f.name}"
    unit = f.stored_unit
    value = raw
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - {"value", "unit"})
        if unknown or "value" not in raw:
            raise InputError(
                "a value with a unit is {'value': number, 'unit': text}",
                field=where,
                value=raw,
                expected="a number in " + (unit or "the field's unit") + ", or {'value': v, 'unit': u}",
            )
        value, unit = raw["value"], str(raw.get("unit") or "")
    if not _is_number(value) or not math.isfinite(float(value)):
        raise InputError("not a finite number", field=where, value=raw, expected=f"a number ({f.label})")
    number = float(value)
    if f.concept is not None and unit != f.stored_unit:
        try:
            canonical = conversion_for(f.concept, unit).apply(number, weight_kg)
            target = conversion_for(f.concept, f.stored_unit)
        except UnitError as exc:
            raise InputError(str(exc), field=where, value=raw, expected=exc.expected) from None
        number = round((canonical - target.offset) / target.scale, 6)
    elif f.concept is None and unit != f.stored_unit:
        raise InputError("this field takes no unit", field=where, value=raw, expected=f"a number ({f.label})")
    if f.concept is not None:
        concept = load_concepts()[f.concept]
        floor = concept.unit_slip_floor
        if floor is not None:
            canonical_value = conversion_for(f.concept, f.stored_unit).apply(number, weight_kg)
            if canonical_value < floor.below:
                message, expected = concept.unit_slip_text(canonical_value)
                raise InputError(message, field=where, value=raw, expected=expected)
    if f.type == "integer" and number != int(number):
        raise InputError("not a whole number", field=where, value=raw, expected=f"an integer ({f.label})")
    allowed = f.allowed_range()
    if allowed is not None and not allowed[0] <= number <= allowed[1]:
        shown = f" {f.stored_unit}" if f.stored_unit not in ("", "1") else ""
        raise InputError(
            "value out of range",
            field=where,
            value=raw,
            expected=f"{allowed[0]:g} to {allowed[1]:g}{shown} ({f.label})",
        )
    return (float(int(number)) if f.type == "integer" else number), raw


def _value(form_id: str, f: FieldDef, raw: Any, weight_kg: float | None) -> tuple[Any, Any]:
    where = f"{form_id}.{f.name}"
    if f.type in ("number", "integer"):
        number, entered = _number(form_id, f, raw, weight_kg)
        return (int(number) if f.type == "integer" else number), entered
    if f.type == "boolean":
        if isinstance(raw, bool):
            return raw, raw
        raise InputError("not a yes/no value", field=where, value=raw, expected="true or false")
    if f.type == "choice":
        if isinstance(raw, str) and raw in f.choices:
            return raw, raw
        raise InputError("not one of the choices", field=where, value=raw, expected=", ".join(f.choices))
    if f.type == "date":
        try:
            return date.fromisoformat(str(raw)).isoformat(), raw
        except ValueError:
            raise InputError("not a date", field=where, value=raw, expected="YYYY-MM-DD") from None
    if not isinstance(raw, str) or len(raw) > MAX_TEXT_CHARS:
        raise InputError(
            "not a text", field=where, value=raw, expected=f"text of up to {MAX_TEXT_CHARS} characters"
        )
    return raw, raw


def _score_input(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    return float(value) if _is_number(value) else None


def derive(form: FormDef, values: dict[str, Any]) -> dict[str, Any]:
    """The form's derived fields, scored by ``immunostrat.scores`` from one row of field values.

    A score with a missing input component is stored as missing (None), never as a guess, and the
    missing components are named in ``<score>_missing_components``."""
    out: dict[str, Any] = {}
    for d in form.derived:
        row: dict[str, float | None] = {name: _score_input(v) for name, v in values.items()}
        for target, expression in d.inputs.items():
            names = d.fields_of(expression)
            parts = [_score_input(values.get(n)) for n in names]
            if len(parts) == 2:
                a, b = parts
                row[target] = None if a is None or b is None or b == 0 else round(a / b, 6)
            else:
                row[target] = parts[0]
        frame = pl.DataFrame({k: [v] for k, v in row.items()}, schema=dict.fromkeys(row, pl.Float64))
        scored = _SCORES[d.score](frame).row(0, named=True)
        prefix = d.score.replace("-", "_")
        missing = [c for c in str(scored.get(f"{prefix}_missing_components") or "").split(",") if c]
        for output, name in d.columns():
            value = scored.get(output)
            incomplete = bool(missing) and (
                output.endswith("_total") or output.removeprefix(f"{prefix}_") in missing
            )
            out[name] = None if value is None or (incomplete and d.score == "sofa") else int(value)
        if missing:
            out[f"{prefix}_missing_components"] = ",".join(missing)
    return out


def _check_holds(check: CheckDef, known: dict[str, Any]) -> bool | None:
    right = check.value if check.other is None else known.get(check.other)
    return holds(known.get(check.field), check.op, right)


def check_form(
    spec: TrialSpec, form_id: str, values: dict[str, Any], not_done: dict[str, str], weight_kg: float | None
) -> CheckedForm:
    """Check and convert one form's values; raises InputError naming ``form.field``."""
    form = form_definition(spec, form_id)
    names = [f.name for f in form.fields]
    for name in [*values, *not_done]:
        if form.field(name) is None:
            raise InputError(
                "unknown field", field=f"{form_id}.{name}", value=name, expected=", ".join(names)
            )
    for name, reason in not_done.items():
        if values.get(name) is not None:
            raise InputError(
                "a field is either given or not done", field=f"{form_id}.{name}", value=values[name]
            )
        if len(reason.strip()) < 3:
            raise InputError(
                "say why it was not done", field=f"{form_id}.{name}", value=reason, expected="a reason"
            )
    stored: dict[str, Any] = {}
    entered: dict[str, Any] = {}
    for f in form.fields:
        raw = values.get(f.name)
        if raw is None:
            if f.required and f.name not in not_done:
                raise InputError(
                    "required field missing",
                    field=f"{form_id}.{f.name}",
                    expected=f"a value for {f.label}, or the field under not_done with the reason",
                )
            continue
        stored[f.name], entered[f.name] = _value(form_id, f, raw, weight_kg)
    derived = derive(form, stored)
    known = {**stored, **derived}
    warnings: list[tuple[str, str]] = []
    for check in form.checks:
        if _check_holds(check, known) is False:
            if check.severity == "error":
                raise InputError(
                    check.message,
                    field=f"{form_id}.{check.field}",
                    value=known.get(check.field),
                    expected=f"{check.field} {check.op} {check.other or check.value}",
                )
            warnings.append((check.field, check.message))
    return CheckedForm(stored, entered, derived, {k: v.strip() for k, v in not_done.items()}, warnings)


# ---------------------------------------------------------------------------------- visits


def randomization_date(session: Session, p: Participant) -> date | None:
    alloc = session.scalars(select(Allocation).where(Allocation.participant_id == p.id)).one_or_none()
    at = as_utc(alloc.allocated_at) if alloc is not None else None
    return at.date() if at is not None else None


def study_day(spec: TrialSpec, randomized_on: date, on: date) -> int:
    """The study day of a date: the randomization date is ``day_of_randomization`` (1 or 0)."""
    return (on - randomized_on).days + spec.day_of_randomization


def visit_dates(spec: TrialSpec, visit: Visit, randomized_on: date) -> tuple[date, date]:
    target = randomized_on + timedelta(days=visit.day - spec.day_of_randomization)
    return target - timedelta(days=visit.window_before), target + timedelta(days=visit.window_after)


def _visit(spec: TrialSpec, visit_id: str, form_id: str) -> Visit:
    visit = spec.visit(visit_id)
    if visit is None:
        raise InputError(
            "unknown visit", field="visit", value=visit_id, expected=", ".join(v.id for v in spec.schedule())
        )
    if form_id not in visit.forms:
        raise InputError(
            f"form not collected at visit {visit_id}",
            field="form",
            value=form_id,
            expected=", ".join(visit.forms),
        )
    return visit


# ---------------------------------------------------------------------------------- saving


def _shown(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def _content(record: FormRecord) -> dict[str, Any]:
    return {
        "visit_date": record.visit_date.isoformat() if record.visit_date else None,
        "values": record.values,
        "not_done": record.not_done,
    }


def save_form(
    session: Session,
    actor: Actor,
    trial_id: int,
    participant_id: int,
    visit_id: str,
    form_id: str,
    data: FormIn,
    *,
    today: date | None = None,
) -> tuple[FormRecord, list[DataQuery]]:
    """Create or change one form of a visit; returns the record and the queries its edit checks
    opened. A change needs ``data.reason``; an unchanged resubmission writes nothing."""
    trial = trial_by_id(session, trial_id)
    require_open(trial)
    spec = trial_definition(trial)
    p = participant_by_id(session, trial, participant_id, actor)
    if p.status not in ("randomized", "withdrawn") or p.data_removed:
        raise Conflict(f"participant {p.pseudonym} is {p.status}: no visit data", field="participant_id")
    visit = _visit(spec, visit_id, form_id)
    randomized_on = randomization_date(session, p)
    assert randomized_on is not None
    today = today or utcnow().date()
    first, last = visit_dates(spec, visit, randomized_on)
    if data.visit_date > today:
        raise InputError(
            "visit date in the future", field=f"{form_id}.visit_date", value=str(data.visit_date)
        )
    if not first <= data.visit_date <= last:
        raise InputError(
            f"visit {visit.id} outside its window",
            field=f"{form_id}.visit_date",
            value=data.visit_date.isoformat(),
            expected=f"{first.isoformat()} to {last.isoformat()} (study day {visit.day - visit.window_before}"
            f" to {visit.day + visit.window_after})",
        )
    checked = check_form(spec, form_id, data.values, data.not_done, p.weight_kg)
    record = session.scalars(
        select(FormRecord).where(
            FormRecord.participant_id == p.id, FormRecord.visit_id == visit.id, FormRecord.form_id == form_id
        )
    ).one_or_none()
    now = utcnow()
    day = study_day(spec, randomized_on, data.visit_date)
    if record is None:
        record = FormRecord(
            participant_id=p.id,
            visit_id=visit.id,
            form_id=form_id,
            study_day=day,
            visit_date=data.visit_date,
            values=checked.values,
            entered=checked.entered,
            derived=checked.derived,
            not_done=checked.not_done,
            version=1,
            created_by=actor.username,
            created_at=now,
            updated_by=actor.username,
            updated_at=now,
        )
        session.add(record)
        session.flush()
        audit.append(
            session,
            actor,
            "create",
            "form_record",
            record.id,
            new={
                "participant": p.pseudonym,
                "visit": visit.id,
                "form": form_id,
                **_content(record),
                "derived": checked.derived,
            },
        )
    else:
        old = {
            "visit_date": _content(record)["visit_date"],
            **record.values,
            **{f"{k} (not done)": v for k, v in record.not_done.items()},
        }
        new = {
            "visit_date": data.visit_date.isoformat(),
            **checked.values,
            **{f"{k} (not done)": v for k, v in checked.not_done.items()},
        }
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if not changed:
            return record, []
        if data.reason is None:
            raise InputError(
                "a change to saved data needs a reason",
                field="reason",
                expected=f"why {', '.join(changed)} changed (21 CFR 11.10(e))",
            )
        record.version += 1
        for name in changed:
            session.add(
                FormChange(
                    record_id=record.id,
                    version=record.version,
                    field=name,
                    old=_shown(old.get(name)),
                    new=_shown(new.get(name)),
                    reason=data.reason,
                    changed_by=actor.username,
                    changed_at=now,
                )
            )
        old_derived = dict(record.derived)
        record.values = checked.values
        record.entered = checked.entered
        record.derived = checked.derived
        record.not_done = checked.not_done
        record.visit_date = data.visit_date
        record.study_day = day
        record.updated_by = actor.username
        record.updated_at = now
        session.flush()
        audit.append(
            session,
            actor,
            "update",
            "form_record",
            record.id,
            old={k: old.get(k) for k in changed} | {"derived": old_derived},
            new={k: new.get(k) for k in changed}
            | {"derived": checked.derived, "reason": data.reason, "version": record.version},
        )
    opened = [
        raise_query_on(session, audit.Actor("edit check", "system"), record, name, message)
        for name, message in checked.warnings
        if not _open_query_exists(session, record.id, name, message)
    ]
    return record, opened


def _open_query_exists(session: Session, record_id: int, field_name: str, text: str) -> bool:
    return (
        session.scalars(
            select(DataQuery.id).where(
                DataQuery.record_id == record_id,
                DataQuery.field == field_name,
                DataQuery.text == text,
                DataQuery.state != "closed",
            )
        ).first()
        is not None
    )


def raise_query_on(
    session: Session, actor: Actor, record: FormRecord, field_name: str, text: str
) -> DataQuery:
    now = utcnow()
    query = DataQuery(
        record_id=record.id,
        field=field_name,
        state="open",
        text=text,
        raised_by=actor.username,
        raised_at=now,
        messages=[
            {"by": actor.username, "role": actor.role, "action": "raise", "text": text, "at": now.isoformat()}
        ],
    )
    session.add(query)
    session.flush()
    audit.append(
        session,
        actor,
        "create",
        "data_query",
        query.id,
        new={
            "record": record.id,
            "visit": record.visit_id,
            "form": record.form_id,
            "field": field_name,
            "text": text,
            "state": "open",
        },
    )
    return query


def content_sha256(records: list[FormRecord]) -> str:
    """What a signature signs: the visit's forms' values (sorted, canonical JSON)."""
    payload = {r.form_id: _content(r) for r in sorted(records, key=lambda r: r.form_id)}
    return hashlib.sha256((audit.canonical(payload) or "").encode()).hexdigest()


def record_view(record: FormRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "visit": record.visit_id,
        "form": record.form_id,
        "study_day": record.study_day,
        "visit_date": record.visit_date.isoformat() if record.visit_date else None,
        "values": record.values,
        "entered": record.entered,
        "derived": record.derived,
        "not_done": record.not_done,
        "version": record.version,
        "updated_by": record.updated_by,
        "updated_at": as_utc(record.updated_at),
    }


def participant_records(session: Session, participant_id: int) -> list[FormRecord]:
    return list(
        session.scalars(
            select(FormRecord).where(FormRecord.participant_id == participant_id).order_by(FormRecord.id)
        )
    )


def record_by_id(session: Session, trial: Trial, record_id: int, actor: Actor | None = None) -> FormRecord:
    record = session.get(FormRecord, record_id)
    if record is None:
        raise NotFound(f"form record {record_id} not found", field="record_id")
    participant_by_id(session, trial, record.participant_id, actor)
    return record


def history(session: Session, actor: Actor, trial_id: int, record_id: int) -> list[dict[str, Any]]:
    """Every change of a form record: field, old, new, reason, who and when."""
    trial = trial_by_id(session, trial_id)
    record = record_by_id(session, trial, record_id, actor)
    rows = session.scalars(
        select(FormChange).where(FormChange.record_id == record.id).order_by(FormChange.id)
    )
    return [
        {
            "version": c.version,
            "field": c.field,
            "old": None if c.old is None else json.loads(c.old),
            "new": None if c.new is None else json.loads(c.new),
            "reason": c.reason,
            "changed_by": c.changed_by,
            "changed_at": as_utc(c.changed_at),
        }
        for c in rows
    ]


def signatures_of(session: Session, participant_id: int) -> list[Signature]:
    return list(
        session.scalars(
            select(Signature).where(Signature.participant_id == participant_id).order_by(Signature.id)
        )
    )
