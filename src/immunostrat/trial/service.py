"""Trial operations: set-up, users, screening, randomization, data capture, unblinding.

Every function takes an open :class:`~sqlalchemy.orm.Session` (one transaction; the caller commits)
and the :class:`~immunostrat.trial.audit.Actor` doing it. Every create and update, and every view of
unblinded data, appends an audit row in the same transaction. Arms leave this module only for
unblinded roles (:data:`~immunostrat.trial.schemas.UNBLINDED_ROLES`) and through emergency
unblinding; everyone else gets kit numbers.

Concurrency: randomization locks the trial row (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite
the whole write transaction is ``BEGIN IMMEDIATE``), then the stratum row, takes the slot at the
stratum's ``next_seq`` and advances it, all in one transaction: no slot is used twice or skipped.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from immunostrat.errors import InputError
from immunostrat.scores.sofa import SOFA_COMPONENTS
from immunostrat.trial import audit, eligibility, randomization
from immunostrat.trial.audit import Actor
from immunostrat.trial.models import (
    AdverseEvent,
    Allocation,
    Assessment,
    AuditRow,
    EligibilityDecision,
    Kit,
    Outcome,
    Participant,
    ScreeningObservation,
    ServiceSetting,
    Site,
    Stratum,
    Trial,
    UnblindingEvent,
    User,
    as_utc,
    utcnow,
)
from immunostrat.trial.passwords import burn_time, hash_password, password_problem, verify_password
from immunostrat.trial.schemas import (
    UNBLINDED_ROLES,
    AdverseEventIn,
    AssessmentIn,
    OutcomeIn,
    ScreeningIn,
    SiteSpec,
    TrialSpec,
    UserIn,
    UserUpdate,
)

SOFA_FIELDS = tuple(f"sofa_{c}" for c in SOFA_COMPONENTS)
# concept id -> assessment column (canonical units of the concept dictionary)
ASSESSMENT_BIOMARKERS = {
    "ferritin": "ferritin_ng_ml",
    "mhla_dr": "hla_dr_abc",
    "crp": "crp_mg_l",
    "procalcitonin": "procalcitonin_ng_ml",
}


class TrialError(Exception):
    """A request the trial cannot honour; ``status`` is the HTTP status an interface should use."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "field": self.field}


class NotFound(TrialError):
    status = 404


class Conflict(TrialError):
    status = 409


class Forbidden(TrialError):
    status = 403


# --------------------------------------------------------------------------------------------
# service settings


def get_or_create_setting(session: Session, key: str, make: Any) -> str:
    """A per-installation value generated once (e.g. the token signing key) and stored."""
    row = session.get(ServiceSetting, key)
    if row is None:
        row = ServiceSetting(key=key, value=str(make()))
        session.add(row)
        session.flush()
        audit.append(session, audit.SYSTEM, "create", "service_setting", key, new={"key": key})
    return row.value


# --------------------------------------------------------------------------------------------
# trials and sites


@dataclass(frozen=True)
class TrialSetup:
    trial_id: int
    code: str
    seed_hex: str
    """Handed out once: keep it in escrow; the database stores only its SHA-256 commitment."""
    n_kits: int


def trial_by_id(session: Session, trial_id: int) -> Trial:
    trial = session.get(Trial, trial_id)
    if trial is None:
        raise NotFound(f"trial {trial_id} not found", field="trial_id")
    return trial


def trial_by_code(session: Session, code: str) -> Trial:
    trial = session.scalars(select(Trial).where(Trial.code == code)).one_or_none()
    if trial is None:
        raise NotFound(f"trial {code!r} not found", field="trial")
    return trial


def _protocol_version(protocol_id: str, given: str | None) -> str:
    version = eligibility.load(protocol_id).version
    if given and given != version:
        raise InputError(
            "protocol version differs from the shipped protocol",
            field="protocol_version",
            value=given,
            expected=version,
        )
    return version


