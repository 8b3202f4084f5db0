"""Small builders for trial tests (real database rows, no stand-ins)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from immunostrat.trial.models import EligibilityDecision, Participant, Site, Trial, utcnow


def add_eligible(
    session: Session, trial_id: int, site_code: str, endotype: str, n: int, start: int = 0
) -> list[int]:
    """Register ``n`` participants the protocol already found eligible with ``endotype``."""
    trial = session.get(Trial, trial_id)
    assert trial is not None
    site = next(s for s in trial.sites if s.code == site_code)
    assert isinstance(site, Site)
    ids = []
    for i in range(n):
        p = Participant(
            trial_id=trial.id,
            site_id=site.id,
            pseudonym=f"{site_code}-{endotype[:3]}-{start + i:05d}",
            age=40 + (i % 40),
            sex="F" if i % 2 else "M",
            weight_kg=70.0,
            exclusions={},
            status="eligible",
            created_by="fixture",
            created_at=utcnow(),
        )
        session.add(p)
        session.flush()
        session.add(
            EligibilityDecision(
                participant_id=p.id,
                protocol_id=trial.protocol_id,
                protocol_version=trial.protocol_version,
                endotype=endotype,
                therapy="none",
                dose=None,
                eligible=True,
                reasons=[{"rule": "fixture", "text": f"registered as {endotype}"}],
                decided_by="fixture",
                decided_at=utcnow(),
            )
        )
        ids.append(p.id)
    session.flush()
    return ids
