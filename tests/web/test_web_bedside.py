"""The bedside page: measurements typed in mixed units, the protocol's answer updating as they are
typed (htmx, no button), the same answer as ``POST /classify`` gives; measurements pasted (long
format, FHIR) or uploaded (a FHIR Bundle) with the timeline of SOFA, ferritin, mHLA-DR and lactate,
the protocol's thresholds, the endotype over time and the study drug, and a named error for a bad row."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect
from webworld import WebServer, htmx_quiet, screenshots, sign_in

from immunostrat.protocols import load_protocol

pytestmark = pytest.mark.browser  # Playwright drives the system Chromium


def test_bedside_classifies_as_values_are_typed(browser: Browser, web: WebServer) -> None:
    context, page = sign_in(browser, web, "investigator")
    try:
        page.get_by_role("link", name="Bedside").click()
        page.get_by_label("Age (years)").fill("64")
        page.get_by_label("Sex").select_option("F")
        page.get_by_label("Weight (kg)").fill("70")
        page.locator("#b-ferritin-unit").select_option("mg/L")
        page.locator("#b-ferritin").fill("2.1")  # 2100 ng/mL
        page.locator("#b-mhla_dr-unit").select_option("molecules/cell")
        page.locator("#b-mhla_dr").fill("3100")
        expect(page.locator("#endotype")).to_contain_text("immunoparalysis")
        expect(page.locator("#reasons")).to_contain_text("2100")  # converted to ng/mL
        page.locator("#b-creatinine-unit").select_option("umol/L")
        page.locator("#b-creatinine").fill("90")
        expect(page.locator("#therapy")).to_contain_text("interferon")
        screenshots(page, "bedside")
        page.locator("#b-ferritin").fill("5")  # 5 mg/L = 5000 ng/mL: above the MALS threshold
        expect(page.locator("#endotype")).to_contain_text("mals")
        page.locator("#b-ferritin-unit").select_option("pmol/L")
        page.locator("#b-ferritin").fill("-3")
        expect(page.locator("#bedside-error")).to_be_visible()
    finally:
        context.close()
    token = httpx.post(
        f"{web.base_url}/token",
        data={"username": web.user("investigator"), "password": web.passwords["investigator"]},
        timeout=30,
    ).json()["access_token"]
    body = {
        "patient": {"age": 64, "sex": "F", "weight_kg": 70},
        "observations": [
            {"time": "2026-01-01T00:00:00Z", "concept": "ferritin", "value": 5, "unit": "mg/L"},
            {"time": "2026-01-01T00:00:00Z", "concept": "mhla_dr", "value": 3100, "unit": "molecules/cell"},
        ],
        "at": "2026-01-01T01:00:00Z",
    }
    r = httpx.post(
        f"{web.base_url}/classify", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert r.json()["endotype"] == "mals"  # the page and the API agree on the same values


# --- paste, upload and the timeline -----------------------------------------------------------------

AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}


def _ago(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def thresholds() -> dict[str, float]:
    """The protocol's cut-offs, read from its file as the page reads them (never typed here)."""
    protocol = load_protocol("immunosep-2025")
    return {c.concept: c.threshold for rule in protocol.rules for c in rule.all}


PASTE = "\n".join(
    [
        "time,concept,value,unit",
        f"{_ago(40)},ferritin,5.6,mg/L",  # line 2: 5600 ng/mL, above the MALS cut-off
        f"{_ago(40)},lactate,36,mg/dL",  # line 3: 4.0 mmol/L
        f"{_ago(40)},platelets,90,10^9/L",
        f"{_ago(40)},bilirubin,2.5,mg/dL",
        f"{_ago(40)},map,62,mmHg",
        f"{_ago(20)},ferritin,2100,ug/L",  # line 7
        f"{_ago(20)},mhla_dr,3100,molecules/cell",  # line 8: immunoparalysis from here
        f"{_ago(20)},lactate,2.1,mmol/L",
        f"{_ago(20)},platelets,140,10^9/L",
    ]
)


