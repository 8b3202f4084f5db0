"""Optional JAX backend of the batch RK4 integrator (same equations, step, effects and death rule).

``integrate_jax`` takes the arguments of :func:`model.integrate` for full courses (no observer) and returns
the same :class:`model.Trajectory`: the Reynolds 2006 model with every therapy hook and both death rules,
the monocyte-deactivation extension (state H, the ``hla_gain`` hook) without its MALS loop, and ICU-acquired
infections (single or recurring). The whole course is one XLA program (``lax.scan`` over records,
``fori_loop`` over steps), compiled once per (steps, record stride, therapy hooks, extensions) and run in
float64, so results equal the numpy engine to round-off. Every patient is integrated over the full course
(no freezing). On CPU the fused kernel avoids numpy's per-operation temporaries; on a GPU the same code runs
unchanged. Needs the optional extra ``jax`` (``python3 tasks.py extra jax``); :func:`available` says whether
it is importable.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from immunostrat.extras import require_extra

from .model import (
    DEFAULT_DT,
    OUTCOME_HORIZON_H,
    PARAMETER_NAMES,
    DeactivationParameters,
    DeathRule,
    PatientParameters,
    SecondaryDraws,
    SecondaryInfection,
    Trajectory,
    check_secondary_inputs,
    course_grid,
)
from .structures import episode_columns
from .therapies import HOOKS, Schedule


def available() -> bool:
    return importlib.util.find_spec("jax") is not None


_COMPILED: dict[tuple[Any, ...], Callable[..., Any]] = {}

#: Scalar constants of the extensions baked into a compiled program (part of its cache key): the
#: deactivation extension's k_rec; the secondary infections' (hazard,
#: ratio when low, low fraction, at_risk_from_h - 1e-9, at_risk_until_h + 1e-9, abx delay, abx delay +
#: duration, abx kill, episodes), each computed by Python as the numpy engine computes it.
Extensions = tuple[float | None, tuple[float, ...] | None]


def _build(
    n_rec: int,
    stride: int,
    dt: float,
    hooks: tuple[int, ...],
    d_crit: float,
    hold: float,
    p_crit: float,
    ext: Extensions = (None, None),
) -> Any:
    import jax
    import jax.numpy as jnp
    from jax import lax

    half = 0.5 * dt
    sixth = dt / 6.0
    rec_rate, sec = ext
    deact = rec_rate is not None
    k_rec = 0.0 if rec_rate is None else rec_rate

    def run(
        y0: Any, par: dict[str, Any], comp: tuple[Any, Any, Any, Any], draws: tuple[Any, Any]
    ) -> tuple[Any, ...]:
        strength, start, end, rate = comp
        x_dn6 = par["x_dn"] ** 6
        kill_m = par["k_pm"] * par["s_m"]
        k_pg_over_pinf = par["k_pg"] / par["p_inf"]

        def effects(t: Any) -> list[Any]:
            tot = [jnp.zeros_like(y0[0]) for _ in HOOKS]
            for i, h in enumerate(hooks):
                on = (t >= start[i]) & (t < end[i])
                val = jnp.where(on, strength[i] * jnp.exp(-rate[i] * jnp.where(on, t - start[i], 0.0)), 0.0)
                tot[h] = tot[h] + val
            tot[0] = jnp.minimum(tot[0], 1.0)
            return tot

        def rhs(P: Any, N: Any, D: Any, C: Any, e: list[Any], ks: Any, own: Any) -> tuple[Any, Any, Any, Any]:
            il1, kpn_gain, cinf_gain, ca_source, kill = e[:5]  # hla_gain: deactivation extension only
            cinf = par["c_inf"] * (1.0 + cinf_gain)
            inv = 1.0 / (1.0 + C * C / (cinf * cinf))
            f_n = N * inv
            k_nn = par["k_nn"] * (1.0 - il1)
            k_nd = par["k_nd"] * (1.0 - il1)
            r = (k_nn * N + par["k_np"] * P + k_nd * D) * inv
            kill_n = par["k_pn"] * (1.0 + kpn_gain) * f_n
            d_p = P * (
                par["k_pg"]
                - k_pg_over_pinf * P
                - kill_m / (par["mu_m"] + par["k_mp"] * P)
                - (kill_n * ks if deact else kill_n)
                - kill
                - own
            )
            d_n = par["s_nr"] * r / (par["mu_nr"] + r) - par["mu_n"] * N
            f2 = f_n * f_n
            f6 = f2 * f2 * f2
            d_d = par["k_dn"] * f6 / (x_dn6 + f6) - par["mu_d"] * D
            f_c = (N + par["k_cnd"] * D) * inv
            d_c = par["s_c"] + par["k_cn"] * f_c / (1.0 + f_c) - par["mu_c"] * C + ca_source
            return d_p, d_n, d_d, d_c

        def step(k: Any, carry: tuple[Any, ...]) -> tuple[Any, ...]:
            P, N, D, C, H, since, death, t_sec, t_first, cum, count, expo, inoc = carry
            t0 = k * dt
            e = effects(t0 + half)
            own: Any = 0.0
            if sec is not None:  # the antibiotic course of each patient's latest episode (NaN: none)
                on = (t0 + half >= t_sec + sec[5]) & (t0 + half < t_sec + sec[6])
                own = jnp.where(on, sec[7], 0.0)
                h_rel = H * par["inv_h0"]
            if deact:
                # model._integrate_chunk: H by its exact exponential update for CA frozen within the step
                c_h = par["c_h"] * (1.0 + e[2]) * (1.0 + e[5])
                inv_ch2 = 1.0 / (c_h * c_h)
                x2_0 = C * C * inv_ch2
                h_inf = 1.0 / (1.0 + x2_0)
                decay = jnp.exp(-k_rec * (1.0 + x2_0) * half)
                h_mid = h_inf + (H - h_inf) * decay
                h_end = h_inf + (H - h_inf) * decay * decay
                s1, s2, s4 = H * par["inv_h0"], h_mid * par["inv_h0"], h_end * par["inv_h0"]
            else:
                s1 = s2 = s4 = 1.0
            k1 = rhs(P, N, D, C, e, s1, own)
            k2 = rhs(P + half * k1[0], N + half * k1[1], D + half * k1[2], C + half * k1[3], e, s2, own)
            k3 = rhs(P + half * k2[0], N + half * k2[1], D + half * k2[2], C + half * k2[3], e, s2, own)
            k4 = rhs(P + dt * k3[0], N + dt * k3[1], D + dt * k3[2], C + dt * k3[3], e, s4, own)
            P = jnp.maximum(P + sixth * (k1[0] + 2.0 * (k2[0] + k3[0]) + k4[0]), 0.0)
            N = jnp.maximum(N + sixth * (k1[1] + 2.0 * (k2[1] + k3[1]) + k4[1]), 0.0)
            D = D + sixth * (k1[2] + 2.0 * (k2[2] + k3[2]) + k4[2])
            C_end = C + sixth * (k1[3] + 2.0 * (k2[3] + k3[3]) + k4[3])
            if deact:
                x2 = 0.5 * (x2_0 + C_end * C_end * inv_ch2)
                h_inf = 1.0 / (1.0 + x2)
                H = h_inf + (H - h_inf) * jnp.exp(-k_rec * (1.0 + x2) * dt)
            C = C_end
            t = (k + 1) * dt
            critical = jnp.greater_equal(D, d_crit)
            if math.isfinite(p_crit):  # the pathogen death rule (DeathRule.p_crit), traced only when set
                critical = critical | jnp.greater_equal(P, p_crit)
            since = jnp.where(critical, jnp.minimum(since, t), jnp.inf)
            death = jnp.where(jnp.isnan(death) & (t - since >= hold), t, death)
            if sec is not None:
                # The hazard (read at the step's start) accumulates inside the at-risk window while alive
                # with episodes left; at the exposure the inoculum, a new course, the next episode's draws.
                hazard, ratio, low, risk_from, risk_until = sec[:5]
                episodes = int(sec[8])
                window = (t0 >= risk_from) & (t <= risk_until)
                at_risk = window & jnp.isnan(death) & (count < episodes)
                cum = cum + jnp.where(at_risk, hazard * jnp.where(h_rel < low, ratio, 1.0) * dt, 0.0)
                hit = at_risk & (cum >= expo)
                P = P + jnp.where(hit, inoc, 0.0)
                t_first = jnp.where(hit & (count == 0), t, t_first)
                t_sec = jnp.where(hit, t, t_sec)
                count = count + hit.astype(count.dtype)
                cum = jnp.where(hit, 0.0, cum)
                col = jnp.minimum(count, episodes - 1)
                expo = jnp.where(hit, jnp.take_along_axis(draws[0], col[None, :], axis=0)[0], expo)
                inoc = jnp.where(hit, jnp.take_along_axis(draws[1], col[None, :], axis=0)[0], inoc)
            return P, N, D, C, H, since, death, t_sec, t_first, cum, count, expo, inoc

        def record(carry: tuple[Any, ...], r: Any) -> tuple[tuple[Any, ...], Any]:
            carry = lax.fori_loop(r * stride, (r + 1) * stride, step, carry)
            return carry, jnp.stack(carry[:5] if deact else carry[:4], axis=1)

        nan = jnp.full_like(y0[0], jnp.nan)
        zero = jnp.zeros_like(y0[0])
        H0 = y0[4] if deact else zero
        expo0 = draws[0][0] if sec is not None else zero
        inoc0 = draws[1][0] if sec is not None else zero
        count0 = jnp.zeros(y0[0].shape, dtype=jnp.int64)
        init = (y0[0], y0[1], y0[2], y0[3], H0, jnp.full_like(y0[0], jnp.inf), nan, nan, nan, zero, count0)
        last, recs = lax.scan(record, (*init, expo0, inoc0), jnp.arange(n_rec - 1))
        return recs, last[6], last[8], last[10]

    return jax.jit(run)


def integrate_jax(
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
) -> Trajectory:
    """JAX twin of :func:`model.integrate` (full integration, no observer); see the module docstring.

    ``deactivation`` (without MALS loop) and ``secondary`` with ``secondary_draws`` as in
    :func:`model.integrate`.

    Patients run in chunks of ``chunk_size`` (the last one padded by repeating its first patient, so one
    compiled program serves every chunk): at about 1,000 patients the working set stays in cache, which
    measured 1.5-2.5x faster per patient on CPU than 4,096-20,000-patient blocks.
    """
    require_extra("jax", "the JAX engine")
    import jax

    grid = course_grid(y0, params, t_end, dt, record_every)
    y, n, n_rec, stride = grid.y, grid.n, grid.n_rec, grid.stride
    if schedule is not None and schedule.n != n:
        raise ValueError(f"schedule is for {schedule.n} patients, y0 for {n}")
    # hla_gain acts on the deactivation extension only (as in the numpy engine): dropped without it.
    comps = [
        c
        for c in (schedule.components if schedule is not None else ())
        if deactivation is not None or c.hook != "hla_gain"
    ]
    hooks = tuple(HOOKS.index(c.hook) for c in comps)
    if comps:
        arrays = tuple(np.stack([getattr(c, f) for c in comps]) for f in ("strength", "start", "end", "rate"))
    else:
        arrays = tuple(np.zeros((0, n)) for _ in range(4))
    par_all = {name: np.asarray(getattr(params, name), dtype=np.float64) for name in PARAMETER_NAMES}
    k_rec: float | None = None
    sec: tuple[float, ...] | None = None
    n_state = 4
    if deactivation is not None:
        # C_H and 1/H_0 by numpy, as the numpy engine computes them; H starts at H_0.
        h0 = deactivation.h_baseline(params)
        par_all["c_h"] = deactivation.c_h(params)
        par_all["inv_h0"] = 1.0 / h0
        y = np.concatenate([y, h0[:, None]], axis=1)
        k_rec = deactivation.k_rec
        n_state = 5
        if deactivation.mals_loop is not None:
            # Its positive feedback amplifies the round-off of XLA's fused code past 1e-9 of the numpy
            # engine in a few patients near the loop's switch (measured 3e-7): numba or numpy run it.
            raise ValueError(
                "the MALS loop (DeactivationParameters.mals_loop) does not run on the JAX engine"
            )
    exposures = inocula = np.zeros((1, n))
    if secondary is not None:
        checked = check_secondary_inputs(n, deactivation, secondary_draws)
        episodes = secondary.max_episodes
        exposures = episode_columns(checked.exposure, episodes).T.copy()
        inocula = (secondary.inoculum_scale * episode_columns(checked.relative_inoculum, episodes)).T
        sec = (
            secondary.hazard_per_h,
            secondary.hazard_ratio_low,
            secondary.low_fraction,
            secondary.at_risk_from_h - 1e-9,
            secondary.at_risk_until_h + 1e-9,
            secondary.abx_delay_h,
            secondary.abx_delay_h + secondary.abx_duration_h,
            secondary.abx_kill_per_h,
            float(episodes),
        )
    ext: Extensions = (k_rec, sec)
    key = (
        n_rec,
        stride,
        float(dt),
        hooks,
        death_rule.d_crit,
        death_rule.hold_h - 1e-9,
        death_rule.p_crit,
        ext,
    )
    size = max(1, min(chunk_size, n))
    states = np.empty((n, n_rec, n_state))
    states[:, 0, :] = y
    death_np = np.empty(n)
    first_np = np.full(n, np.nan)
    count_np = np.zeros(n, dtype=np.int64)
    with jax.enable_x64(True):
        if key not in _COMPILED:
            _COMPILED[key] = _build(*key)
        fn = _COMPILED[key]
        for lo in range(0, n, size):
            rows = np.arange(lo, min(n, lo + size))
            pad = np.concatenate([rows, np.full(size - rows.size, rows[0])])
            par = {name: arr[pad] for name, arr in par_all.items()}
            comp = tuple(a[:, pad] for a in arrays)
            draws = (exposures[:, pad], inocula[:, pad])
            recs, death, first, count = fn(tuple(y[pad].T.copy()), par, comp, draws)
            states[rows, 1:, :] = np.transpose(np.asarray(recs, dtype=np.float64), (1, 0, 2))[: rows.size]
            death_np[rows] = np.asarray(death, dtype=np.float64)[: rows.size]
            first_np[rows] = np.asarray(first, dtype=np.float64)[: rows.size]
            count_np[rows] = np.asarray(count, dtype=np.int64)[: rows.size]
    traj = grid.trajectory(states, death_np, dt)
    if secondary is None:
        return traj
    return replace(traj, secondary_time=first_np, secondary_count=count_np)
