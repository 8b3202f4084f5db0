"""Two structural alternatives of the in-silico model (issue 18 item 3), as parameters plus pure
per-patient functions of the state, so the compiled engines can port them term by term.

* :class:`MalsLoop`: a hyperinflammation (MALS) loop still reversible at enrolment. IL-1 induces its own
  production and that of other IL-1-family activators (IL-1 autoinduction: Dinarello CA. Blood
  2011;117:3720-32; Weber A, et al. Sci Signal 2010;3:cm1), and in macrophage-activation-like syndrome this
  self-amplifying IL-1 loop is what IL-1 blockade interrupts (Shakoory B, et al. Crit Care Med
  2016;44:275-81, the held-out comparator, which is *not* used to set any value here; Kyriazopoulou E, et al.
  BMC Med 2017;15:172). Term: the phagocyte activation signal R of Reynolds 2006 gets an extra source

      R -> R + gain * u(L),  u(L) = L^n / (K^n + L^n),  L = (1 - il1) (k_nn N* + k_nd D) / (1 + (CA/C_inf)^2)

  where L is the IL-1-mediated part of R (the terms the ``il1`` hook blocks) and u its switch. ``K`` = 0.04
  and ``n`` = 4 are the ferritin observable's (``observables.ObservableCalibration``: the loop is on exactly
  where ferritin passes the 4,420 ng/mL MALS cut-off, domain.md A1), so the MALS stratum is the patients in
  whom the loop runs. ``gain`` = 0.04 = K [design: at full switch the loop adds as much activation as the
  IL-1 signal at the MALS threshold; fixed before any held-out run, no trial fitted]. The loop acts through
  L, so an IL-1 block at enrolment lowers L by (1 - il1) and, the switch being steep (n = 4), turns it off:
  the course is redirected; without the block it persists.
* :class:`Recurrence` (``max_episodes`` on ``model.SecondaryInfection``): recurring ICU-acquired
  infections. Up to ``max_episodes`` episodes per patient, each with its own exposure E_k ~ Exp(1) (the
  cumulative hazard since the previous episode at which the next one happens: the hazard restarts from 0
  after each episode) and its own relative inoculum, and each starting its own standard-of-care antibiotic
  course (``abx_delay_h`` after it, for ``abx_duration_h``; a new episode during a course restarts the
  course). Recurrent ventilator-associated pneumonia and further ICU-acquired infections are common after
  a first one: about a third of VAP survivors have a second episode (Rello J, et al. Chest 2002;122:2115-21;
  Vincent JL, et al. JAMA 2009;302:2323-9, EPIC II). ``max_episodes`` = 3 [design: beyond three episodes
  in 28 days the hazard of the calibrated model makes further ones negligible]. With ``max_episodes`` = 1
  the model is the single-infection one exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from .model import SecondaryDraws

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class MalsLoop:
    """The IL-1-driven MALS loop (see the module docstring for the equation and sources)."""

    gain: float = 0.04
    k: float = 0.04
    hill: float = 4.0

    def __post_init__(self) -> None:
        for name in ("gain", "k", "hill"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0.0) or (name != "gain" and value == 0.0):
                raise ValueError(f"MalsLoop.{name} = {value!r}; expected a finite value > 0 (gain >= 0)")


#: The MALS loop of the "*-mals-loop" variant.
MALS_LOOP = MalsLoop()


def il1_signal(
    N: FloatArray, D: FloatArray, k_nn: FloatArray | float, k_nd: FloatArray | float, inv_inhib: FloatArray
) -> FloatArray:
    """L, the IL-1-mediated part of the activation signal. ``k_nn`` and ``k_nd`` are the effective
    (already IL-1-blocked) rates, ``inv_inhib`` = 1 / (1 + (CA/C_inf)^2)."""
    return np.asarray((k_nn * N + k_nd * D) * inv_inhib, dtype=np.float64)


def mals_loop_drive(signal: FloatArray, loop: MalsLoop) -> FloatArray:
    """The loop's extra activation ``gain * L^n / (K^n + L^n)`` (added to R), per patient."""
    s = np.maximum(signal, 0.0)
    sn = s**loop.hill
    return np.asarray(loop.gain * sn / (loop.k**loop.hill + sn), dtype=np.float64)


@dataclass(frozen=True)
class Recurrence:
    """Recurring ICU-acquired infections: ``max_episodes`` per patient (module docstring)."""

    max_episodes: int = 3


#: The recurrence of the "*-recurring-infections" variant.
RECURRENCE = Recurrence()


def draw_secondary(
    rng: np.random.Generator, n: int, episodes: int, sample_inoculum: object
) -> SecondaryDraws:
    """Per-patient draws of ``episodes`` infections: exposures Exp(1) and relative inocula of shape
    ``(n,)`` for one episode (the same random stream as the single-infection model) or ``(n, episodes)``.
    ``sample_inoculum(rng, size)`` is the inoculum prior's sampler."""
    from .model import SecondaryDraws

    if episodes < 1:
        raise ValueError(f"episodes = {episodes}; expected >= 1")
    size: int | tuple[int, int] = n if episodes == 1 else (n, episodes)
    exposure = rng.exponential(1.0, size)
    inoculum = np.asarray(sample_inoculum(rng, size), dtype=np.float64)  # type: ignore[operator]
    return SecondaryDraws(np.asarray(exposure, dtype=np.float64), inoculum)


def episode_columns(values: FloatArray, episodes: int) -> FloatArray:
    """Draws as ``(n, episodes)``: a ``(n,)`` array is one episode's (the single-infection model)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.shape[1] < episodes:
        raise ValueError(f"secondary draws have {arr.shape[1]} episode(s); the model needs {episodes}")
    return arr[:, :episodes]


def next_episode(
    hit: npt.NDArray[np.bool_],
    count: npt.NDArray[np.int64],
    cum_hazard: FloatArray,
    exposures: FloatArray,
    inocula: FloatArray,
) -> tuple[npt.NDArray[np.int64], FloatArray, FloatArray, FloatArray]:
    """After the patients in ``hit`` had an episode: their episode count + 1, their cumulative hazard back
    to 0, and the exposure and inoculum of their next episode (the last column repeats once all are used;
    the caller stops the hazard at ``max_episodes``)."""
    count = count + hit.astype(np.int64)
    cum = np.where(hit, 0.0, cum_hazard)
    col = np.minimum(count, exposures.shape[1] - 1)
    rows = np.arange(count.shape[0])
    return count, cum, exposures[rows, col], inocula[rows, col]
