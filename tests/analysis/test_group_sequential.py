"""Group-sequential designs and survival sizing against rpact
(``scripts/r_reference/group_sequential_reference.R`` -> ``fixtures/r_group_sequential.json``).
rpact integrates the same joint normal distribution numerically, so agreement is required to 1e-6."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from immunostrat.analysis import group_sequential as gs
from immunostrat.analysis.samplesize import sample_size_survival_accrual

REF: dict[str, Any] = json.loads((Path(__file__).parent / "fixtures" / "r_group_sequential.json").read_text())
TOL = 1e-6


def close(ours: float, ref: float, rel: float = TOL) -> bool:
    return math.isclose(ours, ref, rel_tol=rel, abs_tol=rel * 1e-2)


def test_fixture_names_rpact() -> None:
    assert REF["r_version"].startswith("R version") and "rpact" in REF["packages"]


@pytest.mark.parametrize("case_id", sorted(REF["designs"]))
def test_design_matches_rpact(case_id: str) -> None:
    r = REF["designs"][case_id]
    a = r["input"]
    d = gs.design(
        a["informationRates"], alpha=a["alpha"], beta=a["beta"], sided=a["sided"],
        spending=a["typeOfDesign"], beta_spending=a.get("typeBetaSpending"),
    )  # fmt: skip
    assert all(close(x, y) for x, y in zip(d.efficacy_z, r["critical_values"], strict=True)), d.efficacy_z
    assert all(close(x, y) for x, y in zip(d.alpha_spent, r["alpha_spent"], strict=True))
    assert all(close(x, y, 1e-5) for x, y in zip(d.stage_levels, r["stage_levels"], strict=True))
    assert close(d.inflation_factor, r["inflation_factor"]) and close(d.drift**2, r["shift"])
    if r["futility_bounds"] is None:
        assert d.futility_z is None
    else:
        assert d.futility_z is not None and d.beta_spent is not None
        # rpact lists the K-1 interim futility bounds; ours ends with the last efficacy bound
        assert all(close(x, y, 1e-5) for x, y in zip(d.futility_z[:-1], r["futility_bounds"], strict=True))
        assert d.futility_z[-1] == d.efficacy_z[-1]
        assert all(close(x, y, 1e-5) for x, y in zip(d.beta_spent, r["beta_spent"], strict=True))
    assert close(d.power_cumulative[-1], 1 - a["beta"], 1e-8)


def test_spending_functions_spend_everything_and_nothing() -> None:
    for kind in ("asOF", "asP"):
        assert gs.spent(0.0, 0.025, kind) == 0 and close(float(gs.spent(1.0, 0.025, kind)), 0.025, 1e-12)


def test_repeated_confidence_intervals_use_the_efficacy_bounds() -> None:
    d = gs.design([0.5, 1.0])
    (lo1, hi1), (lo2, _hi2) = d.repeated_ci([0.4, 0.35], [0.2, 0.14])
    assert close(hi1 - 0.4, d.efficacy_z[0] * 0.2) and close(0.35 - lo2, d.efficacy_z[1] * 0.14)
    assert hi1 - lo1 > 2 * 1.959963984540054 * 0.2  # wider than a single-look 95% interval


def test_bad_information_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="information rates"):
        gs.design([0.5, 0.4, 1.0])


@pytest.mark.parametrize("i", range(3))
def test_survival_sizing_with_accrual_followup_dropout_matches_rpact(i: int) -> None:
    a = REF["survival"][i]
    s = sample_size_survival_accrual(
        a["hazard_ratio"], a["median_control_months"], a["accrual_months"], a["followup_months"],
        a["dropout_rate"], a["dropout_months"], a["alpha"], a["power"], a["ratio"],
    )  # fmt: skip
    assert close(s.alternatives["events_exact"], a["events"])
    assert close(s.alternatives["participants_exact"], a["participants"])
    assert s.events == math.ceil(a["events"]) and s.per_arm[0] == math.ceil(a["participants_treated"] - 1e-9)


def test_group_sequential_survival_sizing_matches_rpact() -> None:
    a = REF["survival_group_sequential"]
    d = gs.design([1 / 3, 2 / 3, 1])
    s = sample_size_survival_accrual(
        a["hazard_ratio"], a["median_control_months"], a["accrual_months"], a["followup_months"],
        inflation_factor=d.inflation_factor,
    )  # fmt: skip
    assert close(s.alternatives["events_exact"], a["max_events"])
    assert close(s.alternatives["participants_exact"], a["max_participants"])


def test_repeated_confidence_intervals_match_rpact() -> None:
    r = REF["repeated_ci"]
    d = gs.design(r["information_rates"])
    est, ses = gs.cumulative_mean_difference(
        r["n1"], r["n2"], r["means1"], r["means2"], r["stDevs1"], r["stDevs2"]
    )
    for (lo, hi), rlo, rhi in zip(d.repeated_ci(est, ses), r["lower"], r["upper"], strict=True):
        assert close(lo, rlo) and close(hi, rhi)
