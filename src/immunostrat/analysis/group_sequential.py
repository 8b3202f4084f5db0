"""Group-sequential designs: Lan-DeMets alpha spending, beta-spending futility, repeated CIs.

The test statistic at look ``k`` (information fraction ``t_k``, ``t_K = 1``) is ``Z_k`` with
``(Z_1, ..., Z_K)`` multivariate normal, ``cov(Z_j, Z_k) = sqrt(t_j / t_k)`` (j <= k), mean
``theta sqrt(t_k)`` where ``theta`` is the drift (the expected Z at full information); canonical
joint distribution, Jennison & Turnbull 2000, ch. 3. Crossing probabilities are computed by the
recursive numerical integration of Armitage, McPherson & Rowe (1969) on the score scale
``S_k = Z_k sqrt(t_k)`` (independent increments), with Simpson's rule on a grid of ``GRID``
points per look (Jennison & Turnbull 2000, ch. 19).

Spending functions (Lan & DeMets 1983; Kim & DeMets 1987; as rpact's ``asOF``, ``asP``, ``bsOF``,
``bsP``), for a total ``a`` (alpha, or beta for futility):
- O'Brien-Fleming type: ``a(t) = 2 (1 - Phi(Phi^-1(1 - a/2) / sqrt(t)))``;
- Pocock type: ``a(t) = a log(1 + (e - 1) t)``.

Efficacy bounds ``b_k`` spend ``a(t_k) - a(t_{k-1})`` under ``theta = 0``; one-sided (``sided=1``,
rpact's default, alpha one-sided) or two-sided symmetric (``sided=2``: alpha/2 spent on each side
by the one-sided function, as rpact). Futility bounds (one-sided
designs) spend beta under the drift that gives the design its power, non-binding: the efficacy
bounds ignore them (FDA guidance on adaptive designs 2019 prefers non-binding futility); the drift is
found so that the last futility and efficacy bounds meet (rpact ``getDesignGroupSequential`` with
``typeBetaSpending``, ``bindingFutility = FALSE``). Repeated confidence intervals (Jennison &
Turnbull 1989): ``estimate -/+ b_k * SE_k`` at look ``k``, simultaneous coverage ``1 - 2 alpha``
(one-sided design) or ``1 - alpha`` (two-sided).
Validated against rpact in ``tests/analysis/test_group_sequential.py``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import scipy.stats as st
from scipy import optimize

Spending = Literal["asOF", "asP"]
BetaSpending = Literal["bsOF", "bsP"]
GRID = 401  # Simpson points per look (odd); bounds agree with 1,201 points to 1e-8
_Z_SPAN = 9.0  # grid half-width in standard deviations of S_k around its mean


def spent(t: float | np.ndarray, total: float, kind: str) -> np.ndarray:
    """Cumulative alpha (or beta) spent at information fraction ``t`` (Lan & DeMets 1983)."""
    tt = np.clip(np.asarray(t, dtype=float), 0.0, 1.0)
    if kind in ("asOF", "bsOF"):
        with np.errstate(divide="ignore"):
            out = 2 * (1 - st.norm.cdf(st.norm.ppf(1 - total / 2) / np.sqrt(tt)))
        return np.asarray(np.where(tt > 0, out, 0.0))
    if kind in ("asP", "bsP"):
        return np.asarray(total * np.log(1 + (math.e - 1) * tt))
    raise ValueError(f"unknown spending function {kind!r} (asOF, asP, bsOF, bsP)")


def _simpson(n: int) -> np.ndarray:
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return w / 3


class _Recursion:
    """Sub-densities of S_k on the continuation regions, stage by stage, for one drift."""

    def __init__(self, t: Sequence[float], theta: float) -> None:
        self.t = np.asarray(t, dtype=float)
        self.theta = theta
        self.grid: np.ndarray | None = None  # S_{k-1} points
        self.dens: np.ndarray | None = None  # sub-density times Simpson weights

    def _mean_sd(self, k: int) -> tuple[float, float]:
        prev = self.t[k - 1] if k > 0 else 0.0
        return self.theta * (self.t[k] - prev), math.sqrt(self.t[k] - prev)

    def exit_probs(self, k: int, lower_z: float, upper_z: float) -> tuple[float, float]:
        """P(continue to k, Z_k < lower_z) and P(continue to k, Z_k > upper_z)."""
        mu, sd = self._mean_sd(k)
        sk = math.sqrt(self.t[k])
        if self.grid is None or self.dens is None:
            return float(st.norm.cdf((lower_z * sk - mu) / sd)), float(st.norm.sf((upper_z * sk - mu) / sd))
        lo = float(self.dens @ st.norm.cdf((lower_z * sk - self.grid - mu) / sd))
        hi = float(self.dens @ st.norm.sf((upper_z * sk - self.grid - mu) / sd))
        return lo, hi

    def advance(self, k: int, lower_z: float, upper_z: float) -> None:
        """Condition on continuing at look k (lower_z < Z_k < upper_z)."""
        mu, sd = self._mean_sd(k)
        sk = math.sqrt(self.t[k])
        center = self.theta * self.t[k]
        a = max(lower_z * sk, center - _Z_SPAN * sk)
        b = min(upper_z * sk, center + _Z_SPAN * sk)
        pts = np.linspace(a, b, GRID)
        w = _simpson(GRID) * (b - a) / (GRID - 1)
        if self.grid is None or self.dens is None:
            f = st.norm.pdf((pts - mu) / sd) / sd
        else:
            f = st.norm.pdf((pts[:, None] - self.grid[None, :] - mu) / sd) / sd @ self.dens
        self.grid, self.dens = pts, f * w


@dataclass
class GroupSequentialDesign:
    information_rates: list[float]
    alpha: float
    beta: float
    sided: int
    spending: str
    beta_spending: str | None
    efficacy_z: list[float]
    futility_z: list[float] | None  # non-binding; last equals the last efficacy bound
    alpha_spent: list[float]  # cumulative
    beta_spent: list[float] | None
    stage_levels: list[float]  # one-sided nominal P of each efficacy bound
    drift: float  # expected Z at full information that gives power 1 - beta
    inflation_factor: float  # maximum information / fixed-design information
    power_cumulative: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def repeated_ci(self, estimates: Sequence[float], ses: Sequence[float]) -> list[tuple[float, float]]:
        """Repeated confidence intervals at the looks done so far (Jennison & Turnbull 1989)."""
        return [(e - c * s, e + c * s) for e, s, c in zip(estimates, ses, self.efficacy_z, strict=False)]


def _alpha_spent(t: Sequence[float], alpha: float, spending: str, sided: int) -> np.ndarray:
    # two-sided: alpha / 2 spent on each side by the one-sided function (as rpact, sided = 2)
    return np.asarray(sided * spent(np.asarray(t), alpha / sided, spending))


def cumulative_mean_difference(
    n1: Sequence[int],
    n2: Sequence[int],
    means1: Sequence[float],
    means2: Sequence[float],
    sds1: Sequence[float],
    sds2: Sequence[float],
) -> tuple[list[float], list[float]]:
    """Cumulative difference of means (arm 1 - arm 2) and its standard error at each stage from
    stage-wise summaries: pooled variance over both arms with ``N1 + N2 - 2`` df, within- and
    between-stage sums of squares (as rpact's ``getDataset`` with equal variances)."""
    est, ses = [], []
    for k in range(1, len(n1) + 1):
        ss, means, ns = 0.0, [], []
        for n, m, s in ((n1, means1, sds1), (n2, means2, sds2)):
            nn = np.asarray(n[:k], dtype=float)
            mm = np.asarray(m[:k], dtype=float)
            sd = np.asarray(s[:k], dtype=float)
            mean = float(nn @ mm / nn.sum())
            ss += float(((nn - 1) * sd**2).sum() + (nn * (mm - mean) ** 2).sum())
            means.append(mean)
            ns.append(float(nn.sum()))
        var = ss / (ns[0] + ns[1] - 2)
        est.append(means[0] - means[1])
        ses.append(math.sqrt(var * (1 / ns[0] + 1 / ns[1])))
    return est, ses


def _efficacy_bounds(t: Sequence[float], alpha: float, spending: str, sided: int) -> list[float]:
    cum = _alpha_spent(t, alpha, spending, sided)
    rec = _Recursion(t, 0.0)
    bounds: list[float] = []
    for k in range(len(t)):
        target = float(cum[k] - (cum[k - 1] if k else 0.0))

        def gap(c: float, k: int = k, target: float = target) -> float:
            lo, hi = rec.exit_probs(k, -c if sided == 2 else -math.inf, c)
            return (hi + (lo if sided == 2 else 0.0)) - target

        c = optimize.brentq(gap, 0.0, 40.0, xtol=1e-13) if target > 0 else math.inf
        bounds.append(float(c))
        rec.advance(k, -c if sided == 2 else -math.inf, c)
    return bounds


def _power(
    t: Sequence[float], bounds: list[float], theta: float, lower: Sequence[float] | None
) -> list[float]:
    rec = _Recursion(t, theta)
    cum, out = 0.0, []
    for k, b in enumerate(bounds):
        a = -math.inf if lower is None else lower[k]
        _, hi = rec.exit_probs(k, a, b)
        cum += hi
        out.append(cum)
        rec.advance(k, a, b)
    return out


def _futility_bounds(
    t: Sequence[float], efficacy: list[float], beta: float, kind: str, theta: float
) -> tuple[list[float], list[float]]:
    """Futility bounds of looks 1..K-1 spending beta under drift ``theta`` (the last look's bound
    is the efficacy bound); a bound that would pass the efficacy bound is set to it."""
    cum = spent(np.asarray(t), beta, kind)
    rec = _Recursion(t, theta)
    out: list[float] = []
    for k in range(len(t) - 1):
        target = float(cum[k] - (cum[k - 1] if k else 0.0))

        def gap(a: float, k: int = k, target: float = target) -> float:
            lo, _ = rec.exit_probs(k, a, efficacy[k])
            return lo - target

        a = efficacy[k] if gap(efficacy[k]) <= 0 else optimize.brentq(gap, -40.0, efficacy[k], xtol=1e-13)
        out.append(float(a))
        rec.advance(k, a, efficacy[k])
    return [*out, efficacy[-1]], [float(c) for c in cum]


def design(
    information_rates: Sequence[float],
    alpha: float = 0.025,
    beta: float = 0.2,
    sided: int = 1,
    spending: Spending = "asOF",
    beta_spending: BetaSpending | None = None,
) -> GroupSequentialDesign:
    """A group-sequential design with Lan-DeMets ``spending`` efficacy bounds and, optionally,
    non-binding ``beta_spending`` futility bounds (one-sided designs only)."""
    t = [float(x) for x in information_rates]
    if not t or any(b <= a for a, b in itertools.pairwise(t)) or t[0] <= 0 or abs(t[-1] - 1) > 1e-12:
        raise ValueError("information rates must increase strictly and end at 1")
    if sided not in (1, 2):
        raise ValueError("sided is 1 or 2")
    if beta_spending and sided == 2:
        raise ValueError("futility bounds here are for one-sided designs")
    eff = _efficacy_bounds(t, alpha, spending, sided)
    z_fixed = st.norm.ppf(1 - alpha / sided) + st.norm.ppf(1 - beta)
    fut: list[float] | None = None
    beta_spent: list[float] | None = None
    if beta_spending is None:
        theta = optimize.brentq(lambda th: _power(t, eff, th, None)[-1] - (1 - beta), 0.0, 20.0, xtol=1e-12)
        power = _power(t, eff, theta, None)
    else:

        def power_gap(th: float) -> float:
            f, _ = _futility_bounds(t, eff, beta, beta_spending, th)
            return _power(t, eff, th, f)[-1] - (1 - beta)

        theta = optimize.brentq(power_gap, z_fixed * 0.8, z_fixed * 1.6, xtol=1e-12)
        fut, beta_spent = _futility_bounds(t, eff, beta, beta_spending, theta)
        power = _power(t, eff, theta, fut)
    cum_alpha = [float(x) for x in _alpha_spent(t, alpha, spending, sided)]
    return GroupSequentialDesign(
        information_rates=t,
        alpha=alpha,
        beta=beta,
        sided=sided,
        spending=spending,
        beta_spending=beta_spending,
        efficacy_z=eff,
        futility_z=fut,
        alpha_spent=cum_alpha,
        beta_spent=beta_spent,
        stage_levels=[float(st.norm.sf(c)) for c in eff],
        drift=float(theta),
        inflation_factor=float((theta / z_fixed) ** 2),
        power_cumulative=power,
    )
