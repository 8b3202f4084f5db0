"""Statistics for trial analysis, each a thin, documented wrapper over scipy / statsmodels / lifelines.

Every function returns an :class:`Estimate` (JSON-able through ``to_dict``) naming the method, so a
report can say exactly what was computed. Conventions: "treated" is the experimental arm and the
comparison is treated vs control (risk difference treated minus control, odds ratio treated over
control); confidence level 95% unless given.

Method choices and why (reproduction notes in domain.md A1 and ``published/``):
- risk difference: Newcombe hybrid score interval (Newcombe 1998, method 10: Wilson score limits
  without continuity correction) = ``statsmodels confint_proportions_2indep(method="newcomb")``;
  ImmunoSep JAMA 2025 Table 2 reports it.
- odds ratio: Woolf logit interval (log OR +- z * sqrt(1/a + 1/b + 1/c + 1/d)); Haldane-Anscombe
  0.5 added to every cell only when a cell is zero (reported in ``details``).
- P values: Fisher exact two-sided (scipy: sums the tables no more likely than the observed one),
  which is what ImmunoSep and PROVIDE printed; Pearson chi-square (with or without Yates) on request.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats as st

Z_CONF = {0.90: 1.6448536269514722, 0.95: 1.959963984540054, 0.99: 2.5758293035489004}


def _z(conf: float) -> float:
    return Z_CONF.get(conf, float(st.norm.ppf(0.5 + conf / 2)))


def _clean(value: Any) -> Any:
    """Make a value JSON-able (numpy scalars -> Python, NaN/inf -> None)."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class Estimate:
    """One effect estimate with its interval, P value and the method that produced them."""

    measure: str
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    method: str
    conf_level: float = 0.95
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(_clean(asdict(self)))

    def covers(self, value: float) -> bool:
        return self.ci_low is not None and self.ci_high is not None and self.ci_low <= value <= self.ci_high


# --------------------------------------------------------------------------------------------
# two binomial proportions


def _check_counts(x1: int, n1: int, x0: int, n0: int) -> None:
    for x, n in ((x1, n1), (x0, n0)):
        if n <= 0 or x < 0 or x > n:
            raise ValueError(f"invalid counts {x}/{n}")


