"""Choice of integration engine: the numpy batch RK4 of :func:`model.integrate`, or its compiled twins
(:mod:`numba_backend`, :mod:`jax_backend`), each the same equations, step, effects and death rule.

:func:`integrate_on` runs one request on a named engine, or with ``"auto"`` on the fastest installed engine
that runs that request exactly as the numpy engine does (numba, then JAX, then numpy; the order measured by
``benchmarks/simulate.py``). :func:`unsupported` says why an engine cannot run a request: naming an engine
that cannot is an error, ``"auto"`` falls back to numpy.

What each engine runs (all on full courses for the compiled ones: ``drop_healed`` and ``drop_dead`` False,
since the numpy engine's freezing of healed patients changes their records by round-off):

* numpy: everything, including freezing and any :class:`model.Observer`.
* numba: every model variant (``population.MODEL_VARIANTS``): the published Reynolds 2006 model, the
  monocyte-deactivation extension (state H, the ``hla_gain`` hook) with its MALS loop, ICU-acquired
  infections (single or recurring, each episode with its own draws and antibiotic course), the damage death
  rule and the pathogen one (``DeathRule.p_crit``); every therapy hook and schedule; and the biomarker
  observer of virtual populations (:class:`observables.BiomarkerObserver`; other observers: numpy only).
* JAX: every model variant but the MALS loop (``full-mals-loop``: its positive feedback amplifies the
  round-off of XLA's fused code past 1e-9 in a few patients), with every therapy hook and both death rules,
  without observer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy.typing as npt

from . import jax_backend, numba_backend
from .model import (
    DeactivationParameters,
    Observer,
    PatientParameters,
    SecondaryInfection,
    Trajectory,
    integrate,
)

#: The engines, fastest first on CPU (benchmarks/simulate.py).
ENGINES: tuple[str, ...] = ("numba", "jax", "numpy")
#: Accepted engine names: an engine, or "auto" for the fastest installed one that runs the request.
ENGINE_CHOICES: tuple[str, ...] = ("auto", "numpy", "numba", "jax")


def installed(engine: str) -> bool:
    """Whether ``engine``'s library is importable (numpy always is)."""
    if engine == "numpy":
        return True
    if engine == "numba":
        return numba_backend.available()
    if engine == "jax":
        return jax_backend.available()
    raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINE_CHOICES)}")


def unsupported(
    engine: str,
    *,
    observer: Observer | None = None,
    deactivation: DeactivationParameters | None = None,
    secondary: SecondaryInfection | None = None,
    drop_healed: bool = False,
    drop_dead: bool = False,
) -> str | None:
    """Why ``engine`` cannot run a request exactly as the numpy engine does; None when it can."""
    if not installed(engine):
        return f"{engine} is not installed"
    if engine == "numpy":
        return None
    jax = engine == "jax"
    features = [
        ("an observer", observer is not None and (jax or not numba_backend.compiled_observer(observer))),
        ("the MALS loop", jax and deactivation is not None and deactivation.mals_loop is not None),
        ("drop_healed", drop_healed),
        ("drop_dead", drop_dead),
    ]
    missing = [name for name, wanted in features if wanted]
    if missing:
        return f"the {engine} engine does not run {', '.join(missing)} (numpy engine only)"
    return None


def choose(engine: str, **request: Any) -> str:
    """The engine that runs ``request`` (the keywords of :func:`unsupported`): ``engine`` itself, or for
    ``"auto"`` the fastest installed one that can. A named engine that cannot is a ValueError."""
    if engine not in ENGINE_CHOICES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINE_CHOICES)}")
    if engine == "auto":
        return next(e for e in ENGINES if unsupported(e, **request) is None)
    reason = unsupported(engine, **request)
    if reason is not None:
        raise ValueError(reason)
    return engine


def integrate_on(
    engine: str,
    y0: npt.ArrayLike,
    params: PatientParameters,
    *,
    observer: Observer | None = None,
    deactivation: DeactivationParameters | None = None,
    secondary: SecondaryInfection | None = None,
    drop_healed: bool = False,
    drop_dead: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **kwargs: Any,
) -> Trajectory:
    """:func:`model.integrate` on ``engine`` (see :func:`choose`). Unlike :func:`model.integrate`,
    ``drop_healed`` defaults to False (full courses), so that every engine can run the default request.
    ``kwargs``: the other arguments of :func:`model.integrate` (``t_end``, ``dt``, ``schedule``,
    ``record_every``, ``death_rule``, ``chunk_size``, ``secondary_draws``)."""
    chosen = choose(
        engine,
        observer=observer,
        deactivation=deactivation,
        secondary=secondary,
        drop_healed=drop_healed,
        drop_dead=drop_dead,
    )
    if chosen == "numpy":
        return integrate(
            y0,
            params,
            observer=observer,
            deactivation=deactivation,
            secondary=secondary,
            drop_healed=drop_healed,
            drop_dead=drop_dead,
            progress=progress,
            **kwargs,
        )
    if chosen == "numba":
        traj = numba_backend.integrate_numba(
            y0, params, deactivation=deactivation, secondary=secondary, observer=observer, **kwargs
        )
    else:
        traj = jax_backend.integrate_jax(y0, params, deactivation=deactivation, secondary=secondary, **kwargs)
    if progress is not None:
        progress(traj.size, traj.size)
    return traj
