"""Optional numba backend of the batch RK4 integrator (same equations, step, effects and death rule).

``integrate_numba`` takes the arguments of :func:`model.integrate` for full courses (``drop_healed`` and
``drop_dead`` False) and returns the same :class:`model.Trajectory`: the Reynolds 2006 model with every
therapy hook, the damage death rule and, when ``DeathRule.p_crit`` is set, the pathogen one; the
monocyte-deactivation extension (``deactivation=``, state H and the ``hla_gain`` hook) with its MALS loop
(``DeactivationParameters.mals_loop``); ICU-acquired infections (``secondary=`` with ``secondary_draws=``,
single or recurring, each episode with its own antibiotic course); and the biomarker observer of virtual
populations (``observer=``, :class:`observables.BiomarkerObserver` only). :mod:`engines` chooses between the
engines and says which requests each one runs.

Why it is fast on CPU: the whole course of a block of patients is one compiled loop over time, with no
numpy temporaries. LLVM compiles the RK4 step into one straight-line body (four right-hand sides, clipping,
death rule) whose intermediates stay in registers, and each patient's state and constants live in a small
block-local array that stays in the L1 cache. The body runs on several patients at once in SIMD registers
(8 with AVX-512; a per-patient scalar loop measured about 5x slower), and blocks run in parallel over the
cores (``prange``). Each extension is a compile-time constant of its own kernel, so the published model's
kernel carries none of their work. Arithmetic is float64 in the numpy engine's order without fast-math, so
the results equal :func:`model.integrate` to round-off (the exponentials and powers of numpy's SIMD library
and of libm can differ in the last bit).

Needs ``numba`` (``pip install numba``); :func:`available` says whether it is importable. Each kernel is
compiled on its first call (several seconds) and kept for the life of the process.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from .model import (
    DEFAULT_DT,
    OUTCOME_HORIZON_H,
    PARAMETER_NAMES,
    DeactivationParameters,
    DeathRule,
    Observer,
    PatientParameters,
    SecondaryDraws,
    SecondaryInfection,
    Trajectory,
    check_secondary_inputs,
    course_grid,
)
from .structures import episode_columns
from .therapies import Schedule

#: Patients advanced together by one block. The step body is vectorised across them; a trip count this
#: large keeps LLVM from unrolling the lane loop away before its loop vectoriser sees it.
_LANES = 64

# Each block keeps everything a step reads or writes in one flat work array of rows of _LANES values: the
# Reynolds parameters (PARAMETER_NAMES order), x_dn^6, the therapy hooks summed over effects, the step
# constants that they modify, the state and the death-rule clocks, the secondary-infection and observer
# states, then (start, end, strength, rate) of each therapy component. With a single base pointer and
# constant row offsets the compiler can prove that rows do not overlap; with separate arrays it would need
# run-time alias checks between every pair, more than it is willing to emit, and would fall back to scalar
# code.
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
    "il1_keep",
    "cinf_eff",
    "P",
    "N_star",
    "D",
    "CA",
    "H",
    "since",
    "died",
    # secondary infections (model.SecondaryInfection)
    "own_kill",
    "h_rel",
    "t_sec",
    "t_first",
    "cum",
    "count",
    "exposure",
    "inoculum",
    # biomarker observer (observables.BiomarkerObserver)
    "ferritin_drive",
    "ca_filtered",
    "c_inf_effective",
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
_E_KEEP, _E_CINF = _OFF["il1_keep"], _OFF["cinf_eff"]
_Y_P, _Y_N, _Y_D, _Y_C, _SINCE, _DIED = (_OFF[k] for k in ("P", "N_star", "D", "CA", "since", "died"))
_S_OWN, _S_HREL, _S_TSEC, _S_FIRST, _S_CUM, _S_COUNT, _S_EXPO, _S_INOC = (
    _OFF[k] for k in ("own_kill", "h_rel", "t_sec", "t_first", "cum", "count", "exposure", "inoculum")
)
_O_F, _O_CA, _O_CI = (_OFF[k] for k in ("ferritin_drive", "ca_filtered", "c_inf_effective"))
_N_PARAMS = len(PARAMETER_NAMES) + 3  # with x_dn6, C_H and 1/H_0, packed by the caller

# Where each hook's effects are summed. hla_gain acts on the deactivation extension only (as in the numpy
# engine, it is dropped without it).
_HOOK_ROW = {
    "il1": _A_IL1,
    "kpn_gain": _A_KPN,
    "cinf_gain": _A_CINF,
    "ca_source": _E_CA,
    "kill": _E_KILL,
    "hla_gain": _A_HLA,
}

# Scalar constants of the extensions, one float64 vector (_CONSTS order), each computed by Python exactly as
# the numpy engine computes it (e.g. at_risk_from_h - 1e-9), so that both compare the same doubles.
_CONSTS: tuple[str, ...] = (
    "k_rec",
    "hazard_per_h",
    "hazard_ratio_low",
    "low_fraction",
    "risk_from",  # at_risk_from_h - 1e-9
    "risk_until",  # at_risk_until_h + 1e-9
    "abx_delay",
    "abx_end",  # abx_delay_h + abx_duration_h
    "abx_kill",
    "episodes",
    "loop_gain",
    "loop_k_pow",  # K ** n
    "loop_hill",
    "a_f",  # exp(-dt / tau_ferritin)
    "b_f",  # 1 - a_f
    "a_h",  # exp(-dt / tau_hla)
    "b_h",  # 1 - a_h
    "fer_k_pow",  # ferritin K ** n
    "fer_hill",
)
_C = {name: i for i, name in enumerate(_CONSTS)}
_C_KREC, _C_HAZ, _C_HR, _C_LOW, _C_FROM, _C_UNTIL, _C_DELAY, _C_END, _C_ABX, _C_EPIS = (
    _C[k]
    for k in (
        "k_rec",
        "hazard_per_h",
        "hazard_ratio_low",
        "low_fraction",
        "risk_from",
        "risk_until",
        "abx_delay",
        "abx_end",
        "abx_kill",
        "episodes",
    )
)
_C_GAIN, _C_KPOW, _C_HILL, _C_AF, _C_BF, _C_AH, _C_BH, _C_FKPOW, _C_FHILL = (
    _C[k]
    for k in ("loop_gain", "loop_k_pow", "loop_hill", "a_f", "b_f", "a_h", "b_h", "fer_k_pow", "fer_hill")
)

# Explicit C-contiguous types: the kernel compiles once, when built, and a wrongly laid-out array fails
# loudly instead of triggering a silent recompilation. Arguments: y0, packed parameters, hook rows, therapy
# components, n_rec, stride, dt, d_crit, hold, pathogen rule on, p_crit, extension constants, exposures and
# inocula per episode, initial observer state; outputs states, death time, first infection time, episode
# count, observer records.
_SIGNATURE = (
    "void(float64[:, ::1], float64[:, ::1], int64[::1], float64[:, :, ::1], int64, int64, float64, float64, "
    "float64, boolean, float64, float64[::1], float64[:, ::1], float64[:, ::1], float64[:, ::1], "
    "float64[:, :, ::1], float64[::1], float64[::1], int64[::1], float64[:, :, ::1])"
)

#: Kernels by (deactivation, MALS loop, its Hill exponent is 4, secondary infections, observer).
_KERNELS: dict[tuple[bool, bool, bool, bool, bool], Callable[..., None]] = {}


def available() -> bool:
    return importlib.util.find_spec("numba") is not None


def _build(ext: bool, mals: bool, mals4: bool, sec: bool, obs: bool) -> Callable[..., None]:
    """The kernel with the given extensions: monocyte deactivation (``ext``), its MALS loop (``mals``; with
    ``mals4`` its Hill exponent is 4), ICU-acquired infections (``sec``) and the biomarker observer
    (``obs``). Each is a compile-time constant
    of the closure, so a kernel carries none of the work of the extensions it was built without."""
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
            keep = 1.0 - min(w[_A_IL1 + lane], 1.0)
            w[_E_KEEP + lane] = keep
            w[_E_KNN + lane] = w[_K_NN + lane] * keep
            w[_E_KND + lane] = w[_K_ND + lane] * keep
            w[_E_KPN + lane] = w[_K_PN + lane] * (1.0 + w[_A_KPN + lane])
            cinf = w[_C_INF + lane] * (1.0 + w[_A_CINF + lane])
            w[_E_CINF + lane] = cinf
            w[_E_INV_CINF2 + lane] = 1.0 / (cinf * cinf)
            c_h = w[_C_H + lane] * (1.0 + w[_A_CINF + lane]) * (1.0 + w[_A_HLA + lane])
            w[_E_INV_CH2 + lane] = 1.0 / (c_h * c_h)

    # Inlined into the step (numba IR level) so that the vectoriser sees one loop body without calls.
    @numba.njit(fastmath=False, error_model="numpy", inline="always")
    def rhs(
        P: float, N: float, D: float, C: float, ks: float, w: Any, lane: int, k: Any
    ) -> tuple[float, float, float, float]:
        # The expressions of the numpy engine's _Rhs, in its order, so that both round alike.
        inv = 1.0 / (1.0 + C * C * w[_E_INV_CINF2 + lane])
        f_n = N * inv
        r = (w[_E_KNN + lane] * N + w[_K_NP + lane] * P + w[_E_KND + lane] * D) * inv
        if mals:
            # structures.mals_loop_drive(structures.il1_signal(...)): the loop's extra activation
            s = (w[_E_KNN + lane] * N + w[_E_KND + lane] * D) * inv
            s = 0.0 if s < 0.0 else s  # a NaN stays NaN, as through np.maximum
            if mals4:  # the default Hill exponent 4 as two squarings, as in observe()
                s2 = s * s
                sn = s2 * s2
            else:
                sn = s ** k[_C_HILL]
            r = r + k[_C_GAIN] * sn / (k[_C_KPOW] + sn)
        # Without infections the antibiotic term is not there at all (the numpy engine subtracts 0.0).
        own = w[_S_OWN + lane] if sec else 0.0
        d_p = P * (
            w[_K_PG + lane]
            - w[_K_PG + lane] / w[_P_INF + lane] * P
            - w[_K_PM + lane] * w[_S_M + lane] / (w[_MU_M + lane] + w[_K_MP + lane] * P)
            - w[_E_KPN + lane] * f_n * ks
            - w[_E_KILL + lane]
            - own
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
        k: Any,
    ) -> None:
        half = 0.5 * dt
        sixth = dt / 6.0
        k_rec = k[_C_KREC]
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
            k1 = rhs(P, N, D, C, s1, w, lane, k)
            k2 = rhs(P + half * k1[0], N + half * k1[1], D + half * k1[2], C + half * k1[3], s2, w, lane, k)
            k3 = rhs(P + half * k2[0], N + half * k2[1], D + half * k2[2], C + half * k2[3], s2, w, lane, k)
            k4 = rhs(P + dt * k3[0], N + dt * k3[1], D + dt * k3[2], C + dt * k3[3], s4, w, lane, k)
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

    @jit
    def before_step(w: Any, tm: float, k: Any) -> None:
        # model._integrate_chunk before each step: the antibiotic kill of each patient's latest episode at
        # the step's midpoint (a NaN onset compares False: no course) and H/H_0 at the step's start.
        delay = k[_C_DELAY]
        end = k[_C_END]
        abx = k[_C_ABX]
        for lane in range(_LANES):
            ts = w[_S_TSEC + lane]
            on = (tm >= ts + delay) & (tm < ts + end)
            w[_S_OWN + lane] = abx if on else 0.0
            w[_S_HREL + lane] = w[_Y_H + lane] * w[_INV_H0 + lane]

    @jit
    def infections(w: Any, t: float, dt: float, k: Any, b: int, n: int, exposures: Any, inocula: Any) -> None:
        # model._integrate_chunk after each step inside the at-risk window: the hazard read at the step's
        # start accumulates while alive with episodes left; at the exposure the pathogen gets the inoculum,
        # the episode's course starts and the next episode's draws take over (structures.next_episode).
        hazard = k[_C_HAZ]
        ratio = k[_C_HR]
        low = k[_C_LOW]
        episodes = k[_C_EPIS]
        hits = 0
        for lane in range(_LANES):
            at_risk = math.isnan(w[_DIED + lane]) & (w[_S_COUNT + lane] < episodes)
            rate = hazard * (ratio if w[_S_HREL + lane] < low else 1.0)
            cum = w[_S_CUM + lane] + (rate * dt if at_risk else 0.0)
            w[_S_CUM + lane] = cum
            hits += 1 if at_risk & (cum >= w[_S_EXPO + lane]) else 0
        if hits == 0:
            return
        last = exposures.shape[1] - 1
        for lane in range(_LANES):
            at_risk = math.isnan(w[_DIED + lane]) and w[_S_COUNT + lane] < episodes
            if at_risk and w[_S_CUM + lane] >= w[_S_EXPO + lane]:
                w[_Y_P + lane] = w[_Y_P + lane] + w[_S_INOC + lane]
                if w[_S_COUNT + lane] == 0.0:
                    w[_S_FIRST + lane] = t
                w[_S_TSEC + lane] = t
                count = w[_S_COUNT + lane] + 1.0
                w[_S_COUNT + lane] = count
                w[_S_CUM + lane] = 0.0
                i = min(b * _LANES + lane, n - 1)
                col = min(int(count), last)
                w[_S_EXPO + lane] = exposures[i, col]
                w[_S_INOC + lane] = inocula[i, col]

    @numba.njit(fastmath=False, error_model="numpy", inline="always")
    def ferritin_signal(w: Any, lane: int) -> float:
        # BiomarkerObserver._drive: (1 - il1) (k_nn N* + k_nd D) / (1 + (CA / C_inf,eff)^2), in its order.
        q = w[_Y_C + lane] / w[_E_CINF + lane]
        loop = w[_E_KEEP + lane] * (w[_K_NN + lane] * w[_Y_N + lane] + w[_K_ND + lane] * w[_Y_D + lane])
        return loop / (1.0 + q * q)

    @numba.njit(fastmath=False, error_model="numpy", inline="always")
    def filters(w: Any, lane: int, u: float, a_f: float, b_f: float, a_h: float, b_h: float) -> None:
        # BiomarkerObserver.update: the three first-order filters' exact updates, input held at step end.
        w[_O_F + lane] = w[_O_F + lane] * a_f + b_f * u
        w[_O_CA + lane] = w[_O_CA + lane] * a_h + b_h * w[_Y_C + lane]
        w[_O_CI + lane] = w[_O_CI + lane] * a_h + b_h * w[_E_CINF + lane]

    @jit
    def observe(w: Any, k: Any) -> None:
        # observables.BiomarkerObserver.update on the step's end state and the step's effects, in its order.
        a_f = k[_C_AF]
        b_f = k[_C_BF]
        a_h = k[_C_AH]
        b_h = k[_C_BH]
        fk = k[_C_FKPOW]
        hn = k[_C_FHILL]
        # The default Hill exponent 4 as two squarings (within an ulp or two of pow, and vectorised: a libm
        # pow call in the lane loop would keep it scalar); any other exponent by pow.
        if hn == 4.0:
            for lane in range(_LANES):
                loop = ferritin_signal(w, lane)
                l2 = loop * loop
                ln = l2 * l2
                filters(w, lane, ln / (fk + ln), a_f, b_f, a_h, b_h)
        else:
            for lane in range(_LANES):
                ln = ferritin_signal(w, lane) ** hn
                filters(w, lane, ln / (fk + ln), a_f, b_f, a_h, b_h)

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
        k: Any,
        exposures: Any,
        inocula: Any,
        aux0: Any,
        states: Any,
        death: Any,
        first: Any,
        count: Any,
        aux: Any,
    ) -> None:
        n = y0.shape[0]
        half = 0.5 * dt
        risk_from = k[_C_FROM]
        risk_until = k[_C_UNTIL]
        for b in numba.prange((n + _LANES - 1) // _LANES):
            n_comp = acc.shape[0]
            w = np.empty(_WORK_SIZE + 4 * _LANES * n_comp)
            decays = np.zeros(n_comp, dtype=np.bool_)
            # Outside the block's therapy window every effect is 0 and the untreated constants stand, so
            # effects are evaluated only inside it, and once after it to restore those constants.
            t_first = math.inf
            t_last = -math.inf
            for lane in range(_LANES):
                # Spare lanes of the last block repeat its last patient: computed, never stored.
                i = min(b * _LANES + lane, n - 1)
                for j in range(n_comp):
                    for f in range(4):
                        w[_WORK_SIZE + (4 * j + f) * _LANES + lane] = comp[i, j, f]
                    t_first = min(t_first, comp[i, j, 0])
                    t_last = max(t_last, comp[i, j, 1])
                    decays[j] = decays[j] or comp[i, j, 3] != 0.0
                for p in range(_N_PARAMS):
                    w[p * _LANES + lane] = q[p, i]
                w[_E_KNN + lane] = w[_K_NN + lane]
                w[_E_KND + lane] = w[_K_ND + lane]
                w[_E_KPN + lane] = w[_K_PN + lane]
                w[_E_INV_CINF2 + lane] = 1.0 / (w[_C_INF + lane] * w[_C_INF + lane])
                w[_E_INV_CH2 + lane] = 1.0 / (w[_C_H + lane] * w[_C_H + lane])
                w[_E_CA + lane] = 0.0
                w[_E_KILL + lane] = 0.0
                w[_E_KEEP + lane] = 1.0
                w[_E_CINF + lane] = w[_C_INF + lane]
                w[_Y_P + lane] = y0[i, 0]
                w[_Y_N + lane] = y0[i, 1]
                w[_Y_D + lane] = y0[i, 2]
                w[_Y_C + lane] = y0[i, 3]
                w[_Y_H + lane] = y0[i, 4] if ext else 0.0
                w[_SINCE + lane] = math.inf
                w[_DIED + lane] = math.nan
                w[_S_OWN + lane] = 0.0
                w[_S_HREL + lane] = 1.0
                w[_S_TSEC + lane] = math.nan
                w[_S_FIRST + lane] = math.nan
                w[_S_CUM + lane] = 0.0
                w[_S_COUNT + lane] = 0.0
                w[_S_EXPO + lane] = exposures[i, 0] if sec else math.inf
                w[_S_INOC + lane] = inocula[i, 0] if sec else 0.0
                w[_O_F + lane] = aux0[i, 0] if obs else 0.0
                w[_O_CA + lane] = aux0[i, 1] if obs else 0.0
                w[_O_CI + lane] = aux0[i, 2] if obs else 0.0
            treated = False
            step = 0
            for rec in range(1, n_rec):
                for _ in range(stride):
                    tm = step * dt + half
                    in_window = t_first <= tm < t_last
                    if in_window or treated:
                        effects(tm, acc, decays, w)
                        treated = in_window
                    if sec:
                        before_step(w, tm, k)
                    t0 = step * dt
                    step += 1
                    t = step * dt
                    rk4_step(w, dt, t, d_crit, hold, pdeath, p_crit, k)
                    if sec and t0 >= risk_from and t <= risk_until:
                        infections(w, t, dt, k, b, n, exposures, inocula)
                    if obs:
                        observe(w, k)
                for lane in range(_LANES):
                    i = b * _LANES + lane
                    if i < n:
                        states[i, rec, 0] = w[_Y_P + lane]
                        states[i, rec, 1] = w[_Y_N + lane]
                        states[i, rec, 2] = w[_Y_D + lane]
                        states[i, rec, 3] = w[_Y_C + lane]
                        if ext:
                            states[i, rec, 4] = w[_Y_H + lane]
                        if obs:
                            aux[i, rec, 0] = w[_O_F + lane]
                            aux[i, rec, 1] = w[_O_CA + lane]
                            aux[i, rec, 2] = w[_O_CI + lane]
            for lane in range(_LANES):
                i = b * _LANES + lane
                if i < n:
                    for j in range(y0.shape[1]):
                        states[i, 0, j] = y0[i, j]
                    death[i] = w[_DIED + lane]
                    if sec:
                        first[i] = w[_S_FIRST + lane]
                        count[i] = int(w[_S_COUNT + lane])
                    if obs:
                        for j in range(3):
                            aux[i, 0, j] = aux0[i, j]

    return kernel


def _kernel(ext: bool, mals: bool, mals4: bool, sec: bool, obs: bool) -> Callable[..., None]:
    key = (ext, mals, mals4, sec, obs)
    if key not in _KERNELS:
        _KERNELS[key] = _build(*key)
    return _KERNELS[key]


def compiled_observer(observer: Observer | None) -> bool:
    """Whether this backend runs ``observer``: none, or the biomarker observer of virtual populations
    (:class:`observables.BiomarkerObserver` itself, whose update this kernel reproduces)."""
    if observer is None:
        return True
    from .observables import BiomarkerObserver

    return type(observer) is BiomarkerObserver


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
    secondary: SecondaryInfection | None = None,
    secondary_draws: SecondaryDraws | None = None,
    observer: Observer | None = None,
) -> Trajectory:
    """numba twin of :func:`model.integrate` for full courses (no freezing); see the module docstring.

    ``deactivation``, ``secondary`` with ``secondary_draws`` and ``observer`` as in :func:`model.integrate`
    (the observer: :class:`observables.BiomarkerObserver` only).

    ``chunk_size`` is accepted so that the backends are interchangeable, and unused: blocks of patients are
    fixed by the kernel, and no program is compiled per batch shape.
    """
    del chunk_size
    grid = course_grid(y0, params, t_end, dt, record_every)
    y, n, n_rec, stride = grid.y, grid.n, grid.n_rec, grid.stride
    if schedule is not None and schedule.n != n:
        raise ValueError(f"schedule is for {schedule.n} patients, y0 for {n}")
    if not compiled_observer(observer):
        raise ValueError(
            f"the numba engine runs the BiomarkerObserver only, not {type(observer).__name__} (numpy engine)"
        )
    rows = [np.asarray(getattr(params, name), dtype=np.float64) for name in PARAMETER_NAMES]
    if any(r.shape != (n,) for r in rows):
        raise ValueError(f"every parameter must have shape ({n},)")
    consts = dict.fromkeys(_CONSTS, 0.0)
    # x_dn^6 by numpy, as the numpy engine computes it: a compiled power could differ in the last bit.
    x_dn6 = rows[PARAMETER_NAMES.index("x_dn")] ** 6
    ext = deactivation is not None
    loop = deactivation.mals_loop if deactivation is not None else None
    if deactivation is not None:
        # C_H, H_0 and 1/H_0 by numpy, as the numpy engine computes them.
        h0 = deactivation.h_baseline(params)
        q = np.ascontiguousarray(np.stack([*rows, x_dn6, deactivation.c_h(params), 1.0 / h0]))
        y = np.ascontiguousarray(np.concatenate([y, h0[:, None]], axis=1))
        consts["k_rec"] = deactivation.k_rec
    else:
        q = np.ascontiguousarray(np.stack([*rows, x_dn6, np.ones(n), np.ones(n)]))
    if loop is not None:
        consts.update(loop_gain=loop.gain, loop_k_pow=loop.k**loop.hill, loop_hill=loop.hill)
    exposures = inocula = np.zeros((0, 1))
    if secondary is not None:
        checked = check_secondary_inputs(n, deactivation, secondary_draws)
        episodes = secondary.max_episodes
        # As the numpy engine: (n, episodes) draws, inocula scaled by Python before the run.
        exposures = np.ascontiguousarray(episode_columns(checked.exposure, episodes))
        inocula = np.ascontiguousarray(
            secondary.inoculum_scale * episode_columns(checked.relative_inoculum, episodes)
        )
        if inocula.shape != exposures.shape:
            raise ValueError(
                f"secondary_draws: relative_inoculum has shape {inocula.shape}, exposure {exposures.shape}"
            )
        consts.update(
            hazard_per_h=secondary.hazard_per_h,
            hazard_ratio_low=secondary.hazard_ratio_low,
            low_fraction=secondary.low_fraction,
            risk_from=secondary.at_risk_from_h - 1e-9,
            risk_until=secondary.at_risk_until_h + 1e-9,
            abx_delay=secondary.abx_delay_h,
            abx_end=secondary.abx_delay_h + secondary.abx_duration_h,
            abx_kill=secondary.abx_kill_per_h,
            episodes=float(episodes),
        )
    aux0 = np.zeros((0, 3))
    if observer is not None:
        cal = observer.cal  # type: ignore[attr-defined]  # a BiomarkerObserver (checked above)
        aux0 = np.ascontiguousarray(observer.initial(grid.y, params), dtype=np.float64)
        a_f = math.exp(-dt / cal.tau_ferritin_h)
        a_h = math.exp(-dt / cal.tau_hla_h)
        consts.update(
            a_f=a_f,
            b_f=1.0 - a_f,
            a_h=a_h,
            b_h=1.0 - a_h,
            fer_k_pow=cal.ferritin_k**cal.ferritin_hill,
            fer_hill=cal.ferritin_hill,
        )
    k = np.array([consts[name] for name in _CONSTS], dtype=np.float64)
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
    n_aux = 3 if observer is not None else 0
    states = np.empty((n, n_rec, y.shape[1]))
    death = np.empty(n)
    first = np.full(n, np.nan)
    count = np.zeros(n, dtype=np.int64)
    aux = np.empty((n, n_rec, n_aux))
    if n:
        mals4 = loop is not None and loop.hill == 4.0
        _kernel(ext, loop is not None, mals4, secondary is not None, observer is not None)(
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
            k,
            exposures,
            inocula,
            aux0,
            states,
            death,
            first,
            count,
            aux,
        )
    traj = grid.trajectory(states, death, dt)
    return replace(
        traj,
        aux=aux,
        aux_names=tuple(observer.names) if observer is not None else (),
        secondary_time=first if secondary is not None else None,
        secondary_count=count if secondary is not None else None,
    )
