"""Engine dispatch of population and trial simulations (``population.integrate_course``): every engine gives
the same courses, populations and trial tables, so ``"auto"`` (the default) changes speed, not results."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from immunostrat.simulation.engines import ENGINES, installed, unsupported
from immunostrat.simulation.model import (
    MONOCYTE_DEACTIVATION,
    DeactivationParameters,
    DeathRule,
    FloatArray,
    PatientParameters,
    SecondaryInfection,
    initial_state,
    integrate,
    patient_parameters,
)
from immunostrat.simulation.observables import (
    BiomarkerObserver,
    ObservableCalibration,
    PatientTraits,
    daily_observables,
    sofa_from_damage,
)
from immunostrat.simulation.population import (
    MODEL_VARIANTS,
    STANDARD_OF_CARE,
    PopulationPriors,
    VirtualPopulation,
    background_schedule,
    course_engine,
    day28_horizon_h,
    freeze_after_death,
    generate_population,
    integrate_course,
    model_variant,
)
from immunostrat.simulation.structures import draw_secondary
from immunostrat.simulation.therapies import Schedule, combine, get_therapy
from immunostrat.simulation.trial import OutcomeTable, simulate_trials

COMPILED = [e for e in ENGINES if e != "numpy"]
HORIZON_H = day28_horizon_h(1)


def _batch(n: int = 300, seed: int = 7) -> tuple[FloatArray, PatientParameters]:
    """Patients spread over the outcome classes (k_pg up to 1.2 /h: septic deaths; low: health)."""
    rng = np.random.default_rng(seed)
    params = patient_parameters(
        n, k_pg=rng.uniform(0.1, 1.2, n), c_inf=rng.uniform(0.2, 0.4, n), k_nd=rng.uniform(0.01, 0.04, n)
    )
    return initial_state(rng.uniform(0.2, 3.0, n), params), params


def _schedule(n: int) -> Schedule | None:
    """Standard of care from onset plus anakinra from enrolment (day 1), as a trial's treatment arm."""
    return combine(Schedule.build(get_therapy("anakinra"), 24.0, n), background_schedule(STANDARD_OF_CARE, n))


@pytest.mark.parametrize("deactivation", [None, MONOCYTE_DEACTIVATION])
def test_freezing_the_dead_afterwards_equals_the_numpy_engines_drop_dead(
    deactivation: DeactivationParameters | None,
) -> None:
    """The compiled engines' records, frozen after death on the records, are those numpy writes while
    integrating, bit for bit (states, observer, final state, class, death time)."""
    y0, params = _batch()
    kw = {
        "t_end": HORIZON_H,
        "schedule": _schedule(y0.shape[0]),
        "observer": BiomarkerObserver(),
        "deactivation": deactivation,
        "drop_healed": False,
    }
    frozen = integrate(y0, params, drop_dead=True, **kw)  # type: ignore[arg-type]
    full = integrate(y0, params, drop_dead=False, **kw)  # type: ignore[arg-type]
    dead = np.isfinite(full.death_time)
    assert 20 <= dead.sum() <= y0.shape[0] - 20  # deaths and survivors both present
    assert not np.array_equal(full.states[dead], frozen.states[dead])  # the freeze is not a no-op
    got = freeze_after_death(full)
    np.testing.assert_array_equal(got.states, frozen.states)
    np.testing.assert_array_equal(got.aux, frozen.aux)
    np.testing.assert_array_equal(got.final, frozen.final)
    np.testing.assert_array_equal(got.outcome, frozen.outcome)
    np.testing.assert_array_equal(got.death_time, frozen.death_time)


