"""Reynolds 2006 model: published outcome classes and thresholds, reference agreement, step size."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from immunostrat.simulation.model import (
    ASEPTIC_DEATH,
    DEFAULT_DT,
    HEALTH,
    REYNOLDS_2006,
    SEPTIC_DEATH,
    ReynoldsParameters,
    classify,
    initial_state,
    integrate,
    patient_parameters,
    rhs,
    simulate_outcomes,
    solve_ivp_final,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"


def _reference() -> ModuleType:
    path = SHARED / "specs" / "reynolds_check.py"
    if not path.exists():
        pytest.skip(f"shared reference script not found at ../shared/specs (looked in {path.parent})")
    spec = importlib.util.spec_from_file_location("reynolds_check", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_parameters_are_table_1() -> None:
    # insilico.md 1.1 parameter table, value by value.
    expected = dict(
        k_pg=0.3, p_inf=20.0, k_pm=0.6, k_mp=0.01, s_m=0.005, mu_m=0.002, k_pn=1.8, k_np=0.1, k_nn=0.01,
        k_nd=0.02, s_nr=0.08, mu_nr=0.12, mu_n=0.05, k_dn=0.35, x_dn=0.06, mu_d=0.02, c_inf=0.28,
        s_c=0.0125, k_cn=0.04, k_cnd=48.0, mu_c=0.1,
    )  # fmt: skip
    assert {k: getattr(REYNOLDS_2006, k) for k in expected} == expected
    assert REYNOLDS_2006.ca_baseline == pytest.approx(0.125)
    with pytest.raises(AttributeError):
        REYNOLDS_2006.k_pg = 1.0  # type: ignore[misc]


def test_initial_conditions() -> None:
    params = patient_parameters(3, s_c=[0.0125, 0.025, 0.0125])
    y0 = initial_state([0.5, 1.0, 2.0], params)
    assert y0.shape == (3, 4)
    np.testing.assert_allclose(y0[:, 0], [0.5, 1.0, 2.0])
    np.testing.assert_allclose(y0[:, 1:3], 0.0)
    np.testing.assert_allclose(y0[:, 3], [0.125, 0.25, 0.125])


def test_kpg_03_threshold_between_health_and_aseptic_death() -> None:
    # insilico.md 1.1 / 7: k_pg = 0.3 heals up to P0 = 1.03, aseptic death from P0 = 1.04.
    grid = np.round(np.arange(0.90, 1.20, 0.01), 2)
    c = simulate_outcomes(0.3, grid).outcome
    assert grid[c == HEALTH].max() == pytest.approx(1.03)
    assert grid[c == ASEPTIC_DEATH].min() == pytest.approx(1.04)
    assert set(c.tolist()) == {HEALTH, ASEPTIC_DEATH}


@pytest.mark.parametrize(("kpg", "healthy_up_to", "septic_from"), [(0.6, 0.338, 0.384), (1.0, 0.106, 0.121)])
def test_septic_death_thresholds(kpg: float, healthy_up_to: float, septic_from: float) -> None:
    # insilico.md 7: geomspace(0.02, 3, 40) grid as in reynolds_check.py (the boundary's grid neighbours).
    g = np.geomspace(0.02, 3, 40)
    c = simulate_outcomes(kpg, g).outcome
    assert round(float(g[c == HEALTH].max()), 3) == healthy_up_to
    assert round(float(g[c == SEPTIC_DEATH].min()), 3) == septic_from


# The true health boundaries in P0, found by bisection to 1e-9 with this RK4 (dt 0.5 h) and with scipy LSODA
# (rtol 1e-10, atol 1e-12): k_pg 0.3 -> 1.03557 (RK4) / 1.03567 (LSODA); k_pg 0.6 -> 0.36103 / 0.36104
# (health, then a sliver of aseptic death, then septic death from 0.36107); k_pg 1.0 -> 0.10832 / 0.10833.
@pytest.mark.parametrize(("kpg", "boundary"), [(0.3, 1.0357), (0.6, 0.3610), (1.0, 0.1083)])
def test_health_boundary_pinned(kpg: float, boundary: float) -> None:
    tol = 0.001
    grid = boundary + np.linspace(-tol, tol, 41)  # steps of 5e-5
    c = simulate_outcomes(kpg, grid).outcome
    healthy = c == HEALTH
    # one switch from health to death inside the +/- tol window, and never back
    assert healthy[0] and not healthy[-1]
    switch = int(np.argmin(healthy))
    assert healthy[:switch].all() and not healthy[switch:].any()
    assert abs(float(grid[switch]) - boundary) <= tol
    # the stiff reference agrees on both edges of the window
    p = ReynoldsParameters(k_pg=kpg)
    assert classify(solve_ivp_final(p, boundary - tol, rtol=1e-10, atol=1e-12))[0] == HEALTH
    assert classify(solve_ivp_final(p, boundary + tol, rtol=1e-10, atol=1e-12))[0] != HEALTH


def test_published_attractor_states() -> None:
    # insilico.md 0/1.1/7: health (0,0,0,0.125); aseptic (0,0.635,17.40,0.523); septic at k_pg 0.6
    # (4.94, 0.98, 17.49, 0.523).
    traj = simulate_outcomes([0.3, 0.3, 0.6], [0.5, 1.5, 1.0])
    np.testing.assert_allclose(traj.final[0], [0, 0, 0, 0.125], atol=1e-3)
    np.testing.assert_allclose(traj.final[1], [0, 0.635, 17.399, 0.523], atol=1e-3)
    np.testing.assert_allclose(traj.final[2], [4.936, 0.981, 17.493, 0.523], atol=1e-3)
    assert traj.outcome.tolist() == [HEALTH, ASEPTIC_DEATH, SEPTIC_DEATH]


def test_rhs_matches_reference_script() -> None:
    ref = _reference()
    rng = np.random.default_rng(3)
    y = rng.uniform(0, [10, 1.5, 20, 0.8], size=(50, 4))
    kpg = rng.uniform(0.1, 1.4, 50)
    want = ref.rhs(y.T, kpg)
    got = np.stack([rhs(0.0, y[i], ReynoldsParameters(k_pg=float(kpg[i]))) for i in range(50)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_batch_integrator_matches_reference_script() -> None:
    ref = _reference()
    kpg = np.array([0.3, 0.3, 0.3, 0.6, 0.6, 1.0])
    p0 = np.array([0.5, 1.03, 1.04, 0.3, 1.0, 0.2])
    want = ref.rk4(kpg, p0, T=240.0, dt=0.05).T
    params = patient_parameters(kpg.size, k_pg=kpg)
    got = integrate(initial_state(p0, params), params, t_end=240.0, dt=0.05, record_every=240.0,
                    drop_healed=False)  # fmt: skip
    np.testing.assert_allclose(got.final, want, rtol=1e-9, atol=1e-9)
    assert got.outcome.tolist() == [
        ["health", "aseptic death", "septic death", "persistent infection"].index(c)
        for c in ref.classify(want.T)
    ]


def test_step_size_against_tight_solve_ivp() -> None:
    """DEFAULT_DT keeps every outcome class of a tight LSODA reference, with small state errors, and the
    error falls as dt^4 (classical RK4) when dt halves."""
    rng = np.random.default_rng(11)
    n = 60
    kpg = rng.uniform(0.2, 1.0, n)
    p0 = rng.uniform(0.1, 3.0, n)
    ref = np.stack([solve_ivp_final(ReynoldsParameters(k_pg=float(k)), float(p), rtol=1e-10, atol=1e-12)
                    for k, p in zip(kpg, p0, strict=True)])  # fmt: skip
    coarse = simulate_outcomes(kpg, p0, dt=DEFAULT_DT)
    fine = simulate_outcomes(kpg, p0, dt=DEFAULT_DT / 2)
    assert coarse.outcome.tolist() == classify(ref).tolist()
    err = np.abs(coarse.final - ref).max()
    err_half = np.abs(fine.final - ref).max()
    assert err < 1e-3
    assert err_half < err / 8  # fourth order: ideally /16


def test_time_course_vs_solve_ivp_early_transient() -> None:
    """The first 48 h (fast transient, where the step size matters most) agree with the reference."""
    for kpg, p0 in ((0.3, 1.2), (0.6, 0.5), (1.0, 2.0)):
        params = patient_parameters(1, k_pg=kpg)
        traj = integrate(initial_state(p0, params), params, t_end=48.0, record_every=48.0, drop_healed=False)
        ref = solve_ivp_final(ReynoldsParameters(k_pg=kpg), p0, t_end=48.0, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(traj.final[0], ref, rtol=1e-3, atol=1e-4)


def test_per_patient_parameters_are_independent() -> None:
    """A patient's trajectory does not depend on the batch it is integrated in."""
    rng = np.random.default_rng(5)
    n = 7
    params = patient_parameters(n, k_pg=rng.uniform(0.2, 0.9, n), k_nd=rng.uniform(0.01, 0.03, n),
                                c_inf=rng.uniform(0.2, 0.4, n))  # fmt: skip
    y0 = initial_state(rng.uniform(0.2, 2.0, n), params)
    batch = integrate(y0, params, t_end=240.0, drop_healed=False, chunk_size=3)
    for i in (0, 4, 6):
        single = integrate(y0[i : i + 1], params.take(np.array([i])), t_end=240.0, drop_healed=False)
        np.testing.assert_allclose(batch.states[i], single.states[0], rtol=1e-12, atol=1e-14)


