"""`immunostrat cohort build|summary`: the cohort engine over a whole ICU database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from immunostrat.cli.output import fail
from immunostrat.errors import InputError
from immunostrat.extras import MissingExtraError, require_extra

console = Console(stderr=True)
out = Console()
cohort_app = typer.Typer(
    help="SOFA, Sepsis-3 and immune endotypes over whole ICU databases.", no_args_is_help=True
)


@cohort_app.command("build")
def build(
    source: Annotated[
        str, typer.Option("--source", help="mimic-iv | eicu | physionet2019 | omop | fhir | long")
    ],
    path: Annotated[Path, typer.Option("--path", help="The database folder or file.")],
    output: Annotated[
        Path, typer.Option("--output", help="Folder for stays, hourly_sofa, sepsis3, endotypes.")
    ],
    engine: Annotated[str, typer.Option("--engine", help="duckdb (embedded) or spark (local[2])")] = "duckdb",
    protocol: Annotated[
        str, typer.Option("--protocol", help="Protocol id for the endotype timeline.")
    ] = "immunosep-2025",
    meds: Annotated[
        Path | None, typer.Option("--meds", help="MIMIC-IV: MEDS event file with chart values.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="PhysioNet 2019: read at most N files.")
    ] = None,
    suspected_infection: Annotated[
        str,
        typer.Option(
            "--suspected-infection",
            help="antibiotic-and-culture (Seymour 2016, default) | antibiotic-only (ricu's eICU labels).",
        ),
    ] = "antibiotic-and-culture",
    sofa_baseline: Annotated[
        str,
        typer.Option(
            "--sofa-baseline",
            help="zero (Singer 2016, default) | running-minimum (ricu: rise over the lowest SOFA so far).",
        ),
    ] = "zero",
    sofa_version: Annotated[
        str,
        typer.Option(
            "--sofa-version",
            "--sofa",
            "--score",
            help="sofa-1996 (Vincent 1996, the Sepsis-3 definition's; default) | sofa-2 (Ranzani 2025).",
        ),
    ] = "sofa-1996",
    sofa_option: Annotated[
        list[str] | None,
        typer.Option(
            "--sofa-option",
            help="NAME=CHOICE, repeatable: a named option of the SOFA definition file "
            "(sofa-2: rrt_criteria_creatinine, map_only_tiers, dopamine_with_catecholamine, "
            "other_vasoactive, gcs_motor, urine_score_2).",
        ),
    ] = None,
    adults: Annotated[
        bool, typer.Option("--adults", help="Keep stays with age >= 18 (Seymour 2016; unknown age excluded).")
    ] = False,
    first_stay: Annotated[
        bool,
        typer.Option("--first-stay", help="Keep each person's first ICU stay (mimic-code, ricu cohorts)."),
    ] = False,
    min_stay_hours: Annotated[
        float | None,
        typer.Option("--min-stay-hours", help="Keep ICU stays at least this long (unknown length excluded)."),
    ] = None,
) -> None:
    """Build the cohort tables (Parquet) and print a summary with the missing-concept report."""
    from immunostrat.cohort import ENGINES, build_cohort, format_agreement, format_summary, label_agreement
    from immunostrat.sources import SOURCES, load_source

    if source not in SOURCES:
        fail(InputError("unknown source", field="--source", value=source, expected=" | ".join(SOURCES)))
    if engine not in ENGINES:
        fail(InputError("unknown engine", field="--engine", value=engine, expected=" | ".join(ENGINES)))
    from immunostrat.cohort.engine import BASELINE_RULES, SUSPICION_RULES

    if suspected_infection not in SUSPICION_RULES:
        fail(
            InputError(
                "unknown suspected-infection rule",
                field="--suspected-infection",
                value=suspected_infection,
                expected=" | ".join(SUSPICION_RULES),
            )
        )
    if sofa_baseline not in BASELINE_RULES:
        fail(
            InputError(
                "unknown SOFA baseline",
                field="--sofa-baseline",
                value=sofa_baseline,
                expected=" | ".join(BASELINE_RULES),
            )
        )
    from immunostrat.scores import SOFA_VARIANTS, sofa_definition

    if sofa_version not in SOFA_VARIANTS:
        fail(
            InputError(
                "unknown SOFA version",
                field="--sofa-version",
                value=sofa_version,
                expected=" | ".join(SOFA_VARIANTS),
            )
        )
    sofa_options: dict[str, str] = {}
    for item in sofa_option or []:
        name, sep, choice = item.partition("=")
        if not sep:
            fail(InputError("not NAME=CHOICE", field="--sofa-option", value=item, expected="NAME=CHOICE"))
        sofa_options[name.strip()] = choice.strip()
    try:
        sofa_definition(sofa_version, sofa_options)
    except (KeyError, ValueError) as error:
        fail(InputError(str(error).strip("'\""), field="--sofa-option", value=", ".join(sofa_option or [])))
    if engine == "spark":
        try:
            require_extra("spark", "--engine spark")
        except MissingExtraError as error:
            fail(error)
    options: dict[str, Any] = {}
    if meds is not None:
        options["meds_path"] = meds
    if limit is not None:
        options["limit"] = limit
    try:
        with console.status(f"reading {source} from {path}"):
            data = load_source(source, path, **options)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("cohort plan", total=None)

            def update(step: str, done: int, total: int) -> None:
                bar.update(task, description=step, completed=done, total=total)

            result = build_cohort(
                data,
                protocol_id=protocol,
                engine=engine,
                output_dir=output,
                progress=update,
                suspected_infection=suspected_infection,
                sofa_baseline=sofa_baseline,
                sofa_version=sofa_version,
                sofa_options=sofa_options,
                adults=adults,
                first_stay=first_stay,
                min_stay_hours=min_stay_hours,
            )
    except (InputError, ValueError, KeyError) as error:
        fail(error)
    typer.echo(format_summary(result.summary))
    if "sepsis_onset" in data.tables:
        agreement = label_agreement(result.hourly_sofa, data.tables["sepsis_onset"])
        typer.echo(format_agreement(agreement))
        (output / "label_agreement.json").write_text(json.dumps(agreement, indent=2) + "\n", encoding="utf-8")
    absent = [c for c in data.report if c.status != "present"]
    if absent:
        table = Table(title=f"concepts absent from {source}")
        table.add_column("concept")
        table.add_column("why")
        for status in absent:
            table.add_row(status.concept, status.detail)
        Console(width=max(out.width, 120)).print(table)
    console.print(f"wrote {output}/: stays, hourly_sofa, sepsis3, endotypes (.parquet), summary.json")


@cohort_app.command("summary")
def summary(
    directory: Annotated[Path, typer.Argument(help="A folder written by `cohort build`.")],
) -> None:
    """Print the summary and plot endotype prevalence, SOFA trajectories and 28-day mortality."""
    from immunostrat.cohort import cohort_summary

    if not (directory / "summary.json").exists():
        fail(
            InputError(
                "not a cohort folder", file=str(directory), expected="a folder written by cohort build"
            )
        )
    result = cohort_summary(directory)
    typer.echo(result.text())
    for figure in result.figures:
        console.print(f"wrote {figure}")
