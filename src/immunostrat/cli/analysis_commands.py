"""`immunostrat analyze`, `immunostrat published` and `immunostrat design samplesize`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from immunostrat.cli.output import fail
from immunostrat.errors import InputError

console = Console(stderr=True)
out = Console()
design_app = typer.Typer(help="Design the next trial.", no_args_is_help=True)
samplesize_app = typer.Typer(help="Sample size with the assumptions printed.", no_args_is_help=True)
design_app.add_typer(samplesize_app, name="samplesize")


def analyze(
    data: Annotated[Path, typer.Option("--data", help="Trial export folder (schema: docs/analysis.md).")],
    plan: Annotated[str, typer.Option("--plan", help="Analysis plan id or YAML file.")] = "immunosep-2025",
    report: Annotated[Path | None, typer.Option("--report", help="HTML report to write.")] = None,
    pdf: Annotated[
        bool, typer.Option("--pdf", help="Also write the report as PDF (headless Chromium).")
    ] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Machine-readable results.")] = None,
    analysis_data: Annotated[
        Path | None,
        typer.Option(
            "--analysis-data",
            help="Folder to write the ADaM-like analysis data sets into (adsl, adeff, adrep, adae as "
            "CSV, and reproduce.R): one record per participant, per participant and endpoint, per "
            "participant and visit.",
        ),
    ] = None,
) -> None:
    """Run a pre-specified analysis plan on a trial export: tables, figures, report."""
    from immunostrat.analysis import analyze as run

    if pdf and not _chromium_available():
        fail(
            InputError(
                "no Chromium to print the PDF with",
                field="--pdf",
                expected="chromium on PATH (e.g. apt-get install chromium), "
                "IMMUNOSTRAT_CHROMIUM=/path/to/chrome, or Playwright's own browser "
                "(python -m playwright install chromium)",
            )
        )
    try:
        with console.status(f"analysing {data} with plan {plan}"):
            results = run(data, plan, report, pdf, json_path, analysis_data=analysis_data)
    except (InputError, KeyError, FileNotFoundError) as error:
        fail(error)
    table = Table(title=f"{plan}: endpoints ({results.get('primary_population', 'itt')})")
    for col in ("endpoint", "role", "arms", "estimate (95% CI)", "P"):
        table.add_column(col, overflow="fold", no_wrap=col == "endpoint")
    for endpoint in results.get("endpoints", []):
        table.add_row(endpoint["label"], endpoint["role"], *_endpoint_cells(endpoint.get("result") or {}))
    Console(width=max(out.width, 150)).print(table)
    for path in (report, json_path):
        if path is not None:
            console.print(f"wrote {path}")
    if pdf and report is not None:
        console.print(f"wrote {report.with_suffix('.pdf')}")
    for name, path in (results.get("written", {}).get("analysis_datasets") or {}).items():
        console.print(f"wrote {path}" + ("" if name.endswith((".R", ".json")) else f" ({name})"))


def _chromium_available() -> bool:
    """A system Chromium (as the report finds it) or Playwright's own downloaded browser."""
    from playwright.sync_api import sync_playwright

    from immunostrat.analysis.report import find_chromium

    if find_chromium() is not None:
        return True
    with sync_playwright() as pw:
        return Path(pw.chromium.executable_path).exists()