def _bundle(pid: str) -> dict[str, Any]:
    def obs(oid: str, code: str, value: float, unit: str, hours: float) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "effectiveDateTime": _ago(hours),
            "valueQuantity": {"value": value, "unit": unit},
        }

    resources = [
        {"resourceType": "Patient", "id": pid, "gender": "male", "birthDate": "1958-04-02"},
        obs("f-1", "2276-4", 9100, "ng/mL", 30),
        obs("f-2", "2276-4", 6.2, "mg/L", 6),
        obs("l-1", "2524-7", 3.4, "mmol/L", 30),
        obs("c-1", "2160-0", 1.1, "mg/dL", 6),
        obs("w-1", "29463-7", 82, "kg", 30),
        {
            "resourceType": "MedicationAdministration",
            "id": "ma-1",
            "status": "completed",
            "subject": {"reference": f"Patient/{pid}"},
            "medicationCodeableConcept": {"text": "Anakinra"},
            "effectiveDateTime": _ago(24),
            "dosage": {"dose": {"value": 200, "unit": "mg"}},
        },
    ]
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def _titles(page: Page) -> list[str]:
    return page.locator("#timeline svg title").all_text_contents()


def test_clinician_classifies_in_mixed_units_and_opens_the_timeline(browser: Browser, web: WebServer) -> None:
    cut = thresholds()
    context, page = sign_in(browser, web, "clinician")
    try:
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Bedside").click()
        page.get_by_label("Age (years)").fill("71")
        page.get_by_label("Sex").select_option("M")
        page.get_by_label("Weight (kg)").fill("80")
        page.locator("#b-creatinine-unit").select_option("mg/dL")
        page.locator("#b-creatinine").fill("1.2")
        page.locator("#b-mhla_dr-unit").select_option("AB/C")
        page.locator("#b-mhla_dr").fill("2900")
        expect(page.locator("#endotype")).to_contain_text("unknown")  # ferritin missing: never guessed
        expect(page.locator("#timeline svg")).to_have_count(0)  # one time only: no timeline
        page.get_by_label("Paste measurements").fill(PASTE)
        # the latest ferritin (2100 ug/L, pasted) and the typed mHLA-DR decide now
        expect(page.locator("#endotype")).to_contain_text("immunoparalysis")
        expect(page.locator("#therapy")).to_contain_text("interferon")
        expect(page.locator("#timeline svg")).to_have_count(1)
        titles = _titles(page)
        threshold_titles = [t for t in titles if "threshold" in t]
        assert any(f"ferritin {cut['ferritin']:g} ng/mL" in t for t in threshold_titles), threshold_titles
        assert any(f"mhla_dr {cut['mhla_dr']:g} AB/C" in t for t in threshold_titles), threshold_titles
        ferritin = next(t for t in titles if t.startswith("Ferritin: 5600 ng/mL"))
        assert "(entered 5.6 mg/L)" in ferritin and "source: pasted line 2" in ferritin and "UTC" in ferritin
        lactate = next(t for t in titles if t.startswith("Lactate: 3.99"))  # 36 mg/dL / 9.01
        assert "mmol/L (entered 36 mg/dL)" in lactate and "pasted line 3" in lactate, lactate
        assert any(t.startswith("mHLA-DR: 2900 AB/C") and "source: typed" in t for t in titles), titles
        sofa = [t for t in titles if t.startswith("SOFA total")]
        assert sofa and "coagulation" in sofa[0] and "not measured" in sofa[0], sofa
        endotypes = [t for t in titles if t.startswith("endotype ")]
        assert [e.split()[1] for e in endotypes] == ["mals", "immunoparalysis"], endotypes
        svg = page.locator("#timeline svg").evaluate("e => e.outerHTML")
        assert "style=" not in svg and "<style" not in svg  # CSP: style-src 'self'
        caption = page.locator("#timeline-caption")
        expect(caption).to_contain_text(
            f"Ferritin {cut['ferritin']:,g} ng/mL, mHLA-DR {cut['mhla_dr']:,g} AB/C"
        )
        table = page.locator("#timeline-table")
        expect(table).to_contain_text("pasted line 7")
        htmx_quiet(page)  # a `change` sent on blur may swap the same result in again
        page.locator("#timeline svg").scroll_into_view_if_needed()
        screenshots(page, "bedside-timeline")
    finally:
        context.close()


