"""A demo ImmunoSep-style trial: four sites, one user per role (passwords generated now and shown
once), and a screened cohort with biomarkers in mixed units, the eligible randomized and followed
for a week. Synthetic data from a fixed generator: no real patients."""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from immunostrat.trial import service
from immunostrat.trial.audit import Actor
from immunostrat.trial.db import transaction
from immunostrat.trial.ops import open_db
from immunostrat.trial.schemas import (
    ROLES,
    AssessmentIn,
    ObservationIn,
    ScreeningIn,
    SiteSpec,
    TrialSpec,
    UserIn,
    parse,
)

DEMO_CODE = "immunosep-demo"
DEMO_SITES = (
    ("ATH", "Demo hospital A"),
    ("NIJ", "Demo hospital B"),
    ("JEN", "Demo hospital C"),
    ("LYO", "Demo hospital D"),
)
_FERRITIN_UNITS = (("ng/mL", 1.0), ("ug/L", 1.0), ("mg/L", 0.001), ("pmol/L", 2.247))


@dataclass
class DemoInfo:
    db_url: str
    trial_id: int
    trial_code: str
    seed_hex: str
    users: dict[str, tuple[str, str]] = field(default_factory=dict)
    """role -> (username, password); the passwords exist nowhere else."""
    screened: int = 0
    eligible: int = 0
    randomized: int = 0


def _screening(rng: random.Random, i: int, start: datetime) -> ScreeningIn:
    kind = rng.choices(["mals", "immunoparalysis", "intermediate"], weights=[20, 43, 37])[0]
    ferritin = rng.uniform(5000, 30000) if kind == "mals" else rng.lognormvariate(6.8, 0.6)
    ferritin = min(ferritin, 4000.0) if kind != "mals" else ferritin
    hla = rng.uniform(800, 4800) if kind != "intermediate" else rng.uniform(5600, 30000)
    unit, factor = _FERRITIN_UNITS[i % len(_FERRITIN_UNITS)]
    when = start + timedelta(hours=6 * i)
    return ScreeningIn(
        site=DEMO_SITES[i % len(DEMO_SITES)][0],
        age=round(rng.uniform(25, 88)),
        sex="F" if rng.random() < 0.4 else "M",
        weight_kg=round(rng.uniform(50, 110), 1),
        infection_site=rng.choice(["CAP", "HAP", "VAP", "bacteremia"]),
        septic_shock=rng.random() < 0.3,
        baseline_sofa=rng.randint(2, 14),
        exclusions={"neutropenia": rng.random() < 0.05, "do_not_resuscitate": rng.random() < 0.05},
        observations=[
            ObservationIn(concept="ferritin", value=round(ferritin * factor, 3), unit=unit, time=when),
            ObservationIn(concept="mhla_dr", value=round(hla), unit="AB/C", time=when),
            ObservationIn(
                concept="creatinine",
                value=round(rng.uniform(0.6, 3.5) * (88.4 if i % 2 else 1.0), 2),
                unit="umol/L" if i % 2 else "mg/dL",
                time=when,
            ),
        ],
    )


def create_demo(db_url: str, *, patients: int = 40, days: int = 7) -> DemoInfo:
    """Create the demo trial in ``db_url`` (a fresh SQLite file is the usual choice)."""
    engine = open_db(db_url)
    rng = random.Random(20251208)
    system = Actor("demo-setup", "admin")
    with transaction(engine) as session:
        setup = service.setup_trial(
            session,
            system,
            TrialSpec(
                code=DEMO_CODE,
                title="ImmunoSep-style demo: anakinra (MALS) / interferon-gamma (immunoparalysis) vs placebo",
                sites=[SiteSpec(code=c, name=n) for c, n in DEMO_SITES],
                slots_per_stratum=60,
            ),
        )
        info = DemoInfo(db_url, setup.trial_id, setup.code, setup.seed_hex)
        for role in ROLES:
            username, password = f"demo-{role}", secrets.token_urlsafe(12)
            spec = parse(UserIn, {"username": username, "password": password, "role": role})
            service.create_user(session, system, spec)
            info.users[role] = (username, password)
    investigator = Actor("demo-investigator", "investigator")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=days + patients // 4)
    for i in range(patients):
        with transaction(engine) as session:
            result = service.screen(session, investigator, info.trial_id, _screening(rng, i, start))
            info.screened += 1
            if not result.eligible:
                continue
            info.eligible += 1
            service.randomize(session, investigator, info.trial_id, result.participant_id, f"demo-{i}")
            info.randomized += 1
            sofa = rng.randint(4, 12)
            for day in range(1, days + 1):
                sofa = max(0, sofa + rng.choice([-2, -1, -1, 0, 0, 1]))
                parts = _split(sofa, rng)
                service.record_assessment(
                    session,
                    investigator,
                    info.trial_id,
                    result.participant_id,
                    AssessmentIn(day=day, doses_given=3, **parts),
                )
    return info


def _split(total: int, rng: random.Random) -> dict[str, Any]:
    names = list(service.SOFA_FIELDS)
    parts = dict.fromkeys(names, 0)
    for _ in range(min(total, 24)):
        choices = [n for n in names if parts[n] < 4]
        parts[rng.choice(choices)] += 1
    return parts
