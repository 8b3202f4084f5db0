"""Stateless /classify and /score, and the CDS Hooks 2.0 discovery and patient-view service."""

from __future__ import annotations

from typing import Any

import httpx
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
    }
    fhir_body = {
        "bundle": _bundle(
            PATIENT,
            _obs("f", LOINC, "2276-4", 2100, "ug/L"),
            _obs("h", LOCAL, "IMMUNOSTRAT-MHLADR-ABC", 3100, "AB/C"),
            _obs("x", LOINC, "0000-0", 1, "1"),
        )
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
        ]
    }
    with server.client("statistician") as c:
        r = c.post("/score", json=body)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    # platelets 80 -> 2 (< 100); bilirubin 34.2 umol/L = 2.0 mg/dL -> 2; the rest 0 (domain.md B1)
    assert (result["sofa_coagulation"], result["sofa_liver"], result["sofa_renal"]) == (2, 2, 0)
    assert result["sofa_total"] == 4 and result["sofa_missing"] == 1


def test_cds_discovery_is_public_and_complete(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/cds-services")
    assert r.status_code == 200
    (service,) = r.json()["services"]
    assert service["hook"] == "patient-view" and service["id"] == "immunostrat-endotype"
    assert {"patient", "ferritin", "mhla_dr", "medications"} <= set(service["prefetch"])
    assert (
        "2276-4" in service["prefetch"]["ferritin"]
        and "{{context.patientId}}" in service["prefetch"]["patient"]
    )


def _hook(prefetch: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": "p1"},
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def test_patient_view_warns_against_anti_inflammatory_therapy_in_immunoparalysis(server: Server) -> None:
    prefetch = {
        "patient": PATIENT,
        "ferritin": _bundle(_obs("f", LOINC, "2276-4", 900, "ng/mL")),
        "mhla_dr": _bundle(_obs("h", LOCAL, "IMMUNOSTRAT-MHLADR-ABC", 2500, "AB/C")),
        "medications": _bundle(
            {
                "resourceType": "MedicationRequest",
                "id": "m1",
                "status": "draft",
                "intent": "proposal",
                "subject": {"reference": "Patient/p1"},
                "medicationCodeableConcept": {"text": "Dexamethasone 6 mg IV"},
            }
        ),
    }
    with server.client("investigator") as c:
        r = c.post("/cds-services/immunostrat-endotype", json=_hook(prefetch))
    assert r.status_code == 200, r.text
    cards = r.json()["cards"]
    assert len(cards) == 2
    main, warning = cards
    assert "immunoparalysis" in main["summary"] and "100 ug" in main["summary"]
    assert "mhla_dr" in main["detail"] and main["source"]["label"].startswith("immunostrat immunosep-2025")
    assert warning["indicator"] == "warning" and "Dexamethasone" in warning["summary"]
    for card in cards:
        assert len(card["summary"]) <= 140 and card["uuid"]


def test_patient_view_mals_without_conflict_and_without_prefetch(server: Server) -> None:
    prefetch = {
        "patient": PATIENT,
        "ferritin": _bundle(_obs("f", LOINC, "2276-4", 9.5, "mg/L")),
        "medications": {"resourceType": "Bundle", "type": "searchset", "entry": []},
    }
    with server.client("monitor") as c:
        r = c.post("/cds-services/immunostrat-endotype", json=_hook(prefetch))
        empty = c.post("/cds-services/immunostrat-endotype", json=_hook(None))
        wrong = c.post("/cds-services/immunostrat-endotype", json={**_hook(None), "hook": "order-sign"})
    (card,) = r.json()["cards"]
    assert "mals" in card["summary"] and "anakinra" in card["summary"]
    (info,) = empty.json()["cards"]
    assert info["indicator"] == "info" and "unknown" in info["summary"]
    assert wrong.status_code == 422 and wrong.json()["field"] == "hook"
    anonymous = httpx.post(f"{server.base_url}/cds-services/immunostrat-endotype", json=_hook(None))
    assert anonymous.status_code == 401
