"""Run an analysis plan over a trial export: ``run_analysis(data, plan) -> results`` (JSON-able).

The results carry, per endpoint: its definition and missing-data rule (from the plan), counts or
summaries by arm, every test the plan names (each an :class:`~immunostrat.analysis.stats.Estimate`
with its method), the same per stratum when asked, a missing-data report, and for the primary
endpoint the sensitivity populations; then multiplicity, Table 1 and the CONSORT counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from immunostrat.analysis import endpoints as ep
from immunostrat.analysis import mmrm as mmrm_mod
from immunostrat.analysis import sensitivity as sensitivity_mod
from immunostrat.analysis import stats
from immunostrat.analysis import win_ratio as win_ratio_mod
from immunostrat.analysis.plan import AnalysisPlan, Endpoint, load_plan
from immunostrat.analysis.schema import TrialExport, validate_export
from immunostrat.errors import InputError

BINARY_KINDS = {"sofa_response", "mortality", "immune_reversal"}


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for pkg in ("immunostrat", "numpy", "scipy", "statsmodels", "lifelines", "polars", "pandas"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _export(data: TrialExport | str | Path | Mapping[str, Any]) -> TrialExport:
    if isinstance(data, TrialExport):
        return data
    return validate_export(data)


def _check_arms(export: TrialExport, plan: AnalysisPlan) -> None:
    arms = export.participants["arm"]
    expected = [plan.design.treated_arm, plan.design.control_arm]
    if arms.len() and (arms == "blinded").all():
        raise InputError(
            "blinded export: every arm is 'blinded'; a comparative analysis needs the unblinded export",
            file="participants",
            field="arm",
            value="blinded",
            expected="one of " + ", ".join(expected),
        )
    bad = (~arms.is_in(expected)).arg_true()
    if len(bad):
        i = int(bad[0])
        raise InputError(
            f"arm not in plan {plan.id}",
            file="participants",
            row=i + 1,
            field="arm",
            value=arms[i],
            expected="one of " + ", ".join(expected),
        )
    for arm in expected:
        if not (arms == arm).any():
            raise InputError(
                f"no participant in arm {arm!r}",
                file="participants",
                field="arm",
                expected=", ".join(expected),
            )


# --------------------------------------------------------------------------------------------
# endpoint frames


def endpoint_frame(
    export: TrialExport, endpoint: Endpoint, population: str | None, plan: AnalysisPlan | None = None
) -> pl.DataFrame:
    """The per-participant (or long, for repeated/change) frame of one endpoint (a win-ratio
    endpoint refers to other endpoints of its ``plan``)."""
    p = endpoint.params
    if endpoint.kind == "win_ratio":
        if plan is None:
            raise ValueError("a win-ratio endpoint needs its plan")
        return _win_ratio_pl(export, plan, population, **p)
    if endpoint.kind == "sofa_response":
        return ep.sofa_response(export, population=population, **p).rename({"responder": "outcome"})
    if endpoint.kind == "mortality":
        return ep.mortality(export, population=population, **p).rename({"dead": "outcome"})
    if endpoint.kind == "immune_reversal":
        return ep.immune_reversal(export, population=population, **p).rename({"reversed": "outcome"})
    if endpoint.kind == "survival":
        return ep.survival(export, population=population, **p)
    if endpoint.kind == "infection_status":
        return ep.infection_status(export, population=population, **p)
    if endpoint.kind == "repeated":
        return ep.repeated_measure(export, population=population, **p)
    if endpoint.kind == "change":
        q = {k: v for k, v in p.items() if k != "visits"}
        return ep.change_from_baseline(export, population=population, **q)
    raise ValueError(endpoint.kind)  # pragma: no cover - the plan model forbids other kinds


def _covariate_frame(export: TrialExport, plan: AnalysisPlan, frame: pl.DataFrame) -> pd.DataFrame:
    extra = [c for c in plan.adjustment_covariates if c not in frame.columns]
    if extra:
        missing = [c for c in extra if c not in export.participants.columns]
        if missing:
            raise InputError(
                "adjustment covariate not in participants",
                file="participants",
                field=missing[0],
                expected=f"columns named by plan {plan.id}",
            )
        frame = frame.join(
            export.participants.select("participant_id", *extra), on="participant_id", how="left"
        )
    df = frame.to_pandas()
    df["treated"] = (df["arm"] == plan.design.treated_arm).astype(int)
    return df


def _safe(measure: str, fn: Callable[..., stats.Estimate], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one model; a model that cannot be fitted (no events, separation, singular design) is
    reported as not estimable with the reason, never silently dropped or allowed to stop the run."""
    try:
        return fn(*args, **kwargs).to_dict()
    except Exception as exc:
        reason = _reason(exc)
        return {
            "measure": measure,
            "estimate": None,
            "ci_low": None,
            "ci_high": None,
            "p_value": None,
            "method": f"{measure}: not estimable: {reason}",
            "error": reason,
        }


