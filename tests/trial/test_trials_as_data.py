"""Each shipped trial file, end to end on SQLite and PostgreSQL: set up from its template, screen
(ineligible ones logged), randomize, capture every visit with derived scores, raise and close a
query, sign a visit, export, and run the trial's analysis plan on the export."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyreadstat
import pytest
from sqlalchemy import func, select

from immunostrat.analysis.runner import run_analysis
from immunostrat.errors import InputError
from immunostrat.scores import mex_sledai, sofa
from immunostrat.trial import datamanagement, forms, ops, service
from immunostrat.trial.audit import Actor, verify_chain
from immunostrat.trial.db import get_engine, transaction
from immunostrat.trial.export import build_export, write_export
from immunostrat.trial.export_files import write_trial_export
from immunostrat.trial.models import FormChange, FormRecord, Participant
from immunostrat.trial.schemas import FormIn, QueryIn, RescreenIn, ScreeningIn, TrialSpec, UserIn

ADMIN = Actor("admin", "admin")
PASSWORD = "violet kettle drums at noon 7"
T = "{}T08:00:00Z"


def _users(engine: Any) -> dict[str, Actor]:
    out = {}
    with transaction(engine) as s:
        for name, role in (("inv", "investigator"), ("mon", "monitor"), ("pharm", "pharmacist")):
            user = service.create_user(
                s, ADMIN, UserIn(username=name, password=PASSWORD, role=role), rounds=4
            )
            out[role] = service.actor_for(user)
    return out


def _setup(url: str, template: str) -> tuple[Any, TrialSpec, int, dict[str, Actor]]:
    engine = get_engine(url)
    spec = ops.load_trial_spec(ops.template_path(template))
    with transaction(engine) as s:
        trial_id = service.setup_trial(s, ADMIN, spec, seed=bytes(range(32))).trial_id
    return engine, spec, trial_id, _users(engine)


def _obs(concept: str, value: float, unit: str = "", when: str | None = None) -> dict[str, Any]:
    return {
        "concept": concept,
        "value": value,
        "unit": unit,
        "time": T.format(when or date.today().isoformat()),
    }


def _screen(engine: Any, actor: Actor, trial_id: int, body: dict[str, Any]) -> service.ScreeningResult:
    with transaction(engine) as s:
        return service.screen(s, actor, trial_id, ScreeningIn.model_validate(body))


REALISTIC = {
    "ferritin": (200, 10000),
    "mhla_dr": (2000, 20000),
    "crp": (10, 200),
    "procalcitonin": (0.1, 20),
    "pao2": (60, 200),
    "fio2": (0.21, 0.8),
    "platelets": (30, 300),
    "bilirubin": (0.3, 5),
    "map": (55, 90),
    "creatinine": (0.5, 4),
    "norepinephrine_rate": (0.02, 0.3),
    "epinephrine_rate": (0.02, 0.2),
    "dopamine_rate": (2, 10),
    "dobutamine_rate": (2, 10),
    "urine_output_24h": (300, 3000),
    "c3": (50, 150),
    "c4": (10, 40),
    "il6": (1, 100),
    "tnf_alpha": (1, 50),
    "anti_dsdna": (10, 300),
    "hemoglobin": (9, 14),
    "wbc": (3, 10),
    "lymphocytes": (0.5, 3),
}


def _value(rng: random.Random, f: Any) -> Any:
    if f.type == "boolean":
        return rng.random() < 0.3
    if f.type == "choice":
        return rng.choice(f.choices)
    low, high = REALISTIC.get(f.concept or "", f.allowed_range() or (0, 10))
    if f.type == "integer":
        return rng.randint(int(low), int(min(high, low + 20)))
    return round(rng.uniform(low, high), 2)


def _form_values(rng: random.Random, spec: TrialSpec, form_id: str, visit_day: int) -> dict[str, Any]:
    form = spec.forms[form_id]
    values = {f.name: _value(rng, f) for f in form.fields if f.required or rng.random() < 0.7}
    if "last_contact_day" in values:
        values["last_contact_day"] = visit_day
        values.pop("death_day", None)
        values.pop("discharge_day", None)
    if "doses_given" in values:
        values["doses_given"] = 1
    return values


def _capture_all(engine: Any, spec: TrialSpec, trial_id: int, pid: int, actor: Actor, seed: int) -> int:
    rng = random.Random(seed)
    with transaction(engine) as s:
        p = s.get(Participant, pid)
        assert p is not None
        randomized_on = forms.randomization_date(s, p)
    assert randomized_on is not None
    saved = 0
    for visit in spec.schedule():
        on = randomized_on + timedelta(days=visit.day - spec.day_of_randomization)
        for form_id in visit.forms:
            body = FormIn(visit_date=on, values=_form_values(rng, spec, form_id, visit.day))
            with transaction(engine) as s:
                record, _ = forms.save_form(s, actor, trial_id, pid, visit.id, form_id, body, today=on)
                assert record.study_day == visit.day
            saved += 1
    return saved


SCREENINGS: dict[str, dict[str, Any]] = {
    # MALS (ferritin 9 mg/L = 9,000 ng/mL) with every SOFA system recorded: Sepsis-3 met
    "immunosep": {
        "eligible": {
            "site": "S01",
            "age": 64,
            "sex": "M",
            "weight_kg": 70,
            "infection_suspected": True,
            "observations": [
                _obs("ferritin", 9, "mg/L"),
                _obs("mhla_dr", 3000, "AB/C"),
                _obs("fio2", 40, "%"),
                _obs("pao2", 9.0, "kPa"),
                _obs("platelets", 120, "x10^3/uL"),
                _obs("bilirubin", 40, "umol/L"),
                _obs("map", 62, "mmHg"),
                _obs("gcs", 14),
                _obs("creatinine", 180, "umol/L"),
            ],
        },
        "minor": {
            "site": "S01",
            "age": 17,
            "sex": "F",
            "infection_suspected": True,
            "observations": [_obs("ferritin", 9, "mg/L"), _obs("mhla_dr", 3000, "AB/C")],
        },
    },
    "sle-secretome": {
        "eligible": {
            "site": "S01",
            "age": 31,
            "sex": "F",
            "form": {"sle_classified": "yes", "moderately_active": "yes"},
        },
        "minor": {
            "site": "S01",
            "age": 17,
            "sex": "F",
            "form": {"sle_classified": "yes", "moderately_active": "yes"},
        },
    },
    "sepcell": {
        "eligible": {
            "site": "S01",
            "age": 58,
            "sex": "M",
            "form": {"cap_confirmed": "yes", "organ_support": "yes", "hours_since_support": 6},
        },
        "minor": {
            "site": "S01",
            "age": 17,
            "sex": "M",
            "form": {"cap_confirmed": "yes", "organ_support": "yes", "hours_since_support": 6},
        },
    },
}


@pytest.mark.parametrize("template", ["immunosep", "sle-secretome", "sepcell"])
def test_trial_end_to_end(db_url: str, template: str, tmp_path: Path) -> None:
    engine, spec, trial_id, who = _setup(db_url, template)
    inv, mon = who["investigator"], who["monitor"]
    bodies = SCREENINGS[template]

    minor = _screen(engine, inv, trial_id, bodies["minor"])  # logged, not refused
    assert not minor.eligible and "age 17 below the minimum 18" in (minor.exclusion_reason or "")

    randomized = []
    for i in range(4):
        body = dict(bodies["eligible"])
        body["site"] = spec.sites[i % len(spec.sites)].code
        result = _screen(engine, inv, trial_id, body)
        assert result.eligible, result.exclusion_reason
        with transaction(engine) as s:
            service.randomize(s, inv, trial_id, result.participant_id)
        randomized.append(result.participant_id)

    with transaction(engine) as s:
        log = service.screening_log(s, mon, trial_id)
    assert len(log) == 5 and sum(1 for r in log if r["eligible"] is False) == 1

    saved = sum(_capture_all(engine, spec, trial_id, pid, inv, seed) for seed, pid in enumerate(randomized))
    per_participant = sum(len(v.forms) for v in spec.schedule())
    assert saved == per_participant * len(randomized)

    # derived scores are those of the scores package on the saved values, never typed
    with transaction(engine) as s:
        records = list(s.scalars(select(FormRecord).where(FormRecord.visit_id != "screening")))
    scored = [r for r in records if spec.forms[r.form_id].derived]
    assert scored
    for r in scored:
        d = spec.forms[r.form_id].derived[0]
        if d.score == "sofa":
            row = {k: float(v) for k, v in r.values.items() if not isinstance(v, str)}
            row["pao2_fio2_ratio"] = round(r.values["pao2"] / r.values["fio2"], 6)
            expected = sofa(pl.DataFrame([row])).row(0, named=True)
            assert r.derived["sofa_total"] == expected["sofa_total"]
        else:
            row = {k: float(v) for k, v in r.values.items() if not isinstance(v, str)}
            assert (
                r.derived["mex_sledai"]
                == mex_sledai(pl.DataFrame([row])).row(0, named=True)["mex_sledai_total"]
            )

    # a query raised by the monitor, answered by the site, closed by the monitor
    first = spec.schedule()[0]
    form_id = next(f for f in first.forms if spec.forms[f].fields)
    field = spec.forms[form_id].fields[0].name
    with transaction(engine) as s:
        q = datamanagement.raise_query(
            s,
            mon,
            trial_id,
            randomized[0],
            QueryIn(visit=first.id, form=form_id, field=field, text="please confirm"),
        )
        qid = q.id
    with transaction(engine) as s:
        assert (
            datamanagement.answer_query(s, inv, trial_id, qid, "confirmed against the source").state
            == "answered"
        )
    with transaction(engine) as s:
        assert datamanagement.close_query(s, mon, trial_id, qid, "resolved").state == "closed"

    # the investigator signs the first visit: password again, the trial's meaning
    with transaction(engine) as s:
        sig = datamanagement.sign_visit(
            s, inv, trial_id, randomized[0], first.id, PASSWORD, spec.signature_meaning
        )
        assert sig.content_sha256
    with transaction(engine) as s:
        book = datamanagement.casebook(s, mon, trial_id, randomized[0])
    visit0 = book["visits"][0]
    assert visit0["signature"]["state"] == "valid"
    assert [q["state"] for q in visit0["queries"]].count("closed") >= 1

    with transaction(engine) as s:
        report = datamanagement.visit_report(s, mon, trial_id, today=date.today() + timedelta(days=200))
    assert report["counts"]["overdue"] == 0 and report["counts"]["done"] == len(randomized) * len(
        spec.schedule()
    )

    with transaction(engine) as s:
        service.lock_trial(s, ADMIN, trial_id)
        tables = build_export(s, Actor("stat", "statistician"), trial_id, blinded=False)
        assert verify_chain(s).ok
    out = write_export(tables, tmp_path / "export")
    _check_regulatory_exports(engine, trial_id, spec, tmp_path, n_screened=5, n_randomized=len(randomized))
    assert tables.participants.height == len(randomized)
    assert json.loads((out / "manifest.json").read_text())["trial_id"] == spec.code
    results = run_analysis(out, spec.analysis_plan)
    assert results["endpoints"], "the plan ran no endpoint"
    primary = next(e for e in results["endpoints"] if e["role"] == "primary")
    result = primary["result"]
    if "counts" in result:  # binary endpoints
        analysed = sum(int(c["n"]) for c in result["counts"].values())
    else:  # continuous: change from baseline
        analysed = sum(int(s["change"]["n"]) for s in result["summary"].values())
    assert analysed == len(randomized), result


def _check_regulatory_exports(
    engine: Any, trial_id: int, spec: TrialSpec, tmp_path: Path, n_screened: int, n_randomized: int
) -> None:
    """ODM 1.3.2, XPT, Stata and SPSS, each read back by an independent reader."""
    stat = Actor("stat", "statistician")
    with transaction(engine) as s:
        odm_dir = write_trial_export(s, stat, trial_id, False, "odm", tmp_path / "odm")
    root = ET.parse(odm_dir / f"{spec.code}.odm.xml").getroot()
    ns = {"odm": "http://www.cdisc.org/ns/odm/v1.3"}
    assert root.get("ODMVersion") == "1.3.2"
    assert len(root.findall(".//odm:SubjectData", ns)) == n_screened
    item_oids = {i.get("OID") for i in root.findall(".//odm:ItemDef", ns)}
    derived = [name for f in spec.forms.values() for d in f.derived for _, name in d.columns()]
    assert all(any(str(oid).endswith(f".{name}") for oid in item_oids) for name in derived)
    assert root.findall(".//odm:AuditRecord", ns) and root.findall(".//odm:Signature", ns)
    for fmt, reader in (
        ("xpt", pyreadstat.read_xport),
        ("dta", pyreadstat.read_dta),
        ("sav", pyreadstat.read_sav),
    ):
        with transaction(engine) as s:
            folder = write_trial_export(s, stat, trial_id, False, fmt, tmp_path / fmt)
        frame, meta = reader(str(folder / f"participants.{fmt}"))
        assert len(frame) == n_randomized and any(meta.column_labels)
        dictionary = pl.read_csv(folder / "data_dictionary.csv")
        assert {"participants", "daily_assessments", "outcomes"} <= set(dictionary["table"].to_list())


def test_a_change_asks_a_reason_keeps_history_and_voids_the_signature(sqlite_url: str) -> None:
    engine, spec, trial_id, who = _setup(sqlite_url, "sle-secretome")
    inv = who["investigator"]
    result = _screen(engine, inv, trial_id, SCREENINGS["sle-secretome"]["eligible"])
    with transaction(engine) as s:
        service.randomize(s, inv, trial_id, result.participant_id)
    pid = result.participant_id
    today = date.today()
    values = _form_values(random.Random(3), spec, "sle_visit", 0)
    values.update({k: False for k in values if k.startswith("mex_")})
    values.update(
        {"mex_arthritis": True, "platelets": 250.0, "hemoglobin": 13.0, "wbc": 6.0, "lymphocytes": 2.0}
    )
    with transaction(engine) as s:
        record, _ = forms.save_form(
            s, inv, trial_id, pid, "day0", "sle_visit", FormIn(visit_date=today, values=values)
        )
        assert record.derived["mex_sledai"] == 2  # arthritis 2 (domain.md B4)
        forms.save_form(
            s, inv, trial_id, pid, "day0", "injection", FormIn(visit_date=today, values={"injected": "yes"})
        )
    with transaction(engine) as s:
        datamanagement.sign_visit(s, inv, trial_id, pid, "day0", PASSWORD, spec.signature_meaning)

    changed = {**values, "mex_serositis": True}
    with transaction(engine) as s, pytest.raises(InputError, match="needs a reason"):
        forms.save_form(s, inv, trial_id, pid, "day0", "sle_visit", FormIn(visit_date=today, values=changed))
    with transaction(engine) as s:
        record, _ = forms.save_form(
            s,
            inv,
            trial_id,
            pid,
            "day0",
            "sle_visit",
            FormIn(visit_date=today, values=changed, reason="serositis found on review of the notes"),
        )
        assert record.version == 2 and record.derived["mex_sledai"] == 4
    with transaction(engine) as s:
        changes = list(s.scalars(select(FormChange)))
        assert [(c.field, c.old, c.new) for c in changes] == [("mex_serositis", "false", "true")]
        assert changes[0].reason == "serositis found on review of the notes"
        book = datamanagement.casebook(s, who["monitor"], trial_id, pid)
        assert book["visits"][0]["signature"]["state"] == "void"
        assert forms.history(s, who["monitor"], trial_id, record.id)[0]["new"] is True


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"c3_mg_dl": {"value": 1.2, "unit": "mmHg"}}, "sle_visit.c3_mg_dl", "cannot measure"),
        ({"c3_mg_dl": 900}, "sle_visit.c3_mg_dl", "out of range"),
        ({"c3_mg_dl": float("inf")}, "sle_visit.c3_mg_dl", "finite"),
        ({"colour": "blue"}, "sle_visit.colour", "unknown field"),
        ({"mex_fever": "sometimes"}, "sle_visit.mex_fever", "yes/no"),
    ],
)
def test_bad_form_input_names_form_field_value_and_writes_nothing(
    sqlite_url: str, values: dict[str, Any], field: str, message: str
) -> None:
    engine, spec, trial_id, who = _setup(sqlite_url, "sle-secretome")
    inv = who["investigator"]
    result = _screen(engine, inv, trial_id, SCREENINGS["sle-secretome"]["eligible"])
    with transaction(engine) as s:
        service.randomize(s, inv, trial_id, result.participant_id)
    good = _form_values(random.Random(1), spec, "sle_visit", 0)
    with transaction(engine) as s, pytest.raises(InputError) as caught:
        forms.save_form(
            s,
            inv,
            trial_id,
            result.participant_id,
            "day0",
            "sle_visit",
            FormIn(visit_date=date.today(), values={**good, **values}),
        )
    assert caught.value.field == field and message in str(caught.value)
    with transaction(engine) as s:
        assert (
            s.scalar(select(func.count()).select_from(FormRecord).where(FormRecord.visit_id != "screening"))
            == 0
        )


def test_missing_required_field_and_visit_outside_window_are_refused(sqlite_url: str) -> None:
    engine, spec, trial_id, who = _setup(sqlite_url, "sle-secretome")
    inv = who["investigator"]
    result = _screen(engine, inv, trial_id, SCREENINGS["sle-secretome"]["eligible"])
    with transaction(engine) as s:
        service.randomize(s, inv, trial_id, result.participant_id)
    good = _form_values(random.Random(1), spec, "sle_visit", 0)
    missing = {k: v for k, v in good.items() if k != "c3_mg_dl"}
    with transaction(engine) as s, pytest.raises(InputError, match="required field missing") as caught:
        forms.save_form(
            s,
            inv,
            trial_id,
            result.participant_id,
            "day0",
            "sle_visit",
            FormIn(visit_date=date.today(), values=missing),
        )
    assert caught.value.field == "sle_visit.c3_mg_dl"
    # not done, with the reason: accepted, and the field is absent, never guessed
    with transaction(engine) as s:
        record, _ = forms.save_form(
            s,
            inv,
            trial_id,
            result.participant_id,
            "day0",
            "sle_visit",
            FormIn(visit_date=date.today(), values=missing, not_done={"c3_mg_dl": "sample haemolysed"}),
        )
        assert "c3_mg_dl" not in record.values and record.not_done == {"c3_mg_dl": "sample haemolysed"}
    late = date.today() + timedelta(days=30)  # day 22's window is days 20-24
    with transaction(engine) as s, pytest.raises(InputError, match="outside its window") as caught:
        forms.save_form(
            s,
            inv,
            trial_id,
            result.participant_id,
            "day22",
            "sle_visit",
            FormIn(visit_date=late, values=good),
            today=late,
        )
    assert caught.value.field == "sle_visit.visit_date"


def test_sofa_is_scored_from_components_in_any_unit(sqlite_url: str) -> None:
    engine, _spec, trial_id, who = _setup(sqlite_url, "immunosep")
    inv = who["investigator"]
    result = _screen(engine, inv, trial_id, SCREENINGS["immunosep"]["eligible"])
    with transaction(engine) as s:
        service.randomize(s, inv, trial_id, result.participant_id)
    # PaO2 9 kPa = 67.5 mmHg on FiO2 0.5: 135 mmHg, ventilated -> 3; platelets 45 x10^3/uL -> 3;
    # bilirubin 40 umol/L = 2.34 mg/dL -> 2; MAP 72, no drug -> 0; GCS 15 -> 0; creatinine
    # 180 umol/L = 2.04 mg/dL -> 2 (sofa-1996.yaml bands): total 10
    values = {
        "pao2": {"value": 9.0, "unit": "kPa"},
        "fio2": {"value": 50, "unit": "%"},
        "mechanical_ventilation": True,
        "platelets": {"value": 45, "unit": "10^3/uL"},
        "bilirubin": {"value": 40, "unit": "umol/L"},
        "map": 72,
        "gcs": 15,
        "creatinine": {"value": 180, "unit": "umol/L"},
        "doses_given": 3,
    }
    with transaction(engine) as s:
        record, opened = forms.save_form(
            s,
            inv,
            trial_id,
            result.participant_id,
            "day1",
            "daily",
            FormIn(visit_date=date.today(), values=values),
        )
    assert record.derived == {
        "sofa_respiration": 3,
        "sofa_coagulation": 3,
        "sofa_liver": 2,
        "sofa_cardiovascular": 0,
        "sofa_cns": 0,
        "sofa_renal": 2,
        "sofa_total": 10,
    }
    assert (
        record.values["pao2"] == pytest.approx(67.5056, abs=1e-3) and record.entered["pao2"]["unit"] == "kPa"
    )
    assert opened == []
    # an edit check of severity warning saves the form and opens a query on the field
    with transaction(engine) as s:
        _, opened = forms.save_form(
            s,
            inv,
            trial_id,
            result.participant_id,
            "day2",
            "daily",
            FormIn(visit_date=date.today() + timedelta(days=1), values={**values, "platelets": 5}),
            today=date.today() + timedelta(days=1),
        )
        assert [(q.field, q.state, q.raised_by) for q in opened] == [("platelets", "open", "edit check")]


def test_not_assessable_patient_is_rescreened_on_the_same_pseudonym(sqlite_url: str) -> None:
    engine, _spec, trial_id, who = _setup(sqlite_url, "immunosep")
    inv = who["investigator"]
    body = dict(SCREENINGS["immunosep"]["eligible"])
    # one organ system recorded (platelets 120 x10^3/uL: 1 point): Sepsis-3 cannot be decided
    body["observations"] = [
        o for o in body["observations"] if o["concept"] in ("ferritin", "mhla_dr", "platelets")
    ]
    first = _screen(engine, inv, trial_id, body)
    assert not first.eligible and first.sepsis3 is not None and first.sepsis3["status"] == "not assessable"
    with transaction(engine) as s:
        again = service.rescreen(
            s,
            inv,
            trial_id,
            first.participant_id,
            RescreenIn(
                observations=[_obs("creatinine", 180, "umol/L")],
                infection_suspected=True,
                reason="the creatinine arrived",
            ),
        )
    assert again.eligible and again.pseudonym == first.pseudonym
    with transaction(engine) as s:
        log = service.screening_log(s, inv, trial_id)
        assert [(r["pseudonym"], r["decisions"], r["status"]) for r in log] == [
            (first.pseudonym, 2, "eligible")
        ]
        service.randomize(s, inv, trial_id, first.participant_id)


def test_unblinded_list_shows_allocated_slots_only(sqlite_url: str) -> None:
    engine, _spec, trial_id, who = _setup(sqlite_url, "sepcell")
    inv, pharm = who["investigator"], who["pharmacist"]
    ids = []
    for _ in range(3):
        r = _screen(engine, inv, trial_id, SCREENINGS["sepcell"]["eligible"])
        with transaction(engine) as s:
            service.randomize(s, inv, trial_id, r.participant_id)
        ids.append(r.participant_id)
    with transaction(engine) as s:
        rows = service.randomization_list(s, pharm, trial_id)
        view = service.trial_view(s, service.trial_by_id(s, trial_id), pharm)
    assert [r["sequence"] for r in rows] == [1, 2, 3]
    assert all("block_size" not in r and "seq" not in r for r in rows)
    assert "block_multipliers" not in view["config"] and "slots_per_stratum" not in view["config"]


def test_trial_file_errors_name_file_key_and_expectation(tmp_path: Path) -> None:
    text = ops.template_path("sepcell").read_text().replace("concept: platelets", "concept: platelet_count")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(InputError) as caught:
        ops.load_trial_spec(bad)
    assert caught.value.file == str(bad) and "platelet_count" in str(caught.value)
    assert caught.value.field is not None and caught.value.field.startswith("forms.daily")
