"""The demo trial: the shipped ImmunoSep template (forms, visit schedule, Sepsis-3 at screening) at
four demo sites, one user per role (passwords generated now and shown once), and a screened cohort
followed for up to a week. Synthetic data from a fixed generator: no real patients.

Everything goes through the functions the API calls: screening (``service.screen``: the template's
eligibility with Sepsis-3 scored from the screening observations), randomization, the visit forms
(``forms.save_form``, the PUT .../visits/{visit}/forms/{form}; SOFA is derived by the daily form,
never typed), a monitor's queries (``datamanagement.raise_query``) and an adverse event.

Dates are relative to today: the cohort is screened over the last ``days`` days, so the earliest
participant reaches study day ``days`` today and every visit of the schedule beyond the data entered
is still ahead. The services stamp the time they run; the demo then sets the screening and
randomization times of each participant to its synthetic time (the randomization date anchors the
visit windows). Those columns are not part of the audited values; the audit trail keeps the real
time the demo was created.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from immunostrat.trial import datamanagement, forms, service
from immunostrat.trial.audit import Actor
from immunostrat.trial.db import transaction
from immunostrat.trial.models import Allocation, Participant
from immunostrat.trial.ops import load_trial_spec, open_db, template_path
from immunostrat.trial.passwords import hash_password
from immunostrat.trial.schemas import (
    ROLES,
    AdverseEventIn,
    FormIn,
    ObservationIn,
    QueryIn,
    ScreeningIn,
    Sex,
    SiteSpec,
    TrialSpec,
    UserIn,
    parse,
)

DEMO_CODE = "immunosep-demo"
DEMO_TEMPLATE = "immunosep"
DEMO_SITES = (
    ("ATH", "Demo hospital A"),
    ("NIJ", "Demo hospital B"),
    ("JEN", "Demo hospital C"),
    ("LYO", "Demo hospital D"),
)
DEMO_SEED = 20251208

# The units each demo site types (what its laboratory reports): the forms and the screening convert.
_SITE_UNITS: dict[str, dict[str, str]] = {
    "ATH": {"ferritin": "ng/mL", "creatinine": "mg/dL", "bilirubin": "mg/dL", "pao2": "mmHg", "fio2": ""},
    "NIJ": {"ferritin": "ug/L", "creatinine": "umol/L", "bilirubin": "umol/L", "pao2": "kPa", "fio2": ""},
    "JEN": {"ferritin": "mg/L", "creatinine": "mg/dL", "bilirubin": "mg/dL", "pao2": "mmHg", "fio2": "%"},
    "LYO": {"ferritin": "pmol/L", "creatinine": "umol/L", "bilirubin": "umol/L", "pao2": "mmHg", "fio2": "%"},
}
# canonical unit -> site unit: the factor to multiply by (same sources as concepts.yaml)
_TO_SITE_UNIT: dict[tuple[str, str], float] = {
    ("ferritin", "mg/L"): 0.001,
    ("ferritin", "pmol/L"): 2.247,
    ("creatinine", "umol/L"): 88.42,
    ("bilirubin", "umol/L"): 17.1,
    ("pao2", "kPa"): 1 / 7.50062,
    ("fio2", "%"): 100.0,
}
# the units of the template's form fields
_FIELD_UNITS = {"pao2": "mmHg", "fio2": "", "creatinine": "mg/dL", "bilirubin": "mg/dL", "ferritin": "ng/mL"}
_ORGANS = ("respiration", "coagulation", "liver", "cardiovascular", "cns", "renal")
# Organ severity x in [0, 5): SOFA points are floor(x). Value of the measurement at x = 0, 1, ..., 5
# (the band edges of sofa-1996), interpolated in between: a severity course gives a value course.
_EDGES = {
    "pf_ratio": (460.0, 400.0, 300.0, 200.0, 100.0, 55.0),
    "platelets": (320.0, 150.0, 100.0, 50.0, 20.0, 11.0),
    "bilirubin": (0.4, 1.2, 2.0, 6.0, 12.0, 19.0),
    "creatinine": (0.6, 1.2, 2.0, 3.5, 5.0, 7.5),
}
_SAMPLING_DAYS = frozenset({2, 3, 4, 5, 7, 8})  # biomarker samples of the SAP (days 0 and 15 aside)
# Ineligible for a reason other than the endotype, one every fourth screening in turn
_SCREEN_FAILURES = ("not_septic", "exclusion", "minor", "no_infection", "chronic_dysfunction", "exclusion")
_EXCLUSIONS = ("neutropenia", "do_not_resuscitate", "stage_iv_malignancy", "commensal_bacteremia")
# the adverse event: MedDRA PT "Alanine aminotransferase increased", CTCAE v5.0 grade 2
_AE_TERM, _AE_CODE, _AE_GRADE = "Alanine aminotransferase increased", "10001551", 2


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


@dataclass
class _Patient:
    """One synthetic screening: who, when, and the organ severities on the screening day."""

    index: int
    site: str
    kind: str  # "septic" or a screen failure of _SCREEN_FAILURES
    endotype: str
    screened_at: datetime
    randomize_on: date
    age: int
    sex: Sex
    weight_kg: float
    infection_site: str | None
    severity: dict[str, float]
    course: float  # daily change of organ severity (negative: recovering)
    ferritin: float
    hla_dr: float
    crp: float
    pct: float
    exclusions: dict[str, bool] = field(default_factory=dict)
    infection_suspected: bool = True
    pre_infection_sofa: int | None = None


def demo_spec() -> TrialSpec:
    """The ImmunoSep template as the demo trial: its code, a title that says demo, the demo sites."""
    spec = load_trial_spec(template_path(DEMO_TEMPLATE))
    raw = spec.model_dump(mode="json", exclude_none=True)
    raw.update(
        code=DEMO_CODE,
        title=f"{spec.title}: demo with synthetic patients",
        sites=[SiteSpec(code=c, name=n).model_dump() for c, n in DEMO_SITES],
    )
    return parse(TrialSpec, raw)


def _endotypes(rng: random.Random, count: int) -> list[str]:
    """MALS about 2 in 10, immunoparalysis 4 in 10, intermediate 4 in 10 (PROVIDE), shuffled in tens."""
    out: list[str] = []
    while len(out) < count:
        block = ["mals"] * 2 + ["immunoparalysis"] * 4 + ["intermediate"] * 4
        rng.shuffle(block)
        out += block
    return out[:count]


def _patients(rng: random.Random, count: int, days: int, now: datetime) -> list[_Patient]:
    """The cohort in screening order: screened over the ``days`` days before today, each eligible
    patient randomized the next day (study day 1), the last ones today."""
    today = now.date()
    failures = iter(_SCREEN_FAILURES * (count // len(_SCREEN_FAILURES) + 1))
    septic_endotypes = iter(_endotypes(rng, count))
    out: list[_Patient] = []
    for i in range(count):
        kind = next(failures) if i % 4 == 2 else "septic"
        endotype = "immunoparalysis" if kind != "septic" else next(septic_endotypes)
        screened_on = today - timedelta(days=days) + timedelta(days=i * days // count)
        screened_at = datetime.combine(screened_on, time(rng.randint(8, 20), rng.randint(0, 59)), UTC)
        infection_site = rng.choices(["CAP", "HAP", "VAP", "bacteremia"], weights=[45, 20, 20, 15])[0]
        pneumonia = infection_site in ("CAP", "HAP", "VAP")
        level = rng.uniform(0.7, 2.0)
        severity = {o: _clip(level + rng.gauss(0, 0.8)) for o in _ORGANS}
        if pneumonia:
            severity["respiration"] = _clip(severity["respiration"] + 0.8)
        if infection_site == "VAP":
            severity["respiration"] = max(severity["respiration"], 2.2)
        severity["cns"] = min(severity["cns"], 3.5)
        if sum(int(x) for x in severity.values()) < 3:  # septic: at least 3 SOFA points (a margin over 2)
            worst = max(severity, key=lambda o: severity[o])
            severity[worst] = max(severity[worst], 2.4)
            severity["coagulation"] = max(severity["coagulation"], 1.3)
        p = _Patient(
            index=i,
            site=DEMO_SITES[(i + i // 4) % len(DEMO_SITES)][0],
            kind=kind,
            endotype=endotype,
            screened_at=screened_at,
            randomize_on=screened_on + timedelta(days=1),
            age=round(rng.triangular(28, 90, 68)),
            sex="F" if rng.random() < 0.38 else "M",
            weight_kg=round(rng.uniform(52, 112), 1),
            infection_site=infection_site,
            severity=severity,
            # most recover, some stay put, a few get worse
            course=rng.choices([-0.3, -0.2, 0.0, 0.25], weights=[40, 35, 15, 10])[0],
            ferritin=_ferritin(rng, endotype),
            hla_dr=_hla_dr(rng, endotype),
            crp=round(rng.uniform(60, 340)),
            pct=round(rng.lognormvariate(1.2, 0.9), 2),
        )
        _make_screen_failure(rng, p)
        out.append(p)
    return out


def _make_screen_failure(rng: random.Random, p: _Patient) -> None:
    """Shape a screening so that it fails for its reason (and for that reason only)."""
    if p.kind == "not_septic":  # one organ system mildly abnormal: SOFA 1
        p.severity = {o: rng.uniform(0.0, 0.8) for o in _ORGANS}
        p.severity[rng.choice(["respiration", "renal", "cns"])] = rng.uniform(1.1, 1.8)
        p.infection_site = "CAP"
    elif p.kind == "exclusion":
        p.exclusions = {_EXCLUSIONS[(p.index // len(_SCREEN_FAILURES)) % len(_EXCLUSIONS)]: True}
    elif p.kind == "minor":
        p.age = rng.choice([16, 17])
        p.weight_kg = round(rng.uniform(48, 70), 1)
    elif p.kind == "no_infection":  # organ failure without infection (pancreatitis, trauma)
        p.infection_suspected = False
        p.infection_site = None
    elif p.kind == "chronic_dysfunction":  # known chronic kidney disease: a rise of 1 only
        p.pre_infection_sofa = 2
        p.severity = {o: rng.uniform(0.0, 0.8) for o in _ORGANS}
        p.severity["renal"] = rng.uniform(2.2, 2.9)
        p.severity["coagulation"] = rng.uniform(1.1, 1.8)


def _clip(x: float) -> float:
    return min(4.8, max(0.0, x))


def _ferritin(rng: random.Random, endotype: str) -> float:
    if endotype == "mals":
        return min(60000.0, 4800.0 + rng.lognormvariate(8.5, 0.8))
    return min(4000.0, rng.lognormvariate(6.6, 0.7))


def _hla_dr(rng: random.Random, endotype: str) -> float:
    if endotype == "intermediate":
        return rng.uniform(5400, 24000)
    return rng.uniform(900, 4700) if endotype == "immunoparalysis" else rng.uniform(1500, 12000)


def _interpolate(edges: Sequence[float], x: float) -> float:
    k = min(int(x), len(edges) - 2)
    return edges[k] + (edges[k + 1] - edges[k]) * (x - k)


def _in_site_unit(concept: str, value: float, site: str, digits: int) -> tuple[float, str]:
    unit = _SITE_UNITS[site].get(concept, "")
    return round(value * _TO_SITE_UNIT.get((concept, unit), 1.0), digits), unit


def _organ_values(p: _Patient, severity: dict[str, float], rng: random.Random) -> dict[str, float | bool]:
    """Worst values of a day (canonical units) for the organ severities."""
    resp = severity["respiration"]
    ventilated = resp >= 2.5 or p.infection_site == "VAP" or (resp >= 1.8 and rng.random() < 0.4)
    fio2 = round(min(0.9, max(0.21, 0.21 + 0.13 * resp + rng.uniform(-0.03, 0.08))), 2)
    if not ventilated:  # nasal cannula or mask
        fio2 = min(fio2, 0.4)
    pf = _interpolate(_EDGES["pf_ratio"], resp if ventilated else min(resp, 2.9))
    values: dict[str, float | bool] = {
        "pao2": round(max(48.0, pf * fio2), 1),
        "fio2": fio2,
        "mechanical_ventilation": ventilated,
        "platelets": round(_interpolate(_EDGES["platelets"], severity["coagulation"])),
        "bilirubin": round(_interpolate(_EDGES["bilirubin"], severity["liver"]), 2),
        "creatinine": round(_interpolate(_EDGES["creatinine"], severity["renal"]), 2),
        "gcs": _gcs(severity["cns"]),
    }
    cv = severity["cardiovascular"]
    if cv < 1:
        values["map"] = round(88 - 17 * cv + rng.uniform(-3, 3))
    elif cv < 2:
        values["map"] = round(69 - 8 * (cv - 1))
    elif cv < 3:
        values["map"] = round(rng.uniform(64, 72))
        values["dobutamine_rate"] = round(2.5 + 5 * (cv - 2), 1)
    else:
        values["map"] = round(rng.uniform(60, 72))
        values["norepinephrine_rate"] = round(0.03 + 0.07 * (cv - 3) if cv < 4 else 0.12 + 0.5 * (cv - 4), 2)
    renal = severity["renal"]
    values["urine_output_24h"] = round(rng.uniform(700, 2600) if renal < 3 else rng.uniform(250, 480), -1)
    return values


def _gcs(x: float) -> int:
    """GCS for a CNS severity: 15 at 0, then 14-13, 12-10, 9-6 and 5-3 across the SOFA bands."""
    if x < 1:
        return 15
    if x < 2:
        return 14 - int((x - 1) * 2)
    if x < 3:
        return 12 - int((x - 2) * 3)
    if x < 4:
        return 9 - int((x - 3) * 4)
    return 5 - int((x - 4) * 3)


def _screening(p: _Patient, rng: random.Random) -> ScreeningIn:
    """The screening body: the worst values of the screening day in the site's units (Sepsis-3 is
    scored from them) and the endotype sample, charted over the hours before the decision."""
    values = _organ_values(p, p.severity, rng)
    at = p.screened_at
    obs: list[ObservationIn] = []

    def add(concept: str, value: float, unit: str = "", hours_before: float = 0.0) -> None:
        obs.append(
            ObservationIn(concept=concept, value=value, unit=unit, time=at - timedelta(hours=hours_before))
        )

    for concept in ("pao2", "fio2"):
        add(
            concept, *_in_site_unit(concept, float(values[concept]), p.site, 1 if concept == "pao2" else 2), 3
        )
    add("mechanical_ventilation", 1.0 if values["mechanical_ventilation"] else 0.0, "", 3)
    add("platelets", float(values["platelets"]), "10^9/L", 4)
    add("bilirubin", *_in_site_unit("bilirubin", float(values["bilirubin"]), p.site, 2), 4)
    add("creatinine", *_in_site_unit("creatinine", float(values["creatinine"]), p.site, 2), 4)
    add("map", float(values["map"]), "mmHg", 2)
    for drug in ("norepinephrine_rate", "dobutamine_rate"):
        if drug in values:  # charted at the start and on each change: a run of more than an hour
            for hours in (2.5, 1.0, 0.0):
                add(drug, float(values[drug]), "ug/kg/min", hours)
    add("gcs", float(values["gcs"]), "", 1)
    add("ferritin", *_in_site_unit("ferritin", p.ferritin, p.site, 3), 5)
    add("mhla_dr", round(p.hla_dr), "AB/C", 5)
    add("crp", float(p.crp), "mg/L", 5)
    add("procalcitonin", p.pct, "ng/mL", 5)
    return ScreeningIn(
        site=p.site,
        age=p.age,
        sex=p.sex,
        weight_kg=p.weight_kg,
        infection_site=p.infection_site,
        septic_shock="norepinephrine_rate" in values,
        infection_suspected=p.infection_suspected,
        pre_infection_sofa=p.pre_infection_sofa,
        exclusions=p.exclusions,
        observations=obs,
    )


def _field(concept: str, value: float, site: str, digits: int) -> float | dict[str, Any]:
    """A form value: a plain number in the field's unit, or value with the site's unit."""
    entered, unit = _in_site_unit(concept, value, site, digits)
    if unit == _FIELD_UNITS.get(concept, ""):
        return entered
    return {"value": entered, "unit": unit}


def _daily_values(p: _Patient, day: int, severity: dict[str, float], rng: random.Random) -> dict[str, Any]:
    organ = _organ_values(p, severity, rng)
    values: dict[str, Any] = {
        "pao2": _field("pao2", float(organ["pao2"]), p.site, 1),
        "fio2": _field("fio2", float(organ["fio2"]), p.site, 2),
        "mechanical_ventilation": organ["mechanical_ventilation"],
        "platelets": organ["platelets"],
        "bilirubin": _field("bilirubin", float(organ["bilirubin"]), p.site, 2),
        "map": organ["map"],
        "gcs": organ["gcs"],
        "creatinine": _field("creatinine", float(organ["creatinine"]), p.site, 2),
        "urine_output_24h": organ["urine_output_24h"],
        # MALS: anakinra (or placebo) every 8 h; immunoparalysis: interferon-gamma (or placebo) every 48 h
        "doses_given": (3 if rng.random() < 0.93 else 2) if p.endotype == "mals" else day % 2,
    }
    for drug in ("norepinephrine_rate", "dobutamine_rate"):
        if drug in organ:
            values[drug] = organ[drug]
    recovering = p.course < 0
    if day in _SAMPLING_DAYS:
        fall = (0.86 if recovering else 1.02) ** day
        rise = (1.18 if recovering else 0.98) ** day
        values["ferritin_ng_ml"] = _field("ferritin", p.ferritin * fall, p.site, 3)
        values["hla_dr_abc"] = round(min(30000.0, p.hla_dr * rise))
        values["procalcitonin_ng_ml"] = round(p.pct * (0.7 if recovering else 1.05) ** day, 2)
    values["crp_mg_l"] = round(max(3.0, p.crp * (0.78 if recovering else 1.03) ** day))
    if day >= 4:
        values["infection_status"] = (
            ("resolution" if day >= 6 else "intermediate")
            if recovering
            else ("failure" if p.course > 0.1 else "intermediate")
        )
    return values


def _course(p: _Patient, days: int, rng: random.Random) -> list[dict[str, float]]:
    """Organ severities on study days 1..days: day 1 close to the screening day, then the
    patient's course (vasopressors weaned fastest) with day-to-day noise."""
    out: list[dict[str, float]] = []
    severity = dict(p.severity)
    for day in range(1, days + 1):
        pace = 0.3 if day == 1 else 1.0
        severity = {
            o: _clip(
                x
                + pace * p.course * (1.4 if o == "cardiovascular" else 1.0) * rng.uniform(0.5, 1.3)
                + rng.gauss(0, 0.12)
            )
            for o, x in severity.items()
        }
        out.append(severity)
    return out


