"""Engine choice (``simulation.engines``): every engine runs the variants it claims exactly as numpy does,
"auto" takes the fastest one that can and falls back to numpy for the rest with numpy's own results."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from immunostrat.simulation.engines import ENGINES, choose, installed, integrate_on, unsupported
from immunostrat.simulation.model import (
    MONOCYTE_DEACTIVATION,
    SECONDARY_INFECTION,
    DeactivationParameters,
    DeathRule,
    FloatArray,
    PatientParameters,
    Trajectory,
    initial_state,
    integrate,
    patient_parameters,
)
from immunostrat.simulation.numba_backend import integrate_numba
from immunostrat.simulation.observables import BiomarkerObserver
from immunostrat.simulation.population import model_variant
from immunostrat.simulation.structures import MALS_LOOP, MalsLoop
from immunostrat.simulation.therapies import Schedule

COMPILED = [e for e in ENGINES if e != "numpy"]


def _batch(n: int = 150, seed: int = 4) -> tuple[FloatArray, PatientParameters]:
    rng = np.random.default_rng(seed)
    params = patient_parameters(n, k_pg=rng.uniform(0.2, 1.2, n), c_inf=rng.uniform(0.2, 0.4, n))
    return initial_state(rng.uniform(0.1, 3.0, n), params), params


def _assert_same(b: Trajectory, a: Trajectory) -> None:
    np.testing.assert_array_equal(b.times, a.times)
    np.testing.assert_allclose(b.states, a.states, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(b.outcome, a.outcome)
    np.testing.assert_array_equal(np.isnan(b.death_time), np.isnan(a.death_time))
    np.testing.assert_allclose(b.death_time, a.death_time, equal_nan=True)


@pytest.mark.parametrize("engine", COMPILED)
@pytest.mark.parametrize("variant", ["reynolds2006", "reynolds2006-pathogen-death", "deactivation"])
@pytest.mark.parametrize("therapy", [None, "anakinra", "interferon_gamma"])
def test_compiled_engine_equals_numpy_on_its_variants(engine: str, variant: str, therapy: str | None) -> None:
    if not installed(engine):
        pytest.skip(f"{engine} is not installed (optional engine)")
    options = model_variant(variant)
    rule = options.get("death_rule", DeathRule())
    deact = options.get("deactivation")
    assert isinstance(rule, DeathRule) and (deact is None or isinstance(deact, DeactivationParameters))
    assert options.get("secondary") is None
    if unsupported(engine, deactivation=deact) is not None:
        assert engine == "jax" and deact is not None  # the one combination not (yet) compiled
        with pytest.raises(ValueError, match="monocyte-deactivation"):
            choose(engine, deactivation=deact)
        return
    y0, params = _batch()
    n = y0.shape[0]
    sched = Schedule.build(therapy, 24.0, n) if therapy else None
    kw = {"t_end": 480.0, "schedule": sched, "death_rule": rule, "deactivation": deact}
    a = integrate(y0, params, drop_healed=False, **kw)  # type: ignore[arg-type]
    b = integrate_on(engine, y0, params, **kw)  # type: ignore[arg-type]
    assert b.states.shape == a.states.shape == (n, 21, 4 if deact is None else 5)
    _assert_same(b, a)
    # A comparison worth making: deaths and survivors both present.
    assert np.isfinite(a.death_time).any() and np.isnan(a.death_time).any()


def test_pathogen_death_rule_changes_deaths_on_every_engine() -> None:
    """The pathogen rule is run, not ignored: septic patients die once P has stayed high, before D has."""
    y0, params = _batch(200, seed=11)
    damage = integrate_on("numpy", y0, params, t_end=480.0)
    pathogen = integrate_on("numpy", y0, params, t_end=480.0, death_rule=DeathRule(p_crit=10.0))
    assert (pathogen.death_time < damage.death_time).sum() >= 20
    for engine in COMPILED:
        if installed(engine):
            got = integrate_on(engine, y0, params, t_end=480.0, death_rule=DeathRule(p_crit=10.0))
            _assert_same(got, pathogen)


def test_auto_prefers_the_fastest_installed_engine_and_falls_back_to_numpy() -> None:
    fastest = next(e for e in ENGINES if installed(e))
    assert choose("auto") == fastest
    assert choose("auto", drop_healed=True) == "numpy"
    assert choose("auto", drop_dead=True) == "numpy"
    # The fallback gives numpy's own results for a request the compiled engines do not run.
    y0, params = _batch(40)
    a = integrate(y0, params, t_end=96.0, deactivation=MONOCYTE_DEACTIVATION, drop_healed=True)
    b = integrate_on("auto", y0, params, t_end=96.0, deactivation=MONOCYTE_DEACTIVATION, drop_healed=True)
    assert b.states.shape == a.states.shape == (40, 5, 5)
    np.testing.assert_array_equal(b.states, a.states)


def test_named_engine_that_cannot_run_a_request_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown engine 'fortran'"):
        choose("fortran")
    for engine in COMPILED:
        reason = unsupported(engine, drop_healed=True)
        assert reason is not None
        if installed(engine):
            assert "drop_healed" in reason
            with pytest.raises(ValueError, match="numpy engine only"):
                choose(engine, drop_healed=True)
    assert unsupported("numpy", deactivation=MONOCYTE_DEACTIVATION, drop_healed=True) is None


def test_what_the_jax_engine_does_not_run_yet() -> None:
    """JAX runs neither the MALS loop nor observers: both are refused by name, and auto never picks JAX for
    them (numba where installed, else numpy). Deactivation and secondary infections it runs."""
    loop = replace(MONOCYTE_DEACTIVATION, mals_loop=MALS_LOOP)
    requests: list[tuple[str, dict[str, Any]]] = [
        ("MALS loop", {"deactivation": loop}),
        ("an observer", {"observer": BiomarkerObserver()}),
    ]
    for name, request in requests:
        assert choose("auto", **request) == ("numba" if installed("numba") else "numpy")
        if installed("jax"):
            with pytest.raises(ValueError, match=name):
                choose("jax", **request)
    if installed("jax"):
        full = {"deactivation": MONOCYTE_DEACTIVATION, "secondary": SECONDARY_INFECTION}
        assert unsupported("jax", **full) is None  # type: ignore[arg-type]


def test_numba_runs_the_mals_loop() -> None:
    """The MALS loop (model variant full-mals-loop without infections here) on numba equals numpy, and it
    changes the courses (the loop is run, not dropped)."""
    if not installed("numba"):
        pytest.skip("numba is not installed (optional engine)")
    y0, params = _batch(120, seed=6)
    kw = {"t_end": 240.0, "schedule": Schedule.build("anakinra", 48.0, 120)}
    without = integrate_numba(y0, params, deactivation=MONOCYTE_DEACTIVATION, **kw)  # type: ignore[arg-type]
    # The shipped loop (Hill exponent 4: two squarings in the kernel) and another exponent (pow).
    for mals in (MALS_LOOP, MalsLoop(hill=3.0)):
        loop = replace(MONOCYTE_DEACTIVATION, mals_loop=mals)
        assert unsupported("numba", deactivation=loop) is None
        a = integrate(y0, params, drop_healed=False, deactivation=loop, **kw)  # type: ignore[arg-type]
        b = integrate_numba(y0, params, deactivation=loop, **kw)  # type: ignore[arg-type]
        _assert_same(b, a)
        assert np.abs(without.states[:, :, 1] - b.states[:, :, 1]).max() > 1e-3
