"""The compiled engines run the full in-silico model as the numpy engine does: numba ICU-acquired infections
(single and recurring, with pathogen death), the MALS loop and the biomarker observer of virtual
populations; JAX the infections without the MALS loop or observer. Equal to :func:`model.integrate` (full
courses) to 1e-9 in states, observer records, death times, infection times and episode counts, on a few
hundred patients with random draws (each engine's tests skipped where it is not installed)."""

from __future__ import annotations

import numpy as np
import pytest

from immunostrat.simulation import jax_backend, numba_backend
from immunostrat.simulation.engines import choose, integrate_on, unsupported
from immunostrat.simulation.model import (
    REYNOLDS_2006,
    DeactivationParameters,
    DeathRule,
    Effects,
    FloatArray,
    PatientParameters,
    SecondaryInfection,
    Trajectory,
    initial_state,
    integrate,
    patient_parameters,
)
from immunostrat.simulation.numba_backend import integrate_numba
from immunostrat.simulation.observables import BiomarkerObserver, ObservableCalibration
from immunostrat.simulation.population import PopulationPriors, model_variant
from immunostrat.simulation.structures import draw_secondary
from immunostrat.simulation.therapies import Schedule, combine

needs_numba = pytest.mark.skipif(not numba_backend.available(), reason="numba is not installed (optional)")
needs_jax = pytest.mark.skipif(not jax_backend.available(), reason="jax is not installed (optional)")

N = 300  # not a multiple of the kernel's block of 64, so the padded last block is exercised too
T_END_H = 672.0  # 28 days: the whole at-risk window of ICU-acquired infections


def _batch(seed: int) -> tuple[FloatArray, PatientParameters]:
    """Patients drawn from the virtual population's priors: survivors and deaths, infected or not."""
    rng = np.random.default_rng(seed)
    priors = PopulationPriors()
    draws = {name: prior.sample(rng, N) for name, prior in priors.parameters.items()}
    params = patient_parameters(N, REYNOLDS_2006, **draws)
    return initial_state(priors.p0.sample(rng, N), params), params


def _schedule(therapy: str | None, rng: np.random.Generator) -> Schedule | None:
    """Standard-of-care antibiotics from onset (as for virtual populations), plus ``therapy`` from day 1
    or 2."""
    soc = Schedule.build("standard_of_care", 0.0, N)
    return combine(soc, Schedule.build(therapy, rng.choice([24.0, 48.0], N), N) if therapy else None)


def _inoculum(rng: np.random.Generator, size: int | tuple[int, int]) -> FloatArray:
    return np.asarray(rng.lognormal(0.0, 0.8, size), dtype=np.float64)


