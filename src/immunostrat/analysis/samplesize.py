"""Sample size for the next trial: two proportions, time to event, repeated measures.

Each function returns a :class:`SampleSize` whose ``assumptions`` are plain sentences (what a
protocol's sample-size section prints). Two-sided alpha throughout; 1:1 allocation unless given.

Check (domain.md A1): ImmunoSep assumed 40% vs 20% responders, alpha 0.05, power 90% -> 117 per
arm. 117 is exactly the smallest n whose *exact power of the two-sided Fisher test* (the
primary analysis test) reaches 90% (``method="fisher-exact"``); the normal approximation gives
109, and Fleiss' continuity correction 119. With ~15% drop-out: 2 x 117 / 0.85 = 276, which the
trial rounded to 280.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.stats as st
from scipy import optimize
from scipy.special import gammaln


@dataclass
class SampleSize:
    design: str
    method: str
    per_arm: list[int]
    total: int
    total_with_dropout: int
    achieved_power: float | None
    events: int | None = None
    assumptions: list[str] = field(default_factory=list)
    alternatives: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        head = f"{self.design}: {' + '.join(str(n) for n in self.per_arm)} = {self.total} participants"
        if self.events is not None:
            head += f" ({self.events} events)"
        if self.total_with_dropout != self.total:
            head += f"; {self.total_with_dropout} allowing for drop-out"
        lines = [head]
        if self.achieved_power is not None:
            lines.append(f"achieved power {self.achieved_power:.1%} ({self.method})")
        return "\n".join([*lines, *(f"- {a}" for a in self.assumptions)])


def _z(alpha: float, power: float) -> tuple[float, float]:
    return float(st.norm.ppf(1 - alpha / 2)), float(st.norm.ppf(power))


def _inflate(total: int, dropout: float) -> int:
    if not 0 <= dropout < 1:
        raise ValueError("dropout must be in [0, 1)")
    return math.ceil(total / (1 - dropout) - 1e-9)


def _log_comb(n: int, k: np.ndarray) -> np.ndarray:
    return np.asarray(gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1), dtype=float)


def fisher_exact_power(
    n_treated: int, n_control: int, p_treated: float, p_control: float, alpha: float = 0.05
) -> float:
    """Exact power of the two-sided Fisher exact test (minimum-likelihood P <= alpha), summing the
    binomial probabilities of every rejecting table (conditional rejection region per margin)."""
    x1 = np.arange(n_treated + 1)
    x0 = np.arange(n_control + 1)
    b1 = st.binom.pmf(x1, n_treated, p_treated)
    b0 = st.binom.pmf(x0, n_control, p_control)
    total = n_treated + n_control
    power = 0.0
    for m in range(total + 1):
        lo, hi = max(0, m - n_control), min(n_treated, m)
        k = np.arange(lo, hi + 1)
        log_pmf = _log_comb(n_treated, k) + _log_comb(n_control, m - k) - _log_comb(total, np.array([m]))
        pmf = np.exp(log_pmf)
        srt = np.sort(pmf)
        cum = np.cumsum(srt)
        # P value of table k = sum of the probabilities no larger than its own (relative tolerance
        # as in scipy's fisher_exact)
        idx = np.searchsorted(srt, pmf * (1 + 1e-7), side="right") - 1
        reject = k[cum[idx] <= alpha + 1e-12]
        if reject.size:
            power += float(np.sum(b1[reject] * b0[m - reject]))
    return power


def _normal_n(p1: float, p0: float, alpha: float, power: float, ratio: float = 1.0) -> float:
    """Per-control-arm n, pooled-variance normal approximation (Fleiss, Levin & Paik 2003, 4.14)."""
    za, zb = _z(alpha, power)
    pbar = (p1 * ratio + p0) / (1 + ratio)
    d = abs(p1 - p0)
    num = za * math.sqrt((1 + 1 / ratio) * pbar * (1 - pbar)) + zb * math.sqrt(
        p1 * (1 - p1) / ratio + p0 * (1 - p0)
    )
    return (num / d) ** 2


def sample_size_two_proportions(
    p_treated: float,
    p_control: float,
    alpha: float = 0.05,
    power: float = 0.90,
    dropout: float = 0.0,
    method: Literal["fisher-exact", "normal", "normal-cc", "arcsine"] = "fisher-exact",
    ratio: float = 1.0,
) -> SampleSize:
    """Two-sided test of two proportions with ``ratio`` treated per control participant.
    ``fisher-exact`` searches the smallest control n (treated n = ceil(ratio x n)) whose exact
    Fisher power reaches ``power`` (starting below the normal approximation); ``normal`` = Fleiss
    pooled formula (as rpact's ``getSampleSizeRates(normalApproximation = TRUE)``), each arm
    rounded up; ``normal-cc`` adds Fleiss' continuity correction; ``arcsine`` = Cohen's h."""
    if not (0 < p_treated < 1 and 0 < p_control < 1) or p_treated == p_control:
        raise ValueError("proportions must be in (0, 1) and differ")
    if ratio <= 0:
        raise ValueError("allocation ratio must be positive")
    d = abs(p_treated - p_control)
    n_norm = _normal_n(p_treated, p_control, alpha, power, ratio)
    # Fleiss, Tytun & Ury (1980) continuity correction for unequal allocation
    n_cc = n_norm / 4 * (1 + math.sqrt(1 + 2 * (ratio + 1) / (n_norm * ratio * d))) ** 2
    za, zb = _z(alpha, power)
    h = abs(2 * math.asin(math.sqrt(p_treated)) - 2 * math.asin(math.sqrt(p_control)))
    n_arc = (1 + 1 / ratio) * ((za + zb) / h) ** 2
    alts = {"normal": math.ceil(n_norm), "normal-cc": math.ceil(n_cc), "arcsine": math.ceil(n_arc)}

    def treated_n(n_control: int, exact: float | None = None) -> int:
        return math.ceil((exact if exact is not None else n_control) * ratio - 1e-9)

    def exact_power(n_control: int) -> float:
        return fisher_exact_power(treated_n(n_control), n_control, p_treated, p_control, alpha)

    achieved: float | None
    if method == "fisher-exact":
        n = max(2, int(n_norm))
        while exact_power(n) < power:
            n += 1
            if n > 100_000:  # pragma: no cover - unreachable for proportions that differ
                raise ValueError("no sample size up to 100,000 per arm")
        # walk back in case the start was above the first crossing
        while n > 2 and exact_power(n - 1) >= power:
            n -= 1
        achieved = exact_power(n)
        alts["fisher-exact"] = n
        n_t = treated_n(n)
        how = "exact power of the two-sided Fisher exact test (smallest n reaching the target power)"
    else:
        n = alts[method]
        exact_n = {"normal": n_norm, "normal-cc": n_cc, "arcsine": n_arc}[method]
        n_t = treated_n(n, exact_n)
        achieved = fisher_exact_power(n_t, n, p_treated, p_control, alpha) if n + n_t <= 4000 else None
        how = {
            "normal": "normal approximation, pooled variance under H0 (Fleiss)",
            "normal-cc": "normal approximation with Fleiss continuity correction",
            "arcsine": "arcsine transformation (Cohen's h)",
        }[method]
        how += "; achieved power is the exact Fisher power of these n"
    total = n_t + n
    return SampleSize(
        design=f"two proportions, parallel {ratio:g}:1",
        method=method,
        per_arm=[n_t, n],
        total=total,
        total_with_dropout=_inflate(total, dropout),
        achieved_power=achieved,
        assumptions=[
            f"responder proportion {p_control:.0%} control vs {p_treated:.0%} treated (difference {d:.0%})",
            f"two-sided alpha {alpha}, target power {power:.0%}",
            f"method: {how}",
            f"drop-out {dropout:.0%}: total inflated by 1/(1 - drop-out)"
            if dropout
            else "no drop-out allowance",
            f"allocation {ratio:g} treated per control participant",
            "other methods, control arm: " + ", ".join(f"{k} {v}" for k, v in alts.items()),
        ],
        alternatives={"per_arm": alts},
    )


def sample_size_time_to_event(
    hazard_ratio: float,
    p_event_control: float,
    alpha: float = 0.05,
    power: float = 0.80,
    allocation: float = 0.5,
    dropout: float = 0.0,
    method: Literal["schoenfeld", "freedman"] = "schoenfeld",
) -> SampleSize:
    """Events needed for a log-rank test of ``hazard_ratio`` (Schoenfeld 1983: D = (za+zb)^2 /
    (a(1-a) ln(HR)^2); Freedman 1982: D = (za+zb)^2 (1+HR)^2 / (1-HR)^2 for 1:1), then participants
    = D / P(event), with P(event) averaged over arms from the control event probability over
    follow-up and proportional hazards (S_t = S_c^HR)."""
    if hazard_ratio <= 0 or hazard_ratio == 1:
        raise ValueError("hazard ratio must be positive and not 1")
    if not 0 < p_event_control < 1 or not 0 < allocation < 1:
        raise ValueError("probabilities must be in (0, 1)")
    za, zb = _z(alpha, power)
    if method == "schoenfeld":
        events = (za + zb) ** 2 / (allocation * (1 - allocation) * math.log(hazard_ratio) ** 2)
    else:
        if allocation != 0.5:
            raise ValueError("Freedman's formula here is for 1:1 allocation")
        events = (za + zb) ** 2 * (1 + hazard_ratio) ** 2 / (1 - hazard_ratio) ** 2
    d = math.ceil(events - 1e-9)
    p_event_treated = 1 - (1 - p_event_control) ** hazard_ratio
    p_event = allocation * p_event_treated + (1 - allocation) * p_event_control
    # participants from the unrounded events: rounding the events first would add up to
    # 1 / P(event) participants for nothing
    total = math.ceil(events / p_event - 1e-9)
    n_t = math.ceil(total * allocation - 1e-9)
    n_c = math.ceil(total * (1 - allocation) - 1e-9)
    total = n_t + n_c
    return SampleSize(
        design="time to event, log-rank",
        method=method,
        per_arm=[n_t, n_c],
        total=total,
        total_with_dropout=_inflate(total, dropout),
        achieved_power=float(
            st.norm.cdf(math.sqrt(d * allocation * (1 - allocation)) * abs(math.log(hazard_ratio)) - za)
        )
        if method == "schoenfeld"
        else None,
        events=d,
        assumptions=[
            f"hazard ratio {hazard_ratio} (treated vs control), proportional hazards",
            f"event probability over follow-up: control {p_event_control:.0%}, treated {p_event_treated:.0%} "
            f"(S_treated = S_control^HR); pooled {p_event:.1%}",
            f"two-sided alpha {alpha}, power {power:.0%}, allocation {allocation:.0%} treated",
            f"events: {method.capitalize()} formula -> {d}",
            f"drop-out {dropout:.0%}" if dropout else "no drop-out allowance",
        ],
    )


def event_probability(hazard: float, dropout_hazard: float, accrual: float, followup: float) -> float:
    """P(event observed by the analysis) with exponential event and drop-out hazards (competing
    risks), entry uniform over ``accrual`` and the analysis ``followup`` after the last entry:
    ``h/(h+e) [1 - (exp(-(h+e) f) - exp(-(h+e)(a+f))) / ((h+e) a)]`` (Lachin & Foulkes 1986;
    rpact getSampleSizeSurvival with uniform accrual)."""
    total = hazard + dropout_hazard
    if accrual <= 0:
        return hazard / total * (1 - math.exp(-total * followup))
    tail = (math.exp(-total * followup) - math.exp(-total * (accrual + followup))) / (total * accrual)
    return hazard / total * (1 - tail)


def sample_size_survival_accrual(
    hazard_ratio: float,
    median_control: float,
    accrual: float,
    followup: float,
    dropout_rate: float = 0.0,
    dropout_time: float = 12.0,
    alpha: float = 0.05,
    power: float = 0.80,
    ratio: float = 1.0,
    inflation_factor: float = 1.0,
) -> SampleSize:
    """Log-rank sizing with accrual, follow-up and drop-out: Schoenfeld (1983) events
    ``D = (z_{1-alpha/2} + z_{1-beta})^2 (1 + r)^2 / (r ln(HR)^2)`` (times the group-sequential
    ``inflation_factor``, e.g. ``group_sequential.design(...).inflation_factor``), participants
    ``D / P(event)`` with :func:`event_probability` averaged over the arms by allocation
    (``ratio`` treated per control). Times in one unit (e.g. months); exponential survival with the
    control ``median_control``, drop-out ``dropout_rate`` by ``dropout_time`` in each arm. Agrees
    with rpact ``getSampleSizeSurvival`` (Schoenfeld, uniform accrual)."""
    if hazard_ratio <= 0 or hazard_ratio == 1:
        raise ValueError("hazard ratio must be positive and not 1")
    if not 0 <= dropout_rate < 1 or ratio <= 0 or median_control <= 0 or followup < 0 or accrual < 0:
        raise ValueError("rates in [0, 1), positive ratio and median, non-negative times")
    za, zb = _z(alpha, power)
    events = inflation_factor * (za + zb) ** 2 * (1 + ratio) ** 2 / (ratio * math.log(hazard_ratio) ** 2)
    lam_c = math.log(2) / median_control
    lam_t = lam_c * hazard_ratio
    eta = -math.log(1 - dropout_rate) / dropout_time if dropout_rate > 0 else 0.0
    p_t = event_probability(lam_t, eta, accrual, followup)
    p_c = event_probability(lam_c, eta, accrual, followup)
    p_event = (ratio * p_t + p_c) / (1 + ratio)
    n_exact = events / p_event
    n_t = math.ceil(n_exact * ratio / (1 + ratio) - 1e-9)
    n_c = math.ceil(n_exact / (1 + ratio) - 1e-9)
    d = math.ceil(events - 1e-9)
    return SampleSize(
        design="time to event, log-rank, accrual and follow-up",
        method="schoenfeld",
        per_arm=[n_t, n_c],
        total=n_t + n_c,
        total_with_dropout=n_t + n_c,  # drop-out is in P(event) already
        achieved_power=float(
            st.norm.cdf(
                math.sqrt(d / inflation_factor * ratio) / (1 + ratio) * abs(math.log(hazard_ratio)) - za
            )
        ),
        events=d,
        assumptions=[
            f"hazard ratio {hazard_ratio} (treated vs control), exponential survival, "
            f"control median {median_control}",
            f"uniform accrual over {accrual}, follow-up {followup} after the last entry",
            f"drop-out {dropout_rate:.0%} by time {dropout_time} in each arm (exponential, competing risk)"
            if dropout_rate
            else "no drop-out",
            f"P(event): treated {p_t:.1%}, control {p_c:.1%}, pooled {p_event:.1%}",
            f"two-sided alpha {alpha}, power {power:.0%}, {ratio:g}:1 allocation",
            f"events: Schoenfeld {events:.2f} -> {d}"
            + (
                f" (group-sequential inflation factor {inflation_factor:.4f})"
                if inflation_factor != 1
                else ""
            ),
            f"participants: {events:.2f} / {p_event:.4f} = {n_exact:.2f}",
        ],
        alternatives={"events_exact": events, "participants_exact": n_exact, "p_event": p_event},
    )


def _t_power(n_per_arm: float, difference: float, sd: float, alpha: float) -> float:
    """Power of the two-sided two-sample t test with n per arm (R's ``power.t.test``, strict =
    FALSE: the upper rejection tail only)."""
    df = 2 * (n_per_arm - 1)
    ncp = math.sqrt(n_per_arm / 2) * abs(difference) / sd
    return float(st.nct.sf(st.t.ppf(1 - alpha / 2, df), df, ncp))


def sample_size_repeated_measures(
    difference: float,
    sd: float,
    n_visits: int = 1,
    correlation: float = 0.5,
    alpha: float = 0.05,
    power: float = 0.80,
    dropout: float = 0.0,
    baseline_adjusted: bool = False,
    baseline_correlation: float = 0.5,
) -> SampleSize:
    """Two arms compared on the mean of ``n_visits`` post-baseline measures with compound-symmetry
    correlation ``correlation`` (Diggle, Heagerty, Liang & Zeger 2002, 2nd ed., section 2.4):
    n per arm = 2 (za+zb)^2 sd^2 (1 + (k-1) rho) / (k delta^2). With ``baseline_adjusted`` the
    variance is multiplied by 1 - r^2 for a baseline covariate correlated r (ANCOVA; Borm 2007)."""
    if sd <= 0 or difference == 0 or n_visits < 1 or not -1 < correlation < 1:
        raise ValueError("invalid repeated-measures inputs")
    za, zb = _z(alpha, power)
    var = sd**2 * (1 + (n_visits - 1) * correlation) / n_visits
    if baseline_adjusted:
        var *= 1 - baseline_correlation**2
    sd_mean = math.sqrt(var)
    n_z = 2 * (za + zb) ** 2 * var / difference**2
    # the analysis is a t test (ANCOVA / MMRM contrast), so the n solves the t-test power, as
    # R's power.t.test does (noncentral t, df = 2(n - 1)); the z formula gives the start
    n_exact = float(
        optimize.brentq(
            lambda n_arm: _t_power(n_arm, difference, sd_mean, alpha) - power, 2.0, max(4.0, 4 * n_z + 10)
        )
    )
    n = math.ceil(n_exact - 1e-9)
    total = 2 * n
    return SampleSize(
        design="repeated measures, two arms",
        method="mean over visits, compound symmetry (Diggle et al. 2002), t test"
        + (" + ANCOVA baseline" if baseline_adjusted else ""),
        per_arm=[n, n],
        total=total,
        total_with_dropout=_inflate(total, dropout),
        achieved_power=_t_power(n, difference, sd_mean, alpha),
        assumptions=[
            f"difference in means {difference} with SD {sd} (standardised {abs(difference) / sd:.2f})",
            f"{n_visits} post-baseline visit(s), within-subject correlation {correlation}",
            f"baseline covariate correlation {baseline_correlation} "
            f"(variance x {1 - baseline_correlation**2:.2f})"
            if baseline_adjusted
            else "no baseline adjustment",
            f"two-sided alpha {alpha}, power {power:.0%}",
            f"drop-out {dropout:.0%}" if dropout else "no drop-out allowance",
        ],
    )
