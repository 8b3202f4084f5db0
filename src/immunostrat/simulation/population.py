"""Virtual populations: parameters from priors, plausibility filter, Allen et al. 2016 acceptance.

Recipe (insilico.md section 3.1, [design]): log-normal priors centred on the Reynolds 2006 Table 1 values
sample "plausible patients" (PPs); a PP is plausible when it is alive and has Sepsis-3 organ dysfunction
(SOFA >= 2, domain.md A1) at enrolment. Allen RJ, Rieger TR, Musante CJ, CPT:PSP 2016;5:140-146 keep each PP
with probability ``min(1, alpha * rho_data(x) / rho_PP(x))``; here the clinical observables are discrete
(PROVIDE endotype x 28-day death), so rho are cell probabilities, rho_PP is estimated from the PP cloud and
alpha = min over cells of rho_PP / rho_data, the largest alpha that keeps every probability <= 1. The
accepted VPop then matches the targets in expectation with no weights, and :attr:`VirtualPopulation.fit`
reports how well it does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import polars as pl

from immunostrat.protocols import Protocol, classify_frame, load_protocol

from .engines import choose, integrate_on
from .model import (
    DAY28_H,
    REYNOLDS_2006,
    BoolArray,
    DeactivationParameters,
    DeathRule,
    EffectSchedule,
    FloatArray,
    IntArray,
    Observer,
    PatientParameters,
    SecondaryDraws,
    SecondaryInfection,
    Trajectory,
    classify,
    initial_state,
    patient_parameters,
)
from .observables import (
    BiomarkerObserver,
    DailyObservables,
    ObservableCalibration,
    PatientTraits,
    daily_observables,
)
from .structures import MALS_LOOP, RECURRENCE, draw_secondary
from .therapies import Schedule, Therapy, get_therapy

#: Background therapy every virtual patient receives from infection onset (therapies.yaml).
STANDARD_OF_CARE = "standard_of_care"


def background_schedule(background: str | Therapy | None, n: int) -> Schedule | None:
    """The background (standard-of-care) schedule of ``n`` patients, started at onset (t = 0)."""
    if background is None:
        return None
    return Schedule.build(get_therapy(background), 0.0, n)


#: Model variants by name (docs/simulation.md): the published Reynolds 2006 model, plus monocyte
#: deactivation (insilico.md 6), plus ICU-acquired infections on top of that ("full"); and structural
#: alternatives (issue 18): the same with death also from uncontrolled pathogen ("*-pathogen-death"),
#: recurring ICU-acquired infections and an IL-1-driven MALS loop (``structures``).
MODEL_VARIANTS: tuple[str, ...] = (
    "reynolds2006",
    "deactivation",
    "full",
    "reynolds2006-pathogen-death",
    "full-pathogen-death",
    "reynolds2006-infection-sofa",
    "full-recurring-infections",
    "full-mals-loop",
)

#: The organ-dysfunction observable of the "*-infection-sofa" variant [design]: up to 4 SOFA points (one
#: organ system's maximum, e.g. the cardiovascular score of septic shock) from the pathogen burden itself,
#: half of them at P = 1 (the median inoculum), added to the damage score; so lowering damage is no longer
#: the whole of the SOFA response.
INFECTION_SOFA = ObservableCalibration(sofa_pathogen_points=4.0, sofa_pathogen_p50=1.0)

#: The pathogen death rule of the "*-pathogen-death" variants [design]: P >= 10 (half the carrying capacity
#: p_inf = 20 of Reynolds 2006 Table 1) for 6 h. The septic-death attractor (P ~ 4.9 at k_pg 0.6) already
#: dies by damage; the persistent-infection attractor (P ~ 13-18 in our VPops, low damage) now dies too.
PATHOGEN_DEATH = DeathRule(p_crit=10.0)

ModelOptions = dict[
    str, DeactivationParameters | SecondaryInfection | DeathRule | ObservableCalibration | None
]


def model_variant(name: str) -> ModelOptions:
    """``generate_population`` keyword arguments (``deactivation``, ``secondary``, ``death_rule``) of a named
    variant."""
    from .model import MONOCYTE_DEACTIVATION, SECONDARY_INFECTION

    if name not in MODEL_VARIANTS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_VARIANTS)}")
    base = name.removesuffix("-pathogen-death").removesuffix("-infection-sofa")
    base = base.removesuffix("-recurring-infections").removesuffix("-mals-loop")
    options: ModelOptions = {
        "deactivation": MONOCYTE_DEACTIVATION if base != "reynolds2006" else None,
        "secondary": SECONDARY_INFECTION if base == "full" else None,
    }
    if name.endswith("-recurring-infections"):
        options["secondary"] = replace(SECONDARY_INFECTION, max_episodes=RECURRENCE.max_episodes)
    if name.endswith("-mals-loop"):
        options["deactivation"] = replace(MONOCYTE_DEACTIVATION, mals_loop=MALS_LOOP)
    if name.endswith("-pathogen-death"):
        options["death_rule"] = PATHOGEN_DEATH
    if name.endswith("-infection-sofa"):
        options["calibration"] = INFECTION_SOFA
    return options


#: Default engine of every population and trial simulation: the fastest installed engine that runs the
#: request exactly as the numpy engine does (``engines.choose``), so results do not depend on it.
DEFAULT_ENGINE = "auto"


def course_engine(
    engine: str,
    observer: Observer | None,
    deactivation: DeactivationParameters | None,
    secondary: SecondaryInfection | None,
) -> str:
    """The engine that runs a population course request (``engines.choose``): ``engine`` itself, or for
    ``"auto"`` the fastest one that can; a named engine that cannot is a ValueError with the reason."""
    return choose(engine, observer=observer, deactivation=deactivation, secondary=secondary)


def integrate_course(
    engine: str,
    y0: FloatArray,
    params: PatientParameters,
    *,
    t_end: float,
    schedule: EffectSchedule | None,
    observer: Observer | None,
    deactivation: DeactivationParameters | None,
    secondary: SecondaryInfection | None,
    secondary_draws: SecondaryDraws | None,
    death_rule: DeathRule,
    record_every: float = 24.0,
    chunk_size: int = 4096,
) -> Trajectory:
    """The courses of a batch of virtual patients on ``engine`` (see :func:`course_engine`), the same
    whichever engine runs them.

    Every engine integrates full courses: the numpy engine's freezing of healed patients (``drop_healed``)
    would change their records by round-off, and the compiled engines do not freeze. Patients who died are
    frozen at the first record at or after their death (nothing after death is used: the outcome class then
    describes the state at death); the numpy engine does it while integrating (``drop_dead``, which saves
    their remaining steps), the others on the records afterwards (:func:`freeze_after_death`), with the
    same records as result."""
    chosen = course_engine(engine, observer, deactivation, secondary)
    traj = integrate_on(
        chosen,
        y0,
        params,
        t_end=t_end,
        record_every=record_every,
        schedule=schedule,
        observer=observer,
        deactivation=deactivation,
        secondary=secondary,
        secondary_draws=secondary_draws,
        death_rule=death_rule,
        chunk_size=chunk_size,
        drop_healed=False,
        drop_dead=chosen == "numpy",
    )
    return traj if chosen == "numpy" else freeze_after_death(traj)


def freeze_after_death(traj: Trajectory) -> Trajectory:
    """``traj`` with each dead patient's records after the first record at or after death repeating that
    record, and its final state and outcome class that record's: what the numpy engine's ``drop_dead``
    writes, applied to a full course."""
    dead = np.flatnonzero(np.isfinite(traj.death_time))
    n_rec = traj.times.size
    if dead.size == 0 or n_rec < 2:
        return traj
    stride = round((traj.times[1] - traj.times[0]) / traj.dt)
    death_step = np.rint(traj.death_time[dead] / traj.dt).astype(np.int64)
    rec = -(-death_step // stride)  # the first record at or after death (ceil)
    frozen = rec < n_rec - 1  # dead at the last record: already the final state
    rows, at = dead[frozen], rec[frozen]
    if rows.size == 0:
        return traj
    states = traj.states.copy()
    aux = traj.aux.copy()
    later = np.arange(n_rec)[None, :] > at[:, None]
    r, k = np.nonzero(later)
    states[rows[r], k, :] = states[rows[r], at[r], :]
    aux[rows[r], k, :] = aux[rows[r], at[r], :]
    final = traj.final.copy()
    final[rows] = states[rows, at, :]
    return replace(traj, states=states, aux=aux, final=final, outcome=classify(final))


#: Endotype codes, in the precedence order of the ImmunoSep protocol (domain.md A1: MALS first).
MALS = 0
IMMUNOPARALYSIS = 1
INTERMEDIATE = 2
ENDOTYPE_NAMES: tuple[str, ...] = ("MALS", "immunoparalysis", "intermediate")

#: PROVIDE screening (Leventogiannis 2022, domain.md A2 / insilico.md 4.2): 48/240, 103/240, 89/240.
PROVIDE_PREVALENCE: tuple[float, float, float] = (48 / 240, 103 / 240, 89 / 240)
#: PROVIDE 28-day mortality by stratum: 38/48, 69/103, 37/89 (domain.md A2).
PROVIDE_MORTALITY: tuple[float, float, float] = (38 / 48, 69 / 103, 37 / 89)

#: The shipped protocol that stratifies virtual patients (immunostrat.protocols, domain.md A1):
#: MALS if ferritin > 4,420 ng/mL (decided first); immunoparalysis if ferritin <= 4,420 and
#: mHLA-DR < 5,000 AB/C; else intermediate.
PROTOCOL_ID = "immunosep-2025"
_ENDOTYPE_CODES = {"mals": MALS, "immunoparalysis": IMMUNOPARALYSIS, "intermediate": INTERMEDIATE}


@lru_cache(maxsize=1)
def stratification_protocol() -> Protocol:
    """The ``immunosep-2025`` protocol, loaded once."""
    return load_protocol(PROTOCOL_ID)


def stratify(ferritin: npt.ArrayLike, mhla_dr: npt.ArrayLike) -> IntArray:
    """Endotype codes (MALS, IMMUNOPARALYSIS, INTERMEDIATE) from enrolment ferritin (ng/mL) and mHLA-DR
    (AB/C), by the shipped protocol's own rules (``protocols.classify_frame``), not a copy of them."""
    fer = np.atleast_1d(np.asarray(ferritin, dtype=np.float64))
    hla = np.atleast_1d(np.asarray(mhla_dr, dtype=np.float64))
    frame = classify_frame(stratification_protocol(), pl.DataFrame({"ferritin": fer, "mhla_dr": hla}))
    names = frame["endotype"].to_list()
    unknown = sorted({n for n in names if n not in _ENDOTYPE_CODES})
    if unknown:
        raise ValueError(f"protocol {PROTOCOL_ID} returned endotype(s) {unknown} for virtual patients")
    return np.array([_ENDOTYPE_CODES[n] for n in names], dtype=np.int64)


