"""The oversight pages in a real browser: enrolment by site and stratum (plot with hover titles and
the same numbers in tables), the live CONSORT flow (by arm for the pharmacist, totals for everyone
else, refreshed by htmx), and the audit-trail viewer with the chain's verification; a crawl as
each blinded role finds no arm name on any of them; axe at the desktop and phone sizes.

A trial of its own (two sites, the arms named with the page tests' made-up words) keeps these
counts apart from the shared trial's."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select
from webworld import ARMS, BLINDED_ROLES, SLE_VISIT, WebServer, screenshots, sign_in

from immunostrat.trial import forms, ops, service
from immunostrat.trial.db import get_engine, transaction
from immunostrat.trial.models import User
from immunostrat.trial.schemas import FormIn

pytestmark = pytest.mark.browser  # Playwright drives the system Chromium

AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}
ELIGIBLE = {"sex": "F", "form": {"sle_classified": "yes", "moderately_active": "yes"}}
TRIAL_ROLES = ("investigator", "pharmacist", "monitor", "statistician", "admin")


@dataclass
class Oversight:
    trial_id: int
    arms: dict[int, str]
    """Participant id -> arm, from the pharmacist's randomization list."""
    withdrawn: int
    completed: int
    eligible_waiting: int
    by_site: dict[str, int]


