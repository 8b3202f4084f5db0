"""The test FHIR server answers the queries a CDS Hooks service sends to an EHR's fhirServer:
upload, read, token/reference search with sorting and paging, status filter, bearer-token guard."""

from __future__ import annotations

import secrets
from typing import Any

import httpx

from fhir_server import FhirServer

LOINC = "http://loinc.org"
FERRITIN_LOINC = "2276-4"
BODY_WEIGHT_LOINC = "29463-7"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def observation(patient_id: str, code: str, when: str, value: float, unit: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": f"Patient/{patient_id}"},
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def medication_request(patient_id: str, status: str, rxnorm_code: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "status": status,
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": rxnorm_code}]},
    }


def load_patient(fhir_server: FhirServer) -> str:
    patient_id = f"pt-{secrets.token_hex(4)}"
    other_id = f"pt-{secrets.token_hex(4)}"
    locations = fhir_server.load(
        [
            {"resourceType": "Patient", "id": patient_id, "gender": "female", "birthDate": "1961-05-04"},
            {"resourceType": "Patient", "id": other_id},
            observation(patient_id, FERRITIN_LOINC, "2025-03-01T08:00:00Z", 5200.0, "ng/mL"),
            observation(patient_id, FERRITIN_LOINC, "2025-03-02T08:00:00+02:00", 3100.0, "ng/mL"),
            observation(patient_id, BODY_WEIGHT_LOINC, "2025-03-01T12:00:00Z", 71.5, "kg"),
            observation(other_id, FERRITIN_LOINC, "2025-03-03T08:00:00Z", 9999.0, "ng/mL"),
            medication_request(patient_id, "active", "1740938"),
            medication_request(patient_id, "draft", "1740938"),
            medication_request(patient_id, "completed", "1740938"),
        ]
    )
    assert locations[:2] == [f"Patient/{patient_id}", f"Patient/{other_id}"]
    assert [loc.split("/")[0] for loc in locations[2:]] == ["Observation"] * 4 + ["MedicationRequest"] * 3
    return patient_id


def entries(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return [e["resource"] for e in bundle.get("entry", [])]


def test_metadata_is_open_and_describes_the_resources(fhir_server: FhirServer) -> None:
    response = httpx.get(f"{fhir_server.base_url}/metadata", timeout=30)
    assert response.status_code == 200
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"].startswith("4.0")
    types = {r["type"] for r in statement["rest"][0]["resource"]}
    assert {"Patient", "Observation", "MedicationRequest"} <= types


def test_observation_search_sorts_newest_first_and_honours_count(fhir_server: FhirServer) -> None:
    patient_id = load_patient(fhir_server)
    codes = f"{LOINC}|{FERRITIN_LOINC},{LOINC}|{BODY_WEIGHT_LOINC}"
    with fhir_server.client() as client:
        everything = entries(
            client.get(f"/Observation?patient={patient_id}&code={codes}&_sort=-date&_count=10")
        )
        first_two = client.get(f"/Observation?patient={patient_id}&code={codes}&_sort=-date&_count=2")
        by_subject = entries(
            client.get(f"/Observation?subject=Patient/{patient_id}&code={codes}&_sort=-date&_count=10")
        )
        ferritin_latest = entries(
            client.get(
                f"/Observation?patient={patient_id}&code={LOINC}|{FERRITIN_LOINC}&_sort=-date&_count=1"
            )
        )
    # 2025-03-02T08:00+02:00 is 06:00 UTC: still the newest, then the weight at 12:00 on the 1st
    assert [(o["code"]["coding"][0]["code"], o["valueQuantity"]["value"]) for o in everything] == [
        (FERRITIN_LOINC, 3100.0),
        (BODY_WEIGHT_LOINC, 71.5),
        (FERRITIN_LOINC, 5200.0),
    ]
    assert first_two.json()["total"] == 3
    assert entries(first_two) == everything[:2]
    assert by_subject == everything
    assert [o["valueQuantity"]["value"] for o in ferritin_latest] == [3100.0]
    assert all(o["subject"]["reference"] == f"Patient/{patient_id}" for o in everything)


def test_medication_requests_filter_on_status(fhir_server: FhirServer) -> None:
    patient_id = load_patient(fhir_server)
    with fhir_server.client() as client:
        found = entries(client.get(f"/MedicationRequest?patient={patient_id}&status=active,draft"))
        completed = entries(client.get(f"/MedicationRequest?patient={patient_id}&status=completed"))
    assert sorted(m["status"] for m in found) == ["active", "draft"]
    assert [m["status"] for m in completed] == ["completed"]


def test_read_update_and_unknown_ids(fhir_server: FhirServer) -> None:
    patient_id = load_patient(fhir_server)
    with fhir_server.client() as client:
        first = client.get(f"/Patient/{patient_id}")
        updated = client.put(
            f"/Patient/{patient_id}",
            json={"resourceType": "Patient", "id": patient_id, "gender": "male"},
            headers={"Content-Type": "application/fhir+json"},
        )
        second = client.get(f"/Patient/{patient_id}")
        missing = client.get(f"/Patient/{patient_id}-missing")
        misspelt = client.get(f"/Observation?pateint={patient_id}")
    assert first.status_code == 200 and first.json()["birthDate"] == "1961-05-04"
    assert updated.status_code == 200
    assert second.json()["gender"] == "male" and second.json()["meta"]["versionId"] == "2"
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
    assert misspelt.status_code == 400


def test_every_request_but_metadata_needs_the_bearer_token(fhir_server: FhirServer) -> None:
    patient_id = load_patient(fhir_server)
    upload = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    with fhir_server.client(authorized=False) as anonymous:
        assert anonymous.get(f"/Patient/{patient_id}").status_code == 401
        assert anonymous.get(f"/Observation?patient={patient_id}").status_code == 401
        assert anonymous.post("", json=upload).status_code == 401
        wrong = {"Authorization": f"Bearer {fhir_server.token}x"}
        assert anonymous.get(f"/Patient/{patient_id}", headers=wrong).status_code == 401
        assert anonymous.get("/metadata").status_code == 200
    with fhir_server.client() as client:
        assert client.get(f"/Patient/{patient_id}").status_code == 200


def test_transaction_is_all_or_nothing(fhir_server: FhirServer) -> None:
    patient_id = f"pt-{secrets.token_hex(4)}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "id": patient_id},
                "request": {"method": "PUT", "url": f"Patient/{patient_id}"},
            },
            {"resource": {"resourceType": "Observation"}, "request": {"method": "POST", "url": "Encounter"}},
        ],
    }
    with fhir_server.client() as client:
        rejected = client.post("", json=bundle)
        after = client.get(f"/Patient/{patient_id}")
    assert rejected.status_code == 400
    assert after.status_code == 404
