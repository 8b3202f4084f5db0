"""Calibration of the free therapy strengths on the training comparators and validation on the held-out ones.

1. Potential outcomes. Every virtual patient is simulated on placebo and on each regimen at each grid value
   of its mechanism's multiplier, from randomization (enrolment) to the comparator's horizon.
2. Each comparator's own population: the VPop patients of its subgroup, weighted (raking) so that the
   endotype shares are the trial's (when stratified) and the placebo mortality at the trial's horizon is
   the trial's control-arm mortality. Control mortality is thus an input, never a validation result.
3. Calibration (training comparators only): a grid posterior over the joint multipliers, uniform prior,
   normal likelihood of each published risk difference given the model's expected effect (SE from the
   published 95% interval). Draws from it come from a seeded generator.
4. Prediction: for every comparator, ``trials`` simulated trials at its own arm sizes, each with one
   posterior draw of the multipliers (parameter uncertainty) and its own patients (sampling). The 95%
   predictive interval is the 2.5-97.5 percentiles of the simulated effects.
5. The pre-registered criterion of the plan decides pass or fail per comparison and per model variant.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..model import BoolArray, DeactivationParameters, DeathRule, FloatArray, IntArray, SecondaryInfection
from ..observables import ObservableCalibration
from ..population import (
    DEFAULT_ENGINE,
    IMMUNOPARALYSIS,
    MALS,
    VirtualPopulation,
    generate_population,
    model_variant,
    simulate_course,
)
from ..therapies import Therapy
from .plan import Comparator, CredibilityPlan, load_plan

if TYPE_CHECKING:
    import polars as pl

#: ImmunoSep endotype reversal at day 15 (SAP, domain.md A1): MALS, ferritin fall >= 15%; immunoparalysis,
#: mHLA-DR > 8,000 AB/C with ferritin < 4,420 ng/mL.
MALS_FERRITIN_FALL = 0.15
REVERSAL_HLA_ABC = 8_000.0
MALS_FERRITIN_NG_ML = 4_420.0


@dataclass(frozen=True)
class ArmOutcomes:
    """Per-patient endpoints of one arm: deaths by day after randomization, SOFA response, day-15 reversal."""

    died_by_day: Mapping[int, BoolArray]
    sofa_response: BoolArray
    reversal_d15: BoolArray
    alive_d15: BoolArray

    def endpoint(self, name: str, horizon_days: int) -> BoolArray:
        if name == "mortality":
            return self.died_by_day[horizon_days]
        if name == "sofa_response":
            return self.sofa_response
        return self.reversal_d15


def simulate_arm(vpop: VirtualPopulation, therapy: Therapy | None, horizons: Sequence[int]) -> ArmOutcomes:
    """Endpoints of every VPop patient on ``therapy`` (None: placebo) from enrolment to the last horizon."""
    from immunostrat.analysis.endpoints import SOFA_DEATH_SCORE, SOFA_RESPONSE_THRESHOLD, sofa_responder

    days = max(max(horizons), 28)
    traj, obs = simulate_course(vpop, therapy, days_after_enrolment=days)
    d = vpop.enrolment_day
    start_h = 24.0 * d
    died = {h: traj.died_by(start_h + 24.0 * h) for h in sorted(set(horizons) | {28})}
    sofa = np.where(obs.alive, obs.sofa, SOFA_DEATH_SCORE).astype(np.float64)
    response = np.asarray(
        sofa_responder(sofa[:, d] - sofa[:, d + 1 : d + 9].mean(axis=1), SOFA_RESPONSE_THRESHOLD)
    )
    day15 = d + 14  # trial day 1 is the enrolment day
    alive15 = obs.alive[:, day15]
    fer0, fer15, hla15 = obs.ferritin[:, d], obs.ferritin[:, day15], obs.mhla_dr[:, day15]
    reversal = np.where(
        vpop.endotype == MALS,
        fer15 <= (1.0 - MALS_FERRITIN_FALL) * fer0,
        np.where(
            vpop.endotype == IMMUNOPARALYSIS,
            (hla15 > REVERSAL_HLA_ABC) & (fer15 < MALS_FERRITIN_NG_ML),
            False,
        ),
    )
    return ArmOutcomes(died, response.astype(np.bool_), reversal & alive15, alive15)


class OutcomeStore:
    """Potential outcomes of one VPop under placebo and each (regimen, multiplier), simulated once each."""

    def __init__(self, vpop: VirtualPopulation, plan: CredibilityPlan) -> None:
        self.vpop = vpop
        self.plan = plan
        #: horizons (days after randomization) needed per regimen; placebo needs them all
        self.horizons: dict[str | None, tuple[int, ...]] = {
            None: tuple(sorted({c.horizon_days for c in plan.comparators}))
        }
        for c in plan.comparators + plan.designs:
            for r in c.regimens:
                self.horizons[r] = tuple(sorted(set(self.horizons.get(r, ())) | {c.horizon_days}))
        self._cache: dict[tuple[Therapy | None, tuple[int, ...]], ArmOutcomes] = {}
        self.simulations = 0

    def get(self, regimen: str | None, multiplier: float = 1.0) -> ArmOutcomes:
        """Outcomes on ``regimen`` x ``multiplier`` (None or 0: placebo), to the regimen's longest horizon."""
        th = None if regimen is None or multiplier == 0.0 else self.plan.regimens[regimen].therapy(multiplier)
        horizons = self.horizons[None] if th is None else self.horizons.get(regimen, (28,))
        key = (None if th is None else Therapy("", "", th.effects), horizons)  # same effects, same outcomes
        if key not in self._cache:
            self._cache[key] = simulate_arm(self.vpop, th, horizons)
            self.simulations += 1
        return self._cache[key]