def _client(web: WebServer, role: str) -> httpx.Client:
    r = httpx.post(
        f"{web.base_url}/token",
        data={"username": web.user(role), "password": web.passwords[role]},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return httpx.Client(
        base_url=web.base_url, headers={"Authorization": f"Bearer {r.json()['access_token']}"}, timeout=60
    )


def _screen(c: httpx.Client, tid: int, site: str, age: int, sex: str = "F") -> dict[str, Any]:
    r = c.post(f"/trials/{tid}/participants", json={**ELIGIBLE, "site": site, "age": age, "sex": sex})
    assert r.status_code == 201, r.text
    return dict(r.json())


@pytest.fixture(scope="module")
def oversight(web: WebServer) -> Iterator[Oversight]:
    spec = ops.load_trial_spec(ops.template_path("sle-secretome")).model_dump(mode="json")
    spec.update(
        code="WEB-OVERSIGHT",
        title="Oversight pages' trial",
        arms=list(ARMS),
        control_arm=ARMS[1],
        sites=[{"code": "S01", "name": "North"}, {"code": "S02", "name": "South"}],
    )
    tid = ops.init_trial(web.db_url, spec).trial_id
    with _client(web, "investigator") as inv:
        eligible = [_screen(inv, tid, site, 30 + i) for i, site in enumerate(["S01"] * 4 + ["S02"] * 3)]
        assert all(p["eligible"] for p in eligible)
        young = _screen(inv, tid, "S01", 17)
        man = _screen(inv, tid, "S02", 40, sex="M")
        assert young["eligible"] is False and man["eligible"] is False
        randomized = [p["participant_id"] for p in eligible[:6]]  # the seventh waits
        for pid in randomized:
            r = inv.post(f"/trials/{tid}/participants/{pid}/randomize")
            assert r.status_code == 201, r.text
        r = inv.post(f"/trials/{tid}/participants/{randomized[0]}/withdraw", json={"reason": "moved away"})
        assert r.status_code in (200, 204), r.text
    # one participant completes: both forms of the last visit (day 43) saved, through the trial
    # function the API calls, on the day the visit falls due (the service refuses future dates)
    finished = randomized[1]
    with transaction(get_engine(web.db_url)) as session:
        user = session.scalars(select(User).where(User.username == web.user("investigator"))).one()
        actor = service.actor_for(user)
        values = {
            k: {"true": True, "false": False}.get(v) if v in ("true", "false") else float(v)
            for k, v in SLE_VISIT.items()
        }
        due = date.today() + timedelta(days=43)
        for form, body in (("sle_visit", values), ("completion", {"last_contact_day": 43})):
            data = FormIn.model_validate({"visit_date": due.isoformat(), "values": body})
            forms.save_form(session, actor, tid, finished, "day43", form, data, today=due)
    with _client(web, "pharmacist") as ph:
        listed = ph.get(f"/trials/{tid}/randomization-list")
        assert listed.status_code == 200, listed.text
        pseudonyms = {p["pseudonym"]: p["participant_id"] for p in eligible}
        arms = {pseudonyms[row["participant"]]: row["arm"] for row in listed.json()}
    yield Oversight(tid, arms, randomized[0], finished, 1, {"S01": 4, "S02": 2})


def _pages(o: Oversight) -> dict[str, tuple[str, ...]]:
    base = f"/web/trials/{o.trial_id}"
    return {
        f"{base}/enrolment": TRIAL_ROLES,
        f"{base}/consort": TRIAL_ROLES,
        f"{base}/consort/flow": TRIAL_ROLES,
        f"{base}/audit": ("monitor", "admin"),
        f"{base}/audit/verify": ("monitor", "admin"),
    }


def _csp_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    return errors


def test_pharmacist_sees_the_consort_flow_by_arm(
    browser: Browser, web: WebServer, oversight: Oversight
) -> None:
    context, page = sign_in(browser, web, "pharmacist")
    try:
        csp = _csp_errors(page)
        page.goto(f"/web/trials/{oversight.trial_id}/consort")
        expect(page.locator("#n-screened")).to_have_text("9")
        expect(page.locator("#n-not-eligible")).to_have_text("2")
        expect(page.locator("#n-randomized")).to_have_text("6")
        rows = page.locator("#consort-arms tbody tr")
        expect(rows).to_have_count(len(ARMS) + 1)
        for i, arm in enumerate(ARMS):
            cells = rows.nth(i)
            expect(cells.locator("th")).to_have_text(arm)
            allocated = sum(1 for a in oversight.arms.values() if a == arm)
            withdrawn = int(oversight.arms[oversight.withdrawn] == arm)
            expect(cells.locator("td").nth(0)).to_have_text(str(allocated))
            expect(cells.locator("td").nth(1)).to_have_text(str(withdrawn))
            expect(cells.locator("td").nth(2)).to_have_text(
                str(int(oversight.arms[oversight.completed] == arm))
            )
            expect(cells.locator("td").nth(3)).to_have_text(str(allocated))  # analysed: nothing removed
        expect(rows.nth(len(ARMS)).locator("td").nth(1)).to_have_text("1")
        screenshots(page, "oversight-consort-pharmacist")
        assert csp == []
    finally:
        context.close()


def test_investigator_sees_counts_only_and_the_flow_refreshes(
    browser: Browser, web: WebServer, oversight: Oversight
) -> None:
    context, page = sign_in(browser, web, "investigator")
    try:
        page.goto(f"/web/trials/{oversight.trial_id}/consort")
        expect(page.locator("#n-randomized")).to_have_text("6")
        expect(page.locator("#n-allocated")).to_have_text("6")
        expect(page.locator("#n-withdrawn")).to_have_text("1")
        expect(page.locator("#n-completed")).to_have_text("1")
        expect(page.locator("#n-not-randomized")).to_have_text(str(oversight.eligible_waiting))
        expect(page.locator("#exclusions tbody tr")).to_have_count(2)
        assert page.locator("#consort-arms").count() == 0
        html = page.content()
        assert not [arm for arm in ARMS if arm in html]
        screenshots(page, "oversight-consort-investigator")
        # a screening made meanwhile reaches the open page by the poll, without a reload
        screened = page.locator("#n-screened").inner_text()
        with _client(web, "investigator") as inv:
            _screen(inv, oversight.trial_id, "S02", 16)
        expect(page.locator("#n-screened")).to_have_text(str(int(screened) + 1), timeout=25_000)
        expect(page.locator("#n-not-eligible")).to_have_text("3")
        assert not [arm for arm in ARMS if arm in page.content()]
    finally:
        context.close()


def test_enrolment_by_site_and_stratum(browser: Browser, web: WebServer, oversight: Oversight) -> None:
    context, page = sign_in(browser, web, "monitor")
    try:
        csp = _csp_errors(page)
        page.goto(f"/web/trials/{oversight.trial_id}/enrolment")
        last = page.locator("#enrolment-sites tbody tr").last
        headers = page.locator("#enrolment-sites thead th").all_inner_texts()
        assert headers == ["Day", "S01", "S02"]
        assert [int(t) for t in last.locator("td").all_inner_texts()] == [4, 2]
        strata = page.locator("#enrolment-strata thead th").all_inner_texts()
        assert strata == ["Day", "S01 / all", "S02 / all"]
        assert [
            int(t) for t in page.locator("#enrolment-strata tbody tr").last.locator("td").all_inner_texts()
        ] == [
            4,
            2,
        ]
        svg = page.locator("figure svg").first
        expect(svg).to_be_visible()
        titles = page.locator("figure svg title").all_text_contents()
        assert any(re.fullmatch(r"site S01, \d{4}-\d{2}-\d{2}: 4 randomized", t) for t in titles), titles
        assert page.locator("svg [style]").count() == 0 and page.locator("svg style").count() == 0
        ids = page.eval_on_selector_all("[id]", "els => els.map(e => e.id)")
        assert len(ids) == len(set(ids)), "two plots share element ids"
        screenshots(page, "oversight-enrolment")
        assert csp == []
    finally:
        context.close()


def test_monitor_audit_viewer_verifies_and_filters(
    browser: Browser, web: WebServer, oversight: Oversight
) -> None:
    context, page = sign_in(browser, web, "monitor")
    mon = _client(web, "monitor")
    try:
        page.goto(f"/web/trials/{oversight.trial_id}/audit")
        expect(page.locator("#verify-result")).to_contain_text("Chain intact")
        verified = mon.get("/audit/verify").json()
        newest = mon.get("/audit", params={"after": verified["rows_checked"] - 1}).json()
        assert verified["ok"] is True
        expect(page.locator("#head-hash")).to_have_text(verified["head_hash"])
        expect(page.locator("#verify-pending")).to_have_count(0)
        first = page.locator("#audit-rows tbody tr").first
        expect(first.locator("td").nth(0)).to_have_text(str(newest[-1]["seq"]))
        expect(first.locator("code.hash")).to_have_text(newest[-1]["hash"])
        assert not [arm for arm in ARMS if arm in page.content()]
        screenshots(page, "oversight-audit")

        page.select_option("#f-action", "create")
        page.select_option("#f-actor", web.user("investigator"))
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url(re.compile(r".*action=create.*"))
        rows = page.locator("#audit-rows tbody tr")
        assert rows.count() > 0
        for text in rows.locator("td:nth-child(4)").all_inner_texts():
            assert text == "create"
        for text in rows.locator("td:nth-child(3)").all_inner_texts():
            assert text == "investigator-web (investigator)"

        page.goto(f"/web/trials/{oversight.trial_id}/audit?limit=10")
        seqs = [int(t) for t in page.locator("#audit-rows tbody tr td:first-child").all_inner_texts()]
        assert seqs == sorted(seqs, reverse=True) and len(seqs) == 10
        page.locator("#older").click()
        older = [int(t) for t in page.locator("#audit-rows tbody tr td:first-child").all_inner_texts()]
        assert older == list(range(seqs[-1] - 1, seqs[-1] - 11, -1))
        assert page.goto(f"/web/trials/{oversight.trial_id}/audit?before=x") is not None
        expect(page.locator("main")).to_contain_text("before must be a row number")
    finally:
        mon.close()
        context.close()


def test_pages_refuse_other_roles(browser: Browser, web: WebServer, oversight: Oversight) -> None:
    for role in ("investigator", "clinician"):
        context, page = sign_in(browser, web, role)
        try:
            for path, roles in _pages(oversight).items():
                if role not in roles:
                    response = page.goto(path)
                    assert response is not None and response.status == 403, (role, path)
        finally:
            context.close()


@pytest.mark.parametrize("role", BLINDED_ROLES)
def test_blinded_crawl_finds_no_arm(
    browser: Browser, web: WebServer, oversight: Oversight, role: str
) -> None:
    context, page = sign_in(browser, web, role)
    try:
        seen = 0
        for path, roles in _pages(oversight).items():
            if role not in roles:
                continue
            response = page.goto(path)
            assert response is not None and response.status == 200, (role, path)
            html = page.content()
            seen += 1
            assert not [arm for arm in ARMS if arm in html], (role, path)
        # the audit viewer's values, opened
        if role in _pages(oversight)[f"/web/trials/{oversight.trial_id}/audit"]:
            page.goto(f"/web/trials/{oversight.trial_id}/audit?action=create")
            for details in page.locator("details").all():
                details.locator("summary").click()
            assert not [arm for arm in ARMS if arm in page.inner_text("main")]
        assert seen == (5 if role in ("monitor", "admin") else 3 if role in TRIAL_ROLES else 0)
    finally:
        context.close()


def test_pharmacist_crawl_finds_the_arms(browser: Browser, web: WebServer, oversight: Oversight) -> None:
    context, page = sign_in(browser, web, "pharmacist")
    try:
        page.goto(f"/web/trials/{oversight.trial_id}/consort/flow")
        assert all(arm in page.content() for arm in ARMS)
    finally:
        context.close()


def test_oversight_pages_pass_axe(browser: Browser, web: WebServer, oversight: Oversight) -> None:
    axe = Axe()
    base = f"/web/trials/{oversight.trial_id}"
    pages = {
        "investigator": [f"{base}/enrolment", f"{base}/consort"],
        "pharmacist": [f"{base}/consort"],
        "monitor": [f"{base}/audit"],
    }
    problems: list[str] = []
    for role, paths in pages.items():
        context, page = sign_in(browser, web, role, bypass_csp=True)
        try:
            for path in paths:
                page.goto(path)
                page.wait_for_load_state("networkidle")  # the audit page's verification comes after
                for width, height in ((1280, 800), (390, 844)):
                    page.set_viewport_size({"width": width, "height": height})
                    found = axe.run(page, options=AXE_OPTIONS).response["violations"]
                    problems += [
                        f"{role} {path} {width}px: {v['id']} ({v['impact']}): {v['help']} "
                        f"at {[n['target'] for n in v['nodes']][:3]}"
                        for v in found
                        if v.get("impact") in ("serious", "critical")
                    ]
        finally:
            context.close()
    assert problems == [], "\n".join(problems)
