"""Figures of the in-silico engine, written as PNG files: outcome map and power curves."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .model import DEFAULT_DT, OUTCOME_HORIZON_H, OUTCOME_NAMES, IntArray, simulate_outcomes


def outcome_map(
    k_pg: Sequence[float] | None = None,
    p0: Sequence[float] | None = None,
    *,
    t_end: float = OUTCOME_HORIZON_H,
    dt: float = DEFAULT_DT,
) -> tuple[np.ndarray, np.ndarray, IntArray]:
    """Outcome class on a grid of virulence k_pg (rows) x initial load P0 (columns), published parameters.

    Defaults: k_pg 0.1-1.4 /h and P0 0.02-5 (log), the ranges of insilico.md 4.3's toy grid.
    """
    kk = np.asarray(k_pg if k_pg is not None else np.linspace(0.1, 1.4, 53), dtype=np.float64)
    pp = np.asarray(p0 if p0 is not None else np.geomspace(0.02, 5.0, 60), dtype=np.float64)
    kg, pg = np.meshgrid(kk, pp, indexing="ij")
    traj = simulate_outcomes(kg.ravel(), pg.ravel(), t_end=t_end, dt=dt)
    return kk, pp, traj.outcome.reshape(kg.shape)


def _save(fig: object, path: str | Path) -> Path:
    """Write to a temporary file beside ``path`` and rename on success (design.md section 2)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=target.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")  # type: ignore[attr-defined]
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def plot_outcome_map(
    path: str | Path,
    k_pg: Sequence[float] | None = None,
    p0: Sequence[float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """PNG of the outcome classes over initial load (x, log) and virulence k_pg (y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    kk, pp, classes = outcome_map(k_pg, p0)
    if progress is not None:
        progress(1, 1)
    colours = ["#4daf4a", "#ff7f00", "#e41a1c", "#984ea3"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.pcolormesh(pp, kk, classes, cmap=ListedColormap(colours), vmin=-0.5, vmax=3.5, shading="nearest")
    ax.set_xscale("log")
    ax.set_xlabel("initial pathogen load P0")
    ax.set_ylabel("pathogen growth rate k_pg (/h)")
    ax.set_title("Reynolds 2006 outcome after 720 h")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours]
    ax.legend(handles, OUTCOME_NAMES, loc="upper right", fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_power_curves(
    path: str | Path,
    sizes: Sequence[int],
    power: Mapping[str, Sequence[float]],
    title: str = "In-silico trial power",
) -> Path:
    """PNG of power against trial size, one line per design (from :func:`trial.power_curve`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, values in power.items():
        ax.plot(list(sizes), list(values), marker="o", label=name)
    ax.axhline(0.8, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("patients per trial (n)")
    ax.set_ylabel("power")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out
