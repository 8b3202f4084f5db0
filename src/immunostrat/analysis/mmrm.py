"""Mixed model for repeated measures (MMRM) fitted by REML, on numpy/scipy only.

Model (Mallinckrodt et al. 2008; the R ``mmrm`` package's "Details of the model fitting"):
for participant ``i`` seen at visits ``S_i``, ``y_i ~ N(X_i beta, Sigma[S_i, S_i])``, participants
independent, ``Sigma`` (visits x visits) one of

- ``unstructured`` (default): any positive-definite matrix, parameterized by its Cholesky factor
  with log diagonal (T(T+1)/2 parameters; nlme ``corSymm`` + ``varIdent``);
- ``toeplitz`` / ``toeplitz_heterogeneous``: a stationary correlation ``rho_|s-t|`` of any shape,
  parameterized by its partial autocorrelations (Durbin-Levinson), with one variance or one per
  visit (nlme ``corARMA(p = T-1)``, + ``varIdent``);
- ``ar1`` / ``ar1_heterogeneous``: ``rho^|s-t|`` (nlme ``corAR1``, + ``varIdent``);
- ``cs`` / ``cs_heterogeneous``: one correlation between any two visits (nlme ``corCompSymm``,
  + ``varIdent``). Visits are the ordered distinct visit values (AR(1) and Toeplitz use their rank).

REML (Patterson & Thompson 1971; Harville 1977): with ``V`` block diagonal,
``-2 l_R(theta) = sum_i log|Sigma_i| + log|X'V^-1 X| + r'V^-1 r + (N - p) log(2 pi)``,
``beta_hat = Phi X'V^-1 y``, ``Phi = (X'V^-1 X)^-1``, ``r = y - X beta_hat``. Derivatives
(``P = V^-1 - V^-1 X Phi X'V^-1``, ``Sigma_h = dV/dtheta_h``; Harville 1977, Searle et al. 1992
ch. 6): ``d(-2 l_R)/dtheta_h = tr(P Sigma_h) - y'P Sigma_h P y`` and
``d2(-2 l_R)/dtheta_h dtheta_j = -tr(P Sigma_j P Sigma_h) + tr(P Sigma_hj)
+ 2 y'P Sigma_j P Sigma_h P y - y'P Sigma_hj P y`` (observed), expectation ``tr(P Sigma_h P Sigma_j)``.
Participants with the same visit pattern share ``Sigma_i``, so every sum over participants is taken
once per pattern on precomputed cross-products; a fit costs the same for 100 or 100,000 participants.
``dSigma/dtheta`` is exact (complex-step differentiation of the structure, Squire & Trapp 1998);
second derivatives are central differences of it. The fit is a trust-region Newton method with the
analytic gradient and observed Hessian (scipy ``trust-exact``); it is reported converged only when
the largest gradient element is below ``GRADIENT_TOL`` and the Hessian is positive definite,
otherwise :class:`~immunostrat.analysis.stats.NotEstimable` is raised with the reason.

Inference for a contrast ``l'beta`` (estimate ``l'beta_hat``):

- Satterthwaite (Satterthwaite 1946; Giesbrecht & Burns 1985; as lmerTest and ``mmrm``):
  ``v = l'Phi l``, ``g_h = dv/dtheta_h = l'Phi X'V^-1 Sigma_h V^-1 X Phi l``,
  ``df = 2 v^2 / (g'W g)``, ``W`` = inverse observed information of theta. F tests of ``q`` rows
  ``L``: ``F = (L beta)'(L Phi L')^-1 (L beta) / q``, df from the eigen-decomposition of
  ``L Phi L'`` as lmerTest (Fai & Cornelius 1996): ``E = sum nu_m / (nu_m - 2)``,
  ``df = 2E / (E - q)``.
- Kenward-Roger (Kenward & Roger 1997), with ``W`` the inverse expected information (as pbkrtest)
  and the second derivatives of Sigma omitted (the "linear" form, as pbkrtest for variance
  components, SAS for linear covariance parameters and ``mmrm``'s "Kenward-Roger-Linear"; with that
  choice the result does not depend on how theta is parameterized): ``P_h = -X'V^-1 Sigma_h V^-1 X``,
  ``Q_hj = X'V^-1 Sigma_h V^-1 Sigma_j V^-1 X``,
  ``Phi_A = Phi + 2 Phi {sum_hj W_hj (Q_hj - P_h Phi P_j)} Phi``; scaled F with ``lambda`` and
  ``m`` from the moment matching of K&R 1997 section 4 (for one row: ``m = 2 / (a'W a)``,
  ``a_h = l'Phi P_h Phi l / l'Phi l``, ``lambda = 1``).

Least-squares means (Searle, Speed & Milliken 1980) average the model over a reference grid:
numeric covariates at their mean over the analysed rows, other factors with equal weights (the
emmeans default), so the treated-minus-control difference at a visit is the usual MMRM contrast.
Validated against R (nlme ``gls``, lme4 + pbkrtest / lmerTest, emmeans) in
``tests/analysis/test_mmrm.py`` on the fixtures written by ``scripts/r_reference/mmrm_reference.R``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats as st
from scipy import linalg, optimize

from immunostrat.analysis.stats import Estimate, NotEstimable

STRUCTURES = (
    "unstructured",
    "toeplitz_heterogeneous",
    "toeplitz",
    "ar1_heterogeneous",
    "ar1",
    "cs_heterogeneous",
    "cs",
)
ALIASES = {
    "us": "unstructured",
    "toeph": "toeplitz_heterogeneous",
    "toep": "toeplitz",
    "ar1h": "ar1_heterogeneous",
    "csh": "cs_heterogeneous",
    "compound_symmetry": "cs",
}
DF_METHODS = ("satterthwaite", "kenward-roger")
# converged when max |d(-2 l_R)/d theta| is below this (the deviance is O(N); 1e-6 leaves the
# estimates exact to far beyond the 1e-4 the reports print)
GRADIENT_TOL = 1e-6
_COMPLEX_STEP = 1e-30
_FD_STEP = 1e-5


def structure_name(name: str) -> str:
    """The canonical covariance-structure name for ``name`` or an alias (us, toeph, ar1h, csh...)."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in STRUCTURES:
        raise ValueError(f"unknown covariance structure {name!r}; one of {', '.join(STRUCTURES)}")
    return key


