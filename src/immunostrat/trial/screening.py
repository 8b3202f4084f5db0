"""Screening: participants, the eligibility decision from the trial's rules, the screening log,
re-screening and withdrawal."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from immunostrat.errors import InputError
from immunostrat.trial import audit, eligibility
from immunostrat.trial.audit import Actor
from immunostrat.trial.definition import SCREENING_VISIT, EligibilityDef, holds
from immunostrat.trial.errors import Conflict, Forbidden, NotFound
from immunostrat.trial.models import (
    Allocation,
    EligibilityDecision,
    FormRecord,
    Participant,
    ScreeningObservation,
    Site,
    Trial,
    as_utc,
    utcnow,
)
from immunostrat.trial.schemas import RescreenIn, ScreeningIn
from immunostrat.trial.setup import site_by_code, trial_by_id

# --------------------------------------------------------------------------------------------
# participants and screening


def participant_by_id(
    session: Session, trial: Trial, participant_id: int, actor: Actor | None = None
) -> Participant:
    return check_participant(trial, session.get(Participant, participant_id), participant_id, actor)


def check_participant(
    trial: Trial, p: Participant | None, participant_id: int, actor: Actor | None = None
) -> Participant:
    """The participant found for ``participant_id``: NotFound unless it is in the trial, Forbidden
    for an investigator of another site."""
    if p is None or p.trial_id != trial.id:
        raise NotFound(
            f"participant {participant_id} not found in trial {trial.code}", field="participant_id"
        )
    if actor is not None and actor.role == "investigator" and actor.site_id not in (None, p.site_id):
        raise Forbidden("participant belongs to another site", field="participant_id")
    return p


def _next_pseudonym(session: Session, trial: Trial, site: Site) -> str:
    """The site's next free ``<site>-<nnnn>``. The site row is locked first (FOR NO KEY UPDATE on
    PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers) so that two screenings at the
    same site cannot both count the same number; the lock is held until the participant is written."""
    session.scalars(select(Site.id).where(Site.id == site.id).with_for_update(key_share=True)).one()
    n = session.scalar(
        select(func.count())
        .select_from(Participant)
        .where(Participant.trial_id == trial.id, Participant.site_id == site.id)
    )
    candidate = int(n or 0) + 1
    while True:
        name = f"{site.code}-{candidate:04d}"
        taken = session.scalars(
            select(Participant.id).where(Participant.trial_id == trial.id, Participant.pseudonym == name)
        ).first()
        if taken is None:
            return name
        candidate += 1


@dataclass
class ScreeningResult:
    participant_id: int
    pseudonym: str
    site: str
    eligible: bool
    endotype: str
    therapy: str
    dose: str | None
    reasons: list[dict[str, Any]]
    exclusion_reason: str | None
    protocol_id: str
    protocol_version: str
    warnings: list[str] = field(default_factory=list)
    sepsis3: dict[str, Any] | None = None
    """The Sepsis-3 check (SOFA total, components, verdict) when the trial requires it, else None."""
    replayed: bool = False
    """True when an earlier screening with the same Idempotency-Key is returned (nothing written)."""


@dataclass(frozen=True)
class ScreeningRules:
    """What a trial's screening decision depends on (fixed at set-up)."""

    protocol_id: str
    randomized_endotypes: tuple[str, ...]
    require_sepsis3: bool
    eligibility_json: str = "{}"
    strata_from: str = "protocol"
    definition_json: str | None = None


def screening_rules(trial: Trial) -> ScreeningRules:
    cfg = trial.config
    definition = cfg.get("definition")
    return ScreeningRules(
        trial.protocol_id,
        tuple(cfg["randomized_endotypes"]),
        # trials set up before the option existed have no key: they never required it
        bool(cfg.get("require_sepsis3", False)),
        json.dumps(cfg.get("eligibility") or {}, sort_keys=True),
        str(cfg.get("strata_from", "protocol")),
        json.dumps(definition, sort_keys=True) if definition else None,
    )


