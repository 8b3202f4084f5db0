"""`immunostrat simulate population|trial|plots`: in-silico trials with progress bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from immunostrat.cli.output import fail

console = Console(stderr=True)
out = Console()
simulate_app = typer.Typer(help="In-silico trials on Reynolds 2006 virtual patients.", no_args_is_help=True)


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
) -> None:
    """Sample a virtual population matched to PROVIDE's endotype prevalence and mortality; report the fit."""
    from immunostrat.cli.output import fail, write_table
    from immunostrat.simulation import (
        population_frame,
        population_observations,
        simulate_population,
        simulate_population_distributed,
    )

    if size < 1:
        fail(ValueError("--size must be at least 1"))
    with progress_bar("simulating virtual patients") as update:
        if cluster:
            vpop = simulate_population_distributed(
                size, seed, address=None if cluster == "local" else cluster, progress=update
            )
        else:
            vpop = simulate_population(size, seed, progress=update)
    typer.echo(vpop.fit.table())
    if output is not None:
        write_table(population_frame(vpop), str(output))
        console.print(f"wrote {output}")
    if observations is not None:
        write_table(population_observations(vpop), str(observations))
        console.print(f"wrote {observations}")


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
) -> None:
    """Run N in-silico trials of one design: power, type I error, rates per arm, harm per subgroup."""
    from immunostrat.simulation import DESIGNS, simulate_trials

    if design not in DESIGNS:
        fail(ValueError(f"unknown design {design!r}; one of {', '.join(DESIGNS)}"))
    try:
        with progress_bar(f"simulating {trials} trials") as update:
            results = simulate_trials(
                design, n, trials, seed, population_size=population_size, progress=update
            )
    except ValueError as error:
        fail(error)
    typer.echo(results.summary())


@simulate_app.command("plots")
def plots(
    output_dir: Annotated[Path, typer.Option("--output-dir")] = Path("simulation-plots"),
    sizes: Annotated[
        str, typer.Option("--sizes", help="Trial sizes for the power curves.")
    ] = "100,200,276,400",
    trials: Annotated[int, typer.Option("--trials")] = 200,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Outcome map over initial load and virulence, and power curves of every design."""
    from immunostrat.simulation import DESIGNS, plot_outcome_map, plot_power_curves, power_curve

    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError:
        fail(ValueError(f"--sizes must be comma-separated integers, got {sizes!r}"))
    output_dir.mkdir(parents=True, exist_ok=True)
    with progress_bar("outcome map") as update:
        outcome = plot_outcome_map(output_dir / "outcome_map.png", progress=update)
    with progress_bar("power curves") as update:
        curves = power_curve(list(DESIGNS), size_list, trials, seed, progress=update)
    power = plot_power_curves(output_dir / "power_curves.png", size_list, curves)
    out.print(f"wrote {outcome} and {power}")