def setup_trial(session: Session, actor: Actor, spec: TrialSpec, seed: bytes | None = None) -> TrialSetup:
    """Create a trial with its sites; generate the concealed list from a fresh secret seed."""
    if session.scalars(select(Trial.id).where(Trial.code == spec.code)).first() is not None:
        raise Conflict(f"trial {spec.code!r} exists", field="code")
    seed = seed if seed is not None else secrets.token_bytes(32)
    config = {
        "randomized_endotypes": spec.randomized_endotypes,
        "ratios": {e: spec.ratio_for(e) for e in spec.randomized_endotypes},
        "block_multipliers": spec.block_multipliers,
        "slots_per_stratum": spec.slots_per_stratum,
        "minimization_factors": list(spec.minimization_factors),
        "p_best": spec.p_best,
        "kits_per_arm": spec.kits_per_arm,
        "require_sepsis3": spec.require_sepsis3,
    }
    trial = Trial(
        code=spec.code,
        title=spec.title,
        protocol_id=spec.protocol_id,
        protocol_version=_protocol_version(spec.protocol_id, spec.protocol_version),
        method=spec.method,
        arms=list(spec.arms),
        control_arm=spec.control_arm,
        config=config,
        seed_commitment=randomization.commitment(seed),
        status="open",
        created_by=actor.username,
        created_at=utcnow(),
    )
    session.add(trial)
    session.flush()
    public = {k: v for k, v in _trial_dict(trial).items() if k != "id"}
    audit.append(session, actor, "create", "trial", trial.id, new=public)
    n_kits = 0
    if trial.method == "minimization":
        n_kits += _make_kit_pool(session, trial, seed)
    for site_spec in spec.sites:
        _, made = _add_site(session, actor, trial, site_spec, seed)
        n_kits += made
    return TrialSetup(trial.id, trial.code, seed.hex(), n_kits)


def _check_seed(trial: Trial, seed: bytes) -> None:
    if randomization.commitment(seed) != trial.seed_commitment:
        raise Forbidden("the seed does not match this trial's commitment", field="seed")


def add_site(session: Session, actor: Actor, trial_id: int, spec: SiteSpec, seed_hex: str) -> Site:
    """Add a site after set-up: its lists come from the trial's seed (checked against the commitment)."""
    trial = trial_by_id(session, trial_id)
    try:
        seed = bytes.fromhex(seed_hex)
    except ValueError:
        raise InputError("seed must be hexadecimal", field="seed") from None
    _check_seed(trial, seed)
    site, _ = _add_site(session, actor, trial, spec, seed)
    return site


def _add_site(session: Session, actor: Actor, trial: Trial, spec: SiteSpec, seed: bytes) -> tuple[Site, int]:
    exists = session.scalars(select(Site.id).where(Site.trial_id == trial.id, Site.code == spec.code)).first()
    if exists is not None:
        raise Conflict(f"site {spec.code!r} exists in this trial", field="code")
    site = Site(trial_id=trial.id, code=spec.code, name=spec.name)
    session.add(site)
    session.flush()
    audit.append(session, actor, "create", "site", site.id, new={"trial": trial.code, "code": site.code})
    made = 0
    cfg = trial.config
    for endotype in cfg["randomized_endotypes"]:
        ratio = {a: int(w) for a, w in cfg["ratios"][endotype].items()}
        stratum = Stratum(
            trial_id=trial.id,
            site_id=site.id,
            endotype=endotype,
            ratio=ratio,
            next_seq=1,
            n_slots=0,
        )
        session.add(stratum)
        session.flush()
        if trial.method == "block":
            key = f"{trial.code}/{site.code}/{endotype}"
            slots = randomization.permuted_block_list(
                seed, key, ratio, cfg["block_multipliers"], int(cfg["slots_per_stratum"])
            )
            numbers = _fresh_kit_numbers(session, trial, seed, key, len(slots))
            session.add_all(
                Kit(
                    trial_id=trial.id,
                    kit_number=numbers[i],
                    arm=s.arm,
                    stratum_id=stratum.id,
                    seq=s.seq,
                    block_no=s.block_no,
                    block_size=s.block_size,
                    used=False,
                )
                for i, s in enumerate(slots)
            )
            stratum.n_slots = len(slots)
            made += len(slots)
        audit.append(
            session,
            actor,
            "create",
            "stratum",
            stratum.id,
            new={"site": site.code, "endotype": endotype, "ratio": ratio, "n_slots": stratum.n_slots},
        )
    session.flush()
    return site, made


def _fresh_kit_numbers(session: Session, trial: Trial, seed: bytes, label: str, count: int) -> list[str]:
    """Kit numbers unique within the trial (a rare clash with an earlier stratum is drawn again)."""
    taken = set(session.scalars(select(Kit.kit_number).where(Kit.trial_id == trial.id)))
    out: list[str] = []
    attempt = 0
    while len(out) < count:
        numbers = randomization.kit_numbers(seed, f"{label}#{attempt}", count * 2)
        for n in numbers:
            if n not in taken:
                taken.add(n)
                out.append(n)
                if len(out) == count:
                    break
        attempt += 1
    return out


def _make_kit_pool(session: Session, trial: Trial, seed: bytes) -> int:
    per_arm = int(trial.config["kits_per_arm"])
    total = per_arm * len(trial.arms)
    numbers = _fresh_kit_numbers(session, trial, seed, f"{trial.code}/pool", total)
    session.add_all(
        Kit(trial_id=trial.id, kit_number=numbers[i * per_arm + j], arm=arm, stratum_id=None, seq=j + 1)
        for i, arm in enumerate(trial.arms)
        for j in range(per_arm)
    )
    session.flush()
    audit.append(session, audit.SYSTEM, "create", "kit_pool", trial.id, new={"kits": total})
    return total


