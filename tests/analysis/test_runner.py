"""Plans as data and the runner: results are complete, JSON-able and traceable to the plan."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import polars as pl
import pytest
import yaml

from immunostrat.analysis.plan import load_plan, shipped_plans
from immunostrat.analysis.runner import run_analysis
from immunostrat.analysis.schema import TrialExport
from immunostrat.errors import InputError


@pytest.fixture(scope="module")
def sepsis_results(sepsis_report: dict) -> dict:
    return sepsis_report["results"]


def test_shipped_plans_load() -> None:
    assert {"immunosep-2025", "sle-secretome-2025"} <= set(shipped_plans())
    plan = load_plan("immunosep-2025")
    prim = plan.primary
    assert prim.id == "sofa_response_day9"
    # the primary definition is domain.md A1's, as parameters
    assert prim.params == {
        "first_day": 1,
        "last_day": 9,
        "threshold": 1.4,
        "death_score": 24,
        "day1_fallback": "baseline_sofa",
    }
    assert plan.design.strata == ["MALS", "immunoparalysis"]


def test_bad_plan_names_the_field(tmp_path: Path) -> None:
    text = resources.files("immunostrat.analysis").joinpath("plans", "immunosep-2025.yaml").read_text()
    data = yaml.safe_load(text)
    data["endpoints"][0]["tests"] = ["cox"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError, match="do not apply") as info:
        load_plan(bad)
    assert info.value.file == str(bad)
    with pytest.raises(InputError, match="unknown analysis plan"):
        load_plan("no-such-plan")


def test_results_are_json_and_complete(sepsis_results: dict, sepsis_export: TrialExport) -> None:
    text = json.dumps(sepsis_results, allow_nan=False)
    assert json.loads(text)["plan"]["id"] == "immunosep-2025"
    ids = [e["id"] for e in sepsis_results["endpoints"]]
    assert ids == [e.id for e in load_plan("immunosep-2025").endpoints]
    prim = sepsis_results["endpoints"][0]
    assert prim["role"] == "primary" and prim["population"] == "itt"
    est = prim["result"]["estimates"]
    assert {"risk_difference", "odds_ratio", "fisher", "chi_square", "logistic_adjusted"} <= set(est)
    assert "C(stratum)" in est["logistic_adjusted"]["method"]
    # counts agree with a direct computation from the export
    counts = prim["result"]["counts"]
    n_itt = sepsis_export.participants.filter(pl.col("itt")).height
    assert counts["immunotherapy"]["randomized"] + counts["placebo"]["randomized"] == n_itt
    assert set(prim["by_stratum"]) == {"MALS", "immunoparalysis"}
    assert "per_protocol" in prim["sensitivity"]
    md = prim["missing_data"]["placebo"]
    assert sum(md["day 9 status"].values()) == counts["placebo"]["randomized"]


def test_consort_and_table1(sepsis_results: dict, sepsis_export: TrialExport) -> None:
    c = sepsis_results["consort"]
    assert sepsis_export.screening is not None
    assert c["screened"] == sepsis_export.screening.height
    assert c["screened"] == c["excluded"] + c["eligible"]
    assert sum(c["exclusion_reasons"].values()) == c["excluded"]
    for arm in ("immunotherapy", "placebo"):
        a = c["arms"][arm]
        assert a["allocated"] - a["data_removed"] == a["analysed"]
    t1 = sepsis_results["table1"]
    assert {r["variable"] for r in t1["rows"]} >= {"age", "sex", "baseline_sofa", "stratum"}


def test_multiplicity_holm(sepsis_results: dict) -> None:
    m = sepsis_results["multiplicity"]
    assert m["method"] == "holm"
    for k, p in m["raw_p"].items():
        assert m["adjusted_p"][k] >= p


def test_sle_plan(sle_export: TrialExport) -> None:
    res = run_analysis(sle_export, "sle-secretome-2025")
    prim = res["endpoints"][0]
    assert prim["id"] == "mex_sledai_change_day43"
    ancova = prim["result"]["estimates"]["ancova"]
    # planted -3 points (synthetic_sle_trial): recovered within the CI
    assert ancova["ci_low"] <= -3.0 <= ancova["ci_high"]
    assert prim["result"]["estimates"]["mmrm"]["measure"].startswith("LS-mean difference at visit 43")


def test_arms_must_match_plan(sle_export: TrialExport) -> None:
    with pytest.raises(InputError, match="arm not in plan") as info:
        run_analysis(sle_export, "immunosep-2025")
    assert info.value.field == "arm" and info.value.row is not None


def test_safety_summary(sepsis_results: dict, sepsis_export: TrialExport) -> None:
    ae = sepsis_export.adverse_events
    assert ae is not None
    s = sepsis_results["safety"]
    total_serious = s["immunotherapy"]["serious_events"] + s["placebo"]["serious_events"]
    assert total_serious == ae.filter(pl.col("serious")).height
    for arm in ("immunotherapy", "placebo"):
        assert s[arm]["participants_with_serious_event"] <= s[arm]["n"]


def test_degenerate_export_is_reported_not_crashed(sepsis_export: TrialExport) -> None:
    """One week of follow-up, nobody dead, no infection status, strata spelled in lower case (as a
    live trial export may be): models that cannot be fitted say so; the report still renders."""
    from immunostrat.analysis.report import render_html

    e = sepsis_export
    outcomes = e.outcomes.with_columns(
        pl.lit(None, dtype=pl.Int64).alias("death_day"),
        pl.lit(9, dtype=pl.Int64).alias("last_contact_day"),
        pl.lit(None, dtype=pl.Utf8).alias("infection_status_day15"),
    )
    daily = e.daily_assessments.filter(pl.col("day") <= 9)
    participants = e.participants.with_columns(pl.col("stratum").str.to_lowercase())
    weak = TrialExport(participants, daily, outcomes, e.screening, None, e.manifest)
    res = run_analysis(weak, "immunosep-2025")
    by_id = {x["id"]: x for x in res["endpoints"]}
    assert by_id["mortality_day28"]["result"]["note"] == "an arm has no evaluable participant"
    assert by_id["mortality_day28"]["missing_data"]["placebo"]["lost to follow-up (excluded)"] > 0
    cox = by_id["survival_day90"]["result"]["estimates"]["cox"]
    assert cox["estimate"] is None and cox["error"]
    assert set(by_id["sofa_response_day9"]["by_stratum"]) == {"MALS", "immunoparalysis"}
    assert by_id["sofa_response_day9"]["by_stratum"]["MALS"]["type"] == "binary"  # "mals" matched "MALS"
    page = render_html(res, weak, "immunosep-2025")
    assert "not estimable" in page


def test_no_deaths_in_one_arm_is_not_estimable_and_the_report_renders(sepsis_export: TrialExport) -> None:
    """Nobody in the immunotherapy arm dies: the Cox HR and the stratum-adjusted OR say "not
    estimable" with the reason (R's coxph would print HR ~1e-9 with a warning), the report renders."""
    from immunostrat.analysis import stats
    from immunostrat.analysis.report import render_html

    e = sepsis_export
    treated_ids = e.participants.filter(pl.col("arm") == "immunotherapy")["participant_id"].implode()
    outcomes = e.outcomes.with_columns(
        pl.when(pl.col("participant_id").is_in(treated_ids))
        .then(pl.lit(None, dtype=pl.Int64))
        .otherwise(pl.col("death_day"))
        .alias("death_day"),
        pl.when(pl.col("participant_id").is_in(treated_ids))
        .then(pl.lit(90, dtype=pl.Int64))
        .otherwise(pl.col("last_contact_day"))
        .alias("last_contact_day"),
    )
    export = TrialExport(e.participants, e.daily_assessments, outcomes, e.screening, None, e.manifest)
    res = run_analysis(export, "immunosep-2025", sensitivity=False)
    by_id = {x["id"]: x for x in res["endpoints"]}
    cox = by_id["survival_day90"]["result"]["estimates"]["cox"]
    assert cox["estimate"] is None and cox["error"].startswith("no events in the treated arm")
    logistic = by_id["mortality_day28"]["result"]["estimates"]["logistic_adjusted"]
    assert logistic["estimate"] is None and "no events in the treated arm" in logistic["error"]
    assert "Error" not in cox["error"] and "Error" not in logistic["method"]
    # the stratified log-rank still runs (the test needs no finite HR) and matches stats.logrank
    lr = by_id["survival_day90"]["result"]["estimates"]["logrank"]
    assert lr["method"] == "log-rank test stratified" and lr["p_value"] < 0.05
    page = render_html(res, export, "immunosep-2025")
    assert "not estimable: no events in the treated arm" in page
    assert "Error" not in page.split("<body", 1)[-1].replace("InputError", "")
    # an infinite CI limit is printed, not a crash
    from immunostrat.analysis.report import _ci

    assert _ci({"estimate": 3.0, "ci_low": 0.5, "ci_high": None}) == "3.00 (0.50 to ∞)"
    assert stats.holm({"a": 0.01, "b": None})["a"] == 0.02


