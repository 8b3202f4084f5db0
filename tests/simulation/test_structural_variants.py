"""Structural alternatives (issue 18): death that also depends on uncontrolled pathogen."""

from __future__ import annotations

import numpy as np
import pytest

from immunostrat.simulation.model import DeathRule, Trajectory, initial_state, integrate, patient_parameters
from immunostrat.simulation.numba_backend import integrate_numba
from immunostrat.simulation.population import PATHOGEN_DEATH, background_schedule, model_variant

# A virtual patient of the seed-7 VPop whose untreated course ends in persistent infection (P ~ 17, D ~ 3.6)
# under the damage rule, plus a published-parameter patient who heals and one who dies aseptically.
PERSISTENT = {"k_pg": 0.51477, "k_pn": 1.39404, "k_nn": 0.01087, "k_nd": 0.01461, "mu_d": 0.00969,
              "c_inf": 0.13132, "s_c": 0.01204, "k_cn": 0.04551}  # fmt: skip
P0 = np.array([5.7515, 0.5, 1.5])


def _run(rule: DeathRule) -> Trajectory:
    published = patient_parameters(1)
    values = {
        k: np.array([v, getattr(published, k)[0], getattr(published, k)[0]]) for k, v in PERSISTENT.items()
    }
    values["k_pg"] = np.array([PERSISTENT["k_pg"], 0.3, 0.3])
    params = patient_parameters(3, **values)
    return integrate(initial_state(P0, params), params, t_end=720.0, record_every=0.5, death_rule=rule,
                     schedule=background_schedule("standard_of_care", 3), drop_healed=False)  # fmt: skip


def test_pathogen_death_rule_kills_uncontrolled_infection_only() -> None:
    base = _run(DeathRule())
    alt = _run(PATHOGEN_DEATH)
    assert np.isnan(base.death_time[0]) and base.final[0, 0] > PATHOGEN_DEATH.p_crit  # survives with P ~ 17
    # the alternative rule: death at the first time P has stayed >= p_crit for hold_h hours
    p = base.states[0, :, 0]
    above = p >= PATHOGEN_DEATH.p_crit
    first = int(np.argmax(above))
    assert above[first:].all()
    assert alt.death_time[0] == pytest.approx(base.times[first] + PATHOGEN_DEATH.hold_h)
    # patients whose pathogen is controlled are untouched: the healer and the aseptic death
    np.testing.assert_array_equal(alt.death_time[1:], base.death_time[1:])
    assert np.isnan(base.death_time[1]) and np.isfinite(base.death_time[2])


def test_pathogen_death_variants() -> None:
    assert model_variant("reynolds2006-pathogen-death") == {
        "deactivation": None, "secondary": None, "death_rule": PATHOGEN_DEATH
    }  # fmt: skip
    assert model_variant("full-pathogen-death")["death_rule"] == PATHOGEN_DEATH
    assert "death_rule" not in model_variant("full")
    # the compiled engine runs the rule too, on the same steps as numpy
    params = patient_parameters(2)
    y0 = initial_state([0.5, 1.5], params)
    numpy_run = integrate(y0, params, death_rule=PATHOGEN_DEATH, drop_healed=False)
    numba_run = integrate_numba(y0, params, death_rule=PATHOGEN_DEATH)
    np.testing.assert_allclose(numba_run.states, numpy_run.states, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(numba_run.death_time, numpy_run.death_time)


def test_infection_sofa_adds_points_from_the_pathogen_only() -> None:
    """The "*-infection-sofa" observable: SOFA = damage score + round(4 P / (1 + P)); damage-free,
    pathogen-free patients score as before."""
    from immunostrat.simulation.observables import (
        BiomarkerObserver,
        PatientTraits,
        daily_observables,
        sofa_from_damage,
    )
    from immunostrat.simulation.population import INFECTION_SOFA

    assert model_variant("reynolds2006-infection-sofa")["calibration"] == INFECTION_SOFA
    params = patient_parameters(3, k_pg=[0.6, 0.3, 0.3])
    traj = integrate(initial_state([1.0, 0.0, 1.5], params), params, t_end=240.0, record_every=24.0,
                     observer=BiomarkerObserver(INFECTION_SOFA), drop_healed=False)  # fmt: skip
    traits = PatientTraits.default(3)
    got = daily_observables(traj, traits, INFECTION_SOFA).sofa
    base = daily_observables(traj, traits).sofa
    p = traj.states[:, :, 0]
    want = sofa_from_damage(traj.states[:, :, 2], np.rint(4.0 * p / (1.0 + p)))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[1], base[1])  # no pathogen: unchanged
    assert (got[0, 1:] > base[0, 1:]).any()  # septic course: the infection adds points