def site_by_code(session: Session, trial: Trial, code: str) -> Site:
    site = session.scalars(select(Site).where(Site.trial_id == trial.id, Site.code == code)).one_or_none()
    if site is None:
        raise InputError("unknown site", field="site", value=code, expected="a site code of this trial")
    return site


def lock_trial(session: Session, actor: Actor, trial_id: int) -> Trial:
    """Database lock: no more data entry; unblinded export becomes possible."""
    trial = trial_by_id(session, trial_id)
    old = trial.status
    trial.status = "locked"
    audit.append(session, actor, "update", "trial", trial.id, old={"status": old}, new={"status": "locked"})
    return trial


def _trial_dict(trial: Trial) -> dict[str, Any]:
    return {
        "id": trial.id,
        "code": trial.code,
        "title": trial.title,
        "protocol_id": trial.protocol_id,
        "protocol_version": trial.protocol_version,
        "method": trial.method,
        "arms": trial.arms,
        "control_arm": trial.control_arm,
        "config": trial.config,
        "status": trial.status,
        "seed_commitment": trial.seed_commitment,
    }


CONCEALED_CONFIG = ("block_multipliers", "slots_per_stratum", "kits_per_arm")
"""Settings that would make allocations predictable: shown to the set-up and unblinded roles only."""


def trial_view(session: Session, trial: Trial, actor: Actor | None = None) -> dict[str, Any]:
    out = _trial_dict(trial)
    if actor is not None and actor.role not in UNBLINDED_ROLES | {"admin"}:
        out["config"] = {k: v for k, v in trial.config.items() if k not in CONCEALED_CONFIG}
    out["sites"] = [{"id": s.id, "code": s.code, "name": s.name} for s in trial.sites]
    out["created_at"] = as_utc(trial.created_at)
    return out


# what each audited entity's set-up rows carry that would make allocations predictable
CONCEALED_AUDIT_KEYS = {"stratum": ("n_slots",), "kit_pool": ("kits",)}


def audit_row_view(row: AuditRow, actor: Actor) -> dict[str, Any]:
    """One audit row as ``actor`` may read it: the concealed set-up (block multipliers, slots per
    stratum, kits per arm) only for the roles that see it in :func:`trial_view`. The stored row, and
    so its hash, stays whole; ``audit verify`` checks it on the server."""
    old, new = row.old, row.new
    if actor.role not in UNBLINDED_ROLES | {"admin"}:
        old, new = (_conceal(row.entity, payload) for payload in (old, new))
    return {
        "seq": row.seq,
        "at": row.at,
        "actor": row.actor,
        "role": row.role,
        "action": row.action,
        "entity": row.entity,
        "entity_id": row.entity_id,
        "old": old,
        "new": new,
        "hash": row.hash,
    }


def _conceal(entity: str, payload: str | None) -> str | None:
    """The row's canonical JSON without the concealed keys (rows of other entities untouched)."""
    if payload is None or (entity not in CONCEALED_AUDIT_KEYS and entity != "trial"):
        return payload
    data = json.loads(payload)
    if not isinstance(data, dict):
        return payload
    out = {k: v for k, v in data.items() if k not in CONCEALED_AUDIT_KEYS.get(entity, ())}
    if entity == "trial" and isinstance(out.get("config"), dict):
        out["config"] = {k: v for k, v in out["config"].items() if k not in CONCEALED_CONFIG}
    return audit.canonical(out)


# --------------------------------------------------------------------------------------------
# users


def create_user(
    session: Session,
    actor: Actor,
    spec: UserIn,
    rounds: int | None = None,
    trial: Trial | None = None,
    password_hash: str | None = None,
) -> User:
    """A user with a bcrypt-hashed password. Pass ``password_hash`` (from
    :func:`~immunostrat.trial.passwords.hash_password`) to hash outside the transaction."""
    if session.scalars(select(User.id).where(User.username == spec.username)).first() is not None:
        raise Conflict(f"user {spec.username!r} exists", field="username")
    site_id: int | None = None
    if spec.site is not None:
        if trial is None and spec.trial_id is not None:
            trial = trial_by_id(session, spec.trial_id)
        if trial is None:
            raise InputError("a site needs its trial", field="trial_id", expected="the trial id of the site")
        site_id = site_by_code(session, trial, spec.site).id
    user = User(
        username=spec.username,
        password_hash=password_hash or hash_password(spec.password, rounds),
        role=spec.role,
        site_id=site_id,
        active=True,
        created_at=utcnow(),
    )
    session.add(user)
    session.flush()
    audit.append(
        session,
        actor,
        "create",
        "user",
        user.id,
        new={"username": user.username, "role": user.role, "site_id": site_id},
    )
    return user


