"""Dask sweep on a local cluster: the distributed population equals the serial one (same seed)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from immunostrat.simulation.population import VirtualPopulation, generate_population
from immunostrat.simulation.sweep import available, simulate_population_distributed

SEED, SIZE, BATCH = 12, 30, 2048


@pytest.fixture(scope="module")
def serial() -> VirtualPopulation:
    return generate_population(SIZE, seed=SEED, batch=BATCH)


def _same(a: VirtualPopulation, b: VirtualPopulation) -> None:
    np.testing.assert_array_equal(a.cohort.params.k_pg, b.cohort.params.k_pg)
    np.testing.assert_array_equal(a.cohort.p0, b.cohort.p0)
    np.testing.assert_array_equal(a.endotype, b.endotype)
    assert a.fit == b.fit


def test_executor_result_equals_serial(serial: VirtualPopulation) -> None:
    with ThreadPoolExecutor(2) as pool:
        parallel = generate_population(SIZE, seed=SEED, batch=BATCH, executor=pool, parallel_batches=2)
    _same(serial, parallel)
    assert parallel.fit.n_sampled == serial.fit.n_sampled  # batches past the stopping one are ignored


@pytest.mark.skipif(not available(), reason="dask[distributed] is not installed (optional)")
def test_dask_local_cluster_equals_serial(serial: VirtualPopulation) -> None:
    distributed = simulate_population_distributed(
        SIZE, seed=SEED, n_workers=1, batch=BATCH, parallel_batches=2
    )
    _same(serial, distributed)
