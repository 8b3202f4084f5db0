"""The demo trial: sites, one user per role with a generated password, a screened cohort."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from immunostrat.trial import service
from immunostrat.trial.db import get_engine, transaction
from immunostrat.trial.demo import DEMO_CODE, create_demo
from immunostrat.trial.models import Assessment, Participant
from immunostrat.trial.ops import verify_audit
from immunostrat.trial.schemas import ROLES


def test_create_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMMUNOSTRAT_BCRYPT_ROUNDS", "4")
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    info = create_demo(url, patients=24, days=3)
    assert info.trial_code == DEMO_CODE and len(info.seed_hex) == 64
    assert set(info.users) == set(ROLES)
    assert info.screened == 24 and 0 < info.randomized == info.eligible < 24
    with transaction(get_engine(url)) as s:
        for role, (username, password) in info.users.items():
            user = service.authenticate(s, username, password)
            assert user is not None and user.role == role
            assert service.authenticate(s, username, password + "x") is None
        statuses = {p.status for p in s.scalars(select(Participant))}
        assert statuses == {"randomized", "ineligible"}
        assert s.scalar(select(func.count()).select_from(Assessment)) == 3 * info.randomized
        assert len(service.trial_by_id(s, info.trial_id).sites) == 4
    assert verify_audit(url).ok
