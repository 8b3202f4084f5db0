"""Data management over the saved forms: queries on a field (a monitor raises one, the site answers,
the monitor closes it), investigators' electronic signatures of a visit (re-authentication, the
meaning of the signature, audited: 21 CFR 11.50, 11.70, 11.200), and the visit report (done, due,
overdue and partial visits from the schedule), all per participant and per trial.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from immunostrat.errors import InputError
from immunostrat.trial import audit
from immunostrat.trial.audit import Actor
from immunostrat.trial.errors import Conflict, Forbidden, NotFound
from immunostrat.trial.forms import (
    content_sha256,
    participant_records,
    raise_query_on,
    randomization_date,
    record_view,
    signatures_of,
    trial_definition,
    visit_dates,
)
from immunostrat.trial.models import (
    DataQuery,
    FormRecord,
    Participant,
    Signature,
    Trial,
    User,
    as_utc,
    utcnow,
)
from immunostrat.trial.schemas import QueryIn
from immunostrat.trial.screening import participant_by_id
from immunostrat.trial.setup import trial_by_id
from immunostrat.trial.users import password_matches

QUERY_RAISERS = frozenset({"monitor", "statistician"})
QUERY_ANSWERERS = frozenset({"investigator"})


def _record(session: Session, p: Participant, visit_id: str, form_id: str) -> FormRecord:
    record = session.scalars(
        select(FormRecord).where(
            FormRecord.participant_id == p.id, FormRecord.visit_id == visit_id, FormRecord.form_id == form_id
        )
    ).one_or_none()
    if record is None:
        raise NotFound(f"no form {form_id} saved at visit {visit_id} for {p.pseudonym}", field="form")
    return record


def raise_query(
    session: Session, actor: Actor, trial_id: int, participant_id: int, data: QueryIn
) -> DataQuery:
    if actor.role not in QUERY_RAISERS:
        raise Forbidden("queries are raised by monitors and data managers")
    trial = trial_by_id(session, trial_id)
    spec = trial_definition(trial)
    p = participant_by_id(session, trial, participant_id, actor)
    record = _record(session, p, data.visit, data.form)
    form = spec.forms[record.form_id]
    known = {f.name for f in form.fields} | set(record.derived) | {"visit_date"}
    if data.field not in known:
        raise InputError("unknown field", field="field", value=data.field, expected=", ".join(sorted(known)))
    return raise_query_on(session, actor, record, data.field, data.text)


def _query(session: Session, trial: Trial, query_id: int, actor: Actor) -> tuple[DataQuery, FormRecord]:
    query = session.get(DataQuery, query_id)
    if query is None:
        raise NotFound(f"query {query_id} not found", field="query_id")
    record = session.get(FormRecord, query.record_id)
    assert record is not None
    participant_by_id(session, trial, record.participant_id, actor)
    return query, record


def _act(session: Session, actor: Actor, query: DataQuery, action: str, text: str, state: str) -> DataQuery:
    old = query.state
    query.state = state
    query.messages = [
        *query.messages,
        {
            "by": actor.username,
            "role": actor.role,
            "action": action,
            "text": text,
            "at": utcnow().isoformat(),
        },
    ]
    session.flush()
    audit.append(
        session,
        actor,
        "update",
        "data_query",
        query.id,
        old={"state": old},
        new={"state": state, "action": action, "text": text},
    )
    return query


def answer_query(session: Session, actor: Actor, trial_id: int, query_id: int, text: str) -> DataQuery:
    """The site's answer (the data may have been corrected with a reason meanwhile)."""
    if actor.role not in QUERY_ANSWERERS:
        raise Forbidden("queries are answered by the site's investigators")
    trial = trial_by_id(session, trial_id)
    query, _ = _query(session, trial, query_id, actor)
    if query.state == "closed":
        raise Conflict(f"query {query.id} is closed", field="query_id")
    return _act(session, actor, query, "answer", text, "answered")