def protocol_therapies() -> dict[int, str]:
    """Endotype code -> therapy id of the protocol's regimens (anakinra for MALS, IFN-gamma for paralysis)."""
    return {
        _ENDOTYPE_CODES[name]: regimen.drug
        for name, regimen in stratification_protocol().therapies.items()
        if name in _ENDOTYPE_CODES
    }


@dataclass(frozen=True)
class LogNormalPrior:
    """Log-normal with the given median and coefficient of variation."""

    median: float
    cv: float

    def sample(self, rng: np.random.Generator, n: int) -> FloatArray:
        sigma = math.sqrt(math.log1p(self.cv * self.cv))
        return self.median * np.exp(rng.normal(0.0, sigma, n))


def _default_parameter_priors() -> dict[str, LogNormalPrior]:
    # insilico.md 3.1 recipe: log-normal priors on k_pg, P0, k_pn, k_nn, k_nd, C_inf, k_cn, s_c, mu_d centred
    # on Table 1 values with CV 0.3-0.5. Medians: Table 1 except k_pg (0.25 /h, between the 0.3 default and
    # the lower Pulse "ProgressionSeverity" range 0.25-0.33, insilico.md 1.1) with CV 0.5 for the main
    # virulence knob; CV 0.5 elsewhere, the top of the recommended range, so the PP cloud covers all cells.
    return {
        "k_pg": LogNormalPrior(0.25, 0.5),
        "k_pn": LogNormalPrior(1.8, 0.5),
        "k_nn": LogNormalPrior(0.01, 0.5),
        "k_nd": LogNormalPrior(0.02, 0.5),
        "c_inf": LogNormalPrior(0.28, 0.5),
        "k_cn": LogNormalPrior(0.04, 0.5),
        "s_c": LogNormalPrior(0.0125, 0.5),
        "mu_d": LogNormalPrior(0.02, 0.5),
    }