def _assert_same(b: Trajectory, a: Trajectory) -> None:
    np.testing.assert_array_equal(b.times, a.times)
    assert b.states.shape == a.states.shape and b.aux.shape == a.aux.shape
    assert b.aux_names == a.aux_names
    np.testing.assert_allclose(b.states, a.states, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b.final, a.final, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b.aux, a.aux, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(b.outcome, a.outcome)
    np.testing.assert_array_equal(np.isnan(b.death_time), np.isnan(a.death_time))
    np.testing.assert_allclose(b.death_time, a.death_time, rtol=0, atol=1e-9, equal_nan=True)
    if a.secondary_time is None:
        assert b.secondary_time is None and b.secondary_count is None
        return
    assert b.secondary_time is not None and b.secondary_count is not None and a.secondary_count is not None
    np.testing.assert_array_equal(np.isnan(b.secondary_time), np.isnan(a.secondary_time))
    np.testing.assert_allclose(b.secondary_time, a.secondary_time, rtol=0, atol=1e-9, equal_nan=True)
    np.testing.assert_array_equal(b.secondary_count, a.secondary_count)


def _options(variant: str) -> tuple[DeactivationParameters | None, SecondaryInfection | None, DeathRule]:
    options = model_variant(variant)
    deact, sec = options.get("deactivation"), options.get("secondary")
    rule = options.get("death_rule", DeathRule())
    assert deact is None or isinstance(deact, DeactivationParameters)
    assert sec is None or isinstance(sec, SecondaryInfection)
    assert isinstance(rule, DeathRule)
    return deact, sec, rule


@needs_numba
@pytest.mark.parametrize(
    ("variant", "observed", "therapy"),
    [
        ("full", False, None),
        ("full", False, "interferon_gamma"),
        ("full", True, "anakinra"),
        ("full-pathogen-death", False, "msc"),
        ("full-recurring-infections", True, None),
        ("full-recurring-infections", False, "interferon_gamma"),
        ("full-mals-loop", False, "anakinra"),
        ("full-mals-loop", True, None),
    ],
)
def test_numba_runs_the_full_model_as_numpy(variant: str, observed: bool, therapy: str | None) -> None:
    deact, sec, rule = _options(variant)
    assert deact is not None and sec is not None
    y0, params = _batch(seed=21)
    rng = np.random.default_rng(5)
    draws = draw_secondary(rng, N, sec.max_episodes, _inoculum)
    sched = _schedule(therapy, rng)
    kw = {
        "t_end": T_END_H,
        "schedule": sched,
        "death_rule": rule,
        "deactivation": deact,
        "secondary": sec,
        "secondary_draws": draws,
        "observer": BiomarkerObserver() if observed else None,
    }
    assert choose("auto", **{k: kw[k] for k in ("deactivation", "secondary", "observer")}) == "numba"
    a = integrate(y0, params, drop_healed=False, **kw)  # type: ignore[arg-type]
    b = integrate_on("numba", y0, params, **kw)  # type: ignore[arg-type]
    assert b.states.shape == (N, 29, 5) and b.aux.shape == (N, 29, 3 if observed else 0)
    _assert_same(b, a)
    # Comparisons worth making: deaths and survivors, patients with and without an infection, and
    # (recurring variant) patients with more than one episode.
    assert a.secondary_time is not None and a.secondary_count is not None
    assert np.isfinite(a.death_time).any() and np.isnan(a.death_time).any()
    assert 30 <= np.isfinite(a.secondary_time).sum() <= N - 30
    if sec.max_episodes > 1:
        assert (a.secondary_count >= 2).sum() >= 10
    else:
        assert a.secondary_count.max() == 1
    if rule.p_crit < np.inf:  # the pathogen rule kills someone the damage rule alone would not (yet)
        damage_only = integrate_numba(y0, params, **{**kw, "death_rule": DeathRule()})  # type: ignore[arg-type]
        assert (
            np.nan_to_num(a.death_time, nan=np.inf) < np.nan_to_num(damage_only.death_time, nan=np.inf)
        ).any()


@needs_numba
@pytest.mark.parametrize(("variant", "hill"), [("reynolds2006", 3.0), ("deactivation", 4.0)])
def test_numba_runs_the_biomarker_observer_as_numpy(variant: str, hill: float) -> None:
    """The observer's filters (ferritin drive, filtered CA, effective C_inf) step by step, under every hook
    that moves them (il1, cinf_gain) and calibrations other than the default (the kernel squares twice for
    the default Hill exponent 4 and calls pow for any other)."""
    deact, _, rule = _options(variant)
    y0, params = _batch(seed=8)
    sched = _schedule("interferon_gamma", np.random.default_rng(3))
    cal = ObservableCalibration(ferritin_k=0.05, ferritin_hill=hill, tau_ferritin_h=36.0, tau_hla_h=8.0)
    observer = BiomarkerObserver(cal)
    kw = {"t_end": 240.0, "schedule": sched, "death_rule": rule, "deactivation": deact, "observer": observer}
    a = integrate(y0, params, drop_healed=False, **kw)  # type: ignore[arg-type]
    b = integrate_on("auto", y0, params, **kw)  # type: ignore[arg-type]
    assert b.aux_names == ("ferritin_drive", "ca_filtered", "c_inf_effective")
    _assert_same(b, a)
    # The filters moved (not a comparison of constants): ferritin drive and filtered CA change over time.
    assert np.ptp(a.aux[:, :, 0], axis=1).max() > 0.1 and np.ptp(a.aux[:, :, 1], axis=1).max() > 0.05


@needs_numba
def test_draws_of_one_episode_run_the_single_infection_model() -> None:
    """(n,) draws are one episode each, as in the numpy engine; too few episodes is a clear error."""
    deact, sec, _ = _options("full-recurring-infections")
    assert sec is not None and sec.max_episodes == 3
    y0, params = _batch(seed=2)
    draws = draw_secondary(np.random.default_rng(1), N, 1, _inoculum)
    with pytest.raises(ValueError, match="1 episode"):
        integrate_numba(y0, params, t_end=96.0, deactivation=deact, secondary=sec, secondary_draws=draws)
    with pytest.raises(ValueError, match="secondary_draws for 300 patients"):
        integrate_numba(y0, params, t_end=96.0, deactivation=deact, secondary=sec)
    with pytest.raises(ValueError, match="deactivation"):
        integrate_numba(y0, params, t_end=96.0, secondary=sec, secondary_draws=draws)


class _PathogenMean:
    """An observer of another kind (the running mean of P): only the numpy engine runs it."""

    names = ("p_mean",)

    def initial(self, y: FloatArray, params: PatientParameters) -> FloatArray:
        return np.asarray(y[:, :1], dtype=np.float64)

    def update(
        self, aux: FloatArray, y: FloatArray, dt: float, params: PatientParameters, effects: Effects | None
    ) -> FloatArray:
        return np.asarray(0.5 * (aux + y[:, :1]), dtype=np.float64)


@needs_numba
def test_other_observers_fall_back_to_numpy() -> None:
    observer = _PathogenMean()
    reason = unsupported("numba", observer=observer)
    assert reason is not None and "an observer" in reason
    assert choose("auto", observer=observer) == "numpy"
    with pytest.raises(ValueError, match="an observer"):
        choose("numba", observer=observer)
    with pytest.raises(ValueError, match="BiomarkerObserver only"):
        integrate_numba(*_batch(seed=1), t_end=24.0, observer=observer)
    y0, params = _batch(seed=1)
    a = integrate(y0, params, t_end=48.0, observer=observer, drop_healed=False)
    b = integrate_on("auto", y0, params, t_end=48.0, observer=observer)
    np.testing.assert_array_equal(b.aux, a.aux)


@needs_jax
@pytest.mark.parametrize(
    ("variant", "therapy"),
    [("full", "interferon_gamma"), ("full-pathogen-death", "msc"), ("full-recurring-infections", None)],
)
def test_jax_runs_deactivation_and_infections_as_numpy(variant: str, therapy: str | None) -> None:
    deact, sec, rule = _options(variant)
    assert deact is not None and sec is not None
    y0, params = _batch(seed=21)
    rng = np.random.default_rng(5)
    draws = draw_secondary(rng, N, sec.max_episodes, _inoculum)
    kw = {
        "t_end": T_END_H,
        "schedule": _schedule(therapy, rng),
        "death_rule": rule,
        "deactivation": deact,
        "secondary": sec,
        "secondary_draws": draws,
        "chunk_size": 128,  # several chunks, the last one padded
    }
    a = integrate(y0, params, drop_healed=False, **kw)  # type: ignore[arg-type]
    b = integrate_on("jax", y0, params, **kw)  # type: ignore[arg-type]
    _assert_same(b, a)
    assert a.secondary_time is not None and a.secondary_count is not None
    assert np.isfinite(a.death_time).any() and np.isnan(a.death_time).any()
    assert 30 <= np.isfinite(a.secondary_time).sum() <= N - 30
    assert (a.secondary_count >= 2).any() == (sec.max_episodes > 1)


@needs_jax
def test_jax_refuses_the_mals_loop() -> None:
    deact, sec, _ = _options("full-mals-loop")
    assert deact is not None and deact.mals_loop is not None
    assert "MALS loop" in (unsupported("jax", deactivation=deact, secondary=sec) or "")
    y0, params = _batch(seed=1)
    with pytest.raises(ValueError, match="MALS loop"):
        jax_backend.integrate_jax(y0, params, t_end=24.0, deactivation=deact)
