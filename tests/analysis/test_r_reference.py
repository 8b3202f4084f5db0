"""Our statistics against reference values computed in R (``scripts/r_reference/analysis_reference.R``
writes ``fixtures/r_reference.json`` with the input data, R's results and R's package versions;
the tests do not need R). Tolerance 1e-6 where R uses the same method, 1e-4 where the numerics
differ (confint(clm)'s spline-interpolated profile, the numerical supremum of Barnard/Boschloo)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from immunostrat.analysis import stats
from immunostrat.analysis.samplesize import (
    sample_size_repeated_measures,
    sample_size_time_to_event,
    sample_size_two_proportions,
)

REF: dict[str, Any] = json.loads((Path(__file__).parent / "fixtures" / "r_reference.json").read_text())


def close(ours: float | None, r_value: float, rel: float = 1e-6) -> bool:
    return ours is not None and math.isclose(ours, r_value, rel_tol=rel, abs_tol=rel * 1e-2)


def ordinal_frame(case: dict[str, Any]) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for arm, treated in (("treated", 1), ("control", 0)):
        for level in case["levels"]:
            rows += [{"status": level, "treated": treated}] * int(case[arm][level])
    return pd.DataFrame(rows)


def test_fixture_names_r_and_its_packages() -> None:
    assert REF["r_version"].startswith("R version")
    assert {"survival", "ordinal", "MASS", "rpact"} <= set(REF["packages"])


@pytest.mark.parametrize("case_id", sorted(REF["ordinal"]))
def test_proportional_odds_matches_clm(case_id: str) -> None:
    case = REF["ordinal"][case_id]
    est = stats.ordinal_odds_ratio(ordinal_frame(case), "status", case["levels"])
    assert close(est.estimate, case["or"])  # the MLE, not an early stop
    assert close(est.details["se_log_or"], case["se_log_or"])
    assert close(est.p_value, case["wald_p"])
    assert close(est.details["lr_p_value"], case["lr_p"], 1e-6)
    # exact likelihood-ratio limits (uniroot on clm with an offset) ...
    assert close(est.ci_low, case["profile_ci"][0], 1e-6) and close(est.ci_high, case["profile_ci"][1], 1e-6)
    # ... which confint(clm)'s spline-interpolated profile reproduces to 1e-4
    assert close(est.ci_low, case["confint_clm_profile"][0], 1e-4)
    assert close(est.ci_high, case["confint_clm_profile"][1], 1e-4)
    assert close(est.details["wald_ci"][0], case["wald_ci"][0])
    assert close(est.details["wald_ci"][1], case["wald_ci"][1])
    dropped = [lvl for lvl in case["levels"] if lvl not in case["levels_used"]]
    assert est.details["empty_levels_dropped"] == dropped


def test_immunosep_infection_status_profile_interval_prints_the_published_091() -> None:
    case = REF["ordinal"]["immunosep_infection_day15"]
    est = stats.ordinal_odds_ratio(ordinal_frame(case), "status", case["levels"])
    assert est.ci_high is not None and f"{est.ci_high:.2f}" == "0.91"
    assert f"{est.details['wald_ci'][1]:.2f}" == "0.92"


def test_proportional_odds_adjusted_for_a_covariate_matches_clm() -> None:
    case = REF["ordinal_adjusted"]
    est = stats.ordinal_odds_ratio(pd.DataFrame(case["data"]), "status", case["levels"], covariates=["age"])
    assert close(est.estimate, case["or"]) and close(est.details["se_log_or"], case["se_log_or"])
    assert close(est.p_value, case["wald_p"])
    assert close(est.ci_low, case["profile_ci"][0]) and close(est.ci_high, case["profile_ci"][1])


def test_proportional_odds_separated_by_a_covariate_is_not_estimable() -> None:
    case = REF["ordinal_adjusted"]
    data = pd.DataFrame(case["data"])
    data["status"] = np.where(data["age"] > 62, case["levels"][-1], case["levels"][0])
    with pytest.raises(stats.NotEstimable, match="infinity"):
        stats.ordinal_odds_ratio(data, "status", case["levels"], covariates=["age"])


def test_proportional_odds_separation_is_not_estimable() -> None:
    case = REF["ordinal_separation"]
    assert abs(case["r_log_or"]) > 10  # R runs off towards infinity
    with pytest.raises(stats.NotEstimable, match="separation"):
        stats.ordinal_odds_ratio(ordinal_frame(case), "status", case["levels"])


def survival_frame() -> pd.DataFrame:
    return pd.DataFrame(REF["survival"]["data"])


def test_logrank_unstratified_and_stratified_match_survdiff() -> None:
    d = survival_frame()
    plain = stats.logrank(d["time"], d["event"], d["treated"].astype(bool))
    strat = stats.logrank(d["time"], d["event"], d["treated"].astype(bool), strata=d["stratum"])
    ref = REF["survival"]
    assert close(plain.estimate, ref["logrank"]["chisq"]) and close(plain.p_value, ref["logrank"]["p"])
    assert close(strat.estimate, ref["logrank_stratified"]["chisq"])
    assert close(strat.p_value, ref["logrank_stratified"]["p"])
    assert not close(strat.estimate, ref["logrank"]["chisq"], 1e-3)


def test_stratified_cox_matches_coxph() -> None:
    est = stats.cox_hazard_ratio(survival_frame(), "time", "event", strata=["stratum"])
    ref = REF["survival"]["cox_stratified"]
    assert close(est.estimate, ref["hr"])
    assert close(est.ci_low, ref["ci"][0]) and close(est.ci_high, ref["ci"][1])
    assert close(est.p_value, ref["p"])


def test_stratified_cox_with_one_stratum_present_is_the_unstratified_fit() -> None:
    d = survival_frame()
    one = d[d["stratum"] == "immunoparalysis"]
    est = stats.cox_hazard_ratio(one, "time", "event", strata=["stratum"])
    ref = REF["survival"]["cox_one_stratum"]
    assert ref == REF["survival"]["cox_one_stratum_unstratified"]
    assert close(est.estimate, ref["hr"]) and close(est.p_value, ref["p"])
    assert est.details["single_level_strata"] == ["stratum"]


def test_cox_with_no_events_in_one_arm_is_not_estimable() -> None:
    case = REF["cox_no_events_one_arm"]
    assert case["r_hr"] < 1e-6 and "infinite" in case["r_warning"]
    with pytest.raises(stats.NotEstimable, match="no events in the treated arm"):
        stats.cox_hazard_ratio(pd.DataFrame(case["data"]), "time", "event")


def test_kaplan_meier_median_uses_rs_midpoint_convention() -> None:
    km = pd.DataFrame(REF["km_median"]["data"])
    (curve,) = stats.kaplan_meier(km["time"], km["event"], ["all"] * len(km))
    assert curve.median == REF["km_median"]["median"] == 30.5
    d = survival_frame()
    curves = stats.kaplan_meier(d["time"], d["event"], np.where(d["treated"] == 1, "treated", "control"))
    assert {c.group: c.median for c in curves} == REF["km_median"]["grouped_medians"]


@pytest.mark.parametrize("case_id", sorted(REF["mann_whitney"]))
def test_mann_whitney_matches_wilcox_test_default(case_id: str) -> None:
    case = REF["mann_whitney"][case_id]
    est = stats.mann_whitney(case["x"], case["y"])
    assert est.details["U"] == case["W"]
    assert close(est.p_value, case["p"])
    assert est.details["exact"] == ("exact" in case["method"])


def test_holm_keeps_a_not_estimable_p_in_the_family() -> None:
    ref = REF["holm"]
    adjusted = stats.holm(ref["p"])
    assert adjusted["c"] is None
    for name, value in ref["adjusted_family"].items():
        assert close(adjusted[name], value)
    # R's default (family shrunk to the estimable P values) is what we must not do
    assert not close(adjusted["a"], ref["adjusted_default"]["a"])


@pytest.mark.parametrize("table_id", sorted(REF["unconditional_2x2"]))
def test_barnard_and_boschloo_take_the_arms_as_the_binomial_samples(table_id: str) -> None:
    ref = REF["unconditional_2x2"][table_id]
    alts = stats.exact_alternatives(*ref["counts"])
    assert close(alts["fisher"], ref["fisher"])
    assert close(alts["barnard"], ref["barnard"], 1e-4)
    assert close(alts["boschloo"], ref["boschloo"], 1e-4)


@pytest.mark.parametrize("i", range(len(REF["samplesize_repeated"])))
def test_repeated_measures_sample_size_is_a_t_test_as_power_t_test(i: int) -> None:
    a = REF["samplesize_repeated"][i]
    res = sample_size_repeated_measures(
        a["difference"], a["sd"], a["visits"], a["correlation"], a["alpha"], a["power"]
    )
    assert res.per_arm == [a["per_arm"], a["per_arm"]]
    assert close(res.achieved_power, a["achieved_power"], 1e-6)
    assert "achieved power" in res.text()


@pytest.mark.parametrize("i", range(len(REF["samplesize_proportions"])))
def test_two_proportions_with_allocation_ratio_match_rpact(i: int) -> None:
    a = REF["samplesize_proportions"][i]
    res = sample_size_two_proportions(
        a["p_treated"], a["p_control"], a["alpha"], a["power"], method="normal", ratio=a["ratio"]
    )
    assert res.per_arm == [math.ceil(a["n_treated_exact"]), math.ceil(a["n_control_exact"])]
    assert res.achieved_power is not None and "achieved power" in res.text()


@pytest.mark.parametrize("i", range(len(REF["samplesize_survival"])))
def test_survival_sample_size_divides_unrounded_events(i: int) -> None:
    a = REF["samplesize_survival"][i]
    res = sample_size_time_to_event(a["hazard_ratio"], a["p_event_control"], a["alpha"], a["power"])
    assert res.events == a["events"]
    assert res.total == a["participants"]


@pytest.mark.parametrize("case_id", sorted(REF["cmh"]))
def test_cochran_mantel_haenszel_and_breslow_day_match_r(case_id: str) -> None:
    case = REF["cmh"][case_id]
    strata = {name: tuple(int(v) for v in counts) for name, counts in case["strata"].items()}
    est = stats.cochran_mantel_haenszel(strata)
    assert close(est.estimate, case["mh_or"])
    assert close(est.ci_low, case["ci"][0]) and close(est.ci_high, case["ci"][1])
    assert close(est.p_value, case["p"]) and close(est.details["cmh_chi2"], case["cmh_chi2"])
    assert close(est.details["p_uncorrected"], case["p_uncorrected"])
    for key in ("breslow_day_chi2", "breslow_day_p", "breslow_day_tarone_chi2", "breslow_day_tarone_p"):
        assert close(est.details[key], case[key]), key
    rows = [
        {"stratum": name, "treated": arm, "outcome": int(i < events)}
        for name, (x1, n1, x0, n0) in strata.items()
        for arm, events, n in ((1, x1, n1), (0, x0, n0))
        for i in range(n)
    ]
    inter = stats.treatment_by_stratum_interaction(pd.DataFrame(rows), "outcome", "stratum")
    assert close(inter.estimate, case["interaction_lr_chi2"])
    assert close(inter.p_value, case["interaction_p"])


def test_cmh_with_an_empty_arm_in_one_stratum_leaves_it_out() -> None:
    est = stats.cochran_mantel_haenszel({"MALS": (12, 25, 4, 23), "empty": (3, 5, 0, 0)})
    assert est.details["strata_left_out"] == ["empty"] and "breslow_day_p" not in est.details
    with pytest.raises(stats.NotEstimable, match="both arms"):
        stats.cochran_mantel_haenszel({"empty": (3, 5, 0, 0)})