@dataclass(frozen=True)
class PopulationPriors:
    """Priors of a virtual population ([design], insilico.md 3.1).

    ``p0``: inoculum, median 1.0 (the BioModels scenarios use P0 = 1, insilico.md 1.1; Pulse maps infection
    severity to P0 1.0-1.5) with CV 0.8 to span mild to overwhelming inocula. ``ferritin0``: normal adult
    ferritin 200 ng/mL with CV 1.0 (ferritin varies several-fold between adults with iron stores and liver
    disease) [design]. ``hla_max``: 24,000 AB/C (insilico.md 3) with CV 0.2 for inter-individual and assay
    variation. Chronic SOFA: no pre-existing organ dysfunction (0 for every patient).
    """

    parameters: dict[str, LogNormalPrior] = field(default_factory=_default_parameter_priors)
    p0: LogNormalPrior = LogNormalPrior(1.0, 0.8)
    ferritin0: LogNormalPrior = LogNormalPrior(200.0, 1.0)
    hla_max: LogNormalPrior = LogNormalPrior(24_000.0, 0.2)


@dataclass(frozen=True)
class PopulationTargets:
    """Clinical targets: endotype prevalence and 28-day mortality per endotype (PROVIDE, domain.md A2)."""

    prevalence: tuple[float, float, float] = PROVIDE_PREVALENCE
    mortality: tuple[float, float, float] = PROVIDE_MORTALITY

    def cell_probabilities(self) -> FloatArray:
        """Target probability of each (endotype, died) cell, shape (3, 2): column 0 survived, 1 died."""
        prev = np.asarray(self.prevalence, dtype=np.float64)
        mort = np.asarray(self.mortality, dtype=np.float64)
        prev = prev / prev.sum()
        return np.stack([prev * (1.0 - mort), prev * mort], axis=1)


