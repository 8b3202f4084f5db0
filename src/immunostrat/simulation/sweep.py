"""Sweeps across processes or machines with Dask distributed (optional dependency ``dask[distributed]``).

Virtual-population sampling is map-reduce: batches of plausible patients are independent (each seeded by
(seed, batch index)), so workers sample them and the driver pools them and applies the acceptance rule in
batch order. The result equals :func:`population.generate_population` with the same seed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from .population import VirtualPopulation, generate_population


def available() -> bool:
    return importlib.util.find_spec("distributed") is not None


def simulate_population_distributed(
    size: int,
    seed: int = 0,
    *,
    address: str | None = None,
    n_workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> VirtualPopulation:
    """``generate_population`` with its batches on a Dask cluster: the scheduler at ``address``, or a local
    cluster of ``n_workers`` single-threaded worker processes started (and closed) here."""
    from distributed import Client, LocalCluster

    cluster = None
    if address is None:
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
    client = Client(address if address is not None else cluster)
    try:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        return generate_population(
            size,
            seed,
            executor=client.get_executor(),
            parallel_batches=options.pop("parallel_batches", 2 * workers),
            progress=progress,
            **options,
        )
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
