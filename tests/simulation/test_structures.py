"""The structural alternatives of ``simulation.structures`` on both sides of their rules: recurring
ICU-acquired infections (off: the single-infection model exactly; on: two or more episodes, each with its
own draws) and the IL-1-driven MALS loop (off: the deactivation model exactly; on: reversed by an IL-1 block
at enrolment and not without), and calibration of the new variants still refusing held-out trials."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from immunostrat.simulation.model import (
    MONOCYTE_DEACTIVATION,
    SECONDARY_INFECTION,
    DeactivationParameters,
    SecondaryDraws,
    SecondaryInfection,
    Trajectory,
    initial_state,
    integrate,
    patient_parameters,
)
from immunostrat.simulation.population import (
    MALS,
    MODEL_VARIANTS,
    PopulationPriors,
    generate_population,
    model_variant,
)
from immunostrat.simulation.structures import (
    MALS_LOOP,
    MalsLoop,
    draw_secondary,
    il1_signal,
    mals_loop_drive,
)
from immunostrat.simulation.therapies import Schedule, get_therapy
from immunostrat.simulation.validation import CredibilityPlan, OutcomeStore, calibrate, load_plan
from immunostrat.simulation.validation.plan import Mechanism

N = 64
#: A high infection hazard (/h) so that most of the small batch has an episode within the window.
EXPOSED = replace(SECONDARY_INFECTION, hazard_per_h=0.02)
#: Small calibration grids (placebo 0 and the design value 1), as in test_validation.
SMALL = {"il1_block": (0.0, 1.0), "steroid": (0.0, 1.0), "ifn_gamma": (0.0, 1.0), "msc": (1.0,)}


def small_plan(p: CredibilityPlan) -> CredibilityPlan:
    return replace(p, mechanisms={k: Mechanism(m.id, m.hook, SMALL[k]) for k, m in p.mechanisms.items()})


T_END = 20 * 24.0


def _batch(seed: int = 0) -> tuple[np.ndarray, object]:
    rng = np.random.default_rng(seed)
    params = patient_parameters(N, k_pg=rng.uniform(0.3, 0.6, N))
    return initial_state(rng.uniform(0.5, 1.5, N), params), params


def _run(
    secondary: object, draws: SecondaryDraws, deactivation: object = MONOCYTE_DEACTIVATION
) -> Trajectory:
    y0, params = _batch()
    return integrate(
        y0,
        params,  # type: ignore[arg-type]
        t_end=T_END,
        deactivation=deactivation,  # type: ignore[arg-type]
        secondary=secondary,  # type: ignore[arg-type]
        secondary_draws=draws,
        drop_healed=False,
    )


def test_variants_are_registered() -> None:
    assert {"full-recurring-infections", "full-mals-loop"} <= set(MODEL_VARIANTS)
    rec = model_variant("full-recurring-infections")
    assert rec["secondary"] == replace(SECONDARY_INFECTION, max_episodes=3)
    assert rec["deactivation"] == MONOCYTE_DEACTIVATION
    loop = model_variant("full-mals-loop")
    assert loop["deactivation"] == replace(MONOCYTE_DEACTIVATION, mals_loop=MALS_LOOP)
    assert loop["secondary"] == SECONDARY_INFECTION


def test_one_episode_draws_keep_the_single_infection_random_stream() -> None:
    prior = PopulationPriors().p0
    a = draw_secondary(np.random.default_rng(5), 50, 1, prior.sample)
    rng = np.random.default_rng(5)
    np.testing.assert_array_equal(a.exposure, rng.exponential(1.0, 50))
    np.testing.assert_array_equal(a.relative_inoculum, prior.sample(rng, 50))
    b = draw_secondary(np.random.default_rng(5), 50, 3, prior.sample)
    assert b.exposure.shape == (50, 3) and b.relative_inoculum.shape == (50, 3)
    with pytest.raises(ValueError, match="episodes = 0"):
        draw_secondary(np.random.default_rng(5), 50, 0, prior.sample)


def test_recurrence_off_is_the_single_infection_model_exactly() -> None:
    rng = np.random.default_rng(1)
    first = SecondaryDraws(rng.exponential(0.3, N), rng.lognormal(0.0, 0.5, N))
    single = _run(EXPOSED, first)
    # three episodes allowed, but the later ones never come (infinite exposure): the same course
    never = SecondaryDraws(
        np.column_stack([first.exposure, np.full((N, 2), np.inf)]),
        np.column_stack([first.relative_inoculum, np.ones((N, 2))]),
    )
    three = _run(replace(EXPOSED, max_episodes=3), never)
    np.testing.assert_array_equal(three.states, single.states)
    np.testing.assert_array_equal(three.secondary_time, single.secondary_time)
    assert single.secondary_count is not None and three.secondary_count is not None
    np.testing.assert_array_equal(three.secondary_count, single.secondary_count)
    assert single.secondary_count.max() == 1 and (single.secondary_count == 1).sum() > N // 4


def test_recurrence_on_gives_two_or_more_episodes_each_with_its_own_draw() -> None:
    rng = np.random.default_rng(2)
    exposure = rng.exponential(0.3, (N, 3))
    inoculum = rng.lognormal(0.0, 0.5, (N, 3))
    rec = replace(EXPOSED, max_episodes=3)
    many = _run(rec, SecondaryDraws(exposure, inoculum))
    assert many.secondary_count is not None
    assert (many.secondary_count >= 2).sum() > 0 and many.secondary_count.max() <= 3
    # the first episode's time is the single-infection model's (same first draw)
    single = _run(EXPOSED, SecondaryDraws(exposure[:, 0].copy(), inoculum[:, 0].copy()))
    np.testing.assert_array_equal(many.secondary_time, single.secondary_time)
    # the second episode uses its own draw: a later second exposure gives fewer second episodes
    later = exposure.copy()
    later[:, 1] = 1e6
    fewer = _run(rec, SecondaryDraws(later, inoculum))
    assert fewer.secondary_count is not None
    assert fewer.secondary_count.max() == 1
    # and a second episode changes the course (a new inoculum): states differ from the single model
    assert not np.array_equal(many.states, single.states)
    with pytest.raises(ValueError, match="episode"):
        _run(rec, SecondaryDraws(exposure[:, 0].copy(), inoculum[:, 0].copy()))


def test_mals_loop_drive_switches_on_above_the_mals_signal_and_off_under_a_full_block() -> None:
    loop = MALS_LOOP
    sig = np.array([0.0, loop.k, 10 * loop.k])
    d = mals_loop_drive(sig, loop)
    assert d[0] == 0.0 and d[1] == pytest.approx(loop.gain / 2) and d[2] > 0.99 * loop.gain
    inv = np.ones(3)
    n_star, dmg = np.array([1.0, 1.0, 1.0]), np.array([5.0, 5.0, 5.0])
    # a complete IL-1 block (k_nn, k_nd x 0) removes the loop; none leaves it on
    assert np.all(mals_loop_drive(il1_signal(n_star, dmg, 0.0, 0.0, inv), loop) == 0.0)
    assert np.all(mals_loop_drive(il1_signal(n_star, dmg, 0.01, 0.02, inv), loop) > 0.9 * loop.gain)
    with pytest.raises(ValueError, match=r"MalsLoop\.k"):
        MalsLoop(k=0.0)


def test_mals_loop_with_zero_gain_is_the_deactivation_model_exactly() -> None:
    y0, params = _batch(3)
    base = integrate(y0, params, t_end=T_END, deactivation=MONOCYTE_DEACTIVATION, drop_healed=False)  # type: ignore[arg-type]
    off = replace(MONOCYTE_DEACTIVATION, mals_loop=MalsLoop(gain=0.0))
    zero = integrate(y0, params, t_end=T_END, deactivation=off, drop_healed=False)  # type: ignore[arg-type]
    np.testing.assert_array_equal(zero.states, base.states)
    on = replace(MONOCYTE_DEACTIVATION, mals_loop=MALS_LOOP)
    loop = integrate(y0, params, t_end=T_END, deactivation=on, drop_healed=False)  # type: ignore[arg-type]
    assert not np.array_equal(loop.states, base.states)


def _loop_drive(traj: Trajectory, k_nn: np.ndarray, k_nd: np.ndarray, c_inf: np.ndarray) -> np.ndarray:
    n_star, dmg, ca = traj.states[:, :, 1], traj.states[:, :, 2], traj.states[:, :, 3]
    inv = 1.0 / (1.0 + (ca / c_inf[:, None]) ** 2)
    return mals_loop_drive(il1_signal(n_star, dmg, k_nn[:, None], k_nd[:, None], inv), MALS_LOOP)


def test_mals_loop_is_reversed_by_an_il1_block_at_enrolment_and_not_without() -> None:
    de = model_variant("full-mals-loop")["deactivation"]
    assert isinstance(de, DeactivationParameters) and de.mals_loop == MALS_LOOP
    vpop = generate_population(150, seed=3, deactivation=de)
    cohort = vpop.cohort.take(vpop.endotype == MALS)
    n, p = cohort.size, cohort.params
    assert n >= 10
    y0 = initial_state(cohort.p0, p)
    enrol = 24.0 * vpop.enrolment_day
    runs = {}
    for label, sched in (("none", None), ("block", Schedule.build(get_therapy("anakinra"), enrol, n))):
        traj = integrate(
            y0,
            p,
            t_end=29 * 24.0,
            schedule=sched,
            deactivation=de,
            drop_healed=False,
        )
        runs[label] = _loop_drive(traj, p.k_nn, p.k_nd, p.c_inf)
    gain = MALS_LOOP.gain
    k_enrol = round(enrol / 24.0)
    on_at_enrolment = runs["none"][:, k_enrol] > gain / 2
    assert on_at_enrolment.sum() >= n // 2
    # without the block the loop runs to the end in every MALS patient in whom it ran at enrolment
    assert np.all(runs["none"][on_at_enrolment, -1] > gain / 2)
    # with the block at enrolment it is switched off for good (day 28 after enrolment, block ended day 16)
    reversed_ = on_at_enrolment & (runs["block"][:, -1] < 0.01 * gain)
    assert reversed_.sum() >= 1


def test_calibration_of_a_new_variant_still_refuses_held_out_trials() -> None:
    opts = model_variant("full-recurring-infections")
    de, sec = opts["deactivation"], opts["secondary"]
    assert isinstance(de, DeactivationParameters) and isinstance(sec, SecondaryInfection)
    vpop = generate_population(200, seed=11, deactivation=de, secondary=sec)
    store = OutcomeStore(vpop, small_plan(load_plan()))
    plan = store.plan
    with pytest.raises(ValueError, match="only training"):
        calibrate(plan.training() + plan.held_out()[:1], store)
    post = calibrate(plan.training(), store)
    assert set(post.training) == {c.id for c in plan.training()}
