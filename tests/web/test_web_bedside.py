"""The bedside page: measurements typed in mixed units, the protocol's answer updating as they are
typed (htmx, no button), the same answer as ``POST /classify`` gives."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Browser, expect
from webworld import WebServer, screenshots, sign_in

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