def population_weights(vpop: VirtualPopulation, placebo: ArmOutcomes, comp: Comparator) -> FloatArray:
    """Sampling weights of the comparator's own population: its subgroup, raked to its endotype shares and
    to its control-arm mortality at its horizon (iterative proportional fitting)."""
    endo = vpop.endotype
    died = placebo.died_by_day[comp.horizon_days]
    w = np.isin(endo, comp.subgroup).astype(np.float64)
    target = comp.control_rate
    if target is None:  # the VPop as it is
        return w / w.sum()
    for _ in range(100):
        if comp.strata:
            for code, share in comp.strata.items():
                rows = endo == code
                have = w[rows].sum() / w.sum()
                if have <= 0:
                    raise ValueError(f"{comp.id}: no virtual patient in stratum {code}")
                w[rows] *= share / have
        m = float((w * died).sum() / w.sum())
        if not 0.0 < m < 1.0:
            raise ValueError(f"{comp.id}: placebo mortality {m} cannot be matched")
        w = np.where(died, w * target / m, w * (1.0 - target) / (1.0 - m))
        if abs(m - target) < 1e-10:
            break
    return w / w.sum()


Theta = tuple[float, ...]  # one multiplier per mechanism, in plan.mechanisms order


@dataclass(frozen=True)
class ArmArrays:
    y_t: BoolArray
    y_c: BoolArray
    w_t: FloatArray
    w_c: FloatArray

    def expected_effect(self) -> float:
        """Treatment minus control rate in points, over the weighted population (no sampling noise)."""
        return 100.0 * (
            float(self.w_t @ self.y_t) / float(self.w_t.sum())
            - float(self.w_c @ self.y_c) / float(self.w_c.sum())
        )


class ComparatorModel:
    """A comparator's arms as functions of the multipliers: outcome arrays and sampling weights."""

    def __init__(self, comp: Comparator, store: OutcomeStore) -> None:
        self.comp = comp
        self.store = store
        self.mech_index = {m: i for i, m in enumerate(store.plan.mechanisms)}
        self.placebo = store.get(None)
        self.weights = population_weights(store.vpop, self.placebo, comp)
        self.used = tuple(
            sorted({self.mech_index[store.plan.regimens[r].mechanism] for r in comp.regimens})
        )  # indices of the mechanisms this comparator depends on
        self._cache: dict[Theta, ArmArrays] = {}

    def key(self, theta: Theta) -> Theta:
        return tuple(theta[i] for i in self.used)

    def arrays(self, theta: Theta) -> ArmArrays:
        k = self.key(theta)
        if k not in self._cache:
            comp, endo = self.comp, self.store.vpop.endotype
            y_c = self.placebo.endpoint(comp.endpoint, comp.horizon_days)
            y_t = np.zeros_like(y_c)
            alive_t = np.zeros_like(y_c)
            for code, reg in comp.regimen_by_stratum.items():
                m = theta[self.mech_index[self.store.plan.regimens[reg].mechanism]]
                arm = self.store.get(reg, m)
                rows = endo == code
                y_t[rows] = arm.endpoint(comp.endpoint, comp.horizon_days)[rows]
                alive_t[rows] = arm.alive_d15[rows]
            w_t = self.weights.copy()
            w_c = self.weights.copy()
            if comp.only_stratum is not None:
                w_t[endo != comp.only_stratum] = 0.0
                w_c[endo != comp.only_stratum] = 0.0
            if comp.endpoint == "immune_reversal_d15":  # the subset with day-15 samples: the living
                w_t = w_t * alive_t
                w_c = w_c * self.placebo.alive_d15
            self._cache[k] = ArmArrays(y_t, y_c, w_t, w_c)
        return self._cache[k]


