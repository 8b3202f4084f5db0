"""The trial report: one self-contained HTML (figures inline as SVG, text kept as text), a PDF
printed by headless Chromium, and the machine-readable results as JSON.

``analyze(data_dir, plan_id, report_path, pdf=..., json_path=...)`` is the one call the CLI wires
to ``immunostrat analyze --data EXPORT --plan immunosep-2025 --report out.html``.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from immunostrat.analysis import figures, report_figures, tables
from immunostrat.analysis.plan import AnalysisPlan, load_plan
from immunostrat.analysis.runner import headline, run_analysis
from immunostrat.analysis.schema import TrialExport, validate_export
from immunostrat.errors import InputError

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# --------------------------------------------------------------------------------------------
# formatting


def fmt_p(p: Any) -> str:
    """JAMA (AMA Manual of Style 10th ed., 20.9) P values: no leading zero; 2 decimals, 3 below .01;
    "<.001" below .001 and ">.99" above .99; 3 decimals from .045 to .05, where rounding to 2 would
    print ".05" for a P under .05."""
    if p is None:
        return "—"
    p = float(p)
    if p != p:
        return "—"
    if p < 0.001:
        return "<.001"
    if p < 0.01 or 0.045 <= p < 0.05:
        return f"{p:.3f}".lstrip("0")
    return f"{p:.2f}".lstrip("0") if p < 0.995 else ">.99"


def p_text(p: Any) -> str:
    """'P = .03' or 'P < .001' (never 'P = <.001')."""
    f = fmt_p(p)
    return f"P {f[0]} {f[1:]}" if f[0] in "<>" else f"P = {f}"


_INTERNAL = (
    # "(domain.md A1)", "(0-32, domain.md B4)", "(SAP, domain.md A1)", "(domain.md A1; SAP writes ...)":
    # where a number came from in this repository's notes, not something a reader can look up
    (re.compile(r"\(domain\.md(?: section)?(?: [A-Z]\d*)?;\s*"), "("),
    (re.compile(r"\s*\(domain\.md(?: section)?(?: [A-Z]\d*)?\)"), ""),
    (re.compile(r",\s*domain\.md(?: section)?(?: [A-Z]\d*)?(?=[),;])"), ""),
    (re.compile(r"\s*(?:from |see |in )?domain\.md(?: section)?(?: [A-Z]\d*)?"), ""),
    # "[verify] against the SAP." - a note to ourselves, never a statement to print
    (re.compile(r"\s*\[verify\][^.<]*\.?"), ""),
)


def clean_text(text: str) -> str:
    """Drop internal markers from text shown to a reader: references to the repository's notes
    (``domain.md ...``) and ``[verify]`` flags."""
    for pattern, repl in _INTERNAL:
        text = pattern.sub(repl, text)
    return text


def _ci(e: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    if not e or e.get("estimate") is None:
        return "—" if not e.get("error") else f"not estimable: {html.escape(str(e['error']))[:120]}"
    est = e["estimate"] * scale
    low, high = e.get("ci_low"), e.get("ci_high")
    if low is None and high is None:
        return f"{est:.{digits}f}"
    # an infinite limit is stored as None (JSON has no infinity): print it as R does
    low_text = "−∞" if low is None else f"{low * scale:.{digits}f}"
    high_text = "∞" if high is None else f"{high * scale:.{digits}f}"
    return f"{est:.{digits}f} ({low_text} to {high_text})"


def fmt_t1(row: dict[str, Any], arm: str) -> str:
    v = row.get(arm) or {}
    if row["type"] == "categorical":
        if v.get("n"):
            return f"{v['count']} / {v['n']} ({v['percent']:.1f}%)"
        return "—"
    if not v.get("n"):
        return "—"
    sd = f"{v['sd']:.1f}" if v.get("sd") is not None else "—"
    return f"{v['mean']:.1f} ({sd}); {v['median']:.1f} [{v['q1']:.1f}–{v['q3']:.1f}] n={v['n']}"


def primary_summary(results: dict[str, Any]) -> str:
    """One sentence with the primary endpoint's result, as a paper's abstract would give it."""
    e = next(x for x in results["endpoints"] if x["role"] == "primary")
    res = e["result"]
    arms = results["data"]["arms"]
    est = res.get("estimates", {})
    if res.get("type") == "binary":
        c = res["counts"]
        parts = [
            f"{e['label']}: "
            + " vs ".join(f"{a} {c[a]['events']}/{c[a]['n']} ({(c[a]['percent'] or 0):.1f}%)" for a in arms)
        ]
        if "risk_difference" in est:
            rd = est["risk_difference"]
            parts.append(f"risk difference {_ci(rd, 100, 1).replace(' (', ' points (95% CI ', 1)}")
        if "odds_ratio" in est:
            parts.append(f"OR {_ci(est['odds_ratio'])}")
        if "fisher" in est:
            parts.append(f"{p_text(est['fisher'].get('p_value'))} (Fisher)")
        if est.get("logistic_adjusted", {}).get("estimate") is not None:
            parts.append(f"stratum-adjusted OR {_ci(est['logistic_adjusted'])}")
        return "; ".join(parts)
    h = headline(res)
    if h is None:
        return f"{e['label']}: not estimable"
    key, val = h
    return f"{e['label']}: {val.get('measure', key)} {_ci(val)}; {p_text(val.get('p_value'))}"


def _binary_table(res: dict[str, Any], arms: list[str], label: str = "all") -> str:
    c = res.get("counts", {})
    est = res.get("estimates", {})
    cells = [f"<td>{html.escape(label)}</td>"]
    for a in arms:
        k = c.get(a, {})
        pct = f" ({k['percent']:.1f}%)" if k.get("percent") is not None else ""
        cells.append(f"<td class='num'>{k.get('events', '—')}/{k.get('n', '—')}{pct}</td>")
    cells.append(f"<td class='num'>{_ci(est.get('risk_difference', {}), 100, 1)}</td>")
    cells.append(f"<td class='num'>{_ci(est.get('odds_ratio', {}))}</td>")
    cells.append(f"<td class='num'>{fmt_p(est.get('fisher', {}).get('p_value'))}</td>")
    cells.append(f"<td class='num'>{_ci(est.get('logistic_adjusted', {}))}</td>")
    return "<tr>" + "".join(cells) + "</tr>"


def _stratum_note(r: dict[str, Any]) -> str:
    if r.get("error"):
        return f"not estimable: {html.escape(str(r['error']))}"
    return html.escape(str(r.get("note", "not analysed")))


def _cmh_html(est: dict[str, Any]) -> str:
    """The stratified analysis under a binary table: Mantel-Haenszel OR, CMH P, Breslow-Day and
    the treatment-by-stratum interaction."""
    cmh = est.get("cmh")
    if not cmh:
        return ""
    text = f"Stratified (Cochran-Mantel-Haenszel): common OR {_ci(cmh)}"
    if cmh.get("estimate") is not None:
        text += f", {p_text(cmh.get('p_value'))}"
        d = cmh.get("details") or {}
        if d.get("breslow_day_p") is not None:
            text += f"; Breslow-Day test of a common OR {p_text(d['breslow_day_p'])}"
    inter = est.get("stratum_interaction") or {}
    if inter.get("p_value") is not None:
        text += f"; treatment-by-stratum interaction {p_text(inter['p_value'])}"
    elif inter.get("error"):
        text += f"; interaction not estimable: {html.escape(str(inter['error']))}"
    return f"<p class='note'>{text}.</p>"


def endpoint_html(e: dict[str, Any], arms: list[str]) -> str:
    res = e["result"]
    t = res.get("type")
    out: list[str] = []
    if t == "binary":
        head = "".join(f"<th>{html.escape(a)} n/N (%)</th>" for a in arms)
        out.append(
            f"<table class='report endpoint' data-endpoint='{e['id']}'><thead><tr><th>Group</th>{head}"
            "<th>Risk difference, percentage points (95% CI)</th>"
            "<th>Odds ratio (95% CI)</th><th>P value (Fisher)</th><th>Adjusted OR (95% CI)</th></tr></thead>"
            "<tbody>"
        )
        out.append(_binary_table(res, arms))
        for s, r in (e.get("by_stratum") or {}).items():
            out.append(
                _binary_table(r, arms, s)
                if r.get("type") == "binary"
                else f"<tr><td>{html.escape(s)}</td><td colspan='6'>{_stratum_note(r)}</td></tr>"
            )
        for s, r in (e.get("sensitivity") or {}).items():
            out.append(_binary_table(r, arms, f"Sensitivity: {s.replace('_', ' ')} population"))
        out.append("</tbody></table>")
        adj = res.get("estimates", {}).get("logistic_adjusted", {})
        if adj.get("method"):
            out.append(f"<p class='note'>Adjusted OR: {html.escape(str(adj['method']))}.</p>")
        out.append(_cmh_html(res.get("estimates", {})))
    elif t == "ordinal":
        levels = res["levels"]
        out.append(
            "<table class='report endpoint'><thead><tr><th>Category</th>"
            + "".join(f"<th>{html.escape(a)}, No. (%)</th>" for a in arms)
            + "</tr></thead><tbody>"
        )
        for lvl in levels:
            row = "".join(
                f"<td class='num'>{res['counts'][a][lvl]['count']} "
                f"({(res['counts'][a][lvl]['percent'] or 0):.1f}%)</td>"
                for a in arms
            )
            out.append(f"<tr><td>{html.escape(str(lvl))}</td>{row}</tr>")
        out.append("</tbody></table>")
        est = res["estimates"]
        if "ordinal" in est:
            out.append(
                f"<p>Proportional odds ratio for a worse category: {_ci(est['ordinal'])}; "
                f"{p_text(est['ordinal'].get('p_value'))}.</p>"
            )
        if "mann_whitney" in est:
            out.append(
                "<p class='note'>Mann-Whitney (sensitivity): "
                f"{p_text(est['mann_whitney'].get('p_value'))}.</p>"
            )
    elif t == "survival":
        est = res["estimates"]
        counts = "; ".join(
            f"{a}: {res['counts'][a]['events']} deaths / {res['counts'][a]['n']}" for a in arms
        )
        out.append(f"<p>{html.escape(counts)}.</p>")
        if "cox" in est:
            out.append(
                f"<p>Hazard ratio {_ci(est['cox'])}, {p_text(est['cox'].get('p_value'))} "
                f"({html.escape(str(est['cox'].get('method', '')))}).</p>"
            )
        if "logrank" in est:
            out.append(f"<p>Log-rank {p_text(est['logrank'].get('p_value'))}.</p>")
    elif t == "win_ratio":
        est = res["estimates"].get("win_ratio", {})
        d = est.get("details") or {}
        levels = "; ".join(
            f"{html.escape(x['outcome'])}: {x['treated_wins']} vs {x['control_wins']}"
            for x in d.get("by_level", [])
        )
        out.append(
            f"<p>Win ratio {_ci(est)}; {p_text(est.get('p_value'))}. Wins by level (treated vs control): "
            f"{levels}; ties {d.get('ties', '—')} of {d.get('pairs', '—')} pairs.</p>"
        )
    elif t == "repeated":
        est = res["estimates"].get("mmrm", {})
        out.append(
            f"<p>Mixed model: {html.escape(est.get('measure', ''))} {_ci(est)}; "
            f"{p_text(est.get('p_value'))} ({html.escape(str(est.get('method', '')))}).</p>"
        )
    elif t == "continuous":
        out.append(
            "<table class='report endpoint'><thead><tr><th>Arm</th><th>Baseline, mean (SD)</th>"
            "<th>Follow-up, mean (SD)</th><th>Change, mean (SD); No.</th></tr></thead><tbody>"
        )
        for a in arms:
            s = res["summary"][a]

            def ms(d: dict[str, Any]) -> str:
                if not d.get("n"):
                    return "—"
                sd = f"{d['sd']:.2f}" if d.get("sd") is not None else "—"
                return f"{d['mean']:.2f} ({sd})"

            out.append(
                f"<tr><td>{html.escape(a)}</td><td class='num'>{ms(s['baseline'])}</td>"
                f"<td class='num'>{ms(s['followup'])}</td>"
                f"<td class='num'>{ms(s['change'])}; {s['change'].get('n', 0)}</td></tr>"
            )
        out.append("</tbody></table>")
        est = res["estimates"]
        for key, name in (
            ("ancova", "ANCOVA difference in change"),
            ("mmrm", "Mixed model difference"),
            ("mann_whitney", "Mann-Whitney (sensitivity)"),
        ):
            if key in est:
                ci = "" if key == "mann_whitney" else f"{_ci(est[key])}; "
                out.append(f"<p>{name}: {ci}{p_text(est[key].get('p_value'))}.</p>")
    sens = res.get("missing_data_sensitivity") or {}
    if sens.get("mar"):
        mar = sens["mar"]
        tip = (sens.get("tipping_point") or {}).get("delta_at_which_p_reaches_alpha")
        if not sens.get("n_imputed"):
            tip_text = "; no missing values, so no tipping point"
        elif "tipping_point" not in sens:
            tip_text = ""
        elif tip is None:
            tip_text = "; no tipping point on the grid searched"
        else:
            tip_text = (
                "; tipping point: the result loses significance when the treated arm's imputed values "
                f"are {tip:g} points worse"
            )
        out.append(
            "<p class='note'>Sensitivity, multiple imputation under MAR at visit "
            f"{html.escape(str(sens.get('visit')))} "
            f"({sens.get('n_imputed', 0)} values imputed): difference {mar['estimate']:.2f} "
            f"(SE {mar['se']:.2f}), {p_text(mar.get('p_value'))}{html.escape(tip_text)}.</p>"
        )
    elif sens.get("note"):
        out.append(f"<p class='note'>Sensitivity analyses: {html.escape(sens['note'])}.</p>")
    estimand = e.get("estimand") or {}
    if estimand:
        out.append(
            f"<p class='note'>Estimand: intercurrent event {html.escape(estimand['intercurrent_event'])}, "
            f"{html.escape(estimand['strategy'].replace('_', ' '))} strategy"
            + (f" ({html.escape(estimand['summary'])})" if estimand.get("summary") else "")
            + ".</p>"
        )
    md = {k: v for k, v in e.get("missing_data", {}).items() if k != "rule"}
    if md:
        items = "; ".join(
            f"{html.escape(a)}: " + ", ".join(f"{k} {v}" for k, v in _flat(d).items()) for a, d in md.items()
        )
        out.append(f"<p class='note'>Missing-data report — {items}.</p>")
    return "\n".join(out)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k} "))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --------------------------------------------------------------------------------------------
# figures


def _forest_rows(e: dict[str, Any], plan: AnalysisPlan) -> tuple[list[dict[str, Any]], str]:
    rows: list[dict[str, Any]] = []
    measure = ""

    def add(label: str, res: dict[str, Any], overall: bool = False) -> None:
        nonlocal measure
        h = headline(res) if isinstance(res, dict) else None
        if h is None:
            rows.append({"label": label, "estimate": None, "ci_low": None, "ci_high": None})
            return
        key, est = h
        measure = est.get("measure", key)
        counts: list[str] = []
        c = res.get("counts", {})
        if res.get("type") == "binary":
            counts = [
                f"{c[a]['events']}/{c[a]['n']}" for a in (plan.design.treated_arm, plan.design.control_arm)
            ]
        rows.append(
            {
                "label": label,
                "estimate": est.get("estimate"),
                "ci_low": est.get("ci_low"),
                "ci_high": est.get("ci_high"),
                "log": key in ("odds_ratio", "ordinal", "cox"),
                "overall": overall,
                "counts": counts,
                "measure": measure,
            }
        )

    add(f"All participants ({e['population'].replace('_', ' ')})", e["result"], overall=True)
    for s, r in (e.get("by_stratum") or {}).items():
        add(plan.design.stratum_labels.get(s, s), r)
    for s, r in (e.get("sensitivity") or {}).items():
        add(f"Sensitivity: {s.replace('_', ' ')} population", r)
    return rows, measure


def build_figures(results: dict[str, Any], export: TrialExport, plan: AnalysisPlan) -> list[dict[str, str]]:
    arms = [plan.design.treated_arm, plan.design.control_arm]
    flag = plan.populations[plan.primary_population].flag
    figs: list[dict[str, str]] = []
    by_id = {e["id"]: e for e in results["endpoints"]}
    for ep_id in plan.report.forest:
        e = by_id[ep_id]
        rows, measure = _forest_rows(e, plan)
        parts = (
            ["overall"]
            + (["by stratum"] if e.get("by_stratum") else [])
            + (["sensitivity"] if e.get("sensitivity") else [])
        )
        scope = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
        figs.append(
            {
                "id": f"fig-forest-{ep_id}",
                "kind": "forest",
                "svg": report_figures.forest_svg(
                    rows,
                    arms,
                    f"{e['label']}: {scope}",
                    e.get("favourable"),
                    count_header="Events/No." if any(r.get("counts") for r in rows) else "",
                ),
                "caption": f"Forest plot, {e['label']} ({measure}), {arms[0]} vs {arms[1]}: {scope}.",
            }
        )
    if plan.report.km:
        e = by_id[plan.report.km]
        curves = e["result"].get("kaplan_meier")
        if curves:
            horizon = int(e["params"].get("horizon", 90))
            risk_times = [t for t in (0, 7, 14, 28, 60, 90, 180, 365) if t <= horizon]
            figs.append(
                {
                    "id": "fig-km",
                    "kind": "km",
                    "svg": figures.km_svg(curves, arms, e["label"], risk_times),
                    "caption": f"Kaplan-Meier survival by arm ({arms[0]} vs {arms[1]}) "
                    "with 95% bands and numbers at risk.",
                }
            )
    for traj in plan.report.trajectories:
        if traj.variable not in export.daily_assessments.columns:
            continue
        if export.daily_assessments[traj.variable].null_count() == export.daily_assessments.height:
            continue
        figs.append(
            {
                "id": f"fig-trajectory-{traj.variable}",
                "kind": "trajectory",
                "svg": figures.trajectory_svg(
                    export, traj.variable, traj.days, arms, traj.label, flag, traj.log
                ),
                "caption": f"{traj.label} by study day, {arms[0]} vs {arms[1]}: "
                + ("geometric mean" if traj.log else "mean")
                + " with 95% CI (observed values).",
            }
        )
    return figs


# --------------------------------------------------------------------------------------------
# rendering and writing


def render_html(results: dict[str, Any], export: TrialExport, plan: AnalysisPlan | str) -> str:
    """The full report as one self-contained HTML string."""
    the_plan = load_plan(plan)
    arms = [the_plan.design.treated_arm, the_plan.design.control_arm]
    template_text = resources.files("immunostrat.analysis").joinpath("templates", "report.html").read_text()
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(template_text)
    consort = results.get("consort")
    flag = results["populations"].get(results["primary_population"], {}).get("flag")
    ae = tables.adverse_event_rows(export, the_plan)
    text = template.render(
        plan=the_plan,
        arms=arms,
        data=results["data"],
        generated_at=results["generated_at"],
        primary_population=results["primary_population"],
        populations=results["populations"],
        table1=results["table1"],
        endpoints=results["endpoints"],
        multiplicity=results["multiplicity"],
        safety=results.get("safety"),
        table1_html=tables.table1_html(export, the_plan, flag, number=1),
        ae_html=tables.adverse_event_html(ae, number=2) if ae else None,
        clean=clean_text,
        primary_summary=primary_summary(results),
        software=results["software"],
        consort_svg=report_figures.consort_svg(consort, arms) if consort else None,
        figures=build_figures(results, export, the_plan),
        fmt_t1=fmt_t1,
        fmt_p=fmt_p,
        endpoint_html=lambda e: endpoint_html(e, arms),
        endpoint_labels={e["id"]: e["label"] for e in results["endpoints"]},
    )
    return clean_text(text)


def pdf_header_footer(results: dict[str, Any]) -> tuple[str, str]:
    """Chromium's running header and footer for every PDF page: the trial and plan, the
    unblinded marker (the report compares arms by name), page x of y and the date generated."""
    plan = results.get("plan") or {}
    data = results.get("data") or {}
    trial = data.get("manifest", {}).get("trial_id") or data.get("source") or "trial export"
    # the short name before the first colon: "ImmunoSep", "SLE UC-MSC secretome"
    title = html.escape(str(plan.get("title", "")).split(":")[0])
    style = (
        "font-family: 'DejaVu Sans', Arial, sans-serif; font-size: 7.5pt; color: #444; width: 100%; "
        "margin: 0 10mm; display: flex; justify-content: space-between;"
    )
    header = (
        f'<div style="{style}"><span>{title} · {html.escape(str(trial))}</span>'
        "<span style='font-weight: bold; color: #8a1c1c;'>UNBLINDED: results by arm</span></div>"
    )
    footer = (
        f'<div style="{style}"><span>Analysis plan {html.escape(str(plan.get("id", "")))} '
        f"v{html.escape(str(plan.get('version', '')))} · generated "
        f"{html.escape(str(results.get('generated_at', '')))}</span>"
        "<span>Page <span class='pageNumber'></span> of <span class='totalPages'></span></span></div>"
    )
    return header, footer


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Write to a temporary file beside ``path`` and rename it into place only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(0o644)
        tmp_path.replace(path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def find_chromium() -> str | None:
    """A Chromium/Chrome executable: $IMMUNOSTRAT_CHROMIUM, else the first on PATH; None lets
    Playwright use its own bundled browser."""
    env = os.environ.get("IMMUNOSTRAT_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def html_to_pdf(
    html_path: str | Path, pdf_path: str | Path, header: str | None = None, footer: str | None = None
) -> Path:
    """Print an HTML file to PDF (A4) with headless Chromium through Playwright; ``header`` and
    ``footer`` (Chromium templates: ``pageNumber``, ``totalPages``) run on every page."""
    from playwright.sync_api import sync_playwright

    src = Path(html_path).resolve()
    out = Path(pdf_path)
    with _atomic(out) as tmp, sync_playwright() as pw:
        exe = find_chromium()
        browser = (
            pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
            if exe
            else pw.chromium.launch(args=CHROMIUM_ARGS)
        )
        try:
            page = browser.new_page()
            page.goto(src.as_uri(), wait_until="load")
            running = header is not None or footer is not None
            page.pdf(
                path=str(tmp),
                format="A4",
                print_background=True,
                display_header_footer=running,
                header_template=header or "<span></span>",
                footer_template=footer or "<span></span>",
                margin={
                    "top": "16mm" if running else "12mm",
                    "bottom": "16mm" if running else "12mm",
                    "left": "10mm",
                    "right": "10mm",
                },
            )
        finally:
            browser.close()
    return out


def write_report(
    results: dict[str, Any],
    export: TrialExport,
    plan: AnalysisPlan | str,
    report_path: str | Path,
    pdf_path: str | Path | None = None,
    json_path: str | Path | None = None,
) -> dict[str, str]:
    """Write the HTML report (and optionally the PDF and JSON); returns the paths written."""
    written: dict[str, str] = {}
    text = render_html(results, export, plan)
    out = Path(report_path)
    with _atomic(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    written["html"] = str(out)
    if json_path is not None:
        jp = Path(json_path)
        with _atomic(jp) as tmp:
            tmp.write_text(json.dumps(results, indent=2, allow_nan=False), encoding="utf-8")
        written["json"] = str(jp)
    if pdf_path is not None:
        header, footer = pdf_header_footer(results)
        written["pdf"] = str(html_to_pdf(out, pdf_path, header=header, footer=footer))
    return written


def analyze(
    data_dir: str | Path,
    plan_id: str | Path,
    report_path: str | Path | None = None,
    pdf: bool | str | Path = False,
    json_path: str | Path | None = None,
    analysis_data: str | Path | None = None,
) -> dict[str, Any]:
    """Validate the export in ``data_dir``, run the plan, write the report(s); return the results.

    ``pdf=True`` writes the PDF beside the report (same name, ``.pdf``); a path writes it there.
    ``json_path`` writes the machine-readable results. ``analysis_data`` is a folder to write the
    ADaM-like analysis data sets into (:mod:`immunostrat.analysis.report_datasets`). Bad input
    raises :class:`InputError`.
    """
    plan = load_plan(plan_id)
    export = validate_export(data_dir)
    results = run_analysis(export, plan)
    if report_path is None and pdf:
        raise InputError("a PDF needs a report path", field="report", expected="--report out.html")
    if report_path is not None:
        pdf_path: Path | None = None
        if pdf is True:
            pdf_path = Path(report_path).with_suffix(".pdf")
        elif pdf:
            pdf_path = Path(pdf)
        results["written"] = write_report(
            results, export, plan, report_path, pdf_path=pdf_path, json_path=json_path
        )
    elif json_path is not None:
        jp = Path(json_path)
        with _atomic(jp) as tmp:
            tmp.write_text(json.dumps(results, indent=2, allow_nan=False), encoding="utf-8")
        results["written"] = {"json": str(jp)}
    if analysis_data is not None:
        from immunostrat.analysis.report_datasets import write_analysis_data

        written = write_analysis_data(export, plan, analysis_data)
        results.setdefault("written", {})["analysis_data"] = str(analysis_data)
        results["written"]["analysis_datasets"] = written
    return results
