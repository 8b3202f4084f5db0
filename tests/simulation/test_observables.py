"""Observables: SOFA, ferritin and mHLA-DR maps, long observation format, stratification cut-offs."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from immunostrat.simulation.model import initial_state, integrate, patient_parameters
from immunostrat.simulation.observables import (
    OBSERVATION_COLUMNS,
    BiomarkerObserver,
    PatientTraits,
    daily_observables,
    hla_dr_from_ca,
    observations_frame,
    sofa_from_damage,
)
from immunostrat.simulation.population import IMMUNOPARALYSIS, INTERMEDIATE, MALS, stratify
from immunostrat.simulation.therapies import Schedule


@given(st.floats(0, 50), st.floats(0, 50))
def test_sofa_monotone_and_bounded(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    s_lo, s_hi = sofa_from_damage([lo, hi])
    assert 0 <= s_lo <= s_hi <= 24


def test_sofa_calibration_points() -> None:
    # insilico.md 3: the death attractors (D ~ 17.4) map to SOFA >= 15; health (D = 0) to 0.
    assert sofa_from_damage(17.4)[()] >= 15
    assert sofa_from_damage(0.0)[()] == 0
    assert sofa_from_damage(30.0, chronic=4)[()] == 24


def test_hla_dr_calibration_points() -> None:
    # insilico.md 3: C_H = 0.28, H_max = 24,000: ~20,000 AB/C at CA 0.125, ~5,400 at CA 0.523.
    assert hla_dr_from_ca(0.125)[()] == pytest.approx(20_000, rel=0.01)
    assert hla_dr_from_ca(0.523)[()] == pytest.approx(5_400, rel=0.01)


def test_stratify_both_sides_of_each_cut_off() -> None:
    # domain.md A1: MALS if ferritin > 4,420 (MALS first); immunoparalysis if ferritin <= 4,420 and
    # mHLA-DR < 5,000; else intermediate.
    fer = [4420.01, 4420.0, 4420.0, 4419.0, 10_000.0]
    hla = [20_000.0, 4999.9, 5000.0, 5000.1, 1_000.0]
    assert stratify(fer, hla).tolist() == [MALS, IMMUNOPARALYSIS, INTERMEDIATE, INTERMEDIATE, MALS]


def _course(kpg: list[float], p0: list[float], therapy: str | None = None) -> tuple:
    n = len(kpg)
    params = patient_parameters(n, k_pg=kpg)
    sched = Schedule.build(therapy, 24.0, n) if therapy else None
    traj = integrate(initial_state(p0, params), params, t_end=672.0, record_every=24.0,
                     observer=BiomarkerObserver(), schedule=sched)  # fmt: skip
    return traj, daily_observables(traj, PatientTraits.default(n))


def test_observables_follow_the_phenotypes() -> None:
    """Health: low SOFA, mHLA-DR back near 20,000; aseptic death: SOFA rising while alive, >= 15 at the
    attractor, ferritin rising and above the MALS cut-off there; septic death: pathogen never resolves."""
    _, obs = _course([0.3, 0.3, 0.6], [0.5, 1.5, 1.0])
    assert obs.sofa[0].max() <= 2 and obs.infection_resolved[0, -1]
    assert obs.mhla_dr[0, -1] == pytest.approx(hla_dr_from_ca(0.125)[()], rel=0.02)
    alive_aseptic = obs.alive[1]
    assert np.all(np.diff(obs.sofa[1][alive_aseptic]) > 0)
    assert obs.sofa[1, -1] >= 15 and obs.sofa[2, -1] >= 15
    assert np.all(np.diff(obs.ferritin[1][alive_aseptic]) > 0) and obs.ferritin[1, -1] > 4420
    assert not obs.infection_resolved[2][obs.alive[2]][1:].any()
    assert obs.mhla_dr[2][obs.alive[2]][1:].min() < obs.mhla_dr[0].min()


def test_anakinra_lowers_ferritin() -> None:
    _, untreated = _course([0.3], [1.5])
    _, treated = _course([0.3], [1.5], "anakinra")
    assert treated.ferritin[0, 3] < 0.5 * untreated.ferritin[0, 3]


def test_long_format() -> None:
    traj, obs = _course([0.3, 0.3], [0.5, 1.5])
    frame = observations_frame(obs, ["a", "b"])
    assert tuple(frame.columns) == OBSERVATION_COLUMNS
    assert frame.schema["time"] == pl.Datetime("us", "UTC")
    assert frame.schema["value"] == pl.Float64 and frame.schema["source_row"] == pl.Int64
    assert set(frame["concept"].unique()) == {"sofa_total", "ferritin", "mhla_dr", "infection_resolved"}
    units = dict(frame.select("concept", "unit").unique().iter_rows())
    assert units == {
        "sofa_total": "points",
        "ferritin": "ng/mL",
        "mhla_dr": "AB/C",
        "infection_resolved": "1",
    }
    a = frame.filter(pl.col("patient_id") == "a")
    assert a.height == 29 * 4  # days 0..28, 4 concepts
    assert a["time"].min() == datetime(2025, 1, 1, tzinfo=UTC)
    # patient b dies: no observation on or after the day of death
    death_day = int(np.ceil(traj.death_time[1] / 24.0))
    b = frame.filter(pl.col("patient_id") == "b")
    assert b.height == death_day * 4
    assert frame["source_row"].n_unique() == frame.height
    day3 = a.filter(
        (pl.col("concept") == "sofa_total") & (pl.col("time") == datetime(2025, 1, 4, tzinfo=UTC))
    )
    assert day3["value"].item() == float(obs.sofa[0, 3])
