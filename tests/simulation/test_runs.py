"""simulation.runs: the glue the CLI and the in-silico page share gives what simulate_trials gives, and
reports its steps in order."""

from __future__ import annotations

import numpy as np
import pytest

from immunostrat.analysis.stats import wilson_interval
from immunostrat.simulation import generate_population, simulate_trials
from immunostrat.simulation.runs import STEPS, design_for, power_estimate, run_trials, variant_options


def test_run_trials_is_simulate_trials_with_its_steps_reported() -> None:
    seen: list[tuple[str, int, int]] = []
    got = run_trials(
        "immunosep", 40, 10, 1, endpoint="mortality_28d", population_size=200,
        progress=lambda step, done, total: seen.append((step, done, total)),
    )  # fmt: skip
    assert [s for s in dict.fromkeys(step for step, _, _ in seen)] == list(STEPS)
    assert seen[-1] == ("trials", 10, 10)
    assert ("outcomes under each therapy", 3, 3) in seen  # placebo, anakinra, interferon-gamma
    vpop = generate_population(200, 1, **variant_options("reynolds2006"))
    want = simulate_trials(design_for("immunosep", "mortality_28d"), 40, 10, 1, population=vpop)
    assert got.design.primary_endpoint == "mortality_28d"
    assert got.power == want.power and got.rates == want.rates
    np.testing.assert_array_equal(got.p_values, want.p_values)
    est = power_estimate(got)
    assert est.successes == int(got.per_trial["significant_benefit"].sum())
    assert est.power == est.successes / 10 and est.se == got.power_mc_se
    assert (est.low, est.high) == wilson_interval(est.successes, 10)


def test_unknown_names_are_value_errors_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown design 'magic'; one of .*immunosep"):
        design_for("magic")
    with pytest.raises(ValueError, match=r"unknown endpoint 'magic'; one of .*mortality_28d"):
        design_for("immunosep", "magic")
    with pytest.raises(ValueError, match="unknown model 'magic'"):
        variant_options("magic")
    with pytest.raises(ValueError, match="n >= 2"):
        run_trials("immunosep", 1, 10, 0, population_size=200)
