"""The report as a journal would print it (issue 17 item 5): JAMA P values, Table 1 with clinical
labels and units, the adverse-event table by term and worst CTCAE grade, CONSORT boxes that keep
every count, forest plots at print size, no internal notes, running headers/footers in the PDF,
and analysis data sets from which the tables can be rebuilt. Expected values are computed here
independently (numpy's linear percentiles are R's quantile type 7; scipy's Fisher test is R's
fisher.test), never typed in."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import fisher_exact

from immunostrat.analysis import report_figures, tables
from immunostrat.analysis.plan import load_plan
from immunostrat.analysis.report import clean_text, fmt_p, p_text, pdf_header_footer
from immunostrat.analysis.runner import consort_counts
from immunostrat.analysis.schema import TrialExport, validate_export

PLAN = load_plan("immunosep-2025")
ARMS = [PLAN.design.treated_arm, PLAN.design.control_arm]


@pytest.mark.parametrize(
    ("p", "text"),
    [
        (0.00049, "<.001"),
        (0.0012, ".001"),
        (0.0094, ".009"),
        (0.0101, ".01"),
        (0.0449, ".04"),
        (0.049, ".049"),  # rounding to .05 would hide P < .05 (AMA Manual 20.9)
        (0.0501, ".05"),
        (0.5, ".50"),
        (0.994, ".99"),
        (0.996, ">.99"),
        (float("nan"), "—"),
    ],
)
def test_jama_p_values(p: float, text: str) -> None:
    assert fmt_p(p) == text
    assert not fmt_p(p).startswith("0")


def test_p_text_has_no_equals_before_a_bound() -> None:
    assert p_text(0.0002) == "P < .001"
    assert p_text(0.999) == "P > .99"
    assert p_text(0.049) == "P = .049"


# --------------------------------------------------------------------------------------------
# Table 1


def _population(export: TrialExport) -> pl.DataFrame:
    return export.participants.filter(pl.col("itt").fill_null(False))


def test_table1_labels_units_and_one_row_per_yes_no_variable(sepsis_export: TrialExport) -> None:
    rows = tables.table1_rows(sepsis_export, PLAN)
    labels = [r.label for r in rows]
    assert "Ferritin, ng/mL" in labels  # concept dictionary: name and canonical unit
    assert "Age, years" in labels
    assert "Monocyte HLA-DR, antibodies bound per cell" in labels
    assert not any(re.search(r"[a-z]+_[a-z]+", lb) for lb in labels), labels  # no raw column names
    shock = [r for r in rows if r.variable == "septic_shock"]
    assert len(shock) == 1 and shock[0].kind == "binary"
    p = _population(sepsis_export)
    for arm in ARMS:
        sub = p.filter(pl.col("arm") == arm)["septic_shock"].drop_nulls()
        assert shock[0].cells[arm]["count"] == int(sub.sum())
        assert shock[0].cells[arm]["n"] == sub.len()
    # a variable with more levels: a heading, then one row per level whose counts add up
    sex = [r for r in rows if r.variable == "sex"]
    assert sex[0].kind == "heading" and {r.label.strip() for r in sex[1:]} <= {"Female", "Male", "Other"}
    for arm in ARMS:
        assert sum(r.cells[arm]["count"] for r in sex[1:]) == sex[0].cells[arm]["n"]


@pytest.mark.parametrize("variable", ["age", "baseline_sofa", "ferritin_ng_ml", "hla_dr_abc"])
def test_table1_continuous_agrees_with_r_quantile_type7(sepsis_export: TrialExport, variable: str) -> None:
    row = next(r for r in tables.table1_rows(sepsis_export, PLAN) if r.variable == variable)
    p = _population(sepsis_export)
    for arm in ARMS:
        v = p.filter(pl.col("arm") == arm)[variable].drop_nulls().cast(pl.Float64).to_numpy()
        c = row.cells[arm]
        assert c["n"] == len(v)
        assert c["mean"] == pytest.approx(v.mean(), rel=1e-12)
        assert c["sd"] == pytest.approx(v.std(ddof=1), rel=1e-12)
        q1, med, q3 = np.percentile(v, [25, 50, 75])  # method="linear" = R type 7
        assert (c["q1"], c["median"], c["q3"]) == pytest.approx((q1, med, q3), rel=1e-12)


def test_table1_html_has_separate_columns_and_arms(sepsis_export: TrialExport) -> None:
    html = tables.table1_html(sepsis_export, PLAN)
    for head in ("No. (%)", "Mean (SD)", "Median [IQR]", "Characteristic"):
        assert head in html
    p = _population(sepsis_export)
    for arm in ARMS:
        assert f"{arm} (n = {int((p['arm'] == arm).sum())})" in html
    assert "<thead" in html  # repeated on every PDF page the table runs over
    assert "ferritin_ng_ml" not in html and "septic_shock" not in html


# --------------------------------------------------------------------------------------------
# adverse events


def _graded(export: TrialExport, seed: int = 11) -> TrialExport:
    ae = export.adverse_events
    assert ae is not None
    rng = np.random.default_rng(seed)
    grades = rng.choice([1, 2, 3, 4, 5, None], size=ae.height, p=[0.3, 0.25, 0.2, 0.1, 0.05, 0.1])
    graded = ae.with_columns(pl.Series("ctcae_grade", grades.tolist(), dtype=pl.Int64))
    return validate_export(
        TrialExport(
            export.participants,
            export.daily_assessments,
            export.outcomes,
            export.screening,
            graded,
            export.manifest,
        )
    )


def test_adverse_events_by_term_and_worst_grade(sepsis_export: TrialExport) -> None:
    export = _graded(sepsis_export)
    table = tables.adverse_event_rows(export, PLAN)
    assert table is not None
    ae = export.adverse_events
    assert ae is not None
    safety = export.participants.filter(pl.col("safety").fill_null(pl.col("itt")).fill_null(False))
    joined = ae.join(safety.select("participant_id", "arm"), on="participant_id")
    worst = joined.group_by("participant_id", "arm", "term").agg(pl.col("ctcae_grade").max())
    for row in table["terms"]:
        term = row["label"].lower()
        for arm in ARMS:
            w = worst.filter((pl.col("arm") == arm) & (pl.col("term").str.to_lowercase() == term))
            cell = row["arms"][arm]
            assert cell["any"] == w.height
            assert cell["Grade 1-2"] == int(w["ctcae_grade"].is_in([1, 2]).sum())
            assert cell["Grade 3-4"] == int(w["ctcae_grade"].is_in([3, 4]).sum())
            assert cell["Grade 5"] == int((w["ctcae_grade"] == 5).sum())
    for arm in ARMS:
        assert (
            table["any"]["arms"][arm]["any"]
            == joined.filter(pl.col("arm") == arm)["participant_id"].n_unique()
        )
        assert table["n"][arm] == int((safety["arm"] == arm).sum())
    html = tables.adverse_event_html(table)
    assert "Grade 3-4" in html and "no CTCAE grade" in html  # some events were left ungraded
    assert table["ungraded_events"] == int(ae["ctcae_grade"].null_count())


def test_adverse_events_without_grades_show_any_grade_only(sepsis_export: TrialExport) -> None:
    table = tables.adverse_event_rows(sepsis_export, PLAN)
    assert table is not None
    html = tables.adverse_event_html(table)
    assert "Any grade" in html and "Grade 3-4" not in html
    assert "records no CTCAE grade" in html


# --------------------------------------------------------------------------------------------
# figures


def test_consort_keeps_every_reason_and_count(sepsis_export: TrialExport) -> None:
    consort = consort_counts(sepsis_export, PLAN)
    assert consort is not None
    lines = report_figures.consort_lines(consort, ARMS)
    excluded = " ".join(lines["excluded"])
    counts = [int(n) for n in re.findall(r"\(n = (\d+)\)", excluded)[1:]]
    assert sum(counts) == consort["excluded"]  # every exclusion is labelled (none lost to "...")
    svg = report_figures.consort_svg(consort, ARMS)
    texts = " ".join(re.findall(r"<text[^>]*>([^<]*)</text>", svg)) or svg
    assert "..." not in svg and "…" not in svg
    for reason, n in consort["exclusion_reasons"].items():
        assert f"(n = {n})" in excluded
        assert all(word in svg for word in reason.split()[:2]), reason
    for arm in ARMS:
        assert f"Allocated to {arm} (n = {consort['arms'][arm]['allocated']})" in svg
        assert f"Analysed (n = {consort['arms'][arm]['analysed']})" in svg
    assert texts


def _font_sizes(svg: str) -> list[float]:
    return [float(x) for x in re.findall(r"font[^;\"]*?(\d+(?:\.\d+)?)px", svg)]


def test_forest_plot_is_readable_at_print_size() -> None:
    rows = [
        {"label": "All participants (itt)", "estimate": 1.6, "ci_low": 0.84, "ci_high": 3.07, "log": True,
         "overall": True, "counts": ["29/97", "21/100"], "measure": "odds ratio"},
        {"label": "Immunoparalysis (interferon-gamma vs placebo)", "estimate": 1.63, "ci_low": 0.8,
         "ci_high": 3.34, "log": True, "counts": ["24/81", "17/83"], "measure": "odds ratio"},
        {"label": "MALS", "estimate": None, "ci_low": None, "ci_high": None, "log": True},
    ]  # fmt: skip
    svg = report_figures.forest_svg(rows, ARMS, "SOFA response by day 9", "higher")
    width_pt = float(re.search(r'width="([\d.]+)pt"', svg).group(1))  # type: ignore[union-attr]
    # printed at natural size on A4 (190 mm = 539 pt between the margins): 1 SVG px = 1 pt on paper
    assert width_pt <= 539
    sizes = _font_sizes(svg)
    assert sizes and min(sizes) >= 8, sizes
    for text in ("29/97", "21/100", "1.60 (0.84 to 3.07)", "not estimable", "favours immunotherapy"):
        assert text in svg


# --------------------------------------------------------------------------------------------
# text shown to a reader, the PDF's running header and footer


def test_internal_notes_never_printed() -> None:
    sle = load_plan("sle-secretome-2025")
    definition = next(e.definition for e in sle.endpoints if "domain.md" in e.definition)
    cleaned = clean_text(definition)
    assert "domain.md" not in cleaned and "MEX-SLEDAI (0-32)" in cleaned
    note = clean_text(PLAN.multiplicity.note or "")
    assert "[verify]" not in note and note.startswith(PLAN.multiplicity.note.split(".")[0])  # type: ignore[union-attr]


def test_report_html_is_clean_and_every_table_has_a_header(sepsis_report: dict) -> None:
    text = (sepsis_report["dir"] / "report.html").read_text()
    assert "domain.md" not in text and "[verify]" not in text
    body = text.split("<body", 1)[1]
    for table in re.findall(r"<table[^>]*>.*?</table>", body, flags=re.S):
        assert "<thead" in table, table[:200]
    assert 'id="table-1"' in text and 'id="table-ae"' in text
    assert "Ferritin, ng/mL" in text


def test_pdf_header_footer_templates() -> None:
    results = {
        "plan": {"id": "immunosep-2025", "version": "1.0", "title": "ImmunoSep: precision immunotherapy"},
        "data": {"manifest": {"trial_id": "trial-7"}},
        "generated_at": "2026-01-02T03:04:05Z",
    }
    header, footer = pdf_header_footer(results)
    assert "ImmunoSep" in header and "trial-7" in header and "UNBLINDED" in header
    assert "pageNumber" in footer and "totalPages" in footer and "2026-01-02T03:04:05Z" in footer


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) not installed")
def test_pdf_pages_carry_header_and_page_x_of_y(sepsis_report: dict) -> None:
    if not sepsis_report["browser"]:
        pytest.skip("no Chromium")
    pdf = Path(sepsis_report["results"]["written"]["pdf"])
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True).stdout
    pages = [p for p in text.split("\f") if p.strip()]
    assert len(pages) >= 3
    for i, page in enumerate(pages, start=1):
        assert f"Page {i} of {len(pages)}" in page
        assert "UNBLINDED" in page


# --------------------------------------------------------------------------------------------
# analysis data sets


def test_analysis_datasets_rebuild_the_primary_table(tmp_path: Path, sepsis_export: TrialExport) -> None:
    from immunostrat.analysis.report_datasets import write_analysis_data
    from immunostrat.analysis.runner import analyze_endpoint, mmrm_frame

    written = write_analysis_data(sepsis_export, PLAN, tmp_path / "adam")
    adsl = pl.read_csv(written["adsl"])
    adeff = pl.read_csv(written["adeff"])
    adrep = pl.read_csv(written["adrep"])
    assert adsl["USUBJID"].n_unique() == adsl.height == sepsis_export.participants.height
    assert set(adsl.columns) >= {"STUDYID", "USUBJID", "ARM", "TRTN", "STRATUM", "ITTFL", "SAFFL"}
    # the primary endpoint from the files: the counts and Fisher's P of the report
    prim = PLAN.primary
    d = adsl.filter(pl.col("ITTFL") == "Y").join(adeff.filter(pl.col("PARAMCD") == prim.id), on="USUBJID")
    d = d.filter(pl.col("AVAL").is_not_null())
    result = analyze_endpoint(sepsis_export, PLAN, prim, strata=False)["result"]
    table = []
    for arm in ARMS:
        a = d.filter(pl.col("ARM") == arm)
        events = int(a["AVAL"].sum())
        assert (events, a.height) == (result["counts"][arm]["events"], result["counts"][arm]["n"])
        table.append([events, a.height - events])
    assert fisher_exact(table).pvalue == pytest.approx(result["estimates"]["fisher"]["p_value"], rel=1e-9)
    # the repeated endpoint: the mixed model's own frame, one record per participant and visit
    rep = next(e for e in PLAN.endpoints if e.kind == "repeated")
    frame = mmrm_frame(sepsis_export, PLAN, rep, flag="itt")
    mine = adrep.filter(pl.col("PARAMCD") == rep.id).join(
        adsl.filter(pl.col("ITTFL") == "Y").select("USUBJID"), on="USUBJID"
    )
    assert mine.height == len(frame)
    assert mine["AVAL"].sum() == pytest.approx(float(frame["value"].sum()))
    script = Path(written["reproduce.R"]).read_text()
    assert "fisher.test" in script and "coxph" in script and "nlme::gls" in script