def _reason(exc: Exception) -> str:
    """Why a model could not be fitted, in words: the reason our own checks give, or a short
    translation of a library's numerical failure (never a Python exception name)."""
    if isinstance(exc, stats.NotEstimable):
        return str(exc)[:300]
    text = str(exc).lower()
    if "singular" in text:
        return "the design matrix is singular (a covariate is constant or collinear with another)"
    if "separation" in text:
        return "the outcome is perfectly predicted (separation)"
    if "converge" in text:
        return "the model fit did not converge"
    if "sample" in text or "empty" in text or "zero-size" in text:
        return "too few observations for this model"
    return "the model could not be fitted to these data"


def _counts_binary(df: pd.DataFrame, plan: AnalysisPlan) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for arm in (plan.design.treated_arm, plan.design.control_arm):
        sub = df[df["arm"] == arm]
        known = sub["outcome"].dropna()
        x, n = int(known.astype(bool).sum()), len(known)
        out[arm] = {
            "events": x,
            "n": n,
            "percent": 100 * x / n if n else None,
            "missing": int(sub["outcome"].isna().sum()),
            "randomized": len(sub),
        }
    return out


def _binary_tests(df: pd.DataFrame, endpoint: Endpoint, plan: AnalysisPlan, adjust: bool) -> dict[str, Any]:
    counts = _counts_binary(df, plan)
    t, c = counts[plan.design.treated_arm], counts[plan.design.control_arm]
    res: dict[str, Any] = {"type": "binary", "counts": counts, "estimates": {}}
    if t["n"] == 0 or c["n"] == 0:
        res["note"] = "an arm has no evaluable participant"
        return res
    args = (t["events"], t["n"], c["events"], c["n"])
    conf = plan.conf_level
    est = res["estimates"]
    for test in endpoint.tests:
        if test == "risk_difference":
            est[test] = stats.risk_difference(*args, conf=conf).to_dict()
        elif test == "odds_ratio":
            est[test] = stats.odds_ratio(*args, conf=conf).to_dict()
        elif test == "fisher":
            est[test] = stats.fisher_exact(*args).to_dict()
        elif test == "chi_square":
            est[test] = stats.chi_square(*args).to_dict()
        elif test == "cmh" and adjust and plan.design.strata_column in df.columns:
            est[test] = _safe("cochran_mantel_haenszel", _cmh, df, plan, conf)
            est["stratum_interaction"] = _safe(
                "treatment_by_stratum_interaction",
                stats.treatment_by_stratum_interaction,
                df.dropna(subset=["outcome"]).assign(outcome=lambda d: d["outcome"].astype(int)),
                "outcome",
                str(plan.design.strata_column),
            )
        elif test == "logistic_adjusted" and adjust:
            d = df.dropna(subset=["outcome"]).copy()
            d["outcome"] = d["outcome"].astype(int)
            est[test] = _safe(
                "logistic_odds_ratio",
                stats.logistic_odds_ratio,
                d,
                "outcome",
                "treated",
                covariates=plan.adjustment_covariates,
                categorical=plan.categorical_covariates,
                conf=conf,
            )
    return res


def _cmh(df: pd.DataFrame, plan: AnalysisPlan, conf: float) -> stats.Estimate:
    """Mantel-Haenszel over the plan's strata (the stratification factor of randomisation)."""
    col = str(plan.design.strata_column)
    tables: dict[str, tuple[int, int, int, int]] = {}
    for stratum, sub in df.dropna(subset=["outcome"]).groupby(col):
        counts = _counts_binary(sub, plan)
        t, c = counts[plan.design.treated_arm], counts[plan.design.control_arm]
        tables[str(stratum)] = (t["events"], t["n"], c["events"], c["n"])
    return stats.cochran_mantel_haenszel(tables, conf=conf)


