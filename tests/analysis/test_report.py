"""The report: opens in headless Chromium, every figure exists and names both arms, the PDF is
produced, and the JSON holds the same numbers as the page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from immunostrat.analysis.plan import load_plan
from immunostrat.analysis.report import CHROMIUM_ARGS, analyze, find_chromium, fmt_p
from immunostrat.analysis.schema import TrialExport
from immunostrat.errors import InputError

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def report(sepsis_report: dict) -> dict:
    if not sepsis_report["browser"]:
        pytest.skip("no Chromium executable found (set IMMUNOSTRAT_CHROMIUM or install chromium)")
    return sepsis_report


def _expected_figures() -> list[str]:
    plan = load_plan("immunosep-2025")
    ids = ["fig-consort"] + [f"fig-forest-{e}" for e in plan.report.forest] + ["fig-km"]
    return ids + [f"fig-trajectory-{t.variable}" for t in plan.report.trajectories]


def test_report_opens_and_figures_name_the_arms(report: dict) -> None:
    from playwright.sync_api import sync_playwright

    html_path = report["dir"] / "report.html"
    arms = ["immunotherapy", "placebo"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html_path.resolve().as_uri(), wait_until="load")
            assert "ImmunoSep" in page.title()
            for fig_id in _expected_figures():
                fig = page.locator(f"figure#{fig_id}")
                assert fig.count() == 1, fig_id
                svg = fig.locator("svg")
                assert svg.count() == 1, fig_id
                box = svg.bounding_box()
                assert box is not None and box["width"] > 200 and box["height"] > 100, fig_id
                svg_text = svg.evaluate(
                    "s => Array.from(s.querySelectorAll('text')).map(t => t.textContent).join(' ')"
                )
                caption = fig.locator("figcaption").inner_text()
                for arm in arms:
                    assert arm in svg_text, (fig_id, arm)
                    assert arm in caption, (fig_id, arm)
            # Table 1 and the primary endpoint table are there, headed by the arms
            t1 = page.locator("#table-1").inner_text()
            assert all(a in t1 for a in arms)
            prim = page.locator("table[data-endpoint='sofa_response_day9']").inner_text()
            counts = report["results"]["endpoints"][0]["result"]["counts"]["immunotherapy"]
            assert f"{counts['events']}/{counts['n']}" in prim
            assert errors == []
        finally:
            browser.close()


def test_report_is_self_contained(report: dict) -> None:
    text = (report["dir"] / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']https?:""", text)
    assert "<script" not in text


def test_pdf_produced(report: dict) -> None:
    pdf = report["dir"] / "report.pdf"
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-")
    assert len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 3
    assert report["results"]["written"]["pdf"] == str(pdf)


def test_json_matches_page(report: dict) -> None:
    saved = json.loads((report["dir"] / "results.json").read_text())
    prim = saved["endpoints"][0]["result"]["estimates"]["fisher"]["p_value"]
    assert prim == pytest.approx(
        report["results"]["endpoints"][0]["result"]["estimates"]["fisher"]["p_value"]
    )
    assert fmt_p(prim) in (report["dir"] / "report.html").read_text()


def test_failed_run_leaves_nothing(tmp_path: Path, sepsis_dir: Path, sle_export: TrialExport) -> None:
    sle_dir = sle_export.write(tmp_path / "sle")
    with pytest.raises(InputError):
        analyze(sle_dir, "immunosep-2025", tmp_path / "r.html", json_path=tmp_path / "r.json")
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "r.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["sle"]


def test_p_formatting() -> None:
    assert fmt_p(0.0015) == ".002"
    assert fmt_p(0.0004) == "<.001"
    assert fmt_p(0.3349) == ".33"
    assert fmt_p(0.0123) == ".01"
    assert fmt_p(None) == "—"
    assert fmt_p(0.8973) == ".90"


def test_p_text() -> None:
    from immunostrat.analysis.report import p_text

    assert p_text(0.0004) == "P < .001"
    assert p_text(0.0312) == "P = .03"


def test_docs_example_is_what_the_code_produces(tmp_path: Path) -> None:
    """The example quoted in docs/analysis.md is recomputed, not pasted."""
    from immunostrat.analysis.report import primary_summary
    from immunostrat.analysis.runner import run_analysis
    from immunostrat.analysis.synthetic import write_synthetic_trial

    folder = write_synthetic_trial(tmp_path / "demo-export")
    line = primary_summary(run_analysis(folder, "immunosep-2025", sensitivity=False))
    doc = Path(__file__).resolve().parents[2] / "docs" / "analysis.md"
    assert f"> {line}\n" in doc.read_text()