#: Enrolment: day 1 after infection onset, the ImmunoSep baseline day (domain.md A1: day-1 SOFA).
ENROLMENT_DAY = 1


def day28_horizon_h(enrolment_day: int = ENROLMENT_DAY) -> float:
    """Hours from infection onset to 28 days after randomization: PROVIDE and ImmunoSep count 28-day
    mortality from randomization (domain.md A1/A2), which is ``enrolment_day`` days after onset here."""
    return 24.0 * enrolment_day + DAY28_H


@dataclass(frozen=True)
class Cohort:
    """Sampled patients with their untreated (placebo) course summarised at enrolment."""

    params: PatientParameters
    p0: FloatArray
    traits: PatientTraits
    ferritin: FloatArray  # at enrolment
    mhla_dr: FloatArray
    sofa: IntArray
    alive_at_enrolment: BoolArray
    died28: BoolArray
    outcome: IntArray
    #: secondary-infection draws (model.SecondaryDraws) when built with that extension
    secondary_draws: SecondaryDraws | None = None
    #: hours at which the untreated course's secondary infection began (NaN: none); None without it
    secondary_time: FloatArray | None = None

    @property
    def size(self) -> int:
        return self.params.size

    def take(self, index: IntArray | BoolArray) -> Cohort:
        return Cohort(
            self.params.take(index),
            self.p0[index],
            self.traits.take(index),
            self.ferritin[index],
            self.mhla_dr[index],
            self.sofa[index],
            self.alive_at_enrolment[index],
            self.died28[index],
            self.outcome[index],
            self.secondary_draws.take(index) if self.secondary_draws is not None else None,
            self.secondary_time[index] if self.secondary_time is not None else None,
        )