def test_holm_family_keeps_a_not_estimable_endpoint(sepsis_export: TrialExport) -> None:
    """One week of follow-up: the mortality endpoints of the Holm family are not estimable; they
    stay in the family (m = 5), so the other P values are multiplied by 5, not by 3."""
    e = sepsis_export
    outcomes = e.outcomes.with_columns(
        pl.lit(None, dtype=pl.Int64).alias("death_day"),
        pl.lit(9, dtype=pl.Int64).alias("last_contact_day"),
    )
    export = TrialExport(e.participants, e.daily_assessments, outcomes, e.screening, None, e.manifest)
    m = run_analysis(export, "immunosep-2025", sensitivity=False)["multiplicity"]
    assert list(m["raw_p"]) == m["family"]
    assert {"mortality_day28", "mortality_day90"} <= set(m["not_estimable"])
    known = {k: v for k, v in m["raw_p"].items() if v is not None}
    smallest = min(known, key=lambda k: known[k])
    assert m["adjusted_p"][smallest] == pytest.approx(min(1.0, len(m["family"]) * known[smallest]))
    assert m["adjusted_p"]["mortality_day28"] is None and m["rejected"]["mortality_day28"] is False


def test_logrank_is_stratified_as_the_cox_model(sepsis_results: dict, sepsis_export: TrialExport) -> None:
    surv = next(x for x in sepsis_results["endpoints"] if x["id"] == "survival_day90")
    assert surv["result"]["estimates"]["logrank"]["method"] == "log-rank test stratified"
    assert "stratified by stratum" in surv["result"]["estimates"]["cox"]["method"]


def test_primary_has_the_stratified_cmh_analysis(sepsis_results: dict) -> None:
    from immunostrat.analysis import stats

    prim = sepsis_results["endpoints"][0]
    cmh = prim["result"]["estimates"]["cmh"]
    arms = sepsis_results["data"]["arms"]
    tables = {
        name: tuple(r["counts"][arm][key] for arm in arms for key in ("events", "n"))
        for name, r in prim["by_stratum"].items()
    }
    again = stats.cochran_mantel_haenszel(tables)
    assert cmh["estimate"] == pytest.approx(again.estimate) and cmh["p_value"] == pytest.approx(again.p_value)
    assert cmh["details"]["breslow_day_p"] is not None
    assert 0 <= prim["result"]["estimates"]["stratum_interaction"]["p_value"] <= 1


def test_report_prints_the_stratified_analysis(sepsis_report: dict) -> None:
    page = (sepsis_report["dir"] / "report.html").read_text()
    assert "Cochran-Mantel-Haenszel" in page and "Breslow-Day" in page