def test_full_courses_keep_every_outcome_the_callers_use() -> None:
    """Populations and trials now integrate survivors' full courses (no ``drop_healed``, which no compiled
    engine does): outcome classes, death times, daily SOFA, survival and infection status are those of the
    freezing numpy engine, and so are the enrolment biomarkers that stratify patients; only late filtered
    biomarkers of healed patients move (within 1%)."""
    y0, params = _batch(400, seed=12)
    n = int(y0.shape[0])
    sched = background_schedule(STANDARD_OF_CARE, n)
    kw = {"t_end": HORIZON_H, "schedule": sched, "observer": BiomarkerObserver()}
    old = integrate(y0, params, drop_healed=True, drop_dead=True, **kw)  # type: ignore[arg-type]
    new = integrate_course(
        "numpy",
        y0,
        params,
        t_end=HORIZON_H,
        schedule=sched,
        observer=BiomarkerObserver(),
        deactivation=None,
        secondary=None,
        secondary_draws=None,
        death_rule=DeathRule(),
    )
    np.testing.assert_array_equal(new.outcome, old.outcome)
    np.testing.assert_array_equal(new.death_time, old.death_time)
    rng = np.random.default_rng(0)
    traits = PatientTraits(np.zeros(n), 100.0 + 300.0 * rng.random(n), 20_000.0 + 8_000.0 * rng.random(n))
    a, b = daily_observables(old, traits), daily_observables(new, traits)
    np.testing.assert_array_equal(b.sofa, a.sofa)
    np.testing.assert_array_equal(b.alive, a.alive)
    np.testing.assert_array_equal(b.infection_resolved, a.infection_resolved)
    np.testing.assert_array_equal(b.ferritin[:, :2], a.ferritin[:, :2])  # onset and enrolment
    np.testing.assert_array_equal(b.mhla_dr[:, :2], a.mhla_dr[:, :2])
    np.testing.assert_allclose(b.mhla_dr, a.mhla_dr, rtol=1e-2)
    np.testing.assert_allclose(b.ferritin, a.ferritin, rtol=1e-2)


@pytest.mark.parametrize("engine", COMPILED)
@pytest.mark.parametrize("variant", ["reynolds2006", "deactivation", "full", "full-pathogen-death"])
def test_every_engine_gives_the_same_courses(engine: str, variant: str) -> None:
    """The courses of a treated batch on each compiled engine that runs the variant (with the biomarker
    observer where it runs it) equal numpy's: outcome classes, death times, secondary infections and
    daily SOFA exactly, states and filters to 1e-9 (the engines agree to round-off, not bit for bit)."""
    if not installed(engine):
        pytest.skip(f"{engine} is not installed (optional engine)")
    options = model_variant(variant)
    deact, sec = options.get("deactivation"), options.get("secondary")
    rule = options.get("death_rule", DeathRule())
    assert deact is None or isinstance(deact, DeactivationParameters)
    assert sec is None or isinstance(sec, SecondaryInfection)
    assert isinstance(rule, DeathRule)
    observer: BiomarkerObserver | None = BiomarkerObserver()
    if unsupported(engine, observer=observer, deactivation=deact, secondary=sec) is not None:
        observer = None  # the model alone, where the engine runs that
    reason = unsupported(engine, observer=observer, deactivation=deact, secondary=sec)
    if reason is not None:
        with pytest.raises(ValueError, match=re.escape(reason)):
            course_engine(engine, observer, deact, sec)
        return
    y0, params = _batch()
    n = int(y0.shape[0])
    draws = (
        draw_secondary(np.random.default_rng(2), n, sec.max_episodes, PopulationPriors().p0.sample)
        if sec
        else None
    )
    kw = {
        "t_end": HORIZON_H,
        "schedule": _schedule(n),
        "observer": observer,
        "deactivation": deact,
        "secondary": sec,
        "secondary_draws": draws,
        "death_rule": rule,
    }
    a = integrate_course("numpy", y0, params, **kw)  # type: ignore[arg-type]
    b = integrate_course(engine, y0, params, **kw)  # type: ignore[arg-type]
    assert np.isfinite(a.death_time).sum() >= 20
    np.testing.assert_array_equal(b.outcome, a.outcome)
    np.testing.assert_array_equal(b.death_time, a.death_time)
    np.testing.assert_allclose(b.states, a.states, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b.aux, a.aux, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b.final, a.final, rtol=1e-9, atol=1e-9)
    if sec is not None:
        assert a.secondary_time is not None and b.secondary_time is not None
        assert np.isfinite(a.secondary_time).sum() >= 5
        np.testing.assert_array_equal(b.secondary_time, a.secondary_time)
    cal = ObservableCalibration()
    np.testing.assert_array_equal(
        sofa_from_damage(b.states[:, :, 2], 0, cal), sofa_from_damage(a.states[:, :, 2], 0, cal)
    )


