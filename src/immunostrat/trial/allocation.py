"""Allocation and unblinding: the next slot of a stratum (or minimization), the allocation as each
role may see it, emergency unblinding and the randomization list (allocated slots only).

Concurrency: randomization claims the participant's row, then (block randomization) advances its
stratum's ``next_seq`` and takes the kit at the old value, then counts the allocation on the trial
row, which gives its sequence number; each UPDATE takes its row's lock (on SQLite the whole write
transaction is ``BEGIN IMMEDIATE``), all in one transaction: no slot is used twice or skipped, and
sequence numbers have no gaps.
"""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from immunostrat.errors import InputError
from immunostrat.trial import allocation_statements as sql
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
    check_participant,
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


def _lock_trial(session: Session, trial: Trial) -> int:
    """Row lock on the trial, taken by counting the allocation about to be made; its sequence back.

    One statement: the UPDATE waits for the lock and then reads the newest count (PostgreSQL
    re-reads a row it waited for), which a SELECT in the same statement would not. The lock is
    FOR NO KEY UPDATE, so screenings may still insert rows that reference the trial."""
    row = session.execute(sql.COUNT_ALLOCATION, {"trial_id": trial.id}).one()
    set_committed_value(trial, "status", row.status)
    require_open(trial)  # locked meanwhile: the count above is rolled back with the refusal
    return int(row.allocations_made)


def _prior_allocation(
    session: Session, trial_id: int, participant_id: int, idempotency_key: str | None
) -> Allocation | None:
    """The allocation this request would repeat or collide with: the participant's own, or the one
    made with the same idempotency key (one statement)."""
    params: dict[str, Any] = {"trial_id": trial_id, "participant_id": participant_id}
    if idempotency_key is None:
        rows = session.scalars(sql.PRIOR_BY_PARTICIPANT, params).all()
    else:
        params["idempotency_key"] = idempotency_key
        rows = session.scalars(sql.PRIOR_BY_PARTICIPANT_OR_KEY, params).all()
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


@dataclass(frozen=True)
class _Slot:
    """The kit an allocation takes and what the allocation records of how it was chosen."""

    kit_id: int
    kit_number: str
    arm: str
    stratum_id: int | None
    details: dict[str, Any]


def _claim(
    session: Session, trial: Trial, p: Participant, participant_id: int, idempotency_key: str | None
) -> AllocationResult | None:
    """Mark the participant randomized (its row stays locked until commit). None when claimed;
    otherwise what the request gets instead: the allocation another request committed while this
    one waited for the row (a replay, or a conflict), or a conflict naming the participant's status."""
    claimed = session.execute(sql.CLAIM_PARTICIPANT, {"participant_id": p.id})
    if claimed.rowcount == 1:  # type: ignore[attr-defined]
        set_committed_value(p, "status", "randomized")
        return None
    prior = _prior_allocation(session, trial.id, participant_id, idempotency_key)
    if prior is not None:
        return _replay_or_conflict(session, prior, p, participant_id, idempotency_key)
    session.refresh(p, ["status"])
    raise Conflict(f"participant {p.pseudonym} is {p.status}, not eligible", field="participant_id")


def _block_slot(session: Session, trial: Trial, p: Participant, endotype: str) -> _Slot:
    """The next slot of the participant's stratum: the stratum's ``next_seq`` advanced and the kit
    at the old value marked used, each in one statement that takes the row's lock."""
    stratum = session.execute(
        sql.ADVANCE_STRATUM, {"of_trial": trial.id, "of_site": p.site_id, "of_endotype": endotype}
    ).one_or_none()
    if stratum is None:
        raise Conflict("no stratum for this site and endotype", field="participant_id")
    seq = stratum.next_seq - 1
    at = {"of_stratum": stratum.id, "at_seq": seq}
    kit = session.execute(sql.TAKE_KIT, at).one_or_none()
    if kit is None:
        exists = session.scalar(sql.KIT_AT, at)
        if exists is not None:  # cannot happen while next_seq is only advanced here; refuse, not reuse
            raise Conflict("slot already used (list corrupted)", field="participant_id")
        raise Conflict(
            f"randomization list exhausted for stratum {p.site.code}/{endotype}", field="participant_id"
        )
    details = {"block_no": kit.block_no, "block_size": kit.block_size, "seq": seq}
    return _Slot(kit.id, kit.kit_number, kit.arm, stratum.id, details)


