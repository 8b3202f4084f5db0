"""Counting a trial as it runs: the CONSORT flow (screened, not eligible with the reasons, eligible,
randomized, then allocated / withdrawn / completed / analysed) and enrolment over time by site and by
stratum. Pure reads over the session, through the same functions as the screening log, so a
site-bound investigator counts their own site only.

Arms: the per-arm split is counted for unblinded roles only; every other role gets totals, and
nothing here names an arm to them (:func:`~immunostrat.trial.blinding.is_blinded`).

Definitions (stated on the page):

- *screened*: every participant registered at screening (re-screenings counted once);
- *not eligible*: the latest decision says not eligible, counted by its exclusion reason;
- *randomized / allocated*: an allocation exists;
- *withdrawn*: randomized and later withdrawn;
- *completed*: randomized, not withdrawn, and every form of the schedule's last visit saved (trials
  with forms) or the outcome recorded (trials without);
- *analysed*: randomized and the data not removed at withdrawal (intention to treat).
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from immunostrat.trial import forms
from immunostrat.trial.audit import Actor
from immunostrat.trial.blinding import is_blinded
from immunostrat.trial.models import Allocation, FormRecord, Outcome, Trial, as_utc
from immunostrat.trial.screening import list_participants, screening_log
from immunostrat.trial.setup import trial_by_id

NO_REASON = "no reason recorded"


def _completed(session: Session, trial: Trial, ids: list[int]) -> set[int]:
    """Participants (of ``ids``) with every form of the last scheduled visit saved, or (trials
    without forms) their outcome recorded."""
    if not ids:
        return set()
    if forms.has_forms(trial):
        schedule = forms.trial_definition(trial).schedule()
        if not schedule:
            return set()
        last = schedule[-1]
        saved = session.execute(
            select(FormRecord.participant_id, FormRecord.form_id).where(
                FormRecord.participant_id.in_(ids), FormRecord.visit_id == last.id
            )
        )
        forms_of: dict[int, set[str]] = {}
        for pid, form_id in saved:
            forms_of.setdefault(pid, set()).add(form_id)
        return {pid for pid, done in forms_of.items() if done >= set(last.forms)}
    return set(session.scalars(select(Outcome.participant_id).where(Outcome.participant_id.in_(ids))))


def _allocations(session: Session, trial: Trial, ids: list[int]) -> dict[int, Allocation]:
    if not ids:
        return {}
    rows = session.scalars(
        select(Allocation).where(Allocation.trial_id == trial.id, Allocation.participant_id.in_(ids))
    )
    return {a.participant_id: a for a in rows}


def consort(session: Session, actor: Actor, trial_id: int) -> dict[str, Any]:
    """The CONSORT flow of the participants ``actor`` may list. ``arms`` (a list of per-arm counts,
    in the trial's order) is present for unblinded roles only."""
    trial = trial_by_id(session, trial_id)
    log = screening_log(session, actor, trial.id)
    ids = [r["participant_id"] for r in log]
    participants = {p.id: p for p in list_participants(session, actor, trial.id)}
    allocations = _allocations(session, trial, ids)
    randomized = [i for i in ids if i in allocations]
    withdrawn = {i for i in randomized if participants[i].status == "withdrawn"}
    completed = _completed(session, trial, [i for i in randomized if i not in withdrawn])
    analysed = {i for i in randomized if not participants[i].data_removed}
    not_eligible = [r for r in log if r["eligible"] is False]
    reasons = Counter(r["exclusion_reason"] or NO_REASON for r in not_eligible)
    eligible = [r for r in log if r["eligible"] is True]
    out: dict[str, Any] = {
        "trial": trial.code,
        "screened": len(log),
        "not_eligible": len(not_eligible),
        "exclusions": [
            {"reason": k, "count": n} for k, n in sorted(reasons.items(), key=lambda x: (-x[1], x[0]))
        ],
        "undecided": sum(1 for r in log if r["eligible"] is None),
        "eligible": len(eligible),
        "eligible_not_randomized": sum(1 for r in eligible if r["participant_id"] not in allocations),
        "randomized": len(randomized),
        "withdrawn": len(withdrawn),
        "completed": len(completed),
        "analysed": len(analysed),
    }
    if not is_blinded(actor):
        out["arms"] = [
            {
                "arm": arm,
                "allocated": len(members),
                "withdrawn": len(withdrawn & members),
                "completed": len(completed & members),
                "analysed": len(analysed & members),
            }
            for arm in trial.arms
            for members in [{i for i in randomized if allocations[i].arm == arm}]
        ]
    return out


def enrolment(session: Session, actor: Actor, trial_id: int) -> dict[str, Any]:
    """Participants randomized over time (the ones ``actor`` may list), cumulative by site and by
    stratum (site x the stratum the screening decided: an endotype, a choice of the strata field, or
    ``all``); ``dates`` are the days with at least one randomization, each series one count per date."""
    trial = trial_by_id(session, trial_id)
    log = screening_log(session, actor, trial.id)
    allocations = _allocations(session, trial, [r["participant_id"] for r in log])
    events: list[tuple[date, str, str]] = []
    for r in log:
        a = allocations.get(r["participant_id"])
        if a is not None:
            at = as_utc(a.allocated_at)
            assert at is not None  # allocated_at is never empty
            day = at.date()
            events.append((day, r["site"], f"{r['site']} / {r['stratum'] or 'all'}"))
    events.sort()
    dates = sorted({day for day, _, _ in events})
    sites = [s.code for s in trial.sites]
    strata = sorted({stratum for _, _, stratum in events})
    return {
        "trial": trial.code,
        "dates": [d.isoformat() for d in dates],
        "by_site": {s: _cumulative(dates, [day for day, site, _ in events if site == s]) for s in sites},
        "by_stratum": {k: _cumulative(dates, [day for day, _, st in events if st == k]) for k in strata},
        "total": len(events),
    }


def _cumulative(dates: list[date], days: list[date]) -> list[int]:
    counts = Counter(days)
    out, running = [], 0
    for d in dates:
        running += counts[d]
        out.append(running)
    return out


__all__ = ["NO_REASON", "consort", "enrolment"]
