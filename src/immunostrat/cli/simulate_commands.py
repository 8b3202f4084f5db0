"""`immunostrat simulate population|trial|size|validate|plots`: in-silico trials with progress bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from immunostrat.cli.output import fail

if TYPE_CHECKING:
    from immunostrat.simulation import TrialDesign, VirtualPopulation

console = Console(stderr=True)
out = Console()
simulate_app = typer.Typer(help="In-silico trials on Reynolds 2006 virtual patients.", no_args_is_help=True)

ModelOption = Annotated[
    str,
    typer.Option(
        "--model",
        help="reynolds2006 (published) | deactivation (+ monocyte deactivation) | full (+ ICU-acquired "
        "infections); see docs/simulation.md.",
    ),
]
EndpointOption = Annotated[
    str,
    typer.Option(
        "--endpoint",
        help="Primary endpoint: sofa_response (ImmunoSep) | mortality_28d | infection_resolved_d15 | "
        "superinfection_d15.",
    ),
]

EngineOption = Annotated[
    str,
    typer.Option(
        "--engine",
        help="Integration engine: auto (the fastest installed one that runs the model exactly as numpy does) "
        "| numpy | numba | jax. The results do not depend on it; an engine that cannot run the model is "
        "an error.",
    ),
]


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar fed by the simulation's (done, total) callbacks."""
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@simulate_app.command("population")
def population(
    size: Annotated[int, typer.Option("--size", help="Accepted virtual patients.")] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    output: Annotated[Path | None, typer.Option("--output", help="Patient table (.csv or .parquet).")] = None,
    observations: Annotated[
        Path | None, typer.Option("--observations", help="Daily observations in the long format (.parquet).")
    ] = None,
    cluster: Annotated[
        str | None, typer.Option("--cluster", help="Dask scheduler address (or 'local').")
    ] = None,
    model: ModelOption = "reynolds2006",
    engine: EngineOption = "auto",
) -> None:
    """Sample a virtual population matched to PROVIDE's endotype prevalence and mortality; report the fit."""
    from immunostrat.cli.output import output_format, write_table
    from immunostrat.errors import InputError
    from immunostrat.simulation import (
        population_frame,
        population_observations,
        simulate_population,
        simulate_population_distributed,
    )

    if size < 1:
        fail(ValueError("--size must be at least 1"))
    try:  # before the simulation, so that a bad file name costs nothing
        for path, option in ((output, "--output"), (observations, "--observations")):
            if path is not None:
                output_format(str(path), option)
    except InputError as error:
        fail(error)
    variant = {**_variant(model), "engine": _engine(engine, model)}
    with progress_bar("simulating virtual patients") as update:
        if cluster:
            vpop = simulate_population_distributed(
                size, seed, address=None if cluster == "local" else cluster, progress=update, **variant
            )
        else:
            vpop = simulate_population(size, seed, progress=update, **variant)
    typer.echo(vpop.fit.table())
    if output is not None:
        write_table(population_frame(vpop), str(output))
        console.print(f"wrote {output}")
    if observations is not None:
        from datetime import timedelta

        import polars as pl

        from immunostrat.concepts.dictionary import load_concepts
        from immunostrat.simulation.observables import EPOCH

        # only concepts of the dictionary, so that `immunostrat classify` reads the file as it is; the model
        # read-outs without a dictionary concept (sofa_total, infection_resolved) stay in the Python API
        frame = population_observations(vpop)
        known = load_concepts()
        kept = sorted(c for c in frame["concept"].unique().to_list() if c in known)
        left = sorted(set(frame["concept"].unique().to_list()) - set(kept))
        write_table(frame.filter(pl.col("concept").is_in(kept)), str(observations))
        decision = (EPOCH + timedelta(days=vpop.enrolment_day)).strftime("%Y-%m-%dT%H:%M:%SZ")
        console.print(
            f"wrote {observations}: {', '.join(kept)}"
            + (f" (not written: {', '.join(left)})" if left else "")
        )
        typer.echo(
            f"enrolment (the decision time) is day {vpop.enrolment_day} after onset: "
            f"immunostrat classify --input {observations} --at {decision}"
        )


