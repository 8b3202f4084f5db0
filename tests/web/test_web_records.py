"""The records pages in a real browser: exports (a blinded zip holds no arm; the unblinded one only
for the statistician after the lock, which the admin takes through the lock page), the analysis
report of the locked trial (HTML and PDF), adverse events (an error next to its field, corrected,
then the expedited report sent), the admin's users page (a new user signs in; a deactivated one
cannot), axe on every page at both sizes.

The shared trial of the ``web`` fixture stays open: the lock is taken on a trial of this module's
own (the SLE template under another code, its arms as in the template, which its analysis plan
names), with twelve participants whose visits day 0, 22 and 43 are saved."""

from __future__ import annotations

import io
import random
import re
import secrets
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select
from webworld import ARMS, WebServer, screenshots, sign_in

from immunostrat.trial import forms, ops, service
from immunostrat.trial.audit import Actor
from immunostrat.trial.db import transaction
from immunostrat.trial.models import Allocation
from immunostrat.trial.schemas import FormIn, ScreeningIn

pytestmark = pytest.mark.browser  # Playwright drives the system Chromium

AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}
MEX_FALSE = (
    "mex_neurological_disorder",
    "mex_renal_disorder",
    "mex_vasculitis",
    "mex_hemolysis",
    "mex_myositis",
    "mex_mucocutaneous",
    "mex_serositis",
    "mex_fever",
    "mex_fatigue",
)


@dataclass
class RecordsTrial:
    trial_id: int
    code: str
    arms: tuple[str, ...]


@pytest.fixture(scope="module")
def records_trial(web: WebServer) -> Iterator[RecordsTrial]:
    """A trial of this module in the server's database: twelve participants randomized 43 days
    ago (the allocation time set back so that the day-22 and day-43 windows are open today)."""
    spec = ops.load_trial_spec(ops.template_path("sle-secretome")).model_dump(mode="json")
    spec.update(code="REC-SLE", title="Secretome trial for the records pages")
    setup = ops.init_trial(web.db_url, spec)
    engine = ops.open_db(web.db_url)
    investigator = Actor("records-seed", "investigator")
    rng = random.Random(15)
    screening = ScreeningIn.model_validate(
        {"site": "S01", "age": 35, "sex": "F", "form": {"sle_classified": "yes", "moderately_active": "yes"}}
    )
    for i in range(12):
        with transaction(engine) as session:
            rules = service.screening_rules(service.trial_by_id(session, setup.trial_id))
            result = service.screen(
                session, investigator, setup.trial_id, screening, service.evaluate_screening(rules, screening)
            )
            pid = result.participant_id
            service.randomize(session, investigator, setup.trial_id, pid, f"records-{i}")
            allocation = session.scalars(select(Allocation).where(Allocation.participant_id == pid)).one()
            allocation.allocated_at = datetime.now(UTC) - timedelta(days=43)
            session.flush()
            for visit, days_ago in (("day0", 43), ("day22", 21), ("day43", 0)):
                values: dict[str, object] = dict.fromkeys(MEX_FALSE, False)
                values.update(
                    mex_arthritis=rng.random() < 0.6,
                    hemoglobin=12.0,
                    platelets=200,
                    wbc=5.0,
                    lymphocytes=1.2,
                    c3_mg_dl=round(70 + rng.random() * 20, 1),
                    c4_mg_dl=round(10 + rng.random() * 5, 1),
                    il6_pg_ml=round(5 + rng.random() * 5, 1),
                    tnf_alpha_pg_ml=round(8 + rng.random() * 4, 1),
                )
                body = FormIn(visit_date=date.today() - timedelta(days=days_ago), values=values)
                forms.save_form(session, investigator, setup.trial_id, pid, visit, "sle_visit", body)
    yield RecordsTrial(setup.trial_id, str(spec["code"]), tuple(spec["arms"]))


def _zip_text(body: bytes) -> dict[str, str]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return {name: archive.read(name).decode("latin-1") for name in archive.namelist()}


def _violations(axe: Axe, page: Page) -> list[str]:
    found = axe.run(page, options=AXE_OPTIONS).response["violations"]
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in found
        if v.get("impact") in ("serious", "critical")
    ]


