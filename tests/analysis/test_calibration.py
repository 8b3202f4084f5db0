"""Calibration: on synthetic trials with a planted effect, the primary analysis recovers it.

The generator plants each participant's responder status (probability 20% control, 40% treated:
ImmunoSep's design assumption, domain.md A1) and builds SOFA courses whose derived primary
endpoint equals that status, so the true risk difference is 0.20 and the true odds ratio is
(0.4/0.6)/(0.2/0.8) = 8/3. Over 200 seeds the 95% intervals must cover the truth >= 94% of the time.
"""

from __future__ import annotations

from immunostrat.analysis.endpoints import sofa_response
from immunostrat.analysis.plan import load_plan
from immunostrat.analysis.runner import primary_estimate
from immunostrat.analysis.synthetic import synthetic_trial

SEEDS = range(200)
P_CONTROL, EFFECT = 0.20, 0.20
TRUE_OR = ((P_CONTROL + EFFECT) / (1 - P_CONTROL - EFFECT)) / (P_CONTROL / (1 - P_CONTROL))


def _runs() -> list[dict]:
    plan = load_plan("immunosep-2025")
    return [
        primary_estimate(
            synthetic_trial(n=276, seed=s, effect=EFFECT, p_control=P_CONTROL, screening=False), plan
        )
        for s in SEEDS
    ]


def test_primary_analysis_is_calibrated() -> None:
    runs = _runs()
    rd = [r["estimates"]["risk_difference"] for r in runs]
    orr = [r["estimates"]["odds_ratio"] for r in runs]
    cover_rd = sum(e["ci_low"] <= EFFECT <= e["ci_high"] for e in rd) / len(rd)
    cover_or = sum(e["ci_low"] <= TRUE_OR <= e["ci_high"] for e in orr) / len(orr)
    assert cover_rd >= 0.94, cover_rd
    assert cover_or >= 0.94, cover_or
    # unbiased on average (Monte Carlo SE of the mean RD ~ 0.0035)
    mean_rd = sum(e["estimate"] for e in rd) / len(rd)
    assert abs(mean_rd - EFFECT) < 0.015
    # a wrong truth is rejected: the test can fail
    wrong = sum(e["ci_low"] <= EFFECT + 0.15 <= e["ci_high"] for e in rd) / len(rd)
    assert wrong < 0.5


def test_generator_plants_the_status_exactly() -> None:
    # the derived endpoint reproduces the responder rates of a large trial (no leakage from deaths/LOCF)
    exp = synthetic_trial(n=6000, seed=11, effect=EFFECT, p_control=P_CONTROL, screening=False)
    res = sofa_response(exp)
    assert res["responder"].null_count() == 0
    rates = {arm: res.filter(res["arm"] == arm)["responder"].mean() for arm in ("immunotherapy", "placebo")}
    assert abs(rates["placebo"] - P_CONTROL) < 0.03
    assert abs(rates["immunotherapy"] - (P_CONTROL + EFFECT)) < 0.03
    assert (res["n_death_imputed"] > 0).any() and (res["n_locf"] > 0).any()


def test_newcombe_exact_coverage_at_the_design_point() -> None:
    """Seed-free check of the same property: exact coverage of the Newcombe interval, enumerating
    every outcome of Bin(138, 0.4) x Bin(138, 0.2) (ImmunoSep's design, domain.md A1)."""
    import numpy as np
    import scipy.stats as st

    from immunostrat.analysis.stats import risk_difference

    n = 138
    x = np.arange(n + 1)
    w1, w0 = st.binom.pmf(x, n, 0.4), st.binom.pmf(x, n, 0.2)
    # enumerate the likely outcomes (>= 1e-7 probability each); the rest carries < 1e-4 in total
    keep1, keep0 = x[w1 > 1e-7], x[w0 > 1e-7]
    coverage = 0.0
    for a in keep1:
        for b in keep0:
            e = risk_difference(int(a), n, int(b), n, with_p=False)
            if e.covers(0.2):
                coverage += w1[a] * w0[b]
    assert 0.94 <= coverage <= 0.96, coverage