def _survival_tests(df: pd.DataFrame, endpoint: Endpoint, plan: AnalysisPlan, adjust: bool) -> dict[str, Any]:
    res: dict[str, Any] = {"type": "survival", "estimates": {}}
    horizon = int(endpoint.params.get("horizon", 90))
    risk_times = [t for t in (0, 7, 14, 28, 60, 90, 180, 365) if t <= horizon]
    res["counts"] = {
        arm: {"n": int((df["arm"] == arm).sum()), "events": int(df.loc[df["arm"] == arm, "event"].sum())}
        for arm in (plan.design.treated_arm, plan.design.control_arm)
    }
    for test in endpoint.tests:
        if test == "kaplan_meier":
            curves = stats.kaplan_meier(df["time"], df["event"], df["arm"], risk_times=risk_times)
            res["kaplan_meier"] = [c.to_dict() for c in curves]
        elif test == "logrank":
            # stratified by the same factors as the Cox model, so the two agree on the design
            res["estimates"][test] = _safe(
                "logrank",
                stats.logrank,
                df["time"],
                df["event"],
                df["treated"].astype(bool),
                strata=_strata_labels(df, _survival_strata(plan, adjust)),
            )
        elif test == "cox":
            strata = _survival_strata(plan, adjust)
            covs = (
                [c for c in plan.adjustment_covariates if c not in plan.categorical_covariates]
                if adjust
                else []
            )
            d = df.assign(event=df["event"].astype(int))
            res["estimates"][test] = _safe(
                "cox_hazard_ratio",
                stats.cox_hazard_ratio,
                d,
                "time",
                "event",
                "treated",
                covariates=covs,
                strata=strata,
                conf=plan.conf_level,
            )
    return res


def _survival_strata(plan: AnalysisPlan, adjust: bool) -> list[str]:
    """The categorical adjustment covariates: the strata of the Cox model and the log-rank test."""
    return [c for c in plan.adjustment_covariates if c in plan.categorical_covariates] if adjust else []


def _strata_labels(df: pd.DataFrame, strata: list[str]) -> pd.Series | None:
    if not strata:
        return None
    return df[strata].astype(str).agg(" / ".join, axis=1)


def _ordinal_tests(df: pd.DataFrame, endpoint: Endpoint, plan: AnalysisPlan) -> dict[str, Any]:
    levels = list(endpoint.params.get("levels", []))
    res: dict[str, Any] = {"type": "ordinal", "levels": levels, "counts": {}, "estimates": {}}
    for arm in (plan.design.treated_arm, plan.design.control_arm):
        sub = df[df["arm"] == arm]
        n = int(sub["status"].notna().sum())
        res["counts"][arm] = {
            "n": n,
            "missing": int(sub["status"].isna().sum()),
            **{
                lvl: {
                    "count": int((sub["status"] == lvl).sum()),
                    "percent": 100 * int((sub["status"] == lvl).sum()) / n if n else None,
                }
                for lvl in levels
            },
        }
    d = df.dropna(subset=["status"])
    for test in endpoint.tests:
        if test == "ordinal":
            res["estimates"][test] = _safe(
                "ordinal_odds_ratio",
                stats.ordinal_odds_ratio,
                d,
                "status",
                levels,
                "treated",
                conf=plan.conf_level,
            )
        elif test == "mann_whitney":
            res["estimates"][test] = _safe(
                "mann_whitney",
                stats.mann_whitney,
                d.loc[d["treated"] == 1, "score"],
                d.loc[d["treated"] == 0, "score"],
            )
    return res


def _summ(values: pd.Series) -> dict[str, Any]:
    v = values.dropna().astype(float)
    if v.empty:
        return {"n": 0}
    return {
        "n": len(v),
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
        "median": float(v.median()),
        "q1": float(v.quantile(0.25)),
        "q3": float(v.quantile(0.75)),
    }


def _repeated_tests(
    export: TrialExport, df: pd.DataFrame, endpoint: Endpoint, plan: AnalysisPlan
) -> dict[str, Any]:
    res: dict[str, Any] = {"type": "repeated", "summary": {}, "estimates": {}}
    for arm in (plan.design.treated_arm, plan.design.control_arm):
        sub = df[df["arm"] == arm]
        res["summary"][arm] = {str(day): _summ(g["value"]) for day, g in sub.groupby("day")}
    if "mmrm" in endpoint.tests:
        res["estimates"]["mmrm"] = _mmrm(df, "value", endpoint, plan)
    if endpoint.sensitivity_analyses and "baseline" in df.columns:
        res["missing_data_sensitivity"] = _sensitivity(
            export, df.dropna(subset=["baseline"]), endpoint, plan, "value"
        )
    return res


def _mmrm(
    long: pd.DataFrame, outcome: str, endpoint: Endpoint, plan: AnalysisPlan, at_visit: Any = None
) -> dict[str, Any]:
    """The endpoint's MMRM (``analysis.mmrm``): visit x treatment + baseline, the plan's covariance
    structures in order and its df method; treatment-by-stratum interaction when the plan asks."""
    spec = endpoint.mmrm
    col = plan.design.strata_column
    stratum = col if spec.treatment_by_stratum and col and col in long.columns else None
    return _safe(
        "mmrm",
        mmrm_mod.mmrm,
        long,
        outcome,
        "day",
        "participant_id",
        "treated",
        covariates=["baseline"] if "baseline" in long.columns else [],
        structures=spec.covariance,
        df_method=spec.df,
        at_visit=at_visit,
        conf=plan.conf_level,
        stratum=stratum,
    )


