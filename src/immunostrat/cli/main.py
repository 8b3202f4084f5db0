"""The `immunostrat` command line: thin commands that parse, call one function and print."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from immunostrat import __version__
from immunostrat.cli.output import fail, write_table
from immunostrat.errors import InputError
from immunostrat.scores import SCORES, score_windows, windows_at, windows_every

if TYPE_CHECKING:  # concepts (units) and protocols load when a command reads data, not for --help
    from immunostrat.concepts import ObservationSet
    from immunostrat.protocols import Classification

app = typer.Typer(
    name="immunostrat",
    help="Biomarker-guided precision immunotherapy: concepts, scores, immune-state protocols.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


def _parse_duration_hours(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(h|d)?\s*", text)
    if not match:
        raise InputError("bad window length", field="--every", value=text, expected="e.g. 24h or 1d")
    value = float(match.group(1))
    return value * 24 if match.group(2) == "d" else value


def _parse_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            "bad time", field="--at", value=text, expected="ISO 8601, e.g. 2024-03-01T08:00:00Z, or now"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


FHIR_SUFFIXES = (".json", ".ndjson")


def _read(
    input_path: Path,
    patients: Path | None,
    lenient: bool,
    date_format: str | None = None,
    site_codes: Path | None = None,
) -> ObservationSet:
    """Observations from a CSV/Parquet file or a FHIR file (.json Bundle, .ndjson), by extension."""
    from immunostrat.concepts import read_observations
    from immunostrat.concepts.site_codes import load_site_codes

    codes = load_site_codes(site_codes) if site_codes is not None else None
    if input_path.suffix.lower() in FHIR_SUFFIXES:
        if date_format is not None:
            raise InputError(
                "--date-format applies to CSV and Parquet input",
                field="--date-format",
                value=date_format,
                expected="no --date-format with FHIR input (FHIR times are ISO 8601)",
            )
        from immunostrat.sources.fhir_patient import read_fhir_file

        data = read_fhir_file(input_path, patients=patients, site_codes=codes, lenient=lenient)
    else:
        data = read_observations(
            input_path, patients, lenient=lenient, date_format=date_format, site_codes=codes
        )
    for note in data.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    for rejected in data.rejected:
        console.print(f"[yellow]dropped:[/] {rejected}", highlight=False, soft_wrap=True)
    if data.rejected:
        console.print(f"[yellow]{len(data.rejected)} row(s) dropped (--lenient)[/]")
    return data


InputOpt = Annotated[
    Path,
    typer.Option(
        "--input",
        "-i",
        help="Observations: patient_id,time,concept,value,unit (CSV or Parquet), "
        "or FHIR R4 (.json Bundle or resource, .ndjson one resource per line).",
    ),
]
DateFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--date-format",
        help="strftime format every time follows, e.g. '%d/%m/%Y %H:%M' (default: ISO 8601 or hours "
        "since admission; other dates are never guessed).",
    ),
]
SiteCodesOpt = Annotated[
    Path | None,
    typer.Option(
        "--site-codes", help="YAML file mapping the site's own codes (system|code or code) to concepts."
    ),
]
PatientsOpt = Annotated[
    Path | None,
    typer.Option(
        "--patients", "-p", help="Patient table: patient_id,age,sex,weight_kg,height_cm[,admission_time]."
    ),
]
OutputOpt = Annotated[
    str, typer.Option("--output", "-o", help="Output file (.csv, .parquet, .json) or - for CSV on stdout.")
]
LenientOpt = Annotated[
    bool, typer.Option("--lenient", help="Drop bad rows and report each, instead of stopping.")
]


def compute_scores(
    data: ObservationSet, score: str, at: datetime | None = None, every_hours: float | None = None
) -> pl.DataFrame:
    """Score every patient: one window ending at ``at`` (default: last observation), or a grid."""
    if score not in SCORES:
        raise InputError("unknown score", field="--score", value=score, expected=" | ".join(SCORES))
    obs = data.observations
    hours = 24.0
    if every_hours is not None:
        windows = windows_every(obs, every_hours, data.patients if data.patients.height else None)
    else:
        windows = windows_at(obs, at, hours)
    frame = score_windows(obs, windows, score)
    if every_hours is None:
        frame = frame.with_columns(pl.col("window_end").alias("time"))
    return frame.drop("window_end") if every_hours is None else frame


@app.command()
def score(
    input: InputOpt,
    output: OutputOpt,
    score: Annotated[str, typer.Option("--score", "-s", help=" | ".join(SCORES))] = "sofa",
    patients: PatientsOpt = None,
    at: Annotated[
        str | None, typer.Option("--at", help="Score the 24 h up to this time (ISO 8601, or now).")
    ] = None,
    every: Annotated[str | None, typer.Option("--every", help="Score consecutive windows, e.g. 24h.")] = None,
    lenient: LenientOpt = False,
    date_format: DateFormatOpt = None,
    site_codes: SiteCodesOpt = None,
) -> None:
    """Score each patient (SOFA: worst value of each organ system in the window)."""
    try:
        every_hours = _parse_duration_hours(every) if every else None
        at_time = _parse_at(at)
        data = _read(input, patients, lenient, date_format, site_codes)
        if every_hours is not None:
            console.print(f"score windows: every {every_hours:g} h", highlight=False)
        else:
            console.print(f"score window: 24 h up to {_decision_time_text(at_time, at)}", highlight=False)
        frame = compute_scores(data, score, at_time, every_hours)
        write_table(frame, output)
    except InputError as error:
        fail(error)
    if output != "-":
        console.print(f"wrote {frame.height} row(s) to {output}")


def _decision_time_text(at_time: datetime | None, at_text: str | None) -> str:
    """Which decision time a command used, said on stderr so that no one has to guess."""
    if at_time is None:
        return "each patient's last observation"
    source = "--at now" if (at_text or "").strip().lower() == "now" else "--at"
    return f"{at_time.isoformat()} ({source})"


def classification_rows(results: list[Classification]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "patient_id": [r.patient_id for r in results],
            "time": [r.at for r in results],
            "endotype": [r.endotype for r in results],
            "therapy": [r.therapy for r in results],
            "dose": [r.dose.text if r.dose else "" for r in results],
            "reasons": [r.reasons_text() for r in results],
            "warnings": ["; ".join(r.warnings) for r in results],
            "protocol": [f"{r.protocol_id} v{r.protocol_version}" for r in results],
        },
        schema_overrides={"time": pl.Datetime("us", "UTC")},
    )


@app.command()
def classify(
    input: InputOpt,
    output: OutputOpt,
    protocol: Annotated[str, typer.Option("--protocol", help="Protocol id or YAML file.")] = "immunosep-2025",
    patients: PatientsOpt = None,
    at: Annotated[
        str | None,
        typer.Option(
            "--at", help="Decision time, ISO 8601 or now (default: each patient's last observation)."
        ),
    ] = None,
    format: Annotated[
        str | None, typer.Option("--format", help="json: full results with every reason.")
    ] = None,
    lenient: LenientOpt = False,
    date_format: DateFormatOpt = None,
    site_codes: SiteCodesOpt = None,
) -> None:
    """Classify each patient's immune endotype and recommend therapy and dose, with reasons."""
    from immunostrat.protocols import classify_all, load_protocol

    try:
        try:
            chosen = load_protocol(protocol)
        except KeyError as exc:
            raise InputError(str(exc.args[0]), field="--protocol", value=protocol) from None
        at_time = _parse_at(at)
        data = _read(input, patients, lenient, date_format, site_codes)
        console.print(f"decision time: {_decision_time_text(at_time, at)}", highlight=False)
        results = classify_all(chosen, data.observations, data.patients, at=at_time)
        frame = classification_rows(results)
        if format not in (None, "json", "csv"):
            raise InputError("unknown format", field="--format", value=format, expected="json or csv")
        target = output
        records = [r.model_dump(mode="json") for r in results]
        if format == "json" and output == "-":
            sys.stdout.write(json.dumps(records, indent=2) + "\n")
        elif format == "json" and not output.lower().endswith(".json"):
            raise InputError(
                "--format json needs a .json output",
                field="--output",
                value=output,
                expected="a path ending in .json, or -",
            )
        else:
            write_table(frame, target, records=records)
    except InputError as error:
        fail(error)
    if output != "-":
        console.print(f"wrote {len(results)} classification(s) to {output}")