def update_user(
    session: Session, actor: Actor, user_id: int, spec: UserUpdate, password_hash: str | None = None
) -> User:
    """Deactivate or reactivate a user, change the role or the password (``password_hash`` from
    :func:`~immunostrat.trial.passwords.hash_password`, made outside the transaction). Tokens
    already issued stop working at the next request (the user is re-read each time)."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found", field="user_id")
    if user.id == actor.user_id and (spec.active is False or (spec.role or user.role) != user.role):
        raise Conflict("an admin cannot deactivate or re-role themselves", field="user_id")
    old = {"active": user.active, "role": user.role}
    if spec.active is not None:
        user.active = spec.active
    if spec.role is not None:
        user.role = spec.role
    if spec.password is not None:
        problem = password_problem(spec.password, user.username)
        if problem:
            raise InputError(problem, field="password")
        user.password_hash = password_hash or hash_password(spec.password)
    new: dict[str, Any] = {"active": user.active, "role": user.role}
    if spec.password is not None:
        new["password_changed"] = True  # never the password or its hash
    session.flush()
    audit.append(session, actor, "update", "user", user.id, old=old, new=new)
    return user


def password_matches(user: User | None, password: str) -> bool:
    """bcrypt check; a missing or inactive user costs the same time (no user enumeration)."""
    if user is None or not user.active:
        burn_time(password)
        return False
    return verify_password(password, user.password_hash)


def authenticate(session: Session, username: str, password: str) -> User | None:
    user = session.scalars(select(User).where(User.username == username)).one_or_none()
    return user if password_matches(user, password) else None


def actor_for(user: User) -> Actor:
    return Actor(user.username, user.role, user.id, user.site_id)


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "site_id": user.site_id,
        "active": user.active,
    }


# --------------------------------------------------------------------------------------------
# participants and screening


def participant_by_id(
    session: Session, trial: Trial, participant_id: int, actor: Actor | None = None
) -> Participant:
    p = session.get(Participant, participant_id)
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


def screening_rules(trial: Trial) -> ScreeningRules:
    return ScreeningRules(
        trial.protocol_id,
        tuple(trial.config["randomized_endotypes"]),
        # trials set up before the option existed have no key: they never required it
        bool(trial.config.get("require_sepsis3", False)),
    )


@dataclass(frozen=True)
class ScreeningWork:
    """The observations converted and the protocol's decision, worked out before the write
    transaction (on SQLite every write transaction holds the database's one write lock)."""

    rules: ScreeningRules
    observations: list[eligibility.CanonicalObservation]
    decision: eligibility.EligibilityResult


def evaluate_screening(rules: ScreeningRules, data: ScreeningIn) -> ScreeningWork:
    """Convert the observations and decide eligibility: no database, no participant yet."""
    label = data.pseudonym or "screening"  # the observations' patient label; nothing keeps it
    obs = eligibility.canonical_observations(
        label, [o.model_dump() for o in data.observations], data.weight_kg, source="observations"
    )
    patient = {"patient_id": label, "age": data.age, "sex": data.sex, "weight_kg": data.weight_kg}
    decision = eligibility.decide(
        rules.protocol_id,
        patient,
        obs,
        data.exclusions,
        list(rules.randomized_endotypes),
        require_sepsis3=rules.require_sepsis3,
        infection_suspected=data.infection_suspected,
        pre_infection_sofa=data.pre_infection_sofa,
    )
    return ScreeningWork(rules, obs, decision)


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
    _check_idempotency_key(idempotency_key)
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
    _require_open(trial)
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
        for o in obs
    )
    reasons = list(c.reasons)
    if sepsis3 is not None:
        reasons.append({"rule": "sepsis3", **sepsis3})
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
    audit.append(session, actor, "create", "participant", p.id, new=entered)
    return ScreeningResult(
        participant_id=p.id,
        pseudonym=pseudonym,
        site=site.code,
        eligible=decision.eligible,
        endotype=c.endotype,
        therapy=c.therapy,
        dose=c.dose,
        reasons=reasons,
        exclusion_reason=decision.exclusion_reason,
        protocol_id=c.protocol_id or trial.protocol_id,
        protocol_version=c.protocol_version or trial.protocol_version,
        warnings=c.warnings,
        sepsis3=sepsis3,
    )


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


def _check_idempotency_key(key: str | None) -> None:
    """One rule for the ``Idempotency-Key`` of screening and allocation."""
    if key is not None and not (1 <= len(key) <= 128):
        raise InputError("idempotency key must be 1-128 characters", field="Idempotency-Key")