@simulate_app.command("trial")
def trial(
    design: Annotated[
        str, typer.Option("--design", help="immunosep | all-comers-anti-inflammatory | ...")
    ] = "immunosep",
    n: Annotated[int, typer.Option("--n", help="Patients per trial.")] = 276,
    trials: Annotated[int, typer.Option("--trials", help="Number of simulated trials.")] = 1000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    population_size: Annotated[
        int, typer.Option("--population-size", help="Virtual population drawn from.")
    ] = 4000,
    model: ModelOption = "reynolds2006",
    endpoint: EndpointOption = "sofa_response",
    engine: EngineOption = "auto",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", help="One row per simulated trial (.csv, .parquet, .json; '-' CSV on stdout)."
        ),
    ] = None,
) -> None:
    """Run N in-silico trials of one design: power and type I error with their Monte Carlo SE, rates per arm,
    harm per subgroup."""
    from immunostrat.cli.output import output_format, write_table
    from immunostrat.errors import InputError
    from immunostrat.simulation import simulate_trials

    chosen = _design(design, endpoint)
    if output is not None:
        try:
            output_format(str(output), "--output")
        except InputError as error:
            fail(error)
    try:
        vpop = _population(population_size, seed, model, engine)
        with progress_bar(f"simulating {trials} trials") as update:
            results = simulate_trials(chosen, n, trials, seed, population=vpop, progress=update)
    except ValueError as error:
        fail(error)
    if output is not None and str(output) == "-":
        write_table(results.per_trial_frame(), "-")
        return
    typer.echo(results.summary())
    if output is not None:
        write_table(results.per_trial_frame(), str(output))
        console.print(f"wrote {output}")


@simulate_app.command("size")
def size(
    design: Annotated[str, typer.Option("--design", help="A design id (see simulate trial).")] = "immunosep",
    power: Annotated[float, typer.Option("--power", help="Target power.")] = 0.8,
    trials: Annotated[int, typer.Option("--trials", help="Simulated trials per size.")] = 300,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    population_size: Annotated[
        int, typer.Option("--population-size", help="Virtual population drawn from.")
    ] = 4000,
    max_n: Annotated[int, typer.Option("--max-n", help="Largest trial size tried.")] = 2000,
    model: ModelOption = "reynolds2006",
    endpoint: EndpointOption = "sofa_response",
    engine: EngineOption = "auto",
) -> None:
    """Size the next trial: the smallest n whose in-silico power reaches the target (bisection)."""
    from immunostrat.simulation.trial import size_trial

    chosen = _design(design, endpoint)
    try:
        vpop = _population(population_size, seed, model, engine)
        with progress_bar("trial sizes") as update:
            result = size_trial(
                chosen,
                power,
                population=vpop,
                trials=trials,
                seed=seed,
                n_max=max_n,
                progress=update,
            )
    except ValueError as error:
        fail(error)
    typer.echo(result.summary())


@simulate_app.command("validate")
def validate_command(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="reynolds2006 | deactivation | full, or 'all' (each variant calibrated on its own).",
        ),
    ] = "reynolds2006",
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Smoke run: 1,000 patients, coarse grids, 400 trials per comparator."),
    ] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    population_size: Annotated[
        int | None, typer.Option("--population-size", help="Virtual population (default 4,000; 1,000 quick).")
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option("--trials", help="Simulated trials per comparator (default 2,000; 400 quick)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="One row per comparator and variant (.csv, .parquet, .json)."),
    ] = None,
    plan_file: Annotated[
        Path | None,
        typer.Option(
            "--plan", help="A credibility plan (YAML); default: the shipped one (docs/simulation.md)."
        ),
    ] = None,
    engine: EngineOption = "auto",
) -> None:
    """Calibrate the therapy strengths on the training trials, predict every comparator trial at its own size
    and judge each model variant on the held-out trials by the pre-registered criterion."""
    from immunostrat.cli.output import output_format, write_table
    from immunostrat.errors import InputError
    from immunostrat.simulation.population import MODEL_VARIANTS
    from immunostrat.simulation.validation import load_plan, validate, validation_frame

    models = list(MODEL_VARIANTS) if model == "all" else [model]
    for m in models:
        _variant(m)
    for m in models:  # with 'all', auto runs each variant on its fastest engine; a named one must run all
        _engine(engine, m)
    try:
        plan = load_plan(plan_file)
    except (InputError, OSError, KeyError, TypeError, ValueError) as error:
        fail(error)
    if output is not None:
        try:
            output_format(str(output), "--output")
        except InputError as error:
            fail(error)
    reports = []
    for m in models:
        with console.status(f"validating {m}") as status:

            def say(msg: str, name: str = m) -> None:
                status.update(f"{name}: {msg}")

            try:
                report = validate(
                    m,
                    quick=quick,
                    seed=seed,
                    population_size=population_size,
                    trials=trials,
                    plan=plan,
                    progress=say,
                    engine=engine,
                )
            except ValueError as error:
                fail(error)
        reports.append(report)
        typer.echo(f"model {m}")
        typer.echo(report.table())
        typer.echo("")
        if report.designs:
            typer.echo(report.design_table())
            typer.echo("")
    for report in reports:
        typer.echo(report.summary_line())
    if output is not None:
        import polars as pl

        write_table(pl.concat([validation_frame(r) for r in reports]), str(output))
        console.print(f"wrote {output}")


