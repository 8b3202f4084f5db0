"""The in-silico page: a modeller runs a small batch of simulated trials in the background, sees the
progress bar and then the results, downloads the per-trial CSV (one row per trial, its success column
averaging to the power shown); sizes out of bounds are refused by name; runs belong to their user;
other roles get 403; axe finds no serious violation at the desktop and phone sizes."""

from __future__ import annotations

import csv
import re
import secrets
from collections.abc import Iterator

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect
from webworld import WebServer, screenshots, sign_in

from immunostrat.trial import ops

pytestmark = pytest.mark.browser  # Playwright drives the system Chromium

AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}
SMALL = {"n": "40", "trials": "10", "population_size": "200", "seed": "1"}
"""A run of a few seconds on two busy cores: the population first (most of it), then the trials."""


@pytest.fixture(scope="module")
def second_modeller(web: WebServer) -> Iterator[tuple[str, str]]:
    """Another modeller, who must not reach the first one's runs."""
    username, password = "modeller2-insilico", secrets.token_urlsafe(16)
    ops.create_user(web.db_url, username, password, "modeller")
    yield username, password


def _violations(page: Page) -> list[str]:
    found = Axe().run(page, options=AXE_OPTIONS).response["violations"]
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in found
        if v.get("impact") in ("serious", "critical")
    ]


