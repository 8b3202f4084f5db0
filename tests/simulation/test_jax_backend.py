"""The optional JAX backend equals the numpy engine (skipped with a message where jax is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

from immunostrat.simulation.jax_backend import available, integrate_jax
from immunostrat.simulation.model import initial_state, integrate, patient_parameters
from immunostrat.simulation.therapies import Schedule

pytestmark = pytest.mark.skipif(not available(), reason="jax is not installed (optional backend)")


@pytest.mark.parametrize("therapy", [None, "msc"])
def test_jax_equals_numpy(therapy: str | None) -> None:
    rng = np.random.default_rng(9)
    n = 300
    params = patient_parameters(n, k_pg=rng.uniform(0.2, 1.0, n), c_inf=rng.uniform(0.2, 0.4, n))
    y0 = initial_state(rng.uniform(0.1, 3.0, n), params)
    sched = Schedule.build(therapy, rng.choice([24.0, 48.0], n), n) if therapy else None
    a = integrate(y0, params, t_end=240.0, schedule=sched, drop_healed=False)
    b = integrate_jax(y0, params, t_end=240.0, schedule=sched, chunk_size=128)
    np.testing.assert_allclose(b.states, a.states, rtol=1e-9, atol=1e-10)
    np.testing.assert_array_equal(b.outcome, a.outcome)
    np.testing.assert_array_equal(np.isnan(b.death_time), np.isnan(a.death_time))
    np.testing.assert_allclose(b.death_time, a.death_time, equal_nan=True)
    assert len(set(a.outcome.tolist())) >= 3