def sample_cohort(
    n: int,
    rng: np.random.Generator,
    priors: PopulationPriors | None = None,
    cal: ObservableCalibration | None = None,
    enrolment_day: int = ENROLMENT_DAY,
    background: str | Therapy | None = STANDARD_OF_CARE,
    deactivation: DeactivationParameters | None = None,
    secondary: SecondaryInfection | None = None,
    death_rule: DeathRule | None = None,
    engine: str = DEFAULT_ENGINE,
) -> Cohort:
    """Draw ``n`` patients from the priors and simulate their 28-day course on background therapy only
    (with the monocyte-deactivation extension when ``deactivation`` is given, and ICU-acquired infections
    when ``secondary`` is: exposure ~ Exp(1), relative inoculum from the primary inoculum's prior). The
    secondary draws come after all others, so without them a seed gives the same patients as before.
    ``engine``: see :func:`integrate_course` (the result does not depend on it)."""
    pri = priors if priors is not None else PopulationPriors()
    c = cal if cal is not None else ObservableCalibration()
    draws = {name: prior.sample(rng, n) for name, prior in pri.parameters.items()}
    params = patient_parameters(n, REYNOLDS_2006, **draws)
    p0 = pri.p0.sample(rng, n)
    traits = PatientTraits(np.zeros(n), pri.ferritin0.sample(rng, n), pri.hla_max.sample(rng, n))
    sec_draws = (
        draw_secondary(rng, n, secondary.max_episodes, pri.p0.sample) if secondary is not None else None
    )
    horizon = day28_horizon_h(enrolment_day)
    traj = integrate_course(
        engine,
        initial_state(p0, params),
        params,
        t_end=horizon,
        observer=BiomarkerObserver(c),
        schedule=background_schedule(background, n),
        deactivation=deactivation,
        secondary=secondary,
        secondary_draws=sec_draws,
        death_rule=death_rule if death_rule is not None else DeathRule(),
    )
    obs = daily_observables(traj, traits, c)
    d = enrolment_day
    return Cohort(
        params=params,
        p0=p0,
        traits=traits,
        ferritin=obs.ferritin[:, d],
        mhla_dr=obs.mhla_dr[:, d],
        sofa=obs.sofa[:, d],
        alive_at_enrolment=obs.alive[:, d],
        died28=traj.died_by(horizon),
        outcome=traj.outcome,
        secondary_draws=sec_draws,
        secondary_time=traj.secondary_time,
    )


@dataclass(frozen=True)
class PopulationFit:
    """How well an accepted VPop matches its targets."""

    target_prevalence: tuple[float, ...]
    achieved_prevalence: tuple[float, ...]
    target_mortality: tuple[float, ...]
    achieved_mortality: tuple[float, ...]
    counts: tuple[tuple[int, int], ...]  # per endotype: (survived, died)
    n_sampled: int
    n_plausible: int
    n_accepted: int
    alpha: float
    chi2: float
    p_value: float

    @property
    def max_abs_error(self) -> float:
        a = np.abs(np.subtract(self.achieved_prevalence, self.target_prevalence)).max()
        b = np.abs(np.subtract(self.achieved_mortality, self.target_mortality)).max()
        return float(max(a, b))

    def table(self) -> str:
        lines = ["endotype          prevalence target/VPop    28-day mortality target/VPop     n"]
        for i, name in enumerate(ENDOTYPE_NAMES):
            lines.append(
                f"{name:16s} {self.target_prevalence[i]:8.3f} {self.achieved_prevalence[i]:8.3f}"
                f"        {self.target_mortality[i]:8.3f} {self.achieved_mortality[i]:8.3f}"
                f"  {sum(self.counts[i]):5d}"
            )
        lines.append(
            f"sampled {self.n_sampled}, plausible {self.n_plausible}, accepted {self.n_accepted} "
            f"(alpha {self.alpha:.3f}); chi-square {self.chi2:.2f} on 5 df, p = {self.p_value:.3f}"
        )
        return "\n".join(lines)


@dataclass(frozen=True)
class VirtualPopulation:
    """An accepted virtual population (untreated course summarised) and its fit to the targets."""

    cohort: Cohort
    endotype: IntArray
    fit: PopulationFit
    seed: int
    enrolment_day: int
    calibration: ObservableCalibration
    background: str | None = STANDARD_OF_CARE
    #: None: pure Reynolds 2006; else the monocyte-deactivation extension the VPop was built with (therapy
    #: simulations of this VPop use the same model).
    deactivation: DeactivationParameters | None = None
    #: None: no ICU-acquired infections; else model.SecondaryInfection (needs ``deactivation``)
    secondary: SecondaryInfection | None = None
    #: the death rule of the population and of its therapy simulations (``PATHOGEN_DEATH`` variants)
    death_rule: DeathRule = field(default_factory=DeathRule)
    #: the engine that integrates this population's courses (``engines.ENGINE_CHOICES``); a run setting,
    #: not a property of the patients: every engine gives the same results (:func:`integrate_course`)
    engine: str = DEFAULT_ENGINE

    @property
    def size(self) -> int:
        return self.cohort.size


