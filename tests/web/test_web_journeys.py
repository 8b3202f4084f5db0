"""Journeys in a real browser: an investigator screens, randomizes and fills a visit (an out-of-range
value refused next to its field, then corrected, then changed with a reason); a monitor raises a
query that the investigator answers and the monitor closes; the visit is signed."""

from __future__ import annotations

import re
from datetime import date

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from webworld import SLE_VISIT, WebServer, screenshots, sign_in

pytestmark = pytest.mark.browser  # Playwright drives the system Chromium


def _fill_visit(page: Page, values: dict[str, str]) -> None:
    for name, value in values.items():
        field = page.locator(f"#f-{name}")
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)


def test_investigator_screens_randomizes_and_fills_a_visit(browser: Browser, web: WebServer) -> None:
    context, page = sign_in(browser, web, "investigator")
    try:
        screenshots(page, "trials")
        page.get_by_role("link", name="WEB-SLE").click()
        screenshots(page, "trial")
        page.get_by_role("link", name="Screen a patient").click()
        page.get_by_label("Age (years)").fill("38")
        page.get_by_label("Sex").select_option("F")
        page.get_by_label("Meets the SLE classification criteria").select_option("yes")
        page.get_by_label("Moderately active SLE").select_option("yes")
        screenshots(page, "screen")
        page.get_by_role("button", name="Screen").click()
        expect(page.locator("#status")).to_have_text("eligible")
        page.get_by_role("button", name="Randomize").click()
        expect(page.locator("#status")).to_have_text("randomized")
        kit = page.locator("#kit").inner_text()
        assert re.fullmatch(r"\w+", kit), kit
        screenshots(page, "participant")
        participant_url = page.url

        page.locator("#visit-day0").get_by_role("link", name="SLE disease activity and laboratory").click()
        _fill_visit(page, {**SLE_VISIT, "hemoglobin": "99"})  # g/dL: far outside the plausible range
        page.get_by_role("button", name="Save").click()
        error = page.locator("#e-hemoglobin")
        expect(error).to_contain_text("out of range")
        expect(error).to_contain_text("hemoglobin")
        expect(page.locator("#f-hemoglobin")).to_have_attribute("aria-invalid", "true")
        screenshots(page, "form-error")

        page.locator("#f-hemoglobin").fill("118")  # typed in g/L: stored as 11.8 g/dL
        page.locator("#u-hemoglobin").select_option("g/L")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#saved")).to_be_visible()
        expect(page.locator("#f-hemoglobin")).to_have_value("11.8")
        expect(page.locator("#u-hemoglobin")).to_have_value("g/dL")

        # a change to saved data asks for a reason, then keeps it in the history
        page.locator("#f-hemoglobin").fill("11.6")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#e-reason")).to_contain_text("reason")
        page.get_by_label("Reason for the change").fill("transcription error, lab report rechecked")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#saved")).to_be_visible()
        row = page.get_by_role("row").filter(has_text="transcription error, lab report rechecked")
        expect(row).to_contain_text("11.6")
        screenshots(page, "form-saved")

        # the visit's other form, then the signature (password again and the trial's meaning)
        page.goto(participant_url)
        page.locator("#visit-day0").get_by_role("link", name="Study injection").click()
        page.get_by_label("Injection given (1.5 cc IM)").select_option("yes")
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#saved")).to_be_visible()
        page.goto(participant_url)
        visit = page.locator("#visit-day0")
        visit.get_by_text("Sign this visit").click()
        visit.get_by_role("checkbox").check()
        visit.get_by_label("Your password").fill("not the password at all")
        visit.get_by_role("button", name="Sign").click()
        expect(page.locator("#sign-error")).to_contain_text("password")
        visit = page.locator("#visit-day0")
        visit.get_by_text("Sign this visit").click()
        visit.get_by_role("checkbox").check()
        visit.get_by_label("Your password").fill(web.passwords["investigator"])
        visit.get_by_role("button", name="Sign").click()
        expect(page.locator("#visit-day0 .signature")).to_contain_text("valid")
    finally:
        context.close()

    # the page wrote through the same functions as the API: the API reads the same record back
    token = httpx.post(
        f"{web.base_url}/token",
        data={"username": web.user("monitor"), "password": web.passwords["monitor"]},
        timeout=30,
    ).json()["access_token"]
    pid = int(participant_url.rstrip("/").rsplit("/", 1)[1])
    book = httpx.get(
        f"{web.base_url}/trials/{web.trial_id}/participants/{pid}/casebook",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()
    day0 = next(v for v in book["visits"] if v["visit"] == "day0")
    assert day0["forms"]["sle_visit"]["values"]["hemoglobin"] == 11.6
    assert day0["forms"]["sle_visit"]["version"] == 2
    assert day0["forms"]["sle_visit"]["visit_date"] == date.today().isoformat()
    assert day0["signature"]["state"] == "valid"


def test_monitor_raises_a_query_the_investigator_answers(browser: Browser, web: WebServer) -> None:
    form_url = f"/web/trials/{web.trial_id}/participants/{web.seeded_participant}/visits/day0/forms/sle_visit"
    monitor, mpage = sign_in(browser, web, "monitor")
    investigator, ipage = sign_in(browser, web, "investigator")
    try:
        mpage.goto(form_url)
        expect(mpage.get_by_role("button", name="Save")).to_have_count(0)  # the monitor reads, never edits
        expect(mpage.locator("#v-platelets")).to_contain_text("210")
        expect(mpage.locator("#v-platelets")).to_contain_text("query open")  # the seeded query, at its field
        mpage.get_by_label("Field").select_option("c3_mg_dl")
        mpage.get_by_label("Question").fill("C3 lower than at screening: please check the unit")
        mpage.get_by_role("button", name="Raise query").click()
        thread = mpage.locator("article.query").filter(has_text="C3 lower than at screening")
        expect(thread).to_contain_text("open")
        expect(thread.locator("h3")).to_contain_text("Complement C3")
        assert "/forms/sle_visit" in mpage.url  # swapped in place by htmx, no page load
        screenshots(mpage, "form-monitor")

        ipage.goto(f"/web/trials/{web.trial_id}/queries")
        expect(ipage.get_by_role("row").filter(has_text="C3 lower than at screening")).to_contain_text("open")
        screenshots(ipage, "open-queries")
        ipage.get_by_role("row").filter(has_text="C3 lower than at screening").get_by_role("link").click()
        thread = ipage.locator("article.query").filter(has_text="C3 lower than at screening")
        thread.get_by_label("Answer: message").fill("checked against the lab report: 58 mg/dL is right")
        thread.get_by_role("button", name="Answer").click()
        expect(ipage.locator("article.query").filter(has_text="C3 lower than at screening")).to_contain_text(
            "answered"
        )

        mpage.reload()
        thread = mpage.locator("article.query").filter(has_text="C3 lower than at screening")
        expect(thread).to_contain_text("58 mg/dL is right")
        thread.get_by_label("Close: message").fill("resolved, thank you")
        thread.get_by_role("button", name="Close").click()
        thread = mpage.locator("article.query").filter(has_text="C3 lower than at screening")
        expect(thread.locator("h3")).to_contain_text("closed")
        expect(thread.get_by_role("button")).to_have_count(0)
    finally:
        monitor.close()
        investigator.close()


def test_work_list_of_visits_names_the_seeded_participant(browser: Browser, web: WebServer) -> None:
    context, page = sign_in(browser, web, "statistician")
    try:
        page.goto(f"/web/trials/{web.trial_id}/visits")
        # day 0 lacks its injection form and its window (day 0 only) closes today: due, not done
        rows = page.get_by_role("row").filter(has_text="day0")
        expect(rows.first).to_contain_text("injection")
        screenshots(page, "visits")
    finally:
        context.close()