def _create_users(session: Session, system: Actor) -> tuple[dict[str, tuple[str, str]], dict[str, Actor]]:
    """One user per role, none tied to a site (the care roles reach no trial). Hashed in parallel
    with the service's work factor (IMMUNOSTRAT_BCRYPT_ROUNDS)."""
    accounts = {role: (f"demo-{role}", secrets.token_urlsafe(15)) for role in ROLES}
    with ThreadPoolExecutor(max_workers=4) as pool:
        hashes = dict(zip(accounts, pool.map(lambda a: hash_password(a[1]), accounts.values()), strict=True))
    actors: dict[str, Actor] = {}
    for role, (username, password) in accounts.items():
        spec = parse(UserIn, {"username": username, "password": password, "role": role})
        actors[role] = service.actor_for(
            service.create_user(session, system, spec, password_hash=hashes[role])
        )
    return accounts, actors


def create_demo(db_url: str, *, patients: int = 40, days: int = 7) -> DemoInfo:
    """Create the demo trial in ``db_url`` (a fresh SQLite file is the usual choice)."""
    if patients < 1 or not 1 <= days <= 15:
        raise ValueError("patients >= 1 and 1 <= days <= 15 (the daily visits of the template)")
    engine = open_db(db_url)
    rng = random.Random(DEMO_SEED)
    system = Actor("demo-setup", "admin")
    now = datetime.now(UTC).replace(microsecond=0)
    with transaction(engine) as session:
        setup = service.setup_trial(session, system, demo_spec())
        info = DemoInfo(db_url, setup.trial_id, setup.code, setup.seed_hex)
        info.users, actors = _create_users(session, system)
    investigator, monitor = actors["investigator"], actors["monitor"]
    cohort = _patients(rng, patients, days, now)
    followed: list[tuple[_Patient, int]] = []
    for p in cohort:
        with transaction(engine) as session:
            result = service.screen(session, investigator, info.trial_id, _screening(p, rng))
            _backdate_screening(session, result.participant_id, p.screened_at)
            info.screened += 1
            if not result.eligible:
                continue
            info.eligible += 1
            service.randomize(session, investigator, info.trial_id, result.participant_id, f"demo-{p.index}")
            start = datetime.combine(p.randomize_on, time(rng.randint(1, 11), rng.randint(0, 59)), UTC)
            _backdate_allocation(session, result.participant_id, min(start, now))
            info.randomized += 1
            followed.append((p, result.participant_id))
    late = _late_visits(rng, followed, now.date(), days)
    saved: dict[int, set[str]] = {}
    for p, pid in followed:
        with transaction(engine) as session:
            saved[pid] = _enter_visits(
                session, investigator, info.trial_id, pid, p, days, now.date(), late, rng
            )
    with transaction(engine) as session:
        _monitoring(session, investigator, monitor, info.trial_id, followed, saved, now)
    return info


