"""Therapies: data, schedules and the published toy-grid effects of insilico.md section 4.3."""

from __future__ import annotations

import math

import numpy as np
import pytest

from immunostrat.errors import InputError
from immunostrat.simulation.model import OUTCOME_NAMES, initial_state, integrate, patient_parameters
from immunostrat.simulation.therapies import (
    Effect,
    Schedule,
    Therapy,
    combine,
    get_therapy,
    load_therapies,
    parse_therapies,
)


def test_shipped_therapies() -> None:
    t = load_therapies()
    assert {"placebo", "anakinra", "interferon_gamma", "msc", "msc_secretome", "standard_of_care"} <= set(t)
    assert t["placebo"].effects == ()
    assert t["anakinra"].end_h == 360  # 15 days, ImmunoSep (domain.md A1)
    assert all(th.source for th in t.values())


def test_bad_therapy_data_raises_input_error() -> None:
    with pytest.raises(InputError, match="hook"):
        parse_therapies({"therapies": [{"id": "x", "effects": [{"hook": "tnf", "strength": 1}]}]})
    with pytest.raises(InputError, match="strength"):
        parse_therapies({"therapies": [{"id": "x", "effects": [{"hook": "il1"}]}]})
    with pytest.raises(InputError):
        get_therapy("no-such-drug")


def test_schedule_windows_and_decay() -> None:
    th = Therapy("t", "t", (Effect("kill", 0.4, 10.0, 20.0, half_life_h=5.0), Effect("il1", 0.7, 0.0, 5.0),
                            Effect("il1", 0.7, 0.0, 5.0)))  # fmt: skip
    s = Schedule.build([th, get_therapy("placebo")], [100.0, 100.0])
    assert s.effects_at(99.9) is None
    e = s.effects_at(101.0)
    assert e is not None
    np.testing.assert_allclose(e.il1, [1.0, 0.0])  # two 0.7 blocks add up, capped at a complete block
    e = s.effects_at(115.0)
    assert e is not None
    np.testing.assert_allclose(e.kill, [0.4 * 0.5, 0.0])  # one half-life after its start
    assert s.effects_at(130.0) is None
    assert s.active_after(129.0) and not s.active_after(130.0)
    sub = s.take(np.array([1]))
    assert sub.effects_at(115.0) is None
    both = combine(s, Schedule.build("standard_of_care", 0.0, 2))
    assert both is not None
    e = both.effects_at(115.0)
    assert e is not None
    np.testing.assert_allclose(e.kill, [0.2 + 0.067, 0.067])


def _moves(regimen: Therapy) -> dict[str, int]:
    """insilico.md 4.3 toy grid: 13 x 14 (k_pg x P0), therapy from its start, 720 h, changed classes."""
    kg, pg = np.meshgrid(np.linspace(0.2, 1.4, 13), np.geomspace(0.02, 5, 14))
    kg, pg = kg.ravel(), pg.ravel()
    params = patient_parameters(kg.size, k_pg=kg)
    y0 = initial_state(pg, params)
    base = integrate(y0, params, record_every=720.0).outcome
    after = integrate(y0, params, record_every=720.0, schedule=Schedule.build(regimen, 0.0, kg.size)).outcome
    ab = {"health": "H", "aseptic death": "A", "septic death": "S", "persistent infection": "I"}
    moves: dict[str, int] = {}
    for b, a in zip(base, after, strict=True):
        if b != a:
            key = f"{ab[OUTCOME_NAMES[b]]}->{ab[OUTCOME_NAMES[a]]}"
            moves[key] = moves.get(key, 0) + 1
    assert np.bincount(base, minlength=3)[:3].tolist() == [76, 18, 88]  # untreated grid, insilico.md 4.3
    return moves


@pytest.mark.parametrize(
    ("regimen", "expected"),
    [
        (Therapy("il1", "IL-1 block 90%, 0-72 h", (Effect("il1", 0.9, 0, 72),)), {"A->H": 8}),
        (Therapy("ca", "CA +0.3/h, 0-24 h", (Effect("ca_source", 0.3, 0, 24),)), {"H->S": 1, "H->A": 2}),
        (
            Therapy("ifn", "kpn x2, 0-168 h", (Effect("kpn_gain", 1.0, 0, 168),)),
            {"S->H": 2, "S->A": 21, "A->H": 3},
        ),
        (
            Therapy("msc", "CA +0.05/h + kill 0.3/h, 6-54 h",
                    (Effect("ca_source", 0.05, 6, 48), Effect("kill", 0.3, 6, 48))),
            {"S->H": 3, "A->H": 18},
        ),
    ],
)  # fmt: skip
def test_hooks_reproduce_insilico_toy_grid(regimen: Therapy, expected: dict[str, int]) -> None:
    assert _moves(regimen) == expected


def test_scaled_therapy() -> None:
    t = get_therapy("msc").scaled(0.5)
    assert t.effects[0].strength == pytest.approx(0.025)
    assert math.isclose(t.end_h, get_therapy("msc").end_h)
