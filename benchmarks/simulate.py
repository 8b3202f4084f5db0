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
Usage: ``python benchmarks/simulate.py [--quick]``; the last line is
``benchmark simulate: RATIOx solve_ivp (details)``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from collections.abc import Callable

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


def _dask_sweep(n_batches: int, batch: int) -> tuple[float, float, int] | None:
    """Virtual-population sampling (28-day courses with biomarker filters and background antibiotics)
    fanned out over a local Dask cluster of one single-threaded worker process per CPU against the same
    batches run serially: (serial patients per wall-s, Dask patients per wall-s, workers). The batches
    must come back identical. None when ``distributed`` is not installed."""
    if importlib.util.find_spec("distributed") is None:
        return None
    from distributed import Client, LocalCluster

    from immunostrat.simulation.observables import ObservableCalibration
    from immunostrat.simulation.population import STANDARD_OF_CARE, _plausible_batch

    cal = ObservableCalibration()
    jobs = [(2026, i, batch, None, cal, 1, STANDARD_OF_CARE, None, None) for i in range(n_batches)]
    _plausible_batch((2026, 999, 64, None, cal, 1, STANDARD_OF_CARE, None, None))  # warm-up
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
        f"{os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