def _change_tests(
    df: pd.DataFrame, long: pd.DataFrame | None, endpoint: Endpoint, plan: AnalysisPlan
) -> dict[str, Any]:
    res: dict[str, Any] = {"type": "continuous", "summary": {}, "estimates": {}}
    for arm in (plan.design.treated_arm, plan.design.control_arm):
        sub = df[df["arm"] == arm]
        res["summary"][arm] = {
            "baseline": _summ(sub["baseline"]),
            "followup": _summ(sub["value"]),
            "change": _summ(sub["change"]),
            "missing_change": int(sub["change"].isna().sum()),
        }
    complete = df.dropna(subset=["change", "baseline"])
    for test in endpoint.tests:
        if test == "ancova":
            res["estimates"][test] = _safe(
                "ancova_change",
                stats.ancova_change,
                complete,
                "change",
                "baseline",
                "treated",
                conf=plan.conf_level,
            )
        elif test == "mann_whitney":
            res["estimates"][test] = _safe(
                "mann_whitney",
                stats.mann_whitney,
                complete.loc[complete["treated"] == 1, "change"],
                complete.loc[complete["treated"] == 0, "change"],
            )
        elif test == "mmrm" and long is not None:
            res["estimates"][test] = _mmrm(
                long, "change", endpoint, plan, at_visit=endpoint.params.get("day")
            )
    return res


def _sensitivity(
    export: TrialExport, long: pd.DataFrame, endpoint: Endpoint, plan: AnalysisPlan, outcome: str
) -> dict[str, Any]:
    """The endpoint's missing-data sensitivity analyses: MI under MAR and the tipping point, on the
    last visit (one row per participant with a baseline; the previous visit's value as a predictor).
    Repeated endpoints follow the while-alive strategy: participants dead by the last visit are not
    imputed."""
    visits = sorted(long["day"].unique().tolist())
    if not visits:  # e.g. a population with nobody in it (per protocol not yet assessed)
        return {"note": "not estimable: no participant with a baseline and a follow-up visit"}
    last = visits[-1]
    wide = long.pivot_table(index="participant_id", columns="day", values=outcome, aggfunc="first")
    per = long.drop_duplicates("participant_id").set_index("participant_id")[["treated", "baseline"]]
    frame = per.join(wide.reindex(columns=visits)).reset_index()
    frame.columns = [str(c) for c in frame.columns]
    predictors = [str(visits[-2])] if len(visits) > 1 else []
    if endpoint.kind == "repeated":
        dead = export.outcomes.filter(pl.col("death_day").is_not_null() & (pl.col("death_day") <= last))
        frame = frame[~frame["participant_id"].isin(dead["participant_id"].to_list())]
    deltas: list[float] = []
    if "tipping_point" in endpoint.sensitivity_analyses:
        sd = float(np.nanstd(frame[str(last)].to_numpy(float)))
        step = float(np.round(sd / 4, 2)) or 0.25
        deltas = [step * i for i in range(0, 21)]
    try:
        res = sensitivity_mod.multiple_imputation(
            frame, str(last), "baseline", predictors, deltas=deltas,
            lower_is_better=endpoint.favourable != "higher", alpha=plan.alpha,
        )  # fmt: skip
    except stats.NotEstimable as exc:
        return {"note": f"not estimable: {exc}"}
    res["visit"] = last
    return res


