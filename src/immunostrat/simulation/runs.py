"""Named in-silico runs, the glue the CLI (``simulate trial|size|plots``) and the in-silico page share: a
design by id with its primary endpoint, a model variant's virtual population, and a whole run of trials
whose steps (population, outcomes under each therapy, trials) report their progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from immunostrat.analysis.stats import wilson_interval

from .population import (
    DEFAULT_ENGINE,
    MODEL_VARIANTS,
    VirtualPopulation,
    generate_population,
    model_variant,
)
from .trial import DESIGNS, ENDPOINTS, OutcomeTable, TrialDesign, TrialResults, simulate_trials

__all__ = [
    "DESIGNS",
    "ENDPOINTS",
    "MODEL_VARIANTS",
    "STEPS",
    "PowerEstimate",
    "design_for",
    "population_for",
    "power_estimate",
    "run_trials",
    "variant_options",
]

STEPS: tuple[str, ...] = ("virtual population", "outcomes under each therapy", "trials")
"""The steps of :func:`run_trials`, in order, as its progress callback names them."""

StepProgress = Callable[[str, int, int], None]
"""``(step, done, total)``: ``step`` one of :data:`STEPS`."""


def variant_options(model: str) -> dict[str, Any]:
    """The population keyword arguments of a named model variant (ValueError naming the variants)."""
    return dict(model_variant(model))


def design_for(design: str, endpoint: str = "sofa_response") -> TrialDesign:
    """The named design with ``endpoint`` as its primary endpoint (ValueError naming the choices)."""
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; one of {', '.join(DESIGNS)}")
    if endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; one of {', '.join(ENDPOINTS)}")
    return replace(DESIGNS[design], primary_endpoint=endpoint)


def population_for(
    size: int,
    seed: int,
    model: str,
    progress: Callable[[int, int], None] | None = None,
    engine: str = DEFAULT_ENGINE,
) -> VirtualPopulation:
    """The virtual population of ``size`` accepted patients on the named model variant, integrated (with its
    therapy simulations) on ``engine`` (``engines.ENGINE_CHOICES``; the results do not depend on it)."""
    return generate_population(size, seed, progress=progress, engine=engine, **variant_options(model))


def run_trials(
    design: str,
    n: int,
    trials: int,
    seed: int,
    *,
    model: str = "reynolds2006",
    endpoint: str = "sofa_response",
    population_size: int = 4000,
    progress: StepProgress | None = None,
    engine: str = DEFAULT_ENGINE,
) -> TrialResults:
    """``simulate trial`` as one call: the population, the potential outcomes under placebo and each of
    the design's therapies, then ``trials`` trials of ``n``; each step reports ``(step, done, total)``."""
    chosen = design_for(design, endpoint)
    if n < 2 or trials < 1:
        raise ValueError("need n >= 2 and trials >= 1")

    def step(name: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        report = progress

        def update(done: int, total: int) -> None:
            report(name, done, total)

        return update

    vpop = population_for(population_size, seed, model, step(STEPS[0]), engine)
    table = OutcomeTable(vpop)
    therapies = ["placebo", *chosen.therapies]
    outcomes_step = step(STEPS[1])
    for i, therapy in enumerate(therapies):
        if outcomes_step is not None:
            outcomes_step(i, len(therapies))
        table.get(therapy)
    if outcomes_step is not None:
        outcomes_step(len(therapies), len(therapies))
    return simulate_trials(chosen, n, trials, seed, population=vpop, outcomes=table, progress=step(STEPS[2]))


@dataclass(frozen=True)
class PowerEstimate:
    """Power as the share of simulated trials with a significant benefit, with its Monte Carlo error."""

    successes: int
    trials: int
    power: float
    se: float
    """Binomial standard error over the simulated trials."""
    low: float
    high: float
    """Wilson score 95% interval."""


def power_estimate(results: TrialResults) -> PowerEstimate:
    """The power of ``results`` with its binomial Monte Carlo SE and Wilson 95% interval."""
    successes = int(results.per_trial["significant_benefit"].sum())
    low, high = wilson_interval(successes, results.trials)
    return PowerEstimate(successes, results.trials, results.power, results.power_mc_se, low, high)