def _minimization_slot(session: Session, trial: Trial, p: Participant, endotype: str) -> _Slot:
    """Pocock-Simon over the allocations so far, then the arm's next unused kit of the pool."""
    levels = _minimization_levels(trial, p, endotype)
    counts = _minimization_counts(session, trial)
    ratio = {a: 1 for a in trial.arms}
    rng = secrets.SystemRandom()
    choice = randomization.pocock_simon(counts, levels, ratio, rng, p_best=float(trial.config["p_best"]))
    kit = session.scalars(
        select(Kit)
        .where(Kit.trial_id == trial.id, Kit.stratum_id.is_(None), Kit.arm == choice.arm, Kit.used.is_(False))
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
    kit.used = True
    details = {
        "levels": levels,
        "imbalance": choice.imbalance,
        "best": choice.best,
        "followed_best": choice.followed_best,
    }
    return _Slot(kit.id, kit.kit_number, kit.arm, None, details)


def _candidate(
    session: Session, trial_id: int, participant_id: int
) -> tuple[Trial, Participant | None, str | None, str | None, bool | None]:
    """In one statement: the trial, the participant if it is in the trial, its site's code and its
    latest eligibility decision (endotype, eligible). NotFound when the trial does not exist."""
    params = {"trial_id": trial_id, "participant_id": participant_id}
    row = session.execute(sql.CANDIDATE, params).one_or_none()
    if row is None:
        raise NotFound(f"trial {trial_id} not found", field="trial_id")
    return row[0], row[1], row[2], row[3], row[4]


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
    # withdrawal of this participant in the meantime is caught by the claim under the lock, and the
    # same key used meanwhile for another participant by the key's unique constraint (a conflict).
    trial, p, site_code, endotype, eligible = _candidate(session, trial_id, participant_id)
    prior = _prior_allocation(session, trial.id, participant_id, idempotency_key)
    if prior is not None:  # a replay is answered even after the lock, as before
        p = participant_by_id(session, trial, prior.participant_id, actor)
        return _replay_or_conflict(session, prior, p, participant_id, idempotency_key)
    require_open(trial)
    p = check_participant(trial, p, participant_id, actor)
    if p.status != "eligible":
        raise Conflict(f"participant {p.pseudonym} is {p.status}, not eligible", field="participant_id")
    if endotype is None or not eligible:
        raise Conflict(f"participant {p.pseudonym} has no eligible decision", field="participant_id")
    if endotype not in trial.config["randomized_endotypes"]:
        raise Conflict(f"endotype {endotype} is not randomized in this trial", field="participant_id")

    # Lock order, the same for every allocation: participant, stratum, trial, audit head. Under
    # block randomization the stratum's row lock alone orders its slots, so the trial's lock (which
    # orders all allocations of the trial) is taken last and held for the fewest statements.
    instead = _claim(session, trial, p, participant_id, idempotency_key)
    if instead is not None:
        return instead
    if trial.method == "block":
        slot = _block_slot(session, trial, p, endotype)
        label = f"{site_code}/{endotype}"
        sequence = _lock_trial(session, trial)
    else:  # minimization counts every allocation so far: under the trial's lock
        sequence = _lock_trial(session, trial)
        slot = _minimization_slot(session, trial, p, endotype)
        label = "/".join(str(v) for v in slot.details["levels"].values())
    allocated_at = utcnow()
    allocation_id = session.scalar(
        sql.INSERT_ALLOCATION,
        dict(
            trial_id=trial.id,
            participant_id=p.id,
            kit_id=slot.kit_id,
            stratum_id=slot.stratum_id,
            arm=slot.arm,
            method=trial.method,
            sequence=sequence,
            idempotency_key=idempotency_key,
            details=slot.details,
            allocated_by=actor.username,
            allocated_at=allocated_at,
        ),
    )
    audit.append(
        session,
        actor,
        "create",
        "allocation",
        allocation_id,
        old={"status": "eligible"},
        new={
            "participant": p.pseudonym,
            "kit_number": slot.kit_number,
            "sequence": sequence,
            "status": "randomized",
        },
    )
    return AllocationResult(
        participant_id=p.id,
        pseudonym=p.pseudonym,
        kit_number=slot.kit_number,
        sequence=sequence,
        stratum=label,
        allocated_at=as_utc(allocated_at) or allocated_at,
        replayed=False,
        arm=slot.arm,
    )


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