def _require_open(trial: Trial) -> None:
    if trial.status != "open":
        raise Conflict(f"trial {trial.code} is {trial.status}: no more data entry", field="trial_id")


# --------------------------------------------------------------------------------------------
# randomization


@dataclass(frozen=True)
class AllocationResult:
    participant_id: int
    pseudonym: str
    kit_number: str
    sequence: int
    stratum: str | None
    allocated_at: datetime
    replayed: bool
    arm: str
    """Internal: interfaces show it only to unblinded roles (see :func:`allocation_public`)."""


def allocation_public(result: AllocationResult, actor: Actor) -> dict[str, Any]:
    out: dict[str, Any] = {
        "participant_id": result.participant_id,
        "pseudonym": result.pseudonym,
        "kit_number": result.kit_number,
        "sequence": result.sequence,
        "stratum": result.stratum,
        "allocated_at": result.allocated_at,
        "replayed": result.replayed,
    }
    if actor.role in UNBLINDED_ROLES:
        out["arm"] = result.arm
    return out


def _result(session: Session, alloc: Allocation, p: Participant, replayed: bool) -> AllocationResult:
    stratum = session.get(Stratum, alloc.stratum_id) if alloc.stratum_id is not None else None
    label = None
    if stratum is not None:
        label = f"{p.site.code}/{stratum.endotype}"
    elif alloc.details.get("levels"):
        label = "/".join(str(v) for v in alloc.details["levels"].values())
    return AllocationResult(
        participant_id=p.id,
        pseudonym=p.pseudonym,
        kit_number=alloc.kit.kit_number,
        sequence=alloc.sequence,
        stratum=label,
        allocated_at=as_utc(alloc.allocated_at) or utcnow(),
        replayed=replayed,
        arm=alloc.arm,
    )


def _lock_trial(session: Session, trial_id: int) -> Trial:
    """Row lock on the trial (FOR NO KEY UPDATE: screenings may still insert rows that reference it)."""
    stmt = select(Trial).where(Trial.id == trial_id).with_for_update(key_share=True)
    trial = session.scalars(stmt).one_or_none()
    if trial is None:
        raise NotFound(f"trial {trial_id} not found", field="trial_id")
    return trial


def randomize(
    session: Session,
    actor: Actor,
    trial_id: int,
    participant_id: int,
    idempotency_key: str | None = None,
) -> AllocationResult:
    """Allocate the participant: the next unused slot of its stratum (or minimization).

    A retried request with the same idempotency key returns the same allocation (``replayed``);
    the same key for another participant is a conflict."""
    _check_idempotency_key(idempotency_key)
    trial = _lock_trial(session, trial_id)  # serialises allocations within the trial
    if idempotency_key is not None:
        prior = session.scalars(
            select(Allocation).where(
                Allocation.trial_id == trial.id, Allocation.idempotency_key == idempotency_key
            )
        ).one_or_none()
        if prior is not None:
            if prior.participant_id != participant_id:
                raise Conflict(
                    "idempotency key already used for another participant", field="Idempotency-Key"
                )
            p = participant_by_id(session, trial, participant_id, actor)
            return _result(session, prior, p, replayed=True)
    _require_open(trial)
    p = participant_by_id(session, trial, participant_id, actor)
    existing = session.scalars(select(Allocation).where(Allocation.participant_id == p.id)).one_or_none()
    if existing is not None:
        raise Conflict(f"participant {p.pseudonym} is already randomized", field="participant_id")
    if p.status != "eligible":
        raise Conflict(f"participant {p.pseudonym} is {p.status}, not eligible", field="participant_id")
    decision = latest_decision(session, p.id)
    if decision is None or not decision.eligible:
        raise Conflict(f"participant {p.pseudonym} has no eligible decision", field="participant_id")
    if decision.endotype not in trial.config["randomized_endotypes"]:
        raise Conflict(
            f"endotype {decision.endotype} is not randomized in this trial", field="participant_id"
        )
    sequence = int(session.scalar(select(func.count()).where(Allocation.trial_id == trial.id)) or 0) + 1
    details: dict[str, Any] = {}
    stratum_id: int | None
    if trial.method == "block":
        stratum = session.scalars(
            select(Stratum)
            .where(
                Stratum.trial_id == trial.id,
                Stratum.site_id == p.site_id,
                Stratum.endotype == decision.endotype,
            )
            .with_for_update(key_share=True)
        ).one_or_none()
        if stratum is None:
            raise Conflict("no stratum for this site and endotype", field="participant_id")
        kit = session.scalars(
            select(Kit).where(Kit.stratum_id == stratum.id, Kit.seq == stratum.next_seq).with_for_update()
        ).one_or_none()
        if kit is None:
            raise Conflict(
                f"randomization list exhausted for stratum {p.site.code}/{stratum.endotype}",
                field="participant_id",
            )
        if kit.used:  # cannot happen while next_seq is only advanced here; refuse rather than reuse
            raise Conflict("slot already used (list corrupted)", field="participant_id")
        stratum.next_seq += 1
        stratum_id = stratum.id
        details = {"block_no": kit.block_no, "block_size": kit.block_size, "seq": kit.seq}
    else:
        levels = _minimization_levels(trial, p, decision.endotype)
        counts = _minimization_counts(session, trial)
        ratio = {a: 1 for a in trial.arms}
        rng = secrets.SystemRandom()
        choice = randomization.pocock_simon(counts, levels, ratio, rng, p_best=float(trial.config["p_best"]))
        kit = session.scalars(
            select(Kit)
            .where(
                Kit.trial_id == trial.id, Kit.stratum_id.is_(None), Kit.arm == choice.arm, Kit.used.is_(False)
            )
            .order_by(Kit.seq)
            .limit(1)
            .with_for_update()
        ).first()
        if kit is None:
            # the arm stays out of the message: naming it would unblind whoever reads it
            raise Conflict(
                "the kit pool cannot serve this allocation: the pharmacist must restock it",
                field="participant_id",
            )
        stratum_id = None
        details = {
            "levels": levels,
            "imbalance": choice.imbalance,
            "best": choice.best,
            "followed_best": choice.followed_best,
        }
    kit.used = True
    alloc = Allocation(
        trial_id=trial.id,
        participant_id=p.id,
        kit_id=kit.id,
        stratum_id=stratum_id,
        arm=kit.arm,
        method=trial.method,
        sequence=sequence,
        idempotency_key=idempotency_key,
        details=details,
        allocated_by=actor.username,
        allocated_at=utcnow(),
    )
    session.add(alloc)
    p.status = "randomized"
    session.flush()
    audit.append(
        session,
        actor,
        "create",
        "allocation",
        alloc.id,
        old={"status": "eligible"},
        new={
            "participant": p.pseudonym,
            "kit_number": kit.kit_number,
            "sequence": sequence,
            "status": "randomized",
        },
    )
    return _result(session, alloc, p, replayed=False)