@dataclass(frozen=True)
class Posterior:
    """Grid posterior over the joint multipliers (one per mechanism, plan order)."""

    mechanisms: tuple[str, ...]
    grid: tuple[Theta, ...]
    probability: FloatArray
    training: tuple[str, ...]

    def mean(self) -> dict[str, float]:
        g = np.asarray(self.grid)
        return {m: float(self.probability @ g[:, i]) for i, m in enumerate(self.mechanisms)}

    def interval(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        g = np.asarray(self.grid)
        out = {}
        for i, m in enumerate(self.mechanisms):
            values = g[:, i]
            order = np.argsort(values, kind="stable")
            cdf = np.cumsum(self.probability[order])
            lo_at = int(np.searchsorted(cdf, (1 - level) / 2))
            hi_at = min(int(np.searchsorted(cdf, 1 - (1 - level) / 2)), len(cdf) - 1)
            out[m] = (float(values[order[lo_at]]), float(values[order[hi_at]]))
        return out

    def draw(self, rng: np.random.Generator, size: int) -> IntArray:
        return rng.choice(len(self.grid), size=size, p=self.probability)


def calibrate(
    training: Sequence[Comparator], store: OutcomeStore, grids: Mapping[str, Sequence[float]] | None = None
) -> Posterior:
    """Grid posterior of the multipliers given the training comparators only (held-out ones are refused).

    Likelihood of each training result: normal on the published risk difference (points) around the model's
    expected effect, SE = width of the published 95% interval / (2 x 1.96). Uniform prior over the grid.
    """
    for c in training:
        if c.role != "training":
            raise ValueError(f"comparator {c.id} is {c.role}: only training comparators feed calibration")
    plan = store.plan
    names = tuple(plan.mechanisms)
    axes = [tuple(grids[m]) if grids and m in grids else plan.mechanisms[m].grid for m in names]
    grid = tuple(itertools.product(*axes))
    loglik = np.zeros(len(grid))
    for c in training:
        model = ComparatorModel(c, store)
        est, lo, hi = c.published_points
        se = (hi - lo) / (2 * 1.959963984540054)
        for j, theta in enumerate(grid):
            loglik[j] += -0.5 * ((model.arrays(theta).expected_effect() - est) / se) ** 2
    p = np.exp(loglik - loglik.max())
    return Posterior(names, grid, p / p.sum(), tuple(c.id for c in training))


@dataclass(frozen=True)
class ComparisonResult:
    comparator: Comparator
    published: tuple[float, float, float]  # estimate, 95% CI (points)
    predicted: float  # mean simulated effect (points)
    interval: tuple[float, float]  # predictive interval (points)
    effects: FloatArray  # every simulated trial's effect
    passed: bool
    note: str = ""
    events: IntArray | None = None  # per simulated trial: treatment and control events

    def power(self, alpha: float = 0.05) -> float:
        """Share of the simulated trials with a two-sided Fisher exact P < ``alpha`` in the direction of
        benefit (fewer deaths, more SOFA responders): the design's power with parameter uncertainty."""
        from immunostrat.analysis.stats import fisher_exact

        assert self.events is not None
        n_t, n_c = self.comparator.arm_sizes
        better_high = self.comparator.endpoint != "mortality"
        hits = 0
        p_of: dict[tuple[int, int], float] = {}
        for x1, x0 in self.events.tolist():
            benefit = x1 / n_t > x0 / n_c if better_high else x1 / n_t < x0 / n_c
            if not benefit:
                continue
            if (x1, x0) not in p_of:
                p_of[(x1, x0)] = fisher_exact(x1, n_t, x0, n_c).p_value or 1.0
            hits += p_of[(x1, x0)] < alpha
        return hits / self.events.shape[0]

    @property
    def monte_carlo_se(self) -> float:
        """Standard error of the predicted mean effect (points) over the simulated trials."""
        return float(self.effects.std(ddof=1) / math.sqrt(self.effects.size))


def predict(
    comp: Comparator,
    store: OutcomeStore,
    posterior: Posterior,
    rng: np.random.Generator,
    trials: int,
    interval: float,
    sign_for_strata: bool,
) -> ComparisonResult:
    """``trials`` simulated trials of ``comp`` at its own arm sizes, one posterior draw each."""
    model = ComparatorModel(comp, store)
    n_t, n_c = comp.arm_sizes
    draws = posterior.draw(rng, trials)
    effects = np.empty(trials)
    events = np.empty((trials, 2), dtype=np.int64)  # treatment, control
    for j in np.unique(draws):
        rows = np.flatnonzero(draws == j)
        a = model.arrays(posterior.grid[int(j)])
        it = rng.choice(a.y_t.size, size=(rows.size, n_t), p=a.w_t / a.w_t.sum())
        ic = rng.choice(a.y_c.size, size=(rows.size, n_c), p=a.w_c / a.w_c.sum())
        events[rows, 0] = a.y_t[it].sum(axis=1)
        events[rows, 1] = a.y_c[ic].sum(axis=1)
        effects[rows] = 100.0 * (events[rows, 0] / n_t - events[rows, 1] / n_c)
    tail = 100.0 * (1.0 - interval) / 2.0
    lo, hi = (float(v) for v in np.percentile(effects, [tail, 100.0 - tail]))
    pub = comp.published_points
    inside = lo <= pub[0] <= hi
    mean = float(effects.mean())
    note = ""
    passed = inside
    if comp.stratum and sign_for_strata and np.sign(mean) != np.sign(pub[0]):
        passed = False
        note = "sign"
    if not inside:
        note = "outside" if not note else note + ", outside"
    return ComparisonResult(comp, pub, mean, (lo, hi), effects, passed, note, events)


@dataclass(frozen=True)
class ValidationReport:
    model: str
    population_size: int
    seed: int
    trials: int
    posterior: Posterior
    results: tuple[ComparisonResult, ...]
    min_share: float
    simulations: int
    control_mortality_vpop: float
    designs: tuple[ComparisonResult, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def design_table(self) -> str:
        """What the calibrated model says about the designs: effect, 95% predictive interval, power."""
        if not self.designs:
            return ""
        lines = [
            f"{'design (calibrated model; a finding, not a criterion)':56s} {'n (T/C)':>8s} "
            f"{'effect (95% PI)':>24s}  power (MC SE)"
        ]
        for r in self.designs:
            n_t, n_c = r.comparator.arm_sizes
            pw = r.power()
            se = math.sqrt(pw * (1 - pw) / r.effects.size)
            eff = f"{r.predicted:+6.1f} ({r.interval[0]:+6.1f}, {r.interval[1]:+6.1f})"
            lines.append(f"{r.comparator.id:56s} {f'{n_t}/{n_c}':>8s} {eff:>24s}  {pw:.3f} ({se:.3f})")
        return "\n".join(lines)

    @property
    def held_out(self) -> tuple[ComparisonResult, ...]:
        return tuple(r for r in self.results if r.comparator.role == "held_out")

    @property
    def share_passed(self) -> float:
        h = self.held_out
        return sum(r.passed for r in h) / len(h) if h else math.nan

    @property
    def accepted(self) -> bool:
        return self.share_passed >= self.min_share

    def summary_line(self) -> str:
        h = self.held_out
        k = sum(r.passed for r in h)
        verdict = "ACCEPTED" if self.accepted else "REJECTED"
        return (
            f"{self.model}: {k}/{len(h)} held-out comparisons pass ({100 * self.share_passed:.0f}%; "
            f"criterion >= {100 * self.min_share:.0f}%) -> {verdict}"
        )

    def table(self) -> str:
        head = (
            f"{'comparator':28s} {'role':9s} {'endpoint':20s} {'n (T/C)':>10s} "
            f"{'published (95% CI)':>24s} {'predicted (95% PI)':>26s}  result"
        )
        lines = [head, "-" * len(head)]
        for r in self.results:
            c = r.comparator
            n_t, n_c = c.arm_sizes
            ep = f"{c.endpoint} d{c.horizon_days}" if c.endpoint == "mortality" else c.endpoint
            pub = f"{r.published[0]:+6.1f} ({r.published[1]:+6.1f}, {r.published[2]:+6.1f})"
            pred = f"{r.predicted:+6.1f} ({r.interval[0]:+6.1f}, {r.interval[1]:+6.1f})"
            res = ("pass" if r.passed else "FAIL") + (f" [{r.note}]" if r.note else "")
            role = "training" if c.role == "training" else "held-out"
            lines.append(f"{c.id:28s} {role:9s} {ep:20s} {f'{n_t}/{n_c}':>10s} {pub:>24s} {pred:>26s}  {res}")
        post = self.posterior.mean()
        ci = self.posterior.interval()
        lines.append("")
        lines.append(
            "calibrated multipliers of the design strengths (posterior mean, 95% interval): "
            + "; ".join(f"{m} {post[m]:.2f} ({ci[m][0]:.2f}-{ci[m][1]:.2f})" for m in post)
        )
        lines.append(
            f"VPop {self.population_size} (seed {self.seed}), {self.trials} simulated trials per comparator, "
            f"{self.simulations} potential-outcome simulations; effects in points (treatment - control)"
        )
        return "\n".join(lines)


def validate(
    model: str = "reynolds2006",
    *,
    quick: bool = False,
    seed: int = 0,
    population_size: int | None = None,
    trials: int | None = None,
    plan: CredibilityPlan | None = None,
    population: VirtualPopulation | None = None,
    store: OutcomeStore | None = None,
    progress: Callable[[str], None] | None = None,
    engine: str | None = None,
) -> ValidationReport:
    """Calibrate on the plan's training comparators, then predict every comparator (see module docstring).

    ``quick``: a 1,000-patient VPop, every other grid value and 400 trials per comparator (a smoke run);
    the default is 4,000 patients, the plan's grids and 2,000 trials. ``store``: potential outcomes already
    simulated for this plan and population (reused; its population wins over ``population``).
    ``engine``: the integration engine (``engines.ENGINE_CHOICES``) of the population and potential outcomes
    simulated here; None: ``"auto"`` for a new population, else the population's own. The results do not
    depend on it (``population.integrate_course``).
    """
    pl = store.plan if store is not None else plan if plan is not None else load_plan()
    if store is not None:
        population = store.vpop
        if engine is not None:  # the store's own outcomes stay; those it simulates next use ``engine``
            store.vpop = replace(store.vpop, engine=engine)
    size = population_size if population_size is not None else (1000 if quick else 4000)
    n_trials = trials if trials is not None else (400 if quick else 2000)
    say = progress if progress is not None else (lambda _m: None)
    say(f"virtual population of {size} ({model})")
    if population is not None:
        vpop = population if engine is None else replace(population, engine=engine)
    else:
        variant = model_variant(model)
        de, sec, rule = variant["deactivation"], variant["secondary"], variant.get("death_rule")
        cal = variant.get("calibration")
        assert de is None or isinstance(de, DeactivationParameters)
        assert sec is None or isinstance(sec, SecondaryInfection)
        assert rule is None or isinstance(rule, DeathRule)
        assert cal is None or isinstance(cal, ObservableCalibration)
        vpop = generate_population(
            size,
            seed,
            deactivation=de,
            secondary=sec,
            death_rule=rule,
            calibration=cal,
            engine=engine if engine is not None else DEFAULT_ENGINE,
        )
    store = store if store is not None else OutcomeStore(vpop, pl)
    grids = {
        m: mech.grid[::2] if quick and len(mech.grid) > 2 else mech.grid for m, mech in pl.mechanisms.items()
    }
    say("calibrating on the training comparators")
    posterior = calibrate(pl.training(), store, grids)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 18]))
    results = []
    for c in pl.comparators:
        say(f"predicting {c.id}")
        results.append(predict(c, store, posterior, rng, n_trials, pl.interval, pl.sign_for_strata))
    designs = []
    for c in pl.designs:
        say(f"design {c.id}")
        designs.append(predict(c, store, posterior, rng, n_trials, pl.interval, False))
    placebo = store.get(None)
    return ValidationReport(
        model=model,
        population_size=size,
        seed=seed,
        trials=n_trials,
        posterior=posterior,
        results=tuple(results),
        min_share=pl.min_share_held_out,
        simulations=store.simulations,
        control_mortality_vpop=float(placebo.died_by_day[28].mean()),
        designs=tuple(designs),
    )


def validation_frame(report: ValidationReport) -> pl.DataFrame:
    """One row per comparator: the validation table of ``report`` as data (effects in points)."""
    import polars as pl

    rows = []
    for r in report.results + report.designs:
        c = r.comparator
        design = c.role == "design"
        rows.append(
            {
                "model": report.model,
                "comparator": c.id,
                "trial": c.trial,
                "source": c.source,
                "role": c.role,
                "endpoint": c.endpoint,
                "horizon_days": c.horizon_days,
                "n_treatment": c.arm_sizes[0],
                "n_control": c.arm_sizes[1],
                "published": None if design else r.published[0],
                "published_ci_low": None if design else r.published[1],
                "published_ci_high": None if design else r.published[2],
                "predicted": r.predicted,
                "predicted_mc_se": r.monte_carlo_se,
                "predicted_pi_low": r.interval[0],
                "predicted_pi_high": r.interval[1],
                "passed": None if design else r.passed,
                "power": r.power() if design else None,
                "note": r.note,
                "variant_accepted": report.accepted,
            }
        )
    return pl.DataFrame(rows)