@app.command()
def protocols() -> None:
    """List the shipped protocols."""
    from immunostrat.protocols import list_protocols

    table = Table(title="Protocols")
    for col in ("id", "version", "kind", "endotypes", "source"):
        table.add_column(col, overflow="fold", no_wrap=col == "id")
    for p in list_protocols():
        table.add_row(p.id, p.version, p.kind, ", ".join(p.endotypes), p.source.split(". ")[0])
    out.print(table)


@app.command()
def concepts() -> None:
    """List concepts with canonical units, accepted units, LOINC codes and aliases."""
    from immunostrat.concepts import load_concepts

    table = Table(title="Concepts")
    for col in ("id", "canonical unit", "accepted units", "LOINC / code", "plausible", "aliases"):
        table.add_column(col, overflow="fold", no_wrap=col == "id")
    for c in load_concepts():
        table.add_row(
            c.id,
            c.canonical_unit,
            ", ".join(u or "(none)" for u in c.units),
            ", ".join(c.loinc) or str(c.local_code),
            f"{c.plausible[0]:g}-{c.plausible[1]:g}"
            + (f" (below {c.unit_slip_floor.below:g}: unit slip)" if c.unit_slip_floor else ""),
            ", ".join(c.aliases),
        )
    out.print(table)


@app.command()
def demo(
    output_dir: Annotated[Path, typer.Option("--output-dir", help="Where to write the demo outputs.")] = Path(
        "demo-output"
    ),
    serve: Annotated[
        bool,
        typer.Option(
            "--serve/--no-serve",
            help="Then start the web application on the demo trial and data (Ctrl-C stops it).",
        ),
    ] = True,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port (taken: a free one is chosen and printed).")
    ] = 8000,
) -> None:
    """Classify and score the bundled synthetic cohort and print a summary; then serve the web
    application on a demo trial with one sign-in per role."""
    from immunostrat.cli.demo import run_demo, serve_demo

    try:
        run_demo(output_dir, out)
        if serve:
            serve_demo(output_dir, out, host=host, port=port)
    except InputError as error:
        fail(error)


def _register() -> None:
    from immunostrat.cli import analysis_commands

    app.command("analyze")(analysis_commands.analyze)
    app.command("published")(analysis_commands.published)
    app.add_typer(analysis_commands.design_app, name="design")

    from immunostrat.cli import trial_commands

    app.command("serve")(trial_commands.serve)
    app.add_typer(trial_commands.trial_app, name="trial")
    from immunostrat.cli import audit_commands

    app.add_typer(audit_commands.audit_app, name="audit")

    from immunostrat.cli import simulate_commands

    app.add_typer(simulate_commands.simulate_app, name="simulate")

    from immunostrat.cli import cohort_commands

    app.add_typer(cohort_commands.cohort_app, name="cohort")


_register()


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(__version__)
        raise typer.Exit()


def main() -> None:
    app()
