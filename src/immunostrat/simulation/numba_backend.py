"""Optional numba backend of the batch RK4 integrator (same equations, step, effects and death rule).

``integrate_numba`` takes the arguments of :func:`jax_backend.integrate_jax` (no observer, the Reynolds 2006
model, with the damage death rule and, when ``DeathRule.p_crit`` is set, the pathogen one) plus the
monocyte-deactivation extension (``deactivation=``, as :func:`model.integrate`)
and returns the same :class:`model.Trajectory`, with every patient integrated over the full course (no
freezing). :mod:`engines` chooses between the engines and says which requests each one runs.

Why it is fast on CPU: the whole course of a block of patients is one compiled loop over time, with no
numpy temporaries. LLVM compiles the RK4 step into one straight-line body (four right-hand sides, clipping,
death rule) whose intermediates stay in registers, and each patient's state and constants live in a small
block-local array that stays in the L1 cache. The body runs on several patients at once in SIMD registers
(8 with AVX-512; a per-patient scalar loop measured about 5x slower), and blocks run in parallel over the
cores (``prange``). Arithmetic is float64 in the numpy engine's order without fast-math, so the results
equal :func:`model.integrate` to round-off (bit for bit without therapy).

Needs ``numba`` (``pip install numba``); :func:`available` says whether it is importable. The kernel is
compiled on the first call (several seconds) and kept for the life of the process.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from .model import (
    DEFAULT_DT,
    OUTCOME_HORIZON_H,
    PARAMETER_NAMES,
    DeactivationParameters,
    DeathRule,
    PatientParameters,
    Trajectory,
    course_grid,
)
from .therapies import Schedule

#: Patients advanced together by one block. The step body is vectorised across them; a trip count this
#: large keeps LLVM from unrolling the lane loop away before its loop vectoriser sees it.
_LANES = 64

# Each block keeps everything a step reads or writes in one flat work array of rows of _LANES values: the
# Reynolds parameters (PARAMETER_NAMES order), x_dn^6, the therapy hooks summed over effects, the step
# constants that they modify, the state and the death-rule clocks, then (start, end, strength, rate) of
# each therapy component. With a single base pointer and constant row offsets the compiler can
# prove that rows do not overlap; with separate arrays it would need run-time alias checks between every
# pair, more than it is willing to emit, and would fall back to scalar code.
_ROWS: tuple[str, ...] = (
    *PARAMETER_NAMES,
    "x_dn6",
    "c_h",
    "inv_h0",
    "il1",
    "hla_gain",
    "kpn_gain",
    "cinf_gain",
    "k_nn_eff",
    "k_nd_eff",
    "k_pn_eff",
    "inv_cinf2",
    "inv_ch2",
    "ca_source",
    "kill",
    "P",
    "N_star",
    "D",
    "CA",
    "H",
    "since",
    "died",
)
_OFF = {name: i * _LANES for i, name in enumerate(_ROWS)}
_WORK_SIZE = len(_ROWS) * _LANES

# Row offsets as plain module globals: the compiled code reads them as constants.
_K_PG, _P_INF, _K_PM, _K_MP, _S_M, _MU_M = (_OFF[k] for k in ("k_pg", "p_inf", "k_pm", "k_mp", "s_m", "mu_m"))
_K_PN, _K_NP, _K_NN, _K_ND = (_OFF[k] for k in ("k_pn", "k_np", "k_nn", "k_nd"))
_S_NR, _MU_NR, _MU_N, _K_DN, _MU_D = (_OFF[k] for k in ("s_nr", "mu_nr", "mu_n", "k_dn", "mu_d"))
_C_INF, _S_C, _K_CN, _K_CND, _MU_C = (_OFF[k] for k in ("c_inf", "s_c", "k_cn", "k_cnd", "mu_c"))
_X_DN6, _C_H, _INV_H0, _A_HLA, _E_INV_CH2, _Y_H = (
    _OFF[k] for k in ("x_dn6", "c_h", "inv_h0", "hla_gain", "inv_ch2", "H")
)
_A_IL1, _A_KPN, _A_CINF = (_OFF[k] for k in ("il1", "kpn_gain", "cinf_gain"))
_E_KNN, _E_KND, _E_KPN, _E_INV_CINF2, _E_CA, _E_KILL = (
    _OFF[k] for k in ("k_nn_eff", "k_nd_eff", "k_pn_eff", "inv_cinf2", "ca_source", "kill")
)
_Y_P, _Y_N, _Y_D, _Y_C, _SINCE, _DIED = (_OFF[k] for k in ("P", "N_star", "D", "CA", "since", "died"))
_N_PARAMS = len(PARAMETER_NAMES) + 3  # with x_dn6, C_H and 1/H_0, packed by the caller

# Where each hook's effects are summed. hla_gain acts on the deactivation extension only, which this backend
# does not model (as the JAX one).
_HOOK_ROW = {
    "il1": _A_IL1,
    "kpn_gain": _A_KPN,
    "cinf_gain": _A_CINF,
    "ca_source": _E_CA,
    "kill": _E_KILL,
    "hla_gain": _A_HLA,
}

# Explicit C-contiguous types: the kernel compiles once, when built, and a wrongly laid-out array fails
# loudly instead of triggering a silent recompilation.
_SIGNATURE = (
    "void(float64[:, ::1], float64[:, ::1], int64[::1], float64[:, :, ::1], int64, int64, float64, float64, "
    "float64, boolean, float64, float64, float64[:, :, ::1], float64[::1])"
)

_KERNELS: dict[bool, Callable[..., None]] = {}


def available() -> bool:
    return importlib.util.find_spec("numba") is not None


def _build(ext: bool) -> Callable[..., None]:
    """The kernel without (``ext`` False) or with the monocyte-deactivation extension: ``ext`` is a
    compile-time constant of the closure, so the Reynolds kernel carries none of the extension's work."""
    numba: Any = importlib.import_module("numba")
    # error_model="numpy": a division by zero gives inf/nan as in numpy instead of raising, which also
    # removes the zero test that would keep divisions out of SIMD code. fastmath stays off so that the
    # operations are those of the numpy engine, in its order.
    jit = numba.njit(fastmath=False, error_model="numpy")

    @jit
    def effects(tm: float, acc: Any, decays: Any, w: Any) -> None:
        # Effects at time tm, summed per hook in component order as therapies.Schedule does; a hook with no
        # effect leaves the untreated constant exactly (x * (1 - 0) == x). Lanes are the inner loops, so
        # all but the exponential decay run in SIMD.
        for lane in range(_LANES):
            w[_A_IL1 + lane] = 0.0
            w[_A_KPN + lane] = 0.0
            w[_A_CINF + lane] = 0.0
            w[_A_HLA + lane] = 0.0
            w[_E_CA + lane] = 0.0
            w[_E_KILL + lane] = 0.0
        for j in range(acc.shape[0]):
            a = acc[j]
            c = _WORK_SIZE + 4 * _LANES * j
            if decays[j]:
                for lane in range(_LANES):
                    s0 = w[c + lane]
                    if tm >= s0 and tm < w[c + _LANES + lane]:
                        rate = w[c + 3 * _LANES + lane]
                        w[a + lane] += w[c + 2 * _LANES + lane] * math.exp(-rate * (tm - s0))
            else:
                for lane in range(_LANES):
                    on = tm >= w[c + lane] and tm < w[c + _LANES + lane]
                    w[a + lane] += w[c + 2 * _LANES + lane] if on else 0.0
        for lane in range(_LANES):
            il1 = min(w[_A_IL1 + lane], 1.0)
            w[_E_KNN + lane] = w[_K_NN + lane] * (1.0 - il1)
            w[_E_KND + lane] = w[_K_ND + lane] * (1.0 - il1)
            w[_E_KPN + lane] = w[_K_PN + lane] * (1.0 + w[_A_KPN + lane])
            cinf = w[_C_INF + lane] * (1.0 + w[_A_CINF + lane])
            w[_E_INV_CINF2 + lane] = 1.0 / (cinf * cinf)
            c_h = w[_C_H + lane] * (1.0 + w[_A_CINF + lane]) * (1.0 + w[_A_HLA + lane])
            w[_E_INV_CH2 + lane] = 1.0 / (c_h * c_h)

    # Inlined into the step (numba IR level) so that the vectoriser sees one loop body without calls.
    @numba.njit(fastmath=False, error_model="numpy", inline="always")
    def rhs(
        P: float, N: float, D: float, C: float, ks: float, w: Any, lane: int
    ) -> tuple[float, float, float, float]:
        # The expressions of the numpy engine's _Rhs, in its order, so that both round alike.
        inv = 1.0 / (1.0 + C * C * w[_E_INV_CINF2 + lane])
        f_n = N * inv
        r = (w[_E_KNN + lane] * N + w[_K_NP + lane] * P + w[_E_KND + lane] * D) * inv
        d_p = P * (
            w[_K_PG + lane]
            - w[_K_PG + lane] / w[_P_INF + lane] * P
            - w[_K_PM + lane] * w[_S_M + lane] / (w[_MU_M + lane] + w[_K_MP + lane] * P)
            - w[_E_KPN + lane] * f_n * ks
            - w[_E_KILL + lane]
        )
        d_n = w[_S_NR + lane] * r / (w[_MU_NR + lane] + r) - w[_MU_N + lane] * N
        f2 = f_n * f_n
        f6 = f2 * f2 * f2
        d_d = w[_K_DN + lane] * f6 / (w[_X_DN6 + lane] + f6) - w[_MU_D + lane] * D
        f_c = (N + w[_K_CND + lane] * D) * inv
        d_c = w[_S_C + lane] + w[_K_CN + lane] * f_c / (1.0 + f_c) - w[_MU_C + lane] * C + w[_E_CA + lane]
        return d_p, d_n, d_d, d_c

    @jit
    def rk4_step(
        w: Any,
        dt: float,
        t: float,
        d_crit: float,
        hold: float,
        pdeath: bool,
        p_crit: float,
        k_rec: float,
    ) -> None:
        half = 0.5 * dt
        sixth = dt / 6.0
        # Branch-free per lane (the conditionals become selects), so the loop vectorises across lanes.
        for lane in range(_LANES):
            P = w[_Y_P + lane]
            N = w[_Y_N + lane]
            D = w[_Y_D + lane]
            C = w[_Y_C + lane]
            # Monocyte deactivation (model.DeactivationParameters): killing scaled by H/H_0, H advanced by
            # its exact exponential update as in model._integrate_chunk; without it every scale is 1.0,
            # and x * 1.0 == x, so the Reynolds system is unchanged to the bit.
            H = w[_Y_H + lane]
            inv_h0 = w[_INV_H0 + lane]
            inv_ch2 = w[_E_INV_CH2 + lane]
            x2_0 = C * C * inv_ch2
            h_inf = 1.0 / (1.0 + x2_0)
            decay = math.exp(-k_rec * (1.0 + x2_0) * half) if ext else 1.0
            h_mid = h_inf + (H - h_inf) * decay
            h_end = h_inf + (H - h_inf) * decay * decay
            s1 = H * inv_h0 if ext else 1.0
            s2 = h_mid * inv_h0 if ext else 1.0
            s4 = h_end * inv_h0 if ext else 1.0
            k1 = rhs(P, N, D, C, s1, w, lane)
            k2 = rhs(P + half * k1[0], N + half * k1[1], D + half * k1[2], C + half * k1[3], s2, w, lane)
            k3 = rhs(P + half * k2[0], N + half * k2[1], D + half * k2[2], C + half * k2[3], s2, w, lane)
            k4 = rhs(P + dt * k3[0], N + dt * k3[1], D + dt * k3[2], C + dt * k3[3], s4, w, lane)
            P = P + sixth * (k1[0] + 2.0 * (k2[0] + k3[0]) + k4[0])
            N = N + sixth * (k1[1] + 2.0 * (k2[1] + k3[1]) + k4[1])
            D = D + sixth * (k1[2] + 2.0 * (k2[2] + k3[2]) + k4[2])
            C = C + sixth * (k1[3] + 2.0 * (k2[3] + k3[3]) + k4[3])
            if ext:
                x2 = 0.5 * (x2_0 + C * C * inv_ch2)
                h_inf = 1.0 / (1.0 + x2)
                w[_Y_H + lane] = h_inf + (H - h_inf) * math.exp(-k_rec * (1.0 + x2) * dt)
            # Comparisons rather than max() so that a NaN state propagates as through np.maximum.
            w[_Y_P + lane] = 0.0 if P < 0.0 else P
            w[_Y_N + lane] = 0.0 if N < 0.0 else N
            w[_Y_D + lane] = D
            w[_Y_C + lane] = C
            # The pathogen rule (p_crit) is tested only when set, as by the numpy engine; bitwise on the
            # booleans keeps the body branch-free.
            critical = (d_crit <= D) | (pdeath & (p_crit <= w[_Y_P + lane]))
            since = min(w[_SINCE + lane], t) if critical else math.inf
            w[_SINCE + lane] = since
            died = w[_DIED + lane]
            w[_DIED + lane] = t if math.isnan(died) and t - since >= hold else died

    @numba.njit(_SIGNATURE, parallel=True, fastmath=False, error_model="numpy", cache=False)
    def kernel(
        y0: Any,
        q: Any,
        acc: Any,
        comp: Any,
        n_rec: int,
        stride: int,
        dt: float,
        d_crit: float,
        hold: float,
        pdeath: bool,
        p_crit: float,
        k_rec: float,
        states: Any,
        death: Any,
    ) -> None:
        n = y0.shape[0]
        half = 0.5 * dt
        for b in numba.prange((n + _LANES - 1) // _LANES):
            n_comp = acc.shape[0]
            w = np.empty(_WORK_SIZE + 4 * _LANES * n_comp)
            decays = np.zeros(n_comp, dtype=np.bool_)
            # Outside the block's therapy window every effect is 0 and the untreated constants stand, so
            # effects are evaluated only inside it, and once after it to restore those constants.
            first = math.inf
            last = -math.inf
            for lane in range(_LANES):
                # Spare lanes of the last block repeat its last patient: computed, never stored.
                i = min(b * _LANES + lane, n - 1)
                for j in range(n_comp):
                    for f in range(4):
                        w[_WORK_SIZE + (4 * j + f) * _LANES + lane] = comp[i, j, f]
                    first = min(first, comp[i, j, 0])
                    last = max(last, comp[i, j, 1])
                    decays[j] = decays[j] or comp[i, j, 3] != 0.0
                for k in range(_N_PARAMS):
                    w[k * _LANES + lane] = q[k, i]
                w[_E_KNN + lane] = w[_K_NN + lane]
                w[_E_KND + lane] = w[_K_ND + lane]
                w[_E_KPN + lane] = w[_K_PN + lane]
                w[_E_INV_CINF2 + lane] = 1.0 / (w[_C_INF + lane] * w[_C_INF + lane])
                w[_E_INV_CH2 + lane] = 1.0 / (w[_C_H + lane] * w[_C_H + lane])
                w[_E_CA + lane] = 0.0
                w[_E_KILL + lane] = 0.0
                w[_Y_P + lane] = y0[i, 0]
                w[_Y_N + lane] = y0[i, 1]
                w[_Y_D + lane] = y0[i, 2]
                w[_Y_C + lane] = y0[i, 3]
                w[_Y_H + lane] = y0[i, 4] if ext else 0.0
                w[_SINCE + lane] = math.inf
                w[_DIED + lane] = math.nan
            treated = False
            step = 0
            for rec in range(1, n_rec):
                for _ in range(stride):
                    tm = step * dt + half
                    in_window = first <= tm < last
                    if in_window or treated:
                        effects(tm, acc, decays, w)
                        treated = in_window
                    step += 1
                    rk4_step(w, dt, step * dt, d_crit, hold, pdeath, p_crit, k_rec)
                for lane in range(_LANES):
                    i = b * _LANES + lane
                    if i < n:
                        states[i, rec, 0] = w[_Y_P + lane]
                        states[i, rec, 1] = w[_Y_N + lane]
                        states[i, rec, 2] = w[_Y_D + lane]
                        states[i, rec, 3] = w[_Y_C + lane]
                        if ext:
                            states[i, rec, 4] = w[_Y_H + lane]
            for lane in range(_LANES):
                i = b * _LANES + lane
                if i < n:
                    for j in range(y0.shape[1]):
                        states[i, 0, j] = y0[i, j]
                    death[i] = w[_DIED + lane]

    return kernel


def _kernel(ext: bool) -> Callable[..., None]:
    if ext not in _KERNELS:
        _KERNELS[ext] = _build(ext)
    return _KERNELS[ext]


def integrate_numba(
    y0: npt.ArrayLike,
    params: PatientParameters,
    *,
    t_end: float = OUTCOME_HORIZON_H,
    dt: float = DEFAULT_DT,
    schedule: Schedule | None = None,
    record_every: float = 24.0,
    death_rule: DeathRule = DeathRule(),
    chunk_size: int = 1024,
    deactivation: DeactivationParameters | None = None,
) -> Trajectory:
    """numba twin of :func:`model.integrate` (full integration, no observer); see the module docstring.

    ``deactivation``: the monocyte-deactivation extension (state H, the ``hla_gain`` hook), as in
    :func:`model.integrate`; its MALS loop runs on the numpy engine only.

    ``chunk_size`` is accepted so that the backends are interchangeable, and unused: blocks of patients are
    fixed by the kernel, and no program is compiled per batch shape.
    """
    del chunk_size
    grid = course_grid(y0, params, t_end, dt, record_every)
    y, n, n_rec, stride = grid.y, grid.n, grid.n_rec, grid.stride
    if schedule is not None and schedule.n != n:
        raise ValueError(f"schedule is for {schedule.n} patients, y0 for {n}")
    rows = [np.asarray(getattr(params, name), dtype=np.float64) for name in PARAMETER_NAMES]
    if any(r.shape != (n,) for r in rows):
        raise ValueError(f"every parameter must have shape ({n},)")
    # x_dn^6 by numpy, as the numpy engine computes it: a compiled power could differ in the last bit.
    x_dn6 = rows[PARAMETER_NAMES.index("x_dn")] ** 6
    ext = deactivation is not None
    if deactivation is not None:
        if getattr(deactivation, "mals_loop", None) is not None:
            raise ValueError("the MALS loop (DeactivationParameters.mals_loop) runs on the numpy engine only")
        # C_H, H_0 and 1/H_0 by numpy, as the numpy engine computes them.
        h0 = deactivation.h_baseline(params)
        q = np.ascontiguousarray(np.stack([*rows, x_dn6, deactivation.c_h(params), 1.0 / h0]))
        y = np.ascontiguousarray(np.concatenate([y, h0[:, None]], axis=1))
    else:
        q = np.ascontiguousarray(np.stack([*rows, x_dn6, np.ones(n), np.ones(n)]))
    # hla_gain acts on the deactivation extension only (as in the numpy engine): dropped without it.
    comps = [c for c in (schedule.components if schedule is not None else ()) if ext or c.hook != "hla_gain"]
    unknown = sorted({c.hook for c in comps} - set(_HOOK_ROW))
    if unknown:
        raise ValueError(f"therapy hook(s) not supported by the numba backend: {unknown}")
    acc = np.array([_HOOK_ROW[c.hook] for c in comps], dtype=np.int64)
    # (patient, component, field) layout: one patient's effects sit together in memory.
    comp = np.zeros((n, len(comps), 4))
    for j, c in enumerate(comps):
        for f, field in enumerate((c.start, c.end, c.strength, c.rate)):
            arr = np.asarray(field, dtype=np.float64)
            if arr.shape != (n,):
                raise ValueError(f"every therapy schedule array must have shape ({n},), got {arr.shape}")
            comp[:, j, f] = arr
    states = np.empty((n, n_rec, y.shape[1]))
    death = np.empty(n)
    if n:
        _kernel(ext)(
            y,
            q,
            acc,
            comp,
            n_rec,
            stride,
            float(dt),
            float(death_rule.d_crit),
            death_rule.hold_h - 1e-9,
            math.isfinite(death_rule.p_crit),
            float(death_rule.p_crit) if math.isfinite(death_rule.p_crit) else 0.0,
            deactivation.k_rec if deactivation is not None else 0.0,
            states,
            death,
        )
    return grid.trajectory(states, death, dt)