def test_bad_pasted_row_is_named_and_nothing_is_half_shown(browser: Browser, web: WebServer) -> None:
    context, page = sign_in(browser, web, "investigator")
    try:
        page.goto("/web/bedside")
        page.get_by_label("Paste measurements").fill(PASTE)
        expect(page.locator("#timeline svg")).to_have_count(1)
        bad = PASTE.replace("3100,molecules/cell", "lots,molecules/cell")
        page.get_by_label("Paste measurements").fill(bad)
        error = page.locator("#bedside-error")
        expect(error).to_contain_text("pasted line 8, field 'value'")
        expect(error).to_contain_text("'lots'")
        expect(page.locator("#endotype")).to_have_count(0)
        expect(page.locator("#timeline svg")).to_have_count(0)  # the previous timeline is gone too
        page.get_by_label("Paste measurements").fill(PASTE.replace(",mg/L", ",mg/furlong"))
        expect(error).to_contain_text("pasted line 2, field 'unit'")
        page.get_by_label("Paste measurements").fill(PASTE.replace("2100,ug/L", "2100,ug/L,extra"))
        expect(error).to_contain_text("pasted line 7")
        screenshots(page, "bedside-error")
    finally:
        context.close()


def test_fhir_bundle_pasted_and_uploaded(browser: Browser, web: WebServer, tmp_path: Path) -> None:
    bundle = _bundle("upload-1")
    path = tmp_path / "patient.json"
    path.write_text(json.dumps(bundle))
    context, page = sign_in(browser, web, "researcher")
    try:
        page.goto("/web/bedside")
        page.locator("#b-file").set_input_files(str(path))
        expect(page.locator("#endotype")).to_contain_text("mals")
        expect(page.locator("#dose")).to_contain_text("200")
        expect(page.locator("#renal")).to_contain_text("creatinine clearance")  # weight and age from FHIR
        titles = _titles(page)
        assert any(
            "Ferritin: 6200 ng/mL (entered 6.2 mg/L)" in t and "FHIR Observation/f-2" in t for t in titles
        )
        drug = next(t for t in titles if t.startswith("Anakinra"))
        assert "200 mg" in drug and "FHIR MedicationAdministration/ma-1" in drug
        expect(page.locator("#timeline-caption")).to_contain_text("study drug given (anakinra")
        # the same bundle pasted instead, typed values added
        page.locator("#b-file").set_input_files([])
        page.get_by_label("Paste measurements").fill(json.dumps(bundle))
        page.locator("#b-mhla_dr").fill("3000")
        typed = page.locator("#timeline svg title", has_text="mHLA-DR: 3000 AB/C")
        expect(typed).to_contain_text("source: typed")
        expect(page.locator("#endotype")).to_contain_text("mals")  # MALS is decided first
        # not FHIR, then too large: a message, no result
        page.get_by_label("Paste measurements").fill('{"resourceType": "Bundle", "entry": "x"}')
        expect(page.locator("#bedside-error")).to_contain_text("FHIR element of the wrong shape")
        page.get_by_label("Paste measurements").fill("")
        big = tmp_path / "big.json"
        big.write_text(json.dumps({**bundle, "padding": "x" * (3 * 1024 * 1024)}))
        page.locator("#b-file").set_input_files(str(big))
        expect(page.locator("#bedside-error")).to_contain_text("at most 2 MiB")
        expect(page.locator("#endotype")).to_have_count(0)
    finally:
        context.close()
    # the same file through POST /classify: the page and the API agree
    token = httpx.post(
        f"{web.base_url}/token",
        data={"username": web.user("researcher"), "password": web.passwords["researcher"]},
        timeout=30,
    ).json()["access_token"]
    r = httpx.post(
        f"{web.base_url}/classify",
        json={"bundle": bundle},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["endotype"] == "mals"


def test_bedside_with_timeline_is_accessible(browser: Browser, web: WebServer) -> None:
    axe = Axe()
    context, page = sign_in(browser, web, "clinician", bypass_csp=True)
    problems: list[str] = []
    try:
        page.goto("/web/bedside")
        page.get_by_label("Paste measurements").fill(PASTE)
        expect(page.locator("#timeline svg")).to_have_count(1)
        page.locator("#timeline-area details summary").click()
        for width, height in ((1280, 800), (390, 844)):
            page.set_viewport_size({"width": width, "height": height})
            found = axe.run(page, options=AXE_OPTIONS).response["violations"]
            problems += [
                f"{width}px {v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
                for v in found
                if v.get("impact") in ("serious", "critical")
            ]
    finally:
        context.close()
    assert not problems, "\n".join(problems)


def test_patient_page_without_a_fhir_server_says_so(browser: Browser, web: WebServer) -> None:
    context, page = sign_in(browser, web, "modeller")
    try:
        response = page.goto("/web/bedside/patients/p-1")
        assert response is not None and response.status == 503
        expect(page.locator("main")).to_contain_text("IMMUNOSTRAT_FHIR_BASE_URL")
    finally:
        context.close()
