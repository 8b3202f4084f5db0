"""The statements of one randomization, built once.

A statement built per call costs SQLAlchemy its construction and its cache key every time; one
built once, with its values as bound parameters (named apart from the columns an UPDATE sets),
keeps its key (memoised) and its compiled form. Table-level statements, not ORM entities, also
skip the ORM's bulk-DML machinery, which here would only synchronise objects this path never
loads. Under load the randomizing worker's CPU is what limits the rate (``benchmarks/trial.py``).
"""

from __future__ import annotations

from sqlalchemy import bindparam, func, insert, select, update

from immunostrat.trial.models import (
    Allocation,
    Base,
    EligibilityDecision,
    Participant,
    Site,
    Trial,
)

trials = Base.metadata.tables["trials"]
participants = Base.metadata.tables["participants"]
strata = Base.metadata.tables["strata"]
kits = Base.metadata.tables["kits"]
allocations = Base.metadata.tables["allocations"]

_latest_decision = (
    select(func.max(EligibilityDecision.id))
    .where(EligibilityDecision.participant_id == Participant.id)
    .correlate(Participant)
    .scalar_subquery()
)
CANDIDATE = (
    select(Trial, Participant, Site.code, EligibilityDecision.endotype, EligibilityDecision.eligible)
    .select_from(Trial)
    .outerjoin(
        Participant,
        (Participant.id == bindparam("participant_id")) & (Participant.trial_id == Trial.id),
    )
    .outerjoin(Site, Site.id == Participant.site_id)
    .outerjoin(EligibilityDecision, EligibilityDecision.id == _latest_decision)
    .where(Trial.id == bindparam("trial_id"))
)
"""The trial, the participant if it is in the trial, its site's code and its latest decision."""

PRIOR_BY_PARTICIPANT = select(Allocation).where(
    Allocation.trial_id == bindparam("trial_id"), Allocation.participant_id == bindparam("participant_id")
)
PRIOR_BY_PARTICIPANT_OR_KEY = select(Allocation).where(
    Allocation.trial_id == bindparam("trial_id"),
    (Allocation.participant_id == bindparam("participant_id"))
    | (Allocation.idempotency_key == bindparam("idempotency_key")),
)
"""The allocation a request would repeat or collide with (the participant's own, or its key's)."""

CLAIM_PARTICIPANT = (
    update(participants)
    .where(participants.c.id == bindparam("participant_id"), participants.c.status == "eligible")
    .values(status="randomized")
)
ADVANCE_STRATUM = (
    update(strata)
    .where(
        strata.c.trial_id == bindparam("of_trial"),
        strata.c.site_id == bindparam("of_site"),
        strata.c.endotype == bindparam("of_endotype"),
    )
    .values(next_seq=strata.c.next_seq + 1)
    .returning(strata.c.id, strata.c.next_seq)
)
TAKE_KIT = (
    update(kits)
    .where(
        kits.c.stratum_id == bindparam("of_stratum"),
        kits.c.seq == bindparam("at_seq"),
        kits.c.used.is_(False),
    )
    .values(used=True)
    .returning(kits.c.id, kits.c.kit_number, kits.c.arm, kits.c.block_no, kits.c.block_size)
)
KIT_AT = select(kits.c.id).where(
    kits.c.stratum_id == bindparam("of_stratum"), kits.c.seq == bindparam("at_seq")
)
COUNT_ALLOCATION = (
    update(trials)
    .where(trials.c.id == bindparam("trial_id"))
    .values(allocations_made=trials.c.allocations_made + 1)
    .returning(trials.c.allocations_made, trials.c.status)
)
"""Takes the trial's row lock and returns the allocation's sequence number (see allocation.py)."""

INSERT_ALLOCATION = insert(allocations).returning(allocations.c.id)