def _fit(
    endotype: IntArray,
    died: BoolArray,
    targets: PopulationTargets,
    sampled: int,
    plausible: int,
    alpha: float,
) -> PopulationFit:
    from scipy.stats import chisquare

    counts = np.zeros((3, 2), dtype=np.int64)
    np.add.at(counts, (endotype, died.astype(np.int64)), 1)
    total = int(counts.sum())
    prev = counts.sum(axis=1) / max(total, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mort = np.where(counts.sum(axis=1) > 0, counts[:, 1] / counts.sum(axis=1), np.nan)
    expected = targets.cell_probabilities().ravel() * total
    chi2, p = chisquare(counts.ravel(), expected) if total else (math.nan, math.nan)
    return PopulationFit(
        target_prevalence=tuple(float(v) for v in targets.prevalence),
        achieved_prevalence=tuple(float(v) for v in prev),
        target_mortality=tuple(float(v) for v in targets.mortality),
        achieved_mortality=tuple(float(v) for v in mort),
        counts=tuple((int(a), int(b)) for a, b in counts),
        n_sampled=sampled,
        n_plausible=plausible,
        n_accepted=total,
        alpha=alpha,
        chi2=float(chi2),
        p_value=float(p),
    )


@dataclass(frozen=True)
class BatchJob:
    """One batch of a population's sampling: everything :func:`_plausible_batch` needs (picklable, so
    any executor can run it)."""

    seed: int
    index: int
    size: int
    priors: PopulationPriors | None
    calibration: ObservableCalibration
    enrolment_day: int
    background: str | None
    deactivation: DeactivationParameters | None = None
    secondary: SecondaryInfection | None = None
    death_rule: DeathRule | None = None
    engine: str = DEFAULT_ENGINE


def _plausible_batch(job: BatchJob) -> tuple[Cohort, IntArray, FloatArray]:
    """Batch ``index`` of the population with ``seed``: its plausible patients, their (endotype, death)
    cells and one acceptance uniform each. Its random stream depends only on (seed, index), so any executor
    returns the same batch (top-level and picklable for process pools and Dask workers)."""
    rng = np.random.default_rng(np.random.SeedSequence([job.seed, job.index]))
    cohort = sample_cohort(
        job.size,
        rng,
        job.priors,
        job.calibration,
        job.enrolment_day,
        job.background,
        job.deactivation,
        job.secondary,
        job.death_rule,
        job.engine,
    )
    cohort = cohort.take(cohort.alive_at_enrolment & (cohort.sofa >= 2))
    endo = stratify(cohort.ferritin, cohort.mhla_dr)
    return cohort, endo * 2 + cohort.died28.astype(np.int64), rng.random(cohort.size)


def generate_population(
    size: int,
    seed: int = 0,
    *,
    priors: PopulationPriors | None = None,
    targets: PopulationTargets | None = None,
    calibration: ObservableCalibration | None = None,
    enrolment_day: int = ENROLMENT_DAY,
    background: str | None = STANDARD_OF_CARE,
    batch: int = 8192,
    max_sampled: int | None = None,
    executor: Executor | None = None,
    parallel_batches: int = 4,
    progress: Callable[[int, int], None] | None = None,
    deactivation: DeactivationParameters | None = None,
    secondary: SecondaryInfection | None = None,
    death_rule: DeathRule | None = None,
    engine: str = DEFAULT_ENGINE,
) -> VirtualPopulation:
    """Sample, filter and accept until ``size`` virtual patients are accepted; reproducible from ``seed``.

    ``engine``: the integration engine of the population and of its therapy simulations (kept in
    :attr:`VirtualPopulation.engine`): ``"auto"`` (the fastest installed one that runs the model variant
    exactly as numpy does) or a named one; one that cannot run the variant is a ValueError before any
    sampling. The result does not depend on it (:func:`integrate_course`).

    ``deactivation``: build the VPop on the monocyte-deactivation extension (``model.DeactivationParameters``,
    e.g. ``MONOCYTE_DEACTIVATION``) instead of the pure Reynolds 2006 model; ``secondary`` adds ICU-acquired
    infections on top of it (``model.SecondaryInfection``, e.g. ``SECONDARY_INFECTION``).

    Batches of plausible patients accumulate in a pool; after each batch the cell densities of the whole
    pool give alpha and the acceptance probabilities, and each pooled patient is kept when its own fixed
    uniform draw falls below its cell's probability (so one rule applies to every patient). Sampling stops
    after the first batch that brings the kept count to ``size``; a seeded random ``size`` of the kept form
    the VPop. With an ``executor`` (any ``concurrent.futures.Executor``: a process pool, or a Dask
    ``Client.get_executor()``), ``parallel_batches`` batches run at a time and are consumed in order, so the
    result is identical to the serial one. ``progress(accepted, size)`` is called after each batch.
    """
    if size < 1:
        raise ValueError("size must be >= 1")
    if secondary is not None and deactivation is None:
        raise ValueError("secondary infections need the monocyte-deactivation extension (deactivation=)")
    tg = targets if targets is not None else PopulationTargets()
    cal = calibration if calibration is not None else ObservableCalibration()
    course_engine(engine, BiomarkerObserver(cal), deactivation, secondary)  # a clear error before sampling
    # Safety stop [design]: observed acceptance is ~3-4% of draws (alpha ~0.08 x ~45% plausible), so 500
    # draws per wanted patient means the priors cannot reach the targets.
    limit = max_sampled if max_sampled is not None else max(500_000, 500 * size)
    target_cells = tg.cell_probabilities().ravel()
    pool: list[Cohort] = []
    cells: list[IntArray] = []
    uniforms: list[FloatArray] = []
    n_sampled = 0
    index = 0
    keep = np.zeros(0, dtype=np.bool_)
    cell = np.zeros(0, dtype=np.int64)
    alpha = math.nan
    done = False
    while not done:
        if n_sampled >= limit:
            raise RuntimeError(f"fewer than {size} patients accepted after {n_sampled} draws")
        width = max(1, parallel_batches) if executor is not None else 1
        jobs = [
            BatchJob(
                seed,
                index + k,
                batch,
                priors,
                cal,
                enrolment_day,
                background,
                deactivation,
                secondary,
                death_rule,
                engine,
            )
            for k in range(width)
        ]
        index += width
        results = (
            executor.map(_plausible_batch, jobs) if executor is not None else map(_plausible_batch, jobs)
        )
        for cohort, cell_b, unif in results:
            if done:
                continue  # a parallel round may run past the stopping batch: ignored, as serially
            n_sampled += batch
            pool.append(cohort)
            cells.append(cell_b)
            uniforms.append(unif)
            cell = np.concatenate(cells)
            pp = np.bincount(cell, minlength=6) / max(cell.size, 1)
            if np.any(pp[target_cells > 0] == 0):
                continue
            alpha = float(np.min(pp[target_cells > 0] / target_cells[target_cells > 0]))
            with np.errstate(divide="ignore", invalid="ignore"):
                keep_prob = np.where(pp > 0, np.minimum(1.0, alpha * target_cells / pp), 0.0)
            keep = np.concatenate(uniforms) < keep_prob[cell]
            n_acc = int(keep.sum())
            if progress is not None:
                progress(min(n_acc, size), size)
            done = n_acc >= size
    final_rng = np.random.default_rng(np.random.SeedSequence([seed, 2**32 - 1]))
    rows = np.sort(final_rng.choice(np.flatnonzero(keep), size=size, replace=False))
    cohort_all = _concat(pool).take(rows)
    endo_all = (cell[rows] // 2).astype(np.int64)
    fit = _fit(endo_all, cohort_all.died28, tg, n_sampled, int(cell.size), alpha)
    return VirtualPopulation(
        cohort_all,
        endo_all,
        fit,
        seed,
        enrolment_day,
        cal,
        background,
        deactivation,
        secondary,
        death_rule if death_rule is not None else DeathRule(),
        engine,
    )


def _concat(parts: list[Cohort]) -> Cohort:
    from .model import PARAMETER_NAMES

    params = PatientParameters(
        **{k: np.concatenate([getattr(c.params, k) for c in parts]) for k in PARAMETER_NAMES}
    )
    traits = PatientTraits(
        np.concatenate([c.traits.chronic_sofa for c in parts]),
        np.concatenate([c.traits.ferritin0 for c in parts]),
        np.concatenate([c.traits.hla_max for c in parts]),
    )
    return Cohort(
        params,
        np.concatenate([c.p0 for c in parts]),
        traits,
        np.concatenate([c.ferritin for c in parts]),
        np.concatenate([c.mhla_dr for c in parts]),
        np.concatenate([c.sofa for c in parts]),
        np.concatenate([c.alive_at_enrolment for c in parts]),
        np.concatenate([c.died28 for c in parts]),
        np.concatenate([c.outcome for c in parts]),
        SecondaryDraws(
            np.concatenate([c.secondary_draws.exposure for c in parts if c.secondary_draws is not None]),
            np.concatenate(
                [c.secondary_draws.relative_inoculum for c in parts if c.secondary_draws is not None]
            ),
        )
        if all(c.secondary_draws is not None for c in parts)
        else None,
        np.concatenate([c.secondary_time for c in parts if c.secondary_time is not None])
        if all(c.secondary_time is not None for c in parts)
        else None,
    )


def simulate_population(
    size: int,
    seed: int = 0,
    *,
    progress: Callable[[int, int], None] | None = None,
    **options: object,
) -> VirtualPopulation:
    """Entry point for ``immunostrat simulate population``: :func:`generate_population` with a progress hook.

    ``options`` are passed on (priors, targets, calibration, enrolment_day, background, batch).
    """
    return generate_population(size, seed, progress=progress, **options)  # type: ignore[arg-type]


def population_frame(vpop: VirtualPopulation) -> pl.DataFrame:
    """One row per virtual patient: id, endotype, enrolment biomarkers, 28-day death, outcome class and the
    sampled parameters (the VPop's patient table)."""
    from .model import OUTCOME_NAMES, PARAMETER_NAMES

    c = vpop.cohort
    cols: dict[str, object] = {
        "patient_id": [f"vp{i:06d}" for i in range(c.size)],
        "endotype": [ENDOTYPE_NAMES[int(e)] for e in vpop.endotype],
        "ferritin_ng_ml": c.ferritin,
        "mhla_dr_abc": c.mhla_dr,
        "sofa_enrolment": c.sofa,
        "died_28d": c.died28,
        "outcome": [OUTCOME_NAMES[int(o)] for o in c.outcome],
        "p0": c.p0,
    }
    for name in PARAMETER_NAMES:
        cols[name] = getattr(c.params, name)
    return pl.DataFrame(cols)


def simulate_course(
    vpop: VirtualPopulation,
    therapy: str | Therapy | None = None,
    *,
    chunk_size: int = 4096,
    days_after_enrolment: int = 28,
    engine: str | None = None,
) -> tuple[Trajectory, DailyObservables]:
    """The course of every VPop patient from onset to ``days_after_enrolment`` (28) days after enrolment
    (randomization), untreated or on ``therapy`` from enrolment, with the population's background therapy
    and model extensions: the trajectory and its daily observables. ``engine``: None for the population's
    own (:attr:`VirtualPopulation.engine`); the result does not depend on it (:func:`integrate_course`)."""
    from .therapies import combine

    c = vpop.cohort
    sched = combine(
        Schedule.build(get_therapy(therapy), 24.0 * vpop.enrolment_day, c.size) if therapy else None,
        background_schedule(vpop.background, c.size),
    )
    traj = integrate_course(
        engine if engine is not None else vpop.engine,
        initial_state(c.p0, c.params),
        c.params,
        t_end=24.0 * (vpop.enrolment_day + days_after_enrolment),
        observer=BiomarkerObserver(vpop.calibration),
        schedule=sched,
        chunk_size=chunk_size,
        deactivation=vpop.deactivation,
        secondary=vpop.secondary,
        secondary_draws=c.secondary_draws,
        death_rule=vpop.death_rule,
    )
    return traj, daily_observables(traj, c.traits, vpop.calibration)


def population_observations(vpop: VirtualPopulation, therapy: str | Therapy | None = None) -> pl.DataFrame:
    """Daily long-format observations (design.md section 2) of every VPop patient, untreated or on
    ``therapy`` from enrolment, with the population's background therapy."""
    from .observables import observations_frame

    _, obs = simulate_course(vpop, therapy)
    return observations_frame(obs, [f"vp{i:06d}" for i in range(vpop.cohort.size)])
