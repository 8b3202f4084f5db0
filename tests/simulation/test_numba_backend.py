"""The optional numba backend equals the numpy engine (skipped where numba is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

from immunostrat.simulation.model import initial_state, integrate, patient_parameters
from immunostrat.simulation.numba_backend import available, integrate_numba
from immunostrat.simulation.therapies import Effect, Schedule, Therapy

pytestmark = pytest.mark.skipif(not available(), reason="numba is not installed (optional backend)")


# Every hook the pure model has, overlapping il1 blocks (capped at 1) and a decaying effect.
ALL_HOOKS = Therapy(
    "all_hooks",
    "all hooks",
    (
        Effect("il1", 0.7, 0.0, 96.0),
        Effect("il1", 0.6, 24.0, 48.0),
        Effect("kpn_gain", 1.0, 12.0, 48.0, half_life_h=24.0),
        Effect("cinf_gain", 0.5, 0.0, 72.0),
        Effect("ca_source", 0.02, 0.0, 120.0),
        Effect("kill", 0.2, 6.0, 36.0, half_life_h=12.0),
        Effect("hla_gain", 2.0, 0.0, 96.0),
    ),
)


@pytest.mark.parametrize(
    "therapy",
    [None, "msc", "anakinra", "interferon_gamma", ALL_HOOKS],
    ids=lambda t: getattr(t, "id", str(t)),
)
def test_numba_equals_numpy(therapy: str | Therapy | None) -> None:
    rng = np.random.default_rng(9)
    n = 300  # not a multiple of the kernel's block, so the padded last block is exercised too
    params = patient_parameters(n, k_pg=rng.uniform(0.2, 1.0, n), c_inf=rng.uniform(0.2, 0.4, n))
    y0 = initial_state(rng.uniform(0.1, 3.0, n), params)
    sched = Schedule.build(therapy, rng.choice([24.0, 48.0], n), n) if therapy else None
    a = integrate(y0, params, t_end=240.0, schedule=sched, drop_healed=False)
    b = integrate_numba(y0, params, t_end=240.0, schedule=sched)
    np.testing.assert_array_equal(b.times, a.times)
    np.testing.assert_allclose(b.states, a.states, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(b.final, a.final, rtol=1e-9, atol=1e-10)
    np.testing.assert_array_equal(b.outcome, a.outcome)
    np.testing.assert_array_equal(np.isnan(b.death_time), np.isnan(a.death_time))
    np.testing.assert_allclose(b.death_time, a.death_time, equal_nan=True)
    # A comparison worth making: survivors and deaths (anakinra abolishes aseptic death here).
    assert len(set(a.outcome.tolist())) >= 2
    assert np.isfinite(a.death_time).any() and np.isnan(a.death_time).any()


def test_numba_small_batch_and_records() -> None:
    n = 3  # fewer patients than one block
    params = patient_parameters(n, k_pg=[0.3, 0.6, 0.9])
    y0 = initial_state([0.5, 1.5, 2.5], params)
    a = integrate(y0, params, t_end=48.0, record_every=6.0, drop_healed=False)
    b = integrate_numba(y0, params, t_end=48.0, record_every=6.0)
    assert b.states.shape == a.states.shape == (n, 9, 4)
    np.testing.assert_allclose(b.states, a.states, rtol=1e-9, atol=1e-10)
    assert b.t_end == a.t_end and b.dt == a.dt
    assert b.aux.shape == (n, 9, 0) and b.aux_names == ()


def test_numba_rejects_bad_input() -> None:
    params = patient_parameters(4)
    y0 = initial_state(1.0, params)
    with pytest.raises(ValueError, match="shape"):
        integrate_numba(y0[:, :3], params)
    with pytest.raises(ValueError, match="shape"):
        integrate_numba(y0[0], params)
    with pytest.raises(ValueError, match="patients"):
        integrate_numba(y0[:3], params)
    with pytest.raises(ValueError, match="schedule"):
        integrate_numba(y0, params, schedule=Schedule.build("msc", 24.0, 5))
    with pytest.raises(ValueError, match="t_end"):
        integrate_numba(y0, params, t_end=10.25, dt=0.5)
    with pytest.raises(ValueError, match="record_every"):
        integrate_numba(y0, params, t_end=48.0, record_every=10.0)