def _same_population(a: VirtualPopulation, b: VirtualPopulation) -> None:
    """The same patients with the same classes, deaths and SOFA; enrolment biomarkers to 1e-9 (round-off
    between engines; the endotypes they give are equal)."""
    np.testing.assert_array_equal(b.endotype, a.endotype)
    for name in ("p0", "sofa", "died28", "outcome"):
        np.testing.assert_array_equal(getattr(b.cohort, name), getattr(a.cohort, name), err_msg=name)
    for name in ("ferritin", "mhla_dr"):
        np.testing.assert_allclose(getattr(b.cohort, name), getattr(a.cohort, name), rtol=1e-9, err_msg=name)
    np.testing.assert_array_equal(b.cohort.params.k_pg, a.cohort.params.k_pg)
    assert b.fit == a.fit


@pytest.fixture(scope="module")
def numpy_and_auto() -> tuple[VirtualPopulation, VirtualPopulation]:
    options = {"batch": 2048, "deactivation": MONOCYTE_DEACTIVATION}
    return (
        generate_population(80, 5, engine="numpy", **options),  # type: ignore[arg-type]
        generate_population(80, 5, engine="auto", **options),  # type: ignore[arg-type]
    )


def test_engine_choice_does_not_change_the_population(
    numpy_and_auto: tuple[VirtualPopulation, VirtualPopulation],
) -> None:
    a, b = numpy_and_auto
    assert (a.engine, b.engine) == ("numpy", "auto")
    _same_population(a, b)


def test_engine_choice_does_not_change_a_trial_table(
    numpy_and_auto: tuple[VirtualPopulation, VirtualPopulation],
) -> None:
    a, b = numpy_and_auto
    ra = simulate_trials("immunosep", 60, 25, 3, population=a)
    rb = simulate_trials("immunosep", 60, 25, 3, population=b)
    assert rb.per_trial_frame().equals(ra.per_trial_frame())
    assert rb.summary() == ra.summary()
    # The outcome table of one population on another engine: the same potential outcomes.
    placebo_a = OutcomeTable(a).get("placebo")
    placebo_b = OutcomeTable(a, engine="auto").get("placebo")
    for name, values in placebo_a.values.items():
        np.testing.assert_array_equal(placebo_b.values[name], values, err_msg=name)
    assert placebo_a.values["mortality_28d"].any() and not placebo_a.values["mortality_28d"].all()


def test_named_engine_that_cannot_run_the_model_fails_before_sampling() -> None:
    """A named engine that cannot run a model variant is an error with the engine's reason, raised before
    any patient is simulated (``max_sampled`` 1 would stop a run that started); so is an unknown name."""
    refused = 0
    for engine in COMPILED:
        for variant in MODEL_VARIANTS:
            options = model_variant(variant)
            deact, sec = options.get("deactivation"), options.get("secondary")
            assert deact is None or isinstance(deact, DeactivationParameters)
            assert sec is None or isinstance(sec, SecondaryInfection)
            reason = unsupported(engine, observer=BiomarkerObserver(), deactivation=deact, secondary=sec)
            if reason is None:
                continue
            refused += 1
            with pytest.raises(ValueError, match=re.escape(reason)):
                generate_population(10, 0, engine=engine, max_sampled=1, **options)  # type: ignore[arg-type]
    assert refused >= 1  # JAX runs no observer (or is not installed)
    with pytest.raises(ValueError, match="unknown engine 'fortran'"):
        generate_population(10, 0, engine="fortran", max_sampled=1)


def test_a_population_keeps_its_engine_for_its_therapy_simulations(
    numpy_and_auto: tuple[VirtualPopulation, VirtualPopulation],
) -> None:
    a, _ = numpy_and_auto
    bad = replace(a, engine="fortran")
    with pytest.raises(ValueError, match="unknown engine 'fortran'"):
        OutcomeTable(bad).get("placebo")
    assert OutcomeTable(bad, engine="numpy").get("placebo").values["mortality_28d"].shape == (a.size,)