# --------------------------------------------------------------------------------------------
# covariance structures: theta (unconstrained) -> Sigma; written with + - * / exp tanh only, so
# complex-step differentiation is exact


def n_theta(structure: str, n_visits: int) -> int:
    t = n_visits
    return {
        "unstructured": t * (t + 1) // 2,
        "toeplitz_heterogeneous": t + t - 1,
        "toeplitz": 1 + t - 1,
        "ar1_heterogeneous": t + 1,
        "ar1": 2,
        "cs_heterogeneous": t + 1,
        "cs": 2,
    }[structure]


def _pacf_to_acf(pacf: Sequence[Any]) -> list[Any]:
    """Autocorrelations rho_1..rho_k from partial autocorrelations (Durbin-Levinson recursion)."""
    rho: list[Any] = []
    phi: list[Any] = []
    for k, pk in enumerate(pacf, start=1):
        if k == 1:
            rho.append(pk)
            phi = [pk]
            continue
        s1 = sum(phi[j] * rho[k - 2 - j] for j in range(k - 1))  # sum phi_{k-1,j} rho_{k-j}
        s2 = sum(phi[j] * rho[j] for j in range(k - 1))  # sum phi_{k-1,j} rho_j
        rho.append(s1 + pk * (1 - s2))
        phi = [phi[j] - pk * phi[k - 2 - j] for j in range(k - 1)] + [pk]
    return rho


def sigma_of(structure: str, theta: np.ndarray, n_visits: int) -> np.ndarray:
    """The visits x visits covariance for unconstrained ``theta`` (real or complex)."""
    t = n_visits
    dtype = np.result_type(theta.dtype, np.float64)
    if structure == "unstructured":
        low = np.zeros((t, t), dtype=dtype)
        rows, cols = np.tril_indices(t)
        vals = theta.astype(dtype).copy()
        diag = rows == cols
        vals[diag] = np.exp(vals[diag])
        low[rows, cols] = vals
        return np.asarray(low @ low.T)
    het = structure.endswith("_heterogeneous")
    sd = np.exp(theta[:t]) if het else np.full(t, np.exp(theta[0]), dtype=dtype)
    rest = theta[t:] if het else theta[1:]
    lag = np.abs(np.subtract.outer(np.arange(t), np.arange(t)))
    if structure.startswith("toeplitz"):
        acf = [np.ones((), dtype=dtype), *_pacf_to_acf([np.tanh(z) for z in rest])]
        corr = np.empty((t, t), dtype=dtype)
        for k in range(t):
            corr[lag == k] = acf[k]
    elif structure.startswith("ar1"):
        rho = np.tanh(rest[0])
        corr = np.ones((t, t), dtype=dtype)
        for k in range(1, t):
            corr[lag == k] = rho**k
    else:  # compound symmetry: rho in (-1/(T-1), 1), 0 at theta 0
        e = np.exp(rest[0])
        rho = (e - 1) / (e + t - 1)
        corr = np.where(lag == 0, np.ones((), dtype=dtype), rho).astype(dtype)
    return np.asarray(np.outer(sd, sd) * corr)


def _start(structure: str, cov: np.ndarray) -> np.ndarray:
    """Starting theta from a moment estimate of Sigma (pairwise residual covariance)."""
    t = cov.shape[0]
    sd = np.sqrt(np.maximum(np.diag(cov), 1e-8))
    corr = cov / np.outer(sd, sd)
    off = corr[~np.eye(t, dtype=bool)]
    r1 = float(np.clip(np.nanmean(np.diag(corr, 1)) if t > 1 else 0.0, -0.9, 0.9))
    if structure == "unstructured":
        c = cov.copy()
        w, v = np.linalg.eigh(c)
        c = (v * np.maximum(w, 0.05 * max(w.max(), 1e-8))) @ v.T
        low = np.linalg.cholesky(c)
        rows, cols = np.tril_indices(t)
        th = low[rows, cols].copy()
        th[rows == cols] = np.log(th[rows == cols])
        return np.asarray(th, dtype=float)
    het = structure.endswith("_heterogeneous")
    head = np.log(sd) if het else np.array([np.log(np.sqrt(np.mean(sd**2)))])
    if structure.startswith("toeplitz"):
        rest = np.r_[np.arctanh(r1), np.zeros(t - 2)]
    elif structure.startswith("ar1"):
        rest = np.array([np.arctanh(r1)])
    else:
        rho = float(np.clip(np.nanmean(off) if off.size else 0.0, -0.5 / max(t - 1, 1), 0.9))
        rest = np.array([np.log((1 + rho * (t - 1)) / (1 - rho))])
    return np.asarray(np.r_[head, rest], dtype=float)