@dataclass(frozen=True)
class ScreeningWork:
    """The observations converted and the protocol's decision, worked out before the write
    transaction (on SQLite every write transaction holds the database's one write lock)."""

    rules: ScreeningRules
    observations: list[eligibility.CanonicalObservation]
    decision: eligibility.EligibilityResult
    form_values: dict[str, Any] = field(default_factory=dict)
    form_entered: dict[str, Any] = field(default_factory=dict)
    form_id: str | None = None


def _trial_criteria(rules: ScreeningRules, age: float, sex: str, known: dict[str, Any]) -> list[str]:
    """The trial's own eligibility (age, sex, criteria on screening-form fields) that fails."""
    rule = EligibilityDef.model_validate(json.loads(rules.eligibility_json))
    failed: list[str] = []
    if age < rule.min_age:
        failed.append(f"age {age:g} below the minimum {rule.min_age:g}")
    if rule.max_age is not None and age > rule.max_age:
        failed.append(f"age {age:g} above the maximum {rule.max_age:g}")
    if sex not in rule.sexes:
        failed.append(f"sex {sex}: the trial enrols {', '.join(rule.sexes)}")
    for c in rule.criteria:
        value = known.get(c.field)
        if value is None:
            failed.append(f"{c.text}: {c.field} not recorded")
        else:
            if not holds(value, c.op, c.value):
                failed.append(f"{c.text}: {c.field} {value} (needs {c.op} {c.value})")
    return failed


def decide_screening(
    rules: ScreeningRules,
    patient: dict[str, Any],
    obs: list[eligibility.CanonicalObservation],
    exclusions: dict[str, bool],
    infection_suspected: bool | None,
    pre_infection_sofa: int | None,
    form: dict[str, Any],
) -> ScreeningWork:
    """The eligibility decision from the trial's rules: the protocol's (when the trial has one),
    Sepsis-3 when required, then age, sex and the criteria on the screening form."""
    values: dict[str, Any] = {}
    entered: dict[str, Any] = {}
    spec = None
    if rules.definition_json is not None:
        from immunostrat.trial.forms import check_form, trial_spec_from_json

        spec = trial_spec_from_json(rules.definition_json)
    if spec is not None and spec.screening_form is not None:
        checked = check_form(spec, spec.screening_form, form, {}, patient.get("weight_kg"))
        values, entered = {**checked.values, **checked.derived}, checked.entered
    elif form:
        raise InputError("this trial has no screening form", field="form", value=sorted(form)[0])
    if rules.protocol_id:
        decision = eligibility.decide(
            rules.protocol_id,
            patient,
            obs,
            exclusions,
            list(rules.randomized_endotypes),
            require_sepsis3=rules.require_sepsis3,
            infection_suspected=infection_suspected,
            pre_infection_sofa=pre_infection_sofa,
        )
    else:
        decision = eligibility.decide_without_protocol(
            patient,
            obs,
            exclusions,
            require_sepsis3=rules.require_sepsis3,
            infection_suspected=infection_suspected,
            pre_infection_sofa=pre_infection_sofa,
        )
    if rules.strata_from == "field" and spec is not None and spec.strata_field is not None:
        stratum = str(values.get(spec.strata_field) or "unknown")
        c = replace(decision.classification, endotype=stratum)
        eligible, reason = decision.eligible, decision.exclusion_reason
        if eligible and stratum not in rules.randomized_endotypes:
            eligible, reason = False, f"stratum {stratum}: not a randomized stratum"
        decision = replace(decision, classification=c, eligible=eligible, exclusion_reason=reason)
    failed = _trial_criteria(rules, float(patient["age"]), str(patient["sex"]), values)
    if failed:
        reason = "; ".join(failed)
        if decision.exclusion_reason:
            reason = f"{reason}; {decision.exclusion_reason}"
        decision = replace(decision, eligible=False, exclusion_reason=reason)
    return ScreeningWork(rules, obs, decision, values, entered, spec.screening_form if spec else None)


