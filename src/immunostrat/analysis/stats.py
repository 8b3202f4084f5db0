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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats as st
from scipy import optimize

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


class NotEstimable(ValueError):
    """A model whose estimate does not exist for these data (empty arm, no events, separation,
    no convergence); the message is the reason, printed as "not estimable: <reason>"."""


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
        # scipy's unconditional tests take each *column* as one binomial sample (R's
        # Exact::exact.test takes rows); the arms must be the columns. The supremum over the
        # nuisance probability can sit near 0 (e.g. 57/131 vs 72/145: 0.361 at p = 0.009) where
        # scipy's default 32 sampling points miss it; 128 find it
        "barnard": float(st.barnard_exact(table.T, n=128).pvalue),
        "boschloo": float(st.boschloo_exact(table.T, n=128).pvalue),
    }


def _fisher_mid_p(x1: int, n1: int, x0: int, n0: int) -> float:
    m = x1 + x0
    hg = st.hypergeom(n1 + n0, m, n1)
    support = np.arange(max(0, m - n0), min(n1, m) + 1)
    probs = hg.pmf(support)
    p_obs = hg.pmf(x1)
    tol = 1e-7 * p_obs
    return float(probs[probs < p_obs - tol].sum() + 0.5 * probs[np.abs(probs - p_obs) <= tol].sum())


def cochran_mantel_haenszel(strata: Mapping[str, tuple[int, int, int, int]], conf: float = 0.95) -> Estimate:
    """Stratified 2x2 analysis, one (events treated, n treated, events control, n control) per
    stratum: Mantel-Haenszel common odds ratio with the Robins-Breslow-Greenland interval and the
    Cochran-Mantel-Haenszel test with continuity correction (R's ``mantelhaen.test`` defaults;
    the uncorrected P in ``details``), and the Breslow-Day test of a common odds ratio, plain and
    with Tarone's correction (Breslow & Day 1980, section 4.4; Tarone 1985). A stratum with an
    empty arm carries no information and is left out (named in ``details``)."""
    from statsmodels.stats.contingency_tables import StratifiedTable

    tables: list[np.ndarray] = []
    used: list[str] = []
    for name, (x1, n1, x0, n0) in strata.items():
        if n1 < 0 or n0 < 0 or not (0 <= x1 <= n1 and 0 <= x0 <= n0):
            raise ValueError(f"invalid counts in stratum {name}: {x1}/{n1} vs {x0}/{n0}")
        if n1 > 0 and n0 > 0:
            tables.append(np.array([[x1, n1 - x1], [x0, n0 - x0]], dtype=float))
            used.append(name)
    if not tables:
        raise NotEstimable("no stratum has participants in both arms")
    margins = np.array([[t[:, 0].sum(), t[:, 1].sum()] for t in tables])
    if (margins.min(axis=1) == 0).all():
        raise NotEstimable("every stratum has only events or only non-events")
    table = StratifiedTable(tables)
    odds = float(table.oddsratio_pooled)
    if not math.isfinite(odds) or odds == 0:
        raise NotEstimable("the Mantel-Haenszel odds ratio is 0 or infinite (no discordant cells)")
    lo, hi = table.oddsratio_pooled_confint(alpha=1 - conf)
    corrected = table.test_null_odds(correction=True)
    plain = table.test_null_odds(correction=False)
    details: dict[str, Any] = {
        "strata_used": used,
        "strata_left_out": [n for n in strata if n not in used],
        "cmh_chi2": float(corrected.statistic),
        "cmh_chi2_uncorrected": float(plain.statistic),
        "p_uncorrected": float(plain.pvalue),
    }
    if len(tables) > 1:
        bd = table.test_equal_odds(adjust=False)
        tarone = table.test_equal_odds(adjust=True)
        details.update(
            breslow_day_chi2=float(bd.statistic),
            breslow_day_df=len(tables) - 1,
            breslow_day_p=float(bd.pvalue),
            breslow_day_tarone_chi2=float(tarone.statistic),
            breslow_day_tarone_p=float(tarone.pvalue),
        )
    return Estimate(
        measure="Mantel-Haenszel odds ratio",
        estimate=odds,
        ci_low=float(lo),
        ci_high=float(hi),
        p_value=float(corrected.pvalue),
        method="Cochran-Mantel-Haenszel (continuity-corrected), Robins-Breslow-Greenland interval; "
        "Breslow-Day test of a common odds ratio",
        conf_level=conf,
        details=details,
    )