def test_drop_healed_keeps_classes_and_states() -> None:
    rng = np.random.default_rng(2)
    kpg, p0 = rng.uniform(0.2, 1.0, 300), rng.uniform(0.05, 3.0, 300)
    params = patient_parameters(300, k_pg=kpg)
    full = integrate(initial_state(p0, params), params, drop_healed=False)
    fast = integrate(initial_state(p0, params), params, drop_healed=True)
    assert (full.outcome == fast.outcome).all()
    assert (full.outcome == HEALTH).sum() > 10
    np.testing.assert_allclose(fast.states, full.states, atol=1e-3)


def test_death_rule_time() -> None:
    """Death = D >= 10 held 6 h: aseptic and septic deaths die within 28 days, health never."""
    traj = simulate_outcomes([0.3, 0.3, 0.6], [0.5, 1.5, 1.0], t_end=672.0)
    assert np.isnan(traj.death_time[0])
    assert 24.0 < traj.death_time[1] < 672.0
    assert 24.0 < traj.death_time[2] < 672.0
    assert traj.died_by(672.0).tolist() == [False, True, True]


def test_bad_shapes_raise() -> None:
    params = patient_parameters(2)
    with pytest.raises(ValueError, match="shape"):
        integrate(np.zeros((2, 3)), params)
    with pytest.raises(ValueError, match="params"):
        integrate(np.zeros((3, 4)), params)
    with pytest.raises(ValueError, match="multiple"):
        integrate(initial_state(1.0, params), params, t_end=10.25)
    with pytest.raises(ValueError, match="unknown"):
        patient_parameters(2, k_xx=1.0)