def evaluate_screening(rules: ScreeningRules, data: ScreeningIn) -> ScreeningWork:
    """Convert the observations and decide eligibility: no database, no participant yet."""
    label = data.pseudonym or "screening"  # the observations' patient label; nothing keeps it
    obs = eligibility.canonical_observations(
        label, [o.model_dump() for o in data.observations], data.weight_kg, source="observations"
    )
    patient = {"patient_id": label, "age": data.age, "sex": data.sex, "weight_kg": data.weight_kg}
    return decide_screening(
        rules,
        patient,
        obs,
        dict(data.exclusions),
        data.infection_suspected,
        data.pre_infection_sofa,
        dict(data.form),
    )


def _screening_sha256(data: ScreeningIn) -> str:
    return hashlib.sha256((audit.canonical(data.model_dump(mode="json")) or "").encode()).hexdigest()


def _replayed_screening(session: Session, trial: Trial, p: Participant) -> ScreeningResult:
    """The answer first given for participant ``p``, rebuilt from what was stored."""
    d = latest_decision(session, p.id)
    assert d is not None  # written with the participant
    sepsis3 = next((r for r in d.reasons if r.get("rule") == "sepsis3"), None)
    exclusion = next((r.get("text") for r in d.reasons if r.get("rule") == "eligibility"), None)
    return ScreeningResult(
        participant_id=p.id,
        pseudonym=p.pseudonym,
        site=p.site.code,
        eligible=d.eligible,
        endotype=d.endotype,
        therapy=d.therapy,
        dose=d.dose,
        reasons=list(d.reasons),
        exclusion_reason=exclusion,
        protocol_id=d.protocol_id,
        protocol_version=d.protocol_version,
        sepsis3={k: v for k, v in sepsis3.items() if k != "rule"} if sepsis3 else None,
        replayed=True,
    )


def screen(
    session: Session,
    actor: Actor,
    trial_id: int,
    data: ScreeningIn,
    work: ScreeningWork | None = None,
    idempotency_key: str | None = None,
) -> ScreeningResult:
    """Register a pseudonymised participant, store the screening observations (as entered and
    canonical) and the protocol's eligibility decision with its reasons. ``work`` from
    :func:`evaluate_screening` (done before the transaction) is used when the trial's rules match.

    A retry with the same ``idempotency_key`` and the same body returns the first answer
    (``replayed``); the same key with another body is a conflict."""
    check_idempotency_key(idempotency_key)
    trial = trial_by_id(session, trial_id)
    fingerprint = _screening_sha256(data)
    if idempotency_key is not None:
        prior = session.scalars(
            select(Participant).where(
                Participant.trial_id == trial.id, Participant.idempotency_key == idempotency_key
            )
        ).one_or_none()
        if prior is not None:
            if prior.request_sha256 != fingerprint:
                raise Conflict("idempotency key already used for another screening", field="Idempotency-Key")
            return _replayed_screening(session, trial, participant_by_id(session, trial, prior.id, actor))
    require_open(trial)
    site = site_by_code(session, trial, data.site)
    if actor.role == "investigator" and actor.site_id not in (None, site.id):
        raise Forbidden("investigators screen at their own site only", field="site")
    if data.pseudonym is not None:
        taken = session.scalars(
            select(Participant.id).where(
                Participant.trial_id == trial.id, Participant.pseudonym == data.pseudonym
            )
        ).first()
        if taken is not None:
            raise Conflict(f"pseudonym {data.pseudonym!r} exists", field="pseudonym")
    rules = screening_rules(trial)
    if work is None or work.rules != rules:
        work = evaluate_screening(rules, data)
    obs, decision = work.observations, work.decision
    pseudonym = data.pseudonym or _next_pseudonym(session, trial, site)
    c = decision.classification
    sepsis3 = decision.sepsis3.as_dict() if decision.sepsis3 is not None else None
    p = Participant(
        trial_id=trial.id,
        site_id=site.id,
        pseudonym=pseudonym,
        age=data.age,
        sex=data.sex,
        weight_kg=data.weight_kg,
        infection_site=data.infection_site,
        baseline_sofa=data.baseline_sofa,
        septic_shock=data.septic_shock,
        exclusions=dict(data.exclusions),
        status="eligible" if decision.eligible else "ineligible",
        data_removed=False,
        created_by=actor.username,
        created_at=utcnow(),
        idempotency_key=idempotency_key,
        request_sha256=fingerprint if idempotency_key is not None else None,
    )
    session.add(p)
    session.flush()
    now = utcnow()
    reasons = _store_screening(session, actor, trial, p, work, obs, now)
    session.flush()
    entered: dict[str, Any] = {
        "pseudonym": pseudonym,
        "site": site.code,
        "age": data.age,
        "sex": data.sex,
        "weight_kg": data.weight_kg,
        "exclusions": dict(data.exclusions),
        "observations": [
            {"concept": o.concept, "value": o.value_entered, "unit": o.unit_entered, "time": o.time}
            for o in obs
        ],
        "endotype": c.endotype,
        "eligible": decision.eligible,
    }
    # no participant column holds these: the audit row is where what was entered is kept
    for name in ("infection_suspected", "pre_infection_sofa"):
        if getattr(data, name) is not None:
            entered[name] = getattr(data, name)
    if sepsis3 is not None:
        entered["sepsis3"] = sepsis3
    if work.form_id is not None:
        entered["form"] = {"id": work.form_id, **work.form_entered}
    if decision.exclusion_reason:
        entered["exclusion_reason"] = decision.exclusion_reason
    audit.append(session, actor, "create", "participant", p.id, new=entered)
    return _screening_result(trial, p, site.code, work, reasons)