def treatment_by_stratum_interaction(
    data: pd.DataFrame, outcome: str, stratum: str, treatment: str = "treated"
) -> Estimate:
    """Likelihood-ratio test of the treatment-by-stratum interaction in a logistic regression
    (``outcome ~ treated * stratum`` against ``outcome ~ treated + stratum``; R's
    ``anova(glm, test = "LRT")``). The estimate is the LR chi-square."""
    import statsmodels.api as sm

    frame = data[[outcome, treatment, stratum]].dropna()
    levels = sorted(frame[stratum].astype(str).unique())
    if len(levels) < 2:
        raise NotEstimable("one stratum: no interaction to test")
    dummies = pd.get_dummies(frame[stratum].astype(str), dtype=float)[levels[1:]]
    trt = frame[treatment].astype(float)
    main = pd.concat([pd.Series(1.0, index=frame.index, name="const"), trt, dummies], axis=1)
    inter = dummies.mul(trt, axis=0).add_prefix("treated_x_")
    full = pd.concat([main, inter], axis=1)
    y = frame[outcome].astype(float)
    for (arm, lvl), cell in y.groupby([trt, frame[stratum].astype(str)]):
        if cell.nunique() < 2:
            raise NotEstimable(
                f"arm {'treated' if arm == 1 else 'control'} in stratum {lvl} has only "
                f"{'events' if cell.iloc[0] == 1 else 'non-events'}: the interaction is not finite"
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_full = sm.Logit(y, full).fit(disp=0, maxiter=200)
        fit_main = sm.Logit(y, main).fit(disp=0, maxiter=200)
    chi2 = float(2 * (fit_full.llf - fit_main.llf))
    df = inter.shape[1]
    return Estimate(
        measure="treatment-by-stratum interaction (LR chi-square)",
        estimate=chi2,
        ci_low=None,
        ci_high=None,
        p_value=float(st.chi2.sf(chi2, df)),
        method="logistic regression, likelihood-ratio test of treated x stratum",
        details={"df": df, "strata": levels},
    )


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
    for arm, label in ((1, "treated"), (0, "control")):
        y_arm = frame.loc[frame[treatment] == arm, outcome].astype(float)
        if y_arm.empty:
            raise NotEstimable(f"no participant in the {label} arm")
        if y_arm.nunique() < 2:
            # quasi-complete separation: the maximum-likelihood odds ratio is 0 or infinite (R's
            # glm warns "fitted probabilities numerically 0 or 1" and prints a huge coefficient)
            kind = "no events" if y_arm.iloc[0] == 0 else "only events"
            raise NotEstimable(f"{kind} in the {label} arm: the adjusted odds ratio is not finite")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = sm.Logit(frame[outcome].astype(float), exog).fit(disp=0, maxiter=200)
    if not fit.mle_retvals.get("converged", True):
        raise NotEstimable("the logistic regression did not converge")
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


def _logistic(x: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return np.asarray(expit(x), dtype=float)


def _po_loglik_grad(
    theta: np.ndarray, beta: np.ndarray, y: np.ndarray, x: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Log-likelihood of the cumulative logit model P(Y <= k) = F(theta_k - x beta) (the
    parameterisation of R's ordinal::clm and MASS::polr) and its gradient in theta and beta."""
    k = len(theta) + 1
    eta = x @ beta
    upper = np.append(theta, np.inf)[y] - eta  # y coded 0..k-1
    lower = np.insert(theta, 0, -np.inf)[y] - eta
    f_up, f_lo = _logistic(upper), _logistic(lower)
    prob = f_up - f_lo
    if np.any(prob <= 0) or np.any(np.diff(theta) <= 0):
        return -math.inf, np.zeros(k - 1), np.zeros(len(beta))
    d_up, d_lo = f_up * (1 - f_up), f_lo * (1 - f_lo)
    grad_theta = np.zeros(k - 1)
    np.add.at(grad_theta, y[y < k - 1], (d_up / prob)[y < k - 1])
    np.add.at(grad_theta, y[y > 0] - 1, -(d_lo / prob)[y > 0])
    grad_beta = -((d_up - d_lo) / prob) @ x
    return float(np.log(prob).sum()), grad_theta, grad_beta


def _newton(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]], start: np.ndarray, max_iter: int = 200
) -> tuple[np.ndarray, float, bool, np.ndarray]:
    """Maximise ``fun`` (log-likelihood, gradient) by Newton-Raphson with step halving; the
    Hessian is the central difference of the analytic gradient. Returns (estimate, max,
    converged: max |gradient| < 1e-8, Hessian)."""
    par = start.astype(float).copy()
    value, grad = fun(par)
    hess = np.eye(len(par))
    for _ in range(max_iter):
        hess = _num_hessian(fun, par)
        try:
            step = -np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            break
        scale = 1.0
        while scale > 1e-10:
            new = par + scale * step
            new_value, new_grad = fun(new)
            if math.isfinite(new_value) and new_value >= value - 1e-12:
                break
            scale /= 2
        else:
            break
        par, value, grad = new, new_value, new_grad
        if np.max(np.abs(grad)) < 1e-10 or np.max(np.abs(scale * step)) < 1e-12:
            break
    hess = _num_hessian(fun, par)
    return par, value, bool(np.max(np.abs(grad)) < 1e-8), hess


def _num_hessian(fun: Callable[[np.ndarray], tuple[float, np.ndarray]], par: np.ndarray) -> np.ndarray:
    h = 1e-6
    cols = []
    for i in range(len(par)):
        e = np.zeros(len(par))
        e[i] = h
        cols.append((fun(par + e)[1] - fun(par - e)[1]) / (2 * h))
    hess = np.column_stack(cols)
    return np.asarray((hess + hess.T) / 2, dtype=float)


def _po_start(y: np.ndarray, k: int) -> np.ndarray:
    cum = np.cumsum(np.bincount(y, minlength=k))[:-1] / len(y)
    return np.log(cum / (1 - cum))


def _po_fit(y: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, float, bool, np.ndarray]:
    n_theta = k - 1

    def fun(par: np.ndarray) -> tuple[float, np.ndarray]:
        ll, g_t, g_b = _po_loglik_grad(par[:n_theta], par[n_theta:], y, x)
        return ll, np.concatenate([g_t, g_b])

    return _newton(fun, np.concatenate([_po_start(y, k), np.zeros(x.shape[1])]))


def _separated(y: np.ndarray, group: np.ndarray) -> bool:
    """A binary covariate separates an ordinal outcome when the two groups' outcome ranges do not
    overlap (then the proportional-odds MLE is infinite; Agresti 2010, Analysis of Ordinal
    Categorical Data, 2nd ed., section 3.4.5)."""
    a, b = y[group == 1], y[group == 0]
    if len(a) == 0 or len(b) == 0:
        return True
    return bool(a.max() <= b.min() or b.max() <= a.min())


def ordinal_odds_ratio(
    data: pd.DataFrame,
    outcome: str,
    levels: Sequence[str],
    treatment: str = "treated",
    covariates: Sequence[str] = (),
    conf: float = 0.95,
) -> Estimate:
    """Proportional-odds (cumulative logit) model, fitted to the maximum-likelihood estimate by
    Newton-Raphson as R's ``ordinal::clm`` does: odds ratio of a *worse* category (``levels``
    ordered best -> worst) for treated vs control; < 1 favours treatment. The interval is the
    profile-likelihood one (``confint(clm)``; Wald interval in ``details``), the P value Wald's
    (``summary(clm)``; likelihood-ratio P in ``details``). Categories nobody is in are dropped,
    as R drops unused factor levels, and named in ``details``; an empty arm, separation or no
    convergence raise :class:`NotEstimable` with the reason."""
    frame = data[[outcome, treatment, *covariates]].dropna()
    unknown = sorted(set(frame[outcome].astype(str)) - {str(v) for v in levels})
    if unknown:
        raise NotEstimable(f"outcome values not among the levels: {', '.join(unknown)}")
    present = [lvl for lvl in levels if (frame[outcome].astype(str) == str(lvl)).any()]
    empty = [lvl for lvl in levels if lvl not in present]
    if len(present) < 2:
        raise NotEstimable("fewer than two outcome categories observed")
    code = {str(lvl): i for i, lvl in enumerate(present)}
    y = frame[outcome].astype(str).map(code).to_numpy(dtype=int)
    x = frame[[treatment, *covariates]].to_numpy(dtype=float)
    k = len(present)
    if _separated(y, x[:, 0]):
        raise NotEstimable(
            "the arms' outcome categories do not overlap (separation): the odds ratio is infinite"
        )
    par, loglik, converged, hess = _po_fit(y, x, k)
    if np.max(np.abs(par[k - 1 :] * np.std(x, axis=0))) > 25:
        # a log odds ratio beyond 25 per SD of its covariate is the likelihood running to
        # infinity (separation by a covariate), not an estimate; R's clm reports a singular Hessian
        raise NotEstimable("a coefficient runs to infinity (separation): the odds ratio is not finite")
    if not converged:
        raise NotEstimable("the proportional-odds fit did not converge")
    cov = np.linalg.inv(-hess)
    b = float(par[k - 1])
    se = float(math.sqrt(cov[k - 1, k - 1]))
    z = _z(conf)
    crit = float(st.chi2.ppf(conf, 1))

    def deviance_gap(beta: float) -> float:
        return 2 * (loglik - _po_fit_fixed(y, x, k, beta)) - crit

    limits = []
    for sign in (-1.0, 1.0):
        step = max(se, 0.1)
        far = b + sign * step
        while deviance_gap(far) < 0:
            step *= 2
            far = b + sign * step
            if step > 50:
                raise NotEstimable("the profile-likelihood limit is infinite")
        limits.append(float(optimize.brentq(deviance_gap, *sorted((b, far)), xtol=1e-12)))
    lr_stat = 2 * (loglik - _po_fit(y, x[:, 1:], k)[1])
    return Estimate(
        measure="proportional odds ratio (worse category)",
        estimate=math.exp(b),
        ci_low=math.exp(limits[0]),
        ci_high=math.exp(limits[1]),
        p_value=float(2 * st.norm.sf(abs(b / se))),
        method="cumulative logit proportional-odds model (maximum likelihood, as R ordinal::clm); "
        "profile-likelihood interval; P: Wald",
        conf_level=conf,
        details={
            "n": int(frame.shape[0]),
            "levels_best_to_worst": list(levels),
            "empty_levels_dropped": empty,
            "log_or": b,
            "se_log_or": se,
            "wald_ci": [math.exp(b - z * se), math.exp(b + z * se)],
            "lr_p_value": float(st.chi2.sf(lr_stat, 1)),
            "log_likelihood": loglik,
            "converged": converged,
        },
    )


def _po_fit_fixed(y: np.ndarray, x: np.ndarray, k: int, beta: float) -> float:
    """Log-likelihood maximised over thresholds and the other coefficients with the first
    coefficient fixed at ``beta`` (profile with covariates)."""
    offset = x[:, 0] * beta
    other = x[:, 1:]
    n_theta = k - 1

    def fun(par: np.ndarray) -> tuple[float, np.ndarray]:
        theta, coef = par[:n_theta], par[n_theta:]
        ll, g_t, g_b = _po_loglik_grad(
            theta, np.concatenate([[1.0], coef]), y, np.column_stack([offset, other])
        )
        return ll, np.concatenate([g_t, g_b[1:]])

    return _newton(fun, np.concatenate([_po_start(y, k), np.zeros(other.shape[1])]))[1]


def mann_whitney(treated: Any, control: Any) -> Estimate:
    """Wilcoxon-Mann-Whitney test, two-sided, as R's ``wilcox.test`` by default: the exact
    distribution when both arms have fewer than 50 values and there are no ties, else the normal
    approximation with tie and continuity correction. Estimate = P(treated > control) + 0.5
    P(tie) = U / (n_treated n_control)."""
    a = np.asarray(treated, dtype=float)
    b = np.asarray(control, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) == 0 or len(b) == 0:
        raise NotEstimable("Mann-Whitney needs observations in both arms")
    pooled = np.concatenate([a, b])
    exact = len(a) < 50 and len(b) < 50 and len(np.unique(pooled)) == len(pooled)
    method = "exact" if exact else "asymptotic"
    res = st.mannwhitneyu(a, b, alternative="two-sided", method=method, use_continuity=True)
    return Estimate(
        measure="probability of superiority",
        estimate=float(res.statistic) / (len(a) * len(b)),
        ci_low=None,
        ci_high=None,
        p_value=float(res.pvalue),
        method="Wilcoxon-Mann-Whitney, two-sided, "
        + ("exact" if exact else "normal approximation with continuity correction (ties present or n >= 50)"),
        details={"U": float(res.statistic), "n_treated": len(a), "n_control": len(b), "exact": exact},
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
    covariance, so this is the random-intercept (compound symmetry) form of an MMRM. Plans use
    :mod:`immunostrat.analysis.mmrm` (unstructured covariance, Kenward-Roger/Satterthwaite df)."""
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
        med = _km_median(sf.index.to_numpy(dtype=float), sf.to_numpy(dtype=float))
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


def _km_median(times: np.ndarray, survival: np.ndarray) -> float:
    """Median survival as R's ``survfit`` prints it: the first time the curve falls to 0.5 or
    below, or, when the curve is exactly 0.5 over an interval, the midpoint of that interval
    (the first time it is 0.5 and the next event time); infinite if it never reaches 0.5."""
    tol = 1e-10
    below = np.flatnonzero(survival <= 0.5 + tol)
    if below.size == 0:
        return math.inf
    i = int(below[0])
    if abs(survival[i] - 0.5) <= tol:
        later = np.flatnonzero(survival < 0.5 - tol)
        return float((times[i] + times[int(later[0])]) / 2) if later.size else float(times[i])
    return float(times[i])


def logrank(time: Any, event: Any, treated: Any, strata: Any = None) -> Estimate:
    """Log-rank test treated vs control, stratified when ``strata`` is given (observed minus
    expected events and their hypergeometric variance summed over strata, as R's
    ``survdiff(Surv(time, event) ~ treated + strata(s))``; Collett 2015, section 2.6)."""
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=bool)
    a = np.asarray(treated, dtype=bool)
    s = np.zeros(len(t), dtype=object) if strata is None else np.asarray(strata, dtype=object)
    if a.all() or not a.any():
        raise NotEstimable("the log-rank test needs participants in both arms")
    if not e.any():
        raise NotEstimable("no events")
    observed = expected = variance = 0.0
    for level in sorted(set(s.tolist()), key=str):
        m = s == level
        ts, es, as_ = t[m], e[m], a[m]
        for u in np.unique(ts[es]):
            at_risk = ts >= u
            n_all = float(at_risk.sum())
            n_trt = float((at_risk & as_).sum())
            d_all = float(((ts == u) & es).sum())
            d_trt = float(((ts == u) & es & as_).sum())
            observed += d_trt
            expected += d_all * n_trt / n_all
            if n_all > 1:
                variance += d_all * (n_trt / n_all) * (1 - n_trt / n_all) * (n_all - d_all) / (n_all - 1)
    if variance <= 0:
        raise NotEstimable("the log-rank variance is zero")
    chisq = (observed - expected) ** 2 / variance
    stratified = strata is not None and len(set(s.tolist())) > 1
    return Estimate(
        measure="log-rank chi-square",
        estimate=float(chisq),
        ci_low=None,
        ci_high=None,
        p_value=float(st.chi2.sf(chisq, 1)),
        method="log-rank test" + (" stratified" if stratified else ""),
        details={"observed_treated": observed, "expected_treated": expected, "variance": variance},
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
    # a stratum variable with one level present is no stratification (R's strata() with one
    # level gives the unstratified fit); its column must leave the frame, or lifelines would
    # take it for a covariate
    single = [s for s in strata if frame[s].nunique() <= 1]
    strata = [s for s in strata if s not in single]
    frame = frame.drop(columns=single)
    for arm, label in ((1.0, "treated"), (0.0, "control")):
        arm_rows = frame[treatment] == arm
        if not arm_rows.any():
            raise NotEstimable(f"no participant in the {label} arm")
        if frame.loc[arm_rows, event].sum() == 0:
            # the partial likelihood is monotone: R's coxph stops with a coefficient near
            # -/+20 and the warning "coefficient may be infinite"
            raise NotEstimable(f"no events in the {label} arm: the hazard ratio is not finite")
    cph = CoxPHFitter(alpha=1 - conf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # converge on the estimate itself (R's default stops on a 1e-9 relative change of the
        # log-likelihood, which leaves the 5th digit of the HR open)
        cph.fit(
            frame,
            duration_col=duration,
            event_col=event,
            strata=list(strata) or None,
            fit_options={"precision": 1e-12, "r_precision": 0.0},
        )
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
        details={"n": len(frame), "events": int(frame[event].sum()), "single_level_strata": single},
    )


# --------------------------------------------------------------------------------------------
# multiplicity


def holm(p_values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm step-down adjusted P values over the whole pre-specified family: a P value that is
    not estimable (None or NaN) keeps its place in the family (m counts it) and is taken as
    larger than every other, as R's ``p.adjust(p, "holm", n = m)``; its own adjusted P is None."""
    names = list(p_values)
    known = {n: float(v) for n, v in p_values.items() if v is not None and math.isfinite(float(v))}
    m = len(names)
    out: dict[str, float | None] = {n: None for n in names}
    running = 0.0
    for rank, name in enumerate(sorted(known, key=lambda n: known[n])):
        running = max(running, min(1.0, (m - rank) * known[name]))
        out[name] = running
    return out


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
