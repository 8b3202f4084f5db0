"""axe-core (through Playwright) on every page as the role that uses it: no serious or critical
violation of WCAG 2.1 A/AA, at the desktop and the phone sizes."""

from __future__ import annotations

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page
from webworld import WebServer, sign_in

pytestmark = pytest.mark.browser  # Playwright drives the system Chromium

AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}


def _violations(axe: Axe, page: Page) -> list[str]:
    found = axe.run(page, options=AXE_OPTIONS).response["violations"]
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in found
        if v.get("impact") in ("serious", "critical")
    ]


def test_no_serious_accessibility_violation(browser: Browser, web: WebServer) -> None:
    axe = Axe()
    base = f"/web/trials/{web.trial_id}"
    participant = f"{base}/participants/{web.seeded_participant}"
    pages = {
        "investigator": [
            "/web/",
            "/web/bedside",
            base,
            f"{base}/screen",
            f"{base}/screening-log",
            f"{base}/participants",
            participant,
            f"{participant}/visits/day0/forms/sle_visit",
            f"{base}/visits",
            f"{base}/queries",
        ],
        "monitor": [f"{participant}/visits/day0/forms/sle_visit"],
        "pharmacist": [f"{base}/participants", f"{base}/screen"],  # the second: the 403 page
    }
    problems: list[str] = []
    anonymous = browser.new_context(base_url=web.base_url, bypass_csp=True)
    page = anonymous.new_page()
    page.goto("/web/sign-in")
    problems += [f"sign-in: {v}" for v in _violations(axe, page)]
    anonymous.close()
    for role, paths in pages.items():
        # bypass_csp lets axe's own script run in the page; the pages' CSP is tested elsewhere
        context, page = sign_in(browser, web, role, bypass_csp=True)
        try:
            for path in paths:
                page.goto(path)
                for width, height in ((1280, 800), (390, 844)):
                    page.set_viewport_size({"width": width, "height": height})
                    problems += [f"{role} {path} {width}px: {v}" for v in _violations(axe, page)]
        finally:
            context.close()
    assert problems == [], "\n".join(problems)