def wilson_interval(x: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for one proportion (no continuity correction)."""
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(x, n, alpha=1 - conf, method="wilson")
    return float(lo), float(hi)


def risk_difference(x1: int, n1: int, x0: int, n0: int, conf: float = 0.95, with_p: bool = True) -> Estimate:
    """Risk difference p1 - p0 with the Newcombe hybrid score interval; P from Fisher's exact test
    (skipped when ``with_p`` is false, e.g. for coverage enumerations)."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    _check_counts(x1, n1, x0, n0)
    lo, hi = confint_proportions_2indep(x1, n1, x0, n0, method="newcomb", compare="diff", alpha=1 - conf)
    return Estimate(
        measure="risk difference",
        estimate=x1 / n1 - x0 / n0,
        ci_low=float(lo),
        ci_high=float(hi),
        p_value=fisher_exact(x1, n1, x0, n0).p_value if with_p else None,
        method="Newcombe hybrid score interval (Wilson, no continuity correction); P: Fisher exact",
        conf_level=conf,
        details={"x1": x1, "n1": n1, "x0": x0, "n0": n0, "p1": x1 / n1, "p0": x0 / n0},
    )


def odds_ratio(x1: int, n1: int, x0: int, n0: int, conf: float = 0.95) -> Estimate:
    """Odds ratio with the Woolf (logit) interval; P from Fisher's exact test."""
    _check_counts(x1, n1, x0, n0)
    a, b, c, d = float(x1), float(n1 - x1), float(x0), float(n0 - x0)
    corrected = min(a, b, c, d) == 0
    if corrected:  # Haldane-Anscombe correction, only when a cell is empty
        a, b, c, d = a + 0.5, b + 0.5, c + 0.5, d + 0.5
    log_or = math.log(a * d / (b * c))
    se = math.sqrt(1 / a + 1 / b + 1 / c + 1 / d)
    z = _z(conf)
    return Estimate(
        measure="odds ratio",
        estimate=math.exp(log_or),
        ci_low=math.exp(log_or - z * se),
        ci_high=math.exp(log_or + z * se),
        p_value=fisher_exact(x1, n1, x0, n0).p_value,
        method="Woolf logit interval; P: Fisher exact",
        conf_level=conf,
        details={"log_or": log_or, "se_log_or": se, "haldane_correction": corrected},
    )


def fisher_exact(x1: int, n1: int, x0: int, n0: int) -> Estimate:
    """Fisher's exact test, two-sided (scipy: tables no more probable than the observed one)."""
    _check_counts(x1, n1, x0, n0)
    res = st.fisher_exact([[x1, n1 - x1], [x0, n0 - x0]], alternative="two-sided")
    return Estimate(
        measure="sample odds ratio",
        estimate=float(res.statistic) if np.isfinite(res.statistic) else None,
        ci_low=None,
        ci_high=None,
        p_value=float(res.pvalue),
        method="Fisher exact test, two-sided (minimum-likelihood)",
    )


def chi_square(x1: int, n1: int, x0: int, n0: int, yates: bool = False) -> Estimate:
    """Pearson chi-square test of a 2x2 table (Yates continuity correction when ``yates``)."""
    _check_counts(x1, n1, x0, n0)
    table = np.array([[x1, n1 - x1], [x0, n0 - x0]])
    if (table.sum(axis=0) == 0).any():
        return Estimate("chi-square", None, None, None, 1.0, "Pearson chi-square: degenerate table")
    stat, p, dof, _ = st.chi2_contingency(table, correction=yates)
    return Estimate(
        measure="chi-square",
        estimate=float(stat),
        ci_low=None,
        ci_high=None,
        p_value=float(p),
        method="Pearson chi-square" + (" with Yates correction" if yates else " (no continuity correction)"),
        details={"dof": int(dof)},
    )


def exact_alternatives(x1: int, n1: int, x0: int, n0: int) -> dict[str, float]:
    """Other two-sided 2x2 P values (for finding which test a paper used)."""
    table = np.array([[x1, n1 - x1], [x0, n0 - x0]])
    g = st.fisher_exact(table, alternative="greater").pvalue
    lo = st.fisher_exact(table, alternative="less").pvalue
    return {
        "fisher": float(st.fisher_exact(table).pvalue),
        "fisher_central": float(min(1.0, 2 * min(g, lo))),
        "fisher_mid_p": _fisher_mid_p(x1, n1, x0, n0),
        "chi_square": float(st.chi2_contingency(table, correction=False)[1]),
        "chi_square_yates": float(st.chi2_contingency(table, correction=True)[1]),
        "barnard": float(st.barnard_exact(table).pvalue),
        "boschloo": float(st.boschloo_exact(table).pvalue),
    }


def _fisher_mid_p(x1: int, n1: int, x0: int, n0: int) -> float:
    m = x1 + x0
    hg = st.hypergeom(n1 + n0, m, n1)
    support = np.arange(max(0, m - n0), min(n1, m) + 1)
    probs = hg.pmf(support)
    p_obs = hg.pmf(x1)
    tol = 1e-7 * p_obs
    return float(probs[probs < p_obs - tol].sum() + 0.5 * probs[np.abs(probs - p_obs) <= tol].sum())


# --------------------------------------------------------------------------------------------
# regression models


def logistic_odds_ratio(
    data: pd.DataFrame,
    outcome: str,
    treatment: str = "treated",
    covariates: Sequence[str] = (),
    categorical: Sequence[str] = (),
    conf: float = 0.95,
) -> Estimate:
    """Odds ratio for ``treatment`` (0/1) from a logistic regression adjusted for ``covariates``
    (statsmodels Logit; Wald interval and P). ``categorical`` covariates enter as factors; a
    factor with one level in the data is dropped and reported."""
    import statsmodels.api as sm

    cols = [outcome, treatment, *covariates]
    frame = data[cols].dropna().copy()
    dropped = [c for c in covariates if frame[c].nunique() < 2]
    kept = [c for c in covariates if c not in dropped]
    terms = [treatment] + [(f"C({c})" if c in categorical else c) for c in kept]
    formula = f"{outcome} ~ " + " + ".join(terms)
    # design matrix built directly (first level of each factor is the reference), as patsy would
    parts: list[pd.Series | pd.DataFrame] = [
        pd.Series(1.0, index=frame.index, name="Intercept"),
        frame[treatment].astype(float),
    ]
    for c in kept:
        if c in categorical:
            parts.append(pd.get_dummies(frame[c].astype(str), prefix=c, drop_first=True, dtype=float))
        else:
            parts.append(frame[c].astype(float))
    exog = pd.concat(parts, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.Logit(frame[outcome].astype(float), exog).fit(disp=0, maxiter=200)
    b = float(fit.params[treatment])
    se = float(fit.bse[treatment])
    z = _z(conf)
    return Estimate(
        measure="adjusted odds ratio" if len(terms) > 1 else "odds ratio",
        estimate=math.exp(b),
        ci_low=math.exp(b - z * se),
        ci_high=math.exp(b + z * se),
        p_value=float(fit.pvalues[treatment]),
        method=f"logistic regression (Wald): {formula}",
        conf_level=conf,
        details={
            "n": int(frame.shape[0]),
            "dropped_covariates": dropped,
            "converged": bool(fit.mle_retvals.get("converged", True)),
        },
    )


def ordinal_odds_ratio(
    data: pd.DataFrame,
    outcome: str,
    levels: Sequence[str],
    treatment: str = "treated",
    covariates: Sequence[str] = (),
    conf: float = 0.95,
) -> Estimate:
    """Proportional-odds (cumulative logit) model, statsmodels OrderedModel: odds ratio of a *worse*
    category (``levels`` ordered best -> worst) for treated vs control; < 1 favours treatment."""
    from statsmodels.miscmodels.ordinal_model import OrderedModel

    frame = data[[outcome, treatment, *covariates]].dropna()
    y = pd.Categorical(frame[outcome], categories=list(levels), ordered=True)
    exog = frame[[treatment, *covariates]].astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = OrderedModel(pd.Series(y), exog.reset_index(drop=True), distr="logit").fit(
            method="bfgs", disp=0, maxiter=500
        )
    b = float(fit.params[treatment])
    se = float(fit.bse[treatment])
    z = _z(conf)
    return Estimate(
        measure="proportional odds ratio (worse category)",
        estimate=math.exp(b),
        ci_low=math.exp(b - z * se),
        ci_high=math.exp(b + z * se),
        p_value=float(fit.pvalues[treatment]),
        method="cumulative logit proportional-odds model (statsmodels OrderedModel, Wald)",
        conf_level=conf,
        details={"n": int(frame.shape[0]), "levels_best_to_worst": list(levels)},
    )


def mann_whitney(treated: Any, control: Any) -> Estimate:
    """Mann-Whitney U (two-sided, scipy 'auto' method); estimate = P(treated > control) + 0.5 P(tie)."""
    a = np.asarray(treated, dtype=float)
    b = np.asarray(control, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) == 0 or len(b) == 0:
        raise ValueError("Mann-Whitney needs observations in both arms")
    res = st.mannwhitneyu(a, b, alternative="two-sided")
    return Estimate(
        measure="probability of superiority",
        estimate=float(res.statistic) / (len(a) * len(b)),
        ci_low=None,
        ci_high=None,
        p_value=float(res.pvalue),
        method="Mann-Whitney U, two-sided (scipy)",
        details={"U": float(res.statistic), "n_treated": len(a), "n_control": len(b)},
    )


def ancova_change(
    data: pd.DataFrame,
    change: str,
    baseline: str,
    treatment: str = "treated",
    covariates: Sequence[str] = (),
    categorical: Sequence[str] = (),
    conf: float = 0.95,
) -> Estimate:
    """ANCOVA on change from baseline: OLS ``change ~ treated + baseline (+ covariates)``;
    the estimate is the adjusted mean difference treated - control."""
    import statsmodels.formula.api as smf

    frame = data[[change, baseline, treatment, *covariates]].dropna()
    terms = [treatment, baseline] + [(f"C({c})" if c in categorical else c) for c in covariates]
    formula = f"{change} ~ " + " + ".join(terms)
    fit = smf.ols(formula, data=frame).fit()
    lo, hi = fit.conf_int(alpha=1 - conf).loc[treatment]
    return Estimate(
        measure="adjusted mean difference (change from baseline)",
        estimate=float(fit.params[treatment]),
        ci_low=float(lo),
        ci_high=float(hi),
        p_value=float(fit.pvalues[treatment]),
        method=f"ANCOVA (OLS): {formula}",
        conf_level=conf,
        details={"n": int(frame.shape[0])},
    )


def mixed_model_repeated(
    data: pd.DataFrame,
    value: str,
    visit: str,
    subject: str,
    treatment: str = "treated",
    baseline: str | None = None,
    at_visit: Any = None,
    conf: float = 0.95,
) -> Estimate:
    """MMRM-style linear mixed model (statsmodels MixedLM, REML): ``value ~ C(visit) * treated
    (+ baseline)`` with a random intercept per subject; all available post-baseline visits are used
    (missing at random). The estimate is the treated - control difference at ``at_visit`` (default:
    the last visit); the other visits are in ``details``. statsmodels has no unstructured residual
    covariance, so this is the random-intercept (compound symmetry) form of an MMRM."""
    import statsmodels.formula.api as smf

    cols = [value, visit, subject, treatment] + ([baseline] if baseline else [])
    frame = data[cols].dropna().copy()
    frame["_visit"] = frame[visit].astype(str)
    visits = sorted(frame[visit].unique().tolist())
    target = visits[-1] if at_visit is None else at_visit
    ref = str(visits[0])
    formula = f"{value} ~ C(_visit, Treatment('{ref}')) * {treatment}" + (
        f" + {baseline}" if baseline else ""
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = smf.mixedlm(formula, frame, groups=frame[subject]).fit(reml=True)
    names = list(fit.params.index)
    z = _z(conf)
    per_visit: dict[str, dict[str, float]] = {}
    result: tuple[float, float, float] | None = None
    for v in visits:
        vec = np.zeros(len(names))
        vec[names.index(treatment)] = 1.0
        inter = f"C(_visit, Treatment('{ref}'))[T.{v}]:{treatment}"
        if inter in names:
            vec[names.index(inter)] = 1.0
        est = float(vec @ fit.params.to_numpy())
        cov = fit.cov_params().to_numpy()
        se = float(np.sqrt(vec @ cov @ vec))
        p = float(2 * st.norm.sf(abs(est / se))) if se > 0 else float("nan")
        per_visit[str(v)] = {"estimate": est, "ci_low": est - z * se, "ci_high": est + z * se, "p_value": p}
        if v == target:
            result = (est, se, p)
    if result is None:
        raise ValueError(f"visit {target!r} not in data")
    est, se, p = result
    return Estimate(
        measure=f"mean difference at visit {target}",
        estimate=est,
        ci_low=est - z * se,
        ci_high=est + z * se,
        p_value=p,
        method=f"linear mixed model, random intercept per subject (statsmodels MixedLM, REML): {formula}",
        conf_level=conf,
        details={
            "per_visit": per_visit,
            "n_subjects": int(frame[subject].nunique()),
            "n_obs": len(frame),
        },
    )


# --------------------------------------------------------------------------------------------
# survival


@dataclass
class KMCurve:
    group: str
    time: list[float]
    survival: list[float]
    ci_low: list[float]
    ci_high: list[float]
    at_risk: dict[int, int]
    median: float | None
    n: int
    events: int

    def to_dict(self) -> dict[str, Any]:
        return dict(_clean(asdict(self)))


def kaplan_meier(time: Any, event: Any, groups: Any, risk_times: Sequence[int] = ()) -> list[KMCurve]:
    """Kaplan-Meier estimate per group (lifelines), with Greenwood-exponential CIs and numbers at risk."""
    from lifelines import KaplanMeierFitter

    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=bool)
    g = np.asarray(groups, dtype=object)
    curves: list[KMCurve] = []
    for name in sorted(set(g.tolist())):
        m = g == name
        kmf = KaplanMeierFitter().fit(t[m], e[m], label=str(name))
        sf = kmf.survival_function_.iloc[:, 0]
        ci = kmf.confidence_interval_survival_function_
        med = kmf.median_survival_time_
        curves.append(
            KMCurve(
                group=str(name),
                time=[float(x) for x in sf.index],
                survival=[float(x) for x in sf.to_numpy()],
                ci_low=[float(x) for x in ci.iloc[:, 0].to_numpy()],
                ci_high=[float(x) for x in ci.iloc[:, 1].to_numpy()],
                at_risk={int(rt): int((t[m] >= rt).sum()) for rt in risk_times},
                median=float(med) if np.isfinite(med) else None,
                n=int(m.sum()),
                events=int(e[m].sum()),
            )
        )
    return curves


def logrank(time: Any, event: Any, treated: Any) -> Estimate:
    """Log-rank test treated vs control (lifelines)."""
    from lifelines.statistics import logrank_test

    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=bool)
    a = np.asarray(treated, dtype=bool)
    res = logrank_test(t[a], t[~a], event_observed_A=e[a], event_observed_B=e[~a])
    return Estimate(
        measure="log-rank chi-square",
        estimate=float(res.test_statistic),
        ci_low=None,
        ci_high=None,
        p_value=float(res.p_value),
        method="log-rank test (lifelines)",
    )


def cox_hazard_ratio(
    data: pd.DataFrame,
    duration: str,
    event: str,
    treatment: str = "treated",
    covariates: Sequence[str] = (),
    strata: Sequence[str] = (),
    conf: float = 0.95,
) -> Estimate:
    """Cox proportional-hazards hazard ratio for ``treatment`` (lifelines CoxPHFitter, Efron ties),
    optionally stratified (separate baseline hazards) and adjusted for numeric ``covariates``."""
    from lifelines import CoxPHFitter

    frame = data[[duration, event, treatment, *covariates, *strata]].dropna().copy()
    frame[event] = frame[event].astype(int)
    frame[treatment] = frame[treatment].astype(float)
    strata = [s for s in strata if frame[s].nunique() > 1]
    cph = CoxPHFitter(alpha=1 - conf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cph.fit(frame, duration_col=duration, event_col=event, strata=list(strata) or None)
    row = cph.summary.loc[treatment]
    lo_col = next(c for c in cph.summary.columns if c.startswith("exp(coef) lower"))
    hi_col = next(c for c in cph.summary.columns if c.startswith("exp(coef) upper"))
    return Estimate(
        measure="hazard ratio",
        estimate=float(row["exp(coef)"]),
        ci_low=float(row[lo_col]),
        ci_high=float(row[hi_col]),
        p_value=float(row["p"]),
        method="Cox proportional hazards (lifelines, Efron ties, Wald)"
        + (f", stratified by {', '.join(strata)}" if strata else ""),
        conf_level=conf,
        details={"n": len(frame), "events": int(frame[event].sum())},
    )


# --------------------------------------------------------------------------------------------
# multiplicity


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm step-down adjusted P values (statsmodels multipletests)."""
    from statsmodels.stats.multitest import multipletests

    names = list(p_values)
    if not names:
        return {}
    adj = multipletests([p_values[n] for n in names], method="holm")[1]
    return {n: float(a) for n, a in zip(names, adj, strict=True)}


def hierarchical(ordered: Sequence[tuple[str, float]], alpha: float = 0.05) -> dict[str, bool]:
    """Fixed-sequence (hierarchical) testing: each hypothesis is tested at full ``alpha`` only when
    every earlier one was rejected; testing stops at the first non-significant result."""
    out: dict[str, bool] = {}
    open_ = True
    for name, p in ordered:
        reject = open_ and p is not None and p <= alpha
        out[name] = bool(reject)
        open_ = reject
    return out