def _unstructured_parts(theta: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigma = L L' with L lower triangular (log diagonal): L, dL/dtheta (k, T, T) and which
    parameters are diagonal."""
    rows, cols = np.tril_indices(t)
    diag = rows == cols
    low = np.zeros((t, t))
    vals = theta.copy()
    vals[diag] = np.exp(vals[diag])
    low[rows, cols] = vals
    dl = np.zeros((theta.size, t, t))
    dl[np.arange(theta.size), rows, cols] = np.where(diag, vals, 1.0)
    return low, dl, diag


def _dsigma(structure: str, theta: np.ndarray, t: int) -> np.ndarray:
    """dSigma/dtheta_h, shape (k, T, T): analytic for unstructured (dL L' + L dL'), by complex step
    (exact to rounding) for the other structures."""
    if structure == "unstructured":
        low, dl, _ = _unstructured_parts(theta, t)
        a = dl @ low.T
        return np.asarray(a + a.transpose(0, 2, 1))
    k = theta.size
    out = np.empty((k, t, t))
    for h in range(k):
        z = theta.astype(complex)
        z[h] += 1j * _COMPLEX_STEP
        out[h] = sigma_of(structure, z, t).imag / _COMPLEX_STEP
    return out


def _d2sigma(structure: str, theta: np.ndarray, t: int) -> np.ndarray:
    """d2Sigma/dtheta_h dtheta_j, shape (k, k, T, T): central differences of the exact first
    derivative (error O(step^2) ~ 1e-10); analytic for unstructured."""
    k = theta.size
    if structure == "unstructured":
        low, dl, diag = _unstructured_parts(theta, t)
        cross = np.einsum("iab,jcb->ijac", dl, dl)  # dL_i dL_j'
        out2 = cross + cross.transpose(0, 1, 3, 2)
        for i in np.flatnonzero(diag):  # d2L/dtheta_i^2 = dL/dtheta_i for a log-diagonal element
            a = dl[i] @ low.T
            out2[i, i] += a + a.T
        return np.asarray(out2)
    out = np.empty((k, k, t, t))
    for j in range(k):
        e = np.zeros(k)
        e[j] = _FD_STEP
        out[:, j] = (_dsigma(structure, theta + e, t) - _dsigma(structure, theta - e, t)) / (2 * _FD_STEP)
    return 0.5 * (out + out.transpose(1, 0, 2, 3))


# --------------------------------------------------------------------------------------------
# data in visit patterns


@dataclass
class _Pattern:
    visits: np.ndarray  # visit indices observed
    n: int  # participants with this pattern
    xx: np.ndarray  # sum_i x_i(m,p) (x) x_i(k,q) -> (m, k, p, q)
    xy: np.ndarray  # (m, k, p): sum_i X_i[m, p] y_i[k]
    yy: np.ndarray  # (m, k): sum_i y_i y_i'


def _patterns(y: np.ndarray, x: np.ndarray, subject: np.ndarray, visit: np.ndarray) -> list[_Pattern]:
    order = np.lexsort((visit, subject))
    y, x, subject, visit = y[order], x[order], subject[order], visit[order]
    _, starts = np.unique(subject, return_index=True)
    bounds = [*list(starts), len(subject)]
    groups: dict[tuple[int, ...], list[tuple[int, int]]] = {}
    for a, b in itertools.pairwise(bounds):
        groups.setdefault(tuple(int(v) for v in visit[a:b]), []).append((a, b))
    out = []
    for key, spans in groups.items():
        idx = np.concatenate([np.arange(a, b) for a, b in spans])
        m = len(key)
        xs = x[idx].reshape(len(spans), m, -1)
        ys = y[idx].reshape(len(spans), m)
        out.append(
            _Pattern(
                visits=np.array(key),
                n=len(spans),
                xx=np.einsum("nmp,nkq->mkpq", xs, xs),
                xy=np.einsum("nmp,nk->mkp", xs, ys),
                yy=ys.T @ ys,
            )
        )
    return out


@dataclass
class _Evaluation:
    """REML pieces at one theta."""

    neg2: float
    beta: np.ndarray
    phi: np.ndarray
    vinv: list[np.ndarray]
    rr: list[np.ndarray]  # sum_i r_i r_i' per pattern
    xr: list[np.ndarray]  # (m, k, p): sum_i X_i[m,p] r_i[k]


def _evaluate(patterns: list[_Pattern], sigma: np.ndarray, p: int) -> _Evaluation:
    xtvx = np.zeros((p, p))
    xtvy = np.zeros(p)
    logdet = 0.0
    vinv = []
    for pat in patterns:
        s = sigma[np.ix_(pat.visits, pat.visits)]
        c, low = linalg.cho_factor(s, lower=True)
        vi = linalg.cho_solve((c, low), np.eye(len(pat.visits)))
        vinv.append(vi)
        logdet += pat.n * 2.0 * float(np.sum(np.log(np.diag(c))))
        xtvx += np.einsum("mk,mkpq->pq", vi, pat.xx)
        xtvy += np.einsum("mk,mkp->p", vi, pat.xy)
    cx = linalg.cho_factor(xtvx, lower=True)
    beta = linalg.cho_solve(cx, xtvy)
    phi = linalg.cho_solve(cx, np.eye(p))
    quad = 0.0
    rr, xr = [], []
    for pat, vi in zip(patterns, vinv, strict=True):
        xrb = np.einsum("mkpq,q->mkp", pat.xx, beta)  # sum X_i[m,p] (X_i beta)[k]
        xb = np.einsum("mkpq,p,q->mk", pat.xx, beta, beta)  # sum (X beta)(X beta)'
        xyb = np.einsum("mkp,p->mk", pat.xy, beta)  # sum (X_i beta)[m] y_i[k]
        r2 = pat.yy - xyb - xyb.T + xb
        rr.append(r2)
        xr.append(pat.xy - xrb)
        quad += float(np.sum(vi * r2))
    neg2 = logdet + 2.0 * float(np.sum(np.log(np.diag(cx[0])))) + quad
    return _Evaluation(neg2=neg2, beta=beta, phi=phi, vinv=vinv, rr=rr, xr=xr)


def _gradient(patterns: list[_Pattern], ev: _Evaluation, ds: np.ndarray) -> np.ndarray:
    """d(-2 l_R)/dtheta = tr(P Sigma_h) - r'V^-1 Sigma_h V^-1 r."""
    k = ds.shape[0]
    tr = np.zeros(k)
    xax = np.zeros((k, *ev.phi.shape))
    quad = np.zeros(k)
    for pat, vi, r2 in zip(patterns, ev.vinv, ev.rr, strict=True):
        d = ds[:, pat.visits][:, :, pat.visits]
        a = vi @ d @ vi  # (k, m, m)
        tr += pat.n * np.einsum("mk,hkm->h", vi, d)
        xax += _xax(a, pat.xx)
        quad += np.einsum("hmk,mk->h", a, r2)
    return np.asarray(tr - np.einsum("pq,hqp->h", ev.phi, xax) - quad)


@dataclass
class _Information:
    observed: np.ndarray  # Hessian of -2 l_R
    expected: np.ndarray  # expectation of it: tr(P Sigma_h P Sigma_j)
    p_mats: np.ndarray  # KR P_h = -X'V^-1 Sigma_h V^-1 X, (k, p, p)
    q_mats: np.ndarray  # KR Q_hj, (k, k, p, p)


def _xax(a: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """sum_i X_i' A X_i for a stack of (m, m) matrices ``a`` (..., m, m) -> (..., p, p), as one
    matrix product (BLAS) over the pattern's cross-products ``xx`` (m, m, p, p)."""
    m, _, p, _ = xx.shape
    lead = a.shape[:-2]
    return np.asarray((a.reshape(-1, m * m) @ xx.reshape(m * m, p * p)).reshape(*lead, p, p))


def _information(
    patterns: list[_Pattern], ev: _Evaluation, ds: np.ndarray, d2s: np.ndarray, kr: bool = True
) -> _Information:
    """Observed and expected information; ``kr`` also accumulates Kenward-Roger's Q_hj (the costly
    part, needed once at the optimum, not at every Newton step)."""
    k = ds.shape[0]
    p = ev.phi.shape[0]
    tr_vv = np.zeros((k, k))
    tr_v2 = np.zeros((k, k))
    pm = np.zeros((k, p, p))
    qm = np.zeros((k, k, p, p) if kr else (0, 0, p, p))
    tr_phi_q = np.zeros((k, k))  # tr(Phi Q_hj)
    tr_phi_r = np.zeros((k, k))  # tr(Phi X'V^-1 Sigma_hj V^-1 X)
    b = np.zeros((k, p))  # X'V^-1 Sigma_h V^-1 r
    rq2 = np.zeros((k, k))  # r'V^-1 Sigma_h V^-1 Sigma_j V^-1 r
    rqhj = np.zeros((k, k))  # r'V^-1 Sigma_hj V^-1 r
    for pat, vi, r2, xr in zip(patterns, ev.vinv, ev.rr, ev.xr, strict=True):
        ix = pat.visits
        m = len(ix)
        d = ds[:, ix][:, :, ix]
        dd = d2s[:, :, ix][:, :, :, ix]
        vd = vi @ d  # V^-1 Sigma_h
        a = vd @ vi  # V^-1 Sigma_h V^-1
        tr_vv += pat.n * np.einsum("hab,jba->hj", vd, vd)
        tr_v2 += pat.n * np.einsum("ab,hjba->hj", vi, dd)
        pm -= _xax(a, pat.xx)
        # V^-1 S_h V^-1 S_j V^-1 = (V^-1 S_h)(V^-1 S_j V^-1)
        avd = (vd.reshape(k, 1, m, m) @ a.reshape(1, k, m, m)).reshape(k, k, m, m)
        if kr:
            qm += _xax(avd, pat.xx)
        # tr(Phi X_i'A X_i) summed = sum(A * C'), C = sum_i X_i Phi X_i' (m x m)
        c = np.einsum("mkpq,pq->km", pat.xx, ev.phi).reshape(m * m)
        tr_phi_q += (avd.reshape(k * k, m * m) @ c).reshape(k, k)
        e = vi @ dd @ vi
        tr_phi_r += (e.reshape(k * k, m * m) @ c).reshape(k, k)
        b += (a.reshape(k, m * m) @ xr.reshape(m * m, p)).reshape(k, p)
        rq2 += (avd.reshape(k * k, m * m) @ r2.reshape(m * m)).reshape(k, k)
        rqhj += (e.reshape(k * k, m * m) @ r2.reshape(m * m)).reshape(k, k)
    phi = ev.phi
    phip = phi @ pm  # (k, p, p)
    tr_pp = phip.reshape(k, p * p) @ phip.transpose(0, 2, 1).reshape(k, p * p).T
    tr_psps = tr_vv - 2 * tr_phi_q + tr_pp  # tr(P S_h P S_j)
    tr_pshj = tr_v2 - tr_phi_r
    ypsps = rq2 - b @ phi @ b.T  # y'P S_j P S_h P y
    observed = -tr_psps + tr_pshj + 2 * ypsps - rqhj
    return _Information(
        observed=0.5 * (observed + observed.T),
        expected=0.5 * (tr_psps + tr_psps.T),
        p_mats=pm,
        q_mats=qm,
    )


# --------------------------------------------------------------------------------------------
# the fit


@dataclass
class Contrast:
    """One contrast ``l'beta`` with its inference."""

    label: str
    estimate: float
    se: float
    df: float
    t: float
    p_value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in self.__dict__.items()
        }


@dataclass
class FTest:
    term: str
    f: float
    num_df: int
    den_df: float
    p_value: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class MMRMFit:
    """A converged REML fit; contrasts and tests on it use ``df_method``."""

    structure: str
    df_method: str
    formula: str
    visits: list[Any]
    coef_names: list[str]
    beta: np.ndarray
    phi: np.ndarray  # unadjusted cov(beta_hat)
    theta: np.ndarray
    sigma: np.ndarray
    reml_loglik: float  # -1/2 (-2 l_R) including (N - p) log(2 pi)
    n_subjects: int
    n_obs: int
    convergence: dict[str, Any]
    info: _Information
    design_info: Any
    data_means: dict[str, float]
    factor_levels: dict[str, list[Any]]
    visit_col: str
    treatment: str
    conf: float = 0.95
    _w_obs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    _w_exp: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    _phi_a: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def __post_init__(self) -> None:
        # W: covariance of theta_hat = inverse information of l_R = 2 * inverse Hessian of -2 l_R
        self._w_obs = 2.0 * np.linalg.inv(self.info.observed)
        self._w_exp = 2.0 * np.linalg.inv(self.info.expected)
        w = self._w_exp
        pm, qm, phi = self.info.p_mats, self.info.q_mats, self.phi
        k, p = pm.shape[0], phi.shape[0]
        wp = np.tensordot(w, pm, axes=(1, 0))  # sum_j W_hj P_j, (k, p, p)
        adj = (w.reshape(1, -1) @ qm.reshape(k * k, p * p)).reshape(p, p) - np.sum(pm @ phi @ wp, axis=0)
        self._phi_a = phi + 2 * phi @ adj @ phi

    @property
    def cov_beta(self) -> np.ndarray:
        """cov(beta_hat) used for inference: Kenward-Roger's adjusted Phi_A, or Phi."""
        return self._phi_a if self.df_method == "kenward-roger" else self.phi

    def _grad_v(self, l_vec: np.ndarray) -> np.ndarray:
        # d(l'Phi l)/dtheta_h = -l'Phi P_h Phi l
        u = self.phi @ l_vec
        return np.asarray(-np.einsum("p,hpq,q->h", u, self.info.p_mats, u))

    def contrast(self, l_vec: Sequence[float] | np.ndarray, label: str = "contrast") -> Contrast:
        lv = np.asarray(l_vec, dtype=float)
        est = float(lv @ self.beta)
        v = float(lv @ self.phi @ lv)
        g = self._grad_v(lv)
        if self.df_method == "kenward-roger":
            se = math.sqrt(float(lv @ self._phi_a @ lv))
            a = -g / v
            df = 2.0 / float(a @ self._w_exp @ a)
        else:
            se = math.sqrt(v)
            df = 2.0 * v**2 / float(g @ self._w_obs @ g)
        tval = est / se if se > 0 else math.nan
        q = float(st.t.ppf(0.5 + self.conf / 2, df))
        return Contrast(
            label=label,
            estimate=est,
            se=se,
            df=df,
            t=tval,
            p_value=float(2 * st.t.sf(abs(tval), df)),
            ci_low=est - q * se,
            ci_high=est + q * se,
        )

    def f_test(self, rows: np.ndarray, term: str = "") -> FTest:
        """Joint test of ``rows @ beta = 0`` (q x p, full row rank)."""
        lm = np.atleast_2d(np.asarray(rows, dtype=float))
        q = lm.shape[0]
        lb = lm @ self.beta
        if q == 1:  # F = t^2 with the contrast's df (K&R's moment matching gives lambda = 1, m = 2/(a'Wa))
            c = self.contrast(lm[0], term)
            return FTest(
                term,
                c.t**2,
                1,
                c.df,
                c.p_value,
                "Kenward-Roger" if self.df_method == "kenward-roger" else "Satterthwaite",
            )
        if self.df_method == "kenward-roger":
            return self._kr_f(lm, term)
        h = lm @ self.phi @ lm.T
        f = float(lb @ np.linalg.solve(h, lb)) / q
        w, vec = np.linalg.eigh(h)
        nus = []
        for m in range(q):
            lv = vec[:, m] @ lm
            g = self._grad_v(lv)
            nus.append(2.0 * w[m] ** 2 / float(g @ self._w_obs @ g))
        if q == 1:
            den = nus[0]
        elif np.all(np.abs(np.diff(nus)) < 1e-8):
            den = float(np.mean(nus))
        elif min(nus) <= 2:
            den = 2.0
        else:
            e = sum(nu / (nu - 2) for nu in nus)
            den = 2 * e / (e - q)
        return FTest(term, f, q, float(den), float(st.f.sf(f, q, den)), "Satterthwaite")

    def _kr_f(self, lm: np.ndarray, term: str) -> FTest:
        # Kenward & Roger 1997 section 4 (moment matching), with Phi (unadjusted) in A1, A2
        q = lm.shape[0]
        phi, w, pm = self.phi, self._w_exp, self.info.p_mats
        theta_m = lm.T @ np.linalg.solve(lm @ phi @ lm.T, lm)
        k = pm.shape[0]
        u = [theta_m @ phi @ pm[h] @ phi for h in range(k)]
        tr_u = np.array([np.trace(x) for x in u])
        a1 = float(tr_u @ w @ tr_u)
        a2 = float(sum(w[h, j] * np.sum(u[h] * u[j].T) for h in range(k) for j in range(k)))
        b = (a1 + 6 * a2) / (2 * q)
        g = ((q + 1) * a1 - (q + 4) * a2) / ((q + 2) * a2)
        c1 = g / (3 * q + 2 * (1 - g))
        c2 = (q - g) / (3 * q + 2 * (1 - g))
        c3 = (q + 2 - g) / (3 * q + 2 * (1 - g))
        e_star = 1 / (1 - a2 / q)
        v_star = (2 / q) * (1 + c1 * b) / ((1 - c2 * b) ** 2 * (1 - c3 * b))
        rho = v_star / (2 * e_star**2)
        m = 4 + (q + 2) / (q * rho - 1)
        lam = m / (e_star * (m - 2))
        lb = lm @ self.beta
        f = float(lb @ np.linalg.solve(lm @ self._phi_a @ lm.T, lb)) / q
        return FTest(term, lam * f, q, float(m), float(st.f.sf(lam * f, q, m)), "Kenward-Roger")

    # least-squares means --------------------------------------------------------------------

    def lsmean_vector(self, visit: Any, treated: int) -> np.ndarray:
        """The row ``l`` with ``l'beta`` = LS mean at ``visit`` in arm ``treated`` (0/1)."""
        import patsy

        factors = {k: v for k, v in self.factor_levels.items()}
        grid = pd.DataFrame([{}])
        for name, levels in factors.items():
            grid = grid.merge(pd.DataFrame({name: levels}), how="cross")
        grid[self.visit_col] = visit
        grid[self.treatment] = treated
        for name, mean in self.data_means.items():
            grid[name] = mean
        grid["_y"] = 0.0
        (mat,) = patsy.build_design_matrices([self.design_info], grid, NA_action="raise")
        return np.asarray(np.asarray(mat).mean(axis=0))

    def lsmeans(self) -> list[dict[str, Any]]:
        out = []
        for v in self.visits:
            for arm in (1, 0):
                c = self.contrast(self.lsmean_vector(v, arm), f"visit {v}, treated={arm}")
                out.append({"visit": v, "treated": arm, **c.to_dict()})
        return out

    def visit_difference(self, visit: Any) -> Contrast:
        lv = self.lsmean_vector(visit, 1) - self.lsmean_vector(visit, 0)
        return self.contrast(lv, f"treated - control at visit {visit}")

    def term_rows(self, term: str) -> np.ndarray:
        """Rows selecting the coefficients of one model term (e.g. ``C(visit):treated``)."""
        di = self.design_info
        names = [t.name() for t in di.terms]
        if term not in names:
            raise KeyError(f"term {term!r} not in model ({', '.join(names)})")
        sl = di.term_slices[di.terms[names.index(term)]]
        idx = np.arange(len(self.coef_names))[sl]
        rows = np.zeros((len(idx), len(self.coef_names)))
        rows[np.arange(len(idx)), idx] = 1.0
        return rows


def fit_mmrm(
    data: pd.DataFrame,
    outcome: str,
    visit: str,
    subject: str,
    treatment: str = "treated",
    covariates: Sequence[str] = (),
    factors: Sequence[str] = (),
    interactions: Sequence[str] = (),
    structure: str = "unstructured",
    df_method: str = "satterthwaite",
    conf: float = 0.95,
    max_iter: int = 200,
) -> MMRMFit:
    """Fit ``outcome ~ C(visit) * treatment + covariates + C(factors) + interactions`` with the
    residual covariance ``structure`` by REML. ``interactions`` are extra patsy terms, e.g.
    ``C(stratum):treated`` (treatment by stratum) or ``C(visit):baseline``. Rows with a missing
    outcome, visit or covariate are dropped (the model uses every observed visit: missing at random)."""
    import patsy

    structure = structure_name(structure)
    if df_method not in DF_METHODS:
        raise ValueError(f"df_method must be one of {DF_METHODS}")
    cols = list(dict.fromkeys([outcome, visit, subject, treatment, *covariates, *factors]))
    frame = data[cols].dropna().reset_index(drop=True)
    if frame.empty:
        raise NotEstimable("no observations")
    visits = sorted(frame[visit].unique().tolist())
    t = len(visits)
    vindex = frame[visit].map({v: i for i, v in enumerate(visits)}).to_numpy(dtype=int)
    subj = pd.factorize(frame[subject])[0]
    if pd.Series(list(zip(subj, vindex, strict=True))).duplicated().any():
        raise NotEstimable("a participant has two rows for the same visit")
    if frame[treatment].nunique() < 2:
        raise NotEstimable("only one arm has observations")
    rhs = [f"C({visit}, levels={visits!r}) * {treatment}"]
    rhs += list(covariates)
    rhs += [f"C({f})" for f in factors]
    rhs += list(interactions)
    frame = frame.rename(columns={outcome: "_y"})
    formula = "_y ~ " + " + ".join(rhs)
    y_mat, x_mat = patsy.dmatrices(formula, frame, NA_action="raise", return_type="dataframe")
    x = x_mat.to_numpy(dtype=float)
    y = y_mat.to_numpy(dtype=float).ravel()
    n, p = x.shape
    if np.linalg.matrix_rank(x) < p:
        raise NotEstimable(
            "the design matrix is singular (a visit or arm has no observations, or covariates are collinear)"
        )
    k = n_theta(structure, t)
    if n - p < k:
        raise NotEstimable(f"too few observations ({n}) for {p} fixed effects and {k} covariance parameters")
    pats = _patterns(y, x, subj, vindex)

    # start: OLS residuals' pairwise covariance
    beta0, *_ = np.linalg.lstsq(x, y, rcond=None)
    res = pd.DataFrame({"s": subj, "v": vindex, "r": y - x @ beta0}).pivot(index="s", columns="v", values="r")
    res = res.reindex(columns=range(t))
    cov0 = res.cov(min_periods=2).to_numpy()
    var = np.nanmean(np.diag(cov0)) if np.isfinite(np.diag(cov0)).any() else float(np.var(y))
    cov0 = np.where(np.isfinite(cov0), cov0, 0.0)
    diag = np.diag(cov0).copy()
    diag[~(diag > 0)] = var if var > 0 else 1.0
    np.fill_diagonal(cov0, diag)
    theta0 = _start(structure, cov0)

    def fun(th: np.ndarray) -> float:
        try:
            return _evaluate(pats, sigma_of(structure, th, t), p).neg2
        except (np.linalg.LinAlgError, ValueError):
            return math.inf

    def jac(th: np.ndarray) -> np.ndarray:
        try:
            ev = _evaluate(pats, sigma_of(structure, th, t), p)
        except (np.linalg.LinAlgError, ValueError):
            return np.full(th.size, np.nan)
        return _gradient(pats, ev, _dsigma(structure, th, t))

    def hess(th: np.ndarray) -> np.ndarray:
        ev = _evaluate(pats, sigma_of(structure, th, t), p)
        return _information(
            pats, ev, _dsigma(structure, th, t), _d2sigma(structure, th, t), kr=False
        ).observed

    messages = []
    theta = theta0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in ("trust-exact", "BFGS", "trust-exact"):
            try:
                kwargs: dict[str, Any] = {"jac": jac}
                if method == "trust-exact":
                    kwargs["hess"] = hess
                    kwargs["options"] = {"maxiter": max_iter, "gtol": GRADIENT_TOL / 10}
                else:
                    kwargs["options"] = {"maxiter": 20 * max_iter, "gtol": GRADIENT_TOL / 10}
                opt = optimize.minimize(fun, theta, method=method, **kwargs)
                if np.all(np.isfinite(opt.x)) and fun(opt.x) <= fun(theta):
                    theta = opt.x
                messages.append(f"{method}: {opt.message}")
            except (np.linalg.LinAlgError, ValueError) as exc:
                messages.append(f"{method}: {exc}")
            grad = jac(theta)
            if np.all(np.isfinite(grad)) and float(np.max(np.abs(grad))) < GRADIENT_TOL:
                break
    # Newton polish with step halving: quadratic convergence from where the optimizer stopped
    for _ in range(20):
        grad = jac(theta)
        if not np.all(np.isfinite(grad)) or float(np.max(np.abs(grad))) < GRADIENT_TOL * 1e-2:
            break
        try:
            step = np.linalg.solve(hess(theta), grad)
        except np.linalg.LinAlgError:
            break
        f0, lam = fun(theta), 1.0
        while lam > 1e-4 and not fun(theta - lam * step) <= f0 + 1e-12 * abs(f0):
            lam /= 2
        if lam <= 1e-4:
            break
        theta = theta - lam * step
    sigma = sigma_of(structure, theta, t)
    ev = _evaluate(pats, sigma, p)
    ds, d2s = _dsigma(structure, theta, t), _d2sigma(structure, theta, t)
    grad = _gradient(pats, ev, ds)
    info = _information(pats, ev, ds, d2s)
    max_grad = float(np.max(np.abs(grad)))
    min_eig = float(np.min(np.linalg.eigvalsh(info.observed)))
    decrement = float(grad @ np.linalg.solve(info.observed, grad)) if min_eig > 0 else math.inf
    converged = max_grad < GRADIENT_TOL and min_eig > 0
    convergence = {
        "converged": converged,
        "max_abs_gradient": max_grad,
        "newton_decrement": decrement,
        "min_hessian_eigenvalue": min_eig,
        "optimizer": "; ".join(messages),
    }
    if not converged:
        why = (
            f"largest gradient {max_grad:.2g}"
            if max_grad >= GRADIENT_TOL
            else "the REML surface is flat at the optimum (a variance or correlation is at its boundary)"
        )
        raise NotEstimable(f"the {structure} covariance REML fit did not converge ({why})")
    neg2 = ev.neg2 + (n - p) * math.log(2 * math.pi)
    means = {c: float(frame[c].mean()) for c in covariates if pd.api.types.is_numeric_dtype(frame[c])}
    levels = {f: sorted(frame[f].unique().tolist()) for f in factors}
    return MMRMFit(
        structure=structure,
        df_method=df_method,
        formula=formula.replace("_y", outcome, 1),
        visits=visits,
        coef_names=list(x_mat.columns),
        beta=ev.beta,
        phi=ev.phi,
        theta=theta,
        sigma=sigma,
        reml_loglik=-0.5 * neg2,
        n_subjects=len(np.unique(subj)),
        n_obs=int(n),
        convergence=convergence,
        info=info,
        design_info=x_mat.design_info,
        data_means=means,
        factor_levels=levels,
        visit_col=visit,
        treatment=treatment,
        conf=conf,
    )


def mmrm(
    data: pd.DataFrame,
    outcome: str,
    visit: str,
    subject: str,
    treatment: str = "treated",
    covariates: Sequence[str] = (),
    factors: Sequence[str] = (),
    structures: Sequence[str] = ("unstructured",),
    df_method: str = "satterthwaite",
    at_visit: Any = None,
    conf: float = 0.95,
    stratum: str | None = None,
) -> Estimate:
    """The MMRM treated-minus-control LS-mean difference at ``at_visit`` (default: the last visit)
    as an :class:`Estimate`, with every visit's difference, the LS means, the treatment-by-visit
    (and, with ``stratum``, treatment-by-stratum) interaction F tests and the convergence record in
    ``details``. ``structures`` is tried in order (a pre-specified fallback, e.g. unstructured ->
    Toeplitz -> AR(1) -> CS); the one used and why earlier ones failed are reported."""
    tried: list[str] = []
    fit: MMRMFit | None = None
    for s in structures:
        try:
            fit = fit_mmrm(
                data, outcome, visit, subject, treatment, covariates, factors, (), s, df_method, conf
            )
            break
        except NotEstimable as exc:
            tried.append(f"{structure_name(s)}: {exc}")
    if fit is None:
        raise NotEstimable("; ".join(tried) or "no covariance structure given")
    target = fit.visits[-1] if at_visit is None else at_visit
    if target not in fit.visits:
        raise NotEstimable(f"visit {target!r} has no observations")
    per_visit = {str(v): fit.visit_difference(v).to_dict() for v in fit.visits}
    main = fit.visit_difference(target)
    tests = {}
    if len(fit.visits) > 1:
        tests["treatment_by_visit"] = fit.f_test(
            fit.term_rows(f"C({visit}, levels={fit.visits!r}):{treatment}"), "treatment x visit"
        ).to_dict()
    if stratum is not None and data[stratum].nunique() > 1:
        try:
            sfit = fit_mmrm(
                data,
                outcome,
                visit,
                subject,
                treatment,
                covariates,
                [*factors, stratum],
                [f"C({stratum}):{treatment}"],
                fit.structure,
                df_method,
                conf,
            )
            tests["treatment_by_stratum"] = sfit.f_test(
                sfit.term_rows(f"C({stratum}):{treatment}"), "treatment x stratum"
            ).to_dict()
        except NotEstimable as exc:
            tests["treatment_by_stratum"] = {"note": f"not estimable: {exc}"}
    df_label = "Kenward-Roger" if df_method == "kenward-roger" else "Satterthwaite"
    return Estimate(
        measure=f"LS-mean difference at visit {target}",
        estimate=main.estimate,
        ci_low=main.ci_low,
        ci_high=main.ci_high,
        p_value=main.p_value,
        method=(f"MMRM (REML, {fit.structure.replace('_', ' ')} covariance, {df_label} df): {fit.formula}"),
        conf_level=conf,
        details={
            "se": main.se,
            "df": main.df,
            "per_visit": per_visit,
            "lsmeans": fit.lsmeans(),
            "tests": tests,
            "covariance_structure": fit.structure,
            "structures_not_used": tried,
            "df_method": df_method,
            "convergence": fit.convergence,
            "reml_loglik": fit.reml_loglik,
            "sigma": fit.sigma.tolist(),
            "n_subjects": fit.n_subjects,
            "n_obs": fit.n_obs,
        },
    )


def lrt_structures(fit_big: MMRMFit, fit_small: MMRMFit) -> dict[str, float]:
    """REML likelihood-ratio test of two nested covariance structures with the same fixed effects
    (e.g. compound symmetry within unstructured): chi-square on the difference in parameters."""
    stat = 2 * (fit_big.reml_loglik - fit_small.reml_loglik)
    ddf = fit_big.theta.size - fit_small.theta.size
    return {"chi2": stat, "df": ddf, "p_value": float(st.chi2.sf(stat, ddf))}
