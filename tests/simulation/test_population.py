"""Virtual populations: reproducible from a seed, accepted to the PROVIDE targets, fit reported."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from immunostrat.simulation.population import (
    PROVIDE_MORTALITY,
    PROVIDE_PREVALENCE,
    PopulationTargets,
    VirtualPopulation,
    generate_population,
    population_frame,
    population_observations,
    stratify,
)


def test_targets_are_provide() -> None:
    # domain.md A2: 48/103/89 of 240; mortality 38/48, 69/103, 37/89.
    assert pytest.approx((0.200, 0.429, 0.371), abs=5e-4) == PROVIDE_PREVALENCE
    assert pytest.approx((0.791, 0.670, 0.416), abs=1e-3) == PROVIDE_MORTALITY
    cells = PopulationTargets().cell_probabilities()
    assert cells.sum() == pytest.approx(1.0)


def test_reproducible_from_seed() -> None:
    a = generate_population(60, seed=3, batch=2048)
    b = generate_population(60, seed=3, batch=2048)
    c = generate_population(60, seed=4, batch=2048)
    np.testing.assert_array_equal(a.cohort.params.k_pg, b.cohort.params.k_pg)
    np.testing.assert_array_equal(a.endotype, b.endotype)
    assert a.fit == b.fit
    assert not np.array_equal(a.cohort.params.k_pg, c.cohort.params.k_pg)


def test_population_matches_provide(vpop: VirtualPopulation) -> None:
    fit = vpop.fit
    assert fit.n_accepted == vpop.size == 400
    # sampling error at n = 400: prevalence SE <= 0.025; MALS mortality SE ~ 0.045 (n ~ 80)
    assert np.abs(np.subtract(fit.achieved_prevalence, fit.target_prevalence)).max() < 0.06
    assert np.abs(np.subtract(fit.achieved_mortality, fit.target_mortality)).max() < 0.12
    assert fit.p_value > 0.001
    assert "immunoparalysis" in fit.table()
    # every accepted patient is plausible: alive with Sepsis-3 organ dysfunction at enrolment
    assert vpop.cohort.alive_at_enrolment.all() and (vpop.cohort.sofa >= 2).all()
    # the stored endotypes are the protocol's classification of the stored biomarkers
    np.testing.assert_array_equal(vpop.endotype, stratify(vpop.cohort.ferritin, vpop.cohort.mhla_dr))


def test_acceptance_moves_the_population_to_the_targets(vpop: VirtualPopulation) -> None:
    """The plausible patients before acceptance are far from PROVIDE (so acceptance does the work)."""
    assert vpop.fit.n_plausible > 5 * vpop.fit.n_accepted
    assert 0 < vpop.fit.alpha < 1


def test_phenotypes_map_to_endotypes(vpop: VirtualPopulation) -> None:
    """MALS patients are mostly on the aseptic-death (hyperinflammation) course, immunoparalysed ones mostly
    keep their pathogen (septic death / persistent infection): insilico.md 0 and 3."""
    out = vpop.cohort.outcome
    mals, ip = vpop.endotype == 0, vpop.endotype == 1
    assert np.mean(out[mals] == 1) > 0.5
    assert np.mean(np.isin(out[ip], (2, 3))) > 0.5


def test_frames(vpop: VirtualPopulation) -> None:
    frame = population_frame(vpop)
    assert frame.height == vpop.size
    assert set(frame["endotype"].unique()) == {"MALS", "immunoparalysis", "intermediate"}
    small = VirtualPopulation(vpop.cohort.take(np.arange(5)), vpop.endotype[:5], vpop.fit, vpop.seed,
                              vpop.enrolment_day, vpop.calibration)  # fmt: skip
    obs = population_observations(small)
    assert obs.schema["time"] == pl.Datetime("us", "UTC")
    day1 = obs.filter((pl.col("concept") == "ferritin") & (pl.col("time").dt.day() == 2)).sort("patient_id")
    np.testing.assert_allclose(day1["value"].to_numpy(), small.cohort.ferritin, rtol=1e-12)