def _axe_both_sizes(page: Page, name: str) -> list[str]:
    problems = []
    size = page.viewport_size
    for width, height in ((1280, 800), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        problems += [f"{name} {width}px: {v}" for v in _violations(page)]
    if size is not None:
        page.set_viewport_size(size)
    return problems


def _fill(page: Page, values: dict[str, str], design: str = "immunosep") -> None:
    page.get_by_label("Design").select_option(design)
    page.get_by_label("Model variant").select_option("reynolds2006")
    page.get_by_label("Primary endpoint").select_option("sofa_response")
    page.get_by_label("Patients per trial").fill(values["n"])
    page.get_by_label("Number of trials").fill(values["trials"])
    page.get_by_label("Virtual population").fill(values["population_size"])
    page.get_by_label("Seed").fill(values["seed"])


def test_modeller_runs_trials_sees_progress_then_results_and_downloads_them(
    browser: Browser, web: WebServer, second_modeller: tuple[str, str]
) -> None:
    context, page = sign_in(browser, web, "modeller", bypass_csp=True)  # axe's script runs in the page
    problems: list[str] = []
    try:
        page.get_by_role("navigation", name="Main").get_by_role("link", name="In-silico trials").click()
        expect(page.get_by_role("heading", name="In-silico trials")).to_be_visible()
        screenshots(page, "insilico-form")
        problems += _axe_both_sizes(page, "form")

        # out of bounds: refused, named at its field, nothing started
        _fill(page, {**SMALL, "n": "0", "trials": "100000"})
        page.get_by_role("button", name="Run the trials").click()
        expect(page.locator("#is-n-error")).to_have_text("Patients per trial must be from 2 to 2,000 (got 0)")
        expect(page.locator("#is-trials-error")).to_contain_text("from 1 to 5,000 (got 100,000)")
        expect(page.get_by_label("Patients per trial")).to_have_attribute("aria-invalid", "true")
        assert "/web/insilico/runs/" not in page.url
        screenshots(page, "insilico-form-error")
        problems += _axe_both_sizes(page, "form with errors")

        # a run: the progress bar while it simulates, then the results without a reload (htmx polling)
        _fill(page, SMALL)
        page.get_by_role("button", name="Run the trials").click()
        page.wait_for_url(re.compile(r".*/web/insilico/runs/[\w-]+$"))
        run_url = page.url
        expect(page.locator("progress#run-progress")).to_be_visible()
        expect(page.get_by_text(re.compile(r"Step [123] of 3"))).to_be_visible()
        screenshots(page, "insilico-progress")
        expect(page.locator("#power-value")).to_be_visible(timeout=90_000)
        expect(page.locator("progress")).to_have_count(0)  # polling stopped with the results
        screenshots(page, "insilico-results")
        problems += _axe_both_sizes(page, "results")

        shown = float(page.locator("#power-value").inner_text())
        successes = int(page.locator("#power-count").inner_text())
        expect(page.locator("#rates")).to_contain_text("sofa response (primary)")
        expect(page.locator("#rates thead")).to_contain_text("treatment")
        expect(page.locator("#rates thead")).to_contain_text("placebo")
        expect(page.locator("#strata")).to_contain_text("MALS")
        expect(page.locator("#strata")).to_contain_text("immunoparalysis")
        expect(page.locator("#power-se")).to_contain_text("95% interval")
        plot = page.locator("#differences svg[role=img]")
        expect(plot).to_have_count(1)
        hover = plot.locator("title").all_text_contents()  # each bar's hover text, no script
        counted = [int(m.group(1)) for t in hover if (m := re.search(r": (\d+) trials?,", t))]
        assert len(counted) == len(hover) and sum(counted) == int(SMALL["trials"])

        with page.expect_download() as info:
            page.locator("#csv").click()
        download = info.value
        assert download.suggested_filename.endswith(".csv")
        with open(download.path(), encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == int(SMALL["trials"])
        assert {r["n"] for r in rows} == {SMALL["n"]}
        wins = [r["significant_benefit"] == "true" for r in rows]
        assert successes == sum(wins)
        assert 0 < successes < len(wins)  # this seed's power is neither 0 nor 1: the check can fail
        assert shown == round(sum(wins) / len(wins), 3)
        se = float(re.search(r"SE ([0-9.]+)", page.locator("#power-se").inner_text()).group(1))  # type: ignore[union-attr]
        p = sum(wins) / len(wins)
        assert se == round((p * (1 - p) / len(wins)) ** 0.5, 3)

        # the run is listed on the form page, and belongs to this user only
        page.goto("/web/insilico")
        expect(page.get_by_role("region", name=re.compile("Your runs"))).to_contain_text(f"power {shown:.3f}")

        # a POST without the form's security token is refused
        refused = page.request.post("/web/insilico", form={**SMALL, "design": "immunosep"})
        assert refused.status == 403
    finally:
        context.close()
    assert problems == [], "\n".join(problems)

    other = browser.new_context(base_url=web.base_url)
    try:
        page = other.new_page()
        page.goto("/web/sign-in")
        page.get_by_label("Username").fill(second_modeller[0])
        page.get_by_label("Password").fill(second_modeller[1])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/web/")
        for path in (run_url, f"{run_url}/progress", f"{run_url}/trials.csv"):
            response = page.goto(path)
            assert response is not None and response.status == 404, path
        page.goto("/web/insilico")
        expect(page.get_by_role("region", name=re.compile("Your runs"))).to_have_count(0)
    finally:
        other.close()


def test_at_most_two_runs_at_once_and_a_run_can_be_cancelled(browser: Browser, web: WebServer) -> None:
    big = {"n": "2000", "trials": "5000", "population_size": "10000", "seed": "3"}
    context, page = sign_in(browser, web, "modeller")
    try:
        runs = []
        for _ in range(2):
            page.goto("/web/insilico")
            _fill(page, big)
            page.get_by_role("button", name="Run the trials").click()
            expect(page.locator("progress#run-progress")).to_be_visible()
            runs.append(page.url)
        page.goto("/web/insilico")
        _fill(page, big)
        page.get_by_role("button", name="Run the trials").click()
        expect(page.get_by_role("alert")).to_contain_text("2 in-silico runs are already simulating")
        for url in runs:
            page.goto(url)
            page.get_by_role("button", name="Cancel the run").click()
        for url in runs:
            page.goto(url)
            expect(page.locator("#run-error")).to_have_text("cancelled", timeout=60_000)
            expect(page.locator("#csv")).to_have_count(0)
    finally:
        context.close()


@pytest.mark.parametrize("role", ["statistician", "pharmacist", "clinician"])
def test_other_roles_get_403(browser: Browser, web: WebServer, role: str) -> None:
    context, page = sign_in(browser, web, role)
    try:
        expect(
            page.get_by_role("navigation", name="Main").get_by_role("link", name="In-silico trials")
        ).to_have_count(0)
        response = page.goto("/web/insilico")
        assert response is not None and response.status == 403
        expect(page.get_by_role("alert")).to_contain_text("may not open this page")
    finally:
        context.close()


def test_bounds_on_both_sides_of_each_edge() -> None:
    from immunostrat.web.insilico import BOUNDS, DEFAULTS, parse_spec

    for name, (low, high) in BOUNDS.items():
        for value, ok in ((low - 1, False), (low, True), (high, True), (high + 1, False)):
            spec, errors = parse_spec({**DEFAULTS, name: str(value)})
            assert (name not in errors) is ok, (name, value, errors)
            assert set(errors) <= {name}
            if ok:
                assert spec[name] == value
    assert "whole number" in parse_spec({**DEFAULTS, "n": "2.5"})[1]["n"]
    assert "design" in parse_spec({**DEFAULTS, "design": "magic"})[1]
    assert "model" in parse_spec({**DEFAULTS, "model": "magic"})[1]
    assert "endpoint" in parse_spec({**DEFAULTS, "endpoint": "magic"})[1]