def latest_decision(session: Session, participant_id: int) -> EligibilityDecision | None:
    return session.scalars(
        select(EligibilityDecision)
        .where(EligibilityDecision.participant_id == participant_id)
        .order_by(EligibilityDecision.id.desc())
    ).first()


def participant_view(session: Session, p: Participant) -> dict[str, Any]:
    d = latest_decision(session, p.id)
    alloc = session.scalars(select(Allocation).where(Allocation.participant_id == p.id)).one_or_none()
    return {
        "id": p.id,
        "pseudonym": p.pseudonym,
        "site": p.site.code,
        "age": p.age,
        "sex": p.sex,
        "weight_kg": p.weight_kg,
        "status": p.status,
        "endotype": d.endotype if d else None,
        "eligible": d.eligible if d else None,
        "therapy_if_active": d.therapy if d else None,
        "reasons": d.reasons if d else [],
        "kit_number": alloc.kit.kit_number if alloc else None,
        "created_at": as_utc(p.created_at),
    }


def list_participants(session: Session, actor: Actor, trial_id: int) -> list[Participant]:
    trial = trial_by_id(session, trial_id)
    stmt = select(Participant).where(Participant.trial_id == trial.id).order_by(Participant.id)
    if actor.role == "investigator" and actor.site_id is not None:
        stmt = stmt.where(Participant.site_id == actor.site_id)
    return list(session.scalars(stmt))


def withdraw(
    session: Session, actor: Actor, trial_id: int, participant_id: int, reason: str, removed: bool
) -> None:
    trial = trial_by_id(session, trial_id)
    p = participant_by_id(session, trial, participant_id, actor)
    old = {"status": p.status, "data_removed": p.data_removed}
    p.status = "withdrawn"
    p.withdrawal_reason = reason
    p.data_removed = removed
    audit.append(
        session,
        actor,
        "update",
        "participant",
        p.id,
        old=old,
        new={"status": "withdrawn", "withdrawal_reason": reason, "data_removed": removed},
    )


