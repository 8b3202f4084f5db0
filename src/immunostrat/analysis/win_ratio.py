"""Win ratio for a hierarchy of outcomes (Pocock et al. 2012, Eur Heart J 33:176).

Every treated participant is compared with every control participant on the first outcome of the
hierarchy; a tie (or a comparison the data cannot decide) passes to the next outcome. Outcomes:

- ``time``: an event time with censoring (e.g. death by day 28): the participant whose event comes
  first loses, when the other is known to be event-free at that time (event later, or censored
  later); equal event times, or a censoring before the other's event, decide nothing;
- ``binary``: 1 beats 0 (``higher_better``) or 0 beats 1;
- ``ordinal``: a rank, lower better (e.g. infection status resolution < ... < superinfection).
A missing value decides nothing on that outcome.

``win ratio = wins / losses`` of the treated arm over all ``n_T x n_C`` pairs; ``net benefit =
(wins - losses) / pairs`` (Buyse 2010). Interval: the two-sample U-statistic variance of the win and
loss proportions (Hoeffding decomposition; empirical variance components with ``n - 1``, as DeLong
et al. 1988 for the AUC; the large-sample form of Bebu & Lachin 2016 and Dong et al. 2016), then the
delta method on ``log(WR)``: ``var = var(W)/W^2 + var(L)/L^2 - 2 cov(W, L)/(W L)``. The
Finkelstein-Schoenfeld (1999) test is given beside it: each participant's score is wins minus
losses against everyone else (pooled), its permutation variance ``n_T n_C / (N (N - 1)) sum U^2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.stats as st

from immunostrat.analysis.stats import Estimate, NotEstimable


@dataclass(frozen=True)
class Outcome:
    """One level of the hierarchy. ``time``: ``column`` is the time, ``event`` the event flag;
    ``binary``/``ordinal``: ``column`` holds the value (ordinal: rank, lower better)."""

    label: str
    kind: Literal["time", "binary", "ordinal"]
    column: str
    event: str | None = None
    higher_better: bool = True


def _compare(a: pd.DataFrame, b: pd.DataFrame, o: Outcome) -> np.ndarray:
    """+1 where a (rows) beats b (columns), -1 where it loses, 0 undecided."""
    if o.kind == "time":
        assert o.event is not None
        ta = a[o.column].to_numpy(float)[:, None]
        tb = b[o.column].to_numpy(float)[None, :]
        ea = a[o.event].to_numpy(float)[:, None] == 1
        eb = b[o.event].to_numpy(float)[None, :] == 1
        with np.errstate(invalid="ignore"):
            a_loses = ea & (ta < tb)
            b_loses = eb & (tb < ta)
        return np.asarray(b_loses.astype(int) - a_loses.astype(int))
    va = a[o.column].to_numpy(float)[:, None]
    vb = b[o.column].to_numpy(float)[None, :]
    with np.errstate(invalid="ignore"):
        sign = np.sign(va - vb)
    sign = np.where(np.isnan(sign), 0.0, sign)
    if o.kind == "ordinal" or not o.higher_better:
        sign = -sign  # ordinal ranks: lower is better
    return np.asarray(sign.astype(int))


def pairwise(a: pd.DataFrame, b: pd.DataFrame, hierarchy: Sequence[Outcome]) -> tuple[np.ndarray, np.ndarray]:
    """Result of every (a, b) pair (+1/-1/0) and the hierarchy level that decided it (-1: tie)."""
    result = np.zeros((len(a), len(b)), dtype=int)
    level = np.full((len(a), len(b)), -1, dtype=int)
    for k, o in enumerate(hierarchy):
        open_ = result == 0
        c = _compare(a, b, o)
        decided = open_ & (c != 0)
        result[decided] = c[decided]
        level[decided] = k
    return result, level


def win_ratio(
    data: pd.DataFrame, hierarchy: Sequence[Outcome], treatment: str = "treated", conf: float = 0.95
) -> Estimate:
    """Win ratio of treated (``treatment`` == 1) over control, with its CI, the Finkelstein-
    Schoenfeld P value, net benefit and the wins/losses decided at each level of ``hierarchy``."""
    if not hierarchy:
        raise ValueError("the hierarchy needs at least one outcome")
    t = data[data[treatment] == 1].reset_index(drop=True)
    c = data[data[treatment] == 0].reset_index(drop=True)
    n1, n2 = len(t), len(c)
    if n1 < 2 or n2 < 2:
        raise NotEstimable("fewer than two participants in an arm")
    res, level = pairwise(t, c, hierarchy)
    w = (res == 1).astype(float)
    lo = (res == -1).astype(float)
    pw, pl = float(w.mean()), float(lo.mean())
    if pw == 0 or pl == 0:
        raise NotEstimable("no wins or no losses: the win ratio is 0 or infinite")
    # U-statistic variance components (treated rows: mean over controls; control columns: over treated)
    aw, al = w.mean(axis=1), lo.mean(axis=1)
    cw, cl = w.mean(axis=0), lo.mean(axis=0)

    def cov(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.sum((x - x.mean()) * (y - y.mean())) / (len(x) - 1))

    var_w = cov(aw, aw) / n1 + cov(cw, cw) / n2
    var_l = cov(al, al) / n1 + cov(cl, cl) / n2
    cov_wl = cov(aw, al) / n1 + cov(cw, cl) / n2
    wr = pw / pl
    se_log = math.sqrt(var_w / pw**2 + var_l / pl**2 - 2 * cov_wl / (pw * pl))
    z = float(st.norm.ppf(0.5 + conf / 2))
    p = float(2 * st.norm.sf(abs(math.log(wr)) / se_log))
    nb = pw - pl
    se_nb = math.sqrt(var_w + var_l - 2 * cov_wl)
    # Finkelstein-Schoenfeld: pooled scores
    pooled = pd.concat([t, c], ignore_index=True)
    allres, _ = pairwise(pooled, pooled, hierarchy)
    u = allres.sum(axis=1).astype(float)
    n = n1 + n2
    stat = float(u[:n1].sum())
    var_fs = n1 * n2 / (n * (n - 1)) * float(np.sum(u**2))
    p_fs = float(2 * st.norm.sf(abs(stat) / math.sqrt(var_fs))) if var_fs > 0 else float("nan")
    by_level = [
        {
            "outcome": o.label,
            "treated_wins": int(((res == 1) & (level == k)).sum()),
            "control_wins": int(((res == -1) & (level == k)).sum()),
        }
        for k, o in enumerate(hierarchy)
    ]
    details: dict[str, Any] = {
        "pairs": n1 * n2,
        "wins": int(w.sum()),
        "losses": int(lo.sum()),
        "ties": int(n1 * n2 - w.sum() - lo.sum()),
        "se_log_win_ratio": se_log,
        "net_benefit": nb,
        "net_benefit_ci": [nb - z * se_nb, nb + z * se_nb],
        "finkelstein_schoenfeld": {"statistic": stat, "variance": var_fs, "p_value": p_fs},
        "by_level": by_level,
        "n": [n1, n2],
    }
    return Estimate(
        measure="win ratio (treated vs control)",
        estimate=wr,
        ci_low=wr * math.exp(-z * se_log),
        ci_high=wr * math.exp(z * se_log),
        p_value=p,
        method=(
            "win ratio (Pocock 2012): "
            + " -> ".join(o.label for o in hierarchy)
            + "; U-statistic variance of log WR (Dong 2016 / Bebu & Lachin 2016)"
        ),
        conf_level=conf,
        details=details,
    )
