"""The demo trial: the ImmunoSep template at the four demo sites, one user per role with a generated
password, a screened cohort (Sepsis-3 at screening, varied screen failures), the eligible randomized
with their baseline and daily forms saved (SOFA derived), open queries and one adverse event."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from immunostrat.trial import datamanagement, service
from immunostrat.trial.db import get_engine, transaction
from immunostrat.trial.demo import DEMO_CODE, DEMO_SITES, DemoInfo, create_demo
from immunostrat.trial.forms import trial_definition
from immunostrat.trial.models import Allocation, FormRecord, Participant, User
from immunostrat.trial.ops import data_management_report, verify_audit
from immunostrat.trial.schemas import CARE_ROLES, ROLES

SOFA_PARTS = (
    "sofa_respiration",
    "sofa_coagulation",
    "sofa_liver",
    "sofa_cardiovascular",
    "sofa_cns",
    "sofa_renal",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, DemoInfo]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMMUNOSTRAT_BCRYPT_ROUNDS", "4")
        url = f"sqlite:///{tmp_path_factory.mktemp('demo') / 'demo.db'}"
        return url, create_demo(url, patients=24, days=4)


def test_trial_from_the_template_with_its_sites_and_users(demo: tuple[str, DemoInfo]) -> None:
    url, info = demo
    assert info.trial_code == DEMO_CODE and len(info.seed_hex) == 64
    assert set(info.users) == set(ROLES)
    with transaction(get_engine(url)) as s:
        trial = service.trial_by_id(s, info.trial_id)
        assert sorted(site.code for site in trial.sites) == sorted(c for c, _ in DEMO_SITES)
        spec = trial_definition(trial)
        assert {"biomarkers", "daily"} <= set(spec.forms) and trial.config["require_sepsis3"] is True
        for role, (username, password) in info.users.items():
            user = service.authenticate(s, username, password)
            assert user is not None and user.role == role and user.site_id is None
            assert service.authenticate(s, username, password + "x") is None
        roles = {u.role for u in s.scalars(select(User))}
        assert set(CARE_ROLES) <= roles and roles == set(ROLES)


def test_counts_and_screening_log_match_the_database(demo: tuple[str, DemoInfo]) -> None:
    url, info = demo
    assert info.screened == 24 and 0 < info.randomized == info.eligible < 24
    with transaction(get_engine(url)) as s:
        participants = list(s.scalars(select(Participant)))
        assert len(participants) == info.screened
        status = Counter(p.status for p in participants)
        assert status == {"randomized": info.randomized, "ineligible": 24 - info.randomized}
        assert s.scalar(select(func.count()).select_from(Allocation)) == info.randomized
        assert len({p.site_id for p in participants if p.status == "ineligible"}) >= 3
        decisions = {p.id: service.latest_decision(s, p.id) for p in participants}
        reasons = [
            next(r["text"] for r in d.reasons if r.get("rule") == "eligibility")
            for d in decisions.values()
            if d is not None and not d.eligible
        ]
        endotypes = Counter(
            (d.endotype, p.status) for p in participants if (d := decisions[p.id]) is not None
        )
        now = datetime.now(UTC)
        screened_at = [p.created_at.replace(tzinfo=UTC) for p in participants]
    # varied, realistic screen failures, each for its own reason
    for start in (
        "age 1",
        "Sepsis-3 not met: SOFA 1:",
        "Sepsis-3 not met: infection not suspected",
        "exclusion criterion:",
        "endotype intermediate: not a randomized stratum",
    ):
        assert any(r.startswith(start) for r in reasons), start
    assert any("over the pre-infection SOFA 2" in r for r in reasons)
    assert endotypes[("mals", "randomized")] >= 1 and endotypes[("immunoparalysis", "randomized")] >= 1
    assert endotypes[("intermediate", "randomized")] == 0 and endotypes[("intermediate", "ineligible")] >= 1
    # screened over the last days, none in the future
    assert all(now - timedelta(days=5) < t < now for t in screened_at)


def test_casebook_has_daily_forms_with_the_derived_sofa(demo: tuple[str, DemoInfo]) -> None:
    url, info = demo
    daily = 0
    totals: list[list[int]] = []
    with transaction(get_engine(url)) as s:
        user = s.scalars(select(User).where(User.role == "monitor")).one()
        actor = service.actor_for(user)
        randomized = list(s.scalars(select(Participant).where(Participant.status == "randomized")))
        for p in randomized:
            book = datamanagement.casebook(s, actor, info.trial_id, p.id)
            visits = {v["visit"]: v for v in book["visits"]}
            baseline = visits["baseline"]["forms"]["biomarkers"]
            assert baseline is not None and baseline["values"]["ferritin_ng_ml"] > 0
            course = []
            for day in range(1, 16):
                record = visits[f"day{day}"]["forms"]["daily"]
                if record is None:
                    continue
                daily += 1
                assert record["study_day"] == day
                derived = record["derived"]
                assert not any(k.startswith("sofa") for k in record["values"])  # never typed
                assert derived["sofa_total"] == sum(derived[k] for k in SOFA_PARTS)
                course.append(derived["sofa_total"])
            totals.append(course)
        stored = s.scalar(select(func.count()).select_from(FormRecord).where(FormRecord.form_id == "daily"))
        units = {
            v["unit"]
            for r in s.scalars(select(FormRecord))
            for v in r.entered.values()
            if isinstance(v, dict)
        }
    assert daily == stored and daily >= len(randomized)
    assert {"umol/L", "kPa", "%", "ug/L"} <= units  # typed in the sites' units, converted by the form
    # a plausible course: septic on day 1 on average, better by the last day entered
    first = [c[0] for c in totals if c]
    assert sum(first) / len(first) >= 3 and all(0 <= t <= 20 for c in totals for t in c)
    followed = [c for c in totals if len(c) >= 2]
    assert sum(c[-1] < c[0] for c in followed) > sum(c[-1] > c[0] for c in followed), totals


def test_work_lists_queries_and_adverse_event(demo: tuple[str, DemoInfo]) -> None:
    url, info = demo
    report = data_management_report(url, info.trial_id)
    counts = report["visits"]["counts"]
    assert 1 <= counts["overdue"] <= 6 and counts["done"] > counts["overdue"] and counts["upcoming"] > 0
    queries = report["queries"]
    assert 1 <= len(queries) <= 2 and all(q["state"] == "open" for q in queries)
    assert {q["raised_by"] for q in queries} == {"demo-monitor"}
    with transaction(get_engine(url)) as s:
        monitor = service.actor_for(s.scalars(select(User).where(User.role == "monitor")).one())
        events = service.list_adverse_events(s, monitor, info.trial_id)
    assert len(events) == 1
    ae = events[0]
    assert ae["term"] and ae["meddra_code"] and len(ae["meddra_code"]) == 8 and ae["ctcae_grade"] in (1, 2, 3)


def test_the_audit_chain_verifies(demo: tuple[str, DemoInfo]) -> None:
    url, _ = demo
    result = verify_audit(url)
    assert result.ok, str(result)


def test_the_same_seed_gives_the_same_cohort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMMUNOSTRAT_BCRYPT_ROUNDS", "4")
    first = create_demo(f"sqlite:///{tmp_path / 'a.db'}", patients=8, days=2)
    second = create_demo(f"sqlite:///{tmp_path / 'b.db'}", patients=8, days=2)
    assert (first.screened, first.eligible, first.randomized) == (
        second.screened,
        second.eligible,
        second.randomized,
    )
    assert first.users["admin"][1] != second.users["admin"][1]  # passwords are fresh each time