def _axe_both_sizes(axe: Axe, page: Page, label: str) -> list[str]:
    problems = []
    for width, height in ((1280, 800), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        problems += [f"{label} {width}px: {v}" for v in _violations(axe, page)]
    page.set_viewport_size({"width": 1280, "height": 800})
    return problems


def test_blinded_export_holds_no_arm_and_unblinded_is_refused_before_the_lock(
    browser: Browser, web: WebServer
) -> None:
    base = f"/web/trials/{web.trial_id}"
    context, page = sign_in(browser, web, "monitor")
    try:
        page.goto(f"{base}/exports")
        expect(page.locator("#unblinded-why")).to_contain_text("statistician only")
        assert all(arm not in page.content().lower() for arm in ARMS)
        screenshots(page, "records-exports")
        with page.expect_download() as info:
            page.get_by_role("button", name="Download").click()
        download = info.value
        assert download.suggested_filename == "WEB-SLE-blinded-csv.zip"
        with open(download.path(), "rb") as f:
            files = _zip_text(f.read())
        assert "participants.csv" in files and "data_dictionary.csv" in files
        for fmt in ("parquet", "odm", "xpt", "dta", "sav"):
            r = page.request.get(f"{base}/exports/download?format={fmt}&blinded=yes")
            assert r.status == 200, (fmt, r.status)
            for name, text in _zip_text(r.body()).items():
                for arm in ARMS:
                    assert arm not in text.lower(), (fmt, name, arm)
        for name, text in files.items():
            for arm in ARMS:
                assert arm not in text.lower(), (name, arm)
        # the participants are in it, only the arm is not
        assert "kit" in files["participants.csv"].splitlines()[0]
        r = page.request.get(f"{base}/exports/download?format=csv&blinded=no")
        assert r.status == 403 and "statistician only" in r.text()
        assert all(arm not in r.text() for arm in ARMS)
    finally:
        context.close()
    context, page = sign_in(browser, web, "statistician")
    try:
        r = page.request.get(f"{base}/exports/download?format=csv&blinded=no")
        assert r.status == 409 and "lock" in r.text()
        page.goto(f"{base}/analysis")
        expect(page.locator("#not-available")).to_contain_text("database lock")
        assert all(arm not in page.content().lower() for arm in ARMS)
        screenshots(page, "records-analysis-before-lock")
    finally:
        context.close()
    context, page = sign_in(browser, web, "investigator")
    try:
        assert page.request.get(f"{base}/exports").status == 403
        assert page.request.get(f"{base}/analysis").status == 403
    finally:
        context.close()


def test_admin_locks_and_statistician_exports_unblinded_and_reads_the_report(
    browser: Browser, web: WebServer, records_trial: RecordsTrial
) -> None:
    base = f"/web/trials/{records_trial.trial_id}"
    axe, problems = Axe(), []
    context, page = sign_in(browser, web, "admin", bypass_csp=True)  # bypass_csp: axe's script runs
    try:
        page.goto(base)
        page.get_by_role("link", name="Database lock").click()
        page.get_by_label("Type the trial's code").fill("REC-SLX")
        page.get_by_label("Your password again").fill(web.passwords["admin"])
        page.get_by_role("button", name="Lock the database").click()
        expect(page.locator("#e-code")).to_contain_text("REC-SLE")
        expect(page.locator("#f-code")).to_have_attribute("aria-invalid", "true")
        page.get_by_label("Type the trial's code").fill("REC-SLE")
        page.get_by_label("Your password again").fill("not the password at all")
        page.get_by_role("button", name="Lock the database").click()
        expect(page.locator("#e-password")).to_have_text("wrong password")
        screenshots(page, "records-lock-error")
        problems += _axe_both_sizes(axe, page, "lock with errors")
        page.get_by_label("Your password again").fill(web.passwords["admin"])
        page.get_by_role("button", name="Lock the database").click()
        expect(page.locator("#locked")).to_contain_text("is locked")
        screenshots(page, "records-lock-done")
    finally:
        context.close()

    context, page = sign_in(browser, web, "statistician", bypass_csp=True)
    try:
        page.goto(base)
        page.get_by_role("link", name="Exports").click()
        page.get_by_label("Format").select_option("csv")
        page.get_by_label("Unblinded: with each participant's arm").check()
        with page.expect_download() as info:
            page.get_by_role("button", name="Download").click()
        assert info.value.suggested_filename == "REC-SLE-unblinded-csv.zip"
        with open(info.value.path(), "rb") as f:
            files = _zip_text(f.read())
        participants = files["participants.csv"]
        assert any(arm in participants for arm in records_trial.arms), participants[:500]

        page.get_by_role("link", name="Analysis report").click()
        expect(page.locator("#primary-summary")).to_contain_text("MEX-SLEDAI")
        screenshots(page, "records-analysis")
        problems += _axe_both_sizes(axe, page, "analysis report")
        with page.expect_download() as info:
            page.get_by_role("link", name="Full report (HTML, self-contained)").click()
        with open(info.value.path(), encoding="utf-8") as f:
            html = f.read()
        assert "<html" in html.lower() and "MEX-SLEDAI" in html
        with page.expect_download() as info:
            page.get_by_role("link", name="Full report (PDF, A4)").click()
        with open(info.value.path(), "rb") as f:
            assert f.read(5) == b"%PDF-"
        # a run the page did not make (or another user's) is not served: a new analysis is
        r = page.request.get(f"{base}/analysis/report.html?run=not-a-run")
        assert r.status == 200 and "MEX-SLEDAI" in r.text()
    finally:
        context.close()
    assert problems == [], "\n".join(problems)


def test_adverse_event_error_then_corrected_then_reported(browser: Browser, web: WebServer) -> None:
    base = f"/web/trials/{web.trial_id}"
    context, page = sign_in(browser, web, "investigator")
    try:
        page.goto(base)
        page.get_by_role("link", name="Adverse events").click()
        page.get_by_label("Participant").select_option(index=1)
        page.get_by_label("Term (MedDRA").fill("Pneumonia")
        page.get_by_label("MedDRA code").fill("1234")
        page.get_by_label("Onset (study day").fill("3")
        page.get_by_label("CTCAE grade").select_option("3")
        page.get_by_label("Serious (ICH E2A)").select_option("yes")
        page.get_by_role("button", name="Record the adverse event").click()
        expect(page.locator("#e-meddra_code")).to_contain_text("8 digits")
        expect(page.locator("#f-meddra_code")).to_have_attribute("aria-invalid", "true")
        expect(page.get_by_label("Term (MedDRA")).to_have_value("Pneumonia")  # kept
        screenshots(page, "records-ae-error")
        page.get_by_label("MedDRA code").fill("10035664")
        page.get_by_role("button", name="Record the adverse event").click()
        # the checks across fields (ICH E2A): a serious event names its criteria
        expect(page.locator("#e-seriousness")).to_contain_text("seriousness criteria")
        expect(page.locator("#e-meddra_code")).to_have_count(0)

        page.get_by_label("hospitalisation").check()
        page.get_by_role("button", name="Record the adverse event").click()
        recorded = page.locator("p[role=status]")
        expect(recorded).to_contain_text("recorded")
        ae_id = re.search(r"\d+", recorded.inner_text())
        assert ae_id is not None
        row = page.locator(f"#ae-{ae_id.group(0)}")
        expect(row).to_contain_text("Pneumonia (10035664)")
        expect(row).to_contain_text(re.compile(r"due in 2[34] h"))
        screenshots(page, "records-adverse-events")
        row.get_by_label("Sponsor's case number").fill("SPN-0001")
        row.get_by_role("button", name="Report sent").click()
        row = page.locator(f"#ae-{ae_id.group(0)}")
        expect(row).to_contain_text("reported")
        expect(row.get_by_role("button", name="Report sent")).to_have_count(0)
    finally:
        context.close()
    context, page = sign_in(browser, web, "monitor")
    try:
        page.goto(f"{base}/adverse-events")
        expect(page.locator("table")).to_contain_text("Pneumonia")
        expect(page.get_by_role("button", name="Record the adverse event")).to_have_count(0)
        html = page.content().lower()
        assert all(arm not in html for arm in ARMS)
        r = page.request.post(f"{base}/adverse-events", form={"term": "x"})
        assert r.status == 403
    finally:
        context.close()


def test_admin_creates_a_user_who_signs_in_then_deactivates_them(browser: Browser, web: WebServer) -> None:
    username = f"new-monitor-{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(18)
    context, page = sign_in(browser, web, "admin")
    try:
        page.get_by_role("link", name="Users").click()
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill("short")
        page.get_by_label("Role", exact=True).select_option("monitor")
        page.get_by_role("button", name="Create the user").click()
        expect(page.locator("#e-password")).to_contain_text("characters")
        expect(page.get_by_label("Username")).to_have_value(username)
        screenshots(page, "records-users-error")
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Create the user").click()
        expect(page.locator("p[role=status]")).to_contain_text(f"Created {username}")
        expect(page.locator(f"#user-{username}")).to_contain_text("active")
        screenshots(page, "records-users")
    finally:
        context.close()

    new = browser.new_context(base_url=web.base_url)
    page = new.new_page()
    page.goto("/web/sign-in")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/web/")
    expect(page.locator("header")).to_contain_text(f"{username} (monitor)")
    new.close()

    context, page = sign_in(browser, web, "admin")
    try:
        page.goto("/web/users")
        page.get_by_role("button", name=f"Deactivate {username}").click()
        expect(page.locator(f"#user-{username}")).to_contain_text("deactivated")
        expect(page.locator("#user-admin-web")).to_contain_text("(you)")  # no buttons on one's own row
    finally:
        context.close()
    again = browser.new_context(base_url=web.base_url)
    page = again.new_page()
    page.goto("/web/sign-in")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("body")).to_contain_text("Wrong username or password")
    again.close()


def test_records_pages_pass_axe_at_both_sizes(browser: Browser, web: WebServer) -> None:
    axe = Axe()
    base = f"/web/trials/{web.trial_id}"
    pages = {
        "investigator": [f"{base}/adverse-events"],
        "monitor": [f"{base}/exports", f"{base}/adverse-events"],
        "statistician": [f"{base}/exports", f"{base}/analysis"],
        "admin": ["/web/users", f"{base}/lock"],
    }
    problems: list[str] = []
    for role, paths in pages.items():
        context, page = sign_in(browser, web, role, bypass_csp=True)
        try:
            for path in paths:
                page.goto(path)
                problems += _axe_both_sizes(axe, page, f"{role} {path}")
            if role == "investigator":  # the form with its errors shown
                page.get_by_role("button", name="Record the adverse event").click()
                expect(page.locator("#e-participant")).to_be_visible()
                problems += _axe_both_sizes(axe, page, f"{role} adverse-event errors")
        finally:
            context.close()
    assert problems == [], "\n".join(problems)
