"""ICU-acquired (secondary) infections: the second structural extension (model.SecondaryInfection).

Checks: off unless asked for, and with infinite exposure identical to the deactivation model; the event
happens where the cumulative hazard reaches the exposure, adds the inoculum, and comes earlier under low
mHLA-DR by the hazard ratio; freezing changes nothing; no infection before 48 h, after day 28 or after
death; populations are reproducible; the calibration meets its two targets; and what the full model says
about the seed's trial claims (docs/simulation.md).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from immunostrat.simulation.model import (
    DAY28_H,
    MONOCYTE_DEACTIVATION,
    SECONDARY_INFECTION,
    SecondaryDraws,
    initial_state,
    integrate,
    patient_parameters,
)
from immunostrat.simulation.population import IMMUNOPARALYSIS, VirtualPopulation, generate_population
from immunostrat.simulation.therapies import Effect, Schedule, Therapy
from immunostrat.simulation.trial import OutcomeTable, simulate_trials

N_IMMUNOSEP = 276


def _random_patients(n: int, seed: int) -> tuple[np.ndarray, object, SecondaryDraws]:
    rng = np.random.default_rng(seed)
    params = patient_parameters(
        n, k_pg=rng.uniform(0.15, 0.9, n), c_inf=0.28 * np.exp(rng.normal(0.0, 0.45, n))
    )
    draws = SecondaryDraws(rng.exponential(1.0, n), rng.lognormal(0.0, 0.7, n))
    return rng.uniform(0.2, 3.0, n), params, draws


@pytest.fixture(scope="module")
def vpop_full() -> VirtualPopulation:
    return generate_population(
        400, seed=7, batch=4096, deactivation=MONOCYTE_DEACTIVATION, secondary=SECONDARY_INFECTION
    )


def test_needs_deactivation_and_draws() -> None:
    p0, params, draws = _random_patients(3, 0)
    y0 = initial_state(p0, params)
    with pytest.raises(ValueError, match="deactivation"):
        integrate(y0, params, t_end=48.0, secondary=SECONDARY_INFECTION, secondary_draws=draws)
    with pytest.raises(ValueError, match="secondary_draws"):
        integrate(y0, params, t_end=48.0, deactivation=MONOCYTE_DEACTIVATION, secondary=SECONDARY_INFECTION)
    with pytest.raises(ValueError, match="deactivation"):
        generate_population(10, seed=1, secondary=SECONDARY_INFECTION)


def test_infinite_exposure_is_the_deactivation_model() -> None:
    p0, params, _ = _random_patients(40, 1)
    y0 = initial_state(p0, params)
    base = integrate(y0, params, t_end=DAY28_H, deactivation=MONOCYTE_DEACTIVATION, drop_healed=False)
    none = integrate(
        y0,
        params,
        t_end=DAY28_H,
        deactivation=MONOCYTE_DEACTIVATION,
        secondary=SECONDARY_INFECTION,
        secondary_draws=SecondaryDraws.none(40),
        drop_healed=False,
    )
    np.testing.assert_array_equal(none.states, base.states)
    assert none.secondary_time is not None and np.isnan(none.secondary_time).all()
    assert base.secondary_time is None and not base.secondary_by(DAY28_H).any()


def test_event_time_inoculum_and_hazard_ratio() -> None:
    """A patient at health (P0 = 0, H = H_0) has the baseline hazard: the infection starts at the first step
    end t with hazard x (t - 48 h) >= E, and P jumps by inoculum_scale x relative inoculum there. A patient
    whose mHLA-DR is held low (a continuous CA source) reaches the same exposure 2.52 times sooner."""
    sec = replace(SECONDARY_INFECTION, hazard_per_h=0.01, inoculum_scale=0.5)
    params = patient_parameters(2)
    exposure = 0.2025  # not a multiple of the per-step hazard, so round-off cannot move the step
    draws = SecondaryDraws(np.array([exposure, exposure]), np.array([0.3, 0.3]))
    ca_hold = Therapy("ca_hold", "CA held high", (Effect("ca_source", 0.5, 0.0, 400.0),), "test")
    sched = Schedule.build(ca_hold, np.array([1e9, 0.0]), 2)  # patient 0 never treated
    dt = 0.5
    traj = integrate(
        initial_state(np.zeros(2), params),
        params,
        t_end=120.0,
        record_every=dt,
        schedule=sched,
        deactivation=MONOCYTE_DEACTIVATION,
        secondary=sec,
        secondary_draws=draws,
        drop_healed=False,
    )
    assert traj.secondary_time is not None
    assert traj.secondary_time[0] == pytest.approx(48.0 + np.ceil(exposure / (0.01 * dt)) * dt)
    k = round(float(traj.secondary_time[0]) / dt)
    assert traj.states[0, k, 0] == pytest.approx(0.5 * 0.3)
    assert traj.states[0, k - 1, 0] == 0.0
    assert traj.states[1, 96, 4] / traj.states[1, 0, 4] < sec.low_fraction  # low mHLA-DR from 48 h on
    low_rate = 0.01 * sec.hazard_ratio_low
    assert traj.secondary_time[1] == pytest.approx(48.0 + np.ceil(exposure / (low_rate * dt)) * dt)


def test_freezing_and_chunks_change_nothing() -> None:
    p0, params, draws = _random_patients(300, 2)
    draws = replace(draws, exposure=draws.exposure * 0.3)  # many events within 28 days
    kw = dict(
        t_end=DAY28_H,
        deactivation=MONOCYTE_DEACTIVATION,
        secondary=SECONDARY_INFECTION,
        secondary_draws=draws,
    )
    full = integrate(initial_state(p0, params), params, drop_healed=False, **kw)  # type: ignore[arg-type]
    fast = integrate(initial_state(p0, params), params, drop_healed=True, drop_dead=True, chunk_size=64, **kw)  # type: ignore[arg-type]
    assert full.secondary_time is not None and fast.secondary_time is not None
    assert 30 < np.isfinite(full.secondary_time).sum() < 300
    np.testing.assert_array_equal(full.secondary_time, fast.secondary_time)
    np.testing.assert_array_equal(full.death_time, fast.death_time)
    t = full.secondary_time[np.isfinite(full.secondary_time)]
    assert t.min() > SECONDARY_INFECTION.at_risk_from_h and t.max() <= SECONDARY_INFECTION.at_risk_until_h
    died = np.isfinite(full.death_time) & np.isfinite(full.secondary_time)
    assert (full.secondary_time[died] <= full.death_time[died]).all()


def test_population_is_reproducible_and_records_the_untreated_infections(
    vpop_full: VirtualPopulation,
) -> None:
    again = generate_population(
        400, seed=7, batch=4096, deactivation=MONOCYTE_DEACTIVATION, secondary=SECONDARY_INFECTION
    )
    c, c2 = vpop_full.cohort, again.cohort
    assert c.secondary_time is not None and c2.secondary_time is not None
    np.testing.assert_array_equal(c.secondary_time, c2.secondary_time)
    np.testing.assert_array_equal(vpop_full.endotype, again.endotype)
    placebo = OutcomeTable(vpop_full).get("placebo").values
    np.testing.assert_array_equal(
        placebo["superinfection_d15"], np.nan_to_num(c.secondary_time, nan=1e9) <= 360
    )
    np.testing.assert_array_equal(placebo["mortality_28d"], c.died28)
    assert abs(vpop_full.fit.max_abs_error) < 0.1


def test_calibration_meets_its_targets() -> None:
    """hazard_per_h: 31.7% of eligible placebo patients infected by day 15 (ImmunoSep 46/145);
    inoculum_scale: attributable 28-day mortality at the model's plateau, about 9% (Melsen 2011: 9%,
    Melsen 2013: 13%). The calibration script's measurement, on an independent VPop seed."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "scripts" / "calibrate_secondary_infection.py"
    spec = importlib.util.spec_from_file_location("calibrate_secondary_infection", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    vp = generate_population(1500, seed=11, deactivation=MONOCYTE_DEACTIVATION, secondary=SECONDARY_INFECTION)
    incidence15, attributable, incidence28 = module.measure(vp)
    assert incidence15 == pytest.approx(46 / 145, abs=0.04)
    assert 0.05 <= attributable <= 0.13
    assert incidence28 > incidence15


def test_what_the_full_model_says_about_the_seed_claims(vpop_full: VirtualPopulation) -> None:
    """Regression of the reported result (docs/simulation.md), not the seed's claims as written. With
    monocyte deactivation and calibrated ICU-acquired infections, all-comers non-specific anti-inflammation
    shows more secondary infections in the immunoparalysed by day 15 than placebo, but not among those alive
    at day 15 on both arms (the excess is longer survival at risk, not deeper suppression), and no more
    28-day deaths; all-comers MSC still has more power than the biomarker-guided design at n = 276, which
    beats all-comers interferon-gamma."""
    table = OutcomeTable(vpop_full)
    steroid = simulate_trials(
        "all-comers-anti-inflammatory", N_IMMUNOSEP, 100, seed=1, population=vpop_full, outcomes=table
    )
    ip = steroid.subgroups["immunoparalysis"]
    assert ip.mean_difference["superinfection_d15"] > 0.1
    assert not ip.harm
    stratum = vpop_full.endotype == IMMUNOPARALYSIS
    more = table.get("anti_inflammatory").values["superinfection_d15"][stratum].mean()
    assert more > table.get("placebo").values["superinfection_d15"][stratum].mean() + 0.1
    alive15 = {th: ~np.asarray(_died_by_day15(vpop_full, th)) for th in ("placebo", "anti_inflammatory")}
    both = stratum & alive15["placebo"] & alive15["anti_inflammatory"]
    assert both.sum() > 20
    on_steroid = table.get("anti_inflammatory").values["superinfection_d15"][both].mean()
    on_placebo = table.get("placebo").values["superinfection_d15"][both].mean()
    assert on_steroid < on_placebo + 0.05
    guided = simulate_trials("immunosep", N_IMMUNOSEP, 100, seed=1, population=vpop_full, outcomes=table)
    msc = simulate_trials("all-comers-msc", N_IMMUNOSEP, 100, seed=1, population=vpop_full, outcomes=table)
    ifn = simulate_trials(
        "all-comers-immunostimulation", N_IMMUNOSEP, 100, seed=1, population=vpop_full, outcomes=table
    )
    assert msc.power > guided.power > ifn.power
    # interferon-gamma prevents secondary infections in the immunoparalysed (mHLA-DR restored)
    assert guided.subgroups["immunoparalysis"].mean_difference["superinfection_d15"] < -0.05


def _died_by_day15(vpop: VirtualPopulation, therapy: str) -> np.ndarray:
    """Death by day 15 under ``therapy`` from enrolment (the trial simulation's own integration)."""
    from immunostrat.simulation.population import simulate_course

    traj, _ = simulate_course(vpop, therapy)
    return traj.died_by(15 * 24.0)