def _age_band(age: float) -> str:
    return "<65" if age < 65 else ">=65"


def _minimization_levels(trial: Trial, p: Participant, endotype: str) -> dict[str, str]:
    values = {"site": p.site.code, "endotype": endotype, "sex": p.sex, "age_band": _age_band(p.age)}
    return {f: values[f] for f in trial.config["minimization_factors"]}


def _minimization_counts(session: Session, trial: Trial) -> dict[str, dict[str, dict[str, int]]]:
    counts: dict[str, dict[str, dict[str, int]]] = {}
    rows = session.execute(select(Allocation.arm, Allocation.details).where(Allocation.trial_id == trial.id))
    for arm, details in rows:
        for factor, level in (details or {}).get("levels", {}).items():
            cell = counts.setdefault(factor, {}).setdefault(str(level), {})
            cell[arm] = cell.get(arm, 0) + 1
    return counts


def get_allocation(session: Session, actor: Actor, trial_id: int, participant_id: int) -> AllocationResult:
    """The allocation as the actor may see it; a view by an unblinded role is audited."""
    trial = trial_by_id(session, trial_id)
    p = participant_by_id(session, trial, participant_id, actor)
    alloc = session.scalars(select(Allocation).where(Allocation.participant_id == p.id)).one_or_none()
    if alloc is None:
        raise NotFound(f"participant {p.pseudonym} is not randomized", field="participant_id")
    if actor.role in UNBLINDED_ROLES:
        audit.append(
            session, actor, "view_unblinded", "allocation", alloc.id, new={"participant": p.pseudonym}
        )
    return _result(session, alloc, p, replayed=False)


UNBLINDING_REASON_MIN_CHARS = 10
UNBLINDING_REASON_MIN_DISTINCT = 4
UNBLINDING_FLAG_COUNT = 3
UNBLINDING_FLAG_WINDOW = timedelta(days=7)
"""Oversight policy, not a clinical number: emergency unblinding is meant to be rare (ICH E9 asks
that every break of the blind be documented and explained); the third by one user in one trial
within seven days is flagged for the monitor. Unblinding is never refused for it."""