def check_idempotency_key(key: str | None) -> None:
    """One rule for the ``Idempotency-Key`` of screening and allocation."""
    if key is not None and not (1 <= len(key) <= 128):
        raise InputError("idempotency key must be 1-128 characters", field="Idempotency-Key")


def require_open(trial: Trial) -> None:
    if trial.status != "open":
        raise Conflict(f"trial {trial.code} is {trial.status}: no more data entry", field="trial_id")


def _store_screening(
    session: Session,
    actor: Actor,
    trial: Trial,
    p: Participant,
    work: ScreeningWork,
    new_observations: list[eligibility.CanonicalObservation],
    now: Any,
) -> list[dict[str, Any]]:
    """Write a screening's new observations (as entered and canonical), its screening form and the
    decision with its reasons (the protocol's, Sepsis-3's and the exclusion); the reasons back."""
    session.add_all(
        ScreeningObservation(
            participant_id=p.id,
            concept=o.concept,
            value_entered=o.value_entered,
            unit_entered=o.unit_entered,
            value=o.value,
            unit=o.unit,
            time=o.time,
            entered_by=actor.username,
            entered_at=now,
        )
        for o in new_observations
    )
    if work.form_id is not None:
        _save_screening_form(session, p, work, actor.username, now)
    decision = work.decision
    c = decision.classification
    reasons = list(c.reasons)
    if decision.sepsis3 is not None:
        reasons.append({"rule": "sepsis3", **decision.sepsis3.as_dict()})
    if decision.exclusion_reason:
        reasons.append({"rule": "eligibility", "text": decision.exclusion_reason})
    session.add(
        EligibilityDecision(
            participant_id=p.id,
            protocol_id=c.protocol_id or trial.protocol_id,
            protocol_version=c.protocol_version or trial.protocol_version,
            endotype=c.endotype,
            therapy=c.therapy,
            dose=c.dose,
            eligible=decision.eligible,
            reasons=reasons,
            decided_by=actor.username,
            decided_at=now,
        )
    )
    return reasons


def _screening_result(
    trial: Trial, p: Participant, site_code: str, work: ScreeningWork, reasons: list[dict[str, Any]]
) -> ScreeningResult:
    decision = work.decision
    c = decision.classification
    return ScreeningResult(
        participant_id=p.id,
        pseudonym=p.pseudonym,
        site=site_code,
        eligible=decision.eligible,
        endotype=c.endotype,
        therapy=c.therapy,
        dose=c.dose,
        reasons=reasons,
        exclusion_reason=decision.exclusion_reason,
        protocol_id=c.protocol_id or trial.protocol_id,
        protocol_version=c.protocol_version or trial.protocol_version,
        warnings=c.warnings,
        sepsis3=decision.sepsis3.as_dict() if decision.sepsis3 is not None else None,
    )


def _save_screening_form(
    session: Session, p: Participant, work: ScreeningWork, username: str, now: Any
) -> None:
    """The screening form's values, kept with the participant (visit ``screening``)."""
    assert work.form_id is not None
    record = session.scalars(
        select(FormRecord).where(
            FormRecord.participant_id == p.id,
            FormRecord.visit_id == SCREENING_VISIT,
            FormRecord.form_id == work.form_id,
        )
    ).one_or_none()
    if record is None:
        record = FormRecord(
            participant_id=p.id,
            visit_id=SCREENING_VISIT,
            form_id=work.form_id,
            study_day=None,
            visit_date=now.date(),
            values={},
            entered={},
            derived={},
            not_done={},
            version=0,
            created_by=username,
            created_at=now,
            updated_by=username,
            updated_at=now,
        )
        session.add(record)
    record.values = dict(work.form_values)
    record.entered = dict(work.form_entered)
    record.version += 1
    record.updated_by = username
    record.updated_at = now
    session.flush()