def _missing_report(frame: pl.DataFrame, endpoint: Endpoint, plan: AnalysisPlan) -> dict[str, Any]:
    """How each value was obtained, by arm (the plan's missing-data rule applied, and counted)."""
    rep: dict[str, Any] = {"rule": endpoint.missing}
    arms = (plan.design.treated_arm, plan.design.control_arm)
    if endpoint.kind == "sofa_response":
        for arm in arms:
            sub = frame.filter(pl.col("arm") == arm)
            rep[arm] = {
                f"day {endpoint.params.get('last_day', 9)} status": {
                    k: int((sub["status_last_day"] == k).sum())
                    for k in ("measured", "dead", "carried forward", "missing")
                },
                "participant-days carried forward": int(sub["n_locf"].sum()),
                "participant-days scored as death": int(sub["n_death_imputed"].sum()),
                "day-1 SOFA from fallback": int(
                    sub.filter(~pl.col("day1_source").is_in(["measured", "missing"])).height
                ),
                "excluded (endpoint missing)": int(sub["outcome"].is_null().sum()),
            }
    elif endpoint.kind == "mortality":
        for arm in arms:
            sub = frame.filter(pl.col("arm") == arm)
            rep[arm] = {"lost to follow-up (excluded)": int((sub["status"] == "lost to follow-up").sum())}
    elif endpoint.kind == "survival":
        for arm in arms:
            sub = frame.filter(pl.col("arm") == arm)
            rep[arm] = {"censored": int((~sub["event"]).sum())}
    elif endpoint.kind in ("immune_reversal",):
        for arm in arms:
            sub = frame.filter(pl.col("arm") == arm)
            rep[arm] = {"no follow-up sample (excluded)": int(sub["outcome"].is_null().sum())}
    elif endpoint.kind == "infection_status":
        for arm in arms:
            sub = frame.filter(pl.col("arm") == arm)
            rep[arm] = {"status missing (excluded)": int(sub["status"].is_null().sum())}
    elif endpoint.kind == "change":
        for arm in arms:
            sub = frame.filter(pl.col("arm") == arm)
            rep[arm] = {"change missing (excluded from ANCOVA)": int(sub["change"].is_null().sum())}
    elif endpoint.kind == "win_ratio":
        for arm in arms:
            sub = frame.filter(pl.col("arm") == arm)
            rep[arm] = {
                "censored before the horizon": int(
                    ((sub["event"] == 0) & (sub["time"] < endpoint.params.get("horizon", 28))).sum()
                ),
                "SOFA response missing (ties on it)": int(sub["responder"].is_null().sum()),
                "infection status missing (ties on it)": int(sub["infection_rank"].is_null().sum()),
            }
    elif endpoint.kind == "repeated":
        for arm in arms:
            sub = frame.filter(pl.col("arm") == arm)
            rep[arm] = {
                "observations": int(sub.height),
                "participants": int(sub["participant_id"].n_unique()),
            }
    return rep


def _analyze_frame(
    export: TrialExport,
    frame: pl.DataFrame,
    endpoint: Endpoint,
    plan: AnalysisPlan,
    adjust: bool,
    population: str,
) -> dict[str, Any]:
    df = _covariate_frame(export, plan, frame)
    if endpoint.kind in BINARY_KINDS:
        return _binary_tests(df, endpoint, plan, adjust)
    if endpoint.kind == "survival":
        return _survival_tests(df, endpoint, plan, adjust)
    if endpoint.kind == "infection_status":
        return _ordinal_tests(df, endpoint, plan)
    if endpoint.kind == "repeated":
        return _repeated_tests(export, df, endpoint, plan)
    if endpoint.kind == "win_ratio":
        return _win_ratio_tests(df, endpoint, plan)
    # change: also the long frame over visits for the mixed model
    long = None
    if "mmrm" in endpoint.tests:
        long = mmrm_frame(export, plan, endpoint, population=None, flag=population)
        long = long[long["participant_id"].isin(frame["participant_id"].to_list())]
    res = _change_tests(df, long, endpoint, plan)
    if endpoint.sensitivity_analyses:
        if long is None:
            long = mmrm_frame(export, plan, endpoint, flag=population)
            long = long[long["participant_id"].isin(frame["participant_id"].to_list())]
        res["missing_data_sensitivity"] = _sensitivity(export, long, endpoint, plan, "change")
    return res


def mmrm_frame(
    export: TrialExport,
    plan: AnalysisPlan,
    endpoint: Endpoint,
    population: str | None = None,
    flag: str | None = None,
) -> pd.DataFrame:
    """The long frame (one row per participant and visit) the mixed model of ``endpoint`` fits:
    ``repeated`` endpoints: value over ``days`` with ``baseline``; ``change`` endpoints: change from
    baseline over ``visits`` for participants with a baseline value. Columns include participant_id,
    arm, stratum, day, value, baseline, change (change endpoints) and treated (0/1)."""
    flag = flag or plan.populations[population or plan.primary_population].flag
    p = endpoint.params
    if endpoint.kind == "repeated":
        return _covariate_frame(export, plan, ep.repeated_measure(export, population=flag, **p))
    if endpoint.kind != "change":
        raise ValueError(f"endpoint {endpoint.id} is not a repeated or change endpoint")
    long_pl = ep.repeated_measure(
        export,
        p["variable"],
        days=p.get("visits", [p["day"]]),
        baseline_day=p["baseline_day"],
        population=flag,
    )
    return _covariate_frame(export, plan, long_pl).dropna(subset=["baseline"]).reset_index(drop=True)


