"""In-silico trials: designs, potential outcomes of every virtual patient, N trials of n patients.

Each virtual patient is deterministic, so its outcome under every therapy (its potential outcomes) is
simulated once; a trial then draws patients from the virtual population, measures the biomarkers with assay
noise, classifies, randomizes 1:1 in permuted blocks within stratum and reads each patient's outcome under
the allocated arm. Power is the share of trials with a two-sided Fisher exact P < alpha in the direction of
benefit (ImmunoSep's primary analysis, domain.md A1); the type I error is the share of trials with P < alpha
when the treatment arm gets placebo outcomes (the null is true by construction).

The rules are the real trial's, not copies: allocation by ``trial.randomization.permuted_block_list``
(the service's concealed lists), the responder rule and death score by ``analysis.endpoints``, the test by
``analysis.stats.fisher_exact``, and stratification by the shipped protocol.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from immunostrat.analysis.endpoints import SOFA_DEATH_SCORE, SOFA_RESPONSE_THRESHOLD, sofa_responder
from immunostrat.analysis.stats import fisher_exact
from immunostrat.trial.randomization import permuted_block_list

from .model import BoolArray, FloatArray, IntArray
from .population import (
    DEFAULT_ENGINE,
    ENDOTYPE_NAMES,
    IMMUNOPARALYSIS,
    INTERMEDIATE,
    MALS,
    VirtualPopulation,
    day28_horizon_h,
    generate_population,
    protocol_therapies,
    simulate_course,
    stratify,
)
from .therapies import Therapy, get_therapy

if TYPE_CHECKING:
    import polars as pl

#: Endpoints: name -> True when a higher rate is better.
ENDPOINTS: dict[str, bool] = {
    # ImmunoSep primary: day-1 SOFA minus mean SOFA of days 2-9 >= 1.4, death scores 24 (domain.md A1).
    "sofa_response": True,
    # PROVIDE primary / ImmunoSep secondary: 28-day mortality (domain.md A1/A2).
    "mortality_28d": False,
    # ImmunoSep secondary: infection resolution at day 15 (alive with the pathogen cleared here).
    "infection_resolved_d15": True,
    # ImmunoSep infection status at day 15, "superinfection" (domain.md A1): a secondary infection by
    # day 15 (always False without the model.SecondaryInfection extension).
    "superinfection_d15": False,
}

#: Assay noise: log-normal CV of 15% for ferritin and mHLA-DR (insilico.md 3: CV about 10-20% [design]).
ASSAY_CV = 0.15


@dataclass(frozen=True)
class Outcomes:
    """Per-patient endpoints under one therapy: boolean arrays of shape (n,), keyed like ENDPOINTS."""

    therapy: str
    values: Mapping[str, BoolArray]


def endpoints_from_simulation(
    vpop: VirtualPopulation, therapy: str | Therapy, *, chunk_size: int = 4096, engine: str | None = None
) -> Outcomes:
    """Simulate every patient of ``vpop`` under ``therapy`` started at enrolment and score the endpoints.
    ``engine``: None for the population's own (``VirtualPopulation.engine``); the outcomes do not depend
    on it (``population.integrate_course``)."""
    th = get_therapy(therapy)
    traj, obs = simulate_course(vpop, th, chunk_size=chunk_size, engine=engine)
    d = vpop.enrolment_day
    # virtual patients are assessed every day while alive, so the only imputation is the death score
    sofa = np.where(obs.alive, obs.sofa, SOFA_DEATH_SCORE).astype(np.float64)
    later = sofa[:, d + 1 : d + 9].mean(axis=1)  # the 8 days after the baseline day
    response = sofa_responder(sofa[:, d] - later, SOFA_RESPONSE_THRESHOLD)
    died = traj.died_by(day28_horizon_h(d))  # counted from randomization (enrolment), not from onset
    resolved15 = obs.infection_resolved[:, 15] & obs.alive[:, 15]
    return Outcomes(
        th.id,
        {
            "sofa_response": response,
            "mortality_28d": died,
            "infection_resolved_d15": resolved15,
            "superinfection_d15": traj.secondary_by(15 * 24.0),
        },
    )


@dataclass(frozen=True)
class TrialDesign:
    """A two-arm trial design: placebo versus ``therapy`` (all-comers) or a therapy per endotype.

    ``eligible``: endotypes enrolled (by measured biomarkers). ``therapy_by_endotype`` overrides
    ``therapy`` for the listed endotypes (biomarker-guided).
    """

    id: str
    name: str
    therapy: str | Therapy | None = None
    therapy_by_endotype: Mapping[int, str | Therapy] = field(default_factory=dict)
    eligible: tuple[int, ...] = (MALS, IMMUNOPARALYSIS, INTERMEDIATE)
    primary_endpoint: str = "sofa_response"
    alpha: float = 0.05
    block_size: int = 4

    def therapy_for(self, endotype: int) -> str | Therapy:
        if endotype in self.therapy_by_endotype:
            return self.therapy_by_endotype[endotype]
        if self.therapy is None:
            raise ValueError(f"design {self.id} has no therapy for endotype {ENDOTYPE_NAMES[endotype]}")
        return self.therapy

    @property
    def therapies(self) -> tuple[str | Therapy, ...]:
        return tuple(dict.fromkeys(self.therapy_for(e) for e in self.eligible))


DESIGNS: dict[str, TrialDesign] = {
    d.id: d
    for d in (
        TrialDesign(
            "all-comers-anti-inflammatory",
            "All-comers non-specific anti-inflammatory (steroid-like) for every patient",
            therapy="anti_inflammatory",
        ),
        TrialDesign(
            "all-comers-msc-secretome",
            "All-comers anti-inflammatory: MSC secretome for every patient",
            therapy="msc_secretome",
        ),
        TrialDesign("all-comers-msc", "All-comers mesenchymal stromal cells", therapy="msc"),
        TrialDesign(
            "all-comers-immunostimulation",
            "All-comers immunostimulation: interferon-gamma for every patient",
            therapy="interferon_gamma",
        ),
        TrialDesign(
            "immunosep",
            "Biomarker-guided (ImmunoSep): anakinra for MALS, interferon-gamma for immunoparalysis",
            therapy_by_endotype=protocol_therapies(),
            eligible=(MALS, IMMUNOPARALYSIS),
        ),
    )
}


def get_design(design: str | TrialDesign) -> TrialDesign:
    if isinstance(design, TrialDesign):
        return design
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; expected one of {', '.join(DESIGNS)}")
    return DESIGNS[design]


class OutcomeTable:
    """Potential outcomes of a virtual population under each therapy, simulated on first use, on ``engine``
    (None: the population's own, ``VirtualPopulation.engine``)."""

    def __init__(self, vpop: VirtualPopulation, engine: str | None = None) -> None:
        self.vpop = vpop
        self.engine = engine
        self._cache: dict[Therapy, Outcomes] = {}

    def get(self, therapy: str | Therapy) -> Outcomes:
        """The outcomes under ``therapy``, simulated once. Keyed by the therapy's full definition (its
        effects), not its id, so two regimens that share an id (e.g. a rescaled copy) never share outcomes."""
        th = get_therapy(therapy)
        if th not in self._cache:
            self._cache[th] = endpoints_from_simulation(self.vpop, th, engine=self.engine)
        return self._cache[th]


@dataclass(frozen=True)
class SubgroupEffect:
    """Mean over trials of the treatment-minus-placebo rate in one measured endotype, per endpoint, plus the
    in-silico individual effect in the whole VPop stratum (share rescued and share harmed on mortality)."""

    endotype: str
    mean_difference: dict[str, float]
    n_per_trial: float
    rescued: float
    harmed: float

    @property
    def harm(self) -> bool:
        """Net individual harm on 28-day mortality: more patients of the stratum killed than rescued by the
        treatment (exact potential outcomes, free of the trials' sampling noise)."""
        return self.harmed > self.rescued


@dataclass(frozen=True)
class TrialResults:
    design: TrialDesign
    n: int
    trials: int
    seed: int
    power: float
    type1_error: float
    p_values: FloatArray
    rates: dict[str, dict[str, float]]  # arm -> endpoint -> mean rate over trials
    subgroups: dict[str, SubgroupEffect]
    population_fit: str
    #: one entry per simulated trial (arrays of shape (trials,)): see :meth:`per_trial_frame`
    per_trial: dict[str, npt.NDArray[np.generic]] = field(default_factory=dict)

    @property
    def power_mc_se(self) -> float:
        """Monte Carlo standard error of :attr:`power` (binomial over the simulated trials)."""
        return monte_carlo_se(self.power, self.trials)

    @property
    def type1_mc_se(self) -> float:
        """Monte Carlo standard error of :attr:`type1_error`."""
        return monte_carlo_se(self.type1_error, self.trials)

    def per_trial_frame(self) -> pl.DataFrame:
        """One row per simulated trial: arm sizes and primary-endpoint events, rates, the Fisher P of the
        trial and of its null twin (treatment arm given placebo outcomes), and whether it counts as power."""
        import polars as pl

        return pl.DataFrame(
            {"design": [self.design.id] * self.trials, "n": [self.n] * self.trials, **self.per_trial}
        )

    def summary(self) -> str:
        lines = [
            f"{self.design.name}: {self.trials} trials of n = {self.n} (seed {self.seed})",
            f"power {self.power:.3f} (Monte Carlo SE {self.power_mc_se:.3f}), type I error "
            f"{self.type1_error:.3f} (SE {self.type1_mc_se:.3f}) "
            f"(primary: {self.design.primary_endpoint}, alpha {self.design.alpha})",
        ]
        for arm, rates in self.rates.items():
            lines.append(f"  {arm:10s} " + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
        for name, sg in self.subgroups.items():
            diffs = ", ".join(f"{k} {v:+.3f}" for k, v in sg.mean_difference.items())
            lines.append(
                f"  subgroup {name:16s} n/trial {sg.n_per_trial:6.1f}: {diffs}; rescued {sg.rescued:.3f}, "
                f"harmed {sg.harmed:.3f}{'  HARM' if sg.harm else ''}"
            )
        return "\n".join(lines)


def monte_carlo_se(share: float, trials: int) -> float:
    """Binomial standard error of a share estimated from ``trials`` simulated trials (power, type I error)."""
    return math.sqrt(max(share * (1.0 - share), 0.0) / trials) if trials > 0 else math.nan


def _permuted_blocks(strata: IntArray, block: int, seed: bytes) -> BoolArray:
    """1:1 allocation in permuted blocks of ``block`` within each stratum, in enrolment order, from the
    trial service's concealed lists (``permuted_block_list``) keyed by ``seed``; True = treatment."""
    if block < 2 or block % 2:
        raise ValueError(f"block size must be an even number >= 2, got {block}")
    treat = np.zeros(strata.size, dtype=np.bool_)
    for s in np.unique(strata):
        rows = np.flatnonzero(strata == s)
        slots = permuted_block_list(
            seed, f"stratum-{int(s)}", {"treatment": 1, "placebo": 1}, [block // 2], rows.size
        )
        treat[rows] = [slot.arm == "treatment" for slot in slots[: rows.size]]
    return treat


@lru_cache(maxsize=65536)
def _fisher_p(x1: int, n1: int, x0: int, n0: int) -> float:
    # cached: trials of one size share many 2x2 tables, and the exact test is the loop's costliest step
    p = fisher_exact(x1, n1, x0, n0).p_value
    assert p is not None
    return p


def simulate_trials(
    design: str | TrialDesign,
    n: int = 276,
    trials: int = 1000,
    seed: int = 0,
    *,
    population: VirtualPopulation | None = None,
    outcomes: OutcomeTable | None = None,
    population_size: int = 4000,
    assay_cv: float = ASSAY_CV,
    progress: Callable[[int, int], None] | None = None,
    engine: str | None = None,
) -> TrialResults:
    """Run ``trials`` in-silico trials of ``n`` patients each (see the module docstring). ``engine``: the
    integration engine of the population and outcomes simulated here (None: ``"auto"`` for a new
    population, else the population's own); the results do not depend on it."""
    des = get_design(design)
    if des.primary_endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {des.primary_endpoint!r}")
    if n < 2 or trials < 1:
        raise ValueError("need n >= 2 and trials >= 1")
    vpop = population if population is not None else _new_population(population_size, seed, engine)
    table = outcomes if outcomes is not None else OutcomeTable(vpop, engine)
    placebo = table.get("placebo")
    therapy_out = {name: table.get(name) for name in des.therapies}
    rng = np.random.default_rng(np.random.SeedSequence([seed, 6]))
    c = vpop.cohort
    sigma = math.sqrt(math.log1p(assay_cv * assay_cv)) if assay_cv > 0 else 0.0

    endpoint_names = list(ENDPOINTS)
    primary = des.primary_endpoint
    higher_better = ENDPOINTS[primary]
    p_values = np.empty(trials)
    p_null = np.empty(trials)
    benefit = np.zeros(trials, dtype=np.bool_)
    counts = np.zeros((trials, 4), dtype=np.int64)  # x1, n1, x0, n0 on the primary endpoint
    arm_sums = {arm: dict.fromkeys(endpoint_names, 0.0) for arm in ("treatment", "placebo")}
    sub_sums = {e: dict.fromkeys(endpoint_names, 0.0) for e in range(3)}
    sub_counts = np.zeros(3)
    sub_trials = np.zeros(3)
    enrolments = _enrolments(rng, c.ferritin, c.mhla_dr, sigma, des.eligible, n, trials)
    for t in range(trials):
        idx, measured, allocation_seed = next(enrolments)
        treat = _permuted_blocks(measured, des.block_size, allocation_seed)
        got: dict[str, BoolArray] = {}
        for ep in endpoint_names:
            y_placebo = placebo.values[ep][idx]
            y_treat = np.empty(n, dtype=np.bool_)
            for e in np.unique(measured):
                rows = measured == e
                y_treat[rows] = therapy_out[des.therapy_for(int(e))].values[ep][idx[rows]]
            got[ep] = np.where(treat, y_treat, y_placebo)
            arm_sums["treatment"][ep] += float(got[ep][treat].mean())
            arm_sums["placebo"][ep] += float(got[ep][~treat].mean())
            for e in range(3):
                rows = measured == e
                if (rows & treat).any() and (rows & ~treat).any():
                    sub_sums[e][ep] += float(got[ep][rows & treat].mean() - got[ep][rows & ~treat].mean())
        for e in range(3):
            rows = measured == e
            if (rows & treat).any() and (rows & ~treat).any():
                sub_trials[e] += 1
            sub_counts[e] += rows.sum()
        y = got[primary]
        n1, n0 = int(treat.sum()), int((~treat).sum())
        x1, x0 = int(y[treat].sum()), int(y[~treat].sum())
        counts[t] = (x1, n1, x0, n0)
        p_values[t] = _fisher_p(x1, n1, x0, n0)
        rate_t, rate_p = x1 / max(n1, 1), x0 / max(n0, 1)
        benefit[t] = rate_t > rate_p if higher_better else rate_t < rate_p
        y0 = placebo.values[primary][idx]  # null: the treatment arm gets placebo outcomes
        p_null[t] = _fisher_p(int(y0[treat].sum()), n1, int(y0[~treat].sum()), n0)
        if progress is not None:
            progress(t + 1, trials)
    power = float(np.mean((p_values < des.alpha) & benefit))
    type1 = float(np.mean(p_null < des.alpha))
    rates = {arm: {ep: v / trials for ep, v in sums.items()} for arm, sums in arm_sums.items()}
    subgroups: dict[str, SubgroupEffect] = {}
    for e in range(3):
        if sub_trials[e] == 0:
            continue
        stratum = vpop.endotype == e
        treated_death = therapy_out[des.therapy_for(e)].values["mortality_28d"] if e in des.eligible else None
        if treated_death is None:
            continue
        base_death = placebo.values["mortality_28d"]
        rescued = float(np.mean(base_death[stratum] & ~treated_death[stratum])) if stratum.any() else 0.0
        harmed = float(np.mean(~base_death[stratum] & treated_death[stratum])) if stratum.any() else 0.0
        subgroups[ENDOTYPE_NAMES[e]] = SubgroupEffect(
            ENDOTYPE_NAMES[e],
            {ep: sub_sums[e][ep] / sub_trials[e] for ep in endpoint_names},
            float(sub_counts[e] / trials),
            rescued,
            harmed,
        )
    per_trial: dict[str, npt.NDArray[np.generic]] = {
        "trial": np.arange(trials),
        "n_treatment": counts[:, 1],
        "events_treatment": counts[:, 0],
        "n_placebo": counts[:, 3],
        "events_placebo": counts[:, 2],
        "rate_treatment": counts[:, 0] / np.maximum(counts[:, 1], 1),
        "rate_placebo": counts[:, 2] / np.maximum(counts[:, 3], 1),
        "p_value": p_values,
        "p_value_null": p_null,
        "significant_benefit": (p_values < des.alpha) & benefit,
    }
    return TrialResults(
        des, n, trials, seed, power, type1, p_values, rates, subgroups, vpop.fit.table(), per_trial
    )


def _new_population(size: int, seed: int, engine: str | None) -> VirtualPopulation:
    """The default virtual population of a trial run, on ``engine`` (None: the default one)."""
    return generate_population(size, seed, engine=engine if engine is not None else DEFAULT_ENGINE)


def _enrolments(
    rng: np.random.Generator,
    ferritin: FloatArray,
    mhla_dr: FloatArray,
    sigma: float,
    eligible: Sequence[int],
    n: int,
    trials: int,
    block: int = 64,
) -> Iterator[tuple[IntArray, IntArray, bytes]]:
    """The enrolment (patients, measured endotypes) and allocation-list seed of ``trials`` successive
    trials: exactly those of drawing rounds of ``2 n`` patients until ``n`` are eligible, then
    ``rng.bytes(32)``, trial after trial (the reference loop is in the tests), with one protocol call
    per block of trials instead of one per round of draws (the call's fixed cost dominated the loop).

    Each item of a block is one round of draws of the current trial followed by the 32 bytes that seed its
    allocation if that round completes it. After the block's one stratification call, the first trial that
    a round leaves short goes back to the generator's state after that round and continues with the next
    block (its later items, drawn ahead, are discarded), so the stream is that of the trial-by-trial loop."""
    elig = np.asarray(eligible)
    done = 0
    picked: list[IntArray] = []  # eligible patients and endotypes of the current trial so far
    strata: list[IntArray] = []
    while done < trials:
        ahead: list[tuple[IntArray, FloatArray, FloatArray, Mapping[str, Any], bytes]] = []
        for _ in range(min(block, trials - done)):
            draw = rng.integers(0, ferritin.size, size=2 * n)
            fer = ferritin[draw] * np.exp(rng.normal(0.0, sigma, draw.size))
            hla = mhla_dr[draw] * np.exp(rng.normal(0.0, sigma, draw.size))
            state = rng.bit_generator.state
            ahead.append((draw, fer, hla, state, rng.bytes(32)))
        endo_all = stratify(np.concatenate([a[1] for a in ahead]), np.concatenate([a[2] for a in ahead]))
        for k, (draw, _, _, state, seed) in enumerate(ahead):
            endo = endo_all[k * 2 * n : (k + 1) * 2 * n]
            ok = np.isin(endo, elig)
            picked.append(draw[ok])
            strata.append(endo[ok])
            if sum(int(p.size) for p in picked) >= n:
                yield np.concatenate(picked)[:n], np.concatenate(strata)[:n], seed
                done += 1
                picked, strata = [], []
                continue
            rng.bit_generator.state = state  # short: its next round comes next, not the 32 bytes
            break


def power_curve(
    designs: Sequence[str | TrialDesign],
    sizes: Sequence[int],
    trials: int = 200,
    seed: int = 0,
    *,
    population: VirtualPopulation | None = None,
    population_size: int = 4000,
    progress: Callable[[int, int], None] | None = None,
    engine: str | None = None,
) -> dict[str, list[float]]:
    """Power of each design at each trial size, on one shared virtual population and outcome table
    (``engine`` as in :func:`simulate_trials`)."""
    vpop = population if population is not None else _new_population(population_size, seed, engine)
    table = OutcomeTable(vpop, engine)
    out: dict[str, list[float]] = {}
    total = len(designs) * len(sizes)
    done = 0
    for d in designs:
        des = get_design(d)
        out[des.id] = []
        for size in sizes:
            res = simulate_trials(des, size, trials, seed, population=vpop, outcomes=table)
            out[des.id].append(res.power)
            done += 1
            if progress is not None:
                progress(done, total)
    return out


@dataclass(frozen=True)
class SizeResult:
    """The smallest trial size found to reach ``target_power`` (None: not reached by ``n_max``), with every
    size evaluated and its Monte Carlo power."""

    design: str
    endpoint: str
    target_power: float
    n: int | None
    power_at_n: float | None
    evaluated: dict[int, float]
    trials: int

    @property
    def monte_carlo_se(self) -> float | None:
        """Standard error of the power estimate at ``n`` (binomial over ``trials`` trials)."""
        if self.power_at_n is None:
            return None
        return monte_carlo_se(self.power_at_n, self.trials)

    def summary(self) -> str:
        points = ", ".join(
            f"n {k}: {v:.3f} (SE {monte_carlo_se(v, self.trials):.3f})"
            for k, v in sorted(self.evaluated.items())
        )
        if self.n is None:
            head = (
                f"{self.design} ({self.endpoint}): power {self.target_power:.2f} not reached by "
                f"n = {max(self.evaluated)}"
            )
        else:
            head = (
                f"{self.design} ({self.endpoint}): n = {self.n} patients for power {self.target_power:.2f} "
                f"(estimated {self.power_at_n:.3f}, Monte Carlo SE {self.monte_carlo_se:.3f}, "
                f"{self.trials} trials per size)"
            )
        return f"{head}\n  evaluated: {points}"


def size_trial(
    design: str | TrialDesign,
    target_power: float = 0.8,
    *,
    population: VirtualPopulation,
    outcomes: OutcomeTable | None = None,
    trials: int = 300,
    seed: int = 0,
    n_min: int = 20,
    n_max: int = 2000,
    progress: Callable[[int, int], None] | None = None,
    engine: str | None = None,
) -> SizeResult:
    """The smallest even trial size whose in-silico power reaches ``target_power``: bisection between
    ``n_min`` and ``n_max`` on the Monte Carlo power, every size run with the same seed (common random
    numbers, so the power curve is smooth in n) on one virtual population and outcome table. Power is
    noisy (see ``SizeResult.monte_carlo_se``): the answer is a planning figure, to be confirmed with more
    trials at and around it. ``engine``: as in :func:`simulate_trials`."""
    des = get_design(design)
    if not 0.0 < target_power < 1.0:
        raise ValueError(f"target power must lie in (0, 1), got {target_power}")
    lo, hi = max(2, n_min + n_min % 2), n_max - n_max % 2
    if lo >= hi:
        raise ValueError(f"need n_min < n_max, got {n_min} and {n_max}")
    table = outcomes if outcomes is not None else OutcomeTable(population, engine)
    evaluated: dict[int, float] = {}
    steps = 2 + max(1, math.ceil(math.log2(max(1, (hi - lo) / 2))))

    def power(n: int) -> float:
        if n not in evaluated:
            evaluated[n] = simulate_trials(des, n, trials, seed, population=population, outcomes=table).power
            if progress is not None:
                progress(len(evaluated), steps)
        return evaluated[n]

    if power(hi) < target_power:
        return SizeResult(des.id, des.primary_endpoint, target_power, None, None, evaluated, trials)
    if power(lo) >= target_power:
        hi = lo
    while hi - lo > 2:
        mid = (lo + hi) // 2
        mid -= mid % 2
        if power(mid) >= target_power:
            hi = mid
        else:
            lo = mid
    return SizeResult(des.id, des.primary_endpoint, target_power, hi, evaluated[hi], evaluated, trials)


def potential_outcome_summary(
    vpop: VirtualPopulation, therapies: Sequence[str | Therapy], outcomes: OutcomeTable | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """therapy -> endotype -> endpoint -> rate over the whole VPop stratum (no sampling noise)."""
    table = outcomes if outcomes is not None else OutcomeTable(vpop)
    res: dict[str, dict[str, dict[str, float]]] = {}
    for th in therapies:
        o = table.get(th)
        key = th.id if isinstance(th, Therapy) else th
        res[key] = {}
        for e, name in enumerate(ENDOTYPE_NAMES):
            m = vpop.endotype == e
            res[key][name] = {ep: float(np.mean(v[m])) if m.any() else math.nan for ep, v in o.values.items()}
    return res


__all__ = [
    "DESIGNS",
    "ENDPOINTS",
    "OutcomeTable",
    "Outcomes",
    "SizeResult",
    "SubgroupEffect",
    "TrialDesign",
    "TrialResults",
    "endpoints_from_simulation",
    "get_design",
    "monte_carlo_se",
    "potential_outcome_summary",
    "power_curve",
    "simulate_trials",
    "size_trial",
]
