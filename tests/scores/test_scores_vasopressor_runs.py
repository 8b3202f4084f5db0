"""Vasopressor rules at the bedside (scores.windows), both sides of each rule of sofa-1996.yaml:
a charted rate runs to the next charting only within ``vasopressor_max_gap_hours``, a rate of 0 is a
stop, and the 1-hour rule (``vasopressor_min_hours``) applies to the whole infusion run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from immunostrat.scores.definitions import load_definition
from immunostrat.scores.windows import score_windows, windows_at, worst_values

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
SOFA = load_definition("sofa")
MAX_GAP_HOURS = float(SOFA["vasopressor_max_gap_hours"])
MIN_HOURS = float(SOFA["vasopressor_min_hours"])


def observations(rows: list[tuple[float, str, float]]) -> pl.DataFrame:
    """One patient's charted rates, times in hours from T0."""
    return pl.DataFrame(
        {
            "patient_id": ["p"] * len(rows),
            "time": [T0 + timedelta(hours=h) for h, _, _ in rows],
            "concept": [c for _, c, _ in rows],
            "value": [v for _, _, v in rows],
        },
        schema={
            "patient_id": pl.String,
            "time": pl.Datetime("us", "UTC"),
            "concept": pl.String,
            "value": pl.Float64,
        },
    )


def rate_in(obs: pl.DataFrame, drug: str, start_hours: float, end_hours: float) -> float | None:
    """The worst ``drug`` rate of the window (start, end] in hours from T0."""
    windows = windows_at(obs, T0 + timedelta(hours=end_hours), end_hours - start_hours)
    value = worst_values(obs, windows)[drug][0]
    return None if value is None else float(value)


def cardiovascular_in(obs: pl.DataFrame, start_hours: float, end_hours: float) -> int:
    windows = windows_at(obs, T0 + timedelta(hours=end_hours), end_hours - start_hours)
    return int(score_windows(obs, windows, "sofa")["sofa_cardiovascular"][0])


def test_the_rules_are_the_score_definitions() -> None:
    assert MAX_GAP_HOURS == 5.0 and MIN_HOURS == 1.0


@pytest.mark.parametrize(("next_charting_hours", "carried"), [(4.5, True), (6.5, False)])
def test_a_rate_runs_to_the_next_charting_only_within_the_gap(
    next_charting_hours: float, carried: bool
) -> None:
    # norepinephrine 0.05 from 0 h, 0.3 from 1 h (a 1-h run either way), then 0.05 charted later
    obs = observations(
        [
            (0, "norepinephrine_rate", 0.05),
            (1, "norepinephrine_rate", 0.3),
            (1 + next_charting_hours, "norepinephrine_rate", 0.05),
        ]
    )
    assert rate_in(obs, "norepinephrine_rate", 0, 1) == 0.3
    # (3 h, 5 h]: the 0.3 still runs within the gap; after a 6.5-h silence it ended at 1 h
    assert rate_in(obs, "norepinephrine_rate", 3, 5) == (0.3 if carried else None)
    assert cardiovascular_in(obs, 3, 5) == (4 if carried else 0)


def test_a_rate_charted_once_then_silence_is_not_carried() -> None:
    # the last charting does not run on: nothing counts in the day after it, however long ago
    obs = observations([(0, "norepinephrine_rate", 0.05), (2, "norepinephrine_rate", 0.3)])
    assert rate_in(obs, "norepinephrine_rate", 0, 2) == 0.3
    assert rate_in(obs, "norepinephrine_rate", 3, 20) is None
    # a lone charting, silence on both sides, is no infusion of an hour
    lone = observations([(0, "norepinephrine_rate", 0.3), (0 + MAX_GAP_HOURS + 1, "map", 80.0)])
    assert rate_in(lone, "norepinephrine_rate", -1, 24) is None
    assert cardiovascular_in(lone, -1, 24) == 0


@pytest.mark.parametrize(
    ("rows", "counted"),
    [
        # two 40-minute segments of one infusion, 80 min in all: counted
        ([(0, 8.0), (40 / 60, 8.0), (80 / 60, 0.0)], True),
        # one 40-minute infusion: not counted
        ([(0, 8.0), (40 / 60, 0.0)], False),
        # the same two segments with a stop between them: two 40-minute infusions, not counted
        ([(0, 8.0), (40 / 60, 0.0), (41 / 60, 8.0), (81 / 60, 0.0)], False),
    ],
)
def test_the_one_hour_rule_applies_to_the_infusion_run(
    rows: list[tuple[float, float]], counted: bool
) -> None:
    obs = observations([(h, "dopamine_rate", v) for h, v in rows])
    assert rate_in(obs, "dopamine_rate", -1, 3) == (8.0 if counted else None)
    assert cardiovascular_in(obs, -1, 3) == (3 if counted else 0)


@pytest.mark.parametrize(("stopped", "points"), [(True, 3), (False, 4)])
def test_a_rate_of_zero_stops_the_infusion(stopped: bool, points: int) -> None:
    # norepinephrine 0.08 for 2 h, then 0.3 for 30 min: one 2.5-h run, or (stopped) a 30-min run of 0.3
    rows = [(0, 0.08), (2, 0.3), (2.5, 0.0)]
    if stopped:
        rows = [(0, 0.08), (1.9, 0.0), (2, 0.3), (2.5, 0.0)]
    obs = observations([(h, "norepinephrine_rate", v) for h, v in rows])
    assert rate_in(obs, "norepinephrine_rate", -1, 4) == (0.08 if stopped else 0.3)
    assert cardiovascular_in(obs, -1, 4) == points
    # after the stop nothing runs
    assert rate_in(obs, "norepinephrine_rate", 2.5, 6) is None


def test_two_rates_charted_at_one_instant_take_the_higher() -> None:
    obs = observations(
        [(0, "epinephrine_rate", 0.05), (0, "epinephrine_rate", 0.2), (1.5, "epinephrine_rate", 0.0)]
    )
    assert rate_in(obs, "epinephrine_rate", -1, 2) == 0.2


def test_rule_parameters_override_the_definition() -> None:
    obs = observations([(0, "dopamine_rate", 8.0), (40 / 60, "dopamine_rate", 0.0)])
    windows = windows_at(obs, T0 + timedelta(hours=2), 3)
    assert worst_values(obs, windows)["dopamine_rate"][0] is None
    assert worst_values(obs, windows, vasopressor_min_hours=0.5)["dopamine_rate"][0] == 8.0
    gap = observations([(0, "dopamine_rate", 8.0), (3, "dopamine_rate", 8.0)])
    windows = windows_at(gap, T0 + timedelta(hours=2.5), 1)
    assert worst_values(gap, windows)["dopamine_rate"][0] == 8.0
    assert worst_values(gap, windows, vasopressor_max_gap_hours=2)["dopamine_rate"][0] is None
