"""Stateless /classify and /score: decided at the time of the request unless the caller names ``at``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from apiserver import Server

T = "2025-02-01T08:00:00Z"


def _obs(oid: str, system: str, code: str, value: float, unit: str, pid: str = "p1") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": system, "code": code}]},
        "effectiveDateTime": T,
        "valueQuantity": {"value": value, "unit": unit},
    }


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1960-05-01"}
LOINC = "http://loinc.org"
LOCAL = "urn:immunostrat:local"


def test_classify_long_format_and_fhir_agree(server: Server) -> None:
    long_body = {
        "patient": {"patient_id": "p1", "age": 64, "sex": "F", "weight_kg": 70},
        "observations": [
            {"time": T, "concept": "ferritin", "value": 2.1, "unit": "mg/L"},
            {"time": T, "concept": "mhla_dr", "value": 3100, "unit": "molecules/cell"},
        ],
        "at": T,
    }
    fhir_body = {
        "at": T,
        "bundle": _bundle(
            PATIENT,
            _obs("f", LOINC, "2276-4", 2100, "ug/L"),
            _obs("h", LOCAL, "IMMUNOSTRAT-MHLADR-ABC", 3100, "AB/C"),
            _obs("x", LOINC, "0000-0", 1, "1"),
        ),
    }
    with server.client("investigator") as c:
        a = c.post("/classify", json=long_body)
        b = c.post("/classify", json=fhir_body)
    assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
    assert a.json()["endotype"] == b.json()["endotype"] == "immunoparalysis"
    assert a.json()["therapy"] == "interferon_gamma"
    ferritin = next(r for r in a.json()["reasons"] if r["concept"] == "ferritin")
    assert ferritin["value"] == 2100.0 and ferritin["unit"] == "ng/mL"
    assert b.json()["ignored"] and "0000-0" in b.json()["ignored"][0]


def test_score_sofa_worked_example(server: Server) -> None:
    body = {
        "observations": [
            {"time": T, "concept": "platelets", "value": 80, "unit": "10^3/uL"},
            {"time": T, "concept": "bilirubin", "value": 34.2, "unit": "umol/L"},
            {"time": T, "concept": "creatinine", "value": 1.0, "unit": "mg/dL"},
            {"time": T, "concept": "gcs", "value": 15, "unit": ""},
            {"time": T, "concept": "map", "value": 75, "unit": "mmHg"},
        ],
        "at": "2025-02-01T20:00:00Z",
    }
    with server.client("statistician") as c:
        r = c.post("/score", json=body)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    # platelets 80 -> 2 (< 100); bilirubin 34.2 umol/L = 2.0 mg/dL -> 2; the rest 0 (domain.md B1)
    assert (result["sofa_coagulation"], result["sofa_liver"], result["sofa_renal"]) == (2, 2, 0)
    assert result["sofa_total"] == 4 and result["sofa_missing"] == 1
    assert r.json()["decision_time"] == "caller" and r.json()["decided_at"].startswith("2025-02-01T20:00")


STALE = "2020-01-01T08:00:00Z"


def test_results_older_than_the_window_at_the_time_of_the_request_are_unknown(server: Server) -> None:
    body = {
        "patient": {"patient_id": "p1"},
        "observations": [
            {"time": STALE, "concept": "ferritin", "value": 900, "unit": "ng/mL"},
            {"time": STALE, "concept": "mhla_dr", "value": 2500, "unit": "AB/C"},
        ],
    }
    before = datetime.now(UTC)
    with server.client("investigator") as c:
        now = c.post("/classify", json=body)
        then = c.post("/classify", json={**body, "at": "2020-01-01T20:00:00Z"})
    assert now.status_code == 200 and then.status_code == 200, (now.text, then.text)
    result = now.json()
    assert result["decision_time"] == "request"
    assert datetime.fromisoformat(result["decided_at"]) >= before
    assert result["endotype"] == "unknown" and result["therapy"] == "none" and result["dose"] is None
    ferritin = next(r for r in result["reasons"] if r["concept"] == "ferritin")
    years = (before - datetime(2020, 1, 1, 8, tzinfo=UTC)).days / 365.25
    assert ferritin["outcome"] == "stale"
    assert f"measured {years:.1f} years before the decision time" in ferritin["note"]
    assert "up to 24 h old" in ferritin["note"]
    # the same results decide when the caller asks about the time they were fresh
    assert then.json()["decision_time"] == "caller" and then.json()["endotype"] == "immunoparalysis"


def test_score_window_ends_at_the_time_of_the_request(server: Server) -> None:
    body = {"observations": [{"time": STALE, "concept": "platelets", "value": 80, "unit": "10^3/uL"}]}
    with server.client("statistician") as c:
        now = c.post("/score", json=body)
        then = c.post("/score", json={**body, "at": "2020-01-01T09:00:00Z"})
    assert now.status_code == 200 and then.status_code == 200, (now.text, then.text)
    assert now.json()["decision_time"] == "request"
    assert now.json()["result"]["sofa_coagulation"] == 0 and now.json()["result"]["sofa_missing"] == 6
    assert then.json()["result"]["sofa_coagulation"] == 2


def test_renal_adjustment_from_a_fhir_body_weight(server: Server) -> None:
    weight = {
        **_obs("w", LOINC, "29463-7", 70, "kg"),
        "valueQuantity": {"value": 70, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    }
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1955-01-01"}
    body = {
        "at": T,
        "bundle": _bundle(
            patient,
            _obs("f", LOINC, "2276-4", 9000, "ng/mL"),
            _obs("c", LOINC, "2160-0", 3.6, "mg/dL"),
            weight,
        ),
    }
    with server.client("investigator") as c:
        r = c.post("/classify", json=body)
    assert r.status_code == 200, r.text
    detail = r.json()["dose_detail"]
    assert r.json()["endotype"] == "mals"
    assert detail["renal_check"] == "adjusted" and detail["interval_hours"] == 48
    assert detail["creatinine_clearance_ml_min"] < 30
    assert "every 48 h" in r.json()["dose"] and "every other day" in r.json()["dose"]


def test_score_sofa_2_at_the_bedside(server: Server) -> None:
    body = {
        "score": "sofa-2",
        "observations": [
            {"time": T, "concept": "platelets", "value": 80, "unit": "10^3/uL"},
            {"time": T, "concept": "gcs", "value": 15, "unit": ""},
        ],
        "at": "2025-02-01T20:00:00Z",
    }
    with server.client("investigator") as c:
        r = c.post("/score", json=body)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    # platelets 80 x10^3/uL: 3 points in SOFA-2 (<= 80), 2 in SOFA-1996 (sofa-2.yaml, sofa-1996.yaml)
    assert result["sofa_coagulation"] == 3 and result["sofa_variant"] == "sofa-2"