def _backdate_screening(session: Session, participant_id: int, at: datetime) -> None:
    p = session.get(Participant, participant_id)
    assert p is not None
    p.created_at = at
    decision = service.latest_decision(session, participant_id)
    if decision is not None:
        decision.decided_at = at


def _backdate_allocation(session: Session, participant_id: int, at: datetime) -> None:
    alloc = session.scalars(select(Allocation).where(Allocation.participant_id == participant_id)).one()
    alloc.allocated_at = at


def _late_visits(
    rng: random.Random, followed: list[tuple[_Patient, int]], today: date, days: int
) -> dict[int, set[int]]:
    """Study days not entered although their day is past (the overdue list): the last past day of
    two participants, the last two of a third."""
    candidates = [pid for p, pid in followed if (today - p.randomize_on).days >= 2]
    chosen = rng.sample(candidates, min(3, len(candidates)))
    out: dict[int, set[int]] = {}
    for n, pid in enumerate(chosen):
        p = next(p for p, q in followed if q == pid)
        last_past = min(days, (today - p.randomize_on).days)  # yesterday's study day
        out[pid] = {last_past, last_past - 1} if n == 2 else {last_past}
    return out


def _enter_visits(
    session: Session,
    investigator: Actor,
    trial_id: int,
    pid: int,
    p: _Patient,
    days: int,
    today: date,
    late: dict[int, set[int]],
    rng: random.Random,
) -> set[str]:
    """The baseline biomarkers (day 0, the screening sample) and the daily forms of the days that
    have come (today's for about half), through ``forms.save_form``; returns the visits saved."""
    baseline = {
        "ferritin_ng_ml": _field("ferritin", p.ferritin, p.site, 3),
        "hla_dr_abc": round(p.hla_dr),
        "crp_mg_l": float(p.crp),
        "procalcitonin_ng_ml": p.pct,
    }
    day0 = p.randomize_on - timedelta(days=1)
    forms.save_form(
        session,
        investigator,
        trial_id,
        pid,
        "baseline",
        "biomarkers",
        FormIn(visit_date=day0, values=baseline),
    )
    saved = {"baseline"}
    for day, severity in enumerate(_course(p, days, rng), start=1):
        on = p.randomize_on + timedelta(days=day - 1)
        values = _daily_values(p, day, severity, rng)
        if on > today or day in late.get(pid, set()) or (on == today and rng.random() < 0.5):
            continue
        visit = f"day{day}"
        forms.save_form(
            session, investigator, trial_id, pid, visit, "daily", FormIn(visit_date=on, values=values)
        )
        saved.add(visit)
    return saved


