"""The bedside patient page read from a real FHIR server (``fhir_server``: node, in memory): a CDS
Hooks call's card links to it by default (no ``IMMUNOSTRAT_PATIENT_PAGE_URL``; the app's own page
because ``IMMUNOSTRAT_FHIR_BASE_URL`` is set), and the link, followed in the browser, opens the
page with that patient's classification and timeline. The app runs under its own uvicorn here (the
shared ``web`` server is started without the FHIR settings)."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, expect
from webworld import WebServer, running_app, screenshots, sign_in

from fhir_server import FhirServer
from immunostrat.concepts import load_concepts
from immunostrat.protocols import load_protocol
from immunostrat.sources.fhir_patient import LOCAL_SYSTEM, LOINC
from immunostrat.trial import ops

pytestmark = pytest.mark.browser  # Playwright drives the system Chromium

AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}
SERVICE = "/cds-services/immunostrat-endotype"


@pytest.fixture(scope="module")
def fhir_web(tmp_path_factory: pytest.TempPathFactory, fhir_server: FhirServer) -> Iterator[WebServer]:
    """The app with the FHIR server configured and the patient link left to its default."""
    folder = tmp_path_factory.mktemp("bedside-fhir")
    db_url = f"sqlite:///{folder / 'web.db'}"
    os.environ.setdefault("IMMUNOSTRAT_BCRYPT_ROUNDS", "4")
    ops.open_db(db_url)
    passwords = {"clinician": secrets.token_urlsafe(16)}
    ops.create_user(db_url, "clinician-web", passwords["clinician"], "clinician")
    settings = {
        "IMMUNOSTRAT_DB_URL": db_url,
        "IMMUNOSTRAT_FHIR_BASE_URL": fhir_server.base_url,
        "IMMUNOSTRAT_FHIR_TOKEN": fhir_server.token,
    }
    drop = ("IMMUNOSTRAT_PATIENT_PAGE_URL", "IMMUNOSTRAT_PUBLIC_URL")
    with running_app(settings, folder / "server.log", drop) as base:
        yield WebServer(base, db_url, passwords, 0, 0)


def _ago(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _patient_resources(pid: str) -> list[dict[str, Any]]:
    concepts = load_concepts()

    def obs(oid: str, concept: str, value: float, unit: str, hours: float) -> dict[str, Any]:
        c = concepts[concept]
        coding = (
            {"system": LOINC, "code": c.loinc[0]}
            if c.loinc
            else {"system": LOCAL_SYSTEM, "code": c.local_code}
        )
        return {
            "resourceType": "Observation",
            "id": f"{pid}-{oid}",
            "status": "final",
            "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [coding]},
            "effectiveDateTime": _ago(hours),
            "valueQuantity": {"value": value, "unit": unit},
        }

    return [
        {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1950-02-01"},
        obs("f1", "ferritin", 9400, "ng/mL", 50),  # MALS
        obs("p1", "platelets", 70, "10^9/L", 50),
        obs("l1", "lactate", 5.2, "mmol/L", 50),
        obs("f2", "ferritin", 1.9, "mg/L", 8),  # 1900 ng/mL
        obs("h2", "mhla_dr", 2600, "AB/C", 8),  # immunoparalysis
        obs("p2", "platelets", 120, "10^9/L", 8),
        obs("l2", "lactate", 19, "mg/dL", 8),
        obs("c2", "creatinine", 1.0, "mg/dL", 8),
        {
            "resourceType": "Observation",
            "id": f"{pid}-w",
            "status": "final",
            "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": LOINC, "code": "29463-7"}]},
            "effectiveDateTime": _ago(50),
            "valueQuantity": {"value": 64, "unit": "kg"},
        },
    ]


def test_card_link_opens_the_patients_timeline(
    browser: Browser, fhir_web: WebServer, fhir_server: FhirServer
) -> None:
    pid = f"bed-{uuid.uuid4().hex[:8]}"
    resources = _patient_resources(pid)
    with fhir_server.client() as client:
        statement = client.get("metadata").json()
    kinds = {r.get("type") for rest in statement.get("rest", []) for r in rest.get("resource", [])}
    administrations = "MedicationAdministration" in kinds  # the test server stores them once it lists them
    if administrations:
        resources.append(
            {
                "resourceType": "MedicationAdministration",
                "id": f"{pid}-ma",
                "status": "completed",
                "subject": {"reference": f"Patient/{pid}"},
                "medicationCodeableConcept": {"text": "Interferon gamma-1b"},
                "effectiveDateTime": _ago(7),
                "dosage": {"dose": {"value": 100, "unit": "ug"}},
            }
        )
    fhir_server.load(resources)
    token = httpx.post(
        f"{fhir_web.base_url}/token",
        data={"username": "clinician-web", "password": fhir_web.passwords["clinician"]},
        timeout=30,
    ).json()["access_token"]
    hook = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": pid},
        "fhirServer": fhir_server.base_url,
        "fhirAuthorization": {
            "access_token": fhir_server.token,
            "token_type": "Bearer",
            "scope": "patient/*.read",
        },
    }
    r = httpx.post(
        f"{fhir_web.base_url}{SERVICE}", json=hook, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )
    assert r.status_code == 200, r.text
    card = r.json()["cards"][0]
    assert "immunoparalysis" in card["summary"]
    (link,) = card["links"]
    assert link["type"] == "absolute"
    assert link["url"] == f"{fhir_web.base_url}/web/bedside/patients/{pid}"  # the default: this app's page

    cut = {c.concept: c.threshold for rule in load_protocol("immunosep-2025").rules for c in rule.all}
    context, page = sign_in(browser, fhir_web, "clinician", bypass_csp=True)
    try:
        page.goto(link["url"])
        expect(page.get_by_role("heading", name=f"Patient {pid}")).to_be_visible()
        expect(page.locator("#endotype")).to_contain_text("immunoparalysis")  # the same as the card
        expect(page.locator("#therapy")).to_contain_text("interferon")
        expect(page.locator("#patient-facts")).to_contain_text("64")  # weight from the FHIR Observation
        titles = page.locator("#timeline svg title").all_text_contents()
        assert any(
            t.startswith("Ferritin: 1900 ng/mL (entered 1.9 mg/L)") and f"Observation/{pid}-f2" in t
            for t in titles
        )
        assert any(f"ferritin {cut['ferritin']:g} ng/mL" in t for t in titles if "threshold" in t), titles
        assert any(f"mhla_dr {cut['mhla_dr']:g} AB/C" in t for t in titles if "threshold" in t), titles
        assert [t.split()[1] for t in titles if t.startswith("endotype ")] == ["mals", "immunoparalysis"]
        assert any(t.startswith("SOFA total") for t in titles)
        if administrations:
            drug = next(t for t in titles if t.startswith("Interferon gamma-1b 100 ug"))
            assert f"FHIR MedicationAdministration/{pid}-ma" in drug
        else:  # said on the page, the rest still shown
            expect(page.locator("#bedside-notes")).to_contain_text("MedicationAdministration not read")
        assert any(t.startswith("Lactate: 2.109 mmol/L (entered 19 mg/dL)") for t in titles), titles
        axe = Axe()
        problems = []
        for width, height in ((1280, 800), (390, 844)):
            page.set_viewport_size({"width": width, "height": height})
            found = axe.run(page, options=AXE_OPTIONS).response["violations"]
            problems += [
                f"{width}px {v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
                for v in found
                if v.get("impact") in ("serious", "critical")
            ]
        assert not problems, "\n".join(problems)
        page.set_viewport_size({"width": 1280, "height": 800})
        screenshots(page, "bedside-patient")
        # a patient the FHIR server does not know, and an id that is not a FHIR id
        response = page.goto("/web/bedside/patients/nobody-here")
        assert response is not None and response.status == 404
        expect(page.locator("main")).to_contain_text("not on the FHIR server")
        response = page.goto("/web/bedside/patients/a%20b")
        assert response is not None and response.status == 404
    finally:
        context.close()