def _endpoint_cells(result: dict[str, Any]) -> tuple[str, str, str]:
    from immunostrat.analysis.report import p_text

    counts = result.get("counts") or {}
    arms = "; ".join(
        f"{arm} {c['events']}/{c['n']}" + (f" ({c['percent']:.1f}%)" if c.get("percent") is not None else "")
        for arm, c in counts.items()
        if isinstance(c, dict) and "events" in c and "n" in c
    )
    estimates = result.get("estimates") or {}
    main = estimates.get("risk_difference") or next(iter(estimates.values()), None) if estimates else None
    if not isinstance(main, dict) or main.get("estimate") is None:
        if isinstance(main, dict) and main.get("error"):
            return arms, f"{main.get('measure', '')}: not estimable: {main['error']}", "-"
        return arms, str(result.get("note") or result.get("status", "-")), "-"
    scale = 100 if main.get("measure") == "risk difference" else 1
    low, high = main.get("ci_low"), main.get("ci_high")
    ci = f" ({low * scale:.1f} to {high * scale:.1f})" if low is not None and high is not None else ""
    p_value = main.get("p_value")
    return (
        arms,
        f"{main['measure']} {main['estimate'] * scale:.2f}{ci}",
        "-" if p_value is None else p_text(p_value),
    )


def published(
    record: Annotated[str | None, typer.Argument(help="A published record id; none lists them.")] = None,
) -> None:
    """Reproduce a published trial's numbers from its counts, naming the test that matches."""
    from immunostrat.analysis import list_published, reproduce

    if record is None:
        for name in list_published():
            out.print(name)
        return
    try:
        result = reproduce(record)
    except (KeyError, FileNotFoundError) as error:
        fail(
            InputError(
                f"unknown published record {record!r}",
                field="record",
                value=record,
                expected=", ".join(list_published()),
            )
        )
        raise AssertionError from error  # unreachable: _fail exits
    out.print(f"[bold]{result['trial']}[/]: {result['citation']}", soft_wrap=True, highlight=False)
    table = Table()
    for col in ("item", "quantity", "ours", "printed", "match"):
        table.add_column(col, overflow="fold")
    notes: list[str] = []
    for item in result["items"]:
        label = item.get("label", item["id"])
        for row in _published_rows(item):
            table.add_row(label, *row)
        if item.get("note"):
            notes.append(f"{label}: {item['note']}")
    out.print(table)
    for note in notes:
        out.print(f"note - {note}", soft_wrap=True, highlight=False)
    if result.get("conclusion"):
        out.print(f"conclusion (as published): {result['conclusion']}", soft_wrap=True, highlight=False)