def _stored_observations(session: Session, participant_id: int) -> list[eligibility.CanonicalObservation]:
    rows = session.scalars(
        select(ScreeningObservation)
        .where(ScreeningObservation.participant_id == participant_id)
        .order_by(ScreeningObservation.id)
    )
    return [
        eligibility.CanonicalObservation(
            concept=o.concept,
            value_entered=o.value_entered,
            unit_entered=o.unit_entered,
            value=o.value,
            unit=o.unit,
            time=as_utc(o.time) or o.time,
        )
        for o in rows
    ]


def rescreen(
    session: Session, actor: Actor, trial_id: int, participant_id: int, data: RescreenIn
) -> ScreeningResult:
    """A new eligibility decision for a participant screened before and not eligible then (a value
    was missing: "not assessable", or the state has changed): same pseudonym, the earlier screening
    observations plus the new ones, a new decision stored beside the first (both stay)."""
    trial = trial_by_id(session, trial_id)
    require_open(trial)
    p = participant_by_id(session, trial, participant_id, actor)
    if p.status != "ineligible":
        raise Conflict(
            f"participant {p.pseudonym} is {p.status}: only a patient found not eligible is re-screened",
            field="participant_id",
        )
    new_obs = eligibility.canonical_observations(
        p.pseudonym, [o.model_dump() for o in data.observations], p.weight_kg, source="observations"
    )
    obs = _stored_observations(session, p.id) + new_obs
    previous = session.scalars(
        select(FormRecord).where(FormRecord.participant_id == p.id, FormRecord.visit_id == SCREENING_VISIT)
    ).first()
    form = {**(previous.entered if previous is not None else {}), **data.form}
    exclusions = {**(p.exclusions or {}), **data.exclusions}
    patient = {"patient_id": p.pseudonym, "age": p.age, "sex": p.sex, "weight_kg": p.weight_kg}
    rules = screening_rules(trial)
    work = decide_screening(
        rules, patient, obs, exclusions, data.infection_suspected, data.pre_infection_sofa, form
    )
    decision = work.decision
    c = decision.classification
    now = utcnow()
    reasons = _store_screening(session, actor, trial, p, work, new_obs, now)
    old = {"status": p.status, "exclusions": p.exclusions}
    p.status = "eligible" if decision.eligible else "ineligible"
    p.exclusions = exclusions
    session.flush()
    audit.append(
        session,
        actor,
        "rescreen",
        "participant",
        p.id,
        old=old,
        new={
            "status": p.status,
            "reason": data.reason,
            "endotype": c.endotype,
            "eligible": decision.eligible,
            "exclusion_reason": decision.exclusion_reason,
            "exclusions": exclusions,
            "observations": [
                {"concept": o.concept, "value": o.value_entered, "unit": o.unit_entered, "time": o.time}
                for o in new_obs
            ],
        },
    )
    return _screening_result(trial, p, p.site.code, work, reasons)


def screening_log(session: Session, actor: Actor, trial_id: int) -> list[dict[str, Any]]:
    """Everyone screened, the ineligible included, with the latest decision and how many decisions
    (re-screenings) there were: the top of the CONSORT diagram."""
    trial = trial_by_id(session, trial_id)
    rows = []
    for p in list_participants(session, actor, trial.id):
        decisions = list(
            session.scalars(
                select(EligibilityDecision)
                .where(EligibilityDecision.participant_id == p.id)
                .order_by(EligibilityDecision.id)
            )
        )
        last = decisions[-1] if decisions else None
        reason = next(
            (r.get("text") for r in (last.reasons if last else []) if r.get("rule") == "eligibility"), None
        )
        rows.append(
            {
                "participant_id": p.id,
                "pseudonym": p.pseudonym,
                "site": p.site.code,
                "age": p.age,
                "sex": p.sex,
                "screened_at": as_utc(p.created_at),
                "status": p.status,
                "eligible": last.eligible if last else None,
                "stratum": last.endotype if last else None,
                "exclusion_reason": reason,
                "decisions": len(decisions),
            }
        )
    return rows