def _win_ratio_pl(
    export: TrialExport,
    plan: AnalysisPlan,
    flag: str | None,
    horizon: int = 28,
    sofa_endpoint: str = "sofa_response_day9",
    infection_endpoint: str = "infection_status_day15",
) -> pl.DataFrame:
    by_id = {e.id: e for e in plan.endpoints}
    surv = ep.survival(export, horizon=horizon, population=flag)
    sofa = endpoint_frame(export, by_id[sofa_endpoint], flag).select(
        "participant_id", pl.col("outcome").cast(pl.Float64).alias("responder")
    )
    inf = endpoint_frame(export, by_id[infection_endpoint], flag).select(
        "participant_id", pl.col("score").cast(pl.Float64).alias("infection_rank")
    )
    frame = surv.join(sofa, on="participant_id", how="left").join(inf, on="participant_id", how="left")
    return frame.with_columns(pl.col("event").cast(pl.Int64))


def win_ratio_frame(
    export: TrialExport,
    plan: AnalysisPlan,
    horizon: int = 28,
    sofa_endpoint: str = "sofa_response_day9",
    infection_endpoint: str = "infection_status_day15",
    population: str | None = None,
) -> pd.DataFrame:
    """One row per participant for the win-ratio hierarchy death -> SOFA response -> infection
    status: ``time``/``event`` (death by ``horizon`` days, censored at last contact), ``responder``
    (the plan's SOFA-response endpoint, 1/0/missing), ``infection_rank`` (0 = best) and ``treated``."""
    flag = plan.populations[population or plan.primary_population].flag
    frame = _win_ratio_pl(export, plan, flag, horizon, sofa_endpoint, infection_endpoint)
    return _covariate_frame(export, plan, frame)


def _win_ratio_tests(df: pd.DataFrame, endpoint: Endpoint, plan: AnalysisPlan) -> dict[str, Any]:
    p = endpoint.params
    hierarchy = [
        win_ratio_mod.Outcome(f"death by day {p.get('horizon', 28)}", "time", "time", "event"),
        win_ratio_mod.Outcome("SOFA response", "binary", "responder"),
        win_ratio_mod.Outcome("infection status", "ordinal", "infection_rank"),
    ]
    res: dict[str, Any] = {"type": "win_ratio", "estimates": {}}
    res["estimates"]["win_ratio"] = _safe(
        "win_ratio", win_ratio_mod.win_ratio, df, hierarchy, "treated", conf=plan.conf_level
    )
    return res


