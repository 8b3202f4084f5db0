"""Benchmark: virtual patients per second of the batch RK4 integrator against scipy solve_ivp.

Same patients for every engine: k_pg ~ U(0.2, 1.0) /h and P0 ~ U(0.1, 3.0) with the other Reynolds 2006
parameters at Table 1 (the population of insilico.md section 5), each integrated over a 28-day course
(672 h). Baselines, measured in the same run:

* scipy ``solve_ivp`` one patient at a time, LSODA rtol 1e-8 / atol 1e-10 (the reference of insilico.md 5
  and reynolds_check.py), on a subset; the outcome classes of both engines must agree on every patient of it;
* the IIRABM's published cost, 7-9 core-seconds per 28-day patient (insilico.md 2.1, [measured] there;
  not re-run here: the IIRABM is GPL C++ outside this repository).

Rates are patients per CPU-second (``time.process_time``, all threads of this process), so a shared,
loaded machine does not distort them and they compare directly with the IIRABM's core-seconds; wall-clock
rates are printed beside them. The JAX and numba rows are printed when jax / numba are installed
(``integrate_jax``, ``integrate_numba``: float64, full integration, compilation in an untimed warm-up call,
outcome classes checked equal to numpy on every patient). RATIO on the last line is that of the fastest CPU
engine per CPU-second (named in the details) over solve_ivp. The sweep row times population sampling
(``simulation.sweep``'s unit of work) on a local Dask cluster against the same batches run serially, in
wall-clock time (that is what a cluster buys), and checks the batches are identical; Ray is not used.

Full model (model variant ``full``: monocyte deactivation, ICU-acquired infections, background antibiotics and
the biomarker observer, the course a trial simulates: onset to 28 days after enrolment, 696 h), same patients
plus their infection draws: patients per CPU-second on numpy and on each compiled engine that runs it
(``population.integrate_course``, as populations and trials call it), against scipy ``solve_ivp`` (LSODA
rtol 1e-8 / atol 1e-10) on the same equations one patient at a time (:func:`_full_model_ivp`: the infection
as an event, the antibiotic windows as integration breakpoints, the filters as ODEs), with the share of
outcome classes both agree on. Trial throughput is simulated trials of n = 276 per CPU-second: a trial
integrates each of its 276 patients once, on the arm allocated (the rate over 276). The design comparison
times what ``simulate trial`` runs for every design: the potential outcomes of a 4,000-patient VPop of the
full model under placebo and each therapy, then 1,000 trials of 276 per design (``--quick``: 500 patients,
100 trials), the VPop's own sampling timed apart, all on the default engine (``auto``).

Usage: ``python benchmarks/simulate.py [--quick]``; the last line is
``benchmark simulate: RATIOx solve_ivp (details)``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from collections.abc import Callable
from typing import cast

import numpy as np

from immunostrat.extras import install_command
from immunostrat.simulation.model import (
    DAY28_H,
    DEFAULT_DT,
    OUTCOME_NAMES,
    ReynoldsParameters,
    Trajectory,
    classify,
    initial_state,
    integrate,
    patient_parameters,
    solve_ivp_final,
)

IIRABM_CORE_SECONDS = (7.0, 9.0)  # per 28-day patient, insilico.md 2.1


def _patients(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 1.0, n), rng.uniform(0.1, 3.0, n)


def _rate(
    engine: Callable[..., Trajectory], kpg: np.ndarray, p0: np.ndarray, repeats: int, **kw: object
) -> tuple[float, float, np.ndarray]:
    """(patients per CPU-second, per wall-second, outcome classes); best of ``repeats``."""
    params = patient_parameters(kpg.size, k_pg=kpg)
    y0 = initial_state(p0, params)
    cpu = wall = np.inf
    outcome = np.empty(0, dtype=np.int64)
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        traj = engine(y0, params, t_end=DAY28_H, dt=DEFAULT_DT, record_every=DAY28_H, **kw)
        cpu = min(cpu, time.process_time() - c0)
        wall = min(wall, time.perf_counter() - w0)
        outcome = traj.outcome
    return kpg.size / cpu, kpg.size / wall, outcome


#: the trial size of the throughput figure (ImmunoSep's sample size, domain.md A1)
TRIAL_N = 276


def _full_model_batch(n: int, seed: int) -> dict[str, object]:
    """The :func:`population.integrate_course` request of ``n`` patients of the full model (the batch of
    :func:`_patients`, their ICU-acquired infection draws, background antibiotics, biomarker observer)."""
    from immunostrat.simulation.model import DeathRule
    from immunostrat.simulation.observables import BiomarkerObserver
    from immunostrat.simulation.population import (
        STANDARD_OF_CARE,
        PopulationPriors,
        background_schedule,
        day28_horizon_h,
        model_variant,
    )
    from immunostrat.simulation.structures import draw_secondary

    options = model_variant("full")
    kpg, p0 = _patients(n, seed)
    params = patient_parameters(n, k_pg=kpg)
    sec = options["secondary"]
    draws = draw_secondary(np.random.default_rng(seed + 1), n, 1, PopulationPriors().p0.sample)
    return {
        "y0": initial_state(p0, params),
        "params": params,
        "t_end": day28_horizon_h(1),
        "schedule": background_schedule(STANDARD_OF_CARE, n),
        "observer": BiomarkerObserver(),
        "deactivation": options["deactivation"],
        "secondary": sec,
        "secondary_draws": draws,
        "death_rule": DeathRule(),
    }


def _full_model_rate(
    engine: str, request: dict[str, object], repeats: int
) -> tuple[float, float, Trajectory]:
    """(patients per CPU-s, per wall-s, trajectory) of the full-model batch on ``engine``; best of
    ``repeats``."""
    from immunostrat.simulation.population import integrate_course

    cpu = wall = np.inf
    traj = None
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        traj = integrate_course(engine, **request)  # type: ignore[arg-type]
        cpu = min(cpu, time.process_time() - c0)
        wall = min(wall, time.perf_counter() - w0)
    assert traj is not None
    return traj.size / cpu, traj.size / wall, traj


def _full_model_ivp(request: dict[str, object], i: int) -> np.ndarray:
    """Patient ``i`` of a full-model request with scipy ``solve_ivp`` (LSODA rtol 1e-8, atol 1e-10): state
    P, N*, D, CA, H (monocyte deactivation), the cumulative infection hazard and the two biomarker filters
    as ODEs; the ICU-acquired infection is an event on the hazard (then P jumps by the inoculum and its
    antibiotic course starts 12 h later); every switch of a kill term or of the hazard window is an
    integration breakpoint. No therapy besides the background antibiotics. Returns the final P, N*, D, CA."""
    from scipy.integrate import solve_ivp

    from immunostrat.simulation.model import (
        DeactivationParameters,
        PatientParameters,
        SecondaryDraws,
        SecondaryInfection,
    )
    from immunostrat.simulation.observables import BiomarkerObserver

    de = cast(DeactivationParameters, request["deactivation"])
    sec = cast(SecondaryInfection, request["secondary"])
    draws = cast(SecondaryDraws, request["secondary_draws"])
    cal = cast(BiomarkerObserver, request["observer"]).cal
    p = cast(PatientParameters, request["params"]).patient(i)
    t_end = float(cast(float, request["t_end"]))
    c_h = de.c_h_scale * p.c_inf
    h0 = 1.0 / (1.0 + (p.ca_baseline / c_h) ** 2)
    exposure = float(draws.exposure[i])
    inoculum = sec.inoculum_scale * float(draws.relative_inoculum[i])
    soc = (12.0, 180.0, 0.067)  # therapies.yaml standard_of_care: kill 0.067 /h from 12 h for 168 h

    def rhs(t: float, y: np.ndarray, kill: float, hazard_on: bool) -> list[float]:
        P, N, D, C, H, _, _, _ = y
        inhib = 1.0 + (C / p.c_inf) ** 2
        f_n = N / inhib
        r = (p.k_nn * N + p.k_np * P + p.k_nd * D) / inhib
        d_p = (
            p.k_pg * P * (1.0 - P / p.p_inf)
            - p.k_pm * p.s_m * P / (p.mu_m + p.k_mp * P)
            - p.k_pn * f_n * P * H / h0
            - kill * P
        )
        d_n = p.s_nr * r / (p.mu_nr + r) - p.mu_n * N
        d_d = p.k_dn * f_n**6 / (p.x_dn**6 + f_n**6) - p.mu_d * D
        f_c = (N + p.k_cnd * D) / inhib
        d_c = p.s_c + p.k_cn * f_c / (1.0 + f_c) - p.mu_c * C
        d_h = de.k_rec * (1.0 - H - (C / c_h) ** 2 * H)
        low = H / h0 < sec.low_fraction
        rate = sec.hazard_per_h * (sec.hazard_ratio_low if low else 1.0) if hazard_on else 0.0
        loop = (p.k_nn * N + p.k_nd * D) / inhib
        u = loop**cal.ferritin_hill / (cal.ferritin_k**cal.ferritin_hill + loop**cal.ferritin_hill)
        return [d_p, d_n, d_d, d_c, d_h, rate, (u - y[6]) / cal.tau_ferritin_h, (C - y[7]) / cal.tau_hla_h]

    y = np.concatenate([np.asarray(request["y0"], dtype=np.float64)[i], [h0, 0.0, 0.0, p.ca_baseline]])
    t_inf = np.inf
    t = 0.0
    while t < t_end - 1e-9:
        abx = (t_inf + sec.abx_delay_h, t_inf + sec.abx_delay_h + sec.abx_duration_h)
        edges = [soc[0], soc[1], sec.at_risk_from_h, sec.at_risk_until_h, *abx, t_end]
        t_next = min(e for e in edges if e > t + 1e-9)
        mid = 0.5 * (t + t_next)
        kill = (soc[2] if soc[0] <= mid < soc[1] else 0.0) + (
            sec.abx_kill_per_h if abx[0] <= mid < abx[1] else 0.0
        )
        hazard_on = np.isinf(t_inf) and sec.at_risk_from_h <= mid < sec.at_risk_until_h

        def infected(_t: float, yy: np.ndarray, *_: object) -> float:
            return yy[5] - exposure

        infected.terminal = True  # type: ignore[attr-defined]
        sol = solve_ivp(
            rhs,
            (t, t_next),
            y,
            method="LSODA",
            rtol=1e-8,
            atol=1e-10,
            args=(kill, hazard_on),
            events=infected if hazard_on else None,
        )
        if not sol.success:
            raise RuntimeError(f"solve_ivp failed: {sol.message}")
        y, t = sol.y[:, -1].copy(), float(sol.t[-1])
        if hazard_on and sol.status == 1:  # the infection: its inoculum, and its antibiotics from 12 h later
            y[0] += inoculum
            t_inf = t
    return np.asarray(y[:4], dtype=np.float64)


def _design_comparison(population_size: int, trials: int) -> tuple[float, float, float, float, str]:
    """(VPop sampling wall-s, CPU-s; design comparison wall-s, CPU-s; engine) of every design at n = 276
    on one full-model VPop (see the module docstring)."""
    from immunostrat.simulation.observables import BiomarkerObserver
    from immunostrat.simulation.population import course_engine, generate_population, model_variant
    from immunostrat.simulation.trial import DESIGNS, power_curve

    c0, w0 = time.process_time(), time.perf_counter()
    vpop = generate_population(population_size, 2026, **model_variant("full"))  # type: ignore[arg-type]
    vpop_cpu, vpop_wall = time.process_time() - c0, time.perf_counter() - w0
    engine = course_engine(vpop.engine, BiomarkerObserver(), vpop.deactivation, vpop.secondary)
    c0, w0 = time.process_time(), time.perf_counter()
    power_curve(list(DESIGNS), [TRIAL_N], trials, 2026, population=vpop)
    return vpop_wall, vpop_cpu, time.perf_counter() - w0, time.process_time() - c0, engine


def _full_model_section(quick: bool) -> str:
    """Print the full model's rows (engines, solve_ivp, trial throughput, design comparison); the summary
    for the last line."""
    from immunostrat.simulation.engines import ENGINES, installed, unsupported

    n = 1_000 if quick else 8_000
    n_ref = 8 if quick else 40
    request = _full_model_batch(n, seed=2027)
    feature = {k: request[k] for k in ("observer", "deactivation", "secondary")}
    engines = [e for e in ENGINES if installed(e) and unsupported(e, **feature) is None]  # type: ignore[arg-type]
    for engine in engines:  # warm-up: compilation, not timed
        _full_model_rate(engine, _full_model_batch(64, seed=1), 1)
    rows: dict[str, tuple[float, float]] = {}
    reference = None
    for engine in engines:
        cpu, wall, traj = _full_model_rate(engine, request, 1 if quick else 2)
        rows[engine] = (cpu, wall)
        if reference is None:
            reference = traj
        elif not (
            np.array_equal(traj.outcome, reference.outcome)
            and np.array_equal(traj.death_time, reference.death_time, equal_nan=True)
        ):
            raise SystemExit(f"full model: {engine} and {engines[0]} outcomes differ")
    assert reference is not None
    # solve_ivp on as many patients who die as who survive (its cost differs between the two); classes
    # compared on the survivors (the engines freeze the dead at death, as trials use them)
    died = np.isfinite(reference.death_time)
    subset = np.concatenate([np.flatnonzero(died)[: n_ref // 2], np.flatnonzero(~died)[: n_ref - n_ref // 2]])
    c0, w0 = time.process_time(), time.perf_counter()
    ref = np.stack([_full_model_ivp(request, int(i)) for i in subset])
    rate_ref, wall_ref = subset.size / (time.process_time() - c0), subset.size / (time.perf_counter() - w0)
    alive = ~died[subset]
    agree = int(np.sum(classify(ref)[alive] == reference.outcome[subset][alive]))
    skipped = sorted(set(ENGINES) - set(engines))
    print(
        f"full model (deactivation, ICU-acquired infections, background antibiotics, biomarker observer), "
        f"{n} patients, onset to day 28 after enrolment:"
    )
    print(
        "engine                                   patients/CPU-s  patients/wall-s  x solve_ivp"
        "  trials of 276/CPU-s"
    )
    for engine, (cpu, wall) in rows.items():
        print(
            f"{engine + ' RK4 dt 0.5 h':40s} {cpu:14.1f} {wall:16.1f} {cpu / rate_ref:12.1f}"
            f" {cpu / TRIAL_N:20.2f}"
        )
    print(
        f"{f'scipy solve_ivp LSODA 1e-8 ({n_ref})':40s} {rate_ref:14.2f} {wall_ref:16.2f} {1.0:12.1f} "
        f"{rate_ref / TRIAL_N:20.4f}"
    )
    print(
        f"  solve_ivp and RK4 outcome classes agree on {agree} of {int(alive.sum())} survivors (dead patients"
        f" are frozen at death by the engines); not run here: {', '.join(skipped) or 'none'}"
    )
    size, trials = (500, 100) if quick else (4_000, 1_000)
    vpop_wall, vpop_cpu, comp_wall, comp_cpu, engine = _design_comparison(size, trials)
    print(
        f"design comparison, full model, {engine} engine: VPop of {size} sampled in {vpop_wall:.1f} s wall "
        f"({vpop_cpu:.1f} CPU-s); potential outcomes and {trials} trials of 276 for each of 5 designs in "
        f"{comp_wall:.1f} s wall ({comp_cpu:.1f} CPU-s)"
    )
    best = max(rows, key=lambda k: rows[k][0])
    return (
        f"full model {best} {rows[best][0]:.0f} patients/CPU-s = {rows[best][0] / rate_ref:.0f}x solve_ivp "
        f"({rate_ref:.2f}/s), {rows[best][0] / TRIAL_N:.1f} trials of 276/CPU-s; "
        f"{trials}-trial design comparison on a {size} VPop {comp_wall:.0f} s wall (VPop {vpop_wall:.0f} s)"
    )


def _dask_sweep(n_batches: int, batch: int) -> tuple[float, float, int] | None:
    """Virtual-population sampling (28-day courses with biomarker filters and background antibiotics)
    fanned out over a local Dask cluster of one single-threaded worker process per CPU against the same
    batches run serially: (serial patients per wall-s, Dask patients per wall-s, workers). The batches
    must come back identical. None when ``distributed`` is not installed."""
    if importlib.util.find_spec("distributed") is None:
        return None
    from distributed import Client, LocalCluster

    from immunostrat.simulation.observables import ObservableCalibration
    from immunostrat.simulation.population import STANDARD_OF_CARE, BatchJob, _plausible_batch

    cal = ObservableCalibration()
    jobs = [BatchJob(2026, i, batch, None, cal, 1, STANDARD_OF_CARE) for i in range(n_batches)]
    _plausible_batch(BatchJob(2026, 999, 64, None, cal, 1, STANDARD_OF_CARE))  # warm-up
    w0 = time.perf_counter()
    serial = [_plausible_batch(job) for job in jobs]
    serial_rate = n_batches * batch / (time.perf_counter() - w0)
    workers = os.cpu_count() or 1
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        executor = client.get_executor()
        list(executor.map(_plausible_batch, jobs[:workers]))  # workers import and warm up, not timed
        w0 = time.perf_counter()
        fanned = list(executor.map(_plausible_batch, jobs))
        dask_rate = n_batches * batch / (time.perf_counter() - w0)
    for (a, cell_a, _), (b, cell_b, _) in zip(serial, fanned, strict=True):
        if not (np.array_equal(cell_a, cell_b) and np.array_equal(a.p0, b.p0)):
            raise SystemExit("a Dask batch differs from the serial one")
    return serial_rate, dask_rate, workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batches (under a minute)")
    args = parser.parse_args()
    n_batch = 8_000 if args.quick else 40_000
    n_ref = 40 if args.quick else 200
    repeats = 1 if args.quick else 2
    kpg, p0 = _patients(n_batch, seed=2026)

    # warm-up (imports, allocator, JAX and numba compilation) on a few patients, not timed
    _rate(integrate, kpg[:64], p0[:64], 1)
    solve_ivp_final(ReynoldsParameters(k_pg=0.5), 1.0, t_end=24.0)
    jax_ok = importlib.util.find_spec("jax") is not None
    if not jax_ok:
        print(f"jax: the optional extra 'jax' is not installed, JAX row skipped ({install_command('jax')})")
    if jax_ok:
        from immunostrat.simulation.jax_backend import integrate_jax

        _rate(integrate_jax, kpg[:1024], p0[:1024], 1, chunk_size=1024)  # compiles the chunk shape
    numba_ok = importlib.util.find_spec("numba") is not None
    if numba_ok:
        from immunostrat.simulation.numba_backend import integrate_numba

        _rate(integrate_numba, kpg[:64], p0[:64], 1)  # one kernel for every batch size

    cpu_full, wall_full, out_full = _rate(integrate, kpg, p0, repeats, drop_healed=False)
    cpu_fast, wall_fast, out_fast = _rate(integrate, kpg, p0, repeats, drop_healed=True)
    if not np.array_equal(out_full, out_fast):
        raise SystemExit("freezing healed patients changed an outcome class")
    rates = {"numpy": cpu_full}
    if jax_ok:
        cpu_jax, wall_jax, out_jax = _rate(integrate_jax, kpg, p0, repeats, chunk_size=1024)
        if not np.array_equal(out_jax, out_full):
            raise SystemExit("JAX and numpy outcome classes differ")
        rates["jax"] = cpu_jax
    if numba_ok:
        cpu_nb, wall_nb, out_nb = _rate(integrate_numba, kpg, p0, repeats)
        if not np.array_equal(out_nb, out_full):
            raise SystemExit("numba and numpy outcome classes differ")
        rates["numba"] = cpu_nb

    c0, w0 = time.process_time(), time.perf_counter()
    ref = np.stack(
        [
            solve_ivp_final(ReynoldsParameters(k_pg=float(k)), float(p), t_end=DAY28_H)
            for k, p in zip(kpg[:n_ref], p0[:n_ref], strict=True)
        ]
    )
    rate_ref = n_ref / (time.process_time() - c0)
    wall_ref = n_ref / (time.perf_counter() - w0)
    mismatches = int(np.sum(classify(ref) != out_full[:n_ref]))
    if mismatches:
        raise SystemExit(f"{mismatches} of {n_ref} outcome classes differ between RK4 and solve_ivp")
    counts = {OUTCOME_NAMES[c]: int(np.sum(out_full == c)) for c in np.unique(out_full)}

    iirabm = tuple(1.0 / s for s in IIRABM_CORE_SECONDS)  # patients per core-second
    print(f"patients: {n_batch} (k_pg U(0.2,1.0), P0 U(0.1,3.0)), 28-day course, classes {counts}")
    print("engine                                        patients/CPU-s   patients/wall-s   x solve_ivp")
    rows = [
        ("numpy RK4 dt 0.5 h, full integration", cpu_full, wall_full),
        ("numpy RK4 dt 0.5 h, healed frozen", cpu_fast, wall_fast),
    ]
    if jax_ok:
        rows.append(("JAX RK4 dt 0.5 h (CPU, float64)", cpu_jax, wall_jax))
    if numba_ok:
        rows.append(("numba RK4 dt 0.5 h (CPU, float64)", cpu_nb, wall_nb))
    rows.append((f"scipy solve_ivp LSODA 1e-8, 1 at a time ({n_ref})", rate_ref, wall_ref))
    for name, cpu, wall in rows:
        print(f"{name:46s} {cpu:14.1f} {wall:17.1f} {cpu / rate_ref:12.1f}")
    print(
        f"IIRABM published cost 7-9 core-s per 28-day patient: "
        f"{iirabm[1]:.3f}-{iirabm[0]:.3f} patients/core-s"
    )
    sweep = _dask_sweep(4 if args.quick else 8, 2048 if args.quick else 4096)
    if sweep is None:
        print("dask: not installed, skipped")
        dask_txt = "dask not installed; "
    else:
        serial_rate, dask_rate, workers = sweep
        print(
            f"dask sweep (simulation.sweep): population batches, {workers} local worker processes "
            f"{dask_rate:.0f} patients/wall-s vs serial {serial_rate:.0f} ({dask_rate / serial_rate:.2f}x), "
            "identical batches"
        )
        dask_txt = f"dask {workers} workers {dask_rate / serial_rate:.2f}x serial; "
    if importlib.util.find_spec("ray") is None:
        print("ray: not installed, skipped (Dask is the sweep backend)")
    full_txt = _full_model_section(args.quick)
    best = max(rates, key=lambda k: rates[k])
    ratio = rates[best] / rate_ref
    backend_txt = "".join(
        f"{label} {rates[key]:.0f}/s = {rates[key] / rate_ref:.0f}x; "
        if key in rates
        else f"{label} not installed; "
        for key, label in (("jax", "JAX"), ("numba", "numba"))
    )
    print(
        f"benchmark simulate: {ratio:.0f}x solve_ivp ({best} RK4 {rates[best]:.0f} patients per CPU-s vs "
        f"solve_ivp LSODA {rate_ref:.1f}; numpy {cpu_full:.0f}/s = {cpu_full / rate_ref:.0f}x, healed frozen "
        f"{cpu_fast:.0f}/s; {backend_txt}{dask_txt}{n_batch} patients, 28 days, dt {DEFAULT_DT} h, "
        f"{n_ref} cross-checked, 0 class mismatches; "
        f"IIRABM {rates[best] / iirabm[0]:,.0f}-{rates[best] / iirabm[1]:,.0f}x per core; "
        f"{full_txt}; {os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