def close_query(session: Session, actor: Actor, trial_id: int, query_id: int, text: str) -> DataQuery:
    if actor.role not in QUERY_RAISERS:
        raise Forbidden("queries are closed by monitors and data managers")
    trial = trial_by_id(session, trial_id)
    query, _ = _query(session, trial, query_id, actor)
    if query.state == "closed":
        raise Conflict(f"query {query.id} is already closed", field="query_id")
    return _act(session, actor, query, "close", text, "closed")


def reopen_query(session: Session, actor: Actor, trial_id: int, query_id: int, text: str) -> DataQuery:
    """The monitor is not satisfied with the answer: the query goes back to the site."""
    if actor.role not in QUERY_RAISERS:
        raise Forbidden("queries are re-raised by monitors and data managers")
    trial = trial_by_id(session, trial_id)
    query, _ = _query(session, trial, query_id, actor)
    if query.state != "answered":
        raise Conflict(
            f"query {query.id} is {query.state}: only an answered query is re-raised", field="query_id"
        )
    return _act(session, actor, query, "re-raise", text, "open")


def query_view(
    query: DataQuery, record: FormRecord | None = None, pseudonym: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": query.id,
        "record_id": query.record_id,
        "field": query.field,
        "state": query.state,
        "text": query.text,
        "raised_by": query.raised_by,
        "raised_at": as_utc(query.raised_at),
        "messages": query.messages,
    }
    if record is not None:
        out["visit"] = record.visit_id
        out["form"] = record.form_id
    if pseudonym is not None:
        out["pseudonym"] = pseudonym
    return out


def list_queries(
    session: Session, actor: Actor, trial_id: int, state: str | None = None
) -> list[dict[str, Any]]:
    trial = trial_by_id(session, trial_id)
    stmt = (
        select(DataQuery, FormRecord, Participant.pseudonym)
        .join(FormRecord, FormRecord.id == DataQuery.record_id)
        .join(Participant, Participant.id == FormRecord.participant_id)
        .where(Participant.trial_id == trial.id)
        .order_by(DataQuery.id)
    )
    if state is not None:
        stmt = stmt.where(DataQuery.state == state)
    if actor.role == "investigator" and actor.site_id is not None:
        stmt = stmt.where(Participant.site_id == actor.site_id)
    return [query_view(q, r, pseudonym) for q, r, pseudonym in session.execute(stmt)]


# ---------------------------------------------------------------------------------- signatures


def sign_visit(
    session: Session,
    actor: Actor,
    trial_id: int,
    participant_id: int,
    visit_id: str,
    password: str,
    meaning: str,
) -> Signature:
    """An investigator signs every form of a visit: the password is asked again, the meaning must be
    the trial's signature meaning, and the signature binds the SHA-256 of the signed values."""
    if actor.role != "investigator":
        raise Forbidden("visits are signed by investigators")
    trial = trial_by_id(session, trial_id)
    spec = trial_definition(trial)
    p = participant_by_id(session, trial, participant_id, actor)
    visit = spec.visit(visit_id)
    if visit is None:
        raise InputError("unknown visit", field="visit", value=visit_id)
    user = session.get(User, actor.user_id) if actor.user_id is not None else None
    if not password_matches(user, password):
        raise Forbidden(
            "the password does not match: a signature needs the signer's own password", field="password"
        )
    assert user is not None
    if " ".join(meaning.split()) != " ".join(spec.signature_meaning.split()):
        raise InputError(
            "the meaning of the signature differs",
            field="meaning",
            value=meaning,
            expected=spec.signature_meaning,
        )
    records = [r for r in participant_records(session, p.id) if r.visit_id == visit.id]
    missing = [f for f in visit.forms if f not in {r.form_id for r in records}]
    if missing:
        raise Conflict(
            f"visit {visit.id} lacks form(s) {', '.join(missing)}: nothing to sign yet", field="visit"
        )
    signature = Signature(
        participant_id=p.id,
        visit_id=visit.id,
        username=user.username,
        full_name=user.username,
        role=user.role,
        meaning=spec.signature_meaning,
        content_sha256=content_sha256(records),
        signed_at=utcnow(),
    )
    session.add(signature)
    session.flush()
    audit.append(
        session,
        actor,
        "sign",
        "visit",
        signature.id,
        new={
            "participant": p.pseudonym,
            "visit": visit.id,
            "meaning": signature.meaning,
            "content_sha256": signature.content_sha256,
        },
    )
    return signature


