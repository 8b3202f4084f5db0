"""Bulk rows for API tests that need many eligible participants at once (written straight into the
server's database; the randomization itself goes through HTTP)."""

from __future__ import annotations

from sqlalchemy import select

from immunostrat.trial.db import get_engine, transaction
from immunostrat.trial.models import EligibilityDecision, Participant, Site, Trial, utcnow


def add_eligible(db_url: str, trial_id: int, plan: list[tuple[str, str]]) -> list[int]:
    """One eligible participant per (site code, endotype) in ``plan``; returns their ids in order."""
    with transaction(get_engine(db_url)) as s:
        trial = s.get(Trial, trial_id)
        assert trial is not None
        sites = {x.code: x.id for x in s.scalars(select(Site).where(Site.trial_id == trial_id))}
        people = [
            Participant(
                trial_id=trial_id,
                site_id=sites[site],
                pseudonym=f"B{trial_id}-{i:05d}",
                age=30 + i % 60,
                sex="F" if i % 2 else "M",
                weight_kg=75.0,
                exclusions={},
                status="eligible",
                created_by="fixture",
                created_at=utcnow(),
            )
            for i, (site, _) in enumerate(plan)
        ]
        s.add_all(people)
        s.flush()
        s.add_all(
            EligibilityDecision(
                participant_id=p.id,
                protocol_id=trial.protocol_id,
                protocol_version=trial.protocol_version,
                endotype=endotype,
                therapy="none",
                eligible=True,
                reasons=[{"rule": "fixture"}],
                decided_by="fixture",
                decided_at=utcnow(),
            )
            for p, (_, endotype) in zip(people, plan, strict=True)
        )
        return [p.id for p in people]
