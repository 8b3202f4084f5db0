"""Bugs of the simulation package, each pinned by a test that failed before its fix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from immunostrat.simulation import trial as trial_module
from immunostrat.simulation.model import initial_state, integrate
from immunostrat.simulation.population import (
    VirtualPopulation,
    background_schedule,
    day28_horizon_h,
)
from immunostrat.simulation.therapies import Effect, Schedule, Therapy, combine, get_therapy
from immunostrat.simulation.trial import OutcomeTable, endpoints_from_simulation


def test_outcome_table_simulates_a_therapy_once(
    vpop: VirtualPopulation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``OutcomeTable.get`` used ``setdefault`` with the simulation as its default argument, so it simulated
    again on every call. The spy counts calls and runs the real simulation."""
    calls: list[str] = []
    real = trial_module.endpoints_from_simulation

    def counting(vp: VirtualPopulation, therapy: str | Therapy, **kw: int) -> trial_module.Outcomes:
        calls.append(get_therapy(therapy).id)
        return real(vp, therapy, **kw)

    monkeypatch.setattr(trial_module, "endpoints_from_simulation", counting)
    table = OutcomeTable(vpop)
    th = Therapy("kill", "kill 0.3/h for 2 days", (Effect("kill", 0.3, 0.0, 48.0),))
    first = table.get(th)
    assert table.get(th) is first
    assert table.get(Therapy(th.id, th.name, th.effects)) is first  # an equal definition is the same therapy
    table.get("placebo")
    table.get("placebo")
    assert calls == ["kill", "placebo"]


def test_outcome_table_keeps_therapies_sharing_an_id_apart(vpop: VirtualPopulation) -> None:
    """A therapy that shares an id with one already simulated got that one's outcomes."""
    strong = Therapy("x", "strong kill", (Effect("kill", 1.0, 0.0, 240.0),))
    none = Therapy("x", "no effect", ())
    table = OutcomeTable(vpop)
    got_strong = table.get(strong).values["mortality_28d"]
    got_none = table.get(none).values["mortality_28d"]
    np.testing.assert_array_equal(got_none, endpoints_from_simulation(vpop, none).values["mortality_28d"])
    np.testing.assert_array_equal(got_none, table.get("placebo").values["mortality_28d"])
    assert not np.array_equal(got_strong, got_none)


def test_msc_doses_add_up() -> None:
    """The day-1 MSC dose was cut when the day-3 dose began (its effect window ended at 48 h)."""
    sched = Schedule.build("msc", 0.0, 1)
    for t in (60.0, 200.0):
        eff = sched.effects_at(t)
        assert eff is not None
        decay = 2.0 ** (-t / 36.0) + 2.0 ** (-(t - 48.0) / 36.0)  # both doses, half-life 36 h
        assert float(np.asarray(eff.kill)[0]) == pytest.approx(0.3 * decay, rel=1e-12)
        assert float(np.asarray(eff.ca_source)[0]) == pytest.approx(0.05 * decay, rel=1e-12)
    # every MSC effect fades to < 0.1% before it ends: nothing is cut while it still acts
    for e in get_therapy("msc").effects:
        assert e.half_life_h is not None and 2.0 ** (-e.duration_h / e.half_life_h) < 1e-3


def test_day28_mortality_is_counted_from_randomization(vpop: VirtualPopulation) -> None:
    """28-day mortality was counted to 672 h after infection onset, not 28 days after enrolment. A CA source
    held for 560 h from enrolment delays the deaths of many patients past 672 h after onset."""
    held = Therapy("held", "CA +0.5/h for 560 h", (Effect("ca_source", 0.5, 0.0, 560.0),))
    got = endpoints_from_simulation(vpop, held).values["mortality_28d"]
    c = vpop.cohort
    start_h = 24.0 * vpop.enrolment_day
    sched = combine(Schedule.build(held, start_h, c.size), background_schedule(vpop.background, c.size))
    ref = integrate(
        initial_state(c.p0, c.params), c.params, t_end=30 * 24.0, record_every=24.0, schedule=sched,
        drop_healed=False,
    )  # fmt: skip
    death_after_randomization_h = ref.death_time - start_h
    assert math.isclose(day28_horizon_h(vpop.enrolment_day) - start_h, 28 * 24.0)
    np.testing.assert_array_equal(got, np.nan_to_num(death_after_randomization_h, nan=np.inf) <= 28 * 24.0)
    late = (ref.death_time > 28 * 24.0) & (death_after_randomization_h <= 28 * 24.0)
    assert late.sum() >= 5  # the test can see the difference