@simulate_app.command("plots")
def plots(
    output_dir: Annotated[Path, typer.Option("--output-dir")] = Path("simulation-plots"),
    sizes: Annotated[
        str, typer.Option("--sizes", help="Trial sizes for the power curves.")
    ] = "100,200,276,400",
    trials: Annotated[int, typer.Option("--trials")] = 200,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    model: ModelOption = "reynolds2006",
) -> None:
    """Outcome map over initial load and virulence, and power curves of every design."""
    from immunostrat.simulation import (
        DESIGNS,
        generate_population,
        plot_outcome_map,
        plot_power_curves,
        power_curve,
    )

    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        fail(ValueError(f"--sizes must be comma-separated integers, got {sizes!r}"))
    output_dir.mkdir(parents=True, exist_ok=True)
    with progress_bar("outcome map") as update:
        outcome = plot_outcome_map(output_dir / "outcome_map.png", progress=update)
    with progress_bar("power curves") as update:
        vpop = generate_population(4000, seed, **_variant(model))
        curves = power_curve(list(DESIGNS), size_list, trials, seed, population=vpop, progress=update)
    name = "power_curves.png" if model == "reynolds2006" else f"power_curves_{model}.png"
    power = plot_power_curves(
        output_dir / name, size_list, curves, title=f"In-silico trial power ({model} model, {trials} trials)"
    )
    out.print(f"wrote {outcome} and {power}")


def _variant(model: str) -> dict[str, Any]:
    """The population keyword arguments of ``--model`` (a clear CLI error for an unknown name)."""
    from immunostrat.simulation.runs import variant_options

    try:
        return variant_options(model)
    except ValueError as error:
        fail(error)


def _design(design: str, endpoint: str) -> TrialDesign:
    """The named design with ``endpoint`` as its primary endpoint (a clear CLI error for unknown names)."""
    from immunostrat.simulation.runs import design_for

    try:
        return design_for(design, endpoint)
    except ValueError as error:
        fail(error)


def _engine(engine: str, model: str) -> str:
    """``--engine`` checked against ``--model`` (a clear CLI error, the engine's own reason, for an unknown
    engine or one that cannot run the model's virtual patients): the engine name itself."""
    from immunostrat.simulation.observables import BiomarkerObserver
    from immunostrat.simulation.population import course_engine

    variant = _variant(model)
    try:
        course_engine(engine, BiomarkerObserver(), variant.get("deactivation"), variant.get("secondary"))
    except ValueError as error:
        fail(ValueError(f"--engine {engine} with --model {model}: {error}"))
    return engine


def _population(size: int, seed: int, model: str, engine: str = "auto") -> VirtualPopulation:
    """The virtual population of ``--model`` on ``--engine``, with a progress bar."""
    from immunostrat.simulation.runs import population_for

    _engine(engine, model)  # an unknown model or engine is a CLI error before the progress bar starts
    with progress_bar("simulating virtual patients") as update:
        return population_for(size, seed, model, progress=update, engine=engine)