def visible_reason(reason: str) -> str:
    """The reason as a reader sees it: NFKC, format characters (zero-width spaces, BOM) and controls
    dropped, white space collapsed; InputError unless it says something (at least 10 characters,
    4 different letters or digits)."""
    shown = "".join(
        " " if ch.isspace() else ch
        for ch in unicodedata.normalize("NFKC", reason)
        if unicodedata.category(ch) not in ("Cf", "Cc", "Cs", "Co", "Cn") or ch.isspace()
    )
    shown = " ".join(shown.split())
    distinct = {ch.casefold() for ch in shown if ch.isalnum()}
    if len(shown) < UNBLINDING_REASON_MIN_CHARS or len(distinct) < UNBLINDING_REASON_MIN_DISTINCT:
        raise InputError(
            "the reason must say why the blind is broken",
            field="reason",
            value=shown[:40],
            expected=f"at least {UNBLINDING_REASON_MIN_CHARS} visible characters with "
            f"{UNBLINDING_REASON_MIN_DISTINCT} different letters or digits",
        )
    return shown


def _unblinding_flag(count: int) -> str | None:
    if count < UNBLINDING_FLAG_COUNT:
        return None
    return f"{count} emergency unblindings by this user in {UNBLINDING_FLAG_WINDOW.days} days"


