"""The cohort pages on the real MIMIC-IV demo: `cohort build` writes the demo cohort once into a
cohorts directory, a uvicorn of our own serves it (``IMMUNOSTRAT_COHORTS_DIR``), and Chromium signs
in as a researcher, opens the cohort, reads attrition, trajectories and mortality, finds a stay and
opens its timeline; the numbers on the pages are checked against the Parquet files read here. A
trial role and a clinician get 403; no page opens a folder outside the directory's listing; axe at
both sizes; screenshots."""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, BrowserContext, Page, expect
from webworld import running_app, screenshots

from immunostrat.trial import ops

pytestmark = pytest.mark.browser  # Playwright drives the system Chromium

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MIMIC = SHARED / "mimic-iv-demo-2.2"
MEDS = SHARED / "mimic-iv-demo-meds" / "mimic_iv_demo_meds_events.parquet"
NAME = "mimic-iv-demo"
NO_FOLLOW_UP = "no-follow-up"
MALS_STAY = "30932571"
"""The demo's one stay with ferritin above 4,420 ng/mL: Sepsis-3 and MALS (README, cohort engine)."""
ROLES = ("researcher", "investigator", "clinician", "modeller")
AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}


@dataclass
class CohortServer:
    base_url: str
    folder: Path
    root: Path
    passwords: dict[str, str]


@pytest.fixture(scope="module")
def cohorts_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo cohort built once by the README's `cohort build` call (with the three attrition
    steps) into a cohorts directory, beside a folder that is not a cohort and a hidden one."""
    if not MIMIC.exists() or not MEDS.exists():
        pytest.skip(f"real demo data not available: {MIMIC} or {MEDS} is absent (shared data folder missing)")
    from typer.testing import CliRunner

    from immunostrat.cli import app

    root = tmp_path_factory.mktemp("cohorts")
    args = ["cohort", "build", "--source", "mimic-iv", "--path", str(MIMIC), "--meds", str(MEDS)]
    args += ["--output", str(root / NAME), "--adults", "--first-stay", "--min-stay-hours", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    # a build whose source records no death or discharge (as PhysioNet 2019): mortality unknown
    shutil.copytree(root / NAME, root / NO_FOLLOW_UP)
    summary = json.loads((root / NO_FOLLOW_UP / "summary.json").read_text())
    summary.update(mortality_28d_known=False, mortality_28d_by_endotype={})
    (root / NO_FOLLOW_UP / "summary.json").write_text(json.dumps(summary))
    (root / "notes").mkdir()  # no summary.json: not listed
    shutil.copytree(root / NAME, root / ".hidden-copy")  # the builder's temporary folders start with "."
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cohorts_root: Path) -> Iterator[CohortServer]:
    folder = tmp_path_factory.mktemp("cohort-web")
    db_url = f"sqlite:///{folder / 'web.db'}"
    os.environ.setdefault("IMMUNOSTRAT_BCRYPT_ROUNDS", "4")
    passwords = {role: secrets.token_urlsafe(16) for role in ROLES}
    for role in ROLES:
        ops.create_user(db_url, f"{role}-cohort", passwords[role], role)
    settings = {"IMMUNOSTRAT_DB_URL": db_url, "IMMUNOSTRAT_COHORTS_DIR": str(cohorts_root)}
    with running_app(settings, folder / "server.log") as base:
        yield CohortServer(base, cohorts_root / NAME, cohorts_root, passwords)


def sign_in(browser: Browser, server: CohortServer, role: str, **options: Any) -> tuple[BrowserContext, Page]:
    context = browser.new_context(
        base_url=server.base_url, viewport={"width": 1280, "height": 800}, **options
    )
    page = context.new_page()
    page.goto("/web/sign-in")
    page.get_by_label("Username").fill(f"{role}-cohort")
    page.get_by_label("Password").fill(server.passwords[role])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/web/")
    return context, page


def _csp_errors(page: Page) -> list[str]:
    """Console messages of the page that report a Content-Security-Policy refusal."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(m.text) if "Content Security Policy" in m.text else None)
    return seen


def _cells(page: Page, selector: str) -> list[list[str]]:
    rows = page.locator(f"{selector} tbody tr")
    return [[c.strip() for c in rows.nth(i).locator("td").all_inner_texts()] for i in range(rows.count())]


