"""Allocation and unblinding: the next slot of a stratum (or minimization), the allocation as each
role may see it, emergency unblinding and the randomization list (allocated slots only).

Concurrency: randomization locks the trial row (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite
the whole write transaction is ``BEGIN IMMEDIATE``), then the stratum row, takes the slot at the
stratum's ``next_seq`` and advances it, all in one transaction: no slot is used twice or skipped.
"""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from immunostrat.errors import InputError
from immunostrat.trial import audit, randomization
from immunostrat.trial.audit import Actor
from immunostrat.trial.errors import Conflict, Forbidden, NotFound
from immunostrat.trial.models import (
    Allocation,
    Kit,
    Participant,
    Site,
    Stratum,
    Trial,
    UnblindingEvent,
    as_utc,
    utcnow,
)
from immunostrat.trial.schemas import (
    UNBLINDED_ROLES,
)
from immunostrat.trial.screening import (
    check_idempotency_key,
    latest_decision,
    participant_by_id,
    require_open,
)
from immunostrat.trial.setup import trial_by_id

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
    # populate_existing: the trial read before the lock is refreshed (a lock meanwhile is seen)
    stmt = (
        select(Trial)
        .where(Trial.id == trial_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    trial = session.scalars(stmt).one_or_none()
    if trial is None:
        raise NotFound(f"trial {trial_id} not found", field="trial_id")
    return trial


def _prior_allocation(
    session: Session, trial_id: int, participant_id: int, idempotency_key: str | None
) -> Allocation | None:
    """The allocation this request would repeat or collide with: the participant's own, or the one
    made with the same idempotency key (one statement)."""
    match = Allocation.participant_id == participant_id
    if idempotency_key is not None:
        match = match | (Allocation.idempotency_key == idempotency_key)
    rows = session.scalars(select(Allocation).where(Allocation.trial_id == trial_id, match)).all()
    keyed = [a for a in rows if idempotency_key is not None and a.idempotency_key == idempotency_key]
    return keyed[0] if keyed else (rows[0] if rows else None)


def _replay_or_conflict(
    session: Session, prior: Allocation, p: Participant, participant_id: int, idempotency_key: str | None
) -> AllocationResult:
    """A retry with the same key for the same participant gets the same allocation back; the key
    reused for another participant, or a second randomization of the same one, is a conflict."""
    if idempotency_key is not None and prior.idempotency_key == idempotency_key:
        if prior.participant_id != participant_id:
            raise Conflict("idempotency key already used for another participant", field="Idempotency-Key")
        return _result(session, prior, p, replayed=True)
    raise Conflict(f"participant {p.pseudonym} is already randomized", field="participant_id")


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
    check_idempotency_key(idempotency_key)
    # What no concurrent request can change is read before the trial's lock, so that the lock (which
    # orders every allocation of the trial) is held for the allocation alone. A participant's decision
    # changes only by re-screening, which takes a participant found not eligible; a randomization or
    # withdrawal of this participant in the meantime is caught under the lock below.
    trial = trial_by_id(session, trial_id)
    prior = _prior_allocation(session, trial.id, participant_id, idempotency_key)
    if prior is not None:  # a replay is answered even after the lock, as before
        p = participant_by_id(session, trial, prior.participant_id, actor)
        return _replay_or_conflict(session, prior, p, participant_id, idempotency_key)
    require_open(trial)
    p = participant_by_id(session, trial, participant_id, actor)
    if p.status != "eligible":
        raise Conflict(f"participant {p.pseudonym} is {p.status}, not eligible", field="participant_id")
    decision = latest_decision(session, p.id)
    if decision is None or not decision.eligible:
        raise Conflict(f"participant {p.pseudonym} has no eligible decision", field="participant_id")
    if decision.endotype not in trial.config["randomized_endotypes"]:
        raise Conflict(
            f"endotype {decision.endotype} is not randomized in this trial", field="participant_id"
        )
    site_code = p.site.code

    trial = _lock_trial(session, trial_id)  # serialises allocations within the trial
    require_open(trial)
    prior = _prior_allocation(session, trial.id, participant_id, idempotency_key)
    if prior is not None:  # committed by another request while this one waited for the lock
        return _replay_or_conflict(session, prior, p, participant_id, idempotency_key)
    claimed = session.execute(
        update(Participant)
        .where(Participant.id == p.id, Participant.status == "eligible")
        .values(status="randomized")
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        session.refresh(p, ["status"])
        raise Conflict(f"participant {p.pseudonym} is {p.status}, not eligible", field="participant_id")
    set_committed_value(p, "status", "randomized")
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
                f"randomization list exhausted for stratum {site_code}/{stratum.endotype}",
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
    """The allocated slots with their arms (unblinded roles only; audited). As in REDCap, the unused
    part of the list is never shown to anyone: with arms, block sizes and positions of the future
    slots, the next allocation in a stratum could be foreseen."""
    if actor.role not in UNBLINDED_ROLES:
        raise Forbidden("the randomization list is visible to unblinded roles only")
    trial = trial_by_id(session, trial_id)
    rows = session.execute(
        select(Allocation, Kit, Participant.pseudonym, Stratum.endotype, Site.code)
        .join(Kit, Kit.id == Allocation.kit_id)
        .join(Participant, Participant.id == Allocation.participant_id)
        .outerjoin(Stratum, Stratum.id == Allocation.stratum_id)
        .join(Site, Site.id == Participant.site_id)
        .where(Allocation.trial_id == trial.id)
        .order_by(Allocation.sequence)
    )
    audit.append(session, actor, "view_unblinded", "randomization_list", trial.id, new={"trial": trial.code})
    return [
        {
            "sequence": a.sequence,
            "kit_number": k.kit_number,
            "arm": a.arm,
            "site": site,
            "stratum": endotype,
            "participant": pseudonym,
            "allocated_at": as_utc(a.allocated_at),
        }
        for a, k, pseudonym, endotype, site in rows
    ]