def _recent_unblindings(session: Session, trial: Trial, username: str, until: datetime) -> int:
    """How many unblindings ``username`` did in ``trial`` in the flag window up to ``until``."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(UnblindingEvent)
            .join(Participant, Participant.id == UnblindingEvent.participant_id)
            .where(
                Participant.trial_id == trial.id,
                UnblindingEvent.username == username,
                UnblindingEvent.at > until - UNBLINDING_FLAG_WINDOW,
                UnblindingEvent.at <= until,
            )
        )
        or 0
    )


def emergency_unblind(
    session: Session, actor: Actor, trial_id: int, participant_id: int, reason: str
) -> dict[str, Any]:
    """Reveal one participant's arm for patient safety; a visible reason is required; the event is
    audited and flagged when the same user unblinds often (:data:`UNBLINDING_FLAG_COUNT`)."""
    reason = visible_reason(reason)
    trial = trial_by_id(session, trial_id)
    p = participant_by_id(session, trial, participant_id, actor)
    alloc = session.scalars(select(Allocation).where(Allocation.participant_id == p.id)).one_or_none()
    if alloc is None:
        raise NotFound(f"participant {p.pseudonym} is not randomized", field="participant_id")
    event = UnblindingEvent(
        participant_id=p.id, username=actor.username, role=actor.role, reason=reason, at=utcnow()
    )
    session.add(event)
    session.flush()
    flag = _unblinding_flag(_recent_unblindings(session, trial, actor.username, event.at))
    entry: dict[str, Any] = {"participant": p.pseudonym, "reason": reason, "unblinding_event": event.id}
    if flag is not None:
        entry["flag"] = flag
    audit.append(session, actor, "emergency_unblind", "allocation", alloc.id, new=entry)
    decision = latest_decision(session, p.id)
    active = alloc.arm != trial.control_arm
    return {
        "participant_id": p.id,
        "pseudonym": p.pseudonym,
        "kit_number": alloc.kit.kit_number,
        "arm": alloc.arm,
        "drug": (decision.therapy if decision and active else "placebo"),
        "unblinded_by": actor.username,
        "unblinded_at": as_utc(event.at),
        "reason": reason,
        "flagged": flag is not None,
        "flag": flag,
    }


def unblinding_events(session: Session, trial_id: int) -> list[dict[str, Any]]:
    trial = trial_by_id(session, trial_id)
    rows = session.execute(
        select(UnblindingEvent, Participant.pseudonym)
        .join(Participant, Participant.id == UnblindingEvent.participant_id)
        .where(Participant.trial_id == trial.id)
        .order_by(UnblindingEvent.id)
    )
    return [
        {
            "id": e.id,
            "participant_id": e.participant_id,
            "pseudonym": pseudonym,
            "username": e.username,
            "role": e.role,
            "reason": e.reason,
            "at": as_utc(e.at),
            "flagged": flag is not None,
            "flag": flag,
        }
        for e, pseudonym in rows
        for flag in [_unblinding_flag(_recent_unblindings(session, trial, e.username, e.at))]
    ]


def randomization_list(session: Session, actor: Actor, trial_id: int) -> list[dict[str, Any]]:
    """The concealed list with arms (unblinded roles only; audited)."""
    if actor.role not in UNBLINDED_ROLES:
        raise Forbidden("the randomization list is visible to unblinded roles only")
    trial = trial_by_id(session, trial_id)
    rows = session.execute(
        select(Kit, Stratum.endotype, Site.code)
        .outerjoin(Stratum, Stratum.id == Kit.stratum_id)
        .outerjoin(Site, Site.id == Stratum.site_id)
        .where(Kit.trial_id == trial.id)
        .order_by(Kit.stratum_id, Kit.arm, Kit.seq)
    )
    audit.append(session, actor, "view_unblinded", "randomization_list", trial.id, new={"trial": trial.code})
    return [
        {
            "kit_number": k.kit_number,
            "arm": k.arm,
            "site": site,
            "endotype": endotype,
            "seq": k.seq,
            "block_no": k.block_no,
            "block_size": k.block_size,
            "used": k.used,
        }
        for k, endotype, site in rows
    ]


# --------------------------------------------------------------------------------------------
# data capture


def _randomized(
    session: Session, actor: Actor, trial_id: int, participant_id: int
) -> tuple[Trial, Participant]:
    trial = trial_by_id(session, trial_id)
    _require_open(trial)
    p = participant_by_id(session, trial, participant_id, actor)
    if p.status not in ("randomized", "withdrawn"):
        raise Conflict(f"participant {p.pseudonym} is not randomized", field="participant_id")
    return trial, p


def _row_dict(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(obj, n) for n in names}


ASSESSMENT_FIELDS = (
    "day",
    *SOFA_FIELDS,
    "sofa_total",
    *ASSESSMENT_BIOMARKERS.values(),
    "infection_status",
    "doses_given",
)


def record_assessment(
    session: Session, actor: Actor, trial_id: int, participant_id: int, data: AssessmentIn
) -> Assessment:
    """Create or update one study day (SOFA components, biomarkers in any accepted unit, infection
    status, doses given)."""
    _, p = _randomized(session, actor, trial_id, participant_id)
    values: dict[str, Any] = {f: getattr(data, f) for f in SOFA_FIELDS}
    given = [v for v in values.values() if v is not None]
    total = data.sofa_total
    if len(given) == len(SOFA_FIELDS) and total is not None and total != sum(given):
        raise InputError(
            "sofa_total differs from the sum of the components",
            field="sofa_total",
            value=total,
            expected=str(sum(given)),
        )
    if total is None and given:
        total = sum(given)
    values["sofa_total"] = total
    obs = eligibility.canonical_observations(
        p.pseudonym, [o.model_dump() for o in data.observations], p.weight_kg, source="observations"
    )
    for i, o in enumerate(obs):
        column = ASSESSMENT_BIOMARKERS.get(o.concept)
        if column is None:
            raise InputError(
                "concept not recorded in daily assessments",
                field=f"observations[{i}].concept",
                value=o.concept,
                expected="one of " + ", ".join(ASSESSMENT_BIOMARKERS),
            )
        values[column] = o.value
    values["infection_status"] = data.infection_status
    values["doses_given"] = data.doses_given
    row = session.scalars(
        select(Assessment).where(Assessment.participant_id == p.id, Assessment.day == data.day)
    ).one_or_none()
    if row is None:
        row = Assessment(
            participant_id=p.id, day=data.day, entered_by=actor.username, entered_at=utcnow(), **values
        )
        session.add(row)
        session.flush()
        audit.append(session, actor, "create", "assessment", row.id, new=_row_dict(row, ASSESSMENT_FIELDS))
    else:
        old = _row_dict(row, ASSESSMENT_FIELDS)
        for k, v in values.items():
            if v is not None or k in SOFA_FIELDS or k == "sofa_total":
                setattr(row, k, v)
        row.entered_by = actor.username
        row.entered_at = utcnow()
        session.flush()
        audit.append(
            session, actor, "update", "assessment", row.id, old=old, new=_row_dict(row, ASSESSMENT_FIELDS)
        )
    return row


def assessment_view(row: Assessment) -> dict[str, Any]:
    out = _row_dict(row, ASSESSMENT_FIELDS)
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
        old = _row_dict(row, OUTCOME_FIELDS)
        for k, v in values.items():
            setattr(row, k, v)
        row.recorded_by = actor.username
        row.recorded_at = utcnow()
        session.flush()
        audit.append(session, actor, "update", "outcome", row.id, old=old, new=values)
    return row


def outcome_view(row: Outcome) -> dict[str, Any]:
    out = _row_dict(row, OUTCOME_FIELDS)
    out["participant_id"] = row.participant_id
    return out


AE_FIELDS = ("day", "term", "serious", "severity", "related", "outcome")


def record_adverse_event(
    session: Session, actor: Actor, trial_id: int, participant_id: int, data: AdverseEventIn
) -> AdverseEvent:
    _, p = _randomized(session, actor, trial_id, participant_id)
    row = AdverseEvent(
        participant_id=p.id, entered_by=actor.username, entered_at=utcnow(), **data.model_dump()
    )
    session.add(row)
    session.flush()
    audit.append(session, actor, "create", "adverse_event", row.id, new=data.model_dump())
    return row


def adverse_event_view(row: AdverseEvent, pseudonym: str | None = None) -> dict[str, Any]:
    out = _row_dict(row, AE_FIELDS)
    out["id"] = row.id
    out["participant_id"] = row.participant_id
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
            if json.loads(last.new or "null") != json.loads(audit.canonical(_row_dict(row, names)) or "null"):
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