def _monitoring(
    session: Session,
    investigator: Actor,
    monitor: Actor,
    trial_id: int,
    followed: list[tuple[_Patient, int]],
    saved: dict[int, set[str]],
    now: datetime,
) -> None:
    """Two open queries of the demo monitor and one adverse event."""
    with_day2 = [pid for _, pid in followed if "day2" in saved[pid]]
    if with_day2:
        datamanagement.raise_query(
            session,
            monitor,
            trial_id,
            with_day2[0],
            QueryIn(
                visit="day2",
                form="daily",
                field="platelets",
                text="Please confirm the lowest platelet count of day 2 against the laboratory report "
                "(source data verification).",
            ),
        )
    if followed:
        datamanagement.raise_query(
            session,
            monitor,
            trial_id,
            followed[-1][1],
            QueryIn(
                visit="baseline",
                form="biomarkers",
                field="hla_dr_abc",
                text="Was the monocyte HLA-DR sample kept on ice and processed within 4 h of collection? "
                "Please give the processing time.",
            ),
        )
    # on study day 4 (or the latest day entered) of a participant half-way through the cohort
    entered = [(p, pid) for p, pid in followed if "day1" in saved[pid]]
    if entered:
        p, pid = entered[len(entered) // 2]
        day = max(d for d in range(1, 5) if f"day{d}" in saved[pid] or d == 1)
        aware = datetime.combine(p.randomize_on + timedelta(days=day - 1), time(14, 30), UTC)
        service.record_adverse_event(
            session,
            investigator,
            trial_id,
            pid,
            AdverseEventIn(
                day=day,
                term=_AE_TERM,
                meddra_code=_AE_CODE,
                ctcae_grade=_AE_GRADE,
                serious=False,
                related=True,
                outcome="recovering",
                aware_at=min(aware, now),
            ),
        )
