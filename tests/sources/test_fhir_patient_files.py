"""The FHIR reader: one patient at the bedside (``read_fhir``) and files of many patients
(``read_fhir_file``): body weight and height, site codes, NDJSON, and what is not FHIR."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from immunostrat.concepts.site_codes import parse_site_codes
from immunostrat.errors import InputError
from immunostrat.sources.fhir_patient import read_fhir, read_fhir_file

LOINC = "http://loinc.org"
SITE = "http://lab.example.org/codes"
SITE_CODES = parse_site_codes({"codes": {f"{SITE}|HLA": {"concept": "mhla_dr", "unit": "AB/C"}}}, "site.yaml")


def obs(
    oid: str,
    code: str,
    value: Any,
    unit: str | None,
    *,
    subject: str = "Patient/p1",
    system: str = LOINC,
    time: str = "2025-03-01T08:00:00Z",
    ucum: str | None = None,
) -> dict[str, Any]:
    quantity: dict[str, Any] = {"value": value}
    if unit is not None:
        quantity["unit"] = unit
    if ucum is not None:
        quantity |= {"system": "http://unitsofmeasure.org", "code": ucum}
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": {"reference": subject},
            "code": {"coding": [{"system": system, "code": code}]}, "effectiveDateTime": time,
            "valueQuantity": quantity}  # fmt: skip


PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1955-03-01"}


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


# ---------------------------------------------------------------- body weight and height


@pytest.mark.parametrize(
    ("code", "value", "unit", "ucum", "weight_kg"),
    [
        ("29463-7", 70, "kg", None, 70.0),
        ("3141-9", 70000, "g", None, 70.0),
        ("29463-7", 154.324, "lb", None, 70.0),
        ("29463-7", 154.324, "pounds", "[lb_av]", 70.0),
    ],
)
def test_body_weight_fills_weight_kg(
    code: str, value: float, unit: str, ucum: str | None, weight_kg: float
) -> None:
    data = read_fhir(bundle(PATIENT, obs("w", code, value, unit, ucum=ucum)))
    assert data.patient["weight_kg"] == pytest.approx(weight_kg, abs=0.001)
    assert data.records == []  # a body measurement is the patient's, not an observation


def test_latest_weight_wins_and_height_is_read() -> None:
    data = read_fhir(
        bundle(
            PATIENT,
            obs("w2", "29463-7", 72, "kg", time="2025-03-02T08:00:00Z"),
            obs("w1", "29463-7", 80, "kg", time="2025-03-01T08:00:00+01:00"),
            obs("w3", "3141-9", 75, "kg", time="2025-03-01T23:00:00Z"),
            obs("h", "8302-2", 65, "[in_i]"),
        )
    )
    assert data.patient["weight_kg"] == 72.0
    assert data.patient["height_cm"] == pytest.approx(165.1)


@pytest.mark.parametrize(
    ("resource", "field", "value"),
    [
        (obs("w", "29463-7", 70, "stone"), "Observation/w.valueQuantity.unit", "stone"),
        (obs("w", "29463-7", 7000, "kg"), "Observation/w.valueQuantity.value", 7000),
        (obs("w", "29463-7", 70, "g"), "Observation/w.valueQuantity.value", 70),  # 0.07 kg: a unit slip
        (obs("h", "8302-2", 1.7, "cm"), "Observation/h.valueQuantity.value", 1.7),
        (obs("w", "29463-7", "heavy", "kg"), "Observation/w.valueQuantity.value", "heavy"),
    ],
)
def test_bad_body_measurements_name_the_resource(resource: dict[str, Any], field: str, value: Any) -> None:
    with pytest.raises(InputError) as info:
        read_fhir(bundle(PATIENT, resource))
    assert (info.value.field, info.value.value) == (field, value)


def test_read_fhir_keeps_its_signature_and_reads_site_codes() -> None:
    resources = bundle(PATIENT, obs("m", "HLA", 3000, None, system=SITE), obs("f", "2276-4", 900, "ng/mL"))
    plain = read_fhir(resources, "p1", field_name="bundle")
    assert [r["concept"] for r in plain.records] == ["ferritin"]
    assert any("Observation m" in i for i in plain.ignored)
    coded = read_fhir(resources, site_codes=SITE_CODES)
    assert {(r["concept"], r["unit"]) for r in coded.records} == {("mhla_dr", "AB/C"), ("ferritin", "ng/mL")}


# ---------------------------------------------------------------- files


def two_patients() -> list[dict[str, Any]]:
    return [
        PATIENT,
        obs("f1", "2276-4", 9000, "ng/mL"),
        obs("w1", "29463-7", 60, "kg"),
        {"resourceType": "Patient", "id": "p2", "gender": "male", "birthDate": "1970-03-01"},
        obs("f2", "2276-4", 900, "ng/mL", subject="Patient/p2"),
        obs("m2", "HLA", 3000, None, subject="Patient/p2", system=SITE),
        obs("x2", "99999-9", 1, "kg", subject="Patient/p2"),
    ]


@pytest.mark.parametrize("kind", ["json", "ndjson"])
def test_a_file_of_many_patients(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"data.{kind}"
    items = two_patients()
    path.write_text(json.dumps(bundle(*items)) if kind == "json" else "\n".join(json.dumps(r) for r in items))
    result = read_fhir_file(path, site_codes=SITE_CODES)
    obs_rows = {(r["patient_id"], r["concept"]): r for r in result.observations.iter_rows(named=True)}
    assert set(obs_rows) == {("p1", "ferritin"), ("p2", "ferritin"), ("p2", "mhla_dr")}
    assert obs_rows[("p2", "mhla_dr")]["source_row"] == 6  # NDJSON line or Bundle entry
    patients = {r["patient_id"]: r for r in result.patients.iter_rows(named=True)}
    assert patients["p1"]["weight_kg"] == 60.0 and patients["p1"]["sex"] == "F"
    assert patients["p1"]["age"] == pytest.approx(70.0, abs=0.01)  # at the last observation, not today
    assert patients["p2"]["weight_kg"] is None
    assert len(result.notes) == 1 and "Observation x2" in result.notes[0]


def test_bundle_references_by_full_url(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    entries = [
        {"fullUrl": "urn:uuid:1234", "resource": PATIENT},
        {"resource": obs("f1", "2276-4", 9000, "ng/mL", subject="urn:uuid:1234")},
        {"resource": obs("w1", "29463-7", 60, "kg", subject="urn:uuid:1234")},
    ]
    path.write_text(json.dumps({"resourceType": "Bundle", "entry": entries}))
    result = read_fhir_file(path)
    assert result.observations["patient_id"].to_list() == ["p1"]
    assert result.patients["weight_kg"].to_list() == [60.0]


def test_patient_table_wins_over_fhir(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(bundle(*two_patients())))
    table = tmp_path / "patients.csv"
    table.write_text("patient_id,weight_kg\np1,65\np3,50\n")
    result = read_fhir_file(path, patients=table, site_codes=SITE_CODES)
    weights = dict(zip(result.patients["patient_id"], result.patients["weight_kg"], strict=True))
    assert weights == {"p1": 65.0, "p3": 50.0, "p2": None}
    sexes = dict(zip(result.patients["patient_id"], result.patients["sex"], strict=True))
    assert sexes["p1"] == "F"  # the table gave no sex: FHIR's is kept


@pytest.mark.parametrize(
    ("name", "text", "row", "field"),
    [
        ("data.json", '{"entry": []}', None, "resourceType"),
        ("data.json", "[1, 2]", 1, "resourceType"),
        ("data.json", "{not json", None, None),
        ("data.ndjson", json.dumps(PATIENT) + "\n\n{oops\n", 3, "line"),
        ("data.ndjson", json.dumps(PATIENT) + '\n{"id": "x"}\n', 2, "resourceType"),
    ],
)
def test_what_is_not_fhir_is_refused(
    tmp_path: Path, name: str, text: str, row: int | None, field: str | None
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as info:
        read_fhir_file(path)
    assert (info.value.file, info.value.row, info.value.field) == (str(path), row, field)


def test_bad_value_in_a_file_names_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    items = two_patients()
    items[4] = obs("f2", "2276-4", 900, "ng/dm", subject="Patient/p2")
    path.write_text(json.dumps(bundle(*items)))
    with pytest.raises(InputError) as info:
        read_fhir_file(path, site_codes=SITE_CODES)
    assert (info.value.row, info.value.field, info.value.value) == (5, "unit", "ng/dm")
    lenient = read_fhir_file(path, site_codes=SITE_CODES, lenient=True)
    assert [e.row for e in lenient.rejected] == [5]