def _title_at(page: Page, selector: str) -> str:
    """The hover title the browser shows at the centre of the first element matching ``selector``."""
    target = page.locator(selector).first
    target.scroll_into_view_if_needed()
    box = target.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    script = """([x, y]) => {
        const hit = document.elementFromPoint(x, y);
        const owner = hit && hit.closest("g[pointer-events]");
        return owner ? owner.querySelector(":scope > title").textContent : "";
    }"""
    return str(page.evaluate(script, [x, y]))


# ------------------------------------------------------------------ the numbers, read independently


def _expected_day_means(folder: Path) -> dict[tuple[str, int], tuple[int, float]]:
    """(first known endotype, day) -> (n stays, mean of each stay's worst hourly total that day)."""
    hourly = pl.read_parquet(folder / "hourly_sofa.parquet")
    stays = pl.read_parquet(folder / "stays.parquet")
    per = (
        hourly.filter(pl.col("hour") < 168)
        .with_columns((pl.col("hour") // 24).alias("day"))
        .group_by("stay_id", "day")
        .agg(pl.col("sofa_total").max())
        .join(stays.select("stay_id", "first_endotype"), on="stay_id")
        .group_by("first_endotype", "day")
        .agg(pl.len().alias("n"), pl.col("sofa_total").mean().alias("mean"))
    )
    return {(r["first_endotype"], r["day"]): (r["n"], r["mean"]) for r in per.iter_rows(named=True)}


def _wilson(x: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


# ------------------------------------------------------------------------------------------ tests


def test_researcher_reads_the_demo_cohort(browser: Browser, server: CohortServer) -> None:
    stays = pl.read_parquet(server.folder / "stays.parquet")
    context, page = sign_in(browser, server, "researcher")
    csp = _csp_errors(page)
    try:
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Cohorts").click()
        page.wait_for_url("**/web/cohorts")
        rows = _cells(page, "#cohorts")
        assert [r[0] for r in rows] == [NAME, NO_FOLLOW_UP]  # neither "notes" (no summary.json) nor ".hidden"
        assert rows[0][1] == "mimic-iv" and rows[0][3] == str(stays.height)
        assert rows[0][4] == str(int(stays["sepsis3"].sum()))
        screenshots(page, "cohort-list")

        page.get_by_role("link", name=NAME).click()
        page.wait_for_url(f"**/web/cohorts/{NAME}")
        expect(page.locator("#fact-stays")).to_have_text(str(stays.height))
        # attrition: 140 ICU stays, all adults, 100 first stays, 98 of at least 4 h (the README's numbers)
        attrition = _cells(page, "#attrition")
        assert [r[0] for r in attrition] == ["all stays", "adults", "first stay", "minimum length"]
        assert [int(r[2]) for r in attrition] == [140, 140, 100, stays.height] and stays.height == 98
        assert [int(r[3]) for r in attrition] == [0, 0, 40, 2]
        # trajectories: an SVG with a hover title per point and the same numbers in the table
        plot = page.locator("#trajectory-plot svg")
        expect(plot).to_be_visible()
        titles = plot.locator("title").all_text_contents()
        expected = _expected_day_means(server.folder)
        assert len(titles) == len(expected)
        n, mean = expected[("unknown", 0)]
        assert (
            f"unknown, day 1: mean SOFA {mean:.1f}"
            in titles[[t.startswith("unknown, day 1") for t in titles].index(True)]
        )
        assert any(t.startswith("unknown, day 1") and t.endswith(f"n = {n} stays") for t in titles)
        table = {(r[0], r[1]): r for r in _cells(page, "#trajectory")}
        assert len(table) == len(expected)
        for (endotype, day), (count, value) in expected.items():
            row = table[(endotype, f"day {day + 1}")]
            assert row[2] == str(count) and row[3] == f"{value:.1f}"
        # hovering a point reaches its title (the element under the pointer is in the titled group)
        assert _title_at(page, "#trajectory-plot svg g[id$='-pt-1-0'] use").startswith("unknown, day 1:")
        # the plot drew in colour under the CSP (presentation attributes, no style attribute)
        assert plot.locator("[style]").count() == 0
        assert plot.locator('[fill="#5f6b7a"]').count() > 0
        # mortality by first known endotype, with the Wilson interval
        deaths = stays.group_by("first_endotype").agg(
            pl.len().alias("n"), pl.col("death_28d").sum().alias("d")
        )
        mortality = {r[0]: r for r in _cells(page, "#mortality")}
        for row in deaths.iter_rows(named=True):
            shown = mortality[row["first_endotype"]]
            assert shown[1:3] == [str(row["n"]), str(row["d"])]
            assert shown[3] == f"{100 * row['d'] / row['n']:.1f}"
            lo, hi = _wilson(row["d"], row["n"])
            assert shown[4] == f"{100 * lo:.1f} to {100 * hi:.1f}"
        # dropped rows and missing concepts as summary.json has them
        expect(page.locator("#missing")).to_contain_text("mhla_dr")
        assert len(_cells(page, "#dropped")) > 10
        screenshots(page, "cohort-summary")

        page.get_by_role("link", name="hours").click()
        page.wait_for_url("**bin=hour**")
        columns = page.locator("#trajectory-plot svg title").all_text_contents()
        assert len(columns) == 168 and columns[0].startswith("mals, hour 0: ")  # one per hour
        assert "; unknown, hour 0: " in columns[0]
        assert _title_at(page, "#trajectory-plot svg g[id$='-col-100'] path").startswith("mals, hour 100:")

        # find the MALS stay by typing part of its id (htmx swaps the results in), open its timeline
        page.goto(f"/web/cohorts/{NAME}")
        page.get_by_label("Stay or patient id").fill(MALS_STAY[:5])
        expect(page.locator("#stay-count")).to_contain_text("matching")
        page.get_by_role("link", name=MALS_STAY).click()
        page.wait_for_url(f"**/stays/{MALS_STAY}")
        hourly = pl.read_parquet(server.folder / "hourly_sofa.parquet").filter(pl.col("stay_id") == MALS_STAY)
        mals = hourly.filter(pl.col("endotype") == "mals")
        periods = _cells(page, "#periods")
        assert ["mals", str(mals["hour"].min()), str(mals["hour"].max()), str(mals.height)] == periods[1][:4]
        svg = page.locator("#stay-plot svg")
        expect(svg).to_be_visible()
        hover = svg.locator("title").all_text_contents()
        onset = pl.read_parquet(server.folder / "sepsis3.parquet").filter(pl.col("stay_id") == MALS_STAY)
        stamp = onset["sepsis_time"][0].strftime("%Y-%m-%d %H:%M")
        assert any(t.startswith(f"Sepsis-3 onset: {stamp}") for t in hover)
        peak = hourly.sort("sofa_total", "hour", descending=[True, False]).row(0, named=True)
        assert any(
            t.startswith(f"hour {peak['hour']} (") and f"SOFA {peak['sofa_total']} (" in t for t in hover
        )
        assert page.locator("#hours tbody tr").count() == hourly.height
        assert re.match(r"hour \d+ \(", _title_at(page, "#stay-plot svg g[id$='-axes_1']"))
        expect(page.locator("#stay-facts")).to_contain_text("yes, onset " + stamp)
        screenshots(page, "cohort-stay")
        page.goto(f"/web/cohorts/{NAME}/stays?q=zzz")
        expect(page.locator("#stay-count")).to_contain_text("0 stays")
        page.goto(f"/web/cohorts/{NAME}/stays")
        expect(page.locator("#stay-count")).to_contain_text(f"The first 50 of {stays.height} stays")
        screenshots(page, "cohort-stays")
    finally:
        context.close()
    assert csp == []


def test_mortality_not_in_the_source_is_said(browser: Browser, server: CohortServer) -> None:
    context, page = sign_in(browser, server, "researcher")
    try:
        page.goto(f"/web/cohorts/{NO_FOLLOW_UP}")
        expect(page.locator("#mortality-absent")).to_contain_text("not in this build's source")
        assert page.locator("#mortality").count() == 0
        page.goto(f"/web/cohorts/{NO_FOLLOW_UP}/stays/{MALS_STAY}")
        expect(page.locator("#stay-facts")).to_contain_text("not in the source")
    finally:
        context.close()


@pytest.mark.parametrize("role", ["investigator", "clinician", "modeller"])
def test_other_roles_may_not_open_cohorts(browser: Browser, server: CohortServer, role: str) -> None:
    context, page = sign_in(browser, server, role)
    try:
        assert page.get_by_role("link", name="Cohorts").count() == 0
        for path in ("/web/cohorts", f"/web/cohorts/{NAME}", f"/web/cohorts/{NAME}/stays/{MALS_STAY}"):
            response = page.goto(path)
            assert response is not None and response.status == 403, path
            expect(page.locator("h1")).to_have_text("Not allowed")
            assert MALS_STAY not in page.content()
    finally:
        context.close()


def test_no_folder_outside_the_listing_is_opened(browser: Browser, server: CohortServer) -> None:
    context, _page = sign_in(browser, server, "researcher")
    escape = "..%2F" * 8 + server.root.relative_to("/").as_posix().replace("/", "%2F")
    try:
        for path in (
            "/web/cohorts/.hidden-copy",
            "/web/cohorts/notes",
            "/web/cohorts/..%2F..%2Fetc",
            f"/web/cohorts/{escape}%2F{NAME}",
            f"/web/cohorts/{NAME}/stays/no-such-stay",
            f"/web/cohorts/{NAME}?bin=week",
        ):
            response = context.request.get(path)
            assert response.status == 404, (path, response.status)
            assert "stay_id" not in response.text()
        assert context.request.get(f"/web/cohorts/{NAME}/stays/{MALS_STAY}").status == 200
    finally:
        context.close()


def test_cohort_pages_pass_axe(browser: Browser, server: CohortServer) -> None:
    axe = Axe()
    problems: list[str] = []
    context, page = sign_in(browser, server, "researcher", bypass_csp=True)
    try:
        for path in (
            "/web/cohorts",
            f"/web/cohorts/{NAME}",
            f"/web/cohorts/{NAME}?bin=hour",
            f"/web/cohorts/{NAME}/stays?q=3",
            f"/web/cohorts/{NAME}/stays/{MALS_STAY}",
        ):
            page.goto(path)
            for width, height in ((1280, 800), (390, 844)):
                page.set_viewport_size({"width": width, "height": height})
                found = axe.run(page, options=AXE_OPTIONS).response["violations"]
                problems += [
                    f"{path} {width}px: {v['id']} ({v['impact']}): {v['help']} "
                    f"at {[n['target'] for n in v['nodes']][:3]}"
                    for v in found
                    if v.get("impact") in ("serious", "critical")
                ]
    finally:
        context.close()
    assert problems == [], "\n".join(problems)


def test_unconfigured_directory_is_said(tmp_path: Path) -> None:
    """Without the variable the module names no folder (the list page says how to configure one)."""
    from immunostrat.web import cohorts

    saved = os.environ.pop(cohorts.COHORTS_DIR_ENV, None)
    try:
        assert cohorts.cohorts_dir() is None
        os.environ[cohorts.COHORTS_DIR_ENV] = str(tmp_path / "absent")
        assert cohorts.cohorts_dir() is None
        os.environ[cohorts.COHORTS_DIR_ENV] = str(tmp_path)
        assert cohorts.cohorts_dir() == tmp_path
    finally:
        os.environ.pop(cohorts.COHORTS_DIR_ENV, None)
        if saved is not None:
            os.environ[cohorts.COHORTS_DIR_ENV] = saved


def test_svg_has_no_style_and_unique_ids() -> None:
    from matplotlib.figure import Figure

    from immunostrat.web.svgplot import svg_markup

    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [1, 2], marker="o", gid="point")
    svg = svg_markup(fig, prefix="t1", label="a test", titles={"point": "a <point>"})
    assert "style" not in svg and 'role="img"' in svg and 'aria-label="a test"' in svg
    assert '<g id="t1-point" pointer-events="all"><title>a &lt;point&gt;</title>' in svg
    ids = re.findall(r' id="([^"]+)"', svg)
    assert ids and all(i.startswith("t1-") for i in ids)
    refs = re.findall(r'(?:href="#|url\(#)([^")]+)', svg)
    assert refs and set(refs) <= set(ids)