def signature_state(signature: Signature, records: list[FormRecord]) -> str:
    """``valid`` while the visit's values are those signed, else ``void`` (changed after signing)."""
    current = content_sha256([r for r in records if r.visit_id == signature.visit_id])
    return "valid" if current == signature.content_sha256 else "void"


# ---------------------------------------------------------------------------------- reports


def casebook(session: Session, actor: Actor, trial_id: int, participant_id: int) -> dict[str, Any]:
    """A participant's visits as scheduled: forms saved, open queries and the signature of each."""
    trial = trial_by_id(session, trial_id)
    spec = trial_definition(trial)
    p = participant_by_id(session, trial, participant_id, actor)
    records = participant_records(session, p.id)
    queries = (
        list(
            session.scalars(
                select(DataQuery)
                .where(DataQuery.record_id.in_([r.id for r in records]))
                .order_by(DataQuery.id)
            )
        )
        if records
        else []
    )
    by_record = {r.id: r for r in records}
    signatures = signatures_of(session, p.id)
    visits = []
    for visit in spec.schedule():
        mine = [r for r in records if r.visit_id == visit.id]
        signed = [s for s in signatures if s.visit_id == visit.id]
        last = signed[-1] if signed else None
        visits.append(
            {
                "visit": visit.id,
                "label": visit.label,
                "day": visit.day,
                "forms": {
                    f: next((record_view(r) for r in mine if r.form_id == f), None) for f in visit.forms
                },
                "queries": [
                    query_view(q, by_record[q.record_id])
                    for q in queries
                    if by_record[q.record_id].visit_id == visit.id
                ],
                "signature": None
                if last is None
                else {
                    "by": last.username,
                    "at": as_utc(last.signed_at),
                    "meaning": last.meaning,
                    "state": signature_state(last, records),
                },
            }
        )
    return {"participant_id": p.id, "pseudonym": p.pseudonym, "status": p.status, "visits": visits}


def visit_report(session: Session, actor: Actor, trial_id: int, today: date | None = None) -> dict[str, Any]:
    """Every randomized participant's scheduled visits with their state: ``done`` (every form saved),
    ``partial``, ``overdue`` (window closed, forms missing), ``due`` (window open) or ``upcoming``."""
    trial = trial_by_id(session, trial_id)
    spec = trial_definition(trial)
    today = today or utcnow().date()
    stmt = (
        select(Participant)
        .where(Participant.trial_id == trial.id, Participant.status.in_(("randomized", "withdrawn")))
        .order_by(Participant.id)
    )
    if actor.role == "investigator" and actor.site_id is not None:
        stmt = stmt.where(Participant.site_id == actor.site_id)
    rows: list[dict[str, Any]] = []
    counts = {"done": 0, "partial": 0, "overdue": 0, "due": 0, "upcoming": 0}
    for p in session.scalars(stmt):
        if p.status == "withdrawn" or p.data_removed:
            continue
        randomized_on = randomization_date(session, p)
        if randomized_on is None:
            continue
        saved = {(r.visit_id, r.form_id) for r in participant_records(session, p.id)}
        for visit in spec.schedule():
            first, last = visit_dates(spec, visit, randomized_on)
            have = [f for f in visit.forms if (visit.id, f) in saved]
            if len(have) == len(visit.forms):
                state = "done"
            elif last < today:
                state = "overdue"
            elif have:
                state = "partial"
            elif first <= today:
                state = "due"
            else:
                state = "upcoming"
            counts[state] += 1
            if state != "done":
                rows.append(
                    {
                        "pseudonym": p.pseudonym,
                        "participant_id": p.id,
                        "visit": visit.id,
                        "day": visit.day,
                        "window_start": first.isoformat(),
                        "window_end": last.isoformat(),
                        "state": state,
                        "missing_forms": [f for f in visit.forms if f not in have],
                    }
                )
    return {"trial": trial.code, "as_of": today.isoformat(), "counts": counts, "visits": rows}