def _published_rows(item: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Table rows of one published item: every recomputed number, then its P values (the one the
    paper's test gives, and which tests match the printed P), then what was printed only."""
    from immunostrat.analysis.report import p_text

    rows: list[tuple[str, str, str, str]] = []
    for check in item.get("checks", []):
        ours = check["ours"]
        rows.append(
            (
                check["what"],
                f"{ours:.4g}" if isinstance(ours, float) else str(ours),
                str(check["printed"]),
                "yes" if check["match"] else "NO",
            )
        )
    p_values = item.get("p_values") or {}
    if p_values:
        matching = item.get("p_matching_tests") or []
        expected = item.get("p_expected_test")
        for test, p in p_values.items():
            if p is None:
                continue
            mark = "yes" if test in matching else "no"
            if test == expected:
                mark += " (the paper's test)"
            ours = f"{p:.4f}".lstrip("0") + f" ({p_text(p)})"
            rows.append((f"P, {test.replace('_', ' ')}", ours, item["p_printed"], mark))
        rows.append(
            (
                "test matching the printed P",
                ", ".join(t.replace("_", " ") for t in matching) or "none",
                item["p_printed"],
                "yes" if matching else "NO",
            )
        )
    for what, printed in (item.get("printed") or {}).items():
        unit = f" {item['unit']}" if item.get("unit") and item["unit"] != "percent" else ""
        shown = f"{printed}{'%' if item.get('unit') == 'percent' else unit}"
        cands = (item.get("candidates") or {}).get(what)
        ours = ("x/n: " + ", ".join(cands)) if cands else ("no x/n" if cands is not None else "-")
        rows.append((what, ours, shown, "printed only"))
    return rows


@samplesize_app.command("proportions")
def samplesize_proportions(
    p_control: Annotated[float, typer.Option(help="Responder proportion under control.")],
    p_treated: Annotated[float, typer.Option(help="Responder proportion under treatment.")],
    alpha: Annotated[float, typer.Option(help="Two-sided type I error.")] = 0.05,
    power: Annotated[float, typer.Option(help="Power.")] = 0.9,
    dropout: Annotated[float, typer.Option(help="Drop-out fraction to allow for.")] = 0.0,
    method: Annotated[str, typer.Option(help="fisher-exact | normal | normal-cc | arcsine")] = "fisher-exact",
    ratio: Annotated[float, typer.Option(help="Treated participants per control participant.")] = 1.0,
) -> None:
    """Two proportions (default: exact Fisher power, as ImmunoSep's 117 per arm)."""
    from immunostrat.analysis import sample_size_two_proportions

    if method not in ("fisher-exact", "normal", "normal-cc", "arcsine"):
        fail(
            InputError(
                "unknown method",
                field="--method",
                value=method,
                expected="fisher-exact, normal, normal-cc or arcsine",
            )
        )
    try:
        result = sample_size_two_proportions(
            p_treated,
            p_control,
            alpha,
            power,
            dropout,
            method,
            ratio=ratio,
        )
    except ValueError as error:
        fail(error)
    typer.echo(result.text())


@samplesize_app.command("survival")
def samplesize_survival(
    hazard_ratio: Annotated[float, typer.Option(help="Hazard ratio treated vs control.")],
    p_event_control: Annotated[float, typer.Option(help="Event probability over follow-up, control.")],
    alpha: Annotated[float, typer.Option()] = 0.05,
    power: Annotated[float, typer.Option()] = 0.8,
    dropout: Annotated[float, typer.Option()] = 0.0,
    method: Annotated[str, typer.Option(help="schoenfeld | freedman")] = "schoenfeld",
) -> None:
    """Time to event (log-rank): events and participants."""
    from immunostrat.analysis import sample_size_time_to_event

    try:
        result = sample_size_time_to_event(
            hazard_ratio,
            p_event_control,
            alpha,
            power,
            dropout=dropout,
            method=method,
        )
    except ValueError as error:
        fail(error)
    typer.echo(result.text())


@samplesize_app.command("repeated")
def samplesize_repeated(
    difference: Annotated[float, typer.Option(help="Mean difference to detect.")],
    sd: Annotated[float, typer.Option(help="Standard deviation of one measurement.")],
    visits: Annotated[int, typer.Option(help="Post-baseline visits averaged.")] = 1,
    correlation: Annotated[float, typer.Option(help="Correlation between visits.")] = 0.5,
    alpha: Annotated[float, typer.Option()] = 0.05,
    power: Annotated[float, typer.Option()] = 0.8,
    dropout: Annotated[float, typer.Option()] = 0.0,
) -> None:
    """Repeated measures (mean over visits, compound symmetry)."""
    from immunostrat.analysis import sample_size_repeated_measures

    try:
        result = sample_size_repeated_measures(difference, sd, visits, correlation, alpha, power, dropout)
    except ValueError as error:
        fail(error)
    typer.echo(result.text())


def _looks(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        fail(
            InputError(
                "information rates not understood", field="--looks", value=text, expected="e.g. 0.33,0.67,1"
            )
        )
    return values


@samplesize_app.command("survival-accrual")
def samplesize_survival_accrual(
    hazard_ratio: Annotated[float, typer.Option(help="Hazard ratio treated vs control.")],
    median_control: Annotated[
        float, typer.Option(help="Control median survival (time unit of your choice).")
    ],
    accrual: Annotated[float, typer.Option(help="Accrual duration (uniform entry).")],
    followup: Annotated[float, typer.Option(help="Follow-up after the last entry.")],
    dropout_rate: Annotated[float, typer.Option(help="Drop-out fraction by --dropout-time, each arm.")] = 0.0,
    dropout_time: Annotated[float, typer.Option(help="Time at which --dropout-rate is reached.")] = 12.0,
    alpha: Annotated[float, typer.Option(help="Two-sided type I error.")] = 0.05,
    power: Annotated[float, typer.Option()] = 0.8,
    ratio: Annotated[float, typer.Option(help="Treated participants per control participant.")] = 1.0,
    looks: Annotated[
        str | None,
        typer.Option(help="Group-sequential information rates, e.g. 0.33,0.67,1 (default: one look)."),
    ] = None,
    spending: Annotated[str, typer.Option(help="asOF (O'Brien-Fleming type) | asP (Pocock type)")] = "asOF",
) -> None:
    """Time to event with accrual, follow-up and drop-out (Schoenfeld events, rpact's method);
    with --looks, the maximum events and participants of a group-sequential design."""
    from immunostrat.analysis import group_sequential as gs
    from immunostrat.analysis.samplesize import sample_size_survival_accrual

    try:
        inflation = 1.0
        if looks:
            if spending not in ("asOF", "asP"):
                raise ValueError("--spending is asOF or asP")
            kind: gs.Spending = "asOF" if spending == "asOF" else "asP"
            inflation = gs.design(
                _looks(looks), alpha=alpha / 2, beta=1 - power, spending=kind
            ).inflation_factor
        result = sample_size_survival_accrual(
            hazard_ratio, median_control, accrual, followup, dropout_rate, dropout_time, alpha, power, ratio,
            inflation_factor=inflation,
        )  # fmt: skip
    except ValueError as error:
        fail(error)
    typer.echo(result.text())


@design_app.command("group-sequential")
def group_sequential_design(
    looks: Annotated[str, typer.Option(help="Information rates of the looks, e.g. 0.33,0.67,1.")],
    alpha: Annotated[float, typer.Option(help="Type I error (one-sided with --sided 1).")] = 0.025,
    beta: Annotated[float, typer.Option(help="Type II error (1 - power).")] = 0.2,
    sided: Annotated[int, typer.Option(help="1 or 2 (two-sided symmetric).")] = 1,
    spending: Annotated[str, typer.Option(help="asOF (O'Brien-Fleming type) | asP (Pocock type)")] = "asOF",
    futility: Annotated[
        str | None, typer.Option(help="Non-binding beta-spending futility: bsOF | bsP (one-sided designs).")
    ] = None,
) -> None:
    """Lan-DeMets group-sequential bounds (z and nominal one-sided P), alpha spent, futility bounds,
    power by look and the inflation factor (agrees with rpact)."""
    from immunostrat.analysis import group_sequential as gs

    if spending not in ("asOF", "asP") or futility not in (None, "bsOF", "bsP"):
        fail(
            InputError(
                "unknown spending function", field="--spending/--futility", expected="asOF, asP; bsOF, bsP"
            )
        )
    try:
        d = gs.design(_looks(looks), alpha, beta, sided, spending, futility)  # type: ignore[arg-type]
    except ValueError as error:
        fail(error)
    table = Table(
        title=f"group-sequential design ({spending}, {'one' if sided == 1 else 'two'}-sided alpha {alpha})"
    )
    for col in (
        "look",
        "information",
        "efficacy z",
        "nominal P",
        "alpha spent",
        "futility z",
        "power so far",
    ):
        table.add_column(col, justify="right")
    for k, t in enumerate(d.information_rates):
        fut = f"{d.futility_z[k]:.4f}" if d.futility_z else "-"
        table.add_row(
            str(k + 1), f"{t:.3f}", f"{d.efficacy_z[k]:.4f}", f"{d.stage_levels[k]:.5f}",
            f"{d.alpha_spent[k]:.5f}", fut, f"{d.power_cumulative[k]:.3f}",
        )  # fmt: skip
    out.print(table)
    typer.echo(
        f"inflation factor {d.inflation_factor:.4f} (maximum information / fixed design); "
        f"drift {d.drift:.4f}; futility non-binding"
        if futility
        else f"inflation factor {d.inflation_factor:.4f}; drift {d.drift:.4f}"
    )