def headline(result: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The endpoint's main effect estimate (name, estimate dict) for forest plots and multiplicity."""
    est = result.get("estimates", {})
    for key in ("odds_ratio", "ordinal", "cox", "ancova", "mmrm", "risk_difference", "win_ratio"):
        if key in est and est[key].get("estimate") is not None:
            return key, est[key]
    return None


def headline_p(result: dict[str, Any]) -> float | None:
    est = result.get("estimates", {})
    for key in ("fisher", "ordinal", "logrank", "cox", "ancova", "mmrm", "risk_difference", "win_ratio"):
        p = est.get(key, {}).get("p_value")
        if p is not None:
            return float(p)
    return None


def analyze_endpoint(
    export: TrialExport,
    plan: AnalysisPlan,
    endpoint: Endpoint,
    population: str | None = None,
    strata: bool = True,
) -> dict[str, Any]:
    """One endpoint in one population (default: the plan's primary), pooled and per stratum."""
    pop_name = population or plan.primary_population
    flag = plan.populations[pop_name].flag
    frame = endpoint_frame(export, endpoint, flag, plan)
    out: dict[str, Any] = {
        "id": endpoint.id,
        "role": endpoint.role,
        "label": endpoint.label,
        "kind": endpoint.kind,
        "definition": endpoint.definition,
        "params": endpoint.params,
        "favourable": endpoint.favourable,
        "tests": list(endpoint.tests),
        "estimand": endpoint.estimand.model_dump() if endpoint.estimand else None,
        "population": pop_name,
        "result": _analyze_frame(export, frame, endpoint, plan, adjust=True, population=flag),
        "missing_data": _missing_report(frame, endpoint, plan),
    }
    if strata and endpoint.by_stratum and plan.design.strata_column and plan.design.strata:
        col = plan.design.strata_column
        out["by_stratum"] = {}
        for stratum in plan.design.strata:
            sub = frame.filter(pl.col(col) == stratum) if col in frame.columns else frame.head(0)
            if sub.height == 0 or sub["arm"].n_unique() < 2:
                out["by_stratum"][stratum] = {"note": "no participants in both arms"}
                continue
            try:
                out["by_stratum"][stratum] = _analyze_frame(
                    export, sub, endpoint, plan, adjust=False, population=flag
                )
            except Exception as exc:  # e.g. too few events for a model in a small stratum
                out["by_stratum"][stratum] = {"error": _reason(exc)}
    return out


def _baseline_table(
    export: TrialExport, plan: AnalysisPlan, variables: list[str], flag: str
) -> dict[str, Any]:
    p = export.participants.filter(pl.col(flag).fill_null(False))
    arms = (plan.design.treated_arm, plan.design.control_arm)
    rows: list[dict[str, Any]] = []
    if plan.design.strata_column and plan.design.strata_column not in variables:
        variables = [plan.design.strata_column, *variables]
    for var in variables:
        if var not in p.columns:
            continue
        col = p[var]
        if col.dtype in (pl.Utf8, pl.Boolean, pl.Categorical):
            levels = sorted(col.cast(pl.Utf8).drop_nulls().unique().to_list())
            for lvl in levels:
                row: dict[str, Any] = {"variable": var, "level": lvl, "type": "categorical"}
                for arm in arms:
                    sub = p.filter(pl.col("arm") == arm)[var].cast(pl.Utf8)
                    n = int(sub.is_not_null().sum())
                    k = int((sub == lvl).sum())
                    row[arm] = {"count": k, "n": n, "percent": 100 * k / n if n else None}
                rows.append(row)
        else:
            row = {"variable": var, "level": None, "type": "continuous"}
            for arm in arms:
                row[arm] = _summ(p.filter(pl.col("arm") == arm)[var].to_pandas())
            rows.append(row)
    counts = {arm: int((p["arm"] == arm).sum()) for arm in arms}
    return {"population": flag, "n": counts, "rows": rows}


def consort_counts(export: TrialExport, plan: AnalysisPlan) -> dict[str, Any] | None:
    """CONSORT flow from the screening log (None without one)."""
    s = export.screening
    if s is None:
        return None
    arms = (plan.design.treated_arm, plan.design.control_arm)
    eligible = s.filter(pl.col("eligible"))
    excluded = s.filter(~pl.col("eligible"))
    reasons = (
        excluded.group_by("exclusion_reason")
        .len()
        .sort(["len", "exclusion_reason"], descending=[True, False])
        .iter_rows()
    )
    not_rand = eligible.filter(~pl.col("randomized"))
    rand = s.filter(pl.col("randomized"))
    flag = plan.populations[plan.primary_population].flag
    analysed_ids = export.participants.filter(pl.col(flag).fill_null(False))
    per_arm: dict[str, Any] = {}
    for arm in arms:
        r = rand.filter(pl.col("arm") == arm)
        withdrawn = r.filter(pl.col("withdrawn").fill_null(False))
        removed = r.filter(pl.col("data_removed").fill_null(False))
        wreasons = withdrawn.group_by("withdrawal_reason").len().sort("len", descending=True).iter_rows()
        per_arm[arm] = {
            "allocated": int(r.height),
            "withdrawn": int(withdrawn.height),
            "withdrawal_reasons": {str(k): int(v) for k, v in wreasons},
            "data_removed": int(removed.height),
            "analysed": int((analysed_ids["arm"] == arm).sum()),
            "by_stratum": {
                str(k): int(v)
                for k, v in analysed_ids.filter(pl.col("arm") == arm).group_by("stratum").len().iter_rows()
            },
        }
    return {
        "screened": int(s.height),
        "excluded": int(excluded.height),
        "exclusion_reasons": {str(k): int(v) for k, v in reasons},
        "eligible": int(eligible.height),
        "eligible_not_randomized": int(not_rand.height),
        "randomized": int(rand.height),
        "arms": per_arm,
        "analysed_population": plan.primary_population,
    }


def safety_summary(export: TrialExport, plan: AnalysisPlan) -> dict[str, Any] | None:
    """Adverse events by arm in the safety population (safety flag, else ITT); None without AEs."""
    ae = export.adverse_events
    if ae is None:
        return None
    p = export.participants.filter(pl.col("safety").fill_null(pl.col("itt")).fill_null(False))
    joined = ae.join(p.select("participant_id", "arm"), on="participant_id", how="inner")
    out: dict[str, Any] = {}
    for arm in (plan.design.treated_arm, plan.design.control_arm):
        n = int((p["arm"] == arm).sum())
        a = joined.filter(pl.col("arm") == arm)
        sae = a.filter(pl.col("serious"))
        top = sae.group_by("term").len().sort(["len", "term"], descending=[True, False]).head(10).iter_rows()
        out[arm] = {
            "n": n,
            "events": int(a.height),
            "participants_with_event": int(a["participant_id"].n_unique()),
            "serious_events": int(sae.height),
            "participants_with_serious_event": int(sae["participant_id"].n_unique()),
            "percent_with_serious_event": 100 * sae["participant_id"].n_unique() / n if n else None,
            "serious_by_term": {str(k): int(v) for k, v in top},
        }
    return out


def _multiplicity(plan: AnalysisPlan, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    m = plan.multiplicity
    # every member of the pre-specified family keeps its place: a P value that is not estimable
    # is None and still counts in Holm's m (dropping it would shrink the family and the adjustment)
    by_id = {e["id"]: e for e in endpoints}
    ps: dict[str, float | None] = {}
    for name in m.family:
        p = headline_p(by_id[name]["result"]) if name in by_id else None
        ps[name] = p if p is not None and math.isfinite(p) else None
    out: dict[str, Any] = {
        "method": m.method,
        "family": m.family,
        "note": m.note,
        "raw_p": ps,
        "not_estimable": [k for k, v in ps.items() if v is None],
    }
    if m.method == "holm":
        out["adjusted_p"] = stats.holm(ps)
        out["rejected"] = {k: v is not None and v <= plan.alpha for k, v in out["adjusted_p"].items()}
    elif m.method == "hierarchical":
        # testing stops at a P value that is not estimable, as at a non-significant one
        ordered = [(k, ps[k]) for k in m.family]
        out["rejected"] = stats.hierarchical(
            [(k, v if v is not None else 1.0) for k, v in ordered], alpha=plan.alpha
        )
    return out


def canonical_strata(export: TrialExport, plan: AnalysisPlan) -> TrialExport:
    """Spell the export's strata as the plan does when they match ignoring case (an export may
    write "mals" for the plan's "MALS"); other values are left as they are."""
    col = plan.design.strata_column
    if not col or not plan.design.strata or col not in export.participants.columns:
        return export
    mapping = {s.lower(): s for s in plan.design.strata}
    values = export.participants[col].cast(pl.Utf8)
    fixed = values.map_elements(lambda v: mapping.get(v.lower(), v), return_dtype=pl.Utf8)
    if fixed.equals(values):
        return export
    return replace(export, participants=export.participants.with_columns(fixed.alias(col)))


def run_analysis(
    data: TrialExport | str | Path | Mapping[str, Any],
    plan: str | Path | AnalysisPlan,
    sensitivity: bool = True,
) -> dict[str, Any]:
    """Run every endpoint of ``plan`` on ``data`` (an export folder, a mapping of frames, or a
    TrialExport) and return JSON-able results."""
    the_plan = load_plan(plan)
    export = canonical_strata(_export(data), the_plan)
    _check_arms(export, the_plan)
    primary_flag = the_plan.populations[the_plan.primary_population].flag
    populations = {}
    for name, pop in the_plan.populations.items():
        p = export.participants
        sel = p.filter(pl.col(pop.flag).fill_null(False)) if pop.flag in p.columns else p.head(0)
        populations[name] = {
            "flag": pop.flag,
            "description": pop.description,
            "n": {
                arm: int((sel["arm"] == arm).sum())
                for arm in (the_plan.design.treated_arm, the_plan.design.control_arm)
            },
        }
    results: list[dict[str, Any]] = []
    for endpoint in the_plan.endpoints:
        res = analyze_endpoint(export, the_plan, endpoint)
        if sensitivity and endpoint.role == "primary":
            res["sensitivity"] = {
                name: analyze_endpoint(export, the_plan, endpoint, population=name, strata=False)["result"]
                for name in the_plan.sensitivity_populations
            }
        results.append(res)
    table1_vars = list(the_plan.report.table1)
    out = {
        "plan": {
            "id": the_plan.id,
            "version": the_plan.version,
            "title": the_plan.title,
            "source": the_plan.source,
            "design": the_plan.design.model_dump(),
            "conf_level": the_plan.conf_level,
            "alpha": the_plan.alpha,
            "adjustment_covariates": the_plan.adjustment_covariates,
        },
        "data": {
            "source": export.source,
            "manifest": export.manifest.to_dict(),
            "n_participants": int(export.participants.height),
            "arms": [the_plan.design.treated_arm, the_plan.design.control_arm],
        },
        "populations": populations,
        "primary_population": the_plan.primary_population,
        "table1": _baseline_table(export, the_plan, table1_vars, primary_flag),
        "consort": consort_counts(export, the_plan),
        "safety": safety_summary(export, the_plan),
        "endpoints": results,
        "multiplicity": _multiplicity(the_plan, results),
        "software": _versions(),
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return dict(stats._clean(out))


def primary_estimate(export: TrialExport, plan: str | AnalysisPlan = "immunosep-2025") -> dict[str, Any]:
    """The primary endpoint's pooled result only (fast path, e.g. for calibration and simulation)."""
    the_plan = load_plan(plan)
    export = canonical_strata(export, the_plan)
    return analyze_endpoint(export, the_plan, the_plan.primary, strata=False)["result"]


def to_jsonable(obj: Any) -> Any:
    """Results -> plain JSON types (numpy scalars, NaN)."""
    if isinstance(obj, np.ndarray):
        return stats._clean(obj.tolist())
    return stats._clean(obj)
